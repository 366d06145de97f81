"""Which known individual is this photo, or is it a new one? Build, grow and query an index.

Everything runs from an exported model folder (model.safetensors + model.json, see
:mod:`indivaid_core.train.export`); no training state is needed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from indivaid_core.data.images import draft_for
from indivaid_core.device import resolve_device
from indivaid_core.identify.calibrate import CalibrationError, calibrate_threshold
from indivaid_core.identify.confidence import fit_confidence
from indivaid_core.identify.confidence import predict as predict_confidence
from indivaid_core.identify.grow import skip_indexed, warn_similar_names, with_hashes
from indivaid_core.identify.index import (
    IDENTITY_KEYS,
    EmptyGalleryError,
    GalleryIndex,
    GalleryIndexError,
    check_identity,
    model_identity,
    recall_at_1,
)
from indivaid_core.identify.inputs import (
    BadInputWarning,
    collect_files,
    embed_files,
    read_gallery,
)
from indivaid_core.photos import warn_unreadable
from indivaid_core.safe_io import UnreadableFileError, unreadable

# The model's own stack (open_clip, timm, torchvision; matplotlib through the evaluation
# package) is imported where a model is loaded or run, not here: opening an index, and every
# refusal before a model is needed (a missing index, an output that exists), answers without it.

NEW = "new"
LISTED_IN_REPORT = 'the summary\'s "errors"'
# What a calibrated threshold was calibrated with: `index add --recalibrate` repeats it.
CALIBRATION_SETTINGS = ("heldout_fraction", "known_per_identity", "repeats", "objective", "seed")
OBJECTIVES = ("mean", "baks", "baus")  # evaluate.openset.choose_threshold's


@dataclass
class LoadedModel:
    """An exported encoder with its preprocessing and the identity an index records."""

    encoder: torch.nn.Module
    spec: dict[str, Any]
    identity: dict[str, Any]
    model_dir: Path
    device: torch.device

    def embed(
        self, paths: Sequence[str | Path], batch_size: int = 64
    ) -> tuple[torch.Tensor, list[bool], dict[str, str]]:
        """(features of readable files, ok mask, {path: error})."""
        from indivaid_core.transforms import eval_transform

        tf = eval_transform(
            self.spec["image_size"],
            self.spec["mean"],
            self.spec["std"],
            self.spec.get("resize_backend", "tensor"),
        )
        return embed_files(
            self.encoder,
            tf,
            list(paths),
            self.device,
            self.spec["eval_feature"],
            flip=self.identity["flip"],
            batch_size=batch_size,
            draft=draft_for(self.spec["image_size"]),
        )


def load_model(model_dir: str | Path, device: str = "auto", flip: bool = False) -> LoadedModel:
    """Load an export and check its weights file against the hash in its model.json."""
    from concurrent.futures import ThreadPoolExecutor

    from indivaid_core.evaluate.features import FEATURE_KEYS
    from indivaid_core.train.export import CONFIG, WEIGHTS, file_sha256, load_export

    model_dir = Path(model_dir)
    # Hashing releases the GIL: the check overlaps the build (~350 MB for a ViT-B-16 export).
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(file_sha256, model_dir / WEIGHTS)
        encoder, spec = load_export(model_dir, "cpu")
        actual = digest.result()
    if spec.get("camera_map"):
        raise GalleryIndexError(
            f"{model_dir}: this export uses SIE camera embeddings, which need the camera id of "
            "every photo; identify works with camera-free exports (train with model.sie_coef: 0)"
        )
    if spec.get("weights_sha256") != actual:
        raise UnreadableFileError(
            f"{model_dir / WEIGHTS}: sha256 {actual[:12]}… differs from the "
            f"{spec.get('weights_sha256', 'missing')!r} recorded in model.json; the export was "
            "modified after it was written"
        )
    missing = [k for k in IDENTITY_KEYS if k not in spec]
    if missing:
        raise unreadable(
            model_dir / CONFIG, "model description", f"it lacks {missing}", "re-export the model"
        )
    dims = encoder.feature_dims
    dim = sum(dims[k.removesuffix("_bn")] for k in FEATURE_KEYS[spec["eval_feature"]])
    dev = resolve_device(device)
    return LoadedModel(encoder.to(dev), spec, model_identity(spec, flip, dim), model_dir, dev)


def build_index(
    model: LoadedModel,
    images: str | Path,
    root: str | Path | None = None,
    backend: str = "exact",
    backend_params: dict[str, Any] | None = None,
    threshold: float | None = None,
    calibrate: bool = True,
    heldout_fraction: float = 0.2,
    calibration_repeats: int = 5,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[GalleryIndex, dict[str, Any]]:
    """Embed a labelled gallery (identity folders or a metadata CSV) into a new index.

    The new-individual threshold is ``threshold`` when given, else calibrated on the gallery by
    leaving identities out (:func:`calibrate_threshold`); when the gallery is too small to
    calibrate, a warning is issued and nothing is flagged. Returns (index, report).
    """
    table = read_gallery(images, root)
    if table.empty:
        raise EmptyGalleryError(f"{images}: the gallery lists no images")
    feats, ok, errors = model.embed(table["path"], batch_size)
    warn_unreadable(images, list(errors.items()), LISTED_IN_REPORT)
    kept = with_hashes(table[np.asarray(ok, dtype=bool)].reset_index(drop=True))
    if kept.empty:
        raise EmptyGalleryError(
            f"{images}: none of the {len(table)} gallery images could be read "
            f"(first error: {next(iter(errors.items()))})"
        )
    calibration: dict[str, Any] = {"method": "manual" if threshold is not None else "none"}
    if threshold is None and calibrate:
        settings = {
            "heldout_fraction": heldout_fraction,
            "known_per_identity": 1,
            "repeats": calibration_repeats,
            "objective": "mean",
            "seed": seed,
        }
        calibration = _calibrated(feats, kept["identity"], settings, images)
        threshold = calibration.get("threshold")
    calibration["confidence"] = fit_confidence(feats.numpy(), kept["identity"], seed=seed)
    index = GalleryIndex(
        feats,
        kept,
        model.identity,
        backend,
        dict(backend_params or {}),
        threshold,
        calibration,
    )
    report = {
        "n_images": len(kept),
        "n_identities": int(kept["identity"].nunique()),
        "errors": errors,
        "threshold": threshold,
        "calibration": calibration,
        "confidence_ece": calibration["confidence"].get("ece"),
    }
    if index.approximate:
        report["recall_at_1"] = self_recall(index, seed=seed)
    return index, report


def self_recall(index: GalleryIndex, sample: int = 1000, seed: int = 0) -> float:
    """Recall@1 of the approximate backend against exact search, gallery vectors as queries,
    each query's own entry excluded (it would otherwise be a trivial hit). Exact duplicates in
    the gallery can make the two disagree on a tie; held-out queries (identify) avoid that."""
    rng = np.random.default_rng(seed)
    n = len(index.gallery)
    if n < 2:
        return float("nan")
    rows = rng.choice(n, size=min(sample, n), replace=False)
    q = index.vectors[rows].numpy()
    approx = _drop_self(*index.search(q, 2), rows)
    exact = _drop_self(*index.exact_search(q, 2), rows)
    return recall_at_1(approx[:, None], exact[:, None])


def _drop_self(dist: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Nearest neighbour other than the query's own row (-1 when none was returned)."""
    first_other = np.where(idx[:, 0] == rows, idx[:, 1] if idx.shape[1] > 1 else -1, idx[:, 0])
    return np.asarray(first_other)


