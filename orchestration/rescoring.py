"""Fair comparisons in the promotion gate: a champion whose evaluation run measured other data than the
challenger's is re-scored on the challenger's data, with the report stage's own evaluation code, before the
gate compares them.

Every report stage tags its MLflow run with `eval.data_hash` (tracking.EVAL_DATA_TAG): the hash of the val
files and of the knobs that shape the numbers. A new clip, a re-split or another `max_images` changes it. For
each registered model this module knows how to hash the project's current evaluation data and how to
re-score a registered version on it: the restorer and the detector load back with `mlflow.pytorch`, the
anonymizer as its pyfunc (with the champion's own sampling settings), and each runs through the same function
its report stage uses (`evaluate_restorer`, `evaluate_detector`, `evaluate_anonymizers`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestration.config import Params
from orchestration.model_metrics import ANONYMIZER, DETECTOR, MOSAIC_DETECTOR, RESTORER


@dataclass(frozen=True)
class Rescorer:
    model: str
    data_hash: Callable[[], str]  # the project's current evaluation data, as the report stage tags it
    rescore: Callable[[str], dict[str, float]]  # model URI -> the metrics the report stage logs


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))}


def _restorer(params: Params) -> Rescorer:
    from orchestration.restoration_stages import evaluate_restorer, restoration_eval_data

    def rescore(uri: str) -> dict[str, float]:
        import mlflow.pytorch

        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        return _numeric(evaluate_restorer(params, model.eval()).metrics)

    return Rescorer(RESTORER, lambda: restoration_eval_data(params)[1], rescore)


def _coco_detector(model_name: str, root: Path, needs: str) -> Rescorer:
    """The face/plate detector (unified COCO) and the mosaic detector (mosaic COCO): one evaluation, two sets."""
    from orchestration.detection_stages import detection_eval_data, detection_split, evaluate_detector

    def rescore(uri: str) -> dict[str, float]:
        import mlflow.pytorch

        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        result, _ = evaluate_detector(model.eval(), detection_split(root, needs), root)
        return _numeric(result.metrics)

    return Rescorer(model_name, lambda: detection_eval_data(root, needs)[1], rescore)


def _detector(params: Params) -> Rescorer:
    from orchestration.detection_stages import UNIFIED_COCO

    return _coco_detector(DETECTOR, UNIFIED_COCO, "images")


def _mosaic_detector(params: Params) -> Rescorer:
    from orchestration.mosaic_detection_stages import MOSAIC_COCO

    return _coco_detector(MOSAIC_DETECTOR, MOSAIC_COCO, "annotations")


def _anonymizer(params: Params) -> Rescorer:
    from orchestration.anonymization_stages import anonymization_eval_data, evaluate_anonymizers, flat_metrics

    def rescore(uri: str) -> dict[str, float]:
        import mlflow.pyfunc

        anonymizer = mlflow.pyfunc.load_model(uri).unwrap_python_model().anonymizer
        with tempfile.TemporaryDirectory(prefix=".tmp-rescore-", dir=".") as work:
            results, reference, _, _ = evaluate_anonymizers(params, {"anonymizer": anonymizer}, Path(work))
        return _numeric(flat_metrics(results, reference))

    return Rescorer(ANONYMIZER, lambda: anonymization_eval_data(params)[1], rescore)


_BUILDERS: dict[str, Callable[[Params], Rescorer]] = {RESTORER: _restorer, DETECTOR: _detector, MOSAIC_DETECTOR: _mosaic_detector,
                                                       ANONYMIZER: _anonymizer}


def rescorer_for(params: Params, model: str) -> Rescorer | None:
    """None for a model name the project has no evaluation for (the gate then refuses unequal comparisons)."""
    builder = _BUILDERS.get(model)
    return builder(params) if builder else None
