"""Losses: hand-computed values, float64 gradchecks, degenerate batches, and the direction of
the contrastive loss (it must pull matching image/text pairs together)."""

import math

import pytest
import torch
import torch.nn.functional as F

from indivaid_core.losses import i2t_ce_loss, id_loss, supcon_loss, triplet_loss


def test_supcon_hand_computed():
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms differ: the loss normalises
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    loss = supcon_loss(a, b, torch.tensor([0, 1]), torch.tensor([0, 1, 0]), logit_scale=1.0)
    e = math.e
    anchor0 = 1 - math.log(2 * e + 1)  # positives: b0, b2 (both cos 1) out of logits [1, 0, 1]
    anchor1 = 1 - math.log(e + 2)  # positive: b1 out of logits [0, 1, 0]
    assert loss.item() == pytest.approx(-(anchor0 + anchor1) / 2, rel=1e-6)


def test_supcon_degenerate_batches():
    feats = torch.randn(4, 3, requires_grad=True)
    same = torch.zeros(4, dtype=torch.long)
    # every candidate is a positive: the loss is finite and >= log(4), equal when all agree
    assert supcon_loss(feats, feats, same, same, 10.0).item() >= math.log(4)
    tied = feats.detach()[:1].expand(4, 3)
    assert supcon_loss(tied, tied, same, same, 10.0).item() == pytest.approx(math.log(4))
    loss = supcon_loss(feats, feats[:2], torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1]), 5.0)
    assert torch.isfinite(loss)  # anchors 2, 3 have no positive: left out
    none = supcon_loss(feats, feats, torch.arange(4), torch.arange(4) + 10, 5.0)
    none.backward()
    assert none.item() == 0 and torch.equal(feats.grad, torch.zeros_like(feats))


def test_supcon_pulls_matching_pairs_together():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    img = torch.randn(6, 8, requires_grad=True)
    txt = torch.randn(6, 8, requires_grad=True)

    def pos_distance():
        a, b = F.normalize(img, dim=1), F.normalize(txt, dim=1)
        same = labels[:, None] == labels[None, :]
        return torch.cdist(a, b)[same].mean()

    before = pos_distance().item()

    def both_ways():
        return supcon_loss(img, txt, labels, labels, 10.0) + supcon_loss(
            txt, img, labels, labels, 10.0
        )

    loss = both_ways()
    loss.backward()
    with torch.no_grad():
        img -= 0.1 * img.grad
        txt -= 0.1 * txt.grad
    assert pos_distance().item() < before
    assert both_ways().item() < loss.item()


def test_id_loss_hand_computed_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    eps = 0.1
    expected = -(1 - eps) * logp[0] - eps * logp.mean()
    assert id_loss(logits, torch.tensor([0])).item() == pytest.approx(expected.item(), rel=1e-6)
    two = id_loss([logits, logits], torch.tensor([0]))
    assert two.item() == pytest.approx(2 * expected.item(), rel=1e-6)


def test_triplet_hand_computed():
    feats = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchors: (d_ap, d_an) = (1, 3), (1, 2), (4, 2), (4, 6); only anchor 2 violates: 4-2+0.3
    assert triplet_loss(feats, labels).item() == pytest.approx(2.3 / 4)
    assert triplet_loss(feats, labels, margin=1.5).item() == pytest.approx((0.5 + 3.5) / 4)


def test_triplet_degenerate_batches():
    feats = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)
    # id 0 appears once: anchor 0 is left out; anchors 1, 2: d_ap 2, d_an 1 and 3
    assert triplet_loss(feats, torch.tensor([0, 1, 1])).item() == pytest.approx((1.3 + 0) / 2)
    same = triplet_loss(feats, torch.zeros(3, dtype=torch.long))
    same.backward()
    assert same.item() == 0 and torch.isfinite(feats.grad).all()
    dup = torch.zeros(3, 2, requires_grad=True)  # coincident points: no NaN gradient
    triplet_loss(dup, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(dup.grad).all()


def test_i2t_ce_hand_computed():
    img = torch.tensor([[3.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expected = -math.log(math.exp(5) / (math.exp(5) + 1))  # logits 5*cos = [5, 0]
    assert i2t_ce_loss(img, txt, torch.tensor([0]), 5.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="label 2"):
        i2t_ce_loss(img, txt, torch.tensor([2]), 5.0)


def test_gradcheck_float64():
    torch.manual_seed(0)
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    la, lb = torch.tensor([0, 1, 1, 2, 3]), torch.tensor([0, 0, 1, 2, 2, 4])
    assert torch.autograd.gradcheck(lambda x, y: supcon_loss(x, y, la, lb, 3.0), (a, b))
    assert torch.autograd.gradcheck(lambda x: triplet_loss(x, la, margin=5.0), (a,))
    assert torch.autograd.gradcheck(lambda x, y: i2t_ce_loss(x, y, la, 3.0, 0.1), (a, b))
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: id_loss(x, la), (logits,))