def save_index(index: GalleryIndex, out: str | Path, model: LoadedModel) -> Path:
    """Write the index, remembering the model folder relative to it (they can move together)."""
    out = Path(out)
    index.model_dir = os.path.relpath(model.model_dir.resolve(), out.resolve())
    return index.save(out)


def open_index(
    path: str | Path, model_dir: str | Path | None = None, device: str = "auto"
) -> tuple[GalleryIndex, LoadedModel]:
    """Load an index and its model (``model_dir`` or the one it remembers), refusing a mismatch."""
    path = Path(path)
    index = GalleryIndex.load(path)
    if model_dir is None:
        if not index.model_dir:
            raise GalleryIndexError(f"{path}: the index does not name its model; pass --checkpoint")
        model_dir = path / index.model_dir
        if not (Path(model_dir) / "model.json").is_file():
            raise FileNotFoundError(
                f"{path}: its model folder {model_dir} is gone; pass --checkpoint MODEL_DIR"
            )
    model = load_model(model_dir, device, flip=bool(index.model.get("flip")))
    check_identity(index.model, model.identity, f"index {path}")
    return index, model


def _calibrated(
    vectors: torch.Tensor, identities: pd.Series, settings: dict[str, Any], source: object
) -> dict[str, Any]:
    """The leave-identities-out calibration, or, for a gallery too small to calibrate, a
    warning and a record that keeps the settings (a later `--recalibrate` on the grown
    gallery calibrates with them)."""
    try:
        return calibrate_threshold(vectors, identities, **settings)
    except CalibrationError as err:
        warnings.warn(f"{source}: {err}", BadInputWarning, stacklevel=3)
        return {"method": "none", "reason": str(err), **settings}


