"""The restoration training loop: freezing, kill-and-resume, Stage 2 reducing to Stage 1, bad inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training import checkpoints as ckpt
from training.basicvsrpp import BasicVSRPlusPlusNet
from training.data import DatasetTooShortError
from training.loop import TrainSettings, train

sys.path.insert(0, str(Path(__file__).parent))
from lada_fixture import write_tiny_dataset  # noqa: E402

FROZEN = {"spynet": 0.0, "feat_extract": 0.0, "deform_align": 0.0, "backbone": 0.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("lada") / "restoration")


def settings(dataset: Path, work: Path, **kw) -> TrainSettings:
    base = TrainSettings(
        stage="stage1", dataset_root=dataset, work_dir=work, fingerprint="test", num_frame=4, max_iters=4, log_interval=1,
        checkpoint_interval=2, sample_interval=100, lr=1e-3, lr_mult=dict(FROZEN), lq_size=128, mid_channels=8,
        num_blocks=1, seed=5, device="cpu", progress=False,
    )
    return replace(base, **kw)


def generator_of(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.split_prefix(ckpt.state_dict_of(ckpt.read_checkpoint(path)), "generator.")


def test_frozen_groups_do_not_change_and_get_no_gradient(dataset, tmp_path):
    torch.manual_seed(5)
    init = BasicVSRPlusPlusNet(8, 1).state_dict()
    logs = []
    result = train(settings(dataset, tmp_path / "w"), on_log=lambda m, i: logs.append((i, m)))
    after = generator_of(result.checkpoint)
    frozen_keys = [k for k in init if k.split(".")[0] in FROZEN]
    head_keys = [k for k in init if k.split(".")[0] not in FROZEN and not k.startswith("spynet")]
    assert all(torch.equal(after[k], init[k]) for k in frozen_keys)
    assert any(not torch.equal(after[k], init[k]) for k in head_keys)
    assert result.frozen_params > result.trainable_params > 0
    assert [i for i, _ in logs] == [1, 2, 3, 4]
    assert {"loss_pix", "lr", "iters_per_s", "peak_memory_mb"} <= set(logs[0][1])


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_training import settings
    from training.loop import train
    def on_log(metrics, step):
        if step == 5:  # after the checkpoint at iteration 4, before the one at 6
            os.kill(os.getpid(), signal.SIGKILL)
    train(settings(Path({dataset!r}), Path({work!r}), max_iters=8, checkpoint_interval=2 * 2), on_log=on_log)
""")


