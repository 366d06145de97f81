"""The released training recipe that the `paper` profile selects: CLIP-ReID's identity sampler,
stage-1 updates matched to the released batch-1 training, and the raw-logit losses."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from indivaid_core import config
from indivaid_core.losses import i2t_ce_loss
from indivaid_core.train.sampler import PKSampler
from indivaid_core.train.stage1 import update_matched_epochs


def _labels() -> list[int]:
    sizes = {0: 12, 1: 4, 2: 3, 3: 9, 4: 1, 5: 6}  # one identity has fewer than k images
    return [y for y, n in sizes.items() for _ in range(n)]


def test_clipreid_sampler_visits_each_image_about_once_per_epoch():
    labels = _labels()
    s = PKSampler(labels, p=2, k=4, seed=3, mode="clipreid")
    batches = s.global_batches(0)
    assert len(s) == len(batches) > 0
    rows = [r for b in batches for r, _ in b]
    for b in batches:
        ids = [labels[r] for r, _ in b]
        assert len(b) == 8 and len(set(ids)) == 2  # p identities x k images
        assert all(c == 4 for c in Counter(ids).values())
    # no row of an identity with >= k images is drawn twice within an epoch
    big = [r for r in rows if Counter(labels)[labels[r]] >= 4]
    assert len(big) == len(set(big))
    # identities appear in proportion to their images: identity 0 (12 images) gives 3 chunks
    per_id = Counter(labels[r] for r in rows)
    assert per_id[0] >= per_id[1] and per_id[0] >= per_id[5]
    assert len(rows) <= sum(max(n, 4) // 4 * 4 for n in Counter(labels).values())


def test_clipreid_sampler_is_a_pure_function_of_seed_and_epoch():
    a = PKSampler(_labels(), p=2, k=4, seed=1, mode="clipreid")
    b = PKSampler(_labels(), p=2, k=4, seed=1, mode="clipreid")
    assert a.global_batches(2) == b.global_batches(2)
    assert a.global_batches(2) != a.global_batches(3)


def test_uniform_sampler_is_unchanged_by_the_new_mode():
    a = PKSampler(_labels(), p=2, k=4, seed=1)
    assert a.mode == "pk" and len(a) == int(np.ceil(len(_labels()) / 8))


def test_stage1_epochs_match_the_released_number_of_updates():
    s1 = config.Stage1Cfg(released_batch_size=1)
    # ATRW-like: 3,730 images, 10 released epochs at batch 1 = 37,300 updates
    epochs, warmup = update_matched_epochs(10, 5, n=3730, batch=64, s1=s1)
    assert epochs * (3730 // 64) >= 37300 > (epochs - 1) * (3730 // 64)
    assert warmup == int(np.ceil(5 * 3730 / (3730 // 64)))
    assert update_matched_epochs(10, 5, n=3730, batch=64, s1=config.Stage1Cfg()) == (10, 5)


def test_paper_profile_selects_the_released_recipe():
    cfg = config.load("params.yaml", {"profile": "paper"}, check_cells=False)
    assert cfg.stage2.sampler == "clipreid" and cfg.stage2.min_iters_per_epoch == 0
    assert cfg.stage2.i2t_logits == "raw" and cfg.stage2.i2t_label_smoothing == 0.1
    assert cfg.stage1.logits == "raw" and cfg.stage1.released_batch_size == 1
    assert cfg.for_run("Stoat").stage2.epochs == 50


def test_raw_i2t_logits_differ_from_the_cosine_default():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g) * 5, torch.randn(3, 8, generator=g) * 5
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    raw = i2t_ce_loss(img, txt, y, 1.0, 0.1, normalize=False)
    by_hand = torch.nn.functional.cross_entropy(img @ txt.T, y, label_smoothing=0.1)
    assert torch.allclose(raw, by_hand)
    assert not torch.allclose(raw, i2t_ce_loss(img, txt, y, 100.0, 0.1))


@pytest.mark.parametrize("iters", [{"iters_per_epoch": 5}, {"min_iters_per_epoch": 8}])
def test_clipreid_sampler_refuses_a_fixed_epoch_length(iters):
    with pytest.raises(ValueError, match="own epoch length"):
        PKSampler(_labels(), p=2, k=4, mode="clipreid", **iters)
