"""params.yaml schema and the one switch between the embedded default and the full recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid_in_both_profiles():
    embedded = load_params(ROOT / "params.yaml")
    full = load_params(ROOT / "params.yaml", {"profile": "full"})
    assert embedded.profile == "embedded" and full.profile == "full"


def test_full_profile_is_the_recipe_as_written():
    """The body of params.yaml is the full GPU recipe; the defaults DESIGN.md names are there."""
    full = load_params(ROOT / "params.yaml", {"profile": "full"})
    s1, s2 = full.restoration.stage1, full.restoration.stage2
    assert (s1.degrade, s1.random_mosaic_params, s1.num_frame, s1.batch_size) == (False, False, 12, 1)
    assert (s1.max_iters, s1.log_interval, s1.checkpoint_interval, s1.lr) == (3000, 10, 500, 5e-5)
    assert s1.lr_mult == {"spynet": 0.0, "feat_extract": 0.0, "deform_align": 0.0, "backbone": 0.0}
    assert (s2.lr_generator, s2.lr_discriminator, s2.perceptual_weight, s2.gan_loss_weight) == (2e-5, 5e-5, 0.05, 0.02)
    assert (s2.max_iters, s2.checkpoint_interval) == (5000, 500)
    assert s1.load_from and s1.load_from.endswith("lada_mosaic_restoration_model_generic_v1.2.pth")


def test_embedded_profile_only_overlays_what_it_names():
    raw = raw_params()
    embedded = parse_params(raw)
    full = parse_params({**raw, "profile": "full"})
    overlay = raw["profiles"]["embedded"]
    assert embedded.restoration.stage1.max_iters == overlay["restoration"]["stage1"]["max_iters"]
    assert embedded.restoration.stage1.max_iters < full.restoration.stage1.max_iters
    # Knobs the overlay does not name are the recipe's.
    # The embedded stand-in trains all but the flow network (README, "The restorer"); the recipe freezes the front half.
    assert embedded.restoration.stage1.lr_mult == {**full.restoration.stage1.lr_mult, "feat_extract": 1.0,
                                                   "deform_align": 1.0, "backbone": 1.0}
    assert embedded.restoration.stage2.perceptual_weight == full.restoration.stage2.perceptual_weight
    assert embedded.mosaic == full.mosaic
    assert embedded.data.model_copy(update={"workers": full.data.workers}) == full.data


@pytest.mark.parametrize(
    ("dotted", "value", "expect"),
    [
        ("tracking.iou_threshold", 1.5, ["tracking.iou_threshold", "1.5", "less than or equal to 1"]),
        ("dataset.crf", 99, ["dataset.crf", "99", "51"]),
        ("mosaic.modes", ["square_mid", "blur"], ["mosaic.modes.1", "'blur'", "square_mid", "rect_avg"]),
        ("detection.faces", "retina", ["detection.faces", "'retina'", "yunet", "haar"]),
        ("data.min_frames", 0, ["data.min_frames", "0", "greater than 0"]),
        ("tracking.typo_key", 3, ["tracking.typo_key", "unknown key"]),
        ("mosaic.degrade.crf", [30, 20], ["mosaic.degrade.crf", "low <= high"]),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(dotted, value, expect):
    raw = raw_params()
    raw["profile"] = "full"
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "params.yaml")
    message = str(err.value)
    for fragment in expect:
        assert fragment in message, (fragment, message)


def test_unknown_profile_lists_the_allowed_ones():
    raw = raw_params()
    raw["profile"] = "gpu"
    with pytest.raises(ConfigError, match=r"profile = 'gpu' is not defined \(allowed: full, embedded\)"):
        parse_params(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_schema_defaults_are_the_recipe_in_params_yaml():
    """Code defaults only back up params.yaml; they must not tell a different story than its body."""
    body = {**raw_params(), "profiles": {"embedded": {}}}  # the body alone, under the default profile name
    assert parse_params(body).model_dump() == Params().model_dump()
