"""Exact resume: training randomness as a pure function of (seed, position) (framework-free).

A run killed at any point and resumed from its last checkpoint must end with the same weights,
bit for bit, as a run that was never interrupted. Saving the random generators' states at
checkpoint time is not enough: between the checkpoint and the next iteration an uninterrupted
run also evaluates, logs and starts data-loader iterators, and each of these draws from the
global generators, which a resumed run does not repeat. So both trainers instead *reseed*:

* :func:`seed_all` before every iteration, from ``derive_seed(seed, STEP, rank, iteration)``
  (Python ``random``, numpy, torch CPU and CUDA), so the model's randomness (drop-connect,
  dropout) and every augmentation drawn in the main process depend only on the seed and
  the iteration;
* (Detectron2) every image of every batch is augmented under :func:`isolated_rng` seeded from
  ``derive_seed(seed, ITEM, group, position)``, and :class:`BatchPlan` says which images form
  global batch ``j``, so a data loader can start at any iteration, with any number of workers.

Only the seed (and the iteration, which the frameworks already save) has to be in the
checkpoint. This module imports only torch and numpy.
"""

from __future__ import annotations

import contextlib
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["ITEM", "ORDER", "STEP", "BatchPlan", "derive_seed", "isolated_rng", "seed_all"]

#: Domains of :func:`derive_seed`: per-iteration seeds, per-image seeds, per-epoch orders.
STEP, ITEM, ORDER = 0, 1, 2


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 64-bit seed for ``(seed, *keys)`` (numpy's ``SeedSequence``).

    Args:
        seed: the run's seed (any int; taken modulo 2**64).
        keys: non-negative ints naming the use (a domain such as :data:`STEP`, a rank, an
            iteration, ...).

    Returns:
        An int in ``[0, 2**64)``; equal inputs give equal outputs on every platform.
    """
    entropy = [int(seed) % 2**64, *(int(k) for k in keys)]
    lo, hi = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(hi) << 32) | int(lo)


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block with Python ``random``, numpy and torch's CPU generator seeded from
    ``seed``, and give the caller its own generator states back afterwards (CUDA untouched)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


class BatchPlan:
    """Which dataset items form global batch ``j``: a pure function of ``(seed, j)``.

    The items are split into at most two groups (Detectron2's aspect-ratio grouping: landscape
    and portrait images are never batched together; one group when grouping is off). Each group
    is an endless stream of shuffled passes over its items (pass ``e`` of group ``g`` is the
    permutation seeded by ``derive_seed(seed, ORDER, g, e)``); batch ``j`` takes the next
    ``batch_size`` items of the stream of the group it belongs to. Batches are given to the
    groups in proportion to their sizes, by a fixed interleaving: with ``n0`` and ``n1`` items,
    batch ``j`` belongs to group 0 exactly when ``floor((j+1)*n0/n) > floor(j*n0/n)``, so the
    number of earlier batches of each group is known without replaying the stream.

    Args:
        groups: one or two lists of dataset indices (a group may be empty, not all of them).
        batch_size: items per batch (per process).
        seed: the run's seed.
        shuffle: shuffle each pass (else passes are in index order).
    """

    def __init__(
        self, groups: Sequence[Sequence[int]], batch_size: int, seed: int, shuffle: bool = True
    ) -> None:
        groups = [list(map(int, g)) for g in groups]
        if not 1 <= len(groups) <= 2:
            raise ValueError(f"groups: expected one or two groups, got {len(groups)}")
        if not any(groups):
            raise ValueError("groups: no items to train on")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size: expected an int > 0, got {batch_size!r}")
        self.groups = groups
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self._orders: OrderedDict[tuple[int, int], list[int]] = OrderedDict()

    @property
    def num_items(self) -> int:
        """Total number of items over the groups."""
        return sum(len(g) for g in self.groups)

    def _group_of(self, j: int) -> tuple[int, int]:
        """(group of batch ``j``, number of earlier batches of that group)."""
        n = self.num_items
        n0 = len(self.groups[0])
        before0 = j * n0 // n
        if (j + 1) * n0 // n > before0:
            return 0, before0
        return 1, j - before0

    def _order(self, group: int, epoch: int) -> list[int]:
        key = (group, epoch)
        if key not in self._orders:
            size = len(self.groups[group])
            if self.shuffle:
                gen = torch.Generator().manual_seed(derive_seed(self.seed, ORDER, group, epoch))
                self._orders[key] = torch.randperm(size, generator=gen).tolist()
            else:
                self._orders[key] = list(range(size))
            while len(self._orders) > 4:  # the two groups' current and next passes
                self._orders.popitem(last=False)
        return self._orders[key]

    def batch(self, j: int) -> list[tuple[int, int]]:
        """Global batch ``j`` as ``(item seed, dataset index)`` pairs.

        The item seed (``derive_seed(seed, ITEM, group, stream position)``) is unique to this
        occurrence of the item: the same image in a later pass gets a different augmentation.
        """
        if j < 0:
            raise ValueError(f"j: expected a batch number >= 0, got {j}")
        group, earlier = self._group_of(j)
        members = self.groups[group]
        out = []
        for pos in range(earlier * self.batch_size, (earlier + 1) * self.batch_size):
            epoch, offset = divmod(pos, len(members))
            index = members[self._order(group, epoch)[offset]]
            out.append((derive_seed(self.seed, ITEM, group, pos), index))
        return out