def test_killed_run_resumes_at_last_checkpoint_and_matches_an_uninterrupted_run(dataset, tmp_path):
    work = tmp_path / "killed"
    script = KILLER.format(tests=str(Path(__file__).parent), dataset=str(dataset), work=str(work))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = ckpt.read_checkpoint(work / "latest.pth")
    assert state["meta"]["iteration"] == 4

    resumed = train(settings(dataset, work, max_iters=8, checkpoint_interval=4))
    assert resumed.resumed_from == 4 and resumed.iterations == 8
    assert [h["iteration"] for h in resumed.history] == list(range(1, 9))  # history up to the kill point survived
    straight = train(settings(dataset, tmp_path / "straight", max_iters=8, checkpoint_interval=4))
    a, b = generator_of(resumed.checkpoint), generator_of(straight.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    # A finished run asked again does no work; a different recipe (fingerprint) starts afresh.
    again = train(settings(dataset, work, max_iters=8, checkpoint_interval=4))
    assert again.resumed_from == 8 and again.history == resumed.history
    fresh = train(settings(dataset, work, max_iters=2, fingerprint="other-recipe"))
    assert fresh.resumed_from == 0


def test_stage2_with_zero_extra_weights_is_pixel_loss_training(dataset, tmp_path):
    torch.manual_seed(9)
    init = ckpt.export_lada(BasicVSRPlusPlusNet(8, 1), tmp_path / "init.pth")
    common = dict(init_from=init, max_iters=3, lr=2e-4)
    pixel = train(settings(dataset, tmp_path / "s1", **common))
    zero = train(settings(dataset, tmp_path / "s2", stage="stage2", perceptual_weight=0.0, gan_loss_weight=0.0, ema_decay=0.999, **common))
    a, b = generator_of(pixel.checkpoint), generator_of(zero.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = train(settings(dataset, tmp_path / "s2b", stage="stage2", perceptual_weight=0.05, gan_loss_weight=0.02,
                          ema_decay=0.9, **common))
    c = generator_of(full.checkpoint)
    assert any(not torch.equal(a[k], c[k]) for k in a), "perceptual + GAN losses changed nothing"
    sd = ckpt.state_dict_of(ckpt.read_checkpoint(full.checkpoint))
    assert any(k.startswith("discriminator.conv_1.weight_orig") for k in sd)
    assert not torch.equal(sd["generator_ema.conv_last.weight"], sd["generator.conv_last.weight"])  # EMA lags
    assert {"loss_perceptual", "loss_gan", "loss_d_real", "loss_d_fake"} <= set(full.history[-1])
    assert "random-init VGG19" in full.labels["perceptual"]


def test_num_frame_longer_than_every_scene_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(DatasetTooShortError, match=r"num_frame=40.*longest 14 frames"):
        train(settings(dataset, tmp_path / "w", num_frame=40))


def test_everything_frozen_is_refused(dataset, tmp_path):
    all_frozen = {g: 0.0 for g in ("spynet", "feat_extract", "deform_align", "backbone", "reconstruction", "upsample1",
                                   "upsample2", "conv_hr", "conv_last")}
    with pytest.raises(ValueError, match="nothing would train"):
        train(settings(dataset, tmp_path / "w", lr_mult=all_frozen))


@pytest.mark.parametrize("override, needle", [
    ({"profiles__embedded__restoration__stage1__num_frame": 60}, "num_frame=60"),
    ({"profiles__embedded__restoration__stage1__load_from": "weights/lada.pth"}, "Git-LFS pointer"),
    ({"profiles__embedded__restoration__stage1__load_from": "weights/resnet.pth"}, "not a BasicVSR++ generator"),
])
def test_stage_cli_bad_training_inputs_are_clean_errors(project, override, needle):
    import torchvision
    from typer.testing import CliRunner

    from orchestration.cli import app

    write_tiny_dataset(Path("data/datasets/restoration"))
    Path("data/datasets/restoration/index.json").write_text("{}")
    Path("weights").mkdir()
    Path("weights/lada.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), "weights/resnet.pth")
    project.write_params(**override)
    result = CliRunner().invoke(app, ["stage", "stage1_checkpoint", "-p", "params.yaml"])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not Path("data/models/restoration/stage1").exists()  # nothing half-published


def test_region_loss_weight_reads_the_masks_and_weights_only_the_region(dataset, tmp_path):
    from training.data import PairSampler
    from training.loop import charbonnier, region_weight

    sampler = PairSampler(dataset, "train", 4, 128, 3, masks=True)
    batch = sampler.sample(2)
    assert batch.mask is not None and batch.mask.shape == (2, 4, 1, 128, 128)
    assert set(torch.unique(batch.mask).tolist()) == {0.0, 1.0}
    assert region_weight(batch, 1.0) is None  # the recipe: uniform loss
    weight = region_weight(batch, 20.0)
    assert torch.equal(torch.unique(weight), torch.tensor([1.0, 20.0]))
    # an error only outside the region weighs 20x less than the same error inside
    inside, outside = batch.gt.clone(), batch.gt.clone()
    inside += 0.1 * batch.mask
    outside += 0.1 * (1 - batch.mask)
    frac = batch.mask.mean().item()
    assert charbonnier(inside, batch.gt, weight=weight).item() == pytest.approx(0.1 * 20 * frac / (20 * frac + 1 - frac), rel=1e-3)
    assert charbonnier(outside, batch.gt, weight=weight).item() == pytest.approx(0.1 * (1 - frac) / (20 * frac + 1 - frac), rel=1e-3)
    # and the loop trains with it (a different run from the uniform one)
    weighted = train(settings(dataset, tmp_path / "w", region_loss_weight=20.0, max_iters=2))
    uniform = train(settings(dataset, tmp_path / "u", max_iters=2))
    assert weighted.history[-1]["loss_pix"] != pytest.approx(uniform.history[-1]["loss_pix"])
