"""P x K identity sampling that is deterministic, resumable and DDP-aware.

torch has no identity-balanced batch sampler, so this one is written here. Each epoch's
batches are a pure function of (seed, epoch): a resumed run replays the very same batches,
and every rank builds the same global batch and takes its own contiguous slice, so that
all-gathering the slices restores the single-process batch in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np


def steps_per_epoch(
    n_images: int, global_batch: int, iters_per_epoch: int = 0, min_iters_per_epoch: int = 0
) -> int:
    """A `pk` epoch's length: `iters_per_epoch`, else one pass over the images, at least
    `min_iters_per_epoch` (the report reads it too, to say what each training side got)."""
    if iters_per_epoch:
        return iters_per_epoch
    return max(1, -(-n_images // global_batch), min_iters_per_epoch)


def sample_seed(seed: int, epoch: int, batch: int, slot: int) -> int:
    """A per-sample augmentation seed that does not depend on the rank or worker layout."""
    return int(np.random.SeedSequence([seed, epoch, batch, slot]).generate_state(1)[0])


@dataclass
class PKSampler:
    """Batches of `p` identities x `k` images; with replacement where an identity has < k.

    mode `pk`: each batch draws p identities uniformly; the epoch has one pass worth of
    batches (or `iters_per_epoch`, at least `min_iters_per_epoch`).
    mode `clipreid`: CLIP-ReID's RandomIdentitySampler. Each identity's images are shuffled
    (padded to k with replacement) and cut into chunks of k, the trailing partial chunk
    dropped; batches take one chunk from each of p identities drawn among those with chunks
    left, until fewer than p remain. Each image is seen about once per epoch and identities
    appear in proportion to their images; the epoch length follows from the draw.

    The settings after `labels` are keyword-only: eight numbers in a row are easy to swap.
    """

    labels: Sequence[int]
    _: KW_ONLY
    p: int
    k: int
    seed: int = 0
    iters_per_epoch: int = 0
    min_iters_per_epoch: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    start_batch: int = 0
    mode: str = "pk"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        self._ids = np.unique(labels)
        self._rows = {int(y): np.flatnonzero(labels == y) for y in self._ids}
        if len(self._ids) < 2:
            raise ValueError(f"P x K sampling needs at least 2 identities, got {len(self._ids)}")
        if (self.p * self.k) % self.world_size:
            raise ValueError(
                f"batch p*k={self.p * self.k} is not divisible by world_size={self.world_size}"
            )
        self.p_eff = min(self.p, len(self._ids))
        if self.mode not in ("pk", "clipreid"):
            raise ValueError(f"sampler mode must be 'pk' or 'clipreid', got {self.mode!r}")
        if self.mode == "clipreid" and (self.iters_per_epoch or self.min_iters_per_epoch):
            raise ValueError("the clipreid sampler sets its own epoch length (iters must be 0)")
        self._cache: dict[int, list[list[tuple[int, int]]]] = {}

    @property
    def global_batch(self) -> int:
        return self.p_eff * self.k

    def __len__(self) -> int:
        if self.mode == "clipreid":
            return len(self.global_batches(self.epoch))
        return steps_per_epoch(
            len(self.labels), self.global_batch, self.iters_per_epoch, self.min_iters_per_epoch
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to replay and how many of its batches are already done."""
        self.epoch, self.start_batch = epoch, start_batch

    def global_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """All (row, augmentation seed) batches of an epoch, identical on every rank."""
        if self.mode == "clipreid":
            if epoch not in self._cache:
                self._cache = {epoch: self._clipreid_batches(epoch)}
            return self._cache[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for b in range(len(self)):
            ids = rng.choice(self._ids, size=self.p_eff, replace=False)
            rows: list[int] = []
            for y in ids:
                pool = self._rows[int(y)]
                rows.extend(rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist())
            out.append([(r, sample_seed(self.seed, epoch, b, s)) for s, r in enumerate(rows)])
        return out

    def _clipreid_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        chunks: dict[int, list[np.ndarray]] = {}
        for y in self._ids:
            pool = self._rows[int(y)]
            if len(pool) < self.k:
                pool = rng.choice(pool, size=self.k, replace=True)
            pool = rng.permutation(pool)
            usable = len(pool) - len(pool) % self.k
            chunks[int(y)] = [pool[i : i + self.k] for i in range(0, usable, self.k)]
        out: list[list[tuple[int, int]]] = []
        avail = sorted(chunks)
        while len(avail) >= self.p_eff:
            rows: list[int] = []
            for y in rng.choice(avail, size=self.p_eff, replace=False):
                rows.extend(chunks[int(y)].pop(0).tolist())
            avail = [y for y in avail if chunks[y]]
            b = len(out)
            out.append([(r, sample_seed(self.seed, epoch, b, s)) for s, r in enumerate(rows)])
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.global_batch // self.world_size
        lo = self.rank * per_rank
        for batch in self.global_batches(self.epoch)[self.start_batch :]:
            yield batch[lo : lo + per_rank]
