"""ssl4eos12.Loader: every example once per epoch across ranks and threads, in a seeded order, with the values
xarray reads from the files (cropped and standardized as numpy computes it), in bounded memory, and no thread
left behind by a ``break``, an exception or a dropped iterator."""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_identical, counting_reuse
from reference import assert_example_equal, expected_examples

import ssl4eos12
from ssl4eos12.synth import synthesize


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """Seven S2L2A + S1GRD files of 3 locations (more files than ranks and threads), 8 px."""
    return synthesize(tmp_path_factory.mktemp("loader"), splits=("train",), files=7, samples=3, size=8,
                      modalities=("S2L2A", "S1GRD"))


def loader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ssl4eos12")]


def examples_of(batches) -> list[dict]:
    """The batches cut back into examples: arrays as numpy (their dtype kept), strings as given."""
    out = []
    for batch in batches:
        for i in range(len(batch["sample"])):
            out.append({name: (value[i].numpy() if isinstance(value, torch.Tensor) else value[i])
                        for name, value in batch.items()})
    return out


def as_loader_gives(example: dict, numpy: bool) -> dict:
    """An expected (xarray) example with timestamps as the loader gives them: int64 ns for torch."""
    if numpy:
        return example
    return {name: value.astype("datetime64[ns]").view(np.int64)
            if isinstance(value, np.ndarray | np.datetime64) and value.dtype.kind == "M" else value
            for name, value in example.items()}


@pytest.mark.parametrize("config, kwargs, numpy", [
    ("all", {}, False),
    ("S2L2A", {}, True),
    ("all", {"single_timestamp": True}, False),
])
def test_values_are_what_xarray_reads(data_dir, config, kwargs, numpy):
    """Every batch kept (so no reused buffer may overwrite a kept one), every field equal in value and dtype."""
    loader = ssl4eos12.Loader(config, data_dir=str(data_dir), split="validation", batch_size=4, shuffle=False,
                              num_threads=2, numpy=numpy, **kwargs)
    batches = list(loader)
    modalities = list(ssl4eos12.MODALITIES) if config == "all" else [config]
    expected = [as_loader_gives(e, numpy) for e in expected_examples(data_dir, "validation", modalities, **kwargs)]
    actual = examples_of(batches)
    assert len(actual) == len(expected) == loader.num_examples
    assert list(batches[0]) == list(expected[0])  # the builder's field order, as collate gives it
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"example {i}")
    if not numpy:
        assert batches[0]["S2L2A"].dtype == torch.int16 and batches[0]["S1GRD"].dtype == torch.float16
        assert batches[0]["S2RGB"].dtype == torch.uint8 and batches[0]["S2L2A_time"].dtype == torch.int64


def test_same_as_the_builder_through_collate(data_dir):
    """Unshuffled batches equal ssl4eos12.collate over the streaming builder's examples, batch for batch."""
    from datasets import load_dataset

    streamed = list(load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="train", streaming=True))
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(data_dir), split="train", batch_size=4, shuffle=False)
    for k, batch in enumerate(loader):
        reference = ssl4eos12.collate(streamed[4 * k:4 * k + 4])
        assert list(batch) == list(reference)
        for name, value in reference.items():
            if isinstance(value, torch.Tensor):
                assert batch[name].dtype == value.dtype and torch.equal(batch[name], value), name
            else:
                assert batch[name] == value, name


@pytest.mark.parametrize("threads", [1, 3])
def test_every_example_once_per_epoch_across_ranks(many_files, threads):
    everything = {e["sample"] for e in expected_examples(many_files, "train", ["S2L2A"])}
    for epoch in (0, 1):
        seen, batches = [], 0
        for rank in range(3):
            loader = ssl4eos12.Loader("all", data_dir=str(many_files), modalities=["S2L2A", "S1GRD"], batch_size=2,
                                      rank=rank, world_size=3, num_threads=threads, seed=5)
            loader.set_epoch(epoch)
            expected_batches = len(loader)
            rank_batches = list(loader)
            assert len(rank_batches) == expected_batches
            batches += len(rank_batches)
            seen += [s for b in rank_batches for s in b["sample"]]
        assert len(seen) == len(everything) and set(seen) == everything


def test_single_timestamp_every_pair_once(many_files):
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=5, single_timestamp=True, num_threads=2)
    pairs = [(s, int(t)) for b in loader for s, t in zip(b["sample"], b["time_index"])]
    expected = {(e["sample"], int(e["time_index"]))
                for e in expected_examples(many_files, "train", ["S2L2A"], single_timestamp=True)}
    assert len(pairs) == len(expected) == loader.num_examples and set(pairs) == expected


