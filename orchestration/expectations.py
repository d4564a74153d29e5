"""Great Expectations (GX Core 1.x) suites for the data manifests, as plain functions.

The Dagster asset checks call these directly; GX runs in-process on an ephemeral (in-memory) Data Context,
so nothing is written to disk and no GX project folder is needed. (`dagster-ge` only supports GX < 1.0.)

Wiring, built once per process and reused by every call:

    context = gx.get_context(mode="ephemeral")                      # progress bars off
    batch_definition = (context.data_sources.add_pandas("aubergine")
                        .add_dataframe_asset("frame")
                        .add_batch_definition_whole_dataframe("whole"))

and per call: an ExpectationSuite and a ValidationDefinition are added under the suite's name, run with
`batch_parameters={"dataframe": df}`, then removed again (with the stored validation result), so repeated
calls with the same suite name but different parameters never collide.

Importing GX costs several seconds, so it is imported lazily: importing this module (and with it the
Dagster code location) stays cheap, and the first validation in a process pays the import.

Conditional expectations use GX 1.x Condition objects (`Column("status") == "ok"`), which the pandas engine
turns into a `DataFrame.query` filter. The string form `row_condition='status == "ok"'` with
`condition_parser="pandas"` still works in GX 1.24 but is deprecated since 1.9 (DeprecationWarning).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Columns of a `raw_clips` manifest row (assets/raw_clips.py: probe_clip) and of a restoration index row
# (assets/restoration_dataset.py). Rows may carry more columns; these must be present.
RAW_CLIP_COLUMNS = (
    "clip_id", "path", "status", "reason", "sha256",
    "fps", "fps_fraction", "frames", "width", "height", "codec", "pix_fmt", "duration_s", "rotation", "has_audio",
    "frames_promised",
)
CLIP_STATUSES = ("ok", "quarantined")
ROTATIONS = (0, 90, 180, 270)
SHA256_REGEX = r"^[0-9a-f]{64}$"
FPS_FRACTION_REGEX = r"^[1-9][0-9]*/[1-9][0-9]*$"  # exact frame rate, e.g. "30000/1001"; writers re-use it
# Probe fields an `ok` clip must have (a quarantined clip may have none of them).
OK_REQUIRED = ("sha256", "fps", "fps_fraction", "frames", "width", "height", "codec", "pix_fmt", "duration_s", "rotation", "has_audio")

RESTORATION_INDEX_COLUMNS = (
    "split", "name", "clip_id", "frames_count",
    "gt_frames", "lq_frames", "mask_frames", "lq_mask_frames", "scene_h", "scene_w",
)
SPLITS = ("train", "val")
PER_STREAM_FRAME_COLUMNS = ("gt_frames", "lq_frames", "mask_frames", "lq_mask_frames")

RAW_CLIPS_SUITE = "raw_clips_manifest"
RESTORATION_INDEX_SUITE = "restoration_index"
PARTIAL_UNEXPECTED_COUNT = 20

_DATASOURCE, _ASSET, _BATCH = "aubergine", "frame", "whole"


@dataclass(frozen=True)
class SuiteOutcome:
    """One suite run. `failed` holds one JSON-serializable dict per failed expectation, in suite order."""

    suite: str
    success: bool
    evaluated: int
    failed: list[dict] = field(default_factory=list)
    rows: int = 0

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: {self.evaluated} expectations passed on {self.rows} rows"
        names = ", ".join(
            f"{f['expectation']}({_column_label(f['column'])})" if f["column"] is not None else f["expectation"]
            for f in self.failed
        )
        return f"{self.suite}: {len(self.failed)}/{self.evaluated} expectations failed on {self.rows} rows: {names}"


# ---------------------------------------------------------------------------------------------- GX runtime


class _Runtime:
    def __init__(self):
        gx = _import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = self.context.data_sources.add_pandas(name=_DATASOURCE).add_dataframe_asset(name=_ASSET)
        self.batch_definition = asset.add_batch_definition_whole_dataframe(_BATCH)


_LOCK = threading.RLock()  # the context and its stores are shared; one validation at a time per process
_RUNTIME: _Runtime | None = None


def _import_gx():
    # GX logs INFO chatter while importing and building a context; quiet it before the import, unless the
    # application set a level for it explicitly.
    gx_logger = logging.getLogger("great_expectations")
    quiet = gx_logger.level == logging.NOTSET
    if quiet:
        gx_logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():  # GX's own import trips stdlib/pydantic DeprecationWarnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx
    if quiet:
        # this module pins itself to INFO at import ("Created temporary directory ... for ephemeral docs site"
        # on every ephemeral context); let it inherit the quieter parent level instead
        base_logger = logging.getLogger("great_expectations.data_context.types.base")
        if base_logger.level == logging.INFO:
            base_logger.setLevel(logging.NOTSET)
    return gx


def _runtime() -> _Runtime:
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is None:
            _RUNTIME = _Runtime()
        return _RUNTIME


def _gxe():
    _import_gx()
    import great_expectations.expectations as gxe

    return gxe


def _col(name: str):
    from great_expectations.expectations.row_conditions import Column

    return Column(name)


def _detached(expectation):
    """A copy that belongs to no suite: adding an expectation to a context's suite stamps an id on the
    object itself, and GX refuses to add an expectation with an id to another suite."""
    from great_expectations.expectations.expectation import Expectation

    if isinstance(expectation, Expectation):
        return expectation.copy(update={"id": None}, deep=True)
    return expectation


def _discard(context, name: str) -> None:
    from great_expectations.exceptions import DataContextError

    for collection in (context.validation_definitions, context.suites):
        try:
            collection.delete(name)
        except DataContextError:
            pass
    store = context.validation_results_store
    for key in store.list_keys():
        store.remove_key(key)


# ---------------------------------------------------------------------------------------------- running


def validate_frame(df: pd.DataFrame, suite_name: str, expectations: list) -> SuiteOutcome:
    """Run `expectations` (GX expectation objects) as suite `suite_name` on `df`.

    Expectations that cannot be evaluated (e.g. a missing column) count as failed, with the GX message
    under `"exception"`. An empty list of expectations succeeds with `evaluated=0`.
    """
    if not suite_name:
        raise ValueError("suite_name must be a non-empty string")
    runtime = _runtime()
    gx = runtime.gx
    with _LOCK:
        context = runtime.context
        _discard(context, suite_name)
        try:
            suite = context.suites.add(
                gx.ExpectationSuite(name=suite_name, expectations=[_detached(e) for e in expectations])
            )
            if len(suite.expectations) != len(expectations):
                # GX drops invalid or duplicate expectations with only a log line; don't hide that.
                raise ValueError(
                    f"suite {suite_name!r}: GX kept {len(suite.expectations)} of {len(expectations)} expectations "
                    f"(duplicates or invalid configurations)"
                )
            order = {e.id: i for i, e in enumerate(suite.expectations)}
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=suite_name, data=runtime.batch_definition, suite=suite)
            )
            result = definition.run(
                batch_parameters={"dataframe": df},
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT},
            )
        finally:
            _discard(context, suite_name)
    results = sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    failed = [_failure(r) for r in results if not r.success]
    return SuiteOutcome(
        suite=suite_name,
        success=bool(result.success),
        evaluated=len(results),
        failed=failed,
        rows=int(len(df)),
    )


def _failure(r) -> dict:
    config = r.expectation_config
    kwargs = config.kwargs
    res = r.result or {}
    if kwargs.get("column") is not None:
        column: Any = kwargs["column"]
    elif "column_A" in kwargs:
        column = [kwargs["column_A"], kwargs["column_B"]]
    elif kwargs.get("column_list") is not None:
        column = list(kwargs["column_list"])
    else:
        column = None
    out = {
        "expectation": config.type,
        "column": column,
        "unexpected_count": _jsonable(res.get("unexpected_count")),
        "partial_unexpected_list": _jsonable(res.get("partial_unexpected_list") or []),
    }
    if kwargs.get("row_condition"):
        out["row_condition"] = _condition_text(kwargs["row_condition"])
    if "observed_value" in res:
        out["observed_value"] = _jsonable(res["observed_value"])
    if res.get("details"):
        out["details"] = _jsonable(res["details"])
    if message := _exception_message(r.exception_info):
        out["exception"] = message
    return out


def _exception_message(info) -> str | None:
    """GX 1.x reports `exception_info` either flat or keyed by metric id (one entry per failed metric)."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    messages = []
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception") and value.get("exception_message"):
            if value["exception_message"] not in messages:
                messages.append(value["exception_message"])
    return "; ".join(messages) or None


