"""Which example each rank reads, in which order, in every epoch: pure functions of the plan, no I/O.

An epoch is computed before anything is decoded, from the number of examples each shard holds (``counts``,
known from the index, the authors' metadata or a cheap probe), the ``seed`` and the epoch number alone:

1. :func:`epoch_order`: the shards in a seeded order, each shard's examples in its own order: one sequence of
   ``(shard, example)`` pairs for the whole split;
2. :func:`partition`: every rank a contiguous slice of that sequence, all slices the same length (the remainder
   dropped, or padded by repeating examples from the start), so a rank's reads stay within few shards and every
   rank yields the same number of batches;
3. :func:`rank_order`: within a rank's slice, examples shuffled across ``window`` consecutive shards at a time
   (the shuffle window: only those shards need be decoded at once);
4. batches are consecutive runs of ``batch_size`` in that order.

A position in an epoch is then a few integers (:class:`Segment`): resuming recomputes the same order and skips
what was done. A stretch of an epoch run on another number of ranks is another segment: :func:`remaining` takes
what earlier segments consumed out of the sequence, and the next segment partitions the rest, so no example is
lost or read twice whatever the world sizes (beyond the remainder rule of each segment).

The models are MosaicML Streaming's ``get_partitions`` (contiguous, equal spans per rank; resumption by sample
position) and FFCV's ``sample_order`` (an order computed from the seed and the epoch alone).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Values of the ``even`` keyword: what happens to the examples that do not divide over the ranks.
EVEN_CHOICES = ("drop", "pad")


@dataclass(frozen=True)
class Segment:
    """A stretch of one epoch run on ``world_size`` ranks, each of which finished ``batches`` batches of
    ``batch_size`` in it."""

    world_size: int
    batch_size: int
    batches: int = 0


def epoch_order(counts: Sequence[int], seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The split's examples as an ``(N, 2)`` array of ``(shard, example)``: shards in the order of ``(seed, epoch)``
    (or as given without ``shuffle``), each shard's examples ``0..count-1`` in its own order."""
    counts = np.asarray(counts, dtype=np.int64)
    shards = np.random.default_rng((seed, epoch)).permutation(len(counts)) if shuffle else np.arange(len(counts))
    sizes = counts[shards]
    shard_column = np.repeat(shards, sizes)
    starts = np.cumsum(sizes) - sizes  # where each shard's run begins
    example_column = np.arange(len(shard_column)) - np.repeat(starts, sizes)
    return np.stack([shard_column, example_column], axis=1)


def per_rank(total: int, world_size: int, even: str) -> int:
    """Examples each rank gets out of ``total``: the same on every rank."""
    if even not in EVEN_CHOICES:
        raise ValueError(f"even={even!r}: choose from {EVEN_CHOICES}")
    return total // world_size if even == "drop" else -(-total // world_size)


def partition(order: np.ndarray, rank: int, world_size: int, even: str = "drop") -> tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s contiguous slice of ``order`` (and the positions in ``order`` it came from), every rank's
    slice of one length: ``even="drop"`` leaves out the last ``len(order) % world_size`` examples, ``"pad"``
    repeats examples from the start of ``order`` to fill the last slices."""
    n = per_rank(len(order), world_size, even)
    positions = np.arange(rank * n, (rank + 1) * n)
    if len(order):
        positions %= len(order)  # the padding: the sequence again from its start
    return order[positions], positions


def rank_order(slice_: np.ndarray, seed: int, epoch: int, rank: int, window: int, shuffle: bool = True,
               segment: int = 0) -> tuple[np.ndarray, list[slice]]:
    """A rank's slice in reading order, and its groups: runs of ``window`` consecutive shards whose examples are
    shuffled together (seeded by :func:`group_seed`); without ``shuffle``, one shard per group, in order."""
    groups = _groups(slice_[:, 0], window if shuffle else 1)
    if not shuffle:
        return slice_, groups
    out = slice_.copy()
    for g, span in enumerate(groups):
        rng = np.random.default_rng(group_seed(seed, epoch, segment, rank, g))
        out[span] = slice_[span][rng.permutation(span.stop - span.start)]
    return out, groups


def group_seed(seed: int, epoch: int, segment: int, rank: int, group: int) -> tuple[int, ...]:
    """The seed of one group's draws (its order here, its crops in the loader): a function of its place alone, so
    a resumed epoch draws the same."""
    return seed, epoch, segment, rank, group, 0x55


def _groups(shards: np.ndarray, window: int) -> list[slice]:
    """Spans of ``shards`` covering ``window`` runs of one shard each (a run: consecutive equal values)."""
    if not len(shards):
        return []
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])  # where each run begins
    cuts = [*starts[::window].tolist(), len(shards)]
    return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def batch_count(examples: int, batch_size: int, drop_last: bool) -> int:
    return examples // batch_size if drop_last else -(-examples // batch_size)


def remaining(order: np.ndarray, segments: Sequence[Segment], seed: int, epoch: int, window: int, shuffle: bool,
              even: str) -> np.ndarray:
    """What is left of an epoch's ``order`` after ``segments`` (each but the last finished on its world size):
    the examples every rank of each segment consumed are taken out, the rest keep their order. Padding repeats
    consume nothing; what a segment dropped stays for the next."""
    left = order
    for index, segment in enumerate(segments):
        consumed = np.zeros(len(left), dtype=bool)
        for rank in range(segment.world_size):
            slice_, positions = partition(left, rank, segment.world_size, even)
            reordered, _ = rank_order(np.c_[slice_, positions], seed, epoch, rank, window, shuffle, index)
            done = reordered[:segment.batches * segment.batch_size, -1]
            consumed[done] = True
        left = left[~consumed]
    return left


__all__ = ["EVEN_CHOICES", "Segment", "batch_count", "epoch_order", "group_seed", "partition", "per_rank",
           "rank_order", "remaining"]
