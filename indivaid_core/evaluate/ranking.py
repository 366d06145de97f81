"""The ranking engines behind `evaluate.metrics`: the rank of every true match, exactly.

How (CPU, :class:`CountRanker`): nothing is sorted. Only the ranks of the true matches are
needed, and the rank of match ``p`` among the kept items is ``1 + #{kept j: d_j < d_p}
+ #{kept j < p: d_j == d_p}``. Per query row, one compare pass keeps the items no farther than
its farthest true match (usually a handful), and the counts are taken on those. Excluded
items (self-match, same id and camera) are all gallery items of known columns, so they are
subtracted from the counts instead of being masked out of the row. A true match tied with
another kept item gets the exact index tie-break from one more pass over that row.
On CUDA, and as the reference (``ranking="sort"``), each chunk of query rows becomes
one int64 key per gallery item, ``[order-preserving float32 bits | gallery index | is-match
bit]``; one plain sort of those unique keys gives the stable ranking and carries the match bit
along. Excluded items get a key above every real distance, so they fall behind all kept items.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

# Largest even int64: above every real distance key and with the is-match bit cleared.
_EXCLUDED_KEY = np.iinfo(np.int64).max - 1
# Gallery index and match bit share the low 32 bits of the key.
MAX_GALLERY = 2**31


@dataclass(frozen=True)
class LabelCodes:
    """Identity (and, when filtering by camera, camera) labels of the queries and the gallery
    as int64 codes shared by both sides, so equal labels have equal codes."""

    qid: np.ndarray
    gid: np.ndarray
    qcam: np.ndarray | None = None
    gcam: np.ndarray | None = None


def _float_key(d: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 whose signed order is the float order, in the high word (-0.0 == 0.0)."""
    bits = d.to(torch.float32).view(torch.int32)
    magnitude = bits & 0x7FFFFFFF
    ordered = torch.where(bits < 0, -magnitude, magnitude)
    return ordered.to(torch.int64) << 32


def _raise_nan(what: str) -> None:
    raise ValueError(f"{what} contains NaN distances")


