"""Shared fixtures. Every fixture is generated (``ssl4eos12.synth``); nothing is downloaded.

The Hugging Face caches point into a temporary folder before ``datasets``/``huggingface_hub`` are
imported (they read these variables at import time), so tests never touch ``~/.cache`` or the real Hub.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

_CACHE_ROOT = tempfile.mkdtemp(prefix="ssl4eos12-tests-")
os.environ["HF_HOME"] = os.path.join(_CACHE_ROOT, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE_ROOT, "datasets")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ.pop("HF_TOKEN", None)

import numpy as np
import pytest
import xarray as xr
import zarr

from ssl4eos12.synth import synthesize


def pytest_sessionfinish(session, exitstatus):
    """The caches (prepared datasets, Hub downloads) go with the run; pytest's own temporary folders are kept
    only for failed tests (``tmp_path_retention_policy`` in pyproject.toml)."""
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Both splits, all four modalities, 2 files x 3 samples x 16 px per split."""
    return synthesize(tmp_path_factory.mktemp("ssl4eo-s12"), files=2, samples=3, size=16)


@pytest.fixture(scope="session")
def odd_data_dir(tmp_path_factory):
    """Fewer samples per file than the usual 64 and a different size, times and an extra NDVI folder."""
    return synthesize(
        tmp_path_factory.mktemp("odd"), splits=("validation",), files=3, samples=5, size=12, times=3,
        modalities=("S2L2A", "S1GRD", "NDVI"), seed=7,
    )


@pytest.fixture(autouse=True)
def _forget_servers():
    """A test's servers are forgotten after it (what each did with Range requests): a later test's server may get
    the same port."""
    yield
    remote = sys.modules.get("ssl4eos12.sources.remote")
    if remote is not None:
        remote.forget_servers()


def open_with_xarray(path) -> xr.Dataset:
    """The reference reader: what xarray reads from a file, fully loaded."""
    with zarr.storage.ZipStore(path, mode="r") as store:
        return xr.open_zarr(store, consolidated=True).load()


def assert_identical(actual, expected, where: str = "") -> None:
    """Value and dtype equal; NaN equals NaN (S1 patches have no-data pixels)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    equal_nan = actual.dtype.kind in "fc"
    assert np.array_equal(actual, expected, equal_nan=equal_nan), f"{where}: values differ"


#: Uncompressed bytes per shard for ``converted_dir``: one file per S2L1C/S2L2A shard, the other configs in one.
SMALL_SHARD_SIZE = 100_000


@pytest.fixture(scope="session")
def converted_dir(data_dir, tmp_path_factory):
    """``data_dir`` converted to Arrow shards, manifest and card (the Hub repository); do not modify it."""
    from ssl4eos12.publish import convert

    out = tmp_path_factory.mktemp("published")
    convert(data_dir, out, workers=1, max_shard_size=SMALL_SHARD_SIZE)
    return out


def builder_rows(data_dir, config: str, split: str) -> list[dict]:
    """The builder's examples, streamed: native-dtype arrays (fixed-length lists of numbers as arrays too)."""
    import datasets

    import ssl4eos12  # noqa: F401 - registers the builder

    streamed = datasets.load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split, streaming=True)
    return [
        {name: np.asarray(value) if isinstance(value, list) and value and not isinstance(value[0], str) else value
         for name, value in example.items()}
        for example in streamed
    ]


def arrow_rows(dataset) -> list[dict]:
    """Rows of a ``Dataset`` or ``IterableDataset`` through Arrow, so dtypes stay native (no formatter upcasts)."""
    import datasets
    import pyarrow as pa

    from ssl4eos12.torch import arrow_to_numpy

    if isinstance(dataset, datasets.IterableDataset):
        table = pa.concat_tables(list(dataset.with_format("arrow").iter(batch_size=4)))
    else:
        table = dataset.with_format("arrow")[:]
    columns = arrow_to_numpy(table)
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def traced_peak(examples) -> int:
    """Peak bytes Python allocates while ``examples`` is iterated to the end (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        for _ in examples:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def counting_reuse(empty, reused: list):
    """``ArrayPool.empty`` that also appends to ``reused``, per array it hands out, whether its memory is a buffer
    the pool held before (ids: holding the buffers would keep them from being reused)."""
    def counted(self, shape, dtype):
        before = {id(old) for old in self.buffers}
        array = empty(self, shape, dtype)
        reused.append(id(array.base) in before)
        return array
    return counted
