"""ssl4eos12.Loader on many ranks: the same number of batches on every rank whatever the shards, filters and
world size; a JSON state that resumes batch for batch; the rest of an epoch on another world size, each
example once; one clear line where a rank would get nothing or the data changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference import assert_example_equal, expected_examples

import ssl4eos12
from ssl4eos12.index import build_index
from ssl4eos12.synth import synthesize

#: Locations per file: single locations, a short last file, sizes no world size divides (22 in all).
SIZES = [1, 4, 2, 5, 3, 1, 6]
MODALITIES = ("S2L2A", "S1GRD")


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """Seven files of SIZES locations (S2L2A and S1GRD, 8 px), indexed."""
    root = tmp_path_factory.mktemp("uneven")
    names = []
    for i, size in enumerate(SIZES):
        part = synthesize(tmp_path_factory.mktemp(f"part{i}"), splits=("train",), files=1, samples=size, size=8,
                          modalities=MODALITIES, seed=i + 1)
        name = f"ssl4eos12_train_seasonal_data_{i + 1:06d}.zarr.zip"
        for modality in MODALITIES:
            (root / "train" / modality).mkdir(parents=True, exist_ok=True)
            shutil.move(part / "train" / modality / "ssl4eos12_train_seasonal_data_000001.zarr.zip",
                        root / "train" / modality / name)
        names.append(name)
    (root / "splits").mkdir()
    (root / "splits" / "ssl4eos12_train.txt").write_text("".join(f"{n}\n" for n in names))
    build_index(root, workers=1)
    return root


def loader(root, rank=0, world_size=1, **kwargs) -> ssl4eos12.Loader:
    kwargs = {"batch_size": 3, "num_threads": 2, "numpy": True, "seed": 11, **kwargs}
    return ssl4eos12.Loader("all", data_dir=str(root), modalities=list(MODALITIES), rank=rank,
                            world_size=world_size, **kwargs)


def ids(batches) -> list[tuple]:
    """(file, sample, time index) of every example of the batches, in order."""
    out = []
    for batch in batches:
        times = batch.get("time_index", [None] * len(batch["sample"]))
        out += [(f, s, None if t is None else int(t)) for f, s, t in zip(batch["file"], batch["sample"], times)]
    return out


def every_example(root, **kwargs) -> set[tuple]:
    return set(ids(loader(root, shuffle=False, even="pad", **kwargs)))


# --- equal batches on every rank ---------------------------------------------------------------------------------

@pytest.mark.parametrize("keywords", [
    {},
    {"single_timestamp": True},
    {"samples": ["0000000", "0000001", "0000003"]},  # a filter: uneven counts per file (ids repeat across files)
    {"single_timestamp": True, "time_range": ("2020-01-01", "2020-08-01")},
])
@pytest.mark.parametrize("even", ["drop", "pad"])
def test_every_rank_yields_len_batches(uneven, keywords, even):
    everything = every_example(uneven, **keywords)
    for world_size in (1, 2, 3, 5, 8):  # 8: more ranks than shards
        for batch_size in (1, 3):
            if even == "drop" and len(everything) < world_size:
                continue  # a rank would get nothing: tested below
            loaders = [loader(uneven, rank, world_size, batch_size=batch_size, even=even, **keywords)
                       for rank in range(world_size)]
            lengths = {len(x) for x in loaders}
            assert len(lengths) == 1, f"world {world_size}, batch {batch_size}: len() differs: {lengths}"
            batches = [list(x) for x in loaders]
            assert {len(b) for b in batches} == lengths, f"world {world_size}, batch {batch_size}"
            seen = [e for b in batches for e in ids(b)]
            where = f"{keywords} world {world_size} batch {batch_size} even={even}"
            if even == "drop":
                assert len(seen) == len(set(seen)), f"{where}: an example twice"
                assert set(seen) <= everything and len(everything) - len(seen) < world_size, where
            else:
                assert set(seen) == everything and len(seen) - len(everything) < world_size, where


def test_values_on_every_rank_are_what_xarray_reads(uneven):
    expected = {(e["file"], e["sample"]): e for e in expected_examples(uneven, "train", list(MODALITIES))}
    for rank in range(3):
        for batch in loader(uneven, rank, 3, even="pad"):
            for i, (file, sample) in enumerate(zip(batch["file"], batch["sample"])):
                actual = {name: value[i] for name, value in batch.items()}
                assert_example_equal(actual, expected[file, sample], f"rank {rank} {file}:{sample}")


def test_drop_leaves_out_other_examples_each_epoch(uneven):
    left_out = []
    for epoch in range(4):
        seen = set()
        for rank in range(4):
            x = loader(uneven, rank, 4)
            x.set_epoch(epoch)
            seen |= set(ids(x))
        left_out.append(every_example(uneven) - seen)
    assert all(len(s) == 22 % 4 for s in left_out) and len(set(map(frozenset, left_out))) > 1


def test_a_rank_that_would_get_nothing_says_so(uneven):
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="world_size=8 ranks: rank 7 would get none"):
        iter(loader(uneven, 7, 8, samples=["0000005"]))  # 2 examples (ids repeat across files) for 8 ranks
    padded = loader(uneven, 7, 8, samples=["0000005"], even="pad")
    assert len(list(padded)) == len(padded) == 1


# --- resuming ----------------------------------------------------------------------------------------------------

def assert_same_batches(actual: list[dict], expected: list[dict], where: str) -> None:
    assert len(actual) == len(expected), f"{where}: {len(actual)} batches, expected {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert list(a) == list(e), where
        for name in e:
            if isinstance(e[name], np.ndarray):
                assert a[name].dtype == e[name].dtype and np.array_equal(a[name], e[name], equal_nan=True), \
                    f"{where}: batch {k} {name}"
            else:
                assert a[name] == e[name], f"{where}: batch {k} {name}"


@pytest.mark.parametrize("keywords", [{}, {"single_timestamp": True, "crop": 4}, {"shuffle": False}])
@pytest.mark.parametrize("stop", [0, 1, 3])
def test_resume_gives_the_rest_of_the_uninterrupted_run(uneven, keywords, stop):
    uninterrupted = loader(uneven, **keywords)
    epoch0, epoch1 = list(uninterrupted), list(uninterrupted)
    first = loader(uneven, **keywords)
    batches = iter(first)
    for _ in range(stop):
        next(batches)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds
    batches.close()
    done = state["segments"][-1]["batches"] if state["segments"] else 0
    assert len(json.dumps(state)) < 1000 and state["epoch"] == 0 and done == stop
    resumed = loader(uneven, **keywords)
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed), epoch0[stop:], f"rest of epoch 0 after {stop}")
    assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["segments"] == []
    assert_same_batches(list(resumed), epoch1, "epoch 1")


def test_resume_on_a_state_saved_at_an_epoch_end(uneven):
    first = loader(uneven)
    list(first)
    resumed = loader(uneven)
    resumed.load_state_dict(first.state_dict())
    fresh = loader(uneven)
    fresh.set_epoch(1)
    assert ids(resumed) == ids(fresh)


@pytest.mark.parametrize("before, after", [(2, 3), (3, 2), (1, 4), (4, 1)])
def test_resume_on_another_world_size_reads_the_rest_once(uneven, before, after):
    everything = every_example(uneven)
    steps = 1  # fewer than any rank's len(): the epoch is left mid-way (on 4 ranks each has 2 batches of 3)
    seen, states = [], []
    for rank in range(before):  # every rank stops after `steps` batches (DDP steps in lockstep)
        x = loader(uneven, rank, before)
        batches = iter(x)
        seen += ids(next(batches) for _ in range(steps))
        states.append(x.state_dict())
        batches.close()
    assert all(s == states[0] for s in states)  # one state serves every rank
    rest = [loader(uneven, rank, after) for rank in range(after)]
    for x in rest:
        x.load_state_dict(json.loads(json.dumps(states[0])))
    lengths = [len(list(x)) for x in [loader(uneven, rank, after) for rank in range(after)]]
    rest_batches = []
    for x in rest:
        rest_batches.append(list(x))
    assert len({len(b) for b in rest_batches}) == 1  # the rest of the epoch: equal on every new rank
    seen += [e for b in rest_batches for e in ids(b)]
    assert len(seen) == len(set(seen)), "an example read twice"
    assert len(everything - set(seen)) < before + after  # each segment's remainder at most
    for x in rest:  # the next epoch is a fresh epoch on the new world size
        assert x.state_dict()["epoch"] == 1
    assert [len(list(x)) for x in rest] == lengths


def test_a_state_from_other_data_or_arguments_is_refused(uneven, tmp_path):
    state = loader(uneven).state_dict()
    with pytest.raises(ValueError, match="seed=11.*seed=12"):
        loader(uneven, seed=12).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        loader(uneven).load_state_dict({"epoch": 3})
    copy = Path(shutil.copytree(uneven, tmp_path / "copy"))
    state = loader(copy).state_dict()
    first = copy / "train" / "S2L2A" / "ssl4eos12_train_seasonal_data_000001.zarr.zip"
    first.write_bytes(first.read_bytes())  # replaced (a new modification time)
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="changed since the state was saved"):
        loader(copy).load_state_dict(state)