def _condition_text(condition) -> str:
    if hasattr(condition, "dict"):
        condition = condition.dict()
    if isinstance(condition, dict):
        kind = condition.get("type")
        column = (condition.get("column") or {}).get("name")
        if kind == "comparison":
            return f"{column} {condition.get('operator')} {condition.get('parameter')!r}"
        if kind == "nullity":
            return f"{column} is {'null' if condition.get('is_null') else 'not null'}"
        if "pass_through_filter" in condition:
            return str(condition["pass_through_filter"])
        return json.dumps(_jsonable(condition), sort_keys=True)
    return str(condition)


def _column_label(column) -> str:
    return ",".join(column) if isinstance(column, list) else str(column)


def _jsonable(value):
    """numpy/pandas scalars -> Python, NaN/NaT/inf -> None, tuples -> lists; JSON-safe with allow_nan=False."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    try:
        import pandas as pd

        if value is pd.NaT or value is pd.NA:
            return None
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy array
        return _jsonable(value.tolist())
    return str(value)


# ---------------------------------------------------------------------------------------------- suites


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows -> frame. No rows -> an empty frame with the expected columns (nothing to contradict them)."""
    import pandas as pd

    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    return pd.DataFrame.from_records(rows)


def raw_clips_suite(min_frames, max_frames, min_side, max_side, min_fps, max_fps) -> list:
    """Expectations for a `raw_clips` manifest frame (one row per clip). Range checks apply to `ok` rows only:
    a quarantined row is allowed to be out of range or unprobed, but must say why."""
    gxe = _gxe()
    ok = _col("status") == "ok"
    quarantined = _col("status") == "quarantined"
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(RAW_CLIP_COLUMNS), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=0, max_value=None),
        gxe.ExpectColumnValuesToNotBeNull(column="clip_id"),
        gxe.ExpectColumnValuesToBeUnique(column="clip_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="path"),
        gxe.ExpectColumnValuesToNotBeNull(column="status"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(CLIP_STATUSES)),
        gxe.ExpectColumnValuesToNotBeNull(column="reason", row_condition=quarantined),
        gxe.ExpectColumnValueLengthsToBeBetween(column="reason", min_value=1, row_condition=quarantined),
        gxe.ExpectColumnValuesToBeNull(column="reason", row_condition=ok),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c, row_condition=ok) for c in OK_REQUIRED]
    expectations += [
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX, row_condition=ok),
        gxe.ExpectColumnValuesToMatchRegex(column="fps_fraction", regex=FPS_FRACTION_REGEX, row_condition=ok),
        gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=min_fps, max_value=max_fps, row_condition=ok),
        gxe.ExpectColumnValuesToBeBetween(column="frames", min_value=min_frames, max_value=max_frames, row_condition=ok),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=min_side, max_value=max_side, row_condition=ok),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=min_side, max_value=max_side, row_condition=ok),
        gxe.ExpectColumnValuesToBeInSet(column="rotation", value_set=list(ROTATIONS), row_condition=ok),
    ]
    return expectations


