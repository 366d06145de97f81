"""BatchNorm folding (model.fold): the folded lite0 encoder gives the unfolded outputs to float
tolerance with no BatchNorm2d left, the ViT is untouched, and a fold that would change the
outputs is refused with a warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from indivaid_core.model import ReIDEncoder, build_clip
from indivaid_core.model.fold import fold_batchnorm


def _images(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_lite0_fold_matches_and_removes_every_batchnorm():
    torch.manual_seed(0)
    enc = ReIDEncoder(build_clip("lite0", "lite0-imagenet", (64, 64)), 5)
    # Non-trivial statistics in the necks and trunk, as a trained model has.
    enc.train()
    with torch.no_grad():
        for _ in range(3):
            enc(_images(8, (64, 64), 1))
    enc.eval()
    folded = fold_batchnorm(enc, (_images(2, (64, 64), 2),))
    assert folded is not enc
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())  # the original is kept
    assert fold_batchnorm(folded, (_images(2, (64, 64), 2),)) is folded  # folding once is enough
    x = _images(4, (64, 64), 3)  # not the probe
    with torch.no_grad():
        ref, new = enc(x), folded(x)
    for key in ("global", "proj"):
        scale = ref[key].abs().max()
        assert torch.allclose(new[key], ref[key], atol=1e-5 * scale, rtol=0), key
        assert not torch.equal(new[key], ref[key])  # folding did change the arithmetic


def test_vit_without_batchnorm2d_is_returned_as_is():
    enc = ReIDEncoder(build_clip("tiny-vit", None, (32, 32)), 3).eval()
    assert fold_batchnorm(enc, (_images(2, (32, 32), 0),)) is enc


class _TwoReaders(nn.Module):
    """A conv whose output feeds its BN and also a skip: folding it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_that_changes_outputs_is_refused():
    net = _TwoReaders().eval()
    with pytest.warns(UserWarning, match="unfolded model"):
        assert fold_batchnorm(net, (_images(2, (8, 8), 0),)) is net


class _TupleOut(nn.Module):
    """Returns a tuple and has a BN without running statistics (folding cannot use it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.bn(self.conv(x))
        return y, self.bn2(self.conv2(y))


def test_a_bn_without_statistics_is_left_and_tuple_outputs_are_checked():
    net = _TupleOut().eval()
    folded = fold_batchnorm(net, (_images(2, (8, 8), 0),))
    assert folded is not net
    assert not isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.BatchNorm2d)


def test_a_model_the_probe_cannot_run_stays_unfolded_with_a_warning():
    net = _TwoReaders().eval()
    with pytest.warns(UserWarning, match="folding failed"):
        assert fold_batchnorm(net, (torch.zeros(2, 5, 8, 8),)) is net  # 5 channels, conv has 3
