"""Great Expectations suites for the data manifests (orchestration/expectations.py).

GX itself is imported on the first validation (several seconds, once per test session)."""

from __future__ import annotations

import json

import pytest

from orchestration.config import DataParams
from orchestration.expectations import (
    RAW_CLIP_COLUMNS,
    RAW_CLIPS_SUITE,
    RESTORATION_INDEX_SUITE,
    SPLITS,
    SuiteOutcome,
    raw_clips_suite,
    scenes_suite,
    validate_frame,
    validate_raw_clips_manifest,
    validate_restoration_index,
)

SHA = "0123456789abcdef" * 4


def ok_clip(clip_id="carphone_pristine.mp4", **changes) -> dict:
    row = {
        "clip_id": clip_id, "path": f"data/raw/{clip_id}", "sha256": SHA, "status": "ok", "reason": None,
        "fps": 25.0, "fps_fraction": "25/1", "frames": 120, "width": 176, "height": 144, "codec": "h264", "pix_fmt": "yuv420p",
        "duration_s": 4.8, "rotation": 0, "has_audio": False, "frames_promised": 120,
    }
    row.update(changes)
    return row


def quarantined_clip(clip_id="broken.mp4", reason="data/raw/broken.mp4: cannot decode", **changes) -> dict:
    row = {
        "clip_id": clip_id, "path": f"data/raw/{clip_id}", "sha256": None, "status": "quarantined", "reason": reason,
        "fps": None, "fps_fraction": None, "frames": None, "width": None, "height": None, "codec": None, "pix_fmt": None,
        "duration_s": None, "rotation": None, "has_audio": None, "frames_promised": None,
    }
    row.update(changes)
    return row


def manifest(*clips) -> dict:
    return {"raw_dir": "data/raw", "clips": list(clips)}


def good_manifest() -> dict:
    return manifest(
        ok_clip(),
        ok_clip("foreman.mp4", fps=29.97, fps_fraction="30000/1001", frames=300, width=352, height=288, rotation=90, has_audio=True),
        quarantined_clip(),
        # probed fine but out of range: quarantined with its probe fields kept; ranges only bind `ok` rows
        quarantined_clip("tiny.mp4", reason="data/raw/tiny.mp4: width 16 outside [32, 8192]", sha256=SHA,
                         fps=25.0, fps_fraction="25/1", frames=50, width=16, height=16, codec="h264", pix_fmt="yuv420p",
                         duration_s=2.0, rotation=0, has_audio=False),
    )


def index_row(name="carphone_pristine.mp4-000001-", split="train", frames=48, **changes) -> dict:
    row = {
        "split": split, "name": name, "clip_id": name.split("-")[0], "kind": "face", "frames_count": frames,
        "gt_frames": frames, "lq_frames": frames, "mask_frames": frames, "lq_mask_frames": frames,
        "scene_h": 96, "scene_w": 80, "mosaic_mode": "squa_avg", "mosaic_size": 12,
    }
    row.update(changes)
    return row


def failures(outcome: SuiteOutcome, expectation: str, column=None) -> list[dict]:
    return [f for f in outcome.failed if f["expectation"] == expectation and (column is None or f["column"] == column)]


def assert_json_safe(outcome: SuiteOutcome) -> None:
    json.dumps(outcome.failed, allow_nan=False)


# ------------------------------------------------------------------------------------------------ raw clips


def test_good_manifest_passes():
    outcome = validate_raw_clips_manifest(good_manifest(), DataParams())
    assert outcome.success, outcome.failed
    assert outcome.suite == RAW_CLIPS_SUITE
    assert outcome.rows == 4
    assert outcome.failed == []
    assert outcome.evaluated == len(raw_clips_suite(8, 200_000, 32, 8192, 5.0, 240.0))


def test_duplicate_clip_id_fails():
    outcome = validate_raw_clips_manifest(manifest(ok_clip(), ok_clip(), quarantined_clip()), DataParams())
    assert not outcome.success
    [failure] = outcome.failed
    assert failure["expectation"] == "expect_column_values_to_be_unique"
    assert failure["column"] == "clip_id"
    assert failure["unexpected_count"] == 2
    assert failure["partial_unexpected_list"] == ["carphone_pristine.mp4", "carphone_pristine.mp4"]


