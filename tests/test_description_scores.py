"""Stage-1 descriptions scored against the generator's truth: a description that says the true
value is recovered, one that says nothing is at chance, and consistency reads identities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from indivaid_core.evaluate.alignment import encode_texts
from indivaid_core.model import build_clip
from indivaid_core.repro.captions import COAT_ATTRIBUTES, value_prompts
from indivaid_core.repro.description_scores import consistency, score_run


@pytest.fixture(scope="module")
def model():
    return build_clip("tiny-vit", None, (32, 32))


def _run(tmp_path, table, g, h):
    ids = sorted(table["identity"].unique())
    labels = torch.tensor(table["identity"].map(ids.index).to_numpy())
    save_file({"g": g, "g_labels": labels, "h": h}, str(tmp_path / "descriptions.safetensors"))
    meta = {"labels": {n: i for i, n in enumerate(ids)}, "image_ids": list(table["image_id"])}
    (tmp_path / "labels.json").write_text(json.dumps(meta))


def test_descriptions_that_state_the_truth_are_recovered(tiny_table, tmp_path, model):
    table, _ = tiny_table
    attr, values = "thickness", COAT_ATTRIBUTES["stripes"]["thickness"]
    phrases = torch.from_numpy(encode_texts(model, value_prompts("tiger", "stripes", attr)))
    g = phrases[table[f"coat_{attr}"].map(values.index).to_numpy()]
    first = table.groupby("identity")[f"coat_{attr}"].first()
    h = phrases[first.map(values.index).to_numpy()]
    _run(tmp_path, table, g, h)
    rows = {(r["attribute"], r["target"]): r for r in score_run(tmp_path, table, model, "tiger")}
    assert rows[(attr, "g (image)")]["accuracy"] == 1.0
    assert rows[(attr, "h (individual)")]["accuracy"] == 1.0
    assert rows[(attr, "g (image)")]["chance"] == pytest.approx(1 / 3)


def test_a_table_without_truth_is_not_scored(tiny_table, tmp_path, model):
    table, _ = tiny_table
    assert score_run(tmp_path, table.drop(columns="pattern"), model, "tiger") is None


def test_consistency_is_higher_within_than_between_for_clustered_descriptions():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    labels = np.repeat(np.arange(4), 5)
    g = centres[labels] + 0.1 * rng.normal(size=(20, 16))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    c = consistency(g, labels)
    assert c["within"] > 0.9 and c["between"] < 0.5