def validate_raw_clips_manifest(manifest: dict, data_params) -> SuiteOutcome:
    """Validate `manifest["clips"]` against `raw_clips_suite` with the ranges from `data_params`
    (anything with min/max_frames, min/max_side, min/max_fps, e.g. `DataParams`). An empty or all-quarantined
    batch is valid."""
    clips = manifest.get("clips")
    if not isinstance(clips, list):
        raise ValueError("raw_clips manifest has no 'clips' list")
    suite = raw_clips_suite(
        min_frames=data_params.min_frames, max_frames=data_params.max_frames,
        min_side=data_params.min_side, max_side=data_params.max_side,
        min_fps=data_params.min_fps, max_fps=data_params.max_fps,
    )
    return validate_frame(_frame(clips, RAW_CLIP_COLUMNS), RAW_CLIPS_SUITE, suite)


def scenes_suite() -> list:
    """Expectations for the restoration dataset index (one row per scene)."""
    gxe = _gxe()
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(RESTORATION_INDEX_COLUMNS), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=0, max_value=None),
        gxe.ExpectColumnValuesToNotBeNull(column="name"),
        gxe.ExpectColumnValuesToBeUnique(column="name"),
        gxe.ExpectColumnValuesToNotBeNull(column="clip_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="split"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToNotBeNull(column="frames_count"),
        gxe.ExpectColumnValuesToBeBetween(column="frames_count", min_value=1),
    ]
    expectations += [
        gxe.ExpectColumnPairValuesToBeEqual(column_A="frames_count", column_B=c, ignore_row_if="neither")
        for c in PER_STREAM_FRAME_COLUMNS
    ]
    for c in ("scene_h", "scene_w"):
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=c),
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=1),
        ]
    return expectations


