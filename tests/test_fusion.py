"""Attention fusion equals a per-individual loop on ragged groups, and never produces NaN."""

import pytest
import torch

from indivaid_core.model import AttentionFusion, pack_by_id

COUNTS = [3, 0, 1, 5, 2]  # ragged, with one individual that has no images


def _ragged(dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g_ids = torch.cat([torch.full((c,), y) for y, c in enumerate(COUNTS)])
    g_ids = g_ids[torch.randperm(len(g_ids), generator=gen)]
    h = torch.randn(len(COUNTS), dim, generator=gen, dtype=torch.float64)
    g = torch.randn(len(g_ids), dim, generator=gen, dtype=torch.float64)
    return h, g, g_ids


def _loop_reference(fusion, h, g, g_ids):
    zs, weights = [], []
    for y in range(h.shape[0]):
        keys = g[g_ids == y]
        if len(keys) == 0:
            zs.append(h[y])
            weights.append(torch.zeros(0, dtype=h.dtype))
            continue
        if fusion.variant == "mean":
            zs.append(keys.mean(0))
            weights.append(torch.full((len(keys),), 1 / len(keys), dtype=h.dtype))
            continue
        out, w = fusion.attn(h[y][None, None], keys[None], keys[None])
        zs.append(fusion.norm(h[y] + out[0, 0]))
        weights.append(w[0, 0])
    return torch.stack(zs), weights


def test_pack_by_id_keeps_order_and_pads():
    g_ids = torch.tensor([2, 0, 2, 2, 0])
    key_index = pack_by_id(g_ids, num_ids=4)
    assert key_index.tolist() == [[1, 4, -1], [-1, -1, -1], [0, 2, 3], [-1, -1, -1]]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        pack_by_id(torch.tensor([4]), num_ids=4)


@pytest.mark.parametrize("variant", ["attention", "mean"])
@pytest.mark.parametrize("train", [True, False])
def test_vectorised_equals_loop(variant, train):
    torch.manual_seed(0)
    fusion = AttentionFusion(8, heads=2, variant=variant).double().train(train)
    h, g, g_ids = _ragged()
    z, weights, key_index = fusion(h, g, g_ids)
    ref_z, ref_w = _loop_reference(fusion, h, g, g_ids)
    assert torch.allclose(z, ref_z, atol=1e-10)
    assert weights.shape == key_index.shape == (len(COUNTS), max(COUNTS))
    for y, count in enumerate(COUNTS):
        assert (g_ids[key_index[y, :count]] == y).all() and (key_index[y, count:] == -1).all()
        assert torch.allclose(weights[y, :count], ref_w[y], atol=1e-10)
        assert (weights[y, count:] == 0).all()


def test_empty_individual_falls_back_to_h_without_nan():
    fusion = AttentionFusion(8, heads=2).double()
    h, g, g_ids = _ragged()
    h.requires_grad_(True)
    g.requires_grad_(True)
    z, _, _ = fusion(h, g, g_ids)
    assert torch.equal(z[1], h[1])
    z.square().sum().backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(g.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters())
    z_none, w_none, _ = fusion(h, g[:0], g_ids[:0])  # no descriptions at all
    assert torch.equal(z_none, h) and w_none is None


def test_gradients_match_numerical():
    torch.manual_seed(0)
    fusion = AttentionFusion(8, heads=2).double()
    h, g, g_ids = _ragged()
    h.requires_grad_(True)
    g.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fusion(a, b, g_ids)[0], (h, g), fast_mode=True)


def test_individual_only_and_bad_variant():
    h, g, g_ids = _ragged()
    z, weights, _ = AttentionFusion(8, variant="individual_only")(h, g, g_ids)
    assert z is h and weights is None
    with pytest.raises(ValueError, match="variant"):
        AttentionFusion(8, variant="max")
    with pytest.raises(ValueError, match="g_ids"):
        AttentionFusion(8)(h.float(), g.float(), g_ids[:-1])
