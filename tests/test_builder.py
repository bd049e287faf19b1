"""The builder yields every field of every example exactly as xarray reads it, in both modes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import load_dataset
from reference import assert_example_equal, expected_examples, split_files

import ssl4eos12
from ssl4eos12.torch import arrow_to_numpy

CONFIGS = {
    "S1GRD": ["S1GRD"], "S2L1C": ["S2L1C"], "S2L2A": ["S2L2A"], "S2RGB": ["S2RGB"],
    "all": ["S2L1C", "S2L2A", "S2RGB", "S1GRD"],
}
REFERENCE_README = Path(__file__).resolve().parents[2] / "shared" / "reference" / "SSL4EO-S12-v1.1-README.md"


def arrow_rows(dataset: datasets.Dataset):
    """Rows of a prepared dataset through the native-dtype path (no formatter upcasts)."""
    table = dataset.with_format("arrow")[:]
    columns = arrow_to_numpy(table)
    for i in range(table.num_rows):
        yield {name: values[i] for name, values in columns.items()}


def streamed_rows(dataset: datasets.IterableDataset):
    for example in dataset:
        yield {k: (np.asarray(v) if isinstance(v, list) and v and not isinstance(v[0], str) else v)
               for k, v in example.items()}


def check_against_xarray(rows, data_dir, split, modalities, single_timestamp=False):
    expected = list(expected_examples(data_dir, split, modalities, single_timestamp))
    actual = list(rows)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"{split}[{i}]")
    return len(actual)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_streaming_equals_xarray(data_dir, config):
    for split in ("train", "validation"):
        ds = load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split, streaming=True)
        n = check_against_xarray(streamed_rows(ds), data_dir, split, CONFIGS[config])
        assert n == len(split_files(data_dir, split)) * 3


@pytest.mark.parametrize("config", list(CONFIGS))
def test_prepared_equals_xarray(data_dir, config, tmp_path):
    dsd = load_dataset("ssl4eos12", config, data_dir=str(data_dir), cache_dir=str(tmp_path))
    assert set(dsd) == {"train", "validation"}
    for split, ds in dsd.items():
        n = check_against_xarray(arrow_rows(ds), data_dir, split, CONFIGS[config])
        assert n == ds.num_rows == len(split_files(data_dir, split)) * 3


def test_features_keep_file_dtypes(data_dir):
    ds = load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="train", streaming=True)
    f = ds.features
    assert f["S2L1C"] == datasets.Array4D(shape=(4, 13, 16, 16), dtype="int16")
    assert f["S2L2A"] == datasets.Array4D(shape=(4, 12, 16, 16), dtype="int16")
    assert f["S2RGB"] == datasets.Array4D(shape=(4, 3, 16, 16), dtype="uint8")
    assert f["S1GRD"] == datasets.Array4D(shape=(4, 2, 16, 16), dtype="float16")
    assert f["S2L2A_cloud_mask"] == datasets.Array3D(shape=(4, 16, 16), dtype="uint8")
    assert "S1GRD_cloud_mask" not in f
    assert f["S1GRD_time"] == datasets.List(datasets.Value("timestamp[ns]"), length=4)


@pytest.mark.parametrize("config", ["S2L2A", "all"])
def test_single_timestamp(data_dir, config, tmp_path):
    ds = load_dataset("ssl4eos12", config, data_dir=str(data_dir), split="validation", streaming=True,
                      single_timestamp=True)
    assert ds.features["S2L2A"] == datasets.Array3D(shape=(12, 16, 16), dtype="int16")
    rows = ({k: (np.datetime64(v, "ns") if k.endswith("_time") else v) for k, v in row.items()}
            for row in streamed_rows(ds))
    n = check_against_xarray(rows, data_dir, "validation", CONFIGS[config], single_timestamp=True)
    assert n == 2 * 3 * 4
    prepared = load_dataset("ssl4eos12", config, data_dir=str(data_dir), split="validation",
                            single_timestamp=True, cache_dir=str(tmp_path))
    check_against_xarray(arrow_rows(prepared), data_dir, "validation", CONFIGS[config], single_timestamp=True)


def test_odd_sizes_and_extra_modality(odd_data_dir, tmp_path):
    """5 samples per file, 12 px, 3 timestamps, no train split, and an NDVI folder read from metadata."""
    modalities = ["S2L2A", "NDVI", "S1GRD"]
    ds = load_dataset("ssl4eos12", modalities=modalities, data_dir=str(odd_data_dir), cache_dir=str(tmp_path))
    assert list(ds) == ["validation"]
    assert ds["validation"].features["NDVI"] == datasets.Array4D(shape=(3, 1, 12, 12), dtype="float32")
    assert "NDVI_cloud_mask" not in ds["validation"].features
    n = check_against_xarray(arrow_rows(ds["validation"]), odd_data_dir, "validation", modalities)
    assert n == 3 * 5
    streamed = load_dataset("ssl4eos12", modalities=modalities, data_dir=str(odd_data_dir), split="validation",
                            streaming=True)
    check_against_xarray(streamed_rows(streamed), odd_data_dir, "validation", modalities)


def test_builder_class_directly(data_dir):
    builder = ssl4eos12.SSL4EOS12(config_name="S2RGB", data_dir=str(data_dir))
    ds = builder.as_streaming_dataset(split="train")
    check_against_xarray(streamed_rows(ds), data_dir, "train", ["S2RGB"])


def test_one_shard_per_source_file(data_dir):
    ds = load_dataset("ssl4eos12", "S1GRD", data_dir=str(data_dir), split="train", streaming=True)
    assert ds.num_shards == len(split_files(data_dir, "train"))
    first = ds.shard(num_shards=2, index=0)
    assert {row["file"] for row in first} == {split_files(data_dir, "train")[0]}


def test_works_from_any_directory(data_dir, tmp_path, monkeypatch):
    """The name resolves with an empty cwd, a cwd full of unrelated files, and a relative data_dir."""
    monkeypatch.chdir(tmp_path)
    assert sum(1 for _ in load_dataset("ssl4eos12", "S2RGB", data_dir=str(data_dir), split="train",
                                       streaming=True)) == 6
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "table.parquet").write_bytes(b"not parquet")
    relative = Path("..") / Path(data_dir).relative_to(tmp_path.parent) if Path(data_dir).parent == tmp_path.parent \
        else Path(data_dir)
    ds = load_dataset("ssl4eos12", "S1GRD", data_dir=str(relative), split="validation", streaming=True)
    assert next(row["file"] for row in ds) == split_files(data_dir, "validation")[0]
    assert set(datasets.get_dataset_config_names("ssl4eos12")) == {*CONFIGS, "NDVI", "LULC", "DEM"}


def test_default_root_is_the_hosted_copy():
    builder = ssl4eos12.SSL4EOS12(config_name="S2L2A")
    assert ssl4eos12.builder.data_root(builder.config) == "hf://datasets/embed2scale/SSL4EO-S12-v1.1-Zarr"
    assert ssl4eos12.SSL4EOS12(config_name="S2L2A", root="https://host/x/").config.root == "https://host/x/"
    assert ssl4eos12.builder.data_root(ssl4eos12.SSL4EOS12(config_name="S2L2A", root="https://host/x/").config) \
        == "https://host/x"


def test_split_list_is_optional(tmp_path):
    root = ssl4eos12.synth.synthesize(tmp_path / "d", splits=("train",), files=2, samples=2, size=8,
                                      modalities=("S2RGB",), split_lists=False)
    ds = load_dataset("ssl4eos12", "S2RGB", data_dir=str(root), split="train", streaming=True)
    assert [row["file"] for row in ds] == [f"ssl4eos12_train_seasonal_data_00000{i}.zarr.zip" for i in (1, 1, 2, 2)]


def test_standardization_values_match_the_dataset_readme():
    for modality in ssl4eos12.MODALITIES:
        assert len(ssl4eos12.MEAN[modality]) == len(ssl4eos12.STD[modality]) == len(ssl4eos12.BANDS[modality])
    if not REFERENCE_README.exists():
        pytest.skip("the dataset's README is not beside this checkout")
    published = json.loads(re.search(r"Standardization values:\n```json\n(.*?)```", REFERENCE_README.read_text(),
                                     re.DOTALL).group(1))
    for modality, values in published.items():
        assert list(ssl4eos12.MEAN[modality]) == values["mean"]
        assert list(ssl4eos12.STD[modality]) == values["std"]


def test_collate_gives_native_dtype_tensors(data_dir, tmp_path):
    torch = pytest.importorskip("torch")
    streamed = load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="train", streaming=True)
    loader = torch.utils.data.DataLoader(streamed, batch_size=2, collate_fn=ssl4eos12.collate)
    batch = next(iter(loader))
    expected = list(expected_examples(data_dir, "train", CONFIGS["all"]))[:2]
    assert batch["S2L1C"].dtype == torch.int16 and batch["S2RGB"].dtype == torch.uint8
    assert batch["S1GRD"].dtype == torch.float16 and batch["S2L2A_cloud_mask"].dtype == torch.uint8
    for name in ("S2L1C", "S2L2A", "S2RGB", "S1GRD", "S2L1C_cloud_mask"):
        np.testing.assert_array_equal(batch[name].numpy(), np.stack([e[name] for e in expected]))
    np.testing.assert_array_equal(batch["S1GRD_time"].numpy(),
                                  np.stack([e["S1GRD_time"] for e in expected]).view(np.int64))
    prepared = load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="train", cache_dir=str(tmp_path))
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(prepared), 2, drop_last=False)
    arrow_batch = next(iter(torch.utils.data.DataLoader(prepared.with_format("arrow"), sampler=sampler,
                                                        batch_size=None, collate_fn=ssl4eos12.collate)))
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert arrow_batch[name].dtype == value.dtype
            assert torch.equal(arrow_batch[name].nan_to_num(), value.nan_to_num()), name
        else:
            assert arrow_batch[name] == value