def validate_restoration_index(index_rows: list[dict]) -> SuiteOutcome:
    """Validate the restoration dataset index rows. No rows -> success with rows=0."""
    return validate_frame(_frame(list(index_rows), RESTORATION_INDEX_COLUMNS), RESTORATION_INDEX_SUITE, scenes_suite())


# ------------------------------------------------------------------------------------ unified COCO

COCO_IMAGE_COLUMNS = ("id", "file_name", "width", "height", "file_exists")
COCO_ANNOTATION_COLUMNS = ("id", "image_id", "category_id", "known_image", "x", "y", "w", "h", "area",
                           "right_margin", "bottom_margin")
COCO_IMAGES_SUITE = "unified_coco_images"
COCO_ANNOTATIONS_SUITE = "unified_coco_annotations"


def coco_images_suite() -> list:
    gxe = _gxe()
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(COCO_IMAGE_COLUMNS), exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="file_name"),
        gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=1),
    ]


def coco_annotations_suite(category_ids: list[int]) -> list:
    """Boxes inside the image (1e-3 px tolerance for rounding), positive area, known categories, unique ids."""
    gxe = _gxe()
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(COCO_ANNOTATION_COLUMNS), exact_match=False),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="category_id", value_set=list(category_ids)),
        gxe.ExpectColumnValuesToBeInSet(column="known_image", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="x", min_value=-1e-3),
        gxe.ExpectColumnValuesToBeBetween(column="y", min_value=-1e-3),
        gxe.ExpectColumnValuesToBeBetween(column="w", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="h", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="area", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeBetween(column="right_margin", min_value=-1e-3),
        gxe.ExpectColumnValuesToBeBetween(column="bottom_margin", min_value=-1e-3),
    ]


def validate_coco(doc: dict, root) -> list[SuiteOutcome]:
    """Both suites over one COCO split (images, annotations); the check passes when both do."""
    from pathlib import Path

    from assets.coco_records import CATEGORY_IDS
    from assets.unified_coco import coco_rows

    image_rows, ann_rows = coco_rows(doc, Path(root))
    return [
        validate_frame(_frame(image_rows, COCO_IMAGE_COLUMNS), COCO_IMAGES_SUITE, coco_images_suite()),
        validate_frame(_frame(ann_rows, COCO_ANNOTATION_COLUMNS), COCO_ANNOTATIONS_SUITE,
                       coco_annotations_suite(sorted(CATEGORY_IDS.values()))),
    ]
