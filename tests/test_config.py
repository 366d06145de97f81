"""params.yaml validation: unknown keys are errors with a did-you-mean, profiles merge."""

from pathlib import Path

import pytest
import yaml

from indivaid_core import config

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_resolve_every_variant():
    cfg = config.load(REPO / "params.yaml")
    assert cfg.profile == "default"
    for name in cfg.variants:
        for ds in cfg.pipeline.datasets:
            v = cfg.variant(name, ds)
            assert v.model.fusion in ("attention", "mean", "individual_only")
    assert cfg.variant("clipreid").model.meta_net is False
    assert cfg.variant("clipreid").model.fusion == "individual_only"
    assert cfg.variant("abl_ctx2").model.n_ctx == 2
    assert cfg.variant("image_only").stage2.loss_weights.i2t == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"modle.backbone": "x"}, "did you mean 'model'"),
        ({"model.fusoin": "mean"}, "did you mean 'fusion'"),
        ({"stage2.loss_weights.tripplet": 1.0}, "did you mean 'triplet'"),
        ({"model.fusion": "mea"}, "did you mean 'mean'"),
        ({"profile": "papr"}, "did you mean 'paper'"),
        ({"stage1.epochs": "many"}, "stage1.epochs"),
    ],
)
def test_bad_keys_name_the_key_and_a_suggestion(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(REPO / "params.yaml", override)


def test_profile_overrides_merge_over_the_base():
    cfg = config.load(REPO / "params.yaml", {"profile": "paper"})
    assert cfg.model.backbone == "ViT-B-16" and tuple(cfg.model.image_size) == (256, 128)
    assert cfg.seed == 451 and cfg.pipeline.seeds == [451]
    # untouched keys keep the base value
    assert cfg.stage2.margin == config.load(REPO / "params.yaml").stage2.margin


@pytest.mark.parametrize("block", [{"pipeline": {"datasets": ["x"]}}, {"runs": {}}])
def test_a_profile_cannot_set_what_dvc_foreach_reads(tmp_path, block):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["full"].update(block)
    raw["profile"] = "full"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match="profiles.full.* top-level"):
        config.load(tmp_path / "p.yaml")


def test_run_text_must_match_its_variant(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    first = next(iter(raw["runs"]))
    raw["runs"][first]["text"] = "ctx2"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match="uses text run"):
        config.load(tmp_path / "p.yaml")
