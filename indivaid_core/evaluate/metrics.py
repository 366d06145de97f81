"""Exact, vectorised re-ID ranking metrics: mAP, CMC, mINP.

Protocols: disjoint query/gallery, leave-one-out (query == gallery, the self-match is *removed*
from that query's gallery, never moved to the end) and optional torchreid/market-style
same-camera filtering (off unless cameras are passed).

Tie rule: the gallery of each query is ranked by ascending distance, ties broken by ascending
gallery index (exactly ``np.argsort(row, kind="stable")``). ``-0.0`` equals ``0.0``.

Written by hand: nothing in torchreid/sklearn gives these exact numbers at this speed.

The ranking engines (which never sort on the CPU) are in `evaluate/ranking.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from indivaid_core.device import resolve_device
from indivaid_core.evaluate.ranking import MAX_GALLERY, CountRanker, LabelCodes, MaskRanker


def encode_labels(*label_arrays: Sequence) -> list[np.ndarray]:
    """Map identity/camera labels of any hashable type to shared int64 codes."""
    lengths = [len(a) for a in label_arrays]
    joined = pd.Series(np.concatenate([np.asarray(a, dtype=object) for a in label_arrays]))
    if joined.isna().any():
        raise ValueError("labels contain missing values (NaN/None); every row needs a label")
    codes, _ = pd.factorize(joined)
    return list(np.split(codes.astype(np.int64), np.cumsum(lengths)[:-1]))


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


@dataclass(frozen=True)
class _Labels:
    """The identity and camera labels of both sides, as the caller gave them."""

    query_ids: Sequence
    gallery_ids: Sequence
    query_cams: Sequence | None
    gallery_cams: Sequence | None


@dataclass(frozen=True)
class _Ranking:
    """How to rank: the protocol, then how query rows are chunked, threaded and ranked."""

    leave_one_out: bool
    max_rank: int
    chunk_size: int | None
    max_chunk_elements: int
    progress: bool
    n_threads: int | None
    method: str


def _rank_core(
    dist_rows: Callable[[int, int], torch.Tensor],
    *,
    shape: tuple[int, int],
    labels: _Labels,
    how: _Ranking,
    device: torch.device,
) -> dict:
    """The metrics of a (Q, G) distance matrix whose rows `dist_rows(s, e)` gives by chunks."""
    _check_inputs(shape, labels, how)
    codes = _codes(labels, shape)
    n_query, n_gallery = shape
    per_chunk = how.chunk_size or max(1, how.max_chunk_elements // max(n_gallery, 1))
    rows_per_chunk = min(per_chunk, n_query)
    ranker = _ranker(codes, how, device, rows_per_chunk)
    per_query = _PerQuery.empty(n_query)
    try:
        starts = range(0, n_query, rows_per_chunk)
        for s in tqdm(starts, desc="rank metrics", disable=not how.progress, leave=False):
            e = min(s + rows_per_chunk, n_query)
            rows, ranks = ranker(dist_rows(s, e).to(device), s, f"distance rows {s}:{e}")
            per_query.add(s, e, rows, ranks.astype(np.int64))
    finally:
        ranker.close()
    return per_query.metrics(how.max_rank)


def _check_inputs(shape: tuple[int, int], labels: _Labels, how: _Ranking) -> None:
    """Refuse labels that do not fit the matrix, and protocols that cannot apply to it."""
    n_query, n_gallery = shape
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"empty distance matrix ({n_query} queries x {n_gallery} gallery)")
    if len(labels.query_ids) != n_query:
        raise ValueError(
            f"query_ids has {len(labels.query_ids)} entries but there are {n_query} queries"
        )
    if len(labels.gallery_ids) != n_gallery:
        raise ValueError(
            f"gallery_ids has {len(labels.gallery_ids)} entries but the gallery has "
            f"{n_gallery} items"
        )
    if (labels.query_cams is None) != (labels.gallery_cams is None):
        raise ValueError("pass both query_cams and gallery_cams, or neither")
    if how.leave_one_out and n_query != n_gallery:
        raise ValueError(f"leave_one_out needs query == gallery, got {n_query} x {n_gallery}")
    if n_gallery >= MAX_GALLERY:
        raise ValueError(f"gallery of {n_gallery} items exceeds the supported {MAX_GALLERY - 1}")
    if how.max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {how.max_rank}")


def _codes(labels: _Labels, shape: tuple[int, int]) -> LabelCodes:
    """The labels as shared int64 codes; cameras only when both sides have them."""
    qid, gid = encode_labels(labels.query_ids, labels.gallery_ids)
    if labels.query_cams is None:
        return LabelCodes(qid, gid)
    if len(labels.query_cams) != shape[0] or len(labels.gallery_cams) != shape[1]:
        raise ValueError("query_cams/gallery_cams lengths must match query_ids/gallery_ids")
    qcam, gcam = encode_labels(labels.query_cams, labels.gallery_cams)
    return LabelCodes(qid, gid, qcam, gcam)


def _ranker(
    codes: LabelCodes, how: _Ranking, device: torch.device, rows_per_chunk: int
) -> CountRanker | MaskRanker:
    """The engine: counting on the CPU, else sorting (the reference, and CUDA)."""
    if how.method not in ("count", "sort"):
        raise ValueError(f"unknown ranking method {how.method!r}")
    threads = how.n_threads or torch.get_num_threads()
    if device.type == "cpu" and how.method == "count":
        return CountRanker(
            codes,
            leave_one_out=how.leave_one_out,
            n_threads=threads,
            rows_per_chunk=rows_per_chunk,
        )
    return MaskRanker(
        codes,
        leave_one_out=how.leave_one_out,
        device=device,
        n_threads=threads,
        rows_per_chunk=rows_per_chunk,
    )


@dataclass(frozen=True)
class _PerQuery:
    """Each query's AP, number of true matches and first and last match ranks, filled in
    chunk by chunk; -1 and NaN mark queries without a true match."""

    ap: np.ndarray
    first: np.ndarray
    last: np.ndarray
    n_pos: np.ndarray

    @classmethod
    def empty(cls, n_query: int) -> _PerQuery:
        return cls(
            ap=np.full(n_query, np.nan, dtype=np.float64),
            first=np.full(n_query, -1, dtype=np.int64),
            last=np.full(n_query, -1, dtype=np.int64),
            n_pos=np.zeros(n_query, dtype=np.int64),
        )

    def add(self, s: int, e: int, rows: np.ndarray, ranks: np.ndarray) -> None:
        """Record queries s:e from the (row, rank) pairs of their true matches, row-major."""
        counts = np.bincount(rows, minlength=e - s)
        starts_of_row = np.cumsum(counts) - counts
        hit_no = np.arange(len(rows)) - starts_of_row[rows] + 1  # k-th hit of its query
        prec = np.bincount(rows, weights=hit_no / ranks, minlength=e - s)
        has = counts > 0
        self.n_pos[s:e] = counts
        self.ap[s:e][has] = prec[has] / counts[has]
        self.first[s:e][has] = ranks[starts_of_row[has]]
        self.last[s:e][has] = ranks[starts_of_row[has] + counts[has] - 1]

    def metrics(self, max_rank: int) -> dict:
        """mAP, CMC and mINP over the queries with a true match, and the per-query arrays."""
        valid = self.n_pos > 0
        n_valid = int(valid.sum())
        if n_valid == 0:
            raise ValueError(
                "no query has a true match in its gallery (after leave-one-out/camera "
                "filtering); check that query identities appear in the gallery"
            )
        inp = np.full(len(self.n_pos), np.nan, dtype=np.float64)
        inp[valid] = self.n_pos[valid] / self.last[valid]
        ranks_axis = np.arange(1, max_rank + 1)
        cmc = (self.first[valid, None] <= ranks_axis[None, :]).mean(axis=0)
        return {
            "mAP": float(self.ap[valid].mean()),
            "cmc": cmc,
            "mINP": float(inp[valid].mean()),
            "n_valid_queries": n_valid,
            "n_skipped_queries": int(len(self.n_pos) - n_valid),
            "ap": self.ap,
            "inp": inp,
            "first_match_rank": self.first,
            "n_true_matches": self.n_pos,
        }


def rank_metrics(
    dist: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    gallery_ids: Sequence,
    query_cams: Sequence | None = None,
    gallery_cams: Sequence | None = None,
    leave_one_out: bool = False,
    max_rank: int = 10,
    chunk_size: int | None = None,
    max_chunk_elements: int = 2**22,
    device: str | torch.device | None = None,
    progress: bool = False,
    n_threads: int | None = None,
    *,
    ranking: str = "count",
) -> dict:
    """mAP, CMC, mINP of a (Q, G) distance matrix (smaller = more similar).

    float64 distances are ranked in float64; everything else is ranked as float32 (see the
    module docstring for the tie rule).
    ``leave_one_out``: Q == G and column i is removed from row i's gallery. Cameras, when
    both are given, remove gallery items with the query's identity *and* camera.
    Queries with no true match left are skipped and counted; if none is valid a ValueError
    is raised. Rows are processed ``chunk_size`` at a time (default: as many as fit in
    ``max_chunk_elements`` distances) so memory stays bounded: on CPU the extra memory is
    one chunk of distances plus, per thread, a few gallery-row-sized buffers.
    ``device`` defaults to the tensor's device; "auto" picks CUDA when present. On CPU, row
    blocks are ranked on ``n_threads`` threads (default ``torch.get_num_threads()``).

    Returns ``mAP``, ``cmc`` (length ``max_rank``, index 0 = rank 1), ``mINP`` (fractions),
    ``n_valid_queries``, ``n_skipped_queries`` and per-query arrays ``ap``, ``inp``
    (NaN when skipped), ``first_match_rank`` (-1 when skipped), ``n_true_matches``.
    ``ranking="sort"`` ranks by a full sort of each row: the reference the tests and
    ``benchmarks/bench_metrics.py`` check the counting engine against (same outputs); CUDA
    always sorts.
    """
    dist_t = _as_tensor(dist)
    if dist_t.ndim != 2:
        raise ValueError(f"dist must be 2-D (queries x gallery), got shape {tuple(dist_t.shape)}")
    dev = dist_t.device if device is None else resolve_device(device)
    how = _Ranking(
        leave_one_out=leave_one_out,
        max_rank=max_rank,
        chunk_size=chunk_size,
        max_chunk_elements=max_chunk_elements,
        progress=progress,
        n_threads=n_threads,
        method=ranking,
    )
    return _rank_core(
        lambda s, e: dist_t[s:e],
        shape=(dist_t.shape[0], dist_t.shape[1]),
        labels=_Labels(query_ids, gallery_ids, query_cams, gallery_cams),
        how=how,
        device=dev,
    )


def pairwise_distance(
    qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean"
) -> torch.Tensor:
    """Euclidean (the paper's protocol) or cosine (1 - cos) distances between feature rows."""
    if metric == "euclidean":
        return torch.cdist(qf.float(), gf.float())
    if metric == "cosine":
        qn = torch.nn.functional.normalize(qf.float(), dim=1)
        gn = torch.nn.functional.normalize(gf.float(), dim=1)
        return 1.0 - qn @ gn.T
    raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")


# torch.cdist switches to its matmul form above this many rows on either side.
_CDIST_MM_ABOVE = 25


def _distance_rows(
    qf: torch.Tensor, gf: torch.Tensor, metric: str
) -> Callable[[int, int], torch.Tensor]:
    """``(s, e) -> pairwise_distance(qf[s:e], gf, metric)``, bit for bit, with the gallery-side
    work done once instead of per chunk (on CPU, rebuilding it cost twice the matmul).

    Euclidean on CPU repeats ``torch.cdist``'s matmul form, ``sqrt(max([-2x, |x|^2, 1] @
    [y, 1, |y|^2]^T, 0))`` with torch's own clamp_min_/sqrt_ (its vectorised sqrt is not
    the IEEE one, so the sqrt pass cannot be skipped), into one reused buffer (no page faults
    per chunk); the tests check it still equals ``torch.cdist``. The rows must be consumed
    before the next call. Elsewhere (CUDA, galleries of at most 25 where cdist does not use
    the matmul form, unknown metrics) the rows are ``pairwise_distance``'s.
    """
    if qf.device.type != "cpu" or gf.shape[0] <= _CDIST_MM_ABOVE:
        return lambda s, e: pairwise_distance(qf[s:e], gf, metric)
    g = gf.float()
    if metric == "cosine":
        gn = torch.nn.functional.normalize(g, dim=1)
        return lambda s, e: 1.0 - torch.nn.functional.normalize(qf[s:e].float(), dim=1) @ gn.T
    if metric != "euclidean":
        return lambda s, e: pairwise_distance(qf[s:e], gf, metric)  # raises the clear error
    g_aug = torch.cat([g, torch.ones_like(g[:, :1]), g.pow(2).sum(-1, keepdim=True)], -1)
    buf: list[torch.Tensor] = []

    def rows(s: int, e: int) -> torch.Tensor:
        x = qf[s:e].float()
        x_norm = x.pow(2).sum(-1, keepdim=True)
        x_aug = torch.cat([x.mul(-2), x_norm, torch.ones_like(x_norm)], -1)
        if not buf or buf[0].shape[0] < e - s:
            buf[:] = [torch.empty(e - s, g.shape[0])]
        out = torch.matmul(x_aug, g_aug.mT, out=buf[0][: e - s])
        return out.clamp_min_(0).sqrt_()

    return rows


def rank_metrics_from_features(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    gallery_ids: Sequence,
    query_cams: Sequence | None = None,
    gallery_cams: Sequence | None = None,
    leave_one_out: bool = False,
    max_rank: int = 10,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    max_chunk_elements: int = 2**22,
    device: str | torch.device | None = None,
    progress: bool = True,
    n_threads: int | None = None,
    *,
    ranking: str = "count",
) -> dict:
    """:func:`rank_metrics` computing distances chunk by chunk, never the full (Q, G) matrix.

    For galleries whose distance matrix does not fit in memory (20,000 x 100,000 float32 is
    8 GB). Same outputs and tie rule as ``rank_metrics(pairwise_distance(qf, gf, metric))``.
    ``ranking="sort"``: ``pairwise_distance`` per chunk and a full sort (the reference; same
    outputs).
    """
    qf, gf = _as_tensor(query_feats), _as_tensor(gallery_feats)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"feature shapes {tuple(qf.shape)} and {tuple(gf.shape)} do not match")
    dev = qf.device if device is None else resolve_device(device)
    qf, gf = qf.to(dev), gf.to(dev)
    if ranking == "sort":
        dist_rows = lambda s, e: pairwise_distance(qf[s:e], gf, metric)  # noqa: E731
    else:
        dist_rows = _distance_rows(qf, gf, metric)
    how = _Ranking(
        leave_one_out=leave_one_out,
        max_rank=max_rank,
        chunk_size=chunk_size,
        max_chunk_elements=max_chunk_elements,
        progress=progress,
        n_threads=n_threads,
        method=ranking,
    )
    return _rank_core(
        dist_rows,
        shape=(qf.shape[0], gf.shape[0]),
        labels=_Labels(query_ids, gallery_ids, query_cams, gallery_cams),
        how=how,
        device=dev,
    )
