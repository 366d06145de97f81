"""Gallery index and identification: search backends, persistence, model identity, open set,
and photos with bad files mixed in, on a tiny random-model export."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from indivaid_core.config import ModelCfg
from indivaid_core.identify import (
    BACKENDS,
    BadInputWarning,
    CalibrationError,
    EmptyGalleryError,
    GalleryIndex,
    ModelMismatchError,
    add_to_index,
    build_index,
    calibrate_threshold,
    identify,
    load_model,
    make_searcher,
    open_index,
    rank_identities,
    recall_at_1,
    result_frame,
    save_index,
    self_recall,
)
from indivaid_core.identify.demo import gallery_and_new_photos, random_export
from indivaid_core.identify.index import check_identity

REPO = Path(__file__).resolve().parents[1]
MODEL = {
    "weights_sha256": "a" * 64,
    "backbone": "tiny-vit",
    "image_size": [32, 32],
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "eval_feature": "concat",
    "flip": False,
    "dim": 8,
}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clusters(n_ids: int, per_id: int, dim: int, spread: float, seed: int):
    """Unit vectors around random identity centres, and the centres (re-ID-like features)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_ids, dim)))
    ids = np.repeat(np.arange(n_ids), per_id)
    noise = spread / np.sqrt(dim) * rng.standard_normal((len(ids), dim))
    return unit(centres[ids] + noise), ids, centres


def sample_near(centres: np.ndarray, ids: np.ndarray, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    return unit(centres[ids] + spread / np.sqrt(dim) * rng.standard_normal((len(ids), dim)))


def make_index(vectors, ids, backend="exact", **kw) -> GalleryIndex:
    gallery = pd.DataFrame(
        {"identity": [f"id{i:03d}" for i in ids], "path": [f"g{j}.jpg" for j in range(len(ids))]}
    )
    return GalleryIndex(
        torch.from_numpy(vectors), gallery, dict(MODEL, dim=vectors.shape[1]), backend, **kw
    )


# --- search backends -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_exact_backends_match_brute_force_and_incremental_add(backend):
    rng = np.random.default_rng(0)
    x, q = unit(rng.standard_normal((700, 24))), unit(rng.standard_normal((30, 24)))
    params = {"chunk": 128} if backend == "exact" else {}  # several chunks and blocks
    s = make_searcher(backend, 24, params)
    s.add(x[:300])
    s.add(x[300:])
    d, i = s.search(q, 7)
    ref = torch.cdist(torch.from_numpy(q).double(), torch.from_numpy(x).double())
    ref_d, ref_i = ref.topk(7, largest=False)
    np.testing.assert_array_equal(i, ref_i.numpy())
    np.testing.assert_allclose(d, ref_d.numpy(), atol=1e-5)


def test_exact_float16_storage_is_exact_for_rounded_vectors():
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((500, 16))).astype(np.float16)
    q = unit(rng.standard_normal((20, 16)))
    s = make_searcher("exact", 16, {"dtype": "float16"})
    s.add(x)
    _, i = s.search(q, 3)
    ref = torch.cdist(torch.from_numpy(q).double(), torch.from_numpy(x).double())
    np.testing.assert_array_equal(i, ref.topk(3, largest=False).indices.numpy())


