"""Each kind of bad input gets one clear error naming the file and the problem; skipping is opt-in and counted."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset

import ssl4eos12
from ssl4eos12.synth import make_dataset, make_locations, synthesize, write_zarr_zip

FIRST = "ssl4eos12_train_seasonal_data_000001.zarr.zip"
SECOND = "ssl4eos12_train_seasonal_data_000002.zarr.zip"


@pytest.fixture
def root(tmp_path):
    return synthesize(tmp_path / "data", splits=("train",), files=2, samples=2, size=8,
                      modalities=("S2L2A", "S1GRD"))


def stream(root, config="all", **kwargs):
    kwargs.setdefault("modalities", ["S2L2A", "S1GRD"] if config == "all" else None)
    return list(load_dataset("ssl4eos12", config, data_dir=str(root), split="train", streaming=True, **kwargs))


def rewrite(root: Path, modality: str, name: str, change) -> Path:
    """Rewrite one file of ``root`` with ``change(dataset)`` applied, in the real format."""
    path = root / "train" / modality / name
    with zarr_zip(path) as ds:
        ds = change(ds.load())
    write_zarr_zip(ds, path)
    return path


def zarr_zip(path):
    import xarray as xr
    import zarr

    class _Open:
        def __enter__(self):
            self.store = zarr.storage.ZipStore(path, mode="r")
            return xr.open_zarr(self.store)

        def __exit__(self, *exc):
            self.store.close()

    return _Open()


def assert_file_error(root, match, path, **kwargs):
    with pytest.raises(ssl4eos12.SSL4EOS12FileError, match=match) as info:
        stream(root, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def test_truncated_zip(root):
    path = root / "train" / "S1GRD" / SECOND
    path.write_bytes(path.read_bytes()[:4000])
    assert_file_error(root, "truncated or corrupt", path)


def test_corrupt_chunk_is_caught_by_the_zip_crc(root):
    path = root / "train" / "S2L2A" / FIRST
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("bands/0.2.0.0.0")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 50] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_file_error(root, "cannot read data.*CRC", path)


def test_not_a_zarr_store(root):
    path = root / "train" / "S1GRD" / SECOND
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert_file_error(root, "not a consolidated Zarr v2 store", path)


def test_missing_variable(root):
    path = rewrite(root, "S2L2A", SECOND, lambda ds: ds.drop_vars("crs"))
    assert_file_error(root, "missing variable.*crs", path)


def test_wrong_dtype(root):
    path = rewrite(root, "S2L2A", SECOND, lambda ds: ds.assign(bands=ds.bands.astype("float32")))
    assert_file_error(root, "bands has dtype float32, expected int16", path)


def test_wrong_shape(root):
    path = rewrite(root, "S2L2A", SECOND, lambda ds: ds.isel(x=slice(0, 6)))
    assert_file_error(root, "layout .* differs", path)


def test_wrong_dims(root):
    path = rewrite(root, "S1GRD", SECOND, lambda ds: ds.assign(crs=ds.crs.expand_dims(time=ds.time).transpose()))
    assert_file_error(root, "crs has dims", path)


def test_sample_id_must_match_sample(root):
    def break_ids(ds):
        ids = ds.sample_id.values.copy()
        ids[1, 2] = "9999999_2"
        return ds.assign(sample_id=(ds.sample_id.dims, ids))

    path = rewrite(root, "S1GRD", FIRST, break_ids)
    error = assert_file_error(root, "sample_id does not match", path)
    assert "0000001" in str(error)


def test_missing_modality_file(root):
    path = root / "train" / "S1GRD" / SECOND
    path.unlink()
    assert_file_error(root, "file not found", path)


def test_modalities_disagree_on_samples(root):
    def other_locations(ds):
        locations = make_locations(np.random.default_rng(1), first_id=500, num_samples=ds.sizes["sample"])
        return make_dataset("S1GRD", locations, num_times=ds.sizes["time"], size=ds.sizes["x"])

    rewrite(root, "S1GRD", SECOND, other_locations)
    with pytest.raises(ssl4eos12.SSL4EOS12FileError, match="disagree on the samples") as info:
        stream(root)
    message = str(info.value)
    assert SECOND in message and "0000500" in message and "0000002" in message


def test_modalities_disagree_on_crs(root):
    def shift_crs(ds):
        crs = ds.crs.values.copy()
        crs[0] += 1
        return ds.assign(crs=("sample", crs))

    rewrite(root, "S1GRD", SECOND, shift_crs)
    with pytest.raises(ssl4eos12.SSL4EOS12FileError, match="disagree on crs of sample.*0000002") as info:
        stream(root)
    assert SECOND in str(info.value)


def test_samples_in_another_order_are_joined(root):
    """Joined on sample, not on position: a reordered modality still lines up."""
    rewrite(root, "S1GRD", SECOND, lambda ds: ds.isel(sample=[1, 0]))
    rows = stream(root)
    with zarr_zip(root / "train" / "S1GRD" / SECOND) as s1:
        by_sample = {str(s): s1.bands.values[i] for i, s in enumerate(s1["sample"].values)}
    for row in rows[2:]:
        np.testing.assert_array_equal(row["S1GRD"], by_sample[row["sample"]])


def test_empty_or_unknown_data_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="no SSL4EO-S12 files"):
        load_dataset("ssl4eos12", "S2L2A", data_dir=str(tmp_path / "empty"), split="train", streaming=True)
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="does not exist"):
        load_dataset("ssl4eos12", "S2L2A", data_dir=str(tmp_path / "nowhere"), split="train", streaming=True)


def test_skip_is_opt_in_warned_and_counted(root):
    bad = root / "train" / "S1GRD" / FIRST
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(ssl4eos12.SSL4EOS12FileError):
        stream(root)
    with pytest.warns(ssl4eos12.SSL4EOS12BadFileWarning, match="truncated or corrupt") as record:
        rows = stream(root, on_bad_file="skip")
    skipped = [w for w in record if issubclass(w.category, ssl4eos12.SSL4EOS12BadFileWarning)]
    assert len(skipped) == 1 and str(bad) in str(skipped[0].message)
    assert [row["file"] for row in rows] == [SECOND, SECOND]


def test_bad_on_bad_file_value(root):
    with pytest.raises(ValueError, match="on_bad_file"):
        stream(root, on_bad_file="ignore")
