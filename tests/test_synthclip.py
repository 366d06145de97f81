"""The synthetic CLIP: captions state the drawn truth, pretraining learns, the weights load.

How well the committed weights align text and images is a benchmark
(benchmarks/bench_synthclip.py), not a test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from indivaid_core.data.images import load_rgb
from indivaid_core.model import build_clip
from indivaid_core.model.backbones import SYNTHCLIP_FILE, synthclip_path
from indivaid_core.repro.captions import caption, coat_attributes
from indivaid_core.repro.patterns import Stripes
from indivaid_core.repro.synthetic import PRESETS, generate_preset, tiny_preset
from indivaid_core.train.pretrain import pretrain_clip

REPO = Path(__file__).resolve().parents[1]
# The words a caption may use for each value: the specification, written independently.
WORDS = {
    "many": ("many", "dense", "lots of"),
    "few": ("few", "sparse", "a handful of"),
    "thick": ("thick", "broad"),
    "thin": ("thin", "narrow"),
}


def _stripes(n: int, thickness: float) -> Stripes:
    """A tiger flank with `n` stripes whose widths say `thickness`."""
    rng = np.random.default_rng(0)
    s = Stripes.sample(rng, (n, n))
    return dataclasses.replace(s, width=np.full(n, 0.0315 * thickness), amp=np.zeros(n))


@pytest.mark.parametrize(
    ("n", "thickness", "density", "width"), [(20, 1.9, "many", "thick"), (4, 0.5, "few", "thin")]
)
def test_a_known_individuals_caption_states_its_coat(n, thickness, density, width):
    coat = coat_attributes("stripes", _stripes(n, thickness))
    assert coat == {"density": density, "thickness": width, "waviness": "straight"}
    photo = {"viewpoint": "left", "daynight": "night", "occlusion": "none", "background": "sand"}
    for seed in range(8):  # every template and synonym draw states every attribute
        text = caption("tiger", "stripes", coat, photo, np.random.default_rng(seed)).lower()
        assert "tiger" in text and "left" in text and "straight" in text
        assert any(w in text for w in WORDS[density]), text
        assert any(w in text for w in WORDS[width]), text
        assert "night" in text or "infrared" in text, text


def test_generated_metadata_carries_caption_and_attribute_columns(tmp_path):
    df = generate_preset(tmp_path, tiny_preset("synth-stoat", 3, 2), image_size=40)
    assert {"caption", "pattern", "coat_belly_line", "coat_islands", "background"} <= set(df)
    for row in df.itertuples():
        assert "stoat" in row.caption and row.viewpoint in row.caption
        assert row.coat_islands in ("few", "some", "many")


def test_a_short_pretraining_run_lowers_the_contrastive_loss(tiny_suite):
    df, root = tiny_suite
    images = torch.stack(
        [torch.from_numpy(np.asarray(load_rgb(root / p))).permute(2, 0, 1) for p in df.path]
    )
    model = build_clip("tiny-vit", None, (48, 48))
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)(
        df["caption"].tolist()
    )
    hist = pretrain_clip(
        model, images, tokens, epochs=12, batch_size=len(df), lr=1e-3, image_lr_factor=1.0,
        weight_decay=0.0, warmup_steps=1, pad=0, seed=0, num_threads=1,
    )  # fmt: skip
    assert np.mean([h["loss"] for h in hist[-3:]]) < 0.8 * np.mean([h["loss"] for h in hist[:3]])


@pytest.fixture(scope="module")
def synthclip_file() -> Path:
    path = REPO / SYNTHCLIP_FILE
    assert path.is_file(), f"{path}: missing; the README's set-up pulls it (dvc pull pretrain)"
    return path


def test_the_synthclip_weights_load_through_build_clip(synthclip_file, monkeypatch):
    monkeypatch.chdir(REPO)
    assert synthclip_path() == synthclip_file
    model = build_clip("lite0", "synthclip", (96, 96), 0)  # params' stride 0 = patch size
    from safetensors.torch import load_file

    stored = load_file(str(synthclip_file))
    own = model.state_dict()
    assert set(stored) == set(own)
    for key in ("text_projection", "token_embedding.weight", "visual.head.proj.weight"):
        assert torch.equal(own[key], stored[key].float()), key
    random_text = build_clip("lite0", "lite0-imagenet", (96, 96))
    assert not torch.equal(own["text_projection"], random_text.state_dict()["text_projection"])


def test_synthclip_is_found_from_any_folder_and_its_absence_says_how_to_get_it(
    synthclip_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert synthclip_path() == synthclip_file  # the package's own repository
    monkeypatch.setenv("INDIVAID_SYNTHCLIP", str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(Exception, match="nowhere"):
        build_clip("lite0", "synthclip", (96, 96))


def test_the_corpus_presets_exist_and_add_species():
    from indivaid_core.repro.synthetic import PRETRAIN_PRESETS

    assert set(PRETRAIN_PRESETS) <= set(PRESETS)
    assert {"zebra", "leopard", "cattle"} <= {PRESETS[p].species for p in PRETRAIN_PRESETS}
