"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised in torch on CPU or GPU.

Written here because no maintained library ships it; the published reference loops over
images in Python. Steps, all on dense (N, N) tensors with N = all images involved:
squared distances normalised per column -> k1-reciprocal sets R = A & A^T from the k1+1
nearest neighbours -> expansion by candidates' k1/2-reciprocal sets that overlap R by more than
2/3 -> Gaussian-kernel weights V -> local query expansion over the k2 nearest -> Jaccard
distance from sum(min(V_i, V_j)) -> final = (1 - lambda) * jaccard + lambda * original.
Ties in the neighbour ranking are broken by index (stable sort). Memory is O(N^2).
"""

from __future__ import annotations

import numpy as np
import torch

from indivaid_core.device import resolve_device


def _as_float(x: np.ndarray | torch.Tensor, device: torch.device | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device or t.device, dtype=torch.float32)


def _inputs(
    device: str | torch.device | None, *dists: np.ndarray | torch.Tensor
) -> list[torch.Tensor]:
    """float32 tensors on ``device`` (None: where each input already is), for both entry points."""
    dev = None if device is None else resolve_device(device)
    return [_as_float(x, dev) for x in dists]


def _reciprocal(rank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-reciprocal sets as (dense bool membership, forward neighbour lists (N, k+1))."""
    n = rank.shape[0]
    fwd = rank[:, : k + 1]
    a = torch.zeros(n, n, dtype=torch.bool, device=rank.device)
    a.scatter_(1, fwd, True)
    return a & a.T, fwd


def _jaccard_rows(v: torch.Tensor, n_rows: int, chunk_size: int) -> torch.Tensor:
    """1 - |min| / |max| between V's first n_rows rows and all rows, using V's sparsity."""
    out = torch.empty(n_rows, v.shape[0], dtype=v.dtype, device=v.device)
    vt = v.T.contiguous()
    for s in range(0, n_rows, chunk_size):
        block = v[s : min(s + chunk_size, n_rows)]
        nnz = int((block != 0).sum(1).max())
        vals, cols = torch.topk(block, max(nnz, 1), dim=1)  # nonzeros (zeros pad, add nothing)
        mins = torch.minimum(vals[:, :, None], vt[cols])  # (B, nnz, N)
        inter = mins.sum(1)
        out[s : s + len(block)] = 1.0 - inter / (2.0 - inter)
    return out


def _rerank_full(
    dist: torch.Tensor, n_probe: int, k1: int, k2: int, lambda_value: float, chunk_size: int
) -> torch.Tensor:
    """Re-rank the first n_probe rows of an all-vs-all (N, N) distance matrix."""
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    n = dist.shape[0]
    if n <= k1:
        raise ValueError(f"re-ranking needs more than k1={k1} images in total, got {n}")
    d = dist.pow(2)
    # a column of zeros (every image identical to that one: collapsed or fully fogged
    # features) stays 0 rather than 0/0 = NaN; any other column divides as released
    peak = d.amax(dim=0, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    d = (d / peak).T.contiguous()
    rank = torch.sort(d, dim=1, stable=True).indices
    r, fwd = _reciprocal(rank, k1)
    r_half, fwd_half = _reciprocal(rank, int(np.around(k1 / 2.0)))

    # Expansion: candidate c in R(i) adds R_half(c) when |R_half(c) & R(i)| > 2/3 |R_half(c)|.
    rows = torch.arange(n, device=d.device)[:, None, None]
    half_members = fwd_half[fwd]  # (N, k1+1, k1/2+1): forward half-lists of the candidates
    in_half = r_half[fwd[:, :, None], half_members]  # which of those are half-reciprocal
    overlap = (in_half & r[rows, half_members]).sum(-1)
    is_cand = r.gather(1, fwd)
    take = is_cand & (overlap > 2.0 / 3.0 * in_half.sum(-1))
    expanded = r.clone()
    sel = take[:, :, None] & in_half
    expanded[rows.expand_as(sel)[sel], half_members[sel]] = True

    w = torch.where(expanded, torch.exp(-d), torch.zeros((), device=d.device))
    v = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)  # ties: R(i) can be empty
    if k2 > 1:  # local query expansion: mean of the k2 nearest rows (loop over k2, not images)
        v_qe = torch.zeros_like(v)
        for t in range(k2):
            v_qe += v[rank[:, t]]
        v = v_qe / k2
    jaccard = _jaccard_rows(v, n_probe, chunk_size)
    return jaccard * (1.0 - lambda_value) + d[:n_probe] * lambda_value


def rerank(
    q_g: np.ndarray | torch.Tensor,
    q_q: np.ndarray | torch.Tensor,
    g_g: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Re-ranked (Q, G) distances from query-gallery, query-query and gallery-gallery distances.

    Inputs are plain (not squared) distances, e.g. Euclidean. ``chunk_size`` bounds the
    Jaccard step's memory at chunk_size x nnz x N floats.
    """
    qg, qq, gg = _inputs(device, q_g, q_q, g_g)
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(
            f"shapes do not fit: q_g {tuple(qg.shape)}, q_q {tuple(qq.shape)}, "
            f"g_g {tuple(gg.shape)}"
        )
    full = torch.cat([torch.cat([qq, qg], 1), torch.cat([qg.T, gg], 1)], 0)
    return _rerank_full(full, nq, k1, k2, lambda_value, chunk_size)[:, nq:]


def rerank_loo(
    dist: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Re-ranked (N, N) distances when query == gallery; evaluate with ``leave_one_out=True``.

    Each image appears once in the neighbourhood graph (not once as query and once as
    gallery), so its self-match is just the diagonal that the leave-one-out metric removes.
    """
    (d,) = _inputs(device, dist)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"rerank_loo needs a square distance matrix, got {tuple(d.shape)}")
    return _rerank_full(d, d.shape[0], k1, k2, lambda_value, chunk_size)
