"""The ways PyTorch users write a DataLoader, on the builder's datasets (streaming and prepared) and the converted copy:
every example once, every value as xarray reads it, bands in the files' dtypes where the path promises it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import counting_reuse
from datasets import load_dataset
from reference import assert_example_equal, expected_examples

import ssl4eos12

torch = pytest.importorskip("torch")
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

ALL = ["S2L1C", "S2L2A", "S2RGB", "S1GRD"]
NATIVE = {"S2L1C": torch.int16, "S2L2A": torch.int16, "S2RGB": torch.uint8, "S1GRD": torch.float16}


def unbatch(batches) -> list[dict]:
    """Examples of collated batches as numpy, timestamps back to datetime64[ns] (the documented convention)."""
    examples = []
    for batch in batches:
        size = len(batch["sample"])
        for i in range(size):
            example = {}
            for name, value in batch.items():
                if isinstance(value, torch.Tensor):
                    value = value[i].numpy()
                    if name.endswith("_time"):
                        assert value.dtype == np.int64, name
                        value = value.view("datetime64[ns]")
                    example[name] = value
                else:
                    example[name] = value[i]
            examples.append(example)
    return examples


def check_every_example_once(examples: list[dict], data_dir, split: str, modalities: list[str]) -> None:
    expected = {e["sample"]: e for e in expected_examples(data_dir, split, modalities)}
    assert sorted(e["sample"] for e in examples) == sorted(expected), "every example exactly once"
    for example in examples:
        assert_example_equal(example, expected[example["sample"]], f"{split}/{example['sample']}")


def test_streaming_all_two_workers_native_dtypes(data_dir, monkeypatch):
    """In a worker the builder hands collate views of the decoded file, whose arrays the next file reuses (every
    array here, small as they are): values must still be the file's."""
    from ssl4eos12.sources.fastzip import ArrayPool

    monkeypatch.setattr(ArrayPool, "MIN_BYTES", 0)  # the forked workers inherit it
    streamed = load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="train", streaming=True)
    batches = list(DataLoader(streamed, batch_size=4, collate_fn=ssl4eos12.collate, num_workers=2))
    for modality, dtype in NATIVE.items():
        assert all(batch[modality].dtype == dtype for batch in batches), modality
    check_every_example_once(unbatch(batches), data_dir, "train", ALL)


_REUSED: list[bool] = []  # in a forked worker: per array its builder's pool handed out, whether it was an old one


def _collate_and_count(examples):
    return ssl4eos12.collate(examples), sum(_REUSED)


def test_a_worker_decodes_each_file_into_the_last_ones_arrays(tmp_path, monkeypatch):
    """One worker, five files: later files are decoded into earlier ones' arrays once their views are collated,
    and every batch still holds the files' values."""
    from ssl4eos12.sources.fastzip import ArrayPool
    from ssl4eos12.synth import synthesize

    root = synthesize(tmp_path / "data", splits=("train",), files=5, samples=3, size=8, modalities=("S2L2A", "S1GRD"))
    monkeypatch.setattr(ArrayPool, "MIN_BYTES", 0)  # the forked worker inherits both patches
    monkeypatch.setattr(ArrayPool, "empty", counting_reuse(ArrayPool.empty, _REUSED))
    streamed = load_dataset("ssl4eos12", "all", data_dir=str(root), split="train", streaming=True,
                            modalities=["S2L2A", "S1GRD"])
    results = list(DataLoader(streamed, batch_size=2, collate_fn=_collate_and_count, num_workers=1))
    assert results[-1][1] > 0, "no file was decoded into an earlier file's arrays"
    check_every_example_once(unbatch([batch for batch, _ in results]), root, "train", ["S2L2A", "S1GRD"])


def test_prepared_plain_dataloader_two_workers_native_dtypes(data_dir, tmp_path):
    prepared = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="validation", cache_dir=str(tmp_path))
    # the prepared rows are what streaming yields: numpy arrays in the files' dtypes
    assert prepared[0]["S2L2A"].dtype == np.int16 and prepared[0]["S2L2A_time"].dtype == np.dtype("datetime64[ns]")
    batches = list(DataLoader(prepared, batch_size=4, collate_fn=ssl4eos12.collate, num_workers=2))
    assert [len(batch["sample"]) for batch in batches] == [4, 2]
    assert all(batch["S2L2A"].dtype == torch.int16 and batch["S2L2A_cloud_mask"].dtype == torch.uint8
               for batch in batches)
    check_every_example_once(unbatch(batches), data_dir, "validation", ["S2L2A"])


def test_prepared_arrow_batches_native_dtypes(data_dir, tmp_path):
    prepared = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="validation", cache_dir=str(tmp_path))
    sampler = BatchSampler(SequentialSampler(prepared), batch_size=4, drop_last=False)
    batches = list(DataLoader(prepared.with_format("arrow"), sampler=sampler, batch_size=None,
                              collate_fn=ssl4eos12.collate))
    assert all(batch["S2L2A"].dtype == torch.int16 for batch in batches)
    check_every_example_once(unbatch(batches), data_dir, "validation", ["S2L2A"])