def order_of(loader) -> list[str]:
    return [s for b in loader for s in b["sample"]]


def test_order_follows_seed_and_epoch_not_threads(many_files):
    def make(**kwargs):
        return ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=4, seed=7, crop=4, **kwargs)

    first = make(num_threads=1)
    epoch0 = order_of(first)  # iter() starts epoch 0, then the next iter() epoch 1
    epoch1 = order_of(first)
    again = make(num_threads=3, shuffle_window=4)
    assert order_of(again) == epoch0
    again.set_epoch(1)
    assert order_of(again) == epoch1
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    other_seed = ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=4, seed=8)
    assert order_of(other_seed) != epoch0
    # the crops follow from the seed and epoch too
    a, b = make(num_threads=1), make(num_threads=2)
    for x, y in zip(a, b):
        assert torch.equal(x["S2L2A"], y["S2L2A"]) and torch.equal(x["S2L2A_x"], y["S2L2A_x"])
    # examples mix across files (3 locations each): the first batch of 4 comes from more than one
    assert len(set(next(iter(make()))["file"])) > 1
    assert order_of(make(shuffle=False)) == sorted(epoch0)  # unshuffled: the files' own order


def test_crop_and_normalize_match_numpy(data_dir):
    mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in ssl4eos12.standardization("S2L2A", "zarr"))
    expected = list(expected_examples(data_dir, "validation", ["S2L2A"]))

    def standardized(x):
        return (x.astype(np.float32) - mean) / std

    centre = ssl4eos12.Loader("S2L2A", data_dir=str(data_dir), split="validation", shuffle=False, crop=10,
                              normalize=True, numpy=True)
    for e, a in zip(expected, examples_of(centre)):
        assert_identical(a["S2L2A"], standardized(e["S2L2A"][..., 3:13, 3:13]), "centre crop, standardized")
        assert_identical(a["S2L2A_cloud_mask"], e["S2L2A_cloud_mask"][..., 3:13, 3:13], "cloud mask")
        assert_identical(a["S2L2A_x"], e["S2L2A_x"][3:13], "x")
        assert_identical(a["S2L2A_y"], e["S2L2A_y"][3:13], "y")

    by_sample = {e["sample"]: e for e in expected}
    for device in (None, "cpu"):  # standardized in the gather, or on the device after the copy
        random = ssl4eos12.Loader("S2L2A", data_dir=str(data_dir), split="validation", crop=10, normalize=True,
                                  device=device, seed=3)
        corners = set()
        for a in examples_of(random):
            e = by_sample[a["sample"]]
            top = int(np.nonzero(e["S2L2A_y"] == a["S2L2A_y"][0])[0][0])
            left = int(np.nonzero(e["S2L2A_x"] == a["S2L2A_x"][0])[0][0])
            corners.add((top, left))
            window = (..., slice(top, top + 10), slice(left, left + 10))
            assert_identical(a["S2L2A"], standardized(e["S2L2A"][window]), f"random crop at {top}, {left}")
            assert_identical(a["S2L2A_cloud_mask"], e["S2L2A_cloud_mask"][window], "cloud mask")
            assert_identical(a["S2L2A_y"], e["S2L2A_y"][top:top + 10], "y")
        assert len(corners) > 1  # random, not the centre every time


def test_normalize_needs_published_values(tmp_path):
    """A modality without the release's published values (NDVI in the Zarr release) asks for them."""
    root = synthesize(tmp_path / "data", splits=("train",), files=1, samples=2, size=8, modalities=("NDVI",))
    with pytest.raises(ValueError, match="normalize=True: no standardization values for NDVI"):
        ssl4eos12.Loader("NDVI", data_dir=str(root), normalize=True)
    batch = next(iter(ssl4eos12.Loader("NDVI", data_dir=str(root), numpy=True,
                                       normalize={"NDVI": ([0.5], [2.0])}, shuffle=False)))
    expected = next(expected_examples(root, "train", ["NDVI"]))
    assert_identical(batch["NDVI"][0], (expected["NDVI"].astype(np.float32) - np.float32(0.5)) / np.float32(2.0),
                     "NDVI standardized with the given values")