def recalibration_settings(index: GalleryIndex, where: object) -> dict[str, Any]:
    """The settings the index's threshold was calibrated with, to calibrate it again. A
    threshold set by hand records none: replacing it with defaults the user never chose would
    be a silent surprise, so it is refused (as is a calibration that kept no settings)."""
    c = index.calibration
    if c.get("method") == "manual":
        raise CalibrationError(
            f"{where}: its threshold {index.threshold} was set by hand (index build "
            "--threshold, or index set-threshold), so there is no calibration to redo; drop "
            "--recalibrate to keep it, or rebuild the index without --threshold to calibrate one"
        )
    settings = {k: c[k] for k in CALIBRATION_SETTINGS if k in c}
    if len(settings) < len(CALIBRATION_SETTINGS) or not _valid_settings(settings):
        raise CalibrationError(
            f"{where}: its calibration (method {c.get('method')!r}) records no usable "
            "settings to calibrate again with; rebuild the index with `indivaid index build`"
        )
    return settings


def _valid_settings(s: dict[str, Any]) -> bool:
    """The types and ranges calibrate_threshold takes (index.json may have been edited)."""
    known, repeats, seed = s["known_per_identity"], s["repeats"], s["seed"]
    if not all(_is_int(v) for v in (known, repeats, seed)):
        return False
    fraction = s["heldout_fraction"]
    number = isinstance(fraction, float | int) and not isinstance(fraction, bool)
    return (
        min(known, repeats) >= 1
        and seed >= 0
        and number
        and 0 < fraction < 1
        and s["objective"] in OBJECTIVES
    )


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def add_to_index(
    index: GalleryIndex,
    model: LoadedModel,
    images: str | Path,
    root: str | Path | None = None,
    recalibrate: bool = False,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Embed more labelled images into an index (new individuals or new photos of known ones).

    Photos whose file content is already indexed (or repeated) are skipped and counted; a new
    name that differs from a known one only in case, spaces or Unicode form is warned about.
    `recalibrate` calibrates the threshold again on the grown gallery with the settings it was
    calibrated with; a threshold set by hand is refused before any work
    (:func:`recalibration_settings`).
    """
    check_identity(index.model, model.identity, "the index")
    settings = recalibration_settings(index, "the index") if recalibrate else None
    index.gallery = with_hashes(index.gallery)
    table, n_skipped = skip_indexed(index.gallery, read_gallery(images, root))
    warn_similar_names(index.gallery["identity"], table["identity"], str(images))
    feats, ok, errors = model.embed(table["path"], batch_size)
    warn_unreadable(images, list(errors.items()), LISTED_IN_REPORT)
    kept = table[np.asarray(ok, dtype=bool)].reset_index(drop=True)
    if len(kept):
        index.add(feats, kept)
    report: dict[str, Any] = {"n_added": len(kept), "n_skipped": n_skipped, "errors": errors}
    if settings is not None:
        index.calibration = _calibrated(index.vectors, index.gallery["identity"], settings, images)
        index.threshold = index.calibration.get("threshold", index.threshold)
        index.calibration["confidence"] = fit_confidence(
            index.vectors.numpy(), index.gallery["identity"]
        )
    report["threshold"] = index.threshold
    return report


def rank_identities(
    index: GalleryIndex, queries: torch.Tensor | np.ndarray, top_k: int = 5, oversample: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query, its top_k distinct identities by their nearest gallery image.

    Returns (identities (Q, top_k) object, distances (Q, top_k), gallery rows (Q, top_k)).
    ``top_k * oversample`` neighbours are searched first; queries whose neighbours hold fewer
    than top_k identities are searched again with 4x as many, up to the whole gallery. Slots
    stay None / inf / -1 only when the gallery has fewer identities (or an approximate search
    returns fewer neighbours).
    """
    q_all = np.asarray(queries, dtype=np.float32)
    n = len(index.gallery)
    want = min(top_k, index.gallery["identity"].nunique())
    gal_ids = index.gallery["identity"].to_numpy(dtype=object)
    out_ids = np.full((len(q_all), top_k), None, dtype=object)
    out_d = np.full((len(q_all), top_k), np.inf)
    out_rows = np.full((len(q_all), top_k), -1, dtype=np.int64)
    todo = np.arange(len(q_all))
    k = min(n, top_k * oversample)
    while len(todo):
        dist, idx = index.search(q_all[todo], k)
        short = []
        for q, d_q, i_q in zip(todo, dist, idx, strict=True):
            valid = i_q >= 0  # FAISS pads with -1 when it finds fewer than k
            ids_q = gal_ids[i_q[valid]]
            _, first = np.unique(ids_q, return_index=True)  # nearest image of each identity
            first = np.sort(first)[:top_k]
            if len(first) < want and k < n:
                short.append(q)
                continue
            out_ids[q, : len(first)] = ids_q[first]
            out_d[q, : len(first)] = d_q[valid][first]
            out_rows[q, : len(first)] = i_q[valid][first]
        todo, k = np.asarray(short, dtype=np.int64), min(n, 4 * k)
    return out_ids, out_d, out_rows


def result_frame(
    index: GalleryIndex,
    names: Sequence[str],
    queries: torch.Tensor | np.ndarray,
    top_k: int = 5,
    threshold: float | None = None,
) -> pd.DataFrame:
    """One row per query: prediction, distance, score, new_individual, top-k alternatives.

    ``score`` is the cosine similarity of the unit vectors, 1 - d^2 / 2. ``new_individual`` says
    the nearest distance exceeds ``threshold`` (default: the index's); then
    ``predicted_identity`` is ``new``, so filtering by name never counts a flagged photo as that
    animal, and the candidates keep their names in the ``top{r}_*`` columns (distinct
    identities, nearest first, with the gallery image that matched).
    """
    ids, dist, rows = rank_identities(index, queries, max(top_k, 2))  # runner-up: confidence
    runner_up = dist[:, 1]
    ids, dist, rows = ids[:, :top_k], dist[:, :top_k], rows[:, :top_k]
    paths = index.gallery["path"].to_numpy(dtype=object)
    d1 = dist[:, 0]
    thr = index.threshold if threshold is None else float(threshold)
    flagged = d1 > thr if thr is not None else np.zeros(len(d1), dtype=bool)
    frame = pd.DataFrame(
        {
            "query": list(names),
            "predicted_identity": np.where(flagged, NEW, ids[:, 0]),
            "distance": d1,
            "score": 1.0 - d1**2 / 2.0,
            "new_individual": flagged if thr is not None else pd.array([pd.NA] * len(d1)),
            "threshold": thr,
        }
    )
    model = index.calibration.get("confidence", {})
    if model.get("method") == "platt":  # P(top-1 right), fitted when the index was built
        frame.insert(3, "confidence", predict_confidence(model, d1, runner_up))
    for r in range(top_k):
        have = rows[:, r] >= 0
        frame[f"top{r + 1}_identity"] = ids[:, r]
        frame[f"top{r + 1}_distance"] = np.where(have, dist[:, r], np.nan)
        frame[f"top{r + 1}_image"] = np.where(have, paths[np.maximum(rows[:, r], 0)], None)
    frame["error"] = ""
    return frame


def identify(
    index: GalleryIndex,
    model: LoadedModel,
    sources: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    recall_sample: int = 100,
    threshold: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Identify photos (files or folders); bad inputs get a row with ``error`` and a warning.

    ``threshold`` replaces the index's new-individual distance for this run only.

    With an approximate backend, up to ``recall_sample`` queries are also searched exactly and
    the recall@1 of the approximate search against it is reported in the summary.
    """
    check_identity(index.model, model.identity, "the index")
    files, input_errors = collect_files(sources)
    feats, ok, errors = model.embed(files, batch_size)
    warn_unreadable("identify", input_errors + list(errors.items()), "the results' error column")
    good = [str(f) for f, o in zip(files, ok, strict=True) if o]
    frame = (
        result_frame(index, good, feats, top_k, threshold) if good else result_frame_empty(top_k)
    )
    bad = pd.DataFrame(
        {
            "query": [p for p, _ in input_errors] + list(errors),
            "error": [m for _, m in input_errors] + list(errors.values()),
        }
    )
    frame = pd.concat([frame, bad], ignore_index=True) if len(bad) else frame
    summary: dict[str, Any] = {
        "n_queries": len(good),
        "n_errors": len(bad),
        "n_new_individual": int(frame["new_individual"].fillna(False).astype(bool).sum()),
        "threshold": index.threshold if threshold is None else float(threshold),
        "backend": index.backend,
    }
    if index.approximate and good:
        q = feats[: min(recall_sample, len(good))].numpy()
        summary["recall_at_1"] = recall_at_1(index.search(q, 1)[1], index.exact_search(q, 1)[1])
        summary["recall_queries"] = len(q)
    return frame, summary


def result_frame_empty(top_k: int) -> pd.DataFrame:
    cols = ["query", "predicted_identity", "distance", "score", "new_individual", "threshold"]
    for r in range(1, top_k + 1):
        cols += [f"top{r}_identity", f"top{r}_distance", f"top{r}_image"]
    return pd.DataFrame(columns=[*cols, "error"])