def test_approximate_backends_recall_against_exact():
    x, _, centres = clusters(40, 10, 32, 0.6, seed=2)
    q = sample_near(centres, np.arange(40).repeat(2), 0.6, seed=3)
    exact = make_searcher("exact", 32)
    exact.add(x)
    truth = exact.search(q, 1)[1]
    # IVF visiting every cell is exhaustive, so it must agree with exact search exactly.
    ivf_all = make_searcher("faiss-ivf", 32, {"nlist": 4, "nprobe": 4})
    ivf_all.add(x)
    assert recall_at_1(ivf_all.search(q, 1)[1], truth) == 1.0
    assert ivf_all.params["nlist"] == 4
    hnsw = make_searcher("faiss-hnsw", 32, {"m": 16, "ef_search": 128})
    hnsw.add(x)
    assert recall_at_1(hnsw.search(q, 1)[1], truth) >= 0.95
    ivf_one = make_searcher("faiss-ivf", 32, {"nlist": 8, "nprobe": 1})
    ivf_one.add(x)
    r1 = recall_at_1(ivf_one.search(q, 1)[1], truth)
    assert 0.0 < r1 <= 1.0
    index = make_index(
        x, np.repeat(np.arange(40), 10), "faiss-ivf", backend_params={"nlist": 8, "nprobe": 1}
    )
    assert 0.0 < self_recall(index) <= 1.0


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown index backend"):
        make_searcher("annoy", 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_save_load_round_trip(tmp_path, backend):
    x, ids, centres = clusters(12, 5, 16, 0.5, seed=4)
    params = {"nlist": 2} if backend == "faiss-ivf" else {}
    index = make_index(
        x, ids, backend, backend_params=params, threshold=0.7, calibration={"method": "manual"}
    )
    index.gallery.loc[0, "identity"] = "007"  # a numeric-looking id must stay a string
    q = sample_near(centres, np.arange(12), 0.5, seed=5)
    before = index.search(q, 4)
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    after = loaded.search(q, 4)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    assert loaded.threshold == 0.7 and loaded.backend == backend
    assert loaded.gallery["identity"].iloc[0] == "007"
    assert (tmp_path / "idx" / "faiss.index").exists() == (backend in ("faiss-ivf", "faiss-hnsw"))


def test_incremental_add_after_load(tmp_path):
    x, ids, centres = clusters(10, 4, 16, 0.5, seed=6)
    make_index(x[:20], ids[:20], "faiss-hnsw").save(tmp_path / "idx")
    index = GalleryIndex.load(tmp_path / "idx")
    extra = pd.DataFrame({"identity": [f"id{i:03d}" for i in ids[20:]], "path": ["x.jpg"] * 20})
    index.add(torch.from_numpy(x[20:]), extra)
    index.save(tmp_path / "idx")
    again = GalleryIndex.load(tmp_path / "idx")
    assert len(again.gallery) == 40 and again.searcher.ntotal == 40
    _, i = again.search(x[25:26], 1)
    assert i[0, 0] == 25


def test_empty_gallery_and_model_mismatch_are_refused():
    with pytest.raises(EmptyGalleryError, match="empty"):
        make_index(np.zeros((0, 8), np.float32), np.zeros(0, int))
    other = dict(MODEL, weights_sha256="b" * 64, image_size=[64, 64])
    with pytest.raises(ModelMismatchError, match="weights_sha256") as err:
        check_identity(MODEL, other, "index X")
    assert "image_size" in str(err.value) and "mean" not in str(err.value)
    check_identity(MODEL, dict(MODEL, image_size=(32, 32)), "index X")  # list == tuple


# --- open set --------------------------------------------------------------------------------


def test_calibrated_threshold_flags_held_out_individuals():
    x, ids, centres = clusters(40, 6, 32, 0.5, seed=7)
    new_ids = np.arange(32, 40)  # never in the gallery
    known = ids < 32
    cal = calibrate_threshold(x[known], ids[known], heldout_fraction=0.25, repeats=3, seed=0)
    index = make_index(x[known], ids[known], threshold=cal["threshold"], calibration=cal)
    q_known = sample_near(centres, np.arange(32), 0.5, seed=8)
    q_new = sample_near(centres, new_ids, 0.5, seed=9)
    names = [f"k{i}" for i in range(32)] + [f"n{i}" for i in new_ids]
    res = result_frame(index, names, np.concatenate([q_known, q_new]), top_k=3)
    is_new = np.r_[np.zeros(32, bool), np.ones(len(new_ids), bool)]
    flagged = res["new_individual"].to_numpy(dtype=bool)
    assert flagged[is_new].mean() >= 0.9
    assert (~flagged[~is_new]).mean() >= 0.9
    assert (res["top1_identity"][:32] == [f"id{i:03d}" for i in range(32)]).mean() >= 0.9
    assert (res["predicted_identity"][flagged] == "new").all()  # flagged: never a known name
    assert (res["predicted_identity"][~flagged] == res["top1_identity"][~flagged]).all()
    assert cal["heldout_baus"] > 0.5 and len(cal["thresholds"]) == 3
    # The threshold was chosen from gallery data alone: same result without the new ids' data.
    again = calibrate_threshold(x[known], ids[known], heldout_fraction=0.25, repeats=3, seed=0)
    assert again["threshold"] == cal["threshold"]


def test_calibration_needs_two_identities():
    x, ids, _ = clusters(1, 5, 8, 0.5, seed=10)
    with pytest.raises(CalibrationError, match="--threshold"):
        calibrate_threshold(x, ids)
    x, ids, _ = clusters(5, 1, 8, 0.5, seed=10)
    with pytest.raises(CalibrationError, match="more than 1 image"):
        calibrate_threshold(x, ids)


def test_rank_identities_lists_distinct_identities_nearest_first():
    rng = np.random.default_rng(11)
    # Identity A owns the 30 nearest images, so the first search (top_k * oversample) sees only A.
    q = unit(rng.standard_normal((1, 16)))
    near = unit(q + 0.01 * rng.standard_normal((30, 16)))
    far = unit(rng.standard_normal((20, 16)))
    x = np.concatenate([near, far])
    ids = np.r_[np.zeros(30, int), 1 + np.arange(20) % 5]
    for backend in ("exact", "faiss-flat"):
        index = make_index(x, ids, backend)
        out_ids, out_d, out_rows = rank_identities(index, q, top_k=4, oversample=2)
        d = np.linalg.norm(x - q, axis=1)
        best = pd.Series(d).groupby([f"id{i:03d}" for i in ids]).min().sort_values()
        assert list(out_ids[0]) == list(best.index[:4])
        np.testing.assert_allclose(out_d[0], best.to_numpy()[:4], atol=1e-5)
        np.testing.assert_allclose(d[out_rows[0]], out_d[0], atol=1e-5)
    res = result_frame(make_index(x, ids), ["q"], q, top_k=8)  # more than the 6 identities
    assert res["top6_identity"].notna().all() and res["top7_identity"].isna().all()
    np.testing.assert_allclose(res["score"], 1 - res["distance"] ** 2 / 2)
    assert res["new_individual"].isna().all()  # no threshold: nothing is flagged


# --- photos, on a tiny random-model export ---------------------------------------------------


@pytest.fixture(scope="module")
def suite(tmp_path_factory, tiny_suite, smoke_cfg):
    """The shared tiny tiger set (read-only) and two random exports (A, B) of its labels."""
    root = tmp_path_factory.mktemp("identify")
    table, images = tiny_suite
    labels = sorted(table["identity"].unique())
    a = random_export(root / "model_a", smoke_cfg.model, labels, seed=0)
    b = random_export(root / "model_b", smoke_cfg.model, labels, seed=1)
    return {
        "root": root,
        "table": table,
        "images": images,
        "csv": images / "metadata.csv",
        "a": a,
        "b": b,
    }


def bad_files(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "text_as_jpg": folder / "notes.jpg",
        "truncated": folder / "cut.jpg",
        "not_image_suffix": folder / "readme.txt",
    }
    files["text_as_jpg"].write_text("not an image")
    files["truncated"].write_bytes(good.read_bytes()[:200])
    files["not_image_suffix"].write_text("hello")
    shutil.copy(good, folder / "fine.jpg")
    (folder / "empty").mkdir(exist_ok=True)
    return files


def test_build_identify_add_with_bad_files(suite, tmp_path):
    model = load_model(suite["a"], "cpu")
    index, report = build_index(model, suite["csv"], heldout_fraction=0.2)
    assert report["n_images"] == len(suite["table"]) and report["threshold"] is not None
    assert index.calibration["method"] == "leave_identities_out"
    save_index(index, tmp_path / "idx", model)

    index, model = open_index(tmp_path / "idx", device="cpu")  # finds its model by itself
    gallery_img = Path(index.gallery["path"].iloc[4])
    bad = bad_files(tmp_path / "photos", gallery_img)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadInputWarning)
        res, summary = identify(
            index,
            model,
            [tmp_path / "photos", tmp_path / "photos" / "empty", gallery_img, "missing.jpg"],
        )
    errs = res.set_index("query")["error"]
    for f in bad.values():
        assert errs[str(f)], f
    assert "no such file" in errs["missing.jpg"]
    assert "no image files" in errs[str(tmp_path / "photos" / "empty")]
    lines = [str(w.message) for w in caught if issubclass(w.category, BadInputWarning)]
    assert len(lines) == 1 and "skipped unreadable photos (5)" in lines[0]  # one summary line
    ok = res[res["error"] == ""].set_index("query")
    assert len(ok) == 2 and summary["n_errors"] == 5
    # A gallery photo (and its copy) comes back as its own individual at distance ~0.
    for name in (str(gallery_img), str(tmp_path / "photos" / "fine.jpg")):
        assert ok.loc[name, "top1_identity"] == index.gallery["identity"].iloc[4]
        assert ok.loc[name, "distance"] < 1e-3
        # the flag follows the calibrated threshold (a random tiny model may calibrate ~0)
        assert ok.loc[name, "new_individual"] == (ok.loc[name, "distance"] > index.threshold)

    folders = tmp_path / "more"
    for who, quality in (("newcomer", 90), ("newcomer2", 80)):  # re-encoded: other content
        (folders / who).mkdir(parents=True)
        Image.open(gallery_img).save(folders / who / "a.jpg", quality=quality)
    (folders / "copycat").mkdir()
    shutil.copy(gallery_img, folders / "copycat" / "a.jpg")  # the same bytes: skipped
    (folders / "newcomer" / "broken.png").write_text("nope")
    with pytest.warns(BadInputWarning, match="broken.png"):
        rep = add_to_index(index, model, folders)
    assert rep["n_added"] == 2 and len(index.gallery) == len(suite["table"]) + 2
    assert rep["n_skipped"] == 1
    assert set(index.gallery["identity"].iloc[-2:]) == {"newcomer", "newcomer2"}


