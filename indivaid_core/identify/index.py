"""Gallery index: L2-normalised vectors + their identities, searched exactly or with FAISS.

Backends (all return Euclidean distances, smallest first):
  exact        torch matmul over gallery chunks; the reference, fine up to ~10^5 entries.
  faiss-flat   FAISS exact L2 (BLAS); same answers as `exact`, faster for large galleries.
  faiss-ivf    inverted lists over k-means cells; approximate, trained when the index is built.
  faiss-hnsw   graph search; approximate, no training, slower to build.

On disk an index is a folder: ``index.json`` (model identity, backend, threshold, counts),
``vectors.safetensors`` (the gallery features, the source of truth: any backend can be rebuilt
from them and approximate search can be checked against exact search), ``gallery.csv`` (one row
per vector) and, for IVF/HNSW, ``faiss.index`` (the trained structure, costly to rebuild).
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from indivaid_core.identify.backends import APPROXIMATE, BACKENDS
from indivaid_core.safe_io import (
    atomic_dir,
    brief,
    check_replaceable,
    load_safetensors,
    read_csv,
    read_json,
    restore_formulas,
    save_safetensors,
    sibling_lock,
    unreadable,
    write_csv,
    write_json,
)

FORMAT_VERSION = 1
INDEX_JSON, VECTORS, GALLERY_CSV, FAISS_FILE = (
    "index.json",
    "vectors.safetensors",
    "gallery.csv",
    "faiss.index",
)
INDEX_FILES = (INDEX_JSON, VECTORS, GALLERY_CSV, FAISS_FILE)
INDEX_KEYS = ("format_version", "backend", "backend_params", "model", "threshold", "calibration")
REBUILD = "rebuild the index with `indivaid index build`"
# The fields of an exported model.json that decide what a feature vector means.
IDENTITY_KEYS = ("weights_sha256", "backbone", "image_size", "mean", "std", "eval_feature")


class GalleryIndexError(ValueError):
    """A gallery index that cannot be used as asked (mismatched model, empty, corrupt)."""


class ModelMismatchError(GalleryIndexError):
    """The query model is not the model the index was built with."""


class EmptyGalleryError(GalleryIndexError):
    """No usable gallery image: nothing to identify against."""


def model_identity(spec: dict[str, Any], flip: bool, dim: int) -> dict[str, Any]:
    """What must match between gallery and query features, taken from an export's model.json."""
    missing = [k for k in IDENTITY_KEYS if k not in spec]
    if missing:
        raise KeyError(f"model.json lacks {missing}; re-export the model with write_export")
    ident = {k: spec[k] for k in IDENTITY_KEYS}
    ident["image_size"] = list(ident["image_size"])
    ident.update(flip=bool(flip), dim=int(dim))
    return ident


def check_identity(index_model: dict[str, Any], query_model: dict[str, Any], where: str) -> None:
    """Raise a ModelMismatchError naming every differing field (preprocessing or weights)."""
    keys = sorted(set(index_model) | set(query_model))
    diff = [
        f"{k}: index has {index_model.get(k)!r}, query model has {query_model.get(k)!r}"
        for k in keys
        if _norm(index_model.get(k)) != _norm(query_model.get(k))
    ]
    if diff:
        raise ModelMismatchError(
            f"{where} was built with another model; its features are not comparable. "
            "Rebuild the index with this model (indivaid index build) or query it with the "
            "model it was built with.\n  " + "\n  ".join(diff)
        )


def _norm(v: Any) -> Any:
    return [float(x) for x in v] if isinstance(v, list | tuple) else v


class Searcher(Protocol):
    """k-nearest-neighbour search over the vectors added so far."""

    def add(self, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class ExactSearcher:
    """Exact L2 k-NN in torch, chunked over the gallery so memory stays (Q x chunk).

    Added vectors are kept as blocks (an incremental add copies nothing old).
    ``dtype=torch.float16`` halves the stored gallery; each chunk is widened to float32 for the
    matmul, so distances are exact for the fp16-rounded vectors.
    """

    def __init__(self, dim: int, chunk: int = 65536, dtype: str | torch.dtype = torch.float32):
        self.dim, self.chunk = dim, chunk
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.blocks: list[torch.Tensor] = []
        self.sq_norms: list[torch.Tensor] = []

    @property
    def ntotal(self) -> int:
        return sum(len(b) for b in self.blocks)

    def add(self, vectors: np.ndarray | torch.Tensor) -> None:
        v = torch.as_tensor(vectors)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {tuple(v.shape)}; this index holds {self.dim}-d")
        block = v.to(self.dtype, copy=True).contiguous()
        self.blocks.append(block)
        self.sq_norms.append(torch.cat([b.float().pow(2).sum(1) for b in block.split(self.chunk)]))

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32))
        k = min(k, self.ntotal)
        q_sq = q.pow(2).sum(1, keepdim=True)
        best_d = torch.empty((q.shape[0], 0))
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long)
        offset = 0
        for block, norms in zip(self.blocks, self.sq_norms, strict=True):
            for start in range(0, len(block), self.chunk):
                g = block[start : start + self.chunk].float()
                g_sq = norms[start : start + len(g)]
                d2 = torch.addmm(q_sq + g_sq, q, g.T, alpha=-2.0)
                vals, idx = torch.topk(d2, min(k, len(g)), dim=1, largest=False, sorted=True)
                best_d = torch.cat([best_d, vals], 1)
                best_i = torch.cat([best_i, idx + offset + start], 1)
                if best_d.shape[1] > k:
                    best_d, pos = torch.topk(best_d, k, dim=1, largest=False, sorted=True)
                    best_i = best_i.gather(1, pos)
            offset += len(block)
        return best_d.clamp_min_(0).sqrt_().numpy(), best_i.numpy()


