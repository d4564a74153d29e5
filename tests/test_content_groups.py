"""Copies of a clip share its split (assets/content_groups.py): a re-encoded, cropped, trimmed or brightened copy
is grouped with the clip, other clips are not, and the split keeps every group on one side."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE_RAW

from assets.content_groups import content_groups, frame_signature, grouped, sample_indices
from assets.restoration_dataset import split_clips
from assets.video import EncoderSettings, probe_video, read_frames, write_video


def _signature(path) -> list[str]:
    wanted = set(sample_indices(probe_video(path).frames))
    return [frame_signature(f) for i, f in enumerate(read_frames(path)) if i in wanted]


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("copies")
    original = SAMPLE_RAW / "carphone_pristine.mp4"
    frames = list(read_frames(original))
    h, w = frames[0].shape[:2]
    enc = lambda crf: EncoderSettings(codec="libx264", crf=crf, preset="ultrafast", threads=1)  # noqa: E731
    write_video(tmp / "reencoded.mp4", frames, 25, enc(35))
    write_video(tmp / "cropped.mp4", [np.ascontiguousarray(f[h // 10: h - h // 10, w // 10: w - w // 10]) for f in frames], 25, enc(18))
    write_video(tmp / "trimmed.mp4", frames[30:], 25, enc(18))
    write_video(tmp / "brighter.mp4", [np.clip(f.astype(int) + 20, 0, 255).astype(np.uint8) for f in frames], 25, enc(18))
    paths = [tmp / n for n in ("reencoded.mp4", "cropped.mp4", "trimmed.mp4", "brighter.mp4")]
    paths += sorted(SAMPLE_RAW.glob("*.mp4"))
    return {p.name: _signature(p) for p in paths}


def test_copies_are_grouped_with_the_clip_and_other_clips_are_not(signatures):
    groups = content_groups(signatures)
    copies = {"carphone_pristine.mp4", "reencoded.mp4", "cropped.mp4", "trimmed.mp4", "brighter.mp4"}
    assert len({groups[c] for c in copies}) == 1
    others = [c for c in signatures if c not in copies]
    assert others and len({groups[c] for c in others}) == len(others) and not {groups[c] for c in others} & {groups[c] for c in copies}
    assert grouped(groups) == {min(copies): sorted(copies)}
    # a clip without signatures (an older region_tracks record) stays on its own
    assert content_groups({**signatures, "unknown.mp4": []})["unknown.mp4"] == "unknown.mp4"


def test_a_group_lands_on_one_side_and_clips_without_copies_keep_their_split(signatures):
    groups = content_groups(signatures)
    for fraction in (0.2, 0.25, 0.5, 0.8):
        split = split_clips(sorted(signatures), fraction, groups)
        assert len({split[c] for c in signatures if groups[c] == groups["carphone_pristine.mp4"]}) == 1
        assert {"train", "val"} == set(split.values())
    singles = sorted(p.name for p in SAMPLE_RAW.glob("*.mp4"))
    alone = {c: c for c in singles}
    assert split_clips(singles, 0.25, alone) == split_clips(singles, 0.25)


@pytest.mark.parametrize("block_pairs", [1, 500, 16_000_000])
def test_matched_frames_counts_what_the_definition_counts_in_any_block_size(monkeypatch, block_pairs):
    """[a, b] = frames of a with a variant within the distance of any variant of any frame of b, whether the
    all-against-all pass runs a row at a time or all at once."""
    import assets.content_groups as cg

    monkeypatch.setattr(cg, "BLOCK_PAIRS", block_pairs)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, (5, 3), dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (5, 3)).astype(np.uint64)
    bits = [base, base ^ flips, rng.integers(0, 2**63, (4, 3), dtype=np.uint64), base[:2].copy()]
    counts = cg.matched_frames(bits, max_distance=1)
    for a, ha in enumerate(bits):
        for b, hb in enumerate(bits):
            expected = sum(any(bin(int(x) ^ int(y)).count("1") <= 1 for x in frame for y in hb.ravel()) for frame in ha)
            assert counts[a, b] == expected, (a, b)
    assert counts[1, 0] == 5 and counts[0, 3] == 2 and counts[2, 0] == 0
