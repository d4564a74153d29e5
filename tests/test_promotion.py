"""The promotion gate: rules from params.yaml, decisions on real registered models, and the bad inputs that must
stop a run before it trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestration.config import CompareRule, ConfigError, FloorRule, ModelGate, load_params
from orchestration.model_metrics import ANONYMIZER, DETECTOR, MOSAIC_DETECTOR, REPORT_METRICS, RESTORER
from orchestration.promotion import decide
from orchestration.runner import run_stage
from tests.conftest import ROOT, Project, need_media
from tests.test_restoration_track import DATA_STAGES

GATE = ModelGate(compare=(CompareRule(metric="output_psnr_region", margin=0.1),),
                 floors=(FloorRule(metric="psnr_region_gain_db", min=0.0),))


def test_first_model_faces_only_the_floors():
    passed, checks = decide(GATE, {"output_psnr_region": 15.0, "psnr_region_gain_db": 0.2}, None)
    assert passed and [c.kind for c in checks] == ["floor"]
    passed, checks = decide(GATE, {"output_psnr_region": 15.0, "psnr_region_gain_db": -0.3}, None)
    assert not passed and "below the floor" in checks[0].reason


def test_challenger_must_beat_the_champion_by_the_margin():
    champion = {"output_psnr_region": 15.0, "psnr_region_gain_db": 0.2}
    assert not decide(GATE, {"output_psnr_region": 15.05, "psnr_region_gain_db": 0.3}, champion)[0]  # +0.05 < 0.1
    assert decide(GATE, {"output_psnr_region": 15.2, "psnr_region_gain_db": 0.3}, champion)[0]


def test_the_anonymizer_gate_tolerates_fid_noise_and_names_the_privacy_floor_it_fails():
    gate = load_params(ROOT / "params.yaml", {"profile": "full"}).promotion.models["face-plate-anonymizer"]
    good = {"reid_rate": 0.0, "orig_text_read_rate": 0.0, "fake_text_char_acc": 0.8, "map_retention": 0.9, "fid_image": 42.0}
    assert decide(gate, good, None)[0]
    champion = {**good, "fid_image": 40.0}
    passed, checks = decide(gate, good, champion)  # FID 2 worse: within the tolerance of 5
    assert passed and "within the tolerance 5" in next(c.reason for c in checks if c.metric == "fid_image")
    assert not decide(gate, {**good, "fid_image": 46.0}, champion)[0]
    leaky = {**good, "reid_rate": 0.4}
    passed, checks = decide(gate, leaky, None)
    assert not passed and "reid_rate = 0.4 is above the ceiling 0.1" in [c.reason for c in checks if not c.passed]
    with pytest.raises(ValueError, match="margin .* or tolerance"):
        CompareRule(metric="fid_image", margin=1.0, tolerance=1.0)


def test_unequal_val_data_is_rescored_or_the_comparison_refused_with_the_reason():
    from types import SimpleNamespace

    from orchestration.promotion import _champion_metrics
    from orchestration.rescoring import Rescorer

    champion = SimpleNamespace(version="3")
    own = {"AP50": 0.9}
    # same data: the champion's own numbers
    assert _champion_metrics("m", champion, own, "h1", "h1", None) == (own, None, None)
    # other data, no evaluation known for the model: refused, saying why
    theirs, rescored, note = _champion_metrics("m", champion, own, "h0", "h1", None)
    assert theirs is None and "no evaluation to re-score m with: comparison refused" in note and "h0" in note
    calls = []
    rescorer = Rescorer("m", lambda: "h1", lambda uri: calls.append(uri) or {"AP50": 0.5})
    theirs, rescored, note = _champion_metrics("m", champion, own, None, "h1", rescorer)
    assert theirs == rescored == {"AP50": 0.5} and calls == ["models:/m/3"]
    assert "untagged data" in note and "champion v3 re-scored on the challenger's data" in note
    # the challenger measured data the project no longer has: refused
    stale = Rescorer("m", lambda: "h2", lambda uri: {"AP50": 0.5})
    assert "re-run the challenger's report" in _champion_metrics("m", champion, own, "h0", "h1", stale)[2]

    def broken(uri):
        raise OSError("artifact store unreachable")

    note = _champion_metrics("m", champion, own, "h0", "h1", Rescorer("m", lambda: "h1", broken))[2]
    assert "re-scoring champion v3 failed (OSError: artifact store unreachable)" in note


def test_lower_is_better_and_missing_metrics_fail_with_a_reason():
    gate = ModelGate(compare=(CompareRule(metric="AP50", better="lower"),))
    assert decide(gate, {"AP50": 0.1}, {"AP50": 0.2})[0]
    assert not decide(gate, {"AP50": 0.3}, {"AP50": 0.2})[0]
    passed, checks = decide(gate, {}, {"AP50": 0.2})
    assert not passed and "missing from the challenger" in checks[0].reason


@pytest.mark.parametrize("override, message", [
    ({"retraining.cron": "0 3 * *"}, "retraining.cron"),
    ({"retraining.cron": "every monday"}, "not a 5-field cron"),
    ({"promotion.models": {RESTORER: {"compare": [{"metric": "psnr_out"}]}}}, "compare[0].metric = 'psnr_out'"),
    ({"promotion.models": {DETECTOR: {"floors": [{"metric": "mAP", "min": 0.1}]}}}, "floors[0].metric = 'mAP'"),
    ({"promotion.models": {"anonymizer": {}}}, "no evaluation registers a model of that name"),
    ({"promotion.models": {DETECTOR: {"floors": [{"metric": "AP50"}]}}}, "needs `min` or `max`"),
])
def test_bad_gate_and_schedule_config_is_an_error_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "params.yaml", override)
    assert message in str(err.value)


def test_bad_config_stops_the_cli_before_any_stage_runs(tmp_path):
    doc = (ROOT / "params.yaml").read_text().replace('cron: "0 3 * * 1"', 'cron: "0 25 * * 1"')
    (tmp_path / "params.yaml").write_text(doc)
    out = subprocess.run([sys.executable, "-m", "orchestration.cli", "stage", "stage1_checkpoint", "--params", "params.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "retraining.cron" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "data").exists()


def test_unreachable_registry_is_said_before_training_starts(project):
    project.write_params(mlflow__enabled=True, mlflow__uri="http://127.0.0.1:9")  # port 9: nothing listens
    from orchestration.tracking import RegistryUnreachableError

    with pytest.raises(RegistryUnreachableError, match=r"http://127.0.0.1:9 is unreachable"):
        run_stage("stage1_checkpoint", project.params())
    assert not Path(".cache").exists() and not Path("data/models").exists()


def test_catalogue_matches_the_committed_report_metrics():
    """The metric names a gate may use are the ones the reports really log (their committed metrics files)."""
    for model, path in ((RESTORER, "data/metrics/restoration.json"), (DETECTOR, "data/metrics/detection.json"),
                        (MOSAIC_DETECTOR, "data/metrics/mosaic_detection.json"), (ANONYMIZER, "data/metrics/anonymization.json")):
        logged = set(json.loads((ROOT / path).read_text()))
        assert REPORT_METRICS[model] <= logged, (model, sorted(REPORT_METRICS[model] - logged))


# --- the gate on real registered models --------------------------------------------------------------------------

SMALL = {f"profiles__embedded__{k}": v for k, v in dict(
    restoration__stage1__num_frame=4, restoration__stage1__mid_channels=8, restoration__stage1__num_blocks=1,
    restoration__stage1__checkpoint_interval=10, restoration__stage1__sample_interval=1000, restoration__stage1__log_interval=5,
    restoration__stage1__lq_size=128, restoration__stage1__load_from=None, restoration__stage2__enabled=False,
    restoration__stage1__region_loss_weight=1.0,  # the figures below were measured with the recipe's uniform loss
    restoration__report__max_scenes=2, restoration__report__sample_clip=None,
).items()} | {"mlflow__enabled": True, "promotion__models": {
    RESTORER: {"compare": [{"metric": "output_psnr_region", "better": "higher", "margin": 0.05}],
               "floors": [{"metric": "output_psnr_region", "min": 8.0}]},
    DETECTOR: {"compare": [{"metric": "AP50"}]},
}}


def _train_and_gate(project: Project, **stage1) -> dict:
    project.write_params(**SMALL, **{f"profiles__embedded__restoration__stage1__{k}": v for k, v in stage1.items()})
    for name in ("stage1_checkpoint", "stage2_checkpoint", "restoration_report", "promoted_models"):
        run_stage(name, project.params())
    return {d["model"]: d for d in json.loads(Path("data/reports/promotion/decisions.json").read_text())["decisions"]}


@pytest.mark.slow
def test_a_worse_model_leaves_the_champion_and_a_better_one_moves_it(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from training.checkpoints import load_generator

    need_media()
    project = Project(tmp_path / "proj")
    project.write_params(**SMALL)
    project.add_sample("astronaut_zoom.mp4")
    project.add_sample("carphone_pristine.mp4")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project.root)
        for name in DATA_STAGES:
            run_stage(name, project.params())
        client = MlflowClient()

        # Measured on this split (2 clips, 1 val scene): the 15-iteration model scores ~10.3 dB inside the regions,
        # a run diverged at lr 0.05 ~5 dB, and the near-identity initialisation ~10.7 dB (training this tiny model
        # on one clip does not transfer to the other). The gate judges the metric, not the effort.
        first = _train_and_gate(project, max_iters=15, lr=1e-3)[RESTORER]
        assert first["outcome"] == "promoted" and first["champion_after"] == 1
        assert "first model" in first["reasons"][0]

        # Deliberately worse: training diverges at a learning rate 50x too high.
        worse = _train_and_gate(project, max_iters=10, lr=0.05)
        assert worse[RESTORER]["outcome"] == "rejected" and worse[RESTORER]["champion_after"] == 1
        reasons = worse[RESTORER]["reasons"]
        assert any("output_psnr_region" in r and "does not beat" in r for r in reasons)
        assert any("below the floor 8" in r for r in reasons)
        assert client.get_model_version_by_alias(RESTORER, "champion").version in (1, "1")
        tags = client.get_model_version(RESTORER, "2").tags
        assert tags["promotion.outcome"] == "rejected" and "output_psnr_region" in tags["promotion.reasons"]
        assert worse[DETECTOR]["outcome"] == "no_challenger"  # nothing registered under that name here

        # Better on the gate's metric.
        better = _train_and_gate(project, max_iters=1, lr=1e-9)[RESTORER]
        assert better["outcome"] == "promoted", better["reasons"]
        assert better["champion_before"] == 1 and better["champion_after"] == 3
        assert client.get_model_version_by_alias(RESTORER, "champion").version in (3, "3")

        # The champion alias serves the promoted weights.
        promoted = mlflow.pytorch.load_model(f"models:/{RESTORER}@champion").eval()
        reference, _ = load_generator("data/models/restoration/stage2/generator.pth")
        x = torch.rand(1, 2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(promoted(x), reference.eval()(x))

        # The gate's own run records the decision as tags and decisions.json.
        runs = mlflow.search_runs(experiment_names=["aubergine-promotion"], order_by=["start_time DESC"], output_format="list")
        assert len(runs) == 3 and runs[0].data.tags[f"promotion.{RESTORER}.outcome"] == "promoted"
        assert runs[1].data.tags[f"promotion.{RESTORER}.outcome"] == "rejected"
        artifacts = [a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id)]
        assert "decisions.json" in artifacts

        # Re-running the gate with nothing new keeps everything as it is.
        run_stage("promoted_models", project.params())
        again = json.loads(Path("data/reports/promotion/decisions.json").read_text())["decisions"][0]
        assert again["outcome"] == "already_champion" and again["champion_after"] == 3

        # New val data (here: another max_scenes, a knob in the evaluation's hash): the same weights registered
        # again are measured on it, and the gate re-scores the champion on that data before comparing -- the
        # same weights give the same numbers, so the challenger does not beat it by the margin.
        project.write_params(**{**SMALL, "profiles__embedded__restoration__report__max_scenes": 1,
                                "profiles__embedded__restoration__stage1__max_iters": 1,
                                "profiles__embedded__restoration__stage1__lr": 1e-9})
        for name in ("restoration_report", "promoted_models"):
            run_stage(name, project.params())
        fair = {d["model"]: d for d in json.loads(Path("data/reports/promotion/decisions.json").read_text())["decisions"]}[RESTORER]
        assert fair["challenger_version"] == 4 and fair["outcome"] == "rejected"
        assert "champion v3 re-scored on the challenger's data" in fair["reasons"][0]
        challenger_run = client.get_run(fair["challenger_run_id"]).data
        champion_run = client.get_run(fair["champion_run_id"]).data
        assert challenger_run.tags["eval.data_hash"] != champion_run.tags["eval.data_hash"]
        assert fair["champion_rescored"]["output_psnr_region"] == pytest.approx(challenger_run.metrics["output_psnr_region"], abs=1e-9)
        assert fair["champion_rescored"]["scenes"] == challenger_run.metrics["scenes"]
        assert client.get_model_version_by_alias(RESTORER, "champion").version in (3, "3")