class FaissSearcher:
    """FAISS flat / IVF / HNSW over L2; distances returned as Euclidean (FAISS gives squared).

    IVF: ``nlist`` cells (default ~sqrt(N), at most N/39 so k-means has enough points per
    centre), trained with ``niter`` k-means rounds on up to ``train_size`` vectors from the first
    batch added; ``nprobe`` cells are visited per query.
    HNSW: ``m`` links per node, ``ef_construction`` / ``ef_search`` beam widths.
    """

    def __init__(
        self,
        dim: int,
        kind: str,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 100_000,
        niter: int = 10,
        m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 64,
        seed: int = 0,
    ):
        import faiss  # imported lazily: exact search must work without it

        self.faiss, self.dim, self.kind = faiss, dim, kind
        self.params = {
            "nlist": nlist,
            "nprobe": nprobe,
            "train_size": train_size,
            "niter": niter,
            "m": m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "seed": seed,
        }
        self.index = None
        if kind == "flat":
            self.index = faiss.IndexFlatL2(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_L2)
            self.index.hnsw.efConstruction = ef_construction
            self.index.hnsw.efSearch = ef_search
        elif kind != "ivf":
            raise ValueError(f"unknown FAISS index kind {kind!r}; use flat, ivf or hnsw")

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _train_ivf(self, x: np.ndarray) -> None:
        """k-means cells from the first vectors added; later additions reuse these cells."""
        p = self.params
        nlist = p["nlist"] or max(1, round(math.sqrt(len(x))))
        nlist = int(min(nlist, max(1, len(x) // 39)))
        p["nlist"] = nlist
        quantizer = self.faiss.IndexFlatL2(self.dim)
        index = self.faiss.IndexIVFFlat(quantizer, self.dim, nlist, self.faiss.METRIC_L2)
        index.cp.seed = p["seed"]
        index.cp.niter = p["niter"]
        rng = np.random.default_rng(p["seed"])
        sample = x if len(x) <= p["train_size"] else x[rng.choice(len(x), p["train_size"], False)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = min(p["nprobe"], nlist)
        self.quantizer, self.index = quantizer, index

    def add(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.index is None:
            self._train_ivf(x)
        self.index.add(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        d2, idx = self.index.search(q, min(k, self.ntotal))
        return np.sqrt(np.maximum(d2, 0)), idx.astype(np.int64)

    def write(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))

    def read(self, path: Path) -> None:
        try:
            self.index = self.faiss.read_index(str(path))
        except RuntimeError as err:  # FAISS reports a foreign or cut-short file this way
            raise unreadable(path, "FAISS index", brief(err), REBUILD) from err
        if self.kind == "ivf":
            self.index.nprobe = min(self.params["nprobe"], self.index.nlist)
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.params["ef_search"]


def make_searcher(backend: str, dim: int, params: dict[str, Any] | None = None) -> Searcher:
    """A searcher for one of BACKENDS; ``params`` are the backend's keyword arguments."""
    params = dict(params or {})
    if backend == "exact":
        return ExactSearcher(dim, **params)
    if backend in BACKENDS:
        return FaissSearcher(dim, backend.removeprefix("faiss-"), **params)
    raise ValueError(f"unknown index backend {backend!r}; choose one of {list(BACKENDS)}")


def recall_at_1(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Share of queries whose approximate nearest neighbour is the exact nearest neighbour."""
    if len(approx_idx) == 0:
        return float("nan")
    return float(np.mean(approx_idx[:, 0] == exact_idx[:, 0]))


LOAD_TRIES = 20  # reads of an index that a writer keeps replacing, before giving up


def _folder_identity(path: Path) -> tuple[int, int] | None:
    """(inode, ctime) of the folder `path` names now: a save puts a new folder there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


@dataclass
class GalleryIndex:
    """Gallery vectors with one table row each, the model identity, and the open-set threshold.

    ``gallery`` has at least ``identity`` and ``path`` columns. ``threshold`` is the Euclidean
    nearest-neighbour distance above which a query is flagged as a new individual (None: never
    flagged). ``calibration`` records how the threshold was set.
    """

    vectors: torch.Tensor
    gallery: pd.DataFrame
    model: dict[str, Any]
    backend: str = "exact"
    backend_params: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None
    _searcher: Searcher | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown index backend {self.backend!r}; choose one of {BACKENDS}")
        self.vectors = torch.as_tensor(self.vectors, dtype=torch.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.gallery):
            raise ValueError(
                f"{tuple(self.vectors.shape)} vectors do not fit {len(self.gallery)} gallery rows"
            )
        for col in ("identity", "path"):
            if col not in self.gallery:
                raise KeyError(
                    f"gallery table needs an {col!r} column; it has {list(self.gallery)}"
                )
        if len(self.gallery) == 0:
            raise EmptyGalleryError("the gallery is empty: add at least one labelled image")
        self.gallery = self.gallery.reset_index(drop=True)
        self.gallery["identity"] = self.gallery["identity"].astype(str)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def approximate(self) -> bool:
        return self.backend in APPROXIMATE

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            self._searcher = make_searcher(self.backend, self.dim, self.backend_params)
            self._searcher.add(self.vectors.numpy())
        return self._searcher

    def add(self, vectors: torch.Tensor, rows: pd.DataFrame) -> None:
        """Append labelled vectors (incremental: IVF cells and the HNSW graph are kept)."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(rows):
            raise ValueError(
                f"{tuple(vectors.shape)} vectors for {len(rows)} rows; the index holds "
                f"{self.dim}-d vectors"
            )
        searcher = self.searcher  # built over the old vectors before they change
        self.vectors = torch.cat([self.vectors, vectors])
        rows = rows.assign(identity=rows["identity"].astype(str))
        self.gallery = pd.concat([self.gallery, rows], ignore_index=True)
        searcher.add(vectors.numpy())

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Euclidean distances, gallery row indices), each (Q, min(k, N)), nearest first."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries of shape {q.shape}; the index holds {self.dim}-d vectors")
        return self.searcher.search(q, k)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over the stored vectors, whatever the backend (for recall checks)."""
        ex = ExactSearcher(self.dim)
        ex.add(self.vectors.numpy())
        return ex.search(np.asarray(queries, dtype=np.float32), k)

    def save(self, path: str | Path) -> Path:
        """Write the index folder whole: its files go to a temporary folder beside `path`,
        which then takes its place, so a failure mid-save (a full disk) leaves the old index
        as it was. A folder holding files other than an index's is refused, not replaced.
        Another process saving to the same folder is refused (:func:`index_lock`)."""
        path = Path(path)
        with index_lock(path), atomic_dir(path, INDEX_FILES) as tmp:
            self._write(tmp)
        return path

    def _write(self, path: Path) -> None:
        save_safetensors({"vectors": self.vectors.contiguous()}, path / VECTORS)
        write_csv(self.gallery, path / GALLERY_CSV, index=False)
        searcher = self.searcher
        if isinstance(searcher, FaissSearcher) and self.approximate:
            searcher.write(path / FAISS_FILE)
            params = searcher.params  # resolved values (e.g. nlist) are what was trained
        else:
            params = self.backend_params
        meta = {
            "format_version": FORMAT_VERSION,
            "backend": self.backend,
            "backend_params": params,
            "model": self.model,
            "model_dir": self.model_dir,
            "threshold": self.threshold,
            "calibration": self.calibration,
            "n_vectors": len(self.gallery),
            "n_identities": int(self.gallery["identity"].nunique()),
        }
        write_json(path / INDEX_JSON, meta, indent=1, default=_json_default)

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """The index at `path`, read from one folder: a save replaces the folder whole while
        this reads its files one by one, so a read that saw the folder change is read again
        (an error then is a mix of old and new files, not a damaged index)."""
        path = Path(path)
        for _ in range(LOAD_TRIES):
            before = _folder_identity(path)
            try:
                index = cls._load_once(path)
            except Exception:
                if _folder_identity(path) == before:
                    raise
                continue
            if _folder_identity(path) == before:
                return index
        raise GalleryIndexError(
            f"{path}: replaced {LOAD_TRIES} times while being read (another process keeps "
            "saving it); try again when `index add` has finished"
        )

    @classmethod
    def _load_once(cls, path: Path) -> GalleryIndex:
        meta = read_meta(path)
        meta_path = path / INDEX_JSON
        for name in (VECTORS, GALLERY_CSV):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: missing; the index folder is incomplete")
        vectors = load_safetensors(path / VECTORS, REBUILD, ("vectors",), "index vectors file")
        vectors = vectors["vectors"]
        gallery = read_csv(
            path / GALLERY_CSV,
            REBUILD,
            ("identity", "path"),
            "gallery table",
            dtype={"identity": str},
            keep_default_na=False,
        )
        gallery = restore_formulas(gallery)  # write_csv quoted cells a spreadsheet would run
        if vectors.ndim != 2 or len(vectors) != len(gallery):
            raise unreadable(
                path,
                "gallery index",
                f"{VECTORS} holds {tuple(vectors.shape)} vectors for the {len(gallery)} rows "
                f"of {GALLERY_CSV}",
                REBUILD,
            )
        try:
            index = cls(
                vectors,
                gallery,
                meta["model"],
                meta["backend"],
                meta["backend_params"],
                meta["threshold"],
                meta["calibration"],
                meta.get("model_dir"),
            )
        except (KeyError, TypeError, ValueError) as err:  # e.g. an unknown backend, no rows
            raise unreadable(path, "gallery index", brief(err), REBUILD) from err
        if index.approximate:
            if not (path / FAISS_FILE).is_file():
                raise FileNotFoundError(f"{path / FAISS_FILE}: missing for backend {index.backend}")
            try:
                searcher = make_searcher(index.backend, index.dim, meta["backend_params"])
            except (TypeError, ValueError) as err:
                raise unreadable(meta_path, "index description", str(err), REBUILD) from err
            searcher.read(path / FAISS_FILE)
            if searcher.ntotal != len(gallery):
                raise GalleryIndexError(
                    f"{path / FAISS_FILE} holds {searcher.ntotal} vectors but {GALLERY_CSV} has "
                    f"{len(gallery)} rows; rebuild the index"
                )
            index._searcher = searcher
        return index


def read_meta(path: Path) -> dict[str, Any]:
    """The index description (index.json) of the index folder `path`, checked: an index of
    this format, every key present with the type an index gives it."""
    meta_path = path / INDEX_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path}: not a gallery index (no {INDEX_JSON}); build one with `indivaid index build`"
        )
    meta = read_json(meta_path, REBUILD, ("format_version",), "index description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise GalleryIndexError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; rebuild the index"
        )
    meta = read_json(meta_path, REBUILD, INDEX_KEYS, "index description")
    check_meta(meta, meta_path)
    return meta


def set_threshold(path: str | Path, threshold: float) -> dict[str, Any]:
    """Save a new-individual threshold chosen by hand into the index at `path`, for every
    later `identify`, without rebuilding it: a person who has reviewed the results knows a
    better distance than the calibration guessed. Only index.json changes (replaced whole,
    under the index's lock); the vectors, the gallery and the confidence model stay. The
    threshold then counts as set by hand, as `index build --threshold` sets it, so
    `index add --recalibrate` will not silently replace it. Returns what was replaced."""
    path = Path(path)
    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise GalleryIndexError(f"threshold {threshold}: expected a finite distance, 0 or more")
    read_meta(path)  # a mistyped path is refused before the lock, which would create folders
    with index_lock(path):
        meta = read_meta(path)  # again: another writer may have replaced it meanwhile
        old = meta["calibration"]
        replaced = {"previous_threshold": meta["threshold"], "previous_method": old.get("method")}
        meta["threshold"] = threshold
        meta["calibration"] = {
            "method": "manual",
            **replaced,
            **({"confidence": old["confidence"]} if "confidence" in old else {}),
        }
        write_json(path / INDEX_JSON, meta, indent=1, default=_json_default)
    return {"threshold": threshold, **replaced}


def check_meta(meta: dict[str, Any], where: Path) -> None:
    """The types index.json promises, checked at load: a hand-edited or crafted file is one
    line naming the key, not a TypeError deep inside a search or a recalibration."""
    t = meta["threshold"]
    number = isinstance(t, int | float) and not isinstance(t, bool)
    problems = {
        "threshold": t is not None and not (number and math.isfinite(t) and t >= 0),
        "model": not isinstance(meta["model"], dict),
        "calibration": not isinstance(meta["calibration"], dict),
        "backend_params": not isinstance(meta["backend_params"], dict),
        "model_dir": meta.get("model_dir") is not None and not isinstance(meta["model_dir"], str),
    }
    for key, bad in problems.items():
        if bad:
            detail = f"{key} is {meta.get(key)!r}, which an index never holds"
            raise unreadable(where, "index description", detail, REBUILD)


def index_lock(path: str | Path) -> AbstractContextManager[None]:
    """The lock a writer of the index folder `path` holds (beside it: the folder is swapped)."""
    return sibling_lock(path, f"gallery index {path}")


def check_index_target(path: str | Path) -> None:
    """Refuse, before any work, an output folder that holds other files than an index's."""
    check_replaceable(Path(path), INDEX_FILES)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