def test_python_rows_collate(data_dir, tmp_path):
    """After ``with_format(None)`` the rows are Python objects: collate still makes tensors (numpy's dtypes)."""
    prepared = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="validation", cache_dir=str(tmp_path))
    batch = next(iter(DataLoader(prepared.with_format(None), batch_size=3, collate_fn=ssl4eos12.collate)))
    expected = list(expected_examples(data_dir, "validation", ["S2L2A"]))[:3]
    np.testing.assert_array_equal(batch["S2L2A"].numpy(), np.stack([e["S2L2A"] for e in expected]))
    np.testing.assert_array_equal(batch["S2L2A_time"].numpy(),
                                  np.stack([e["S2L2A_time"] for e in expected]).view(np.int64))


def _collate_and_report_sharing(batch):
    out = ssl4eos12.collate(batch)
    out["shared"] = [out["S2L2A"].is_shared()] * len(batch)
    return out


def test_collate_allocates_in_shared_memory_inside_workers(data_dir):
    streamed = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="train", streaming=True)
    in_worker = next(iter(DataLoader(streamed, batch_size=2, collate_fn=_collate_and_report_sharing, num_workers=1)))
    in_main = next(iter(DataLoader(streamed, batch_size=2, collate_fn=_collate_and_report_sharing)))
    assert in_worker["shared"] == [True, True] and in_main["shared"] == [False, False]
    assert torch.equal(in_worker["S2L2A"], in_main["S2L2A"])


def torch_rows(dataset) -> list[dict]:
    return [dict(row) for row in dataset.with_format("torch")]


@pytest.mark.parametrize("kind", ["streaming all", "prepared S2L2A", "converted S2L2A"])
def test_with_format_torch(kind, data_dir, converted_dir, tmp_path):
    """No exception on any dataset we produce; datasets' own dtypes; timestamps as int64 nanoseconds."""
    config = kind.rsplit(" ", 1)[-1]
    split = "validation"
    if kind.startswith("streaming"):
        dataset = load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split, streaming=True)
    elif kind.startswith("prepared"):
        dataset = load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split, cache_dir=str(tmp_path))
    else:
        dataset = load_dataset(str(converted_dir), config, split=split, cache_dir=str(tmp_path))
    modalities = ALL if config == "all" else [config]
    rows = torch_rows(dataset)
    expected = list(expected_examples(data_dir, split, modalities))
    assert len(rows) == len(expected)
    for row, example in zip(rows, expected):
        for m in modalities:
            assert row[m].dtype in (torch.int64, torch.float32), (m, row[m].dtype)  # datasets widens
            np.testing.assert_array_equal(row[m].numpy(), example[m].astype(row[m].numpy().dtype))
            assert row[f"{m}_time"].dtype == torch.int64
            np.testing.assert_array_equal(row[f"{m}_time"].numpy(), example[f"{m}_time"].view(np.int64))


def test_prepared_in_spawned_workers(data_dir, tmp_path):
    """macOS and Windows start workers with spawn: a fresh interpreter that has not imported ssl4eos12."""
    prepared = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="validation", cache_dir=str(tmp_path))
    # len: a collate_fn from builtins, so nothing but the dataset itself can import ssl4eos12 in the worker
    sizes = list(DataLoader(prepared, batch_size=4, collate_fn=len, num_workers=1, multiprocessing_context="spawn"))
    assert sizes == [4, 2]


def test_collate_without_torch_names_the_extra(data_dir, monkeypatch):
    """One line naming the torch extra, for every kind of batch collate takes (as the Loader and plot say theirs)."""
    import sys

    import pyarrow as pa

    examples = list(load_dataset("ssl4eos12", "S2RGB", data_dir=str(data_dir), split="train", streaming=True))[:2]
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails from here on
    for batch in (examples, pa.table({"S2RGB_x": [[1.0], [2.0]]}), {"center_lat": np.zeros(2)}):
        with pytest.raises(ImportError) as info:
            ssl4eos12.collate(batch)
        message = str(info.value)
        assert message.startswith("ssl4eos12.collate (torch tensors) needs torch, an optional extra: "
                                  "pip install 'ssl4eos12[torch]'; "), message
        assert "\n" not in message and info.value.__suppress_context__


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_a_streaming_dataset_mid_epoch(data_dir, workers):
    """torchdata's StatefulDataLoader keeps the streaming dataset's own state_dict per worker (the README's recipe):
    the batches after a saved position are the ones the uninterrupted epoch gives, the builder's read-ahead
    notwithstanding."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader():
        streamed = load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="train", streaming=True)
        return StatefulDataLoader(streamed, batch_size=2, collate_fn=ssl4eos12.collate, num_workers=workers)

    full = [batch["sample"] for batch in loader()]
    assert sorted(s for batch in full for s in batch) == sorted(
        e["sample"] for e in expected_examples(data_dir, "train", ["S2L2A"]))
    for done in range(1, len(full)):
        interrupted = loader()
        iterator = iter(interrupted)
        assert [next(iterator)["sample"] for _ in range(done)] == full[:done]
        state = interrupted.state_dict()
        del iterator
        resumed = loader()
        resumed.load_state_dict(state)
        assert [batch["sample"] for batch in resumed] == full[done:], f"resumed after {done} batch(es)"