def test_len_and_drop_last(many_files):
    full = ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=4)
    dropped = ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=4, drop_last=True)
    assert full.num_examples == 21 and len(full) == 6 and len(dropped) == 5
    sizes = [len(b["sample"]) for b in full]
    assert sizes == [4, 4, 4, 4, 4, 1]
    assert [len(b["sample"]) for b in dropped] == [4] * 5


def test_an_epoch_begins_with_its_first_batch_and_ends_with_its_last(many_files):
    """Iterators made and dropped unused move nothing on (Lightning makes one to check that a loader iterates);
    once an epoch's last batch is out, the position is the next epoch's start, though the iterator was not run to
    its end (Lightning's loop stops after len(loader) batches)."""
    def make():
        return ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=4, num_threads=1)

    loader = make()
    start = loader.state_dict()
    iter(loader), iter(loader)
    assert loader.epoch == 0 and loader.state_dict() == start
    iterator = iter(loader)
    first = [next(iterator)["sample"] for _ in range(len(loader) - 1)]
    assert (loader.state_dict()["epoch"], loader.state_dict()["segments"]) == (0, [
        {"world_size": 1, "batch_size": 4, "batches": len(loader) - 1}])
    first.append(next(iterator)["sample"])
    assert (loader.epoch, loader.state_dict()["epoch"], loader.state_dict()["segments"]) == (1, 1, [])
    resumed = make()
    resumed.load_state_dict(loader.state_dict())
    second = [b["sample"] for b in resumed]
    assert second == [b["sample"] for b in loader], "the saved position is where the next epoch starts"
    assert sorted(s for b in second for s in b) == sorted(s for b in first for s in b) and second != first


def test_buffers_are_reused_once_released(many_files, monkeypatch):
    """Batches the consumer lets go of are gathered into again; kept ones never are (see the values test)."""
    import ssl4eos12.loader

    made = []

    class Counted(ssl4eos12.loader._Buffers):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ssl4eos12.loader, "_Buffers", Counted)
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=1, shuffle=False, batches_ahead=2)
    count = sum(len(batch["sample"]) for batch in loader)  # each batch dropped before the next
    assert count == 21 and len(made) <= 2 + 2 + 4  # in the queue, being built, held; the rest reused
    kept = list(loader)
    assert len(kept) == 21 and len(made) >= 21  # every kept batch has buffers of its own


def test_break_exception_and_dropped_iterator_leave_no_thread(many_files):
    loader = ssl4eos12.Loader("all", data_dir=str(many_files), modalities=["S2L2A", "S1GRD"], batch_size=1,
                              num_threads=3)
    for _ in loader:
        break
    assert loader_threads() == [] and not loader._memory.retired  # no thread, no buffer kept

    with pytest.raises(ZeroDivisionError):
        for _ in loader:
            _ = 1 / 0
    gc.collect()
    assert loader_threads() == []

    iterator = iter(loader)
    next(iterator)
    assert loader_threads()  # running
    del iterator
    assert loader_threads() == []

    class Holder:  # an iterator in a reference cycle goes with the garbage collector
        pass

    holder = Holder()
    holder.self, holder.iterator = holder, iter(loader)
    next(holder.iterator)
    del holder
    gc.collect()
    assert loader_threads() == []


def test_the_next_epochs_first_window_is_decoded_once_ahead(many_files, monkeypatch):
    """Once an epoch has nothing left to read, its threads decode the next epoch's first window, which that epoch
    uses as it is: every file is decoded once per epoch, and every batch is still a fresh loader's, value for
    value. Neither a set_epoch() elsewhere nor a break is fooled."""
    from ssl4eos12.loader import _EpochRun

    decodes = []  # (how, file) of every file decoded

    def counting(how):
        original = getattr(_EpochRun, how)

        def decode(run, shard):
            decodes.append((how, run.catalog.entries[shard].shard))
            return original(run, shard)
        return decode

    for how in ("_decode", "_decode_early"):
        monkeypatch.setattr(_EpochRun, how, counting(how))

    def make(epoch=0):
        loader = ssl4eos12.Loader("all", data_dir=str(many_files), modalities=["S2L2A", "S1GRD"], batch_size=2,
                                  num_threads=2, shuffle_window=2, seed=3, numpy=True)
        loader.set_epoch(epoch)
        return loader

    def check(actual, epoch, where):
        fresh = examples_of(make(epoch))
        assert [a["sample"] for a in actual] == [f["sample"] for f in fresh], where
        for i, (a, f) in enumerate(zip(actual, fresh)):
            assert_example_equal(a, expected[a["sample"]], f"{where}, example {i}")
            assert_example_equal(a, f, f"{where}, example {i}")

    expected = {e["sample"]: e for e in expected_examples(many_files, "train", ["S2L2A", "S1GRD"])}
    loader = make()
    examples_of(loader)
    ahead = [file for how, file in decodes if how == "_decode_early"]
    assert ahead == [entry.shard for entry in loader.shards()[:2]]  # epoch 1's first window
    decodes.clear()
    epoch1 = examples_of(loader)
    regular = [file for how, file in decodes if how == "_decode"]
    assert not set(ahead) & set(regular) and sorted(ahead + regular) == sorted(e.shard for e in loader.shards(1))
    check(epoch1, 1, "epoch 1")
    loader.set_epoch(5)  # not the epoch decoded ahead for: what it needs of it is used, the rest dropped
    check(examples_of(loader), 5, "epoch 5 after set_epoch")
    for _ in loader:
        break
    assert loader._early == {} and loader_threads() == []  # a break keeps nothing for an epoch that may not come


