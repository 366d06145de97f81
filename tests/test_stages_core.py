"""Stage 1 and stage 2 called directly with their own settings: no repository, no chdir.

The pipeline reaches them through `repro.training`; here they get a table, an image folder and
the few settings they read (`Stage1Run`, `Stage2Run`), as a user's own script would.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from indivaid_core.config import ConfigError, to_dict
from indivaid_core.train import stage1, stage2
from indivaid_core.train.export import load_export
from indivaid_core.train.stage1 import Stage1Run, train_stage1
from indivaid_core.train.stage2 import Stage2Run, train_stage2


@pytest.fixture
def runs(smoke_cfg) -> tuple[Stage1Run, Stage2Run]:
    """The smoke profile's settings on the CPU: a tiny random ViT, seconds per run."""
    cfg = dataclasses.replace(smoke_cfg, device="cpu")
    return Stage1Run.of(cfg), Stage2Run.of(cfg)


def test_stage1_then_stage2_train_from_explicit_settings(tiny_suite, runs, tmp_path):
    table, root = tiny_suite
    run1, run2 = runs
    s1 = train_stage1(
        run1,
        train_table=table,
        image_root=root,
        species="tiger",
        out_dir=tmp_path / "stage1",
        cache_dir=tmp_path / "cache",
    )
    assert s1["epochs"] == run1.stage1.epochs and s1["n_identities"] == table.identity.nunique()
    desc = load_file(str(tmp_path / "stage1" / "descriptions.safetensors"))
    assert desc["g"].shape[0] == len(table) and desc["h"].shape[0] == table.identity.nunique()
    s2 = train_stage2(
        run2,
        train_table=table,
        image_root=root,
        out_dir=tmp_path / "model",
        stage1_dir=tmp_path / "stage1",
        cache_dir=tmp_path / "cache",
    )
    assert s2["trained"] and s2["epochs"] == run2.stage2.epochs
    assert (tmp_path / "model" / "attention.pt").exists()  # the fusion module trained
    encoder, spec = load_export(tmp_path / "model")
    assert spec["num_classes"] == table.identity.nunique()
    assert spec["image_size"] == list(run2.model.image_size)
    assert spec["eval_feature"] == run2.model.eval_feature
    with torch.no_grad():
        out = encoder(torch.rand(2, 3, *spec["image_size"]))
    assert torch.isfinite(out["global"]).all()


def test_untrained_stage2_exports_without_reading_stage1(tiny_suite, runs, tmp_path):
    table, root = tiny_suite
    result = train_stage2(
        runs[1], train_table=table, image_root=root, out_dir=tmp_path, stage1_dir=None, train=False
    )
    assert result["trained"] is False and not (tmp_path / "checkpoint.pt").exists()
    assert load_export(tmp_path)[1]["num_classes"] == table.identity.nunique()


def test_the_i2t_loss_without_a_stage1_run_is_a_settings_error(tiny_suite, runs, tmp_path):
    table, root = tiny_suite
    with pytest.raises(ConfigError, match="stage2.loss_weights.i2t > 0 needs a stage-1 run"):
        train_stage2(runs[1], train_table=table, image_root=root, out_dir=tmp_path, stage1_dir=None)


def test_run_settings_hold_the_whole_sections_as_the_config_has_them(smoke_cfg, tiny_suite):
    """A checkpoint's fingerprint covers the model and stage sections whole, as the config
    holds them: a change to any of their settings trains afresh instead of resuming."""
    table, _ = tiny_suite
    whole = json.loads(json.dumps(to_dict(smoke_cfg)))
    one = stage1.run_settings(Stage1Run.of(smoke_cfg), table, "tiger")
    two = stage2.run_settings(Stage2Run.of(smoke_cfg), table, None, None)
    assert one["model"] == two["model"] == whole["model"]
    assert one["stage1"] == {k: v for k, v in whole["stage1"].items() if k != "processes"}
    assert two["stage2"] == whole["stage2"]
    assert one["seed"] == two["seed"] == smoke_cfg.seed
