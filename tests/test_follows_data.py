"""A prepared dataset follows its data, survives save_to_disk, an empty selection says so, and every path gives
the same types (issue 18, items 1-4 and the keyword and offline messages).

Every expectation is what xarray reads from the files as they are at that moment (``reference.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import datasets
import numpy as np
import pytest
from reference import assert_example_equal, expected_examples

import ssl4eos12
from ssl4eos12.index import build_index
from ssl4eos12.synth import synthesize
from ssl4eos12.synth.webdataset import synthesize_webdataset


def prepared(root, config="S2L2A", split="train", **kwargs) -> datasets.Dataset:
    return datasets.load_dataset("ssl4eos12", config, data_dir=str(root), split=split, **kwargs)


def assert_matches_files(dataset, root, split="train", modalities=("S2L2A",)) -> None:
    expected = list(expected_examples(root, split, list(modalities)))
    actual = list(dataset)
    assert len(actual) == len(expected), f"{len(actual)} examples, the files hold {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"example {i}")


# --- 1. the prepared cache is keyed by the data ----------------------------------------------------------------

def test_a_prepared_dataset_follows_its_folder(tmp_path):
    root = synthesize(tmp_path / "data", splits=("train", "validation"), files=2, samples=3, size=8, seed=0)
    first = prepared(root)
    assert_matches_files(first, root)

    again = prepared(root)  # unchanged: the cache is reused, nothing is generated again
    assert again.cache_files == first.cache_files

    synthesize(root, files=2, samples=4, size=8, seed=1)  # replaced: other locations, other sizes, same names
    replaced = prepared(root)
    assert replaced.cache_files != first.cache_files
    assert_matches_files(replaced, root)
    assert (len(first), len(replaced)) == (6, 8)

    synthesize(root, files=3, samples=4, size=8, seed=1)  # a file added
    assert_matches_files(prepared(root), root)
    synthesize(root, files=1, samples=4, size=8, seed=1)  # files removed from the split
    assert_matches_files(prepared(root), root)
    assert_matches_files(prepared(root, download_mode="force_redownload"), root)


def test_a_replaced_tar_is_read_again(tmp_path):
    root = synthesize_webdataset(tmp_path / "wds", splits=("train",), files=1, samples=3, size=8,
                                 modalities=("S2L2A",), seed=0)
    before = [e["sample"] for e in prepared(root)]
    synthesize_webdataset(root, splits=("train",), files=1, samples=5, size=8, modalities=("S2L2A",), seed=3)
    streamed = [e["sample"] for e in datasets.load_dataset("ssl4eos12", "S2L2A", data_dir=str(root), split="train",
                                                           streaming=True)]
    after = [e["sample"] for e in prepared(root)]
    assert after == streamed and len(after) == 5 and after != before


def test_the_index_keys_the_cache_too(tmp_path):
    """A filter's result depends on the index: a rewritten index prepares the split again."""
    root = synthesize(tmp_path / "data", splits=("train",), files=2, samples=3, size=8)
    build_index(root, workers=1)
    first = prepared(root, samples=["0000000"])
    assert [e["sample"] for e in first] == ["0000000"]
    synthesize(root, splits=("train",), files=2, samples=3, size=8, seed=5)
    build_index(root, workers=1)
    assert prepared(root, samples=["0000000"]).cache_files != first.cache_files


# --- 2. save_to_disk ---------------------------------------------------------------------------------------------

def test_save_to_disk_round_trips_a_prepared_dataset(data_dir, tmp_path):
    dataset = prepared(data_dir, "all", split="validation")
    dataset.save_to_disk(str(tmp_path / "saved"))
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    assert loaded.format["type"] == dataset.format["type"] == ssl4eos12.torch.NATIVE_FORMAT
    assert_matches_files(loaded, data_dir, "validation", ssl4eos12.MODALITIES)

    whole = datasets.load_dataset("ssl4eos12", "S2RGB", data_dir=str(data_dir))  # a DatasetDict
    whole.save_to_disk(str(tmp_path / "dict"))
    assert_matches_files(datasets.load_from_disk(str(tmp_path / "dict"))["train"], data_dir, "train", ["S2RGB"])