def test_ok_row_with_fps_out_of_range_fails():
    outcome = validate_raw_clips_manifest(manifest(ok_clip(), ok_clip("fast.mp4", fps=1000.0)), DataParams())
    assert not outcome.success
    [failure] = outcome.failed
    assert failure["expectation"] == "expect_column_values_to_be_between"
    assert failure["column"] == "fps"
    assert failure["unexpected_count"] == 1
    assert failure["partial_unexpected_list"] == [1000.0]
    assert failure["row_condition"] == "status == 'ok'"


def test_ranges_come_from_data_params():
    """The same manifest passes or fails with the configured ranges; repeated runs of one suite name don't
    reuse a stale suite."""
    strict = DataParams(min_fps=26.0, max_fps=30.0, min_side=200)
    outcome = validate_raw_clips_manifest(good_manifest(), strict)
    assert not outcome.success
    assert [f["partial_unexpected_list"] for f in failures(outcome, "expect_column_values_to_be_between", "fps")] == [[25.0]]
    assert failures(outcome, "expect_column_values_to_be_between", "width")[0]["partial_unexpected_list"] == [176]
    assert failures(outcome, "expect_column_values_to_be_between", "height")[0]["partial_unexpected_list"] == [144]
    assert validate_raw_clips_manifest(good_manifest(), DataParams()).success


def test_quarantined_row_without_reason_fails():
    outcome = validate_raw_clips_manifest(manifest(ok_clip(), quarantined_clip(reason=None)), DataParams())
    assert not outcome.success
    [failure] = outcome.failed
    assert failure["expectation"] == "expect_column_values_to_not_be_null"
    assert failure["column"] == "reason"
    assert failure["row_condition"] == "status == 'quarantined'"
    assert failure["unexpected_count"] == 1
    assert failure["partial_unexpected_list"] == [None]  # NaN made JSON-safe
    assert_json_safe(outcome)


def test_quarantined_row_with_empty_reason_fails():
    outcome = validate_raw_clips_manifest(manifest(quarantined_clip(reason="")), DataParams())
    assert [f["column"] for f in failures(outcome, "expect_column_value_lengths_to_be_between")] == ["reason"]


def test_ok_row_with_reason_fails():
    outcome = validate_raw_clips_manifest(manifest(ok_clip(reason="stale")), DataParams())
    assert [f["column"] for f in outcome.failed] == ["reason"]
    assert outcome.failed[0]["expectation"] == "expect_column_values_to_be_null"


def test_bad_status_value_fails():
    outcome = validate_raw_clips_manifest(manifest(ok_clip(), ok_clip("odd.mp4", status="pending")), DataParams())
    assert not outcome.success
    [failure] = outcome.failed
    assert failure["expectation"] == "expect_column_values_to_be_in_set"
    assert failure["column"] == "status"
    assert failure["partial_unexpected_list"] == ["pending"]


def test_ok_row_checksum_rotation_and_missing_probe_fail():
    outcome = validate_raw_clips_manifest(
        manifest(ok_clip("a.mp4", sha256=SHA.upper()), ok_clip("b.mp4", rotation=45), ok_clip("c.mp4", frames=None),
                 ok_clip("d.mp4", fps_fraction="25.0")),
        DataParams(),
    )
    assert not outcome.success
    assert failures(outcome, "expect_column_values_to_match_regex", "sha256")[0]["partial_unexpected_list"] == [SHA.upper()]
    assert failures(outcome, "expect_column_values_to_be_in_set", "rotation")[0]["partial_unexpected_list"] == [45.0]
    assert failures(outcome, "expect_column_values_to_not_be_null", "frames")[0]["unexpected_count"] == 1
    assert failures(outcome, "expect_column_values_to_match_regex", "fps_fraction")[0]["partial_unexpected_list"] == ["25.0"]
    # failures come back in suite order (GX returns results in its own order)
    suite = [(e.expectation_type, getattr(e, "column", None)) for e in raw_clips_suite(8, 200_000, 32, 8192, 5.0, 240.0)]
    positions = [suite.index((f["expectation"], f["column"])) for f in outcome.failed]
    assert positions == sorted(positions)
    assert_json_safe(outcome)


def test_missing_column_fails_the_column_set():
    rows = [{k: v for k, v in ok_clip().items() if k != "sha256"}]
    outcome = validate_raw_clips_manifest(manifest(*rows), DataParams())
    assert not outcome.success
    [columns] = failures(outcome, "expect_table_columns_to_match_set")
    assert columns["details"]["mismatched"]["missing"] == ["sha256"]
    # expectations on the absent column cannot run: they fail and carry GX's message
    assert any("sha256" in f.get("exception", "") for f in failures(outcome, "expect_column_values_to_match_regex"))
    assert_json_safe(outcome)