class SortRanker:
    """numpy version of the key sort on reused buffers (no page-fault churn per chunk).

    Row blocks run in a thread pool: numpy releases the GIL in ufuncs and sorts, and the
    sort dominates the cost, so this scales with cores (torchreid's Cython path cannot).
    """

    def __init__(self, rows: int, n_gallery: int, n_threads: int):
        self.low = np.arange(n_gallery, dtype=np.int64) << 1
        self.key = np.empty((rows, n_gallery), dtype=np.int64)
        self.val = np.empty((rows, n_gallery), dtype=np.float32)
        self.little = sys.byteorder == "little"
        self.n_threads = max(1, min(n_threads, rows))
        self.pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _block(
        self, d: np.ndarray, match: np.ndarray, exclude: np.ndarray | None, r0: int, r1: int
    ) -> np.ndarray | None:
        """Flat (row * G + col) sorted positions of the true matches of rows r0:r1."""
        key, val = self.key[r0:r1], self.val[r0:r1]
        np.add(d[r0:r1], 0.0, out=val)  # also turns -0.0 into +0.0
        lo, hi = val.min(), val.max()
        if np.isnan(lo) or np.isnan(hi):
            return None
        bits = val.view(np.int32)
        if lo < 0:  # sign-magnitude floats: negate the magnitude of negative ones
            bits = np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
        np.left_shift(bits, 32, out=key, dtype=np.int64)
        np.bitwise_or(key, self.low, out=key)
        np.bitwise_or(key, match[r0:r1], out=key)
        if exclude is not None:
            np.putmask(key, exclude[r0:r1], _EXCLUDED_KEY)
        key.sort(axis=1)
        # The match bit lives in the lowest byte; reading only that byte is cheaper than key & 1.
        low_byte = key.view(np.uint8)[:, ::8] if self.little else key
        return np.flatnonzero(low_byte & 1) + r0 * key.shape[1]  # 1-D: ~2x faster than 2-D

    def __call__(
        self, dist: torch.Tensor, match: np.ndarray, exclude: np.ndarray | None, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        d = dist.float().numpy()
        b = d.shape[0]
        cuts = np.linspace(0, b, min(self.n_threads, b) + 1).astype(int)
        spans = list(zip(cuts[:-1], cuts[1:], strict=True))
        if self.pool is None or len(spans) == 1:
            parts = [self._block(d, match, exclude, r0, r1) for r0, r1 in spans]
        else:
            parts = list(self.pool.map(lambda sp: self._block(d, match, exclude, *sp), spans))
        if any(p is None for p in parts):
            _raise_nan(what)
        rows, cols = np.divmod(np.concatenate(parts), d.shape[1])
        return rows, cols + 1


# Below this many candidates per true match, sort the candidates and binary-search them;
# above it, one vectorised compare pass per true match is cheaper (module constants, so that
# tests can force either way).
_SORT_BELOW_PER_MATCH = 128
_SORT_FROM_MATCHES = 64


def _below_counts(v: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#(v < t_k), #(v <= t_k)) for every threshold t_k, exact for any dtype."""
    if v.size < _SORT_BELOW_PER_MATCH * t.size or t.size >= _SORT_FROM_MATCHES:
        v = np.sort(v)
        return np.searchsorted(v, t, "left"), np.searchsorted(v, t, "right")
    lt = np.fromiter((np.count_nonzero(v < x) for x in t), np.int64, t.size)
    le = np.fromiter((np.count_nonzero(v <= x) for x in t), np.int64, t.size)
    return lt, le


class CountRanker:
    """Ranks of the true matches by counting gallery items ahead of them (CPU, any float).

    For a query whose kept true matches are at distances ``t``, one pass ``row <= max(t)``
    keeps the only items that can be ahead of any of them, and ``#(< t_k)`` and
    ``#(<= t_k)`` are counted on those. The excluded items (leave-one-out self-match, same
    id and camera) are same-id gallery columns or the query's own column, so their counts
    are subtracted. When ``#(<= t_k) - #(< t_k)`` shows another kept item at exactly
    ``t_k``, the stable-sort tie-break (lower gallery index first) is counted exactly on
    ``row[:p]``. Row blocks run in a thread pool (numpy releases the GIL in its compare and
    count loops).
    """

    def __init__(
        self, codes: LabelCodes, *, leave_one_out: bool, n_threads: int, rows_per_chunk: int
    ):
        self.qid, self.gid, self.qcam, self.gcam = codes.qid, codes.gid, codes.qcam, codes.gcam
        self.loo = leave_one_out
        gid = codes.gid
        n_codes = int(max(codes.qid.max(), gid.max())) + 1
        counts = np.bincount(gid, minlength=n_codes)
        self.id_count = counts
        self.id_start = np.cumsum(counts) - counts
        self.cols_by_id = np.argsort(gid, kind="stable")  # each identity's columns, ascending
        self.n_threads = max(1, min(n_threads, rows_per_chunk))
        self.pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _specials(self, d: np.ndarray, s: int) -> tuple:
        """Same-id columns (and leave-one-out's own column) of rows s:s+b, grouped by row:
        ``(starts, cols, values)`` of the kept true matches and of the excluded items."""
        b = d.shape[0]
        q = np.arange(s, s + b)
        codes = self.qid[q]
        n = self.id_count[codes]
        first = np.cumsum(n) - n
        row = np.repeat(np.arange(b), n)
        cols = self.cols_by_id[np.repeat(self.id_start[codes] - first, n) + np.arange(n.sum())]
        if self.qcam is None:
            excl = np.zeros(cols.size, dtype=bool)
        else:
            excl = self.gcam[cols] == self.qcam[q][row]
        if self.loo:
            excl |= cols == q[row]
            own = np.flatnonzero(self.gid[q] != codes)  # own column, not a true match
            if own.size:
                row = np.concatenate([row, own])
                cols = np.concatenate([cols, q[own]])
                excl = np.concatenate([excl, np.ones(own.size, dtype=bool)])
                order = np.argsort(row, kind="stable")
                row, cols, excl = row[order], cols[order], excl[order]
        vals = d[row, cols]
        kept = ~excl
        edges = np.arange(b + 1)
        return (
            (np.searchsorted(row[kept], edges), cols[kept], vals[kept]),
            (np.searchsorted(row[excl], edges), cols[excl], vals[excl]),
        )

    @staticmethod
    def _block(d: np.ndarray, kept: tuple, ex: tuple, r0: int, r1: int) -> list:
        """(row, sorted 1-based ranks among its kept items) of each row r0:r1 with a match."""
        (k_at, k_cols, k_vals), (e_at, e_cols, e_vals) = kept, ex
        out = []
        for i in range(r0, r1):
            a, z = k_at[i], k_at[i + 1]
            if a == z:
                continue
            row, t = d[i], k_vals[a:z]
            lt, le = _below_counts(row[row <= t.max()], t)
            ea, ez = e_at[i], e_at[i + 1]
            rank = 1 + lt
            if ea < ez:
                ev_sorted = np.sort(e_vals[ea:ez])
                ex_lt = np.searchsorted(ev_sorted, t, "left")
                rank -= ex_lt
                le = le - (np.searchsorted(ev_sorted, t, "right") - ex_lt)
            for k in np.flatnonzero(le - lt > 1):  # > 1: the match itself is one
                p = k_cols[a + k]
                ev, ec = e_vals[ea:ez], e_cols[ea:ez]
                before = np.count_nonzero(row[:p] == t[k])
                rank[k] += before - np.count_nonzero((ev == t[k]) & (ec < p))
            rank.sort()
            out.append((i, rank))
        return out

    def __call__(self, dist: torch.Tensor, s: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(row, rank) of every kept true match of rows ``s:s+b``, row-major, ranks ascending."""
        dist = dist.detach().cpu()
        d = (dist if dist.dtype == torch.float64 else dist.float()).numpy()
        if np.isnan(d.min()):  # min propagates NaN
            _raise_nan(what)
        kept, ex = self._specials(d, s)
        b = d.shape[0]
        cuts = np.linspace(0, b, min(self.n_threads, b) + 1).astype(int)
        spans = list(zip(cuts[:-1], cuts[1:], strict=True))
        if self.pool is None or len(spans) == 1:
            parts = [self._block(d, kept, ex, r0, r1) for r0, r1 in spans]
        else:
            parts = list(self.pool.map(lambda sp: self._block(d, kept, ex, *sp), spans))
        found = [x for part in parts for x in part]
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.repeat([i for i, _ in found], [r.size for _, r in found])
        return rows.astype(np.int64), np.concatenate([r for _, r in found])


class MaskRanker:
    """The sorting engines behind CountRanker's interface: per chunk of query rows, the
    true-match and excluded masks, then SortRanker (CPU, below float64) or `chunk_ranks`
    (CUDA, and float64)."""

    def __init__(
        self,
        codes: LabelCodes,
        *,
        leave_one_out: bool,
        device: torch.device,
        n_threads: int,
        rows_per_chunk: int,
    ):
        def on_device(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a).to(device)

        self.qid, self.gid = on_device(codes.qid), on_device(codes.gid)
        self.qcam, self.gcam = on_device(codes.qcam), on_device(codes.gcam)
        self.loo, self.device = leave_one_out, device
        self.cpu = (
            SortRanker(rows_per_chunk, len(codes.gid), n_threads) if device.type == "cpu" else None
        )

    def close(self) -> None:
        if self.cpu is not None:
            self.cpu.close()

    def masks(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(kept true matches, excluded items) of query rows s:e: same id and camera, and
        under leave-one-out the query itself, are excluded."""
        match = self.qid[s:e, None] == self.gid[None, :]
        exclude = None
        if self.qcam is not None:
            exclude = match & (self.qcam[s:e, None] == self.gcam[None, :])
        if self.loo:
            diag = torch.zeros_like(match)
            r = torch.arange(e - s, device=self.device)
            diag[r, r + s] = True
            exclude = diag if exclude is None else exclude | diag
        if exclude is not None:
            match = match & ~exclude
        return match, exclude

    def __call__(self, dist: torch.Tensor, s: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(row, rank) of every kept true match of rows ``s:s+b``, row-major, ranks ascending."""
        match, exclude = self.masks(s, s + dist.shape[0])
        if self.cpu is not None and dist.dtype != torch.float64:
            ex = None if exclude is None else exclude.numpy()
            return self.cpu(dist, match.numpy(), ex, what)
        rows, ranks = chunk_ranks(dist, match, exclude, what)
        return rows.cpu().numpy(), ranks.cpu().numpy()


def chunk_ranks(
    dist: torch.Tensor,
    match: torch.Tensor,
    exclude: torch.Tensor | None,
    what: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, 1-based rank among kept items) of every true match in one chunk, row-major."""
    if torch.isnan(dist).any():
        _raise_nan(what)
    if dist.dtype == torch.float64:
        return _chunk_ranks_float64(dist, match, exclude)
    b, g = dist.shape
    low = (torch.arange(g, device=dist.device, dtype=torch.int64) << 1).expand(b, g)
    key = _float_key(dist) | low | match.to(torch.int64)
    if exclude is not None:
        key = key.masked_fill(exclude, _EXCLUDED_KEY)
    rows, cols = torch.nonzero(torch.sort(key, dim=1).values & 1, as_tuple=True)
    return rows, cols + 1


def _chunk_ranks_float64(
    dist: torch.Tensor, match: torch.Tensor, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slower exact path for float64, whose 64 bits leave no room for the index in a key."""
    order = torch.sort(dist + 0.0, dim=1, stable=True).indices
    rows, cols = torch.nonzero(match.gather(1, order), as_tuple=True)
    if exclude is None:
        return rows, cols + 1
    kept_rank = torch.cumsum(~exclude.gather(1, order), dim=1)
    return rows, kept_rank[rows, cols]