# --- 3. a selection that keeps nothing says so -------------------------------------------------------------------

@pytest.fixture(scope="module")
def indexed_root(tmp_path_factory):
    root = synthesize(tmp_path_factory.mktemp("indexed"), files=2, samples=3, size=8)
    build_index(root, workers=1)
    return root


@pytest.mark.parametrize("selection", [
    {"samples": ["9999999"]},
    {"bbox": (10.0, 10.0, 10.001, 10.001)},
    {"time_range": ("1990-01-01", "1990-02-01")},
])
def test_an_empty_selection_warns_when_streaming(indexed_root, selection):
    with pytest.warns(ssl4eos12.SSL4EOS12EmptySelectionWarning) as caught:
        examples = list(datasets.load_dataset("ssl4eos12", "S2L2A", data_dir=str(indexed_root), split="validation",
                                              streaming=True, **selection))
    assert examples == []
    message = str(caught[0].message)
    assert "split 'validation'" in message and next(iter(selection)) in message
    assert len(message.splitlines()) == 1


def test_an_empty_selection_raises_when_prepared(indexed_root):
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=r"samples=\['9999999'\] keeps no example of split 'train'"):
        prepared(indexed_root, samples=["9999999"])


def test_a_selection_that_keeps_something_does_not_warn(indexed_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ssl4eos12.SSL4EOS12EmptySelectionWarning)
        assert [e["sample"] for e in prepared(indexed_root, samples=["0000001"])] == ["0000001"]


def test_a_filter_without_an_index_names_the_split_asked_for(data_dir):
    for split, folder in (("validation", "val"), ("train", "train")):
        with pytest.raises(ssl4eos12.SSL4EOS12DataError) as caught:
            datasets.load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split=split, streaming=True,
                                  bbox=(0, 0, 1, 1))
        assert f"no index of split {folder} " in str(caught.value)


# --- 4. the same types on every path -----------------------------------------------------------------------------

@pytest.mark.parametrize("config, keywords", [("all", {}), ("S1GRD", {"single_timestamp": True})])
def test_streamed_and_prepared_examples_have_the_same_types(data_dir, config, keywords):
    streamed = next(iter(datasets.load_dataset("ssl4eos12", config, data_dir=str(data_dir), split="train",
                                               streaming=True, **keywords)))
    row = prepared(data_dir, config, **keywords)[0]
    assert set(streamed) == set(row)
    for name, value in streamed.items():
        assert type(value) is type(row[name]), f"{name}: {type(value)} streamed, {type(row[name])} prepared"
        if isinstance(value, (np.ndarray, np.generic)):
            assert value.dtype == row[name].dtype, f"{name}: {value.dtype} != {row[name].dtype}"
            assert np.array_equal(value, row[name], equal_nan=value.dtype.kind == "f"), name
        else:
            assert value == row[name], name
    sequences = ("_x", "_y") if keywords.get("single_timestamp") else ("_time", "_x", "_y")
    for name in [f for f in streamed if f.endswith(sequences)]:
        assert isinstance(streamed[name], np.ndarray), name
    assert streamed["S1GRD_time"].dtype == np.dtype("datetime64[ns]")


# --- keywords and offline ----------------------------------------------------------------------------------------

def test_a_misspelled_keyword_gets_one_line(data_dir):
    with pytest.raises(ValueError) as caught:
        prepared(data_dir, max_cloud=0.1)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "'max_cloud'" in message and "max_cloud_fraction" in message
    assert "SSL4EOS12Config(" not in message


def test_offline_without_a_data_dir_says_offline(tmp_path):
    code = ("import ssl4eos12, datasets\n"
            "datasets.load_dataset('ssl4eos12', 'S2L2A', split='train', streaming=True)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "SSL4EOS12DataError" in last and "HF_HUB_OFFLINE=1" in last, last
