"""Clips that show the same content, found by perceptual hashes of sampled frames, so that they share a split.

The split hashes a clip's id, so an edited, re-encoded or cropped copy of a clip (another file, another id) could
land in the other split and val would measure training content (seen: two versions of one cartoon clip, one
in each). `region_tracks` keeps a perceptual hash (imagehash's pHash: the low frequencies of the frame's DCT,
robust to re-encoding, scaling, colour tweaks and light crops) of `SAMPLES` evenly spaced frames of every clip;
two clips belong together when at least `MIN_MATCHES` of their sampled frames have a counterpart in the other
clip within `MAX_DISTANCE` bits (of 64). Any frame against any frame, so a trimmed copy matches too. Groups are
the connected components, and a group is named by its smallest clip id, so a clip without copies keeps its own
id -- and its split -- as before. (A copy whose id sorts first renames the group and may move it to the other
side: the split has no memory, and keeping copies together is what matters.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SAMPLES = 16
# Measured on the sample clips: copies (CRF 35 re-encode, brightness +20, first 30 frames cut) are 0-2 bits from
# the original whole frame to whole frame, a 10 %-per-side crop 0 bits through a crop variant (18 without); no
# frame of another sample clip comes within 10 bits.
MAX_DISTANCE = 10
MIN_MATCHES = 3
# (width share, height share) of the centred crops hashed beside the whole frame: both sides, and one at a time
# (a crop to another aspect ratio, letterbox bars removed).
HASH_SIDE = 256
CROPS = ((0.9, 0.9), (0.8, 0.8), (0.7, 0.7), (0.8, 1.0), (1.0, 0.8), (0.75, 1.0), (1.0, 0.75))


def sample_indices(frames: int, samples: int = SAMPLES) -> list[int]:
    """Evenly spaced frame indices (the middle of `samples` equal stretches)."""
    if frames <= 0:
        return []
    n = min(samples, frames)
    return sorted({int((k + 0.5) * frames / n) for k in range(n)})


def frame_signature(frame: np.ndarray) -> str:
    """pHashes of an RGB frame, whole and as `CROPS`, as comma-separated 16-digit hex strings."""
    import cv2
    import imagehash
    from PIL import Image

    # pHash looks at a 32 x 32 thumbnail; shrinking a large frame to HASH_SIDE first (area average) keeps those
    # low frequencies and spares PIL's Lanczos a full-size resize per variant (measured: 25 ms -> ~2 ms a frame
    # on a 1280x720 clip; 8 % of the synthesis' time went there).
    h, w = frame.shape[:2]
    scale = HASH_SIDE / max(h, w)
    if scale < 1.0:
        frame = cv2.resize(frame, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
    hashes = [imagehash.phash(Image.fromarray(frame))]
    for fw, fh in CROPS:
        cw, ch = max(8, round(w * fw)), max(8, round(h * fh))
        x, y = (w - cw) // 2, (h - ch) // 2
        hashes.append(imagehash.phash(Image.fromarray(np.ascontiguousarray(frame[y:y + ch, x:x + cw]))))
    return ",".join(str(v) for v in hashes)


def _bits(signature: list[str]) -> np.ndarray:
    """(frames, variants) uint64 hashes."""
    return np.array([[int(v, 16) for v in frame.split(",")] for frame in signature], dtype=np.uint64)


# Hash pairs compared per block of the all-against-all pass: bounds its memory (8 bytes each) to ~128 MB.
BLOCK_PAIRS = 16_000_000


def matched_frames(bits: list[np.ndarray], max_distance: int) -> np.ndarray:
    """(clips, clips) counts: [a, b] = frames of clip a with any variant within `max_distance` bits of any
    variant of any frame of clip b. Every frame against every frame of every clip, one block of frames at a
    time with numpy's popcount. Still quadratic in the frames, but measured on 2 cores: the 40-clip library in
    0.16 s (a loop over clip pairs took 1.2 s), 300 clips in 7 s (the loop: ~70 s)."""
    counts = np.zeros((len(bits), len(bits)), dtype=np.int64)
    if not bits:
        return counts
    hashes = np.concatenate(bits)  # (frames, variants)
    frames, variants = hashes.shape
    owner = np.repeat(np.arange(len(bits)), [len(b) for b in bits])
    starts = np.concatenate([[0], np.cumsum([len(b) for b in bits])[:-1]])
    columns = hashes.reshape(-1)
    rows_per_block = max(1, BLOCK_PAIRS // (variants * columns.size))
    for r0 in range(0, frames, rows_per_block):
        rows = hashes[r0 : r0 + rows_per_block]
        distance = np.bitwise_count(rows[:, :, None] ^ columns[None, None, :])
        nearest = distance.reshape(len(rows), variants, frames, variants).min(axis=(1, 3))  # (rows, frames)
        has_counterpart = np.logical_or.reduceat(nearest <= max_distance, starts, axis=1)  # (rows, clips)
        np.add.at(counts, owner[r0 : r0 + rows_per_block], has_counterpart.astype(np.int64))
    return counts


def content_groups(signatures: dict[str, list[str]], max_distance: int = MAX_DISTANCE,
                   min_matches: int = MIN_MATCHES) -> dict[str, str]:
    """clip id -> group name (the smallest clip id of its group). A clip without signatures is its own group."""
    parent = {c: c for c in signatures}

    def root(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    clips = sorted(signatures)
    hashed = [c for c in clips if signatures[c]]
    bits = [_bits(signatures[c]) for c in hashed]
    counts = matched_frames(bits, max_distance)
    sizes = np.array([len(b) for b in bits])
    need = np.minimum(min_matches, np.minimum(sizes[:, None], sizes[None, :]))
    joined = (counts >= need) & (counts.T >= need)
    for i, j in zip(*np.nonzero(np.triu(joined, k=1))):
        ra, rb = root(hashed[i]), root(hashed[j])
        parent[max(ra, rb)] = min(ra, rb)
    return {c: root(c) for c in clips}


def clip_groups(tracks_dir: Path, clip_ids: list[str]) -> dict[str, str]:
    """clip id -> content group, from the signatures region_tracks kept in `<tracks_dir>/<clip>.json` (a clip
    without a record, or a record from before signatures, is its own group)."""
    signatures = {}
    for clip_id in clip_ids:
        path = Path(tracks_dir) / f"{clip_id}.json"
        signatures[clip_id] = (json.loads(path.read_text()).get("content_signature") or []) if path.is_file() else []
    return content_groups(signatures)


def grouped(groups: dict[str, str]) -> dict[str, list[str]]:
    """group name -> its clip ids, only for groups of two or more (what reports list)."""
    members: dict[str, list[str]] = {}
    for clip, group in sorted(groups.items()):
        members.setdefault(group, []).append(clip)
    return {g: m for g, m in members.items() if len(m) > 1}
