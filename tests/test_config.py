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
    cfg = config.load(REPO / "params.yaml", {"profile": "paper"}, check_cells=False)
    assert cfg.model.backbone == "ViT-B-16" and tuple(cfg.model.image_size) == (256, 128)
    assert cfg.seed == 451 and cfg.pipeline.seeds == [451]
    # untouched keys keep the base value
    assert cfg.stage2.margin == config.load(REPO / "params.yaml").stage2.margin


def test_one_switch_selects_the_paper_cells(tmp_path):
    """`indivaid profile paper` sets the profile and writes the cells dvc.yaml builds from."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    config.write_cells(params)
    assert len(config.load(params).cells()) == 25  # 12 main, 4 ablation, 9 scaling
    config.write_cells(params, "paper")
    cells = yaml.safe_load((tmp_path / config.CELLS_FILE).read_text())["cells"]
    assert cells["profile"] == "paper" and "Stoat" in cells["datasets"]
    # null: the corruption sweep and the attention figures on every dataset
    assert cells["robustness_datasets"] == cells["attention_datasets"] == cells["datasets"]
    cfg = config.load(params)
    assert cfg.profile == "paper" and len(cfg.cells()) == 9 * 4 + 4
    assert "# ViT-B-16 + OpenAI weights" in params.read_text()  # comments kept
    with pytest.raises(config.ConfigError, match="run `indivaid profile default`"):
        config.load(params, {"profile": "default"})


def test_each_trained_cell_names_the_text_run_it_reads(tmp_path):
    """dvc.yaml lists `${item.text_run}` per stage-2 cell: the key must be the variant's run,
    and a cells.yaml naming another run (params.yaml edited after) is refused."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    config.write_cells(params)
    cells = yaml.safe_load((tmp_path / config.CELLS_FILE).read_text())["cells"]
    assert cells["stage2_cells"]["synth-tiger-indivaid"] == {
        "dataset": "synth-tiger",
        "variant": "indivaid",
        "text_run": "pipeline.text_runs.meta-ctx4",
    }
    assert cells["ablation_cells"]["synth-stoat-abl_ctx2"]["text_run"] == "pipeline.text_runs.ctx2"
    # no text run: the variant's own block, which dvc.yaml lists anyway
    assert cells["stage2_cells"]["synth-stoat-zero_shot"]["text_run"] == "variants.zero_shot"
    assert set(cells["scaling_cells"]) == {
        f"synth-tiger-n{n}-{v}" for n in (8, 16, 32) for v in ("image_only", "clipreid", "indivaid")
    }
    params.write_text(
        params.read_text().replace("indivaid: {text: meta-ctx4}", "indivaid: {text: ctx2}")
    )
    with pytest.raises(config.ConfigError, match="run `indivaid profile default`"):
        config.load(params)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"stage2.epochs": 0}, "stage2.epochs: expected 1 or more, got 0"),
        ({"stage2.epochs": -1}, "stage2.epochs"),
        ({"stage1.epochs": -1}, "stage1.epochs: expected 1 or more"),
        ({"stage2.p": 0}, "stage2.p: expected 2 or more, got 0"),
        ({"stage2.k": -1}, "stage2.k"),
        ({"model.image_size": [32]}, r"model.image_size: expected \[H, W\]"),
        ({"model.image_size": [0, 0]}, "model.image_size"),
        ({"stage2.label_smoothing": 1.5}, "stage2.label_smoothing"),
        ({"stage2.milestones": [8, 2]}, "stage2.milestones"),
        (
            {"data.datasets.synth-stoat.overrides": {"stage2": {"epoch": 3}}},
            "did you mean 'epochs'",
        ),
        ({"data.datasets.synth-stoat.overrides": {"stage2": {"p": 1}}}, "synth-stoat.overrides"),
        ({"pipeline.variants": ["indivaid", "clipreed"]}, "did you mean 'clipreid'"),
        ({"stage2.sampler": "clipreid"}, "min_iters_per_epoch"),
    ],
)
def test_out_of_range_settings_are_refused_at_load(override, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(REPO / "params.yaml", override)


def test_unknown_profile_lists_each_valid_profile_once():
    with pytest.raises(config.ConfigError) as err:
        config.load(REPO / "params.yaml", {"profile": "nope"})
    assert str(err.value).count("'default'") == 1


def test_the_scaling_study_names_datasets_that_resolve_to_their_base():
    cfg = config.load(REPO / "params.yaml")
    base = cfg.pipeline.scaling.dataset
    names = cfg.scaling_datasets()
    assert names == [config.scaled_name(base, n) for n in cfg.pipeline.scaling.train_individuals]
    small = cfg.dataset(names[0])
    assert small.train_individuals == cfg.pipeline.scaling.train_individuals[0]
    assert small.path == cfg.dataset(base).path and small.val_individuals > 0
    assert cfg.variants_of(names[0]) == cfg.pipeline.scaling.variants
    assert "ctx2" not in cfg.text_runs_of(names[0]) and "ctx2" in cfg.text_runs_of(base)
    with pytest.raises(config.ConfigError, match="did you mean"):
        cfg.dataset(f"{base}-n9")  # not a size of the study


def test_a_scaling_side_merges_its_own_overrides_over_its_datasets():
    over = {
        "pipeline.scaling.overrides.synth-tiger-n16": {"stage2": {"epochs": 3}},
        "data.datasets.synth-tiger.overrides": {"stage2": {"epochs": 5, "lr": 1e-3}},
    }
    cfg = config.load(REPO / "params.yaml", over)
    run = cfg.for_run("synth-tiger-n16").stage2
    assert (run.epochs, run.lr) == (3, 1e-3)  # the side's wins; the dataset's still applies
    assert cfg.for_run("synth-tiger-n8").stage2.epochs == 5
    assert cfg.for_run("synth-tiger").stage2.epochs == 5


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            {"pipeline.scaling.overrides.synth-tiger-n16.stage2.epochs": 0},
            r"overrides\.synth-tiger-n16.*epochs",
        ),
        ({"pipeline.scaling.overrides.synth-tiger-n16.stage3": {}}, "did you mean 'stage2'"),
        ({"pipeline.scaling.overrides.synth-tigre-n16": {}}, "key '[^']*synth-tigre-n16'"),
        ({"pipeline.scaling.overrides.synth-tiger-n1": {}}, "key '[^']*synth-tiger-n1'"),
        ({"pipeline.scaling.train_individuals": [8, 16, 24]}, "no entry for 'synth-tiger-n24'"),
        ({"pipeline.robustness_datasets": ["synth-tigre"]}, "key 'pipeline.robustness_datas"),
        ({"pipeline.attention_datasets": ["ATRW"]}, "key 'pipeline.attention_datasets.ATRW'"),
    ],
)
def test_bad_side_and_figure_settings_are_refused_naming_the_key(override, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(REPO / "params.yaml", override, check_cells=False)


def test_another_study_keeps_the_other_sides_entries_unused():
    """A profile cannot delete keys, so switching the study leaves synth-tiger's entries."""
    over = {
        "pipeline.scaling.dataset": "synth-stoat",
        "pipeline.scaling.train_individuals": [10],
        "pipeline.scaling.overrides.synth-stoat-n10": {"stage2": {"epochs": 3}},
    }
    cfg = config.load(REPO / "params.yaml", over, check_cells=False)
    assert cfg.for_run("synth-stoat-n10").stage2.epochs == 3
    assert "synth-tiger-n16" in cfg.pipeline.scaling.overrides


def test_a_side_entry_only_in_a_profile_is_refused():
    """DVC reads params.yaml's top level only: a side's entry there is what dvc.yaml lists."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = raw["pipeline"]["scaling"]["overrides"].pop("synth-tiger-n4")
    raw["profiles"]["smoke"]["pipeline"]["scaling"]["overrides"] = {"synth-tiger-n4": entry}
    with pytest.raises(config.ConfigError, match="no top-level entry for 'synth-tiger-n4'"):
        config.resolve({**raw, "profile": "smoke"})
    config.resolve({**raw, "profile": "default"})  # the default runs no n = 4 side


def test_a_cells_file_with_other_figure_datasets_is_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    config.write_cells(params)
    edited = params.read_text().replace(
        "robustness_datasets: [synth-tiger]", "robustness_datasets: [synth-stoat]"
    )
    assert edited != params.read_text()
    params.write_text(edited)
    with pytest.raises(config.ConfigError, match="does not list the cells"):
        config.load(params)


def test_figure_datasets_default_to_every_dataset():
    cfg = config.load(REPO / "params.yaml", {"pipeline.robustness_datasets": None}, False)
    cells = config.cells_of(cfg)["cells"]
    assert cells["robustness_datasets"] == cfg.pipeline.datasets
    assert cells["attention_datasets"] == ["synth-tiger"]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"pipeline.scaling.dataset": "ATRW"}, "not in pipeline.datasets"),
        ({"pipeline.scaling.variants": ["indivaid", "abl_mean"]}, "scaling.variants.abl_mean"),
        ({"pipeline.scaling.train_individuals": [8, 64]}, "must stay below"),
        ({"pipeline.scaling.train_individuals": [1]}, "2 or more"),
        ({"data.datasets.synth-tiger.val_individuals": -1}, "val_individuals"),
    ],
)
def test_bad_scaling_settings_are_refused_naming_the_key(override, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(REPO / "params.yaml", override)
