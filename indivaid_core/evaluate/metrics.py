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

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from indivaid_core.device import resolve_device
from indivaid_core.evaluate.ranking import MAX_GALLERY, CountRanker, SortRanker, chunk_ranks


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


def _rank_core(
    dist_rows: Callable[[int, int], torch.Tensor],
    n_query: int,
    n_gallery: int,
    query_ids: Sequence,
    gallery_ids: Sequence,
    query_cams: Sequence | None,
    gallery_cams: Sequence | None,
    leave_one_out: bool,
    max_rank: int,
    chunk_size: int | None,
    max_chunk_elements: int,
    device: torch.device,
    progress: bool,
    n_threads: int | None,
    method: str = "count",
) -> dict:
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"empty distance matrix ({n_query} queries x {n_gallery} gallery)")
    if len(query_ids) != n_query:
        raise ValueError(f"query_ids has {len(query_ids)} entries but there are {n_query} queries")
    if len(gallery_ids) != n_gallery:
        raise ValueError(
            f"gallery_ids has {len(gallery_ids)} entries but the gallery has {n_gallery} items"
        )
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("pass both query_cams and gallery_cams, or neither")
    if leave_one_out and n_query != n_gallery:
        raise ValueError(f"leave_one_out needs query == gallery, got {n_query} x {n_gallery}")
    if n_gallery >= MAX_GALLERY:
        raise ValueError(f"gallery of {n_gallery} items exceeds the supported {MAX_GALLERY - 1}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")

    qid_np, gid_np = encode_labels(query_ids, gallery_ids)
    qid, gid = torch.from_numpy(qid_np).to(device), torch.from_numpy(gid_np).to(device)
    use_cams = query_cams is not None
    qcam_np = gcam_np = None
    if use_cams:
        if len(query_cams) != n_query or len(gallery_cams) != n_gallery:
            raise ValueError("query_cams/gallery_cams lengths must match query_ids/gallery_ids")
        qcam_np, gcam_np = encode_labels(query_cams, gallery_cams)
        qcam, gcam = torch.from_numpy(qcam_np).to(device), torch.from_numpy(gcam_np).to(device)

    rows_per_chunk = min(chunk_size or max(1, max_chunk_elements // max(n_gallery, 1)), n_query)
    threads = n_threads or torch.get_num_threads()
    if method not in ("count", "sort"):
        raise ValueError(f"unknown ranking method {method!r}")
    counter = cpu_ranker = None
    if device.type == "cpu" and method == "count":
        counter = CountRanker(
            qid_np, gid_np, qcam_np, gcam_np, leave_one_out, threads, rows_per_chunk
        )
    elif device.type == "cpu":
        cpu_ranker = SortRanker(rows_per_chunk, n_gallery, threads)
    first = np.full(n_query, -1, dtype=np.int64)
    last = np.full(n_query, -1, dtype=np.int64)
    n_pos = np.zeros(n_query, dtype=np.int64)
    ap = np.full(n_query, np.nan, dtype=np.float64)
    try:
        starts = range(0, n_query, rows_per_chunk)
        for s in tqdm(starts, desc="rank metrics", disable=not progress, leave=False):
            e = min(s + rows_per_chunk, n_query)
            d = dist_rows(s, e).to(device)
            what = f"distance rows {s}:{e}"
            if counter is not None:
                rows, ranks = counter(d, s, what)
            else:
                match = qid[s:e, None] == gid[None, :]
                exclude = None
                if use_cams:
                    exclude = match & (qcam[s:e, None] == gcam[None, :])
                if leave_one_out:
                    diag = torch.zeros_like(match)
                    r = torch.arange(e - s, device=device)
                    diag[r, r + s] = True
                    exclude = diag if exclude is None else exclude | diag
                if exclude is not None:
                    match = match & ~exclude
                if device.type == "cpu" and d.dtype != torch.float64:
                    ex = None if exclude is None else exclude.numpy()
                    rows, ranks = cpu_ranker(d, match.numpy(), ex, what)
                else:
                    rows, ranks = chunk_ranks(d, match, exclude, what)
                    rows, ranks = rows.cpu().numpy(), ranks.cpu().numpy()
            ranks = ranks.astype(np.int64)
            counts = np.bincount(rows, minlength=e - s)
            starts_of_row = np.cumsum(counts) - counts
            hit_no = np.arange(len(rows)) - starts_of_row[rows] + 1  # k-th hit of its query
            prec = np.bincount(rows, weights=hit_no / ranks, minlength=e - s)
            has = counts > 0
            n_pos[s:e] = counts
            ap[s:e][has] = prec[has] / counts[has]
            first[s:e][has] = ranks[starts_of_row[has]]
            last[s:e][has] = ranks[starts_of_row[has] + counts[has] - 1]
    finally:
        for ranker in (counter, cpu_ranker):
            if ranker is not None:
                ranker.close()
    valid = n_pos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            "no query has a true match in its gallery (after leave-one-out/camera filtering); "
            "check that query identities appear in the gallery"
        )
    inp = np.full(n_query, np.nan, dtype=np.float64)
    inp[valid] = n_pos[valid] / last[valid]
    ranks_axis = np.arange(1, max_rank + 1)
    cmc = (first[valid, None] <= ranks_axis[None, :]).mean(axis=0)
    return {
        "mAP": float(ap[valid].mean()),
        "cmc": cmc,
        "mINP": float(inp[valid].mean()),
        "n_valid_queries": n_valid,
        "n_skipped_queries": int(n_query - n_valid),
        "ap": ap,
        "inp": inp,
        "first_match_rank": first,
        "n_true_matches": n_pos,
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
    ``ranking="sort"`` ranks by the previous full sort of each row, the tests' and
    ``benchmarks/bench_metrics.py``'s reference (same outputs); CUDA always sorts.
    """
    dist_t = _as_tensor(dist)
    if dist_t.ndim != 2:
        raise ValueError(f"dist must be 2-D (queries x gallery), got shape {tuple(dist_t.shape)}")
    dev = dist_t.device if device is None else resolve_device(device)
    return _rank_core(
        lambda s, e: dist_t[s:e],
        dist_t.shape[0],
        dist_t.shape[1],
        query_ids,
        gallery_ids,
        query_cams,
        gallery_cams,
        leave_one_out,
        max_rank,
        chunk_size,
        max_chunk_elements,
        dev,
        progress,
        n_threads,
        ranking,
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
    ``ranking="sort"``: the previous path, ``pairwise_distance`` per chunk and the full sort
    (the reference; same outputs).
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
    return _rank_core(
        dist_rows,
        qf.shape[0],
        gf.shape[0],
        query_ids,
        gallery_ids,
        query_cams,
        gallery_cams,
        leave_one_out,
        max_rank,
        chunk_size,
        max_chunk_elements,
        dev,
        progress,
        n_threads,
        ranking,
    )