def test_remote_root_reads_the_same_batches(data_dir):
    """A root served over HTTP (127.0.0.1) gives the local batches: the builder's remote reading applies."""
    from servers import RangeHTTPServer

    local = ssl4eos12.Loader("S2L2A", data_dir=str(data_dir), batch_size=2, seed=1, numpy=True)
    with RangeHTTPServer(data_dir) as server:
        remote = ssl4eos12.Loader("S2L2A", root=server.url, batch_size=2, seed=1, numpy=True, num_threads=2)
        assert len(remote) == len(local) == 3
        pairs = list(zip(remote, local))
    assert len(pairs) == 3
    for r, l in pairs:
        assert r["sample"] == l["sample"] and r["S2L2A_file_id"] == l["S2L2A_file_id"]
        assert_identical(r["S2L2A"], l["S2L2A"], "bands over HTTP")


def test_bad_file_raises_and_stops_or_is_skipped(many_files, tmp_path):
    root = synthesize(tmp_path / "data", splits=("train",), files=3, samples=2, size=8, modalities=("S2L2A",))
    bad = root / "train" / "S2L2A" / "ssl4eos12_train_seasonal_data_000002.zarr.zip"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(ssl4eos12.SSL4EOS12FileError, match="truncated or corrupt") as info:
        list(ssl4eos12.Loader("S2L2A", data_dir=str(root), batch_size=1, shuffle=False, num_threads=2))
    assert str(bad) in str(info.value)
    assert loader_threads() == []
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(root), batch_size=1, on_bad_file="skip", num_threads=2)
    with pytest.warns(ssl4eos12.SSL4EOS12BadFileWarning, match="truncated or corrupt"):
        samples = order_of(loader)
    assert len(samples) == 4 and loader_threads() == []


def test_memory_stays_flat_across_many_files(tmp_path):
    """Peak traced memory over 12 files is that of 6 (both fill the pipeline), and within the stated bound."""
    root = synthesize(tmp_path / "data", splits=("train",), files=12, samples=4, size=32, modalities=("S2L2A",))
    (root / "val" / "S2L2A").mkdir(parents=True)
    names = (root / "splits" / "ssl4eos12_train.txt").read_text().split()[:6]
    for name in names:  # the validation split: the first 6 files
        (root / "val" / "S2L2A" / name).symlink_to(root / "train" / "S2L2A" / name)
    (root / "splits" / "ssl4eos12_val.txt").write_text("".join(f"{name}\n" for name in names))
    file_bytes = 4 * 4 * 12 * 32 * 32 * 2 + 4 * 4 * 32 * 32  # bands + cloud mask of one decoded file
    batch_bytes = file_bytes  # a batch of 4 locations: a file's worth

    def peak(split):
        loader = ssl4eos12.Loader("S2L2A", data_dir=str(root), split=split, batch_size=4, num_threads=2,
                                  prefetch=2, shuffle_window=2, batches_ahead=2)
        tracemalloc.start()
        try:
            count = sum(len(b["sample"]) for b in loader)
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak("validation")  # imports and caches warmed
    small_count, small_peak = peak("validation")
    count, big_peak = peak("train")
    assert (small_count, count) == (24, 48)
    # the module docstring's bound: (prefetch + window + 1) decoded files + (batches_ahead + 3) batches
    bound = (2 + 2 + 1) * file_bytes + (2 + 3) * batch_bytes + 2_000_000  # + Python's own (zarr metadata, ...)
    assert big_peak < bound, f"peak {big_peak} over the stated bound {bound}"
    # timing moves the peak by a file or so; a leak would double it
    assert big_peak < 1.4 * small_peak, f"peak grows with the files: {small_peak} for 6, {big_peak} for 12"