def test_extra_columns_are_allowed():
    outcome = validate_raw_clips_manifest(manifest(ok_clip(bitrate=128_000)), DataParams())
    assert outcome.success, outcome.failed


def test_all_quarantined_and_empty_manifests_pass():
    outcome = validate_raw_clips_manifest(manifest(quarantined_clip(), quarantined_clip("b.mp4")), DataParams())
    assert outcome.success, outcome.failed
    assert outcome.rows == 2
    empty = validate_raw_clips_manifest(manifest(), DataParams())
    assert empty.success, empty.failed
    assert empty.rows == 0
    assert empty.evaluated == outcome.evaluated


def test_manifest_without_clips_is_an_error():
    with pytest.raises(ValueError, match="clips"):
        validate_raw_clips_manifest({"raw_dir": "data/raw"}, DataParams())


def test_column_set_matches_what_raw_clips_writes():
    from assets.raw_clips import PROBE_FIELDS, probe_clip  # noqa: F401 - the row shape lives there

    assert set(RAW_CLIP_COLUMNS) == {"clip_id", "path", "status", "reason", "sha256", *PROBE_FIELDS}


# ------------------------------------------------------------------------------------------------ restoration index


def test_good_restoration_index_passes():
    rows = [index_row(), index_row("carphone_pristine.mp4-000002-", frames=12), index_row("foreman.mp4-000001-", "val")]
    outcome = validate_restoration_index(rows)
    assert outcome.success, outcome.failed
    assert outcome.suite == RESTORATION_INDEX_SUITE
    assert outcome.rows == 3
    assert outcome.evaluated == len(scenes_suite())


def test_restoration_index_with_mismatched_lq_frames_fails():
    rows = [index_row(), index_row("foreman.mp4-000001-", frames=30, lq_frames=29)]
    outcome = validate_restoration_index(rows)
    assert not outcome.success
    [failure] = outcome.failed
    assert failure["expectation"] == "expect_column_pair_values_to_be_equal"
    assert failure["column"] == ["frames_count", "lq_frames"]
    assert failure["unexpected_count"] == 1
    assert failure["partial_unexpected_list"] == [[30, 29]]
    assert_json_safe(outcome)


def test_restoration_index_other_failures():
    rows = [
        index_row(),
        index_row(split="test"),  # duplicate name, bad split
        index_row("x.mp4-000001-", frames=0),  # frames_count < 1 (stream counts equal it)
        index_row("y.mp4-000001-", scene_w=0, mask_frames=None),
    ]
    outcome = validate_restoration_index(rows)
    failed = {(f["expectation"], json.dumps(f["column"])) for f in outcome.failed}
    assert failed == {
        ("expect_column_values_to_be_unique", '"name"'),
        ("expect_column_values_to_be_in_set", '"split"'),
        ("expect_column_values_to_be_between", '"frames_count"'),
        ("expect_column_values_to_be_between", '"scene_w"'),
        ("expect_column_pair_values_to_be_equal", '["frames_count", "mask_frames"]'),
    }
    assert_json_safe(outcome)
    assert set(SPLITS) == {"train", "val"}


def test_empty_restoration_index_passes():
    outcome = validate_restoration_index([])
    assert outcome.success, outcome.failed
    assert outcome.rows == 0
    assert outcome.evaluated == len(scenes_suite())


# ------------------------------------------------------------------------------------------------ validate_frame


def test_validate_frame_reuses_expectation_objects_and_stays_quiet(capfd):
    import pandas as pd

    import great_expectations.expectations as gxe

    suite = [gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=10)]
    good = validate_frame(pd.DataFrame({"x": [1, 2, 3]}), "adhoc", suite)
    bad = validate_frame(pd.DataFrame({"x": [1, 20]}), "adhoc", suite)  # same objects, same suite name
    none = validate_frame(pd.DataFrame({"x": [1]}), "adhoc", [])
    assert (good.success, good.evaluated, good.rows) == (True, 1, 3)
    assert (bad.success, bad.failed[0]["partial_unexpected_list"]) == (False, [20])
    assert (none.success, none.evaluated) == (True, 0)
    assert "adhoc" in bad.summary() and "expect_column_values_to_be_between(x)" in bad.summary()
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out
