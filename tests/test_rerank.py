"""Vectorised k-reciprocal re-ranking against a plain per-image loop of the paper's steps."""

import numpy as np
import pytest
import torch

from indivaid_core.evaluate import rank_metrics, rerank, rerank_loo


def _loop_rerank(full: np.ndarray, n_probe: int, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017, one image at a time, with Python sets (independent of the torch code)."""
    n = full.shape[0]
    sq = full.astype(np.float64) ** 2
    d = np.empty_like(sq)
    for j in range(n):  # column-wise normalisation, then transpose
        d[:, j] = sq[:, j] / sq[:, j].max()
    d = d.T.astype(np.float32)
    order = [np.argsort(d[i], kind="stable") for i in range(n)]

    def recip(i: int, k: int) -> set[int]:
        return {int(j) for j in order[i][: k + 1] if i in set(order[j][: k + 1].tolist())}

    half = int(round(k1 / 2))
    v = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        r = recip(i, k1)
        expanded = set(r)
        for c in r:
            rc = recip(c, half)
            if len(rc & r) > 2 / 3 * len(rc):
                expanded |= rc
        idx = sorted(expanded)
        w = np.exp(-d[i, idx].astype(np.float64))
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[order[i][:k2]].mean(0) for i in range(n)])
    out = np.empty((n_probe, n))
    for i in range(n_probe):
        for j in range(n):
            inter = sum(min(v[i, t], v[j, t]) for t in range(n))
            out[i, j] = 1 - inter / (2 - inter)
    return out * (1 - lam) + d[:n_probe] * lam


def _feats(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % 5
    return torch.randn(5, 8, generator=g)[ids] + 0.7 * torch.randn(n, 8, generator=g)


@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (5, 3, 0.5), (4, 1, 0.0)])
def test_rerank_matches_loop_reference(k1: int, k2: int, lam: float) -> None:
    qf, gf = _feats(9, 0), _feats(25, 1)
    qg, qq, gg = torch.cdist(qf, gf), torch.cdist(qf, qf), torch.cdist(gf, gf)
    got = rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam).numpy()
    full = torch.cat([torch.cat([qq, qg], 1), torch.cat([qg.T, gg], 1)], 0).numpy()
    want = _loop_rerank(full, 9, k1, k2, lam)[:, 9:]
    assert got.shape == (9, 25)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_rerank_loo_matches_loop_reference_and_accepts_numpy() -> None:
    f = _feats(30, 2)
    dist = torch.cdist(f, f).numpy()
    got = rerank_loo(dist, k1=6, k2=3, lambda_value=0.3).numpy()
    np.testing.assert_allclose(got, _loop_rerank(dist, 30, 6, 3, 0.3), atol=1e-5, rtol=0)


def test_rerank_improves_clustered_retrieval() -> None:
    """On well-clustered data re-ranking must not make mAP worse (a sanity property)."""
    f = _feats(60, 3)
    ids = np.arange(60) % 5
    dist = torch.cdist(f, f)
    base = rank_metrics(dist, ids, ids, leave_one_out=True)["mAP"]
    rr = rank_metrics(rerank_loo(dist, k1=8, k2=3), ids, ids, leave_one_out=True)["mAP"]
    assert rr >= base - 1e-9


def test_rerank_rejects_bad_shapes_and_params() -> None:
    d = torch.rand(3, 4)
    with pytest.raises(ValueError, match="shapes"):
        rerank(d, torch.rand(3, 3), torch.rand(5, 5))
    with pytest.raises(ValueError, match="square"):
        rerank_loo(d)
    with pytest.raises(ValueError, match="more than k1"):
        rerank_loo(torch.rand(5, 5), k1=20)
    with pytest.raises(ValueError, match="lambda_value"):
        rerank_loo(torch.rand(30, 30), k1=3, lambda_value=1.5)


def test_identical_features_rerank_to_zero_distances_not_nan():
    """Collapsed features (every image the same, e.g. a fully fogged robustness level) made
    the released normalisation divide 0 by 0, and exact ties can leave an image with no
    k-reciprocal neighbour (another 0/0). The distances stay finite, and ranking them works."""
    q, g = torch.ones(5, 8), torch.ones(36, 8)
    for k1, k2 in [(2, 1), (20, 6)]:
        d = rerank(torch.cdist(q, g), torch.cdist(q, q), torch.cdist(g, g), k1, k2, 0.3)
        assert d.shape == (5, 36) and torch.isfinite(d).all()
        ids = np.arange(36) % 4
        assert rank_metrics(d, ids[:5], ids, leave_one_out=False)["mAP"] > 0