def test_batch_buffers_are_reused_across_epochs(monkeypatch, many_files):
    """The pipeline holds at most batches_ahead + 3 batch buffers at once, and epoch after epoch gathers into those:
    no fresh batch-sized array per epoch (whose pages the kernel would zero again) while the consumer keeps none."""
    from ssl4eos12 import loader as loader_module

    made = []
    acquire = loader_module._BatchMemory.acquire

    def counting(self):
        kept = {id(b) for b in self.retired}
        buffers = acquire(self)
        made.append(id(buffers) not in kept)
        return buffers

    monkeypatch.setattr(loader_module._BatchMemory, "acquire", counting)
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=2, num_threads=2, batches_ahead=2,
                              numpy=True)
    counts = {sum(len(b["sample"]) for b in loader) for _ in range(5)}
    assert len(counts) == 1 and len(made) >= 5 * 5
    assert sum(made) <= 2 + 3, f"{sum(made)} batch buffers made in 5 epochs of {len(made) // 5} batches"


def test_unfinished_epochs_are_closed_at_exit(many_files):
    """An epoch left unfinished (one ``next()``) is closed by the exit handler while the modules are there: a
    generator finalized after the loader module's teardown (the iterator kept by a module torn down later, as a
    training framework's) printed an "Exception ignored" traceback at exit (seen on full-size tars)."""
    from ssl4eos12 import loader as loader_module

    batches = iter(ssl4eos12.Loader("S2L2A", data_dir=str(many_files), batch_size=2, num_threads=2))
    next(batches)
    assert any(t.name.startswith("ssl4eos12-") for t in threading.enumerate())
    loader_module._close_running()  # what atexit calls
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ssl4eos12-") and t.is_alive()]
    batches.close()  # the generator's own close afterwards: nothing left to do, and no error


def test_ranks_from_the_environment(monkeypatch, many_files):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(many_files))
    assert (loader.rank, loader.world_size) == (1, 2)
    # 21 examples in 7 shards over 2 ranks: 10 each (one left out), in a contiguous stretch of the epoch's shards
    assert loader.num_examples == 10 and len(loader) == len(ssl4eos12.Loader("S2L2A", data_dir=str(many_files),
                                                                             rank=0, world_size=2))
    assert len(loader.shards()) <= 5
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        ssl4eos12.Loader("S2L2A", data_dir=str(many_files), rank=2)


def test_numpy_without_torch(monkeypatch, data_dir):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails from here on
    with pytest.raises(ImportError, match="numpy=True"):
        ssl4eos12.Loader("S2L2A", data_dir=str(data_dir))
    batch = next(iter(ssl4eos12.Loader("S2L2A", data_dir=str(data_dir), numpy=True, batch_size=2)))
    assert isinstance(batch["S2L2A"], np.ndarray) and batch["S2L2A"].dtype == np.int16
    assert batch["S2L2A_time"].dtype == np.dtype("datetime64[ns]")


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "test"}, "split='test'.*train, validation"),
    ({"crop": 17}, "crop=17: larger than the S2L2A patches"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"crop_mode": "middle", "crop": 4}, "crop_mode='middle'"),
    ({"normalize": {"S2L2A": ([1.0], [2.0])}}, "one mean and std per band"),
    ({"numpy": True, "device": "cpu"}, "device='cpu' with numpy=True"),
])
def test_bad_arguments_name_the_problem(data_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssl4eos12.Loader("S2L2A", data_dir=str(data_dir), **kwargs)


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory):
    from ssl4eos12.index import build_index

    root = synthesize(tmp_path_factory.mktemp("indexed"), splits=("train",), files=3, samples=4, size=8, seed=3,
                      modalities=("S2L2A", "S1GRD"))
    build_index(root, workers=1)
    return root


