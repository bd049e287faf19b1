"""ssl4eos12.sampling: the epoch's order and its partition over ranks, as pure functions.

Every rank the same number of examples whatever the shard sizes and world size; each example once per epoch
(beyond the remainder rule); an order that depends on (seed, epoch) only; and what is left of an epoch after
ranks consumed some of it, on any sequence of world sizes, covers the rest exactly once.
"""

from __future__ import annotations

import numpy as np
import pytest

from ssl4eos12.sampling import Segment, batch_count, epoch_order, partition, per_rank, rank_order, remaining

#: Uneven shards: single locations, one empty shard, sizes no world size divides.
COUNTS = [1, 7, 0, 3, 12, 1, 5, 2]


def pairs(order: np.ndarray) -> list[tuple[int, int]]:
    return [tuple(row) for row in order[:, :2].tolist()]


def test_epoch_order_holds_every_example_once_grouped_by_shard():
    order = epoch_order(COUNTS, seed=3, epoch=0)
    assert sorted(pairs(order)) == [(s, j) for s, n in enumerate(COUNTS) for j in range(n)]
    runs = [s for i, s in enumerate(order[:, 0]) if i == 0 or s != order[i - 1, 0]]
    assert len(runs) == len(set(runs)) == sum(1 for n in COUNTS if n)  # each shard one contiguous run
    assert pairs(epoch_order(COUNTS, 3, 0)) == pairs(order)  # a function of (seed, epoch)
    assert pairs(epoch_order(COUNTS, 3, 1)) != pairs(order) and pairs(epoch_order(COUNTS, 4, 0)) != pairs(order)
    unshuffled = epoch_order(COUNTS, 3, 0, shuffle=False)
    assert pairs(unshuffled) == [(s, j) for s, n in enumerate(COUNTS) for j in range(n)]


@pytest.mark.parametrize("world_size", range(1, 9))
@pytest.mark.parametrize("even", ["drop", "pad"])
def test_partition_gives_every_rank_the_same_count(world_size, even):
    order = epoch_order(COUNTS, seed=0, epoch=2)
    total = len(order)
    slices = [partition(order, rank, world_size, even)[0] for rank in range(world_size)]
    sizes = {len(s) for s in slices}
    assert sizes == {per_rank(total, world_size, even)}
    seen = [p for s in slices for p in pairs(s)]
    if even == "drop":
        assert len(seen) == len(set(seen)) and total - len(seen) == total % world_size < world_size
    else:
        assert set(seen) == set(pairs(order)) and len(seen) - total == -total % world_size
    for rank_slice in slices:  # contiguous in the epoch's order: few shards per rank
        shards = rank_slice[:, 0]
        assert len(set(shards.tolist())) <= len(COUNTS)
        changes = int(np.count_nonzero(shards[1:] != shards[:-1]))
        assert changes + 1 == len(set(shards.tolist())) or even == "pad"


@pytest.mark.parametrize("window", [1, 2, 4])
def test_rank_order_shuffles_within_windows_of_shards(window):
    order = epoch_order(COUNTS, seed=0, epoch=0)
    slice_, _ = partition(order, 0, 1)
    reordered, groups = rank_order(slice_, seed=0, epoch=0, rank=0, window=window)
    assert sorted(pairs(reordered)) == sorted(pairs(slice_))
    assert groups[0].start == 0 and groups[-1].stop == len(slice_)
    for span in groups:
        assert len(set(reordered[span, 0].tolist())) <= window
        assert sorted(pairs(reordered[span])) == sorted(pairs(slice_[span]))  # examples stay in their group
    again, _ = rank_order(slice_, seed=0, epoch=0, rank=0, window=window)
    assert pairs(again) == pairs(reordered)
    unshuffled, groups = rank_order(slice_, 0, 0, 0, window, shuffle=False)
    assert pairs(unshuffled) == pairs(slice_) and all(len(set(slice_[g, 0].tolist())) == 1 for g in groups)


@pytest.mark.parametrize("sizes", [(2, 3), (3, 2), (4, 1, 3), (1, 5), (8, 2)])
@pytest.mark.parametrize("even", ["drop", "pad"])
def test_the_rest_of_an_epoch_on_other_world_sizes_reads_each_example_once(sizes, even):
    """Ranks consume k batches on one world size, then the rest runs on another (and another): no example of
    the epoch is read twice, and none is lost beyond the last segment's remainder."""
    batch_size, window, seed, epoch = 2, 2, 5, 1
    order = np.c_[epoch_order(COUNTS, seed, epoch), np.arange(sum(COUNTS))]
    segments: list[Segment] = []
    read: list[tuple[int, int]] = []
    for index, world_size in enumerate(sizes):
        left = remaining(order, segments, seed, epoch, window, True, even)
        rank_orders = [rank_order(partition(left, r, world_size, even)[0], seed, epoch, r, window, True, index)[0]
                       for r in range(world_size)]
        last = index == len(sizes) - 1
        steps = batch_count(len(rank_orders[0]), batch_size, False) if last else 1 + index % 2
        for rank_order_ in rank_orders:
            read += pairs(rank_order_[:steps * batch_size])
        segments.append(Segment(world_size, batch_size, steps))
    everything = set(pairs(order))
    if even == "drop":
        assert len(read) == len(set(read)), "an example read twice"
        assert len(everything - set(read)) < sizes[-1]  # at most the last segment's remainder left out
    else:
        assert set(read) == everything
        # repeats are only the padding of each segment (fewer than its world size)
        assert len(read) - len(set(read)) < sum(sizes)


def test_remaining_after_nothing_is_everything():
    order = epoch_order(COUNTS, 0, 0)
    assert pairs(remaining(order, [], 0, 0, 4, True, "drop")) == pairs(order)
    assert pairs(remaining(order, [Segment(3, 2, 0)], 0, 0, 4, True, "drop")) == pairs(order)


def test_even_names_its_choices():
    with pytest.raises(ValueError, match="even='half'"):
        per_rank(10, 3, "half")