def test_mismatched_checkpoint_and_unreadable_gallery_are_refused(suite, tmp_path):
    model_a = load_model(suite["a"], "cpu")
    index, _ = build_index(model_a, suite["csv"], threshold=0.5)
    assert index.calibration["method"] == "manual" and index.threshold == 0.5
    save_index(index, tmp_path / "idx", model_a)
    with pytest.raises(ModelMismatchError, match="weights_sha256"):
        open_index(tmp_path / "idx", suite["b"], device="cpu")
    with pytest.raises(ModelMismatchError, match="flip"):
        identify(index, load_model(suite["a"], "cpu", flip=True), [suite["csv"]])

    bad_csv = tmp_path / "bad.csv"
    (tmp_path / "x.jpg").write_text("not a photo")
    pd.DataFrame({"identity": ["a", "b"], "path": ["x.jpg", "x.jpg"]}).to_csv(bad_csv, index=False)
    with pytest.warns(BadInputWarning), pytest.raises(EmptyGalleryError, match="none of the 2"):
        build_index(model_a, bad_csv)


@pytest.mark.parametrize(
    "backbone, size, stride, quick_gelu",
    [
        ("tiny-vit", [48, 32], 12, False),
        ("tiny-vit", [32, 32], 0, True),
        ("lite0", [64, 64], 0, False),
    ],
)
def test_an_export_reloads_to_the_features_it_was_trained_with(
    tmp_path, backbone, size, stride, quick_gelu
):
    """load_export rebuilds the image tower alone, from model.json: the reloaded encoder
    computes exactly the exported one's features, QuickGELU (OpenAI weights) included."""
    import open_clip

    from indivaid_core.model import ReIDEncoder
    from indivaid_core.model.backbones import set_vit_stride
    from indivaid_core.train.export import load_export, write_export

    torch.manual_seed(3)
    clip = open_clip.create_model(
        backbone, pretrained=None, force_image_size=tuple(size), force_quick_gelu=quick_gelu
    )
    if stride:
        set_vit_stride(clip.visual, stride)
    encoder = ReIDEncoder(clip, 3).eval()
    with torch.no_grad():  # trained-looking necks: not the defaults a rebuild starts from
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model_cfg = ModelCfg(backbone=backbone, pretrained="none", image_size=size, stride=stride)
    write_export(encoder, clip, model_cfg, tmp_path, {"labels": {"a": 0, "b": 1, "c": 2}})
    loaded, spec = load_export(tmp_path)
    assert spec.get("quick_gelu", False) is quick_gelu
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = loaded(images), encoder(images)
    for key in ("global", "proj", "global_bn", "proj_bn"):
        assert torch.equal(got[key], want[key]), key


def test_tampered_export_is_refused(suite, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(suite["a"], copy)
    blob = bytearray((copy / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        load_model(copy, "cpu")


def test_gallery_and_new_photos_split(suite):
    table = suite["table"]
    gallery, photos = gallery_and_new_photos(table, suite["images"], 0.34, seed=0)
    new_ids = set(photos.loc[photos["is_new"], "identity"])
    assert len(new_ids) == 2 and not new_ids & set(gallery["identity"])
    assert len(gallery) + len(photos) == len(table)
    assert set(photos.loc[~photos["is_new"], "identity"]) <= set(gallery["identity"])
    assert all(Path(p).is_file() for p in gallery["path"])