@pytest.mark.parametrize("filters", [
    {"samples": ["0000001", "0000006", "0000011"]},
    {"single_timestamp": True, "time_range": ("2020-03-01", "2020-10-01")},
    {"time_order": "season"},
    {"single_timestamp": True, "time_range": ("2020-03-01", "2020-10-01"), "time_order": "season"},
])
def test_filters_select_what_the_builder_selects(indexed_dir, filters):
    """The index's filters reach the Loader through the builder: the same examples, value for value."""
    from datasets import load_dataset

    kwargs = dict(filters, modalities=["S2L2A", "S1GRD"])
    streamed = list(load_dataset("ssl4eos12", "all", data_dir=str(indexed_dir), split="train", streaming=True,
                                 **kwargs))
    loader = ssl4eos12.Loader("all", data_dir=str(indexed_dir), batch_size=3, shuffle=False, numpy=True, **kwargs)
    batches = list(loader)
    actual = examples_of(batches)
    assert 0 < len(actual) == len(streamed) == loader.num_examples <= 12 * (4 if "single_timestamp" in filters else 1)
    if set(filters) - {"time_order", "single_timestamp"}:  # a filter leaves some out
        assert len(actual) < 12 * (4 if "single_timestamp" in filters else 1)
    for i, (a, e) in enumerate(zip(actual, streamed)):
        e = {k: np.asarray(v) if isinstance(v, list) and v and not isinstance(v[0], str) else v for k, v in e.items()}
        assert_example_equal(a, e, f"example {i}")
    if filters.get("time_order") == "season":  # xarray's values, both modalities in the order of S2L2A's months
        plain = {(e["file"], e["sample"]): e for e in expected_examples(indexed_dir, "train", ["S2L2A", "S1GRD"])}
        for i, a in enumerate(actual):
            e = plain[(a["file"], a["sample"])]
            order = np.argsort(pd.DatetimeIndex(e["S2L2A_time"]).month.to_numpy(), kind="stable")
            picked = order[a["time_index"]] if "time_index" in a else order
            for m in ("S2L2A", "S1GRD"):
                for field in (m, f"{m}_cloud_mask", f"{m}_time"):
                    if field in e:
                        assert_identical(a[field], e[field][picked], f"example {i}: {field}")
                file_ids = [e[f"{m}_file_id"][j] for j in np.atleast_1d(picked)]
                assert a[f"{m}_file_id"] == (file_ids[0] if "time_index" in a else file_ids), f"example {i}"
    if filters.get("time_order") == "season" and "single_timestamp" not in filters:  # the order did change
        in_file_order = examples_of(ssl4eos12.Loader("all", data_dir=str(indexed_dir), batch_size=3, shuffle=False,
                                                     numpy=True, modalities=["S2L2A", "S1GRD"]))
        assert any(not np.array_equal(a["S2L2A_time"], f["S2L2A_time"]) for a, f in zip(actual, in_file_order))


def test_decode_arrays_are_reused_never_while_in_use(many_files, monkeypatch):
    """Decoded files' arrays are decoded into again once every example drawn from them is gathered: across
    epochs every batch (all kept) still holds the values xarray reads."""
    from ssl4eos12.sources.fastzip import ArrayPool

    monkeypatch.setattr(ArrayPool, "MIN_BYTES", 0)  # the fixture's arrays are small
    reused = []  # per array handed to a decoder: was it one the pool had handed out before
    monkeypatch.setattr(ArrayPool, "empty", counting_reuse(ArrayPool.empty, reused))
    loader = ssl4eos12.Loader("all", data_dir=str(many_files), modalities=["S2L2A", "S1GRD"], batch_size=2,
                              num_threads=3, prefetch=2, shuffle_window=2, numpy=True)
    expected = {e["sample"]: e for e in expected_examples(many_files, "train", ["S2L2A", "S1GRD"])}
    for epoch in range(3):
        actual = examples_of(list(loader))
        assert sorted(a["sample"] for a in actual) == sorted(expected)
        for a in actual:
            assert_example_equal(a, expected[a["sample"]], f"epoch {epoch}, sample {a['sample']}")
    # 7 files x (S2L2A bands and cloud mask, S1GRD bands) per epoch, and the 4th epoch's first window (2 files),
    # decoded ahead by the 3rd; after the first, most into old arrays
    assert len(reused) == 3 * 21 + 2 * 3 and sum(reused[21:]) > 21


