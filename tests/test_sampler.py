"""P x K sampler: identity balance, replacement, determinism, resume and DDP slicing."""

from collections import Counter

import numpy as np
import pytest

from indivaid_core.train.sampler import PKSampler

LABELS = [0] * 6 + [1] * 2 + [2] * 5 + [3] * 1 + [4] * 9


def test_batches_have_p_identities_times_k_images_with_replacement_when_short():
    s = PKSampler(LABELS, p=3, k=4, seed=1)
    for batch in s:
        rows = [r for r, _ in batch]
        per_id = Counter(LABELS[r] for r in rows)
        assert len(per_id) == 3 and set(per_id.values()) == {4}
    # identity 3 has one image: when drawn, the same row repeats K times
    assert any(Counter(r for r, _ in b)[13] == 4 for e in range(20) for b in s.global_batches(e))


def test_same_seed_same_batches_and_different_epochs_differ():
    a = PKSampler(LABELS, p=2, k=2, seed=7).global_batches(3)
    b = PKSampler(LABELS, p=2, k=2, seed=7).global_batches(3)
    assert a == b
    assert a != PKSampler(LABELS, p=2, k=2, seed=7).global_batches(4)


def test_resume_skips_done_batches():
    s = PKSampler(LABELS, p=2, k=2, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=3)
    assert list(s) == full[3:]


def test_ranks_slice_the_same_global_batch_in_order():
    full = list(PKSampler(LABELS, p=2, k=4, seed=3))
    r0 = list(PKSampler(LABELS, p=2, k=4, seed=3, rank=0, world_size=2))
    r1 = list(PKSampler(LABELS, p=2, k=4, seed=3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == full


def test_augmentation_seeds_are_unique_per_slot():
    seeds = [sd for b in PKSampler(LABELS, p=3, k=4, seed=0) for _, sd in b]
    assert len(set(seeds)) == len(seeds)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 identities"):
        PKSampler([0, 0, 0], p=2, k=2)
    with pytest.raises(ValueError, match="not divisible"):
        PKSampler(LABELS, p=3, k=1, world_size=2)
    assert len(PKSampler(np.array(LABELS), p=2, k=2, iters_per_epoch=5)) == 5


def test_min_iters_per_epoch_lengthens_only_short_epochs():
    one_pass = len(PKSampler(LABELS, p=2, k=2))
    assert len(PKSampler(LABELS, p=2, k=2, min_iters_per_epoch=one_pass + 3)) == one_pass + 3
    assert len(PKSampler(LABELS, p=2, k=2, min_iters_per_epoch=1)) == one_pass
    assert len(PKSampler(LABELS, p=2, k=2, iters_per_epoch=2, min_iters_per_epoch=9)) == 2
    batches = PKSampler(LABELS, p=2, k=2, min_iters_per_epoch=one_pass + 3).global_batches(0)
    assert len(batches) == one_pass + 3 and len({tuple(b) for b in batches}) == len(batches)