def test_webdataset_release_gives_the_builders_examples(tmp_path):
    """The tar release through the same Loader: member keys included, values equal to the builder's."""
    from datasets import load_dataset

    from ssl4eos12.synth.webdataset import synthesize_webdataset

    root = synthesize_webdataset(tmp_path / "wds", splits=("train",), files=2, samples=3, size=8,
                                 modalities=("S2L2A", "S1GRD"))
    streamed = list(load_dataset("ssl4eos12", "all", data_dir=str(root), split="train", streaming=True,
                                 modalities=["S2L2A", "S1GRD"]))
    loader = ssl4eos12.Loader("all", data_dir=str(root), modalities=["S2L2A", "S1GRD"], batch_size=4, shuffle=False,
                              numpy=True, normalize=True)
    actual = examples_of(loader)
    assert len(actual) == len(streamed) == loader.num_examples == 6 and "key" in actual[0]
    values = {m: [np.asarray(v, np.float32).reshape(-1, 1, 1) for v in ssl4eos12.standardization(m, "webdataset")]
              for m in ("S2L2A", "S1GRD")}  # the release's own: no +1000 offset
    for i, (a, e) in enumerate(zip(actual, streamed)):
        e = {k: np.asarray(v) if isinstance(v, list) and v and not isinstance(v[0], str) else v for k, v in e.items()}
        for m, (mean, std) in values.items():
            assert_identical(a.pop(m), (e.pop(m).astype(np.float32) - mean) / std, f"example {i}: {m} standardized")
        assert_example_equal(a, e, f"example {i}")


def test_shuffle_window_counts_tars_not_blocks(tmp_path):
    """A tar's blocks are 4 locations each; its examples enter the window together: with a window of one tar
    every tar's examples come before the next tar's, mixed across the tar's blocks."""
    from ssl4eos12.sources.webdataset import BLOCK_LOCATIONS
    from ssl4eos12.synth.webdataset import synthesize_webdataset

    root = synthesize_webdataset(tmp_path / "wds", splits=("train",), files=3, samples=2 * BLOCK_LOCATIONS, size=8,
                                 modalities=("S2L2A",))
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(root), batch_size=4, shuffle_window=1, numpy=True)
    mixed = 0
    for _ in range(4):
        examples = examples_of(loader)
        files = [e["file"] for e in examples]
        runs = [f for i, f in enumerate(files) if i == 0 or f != files[i - 1]]
        assert len(runs) == 3 and len(examples) == 3 * 2 * BLOCK_LOCATIONS  # one tar after the other
        first = [int(e["key"].rsplit("_", 1)[-1]) for e in examples[:2 * BLOCK_LOCATIONS]]
        blocks = [(key - min(first)) // BLOCK_LOCATIONS for key in first]
        mixed += blocks != sorted(blocks)  # a later block's example before an earlier one's
    assert mixed


# -- the tar release: members decoded straight into their batch slots ------------------------------------------------

@pytest.fixture(scope="module")
def tar_root(tmp_path_factory):
    """3 tars x 5 locations (blocks of 4 and 1) of S2L2A and S1GRD, 8 px."""
    from ssl4eos12.synth.webdataset import synthesize_webdataset

    return synthesize_webdataset(tmp_path_factory.mktemp("loader-tars"), splits=("train",), files=3, samples=5, size=8,
                                 modalities=("S2L2A", "S1GRD"))


def slot_decodes(monkeypatch) -> list:
    """Each member decode straight into a batch slot: (array name, timestamp or None)."""
    from ssl4eos12.sources.webdataset import Encoded

    calls = []
    decode_into = Encoded.decode_into

    def counted(self, row, out, time=None):
        calls.append((self.name, time))
        return decode_into(self, row, out, time)

    monkeypatch.setattr(Encoded, "decode_into", counted)
    return calls


@pytest.mark.parametrize("kwargs", [
    {},
    {"single_timestamp": True},
    {"time_order": "season"},
    {"single_timestamp": True, "time_order": "season"},
    {"crop": 5},
], ids=["series", "single", "season", "single-season", "crop"])
def test_tar_members_decoded_into_their_slots_are_what_xarray_reads(tar_root, tmp_path, monkeypatch, kwargs):
    """Shuffled, every batch kept: each example's bands and cloud masks, decoded into the batch by the gather
    threads (only the timestamp a single-timestamp example needs; in season order where asked), equal xarray's
    reading of its member; a crop decodes the member and cuts it as numpy does."""
    from test_webdataset import expected_examples as tar_examples

    calls = slot_decodes(monkeypatch)
    crop = kwargs.pop("crop", None)
    loader = ssl4eos12.Loader("all", data_dir=str(tar_root), modalities=["S2L2A", "S1GRD"], batch_size=4, seed=3,
                              num_threads=2, numpy=True, crop=crop, **kwargs)
    assert loader._defer and loader.gather_threads == 2
    actual = examples_of(list(loader))
    single = kwargs.get("single_timestamp", False)
    expected = list(tar_examples(tar_root, "train", ["S2L2A", "S1GRD"], tmp_path, single_timestamp=single,
                                 season=kwargs.get("time_order") == "season"))
    assert len(actual) == len(expected) == 15 * (4 if single else 1)
    by_id = {(e["key"], int(e.get("time_index", -1))): e for e in expected}
    for a in actual:
        e = dict(by_id[(a["key"], int(a.get("time_index", -1)))])
        if crop:
            top, left = _crop_corner(a["S2L2A_y"], e["S2L2A_y"]), _crop_corner(a["S2L2A_x"], e["S2L2A_x"])
            e = {k: (v[..., top:top + crop, left:left + crop] if k in ("S2L2A", "S1GRD", "S2L2A_cloud_mask") else
                     v[left:left + crop] if k.endswith("_x") else v[top:top + crop] if k.endswith("_y") else v)
                 for k, v in e.items()}
        assert_example_equal(a, e, a["key"])
    # S2L2A's bands and mask, S1GRD's bands: each decoded once per example (single: its timestamp only; a crop
    # decodes the member, then cuts it)
    assert len(calls) == 3 * len(actual)
    assert all((t is not None) == single for _, t in calls)


def _crop_corner(cropped: np.ndarray, whole: np.ndarray) -> int:
    """Where a cropped coordinate vector starts in the whole one."""
    return int(np.flatnonzero(whole == cropped[0])[0])


def test_a_corrupt_tar_member_fails_its_batch_naming_it_or_is_skipped(tar_root, tmp_path):
    """A bands chunk with a flipped byte: its batch raises SSL4EOS12FileError naming the tar and member (the
    gather decodes it); with on_bad_file="skip" the member's tar is skipped and counted (decoded ahead then)."""
    import shutil
    import tarfile
    import zipfile

    from ssl4eos12.synth.webdataset import write_tar

    root = tmp_path / "corrupt"
    shutil.copytree(tar_root, root)
    tar = root / "train" / "S2L2A" / "ssl4eos12_shard_000002.tar"
    with tarfile.open(tar) as opened:
        members = [(m.name, opened.extractfile(m).read()) for m in opened.getmembers() if m.isfile()]
    name, data = members[1]
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
        info = zf.getinfo("bands/0.0.0.0")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(data)
    data[start + info.compress_size // 2] ^= 0xFF
    members[1] = (name, bytes(data))
    write_tar(tar, members)
    loader = ssl4eos12.Loader("S2L2A", data_dir=str(root), batch_size=4, numpy=True, num_threads=2)
    with pytest.raises(ssl4eos12.SSL4EOS12FileError, match=rf"ssl4eos12_shard_000002\.tar:{name.split('.')[0]}"):
        list(loader)
    skipping = ssl4eos12.Loader("S2L2A", data_dir=str(root), batch_size=4, numpy=True, num_threads=2,
                                on_bad_file="skip")
    assert not skipping._defer
    for epoch in range(3):  # skipped and said in every epoch, also once the epoch before decoded it ahead
        with pytest.warns(ssl4eos12.SSL4EOS12BadFileWarning, match="ssl4eos12_shard_000002.tar") as caught:
            examples = examples_of(list(skipping))
        assert sum("skipping" in str(w.message) for w in caught) == 1, f"epoch {epoch}"
        assert len(examples) == 15 and {e["file"] for e in examples} == {"ssl4eos12_shard_000001.tar",
                                                                          "ssl4eos12_shard_000003.tar"}


def test_tar_root_over_http_gives_the_local_batches(tar_root):
    """Tars streamed over HTTP (members fetched as bytes, left encoded until the gather) give the local batches."""
    from servers import RangeHTTPServer

    kwargs = {"modalities": ["S2L2A", "S1GRD"], "batch_size": 4, "seed": 2, "numpy": True, "num_threads": 2}
    local = list(ssl4eos12.Loader("all", data_dir=str(tar_root), **kwargs))
    with RangeHTTPServer(tar_root) as server:
        remote = ssl4eos12.Loader("all", root=server.url, **kwargs)
        assert remote._defer
        batches = list(remote)
    assert len(batches) == len(local) == 4
    for r, l in zip(batches, local):
        assert r["key"] == l["key"]
        for name in ("S2L2A", "S2L2A_cloud_mask", "S1GRD", "S2L2A_time"):
            assert_identical(r[name], l[name], f"{name} over HTTP")
