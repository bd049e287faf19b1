"""Shared fixtures. Every fixture is generated (``ssl4eos12.synth``); nothing is downloaded.

The Hugging Face caches point into a temporary folder before ``datasets``/``huggingface_hub`` are
imported (they read these variables at import time), so tests never touch ``~/.cache`` or the real Hub.
"""

from __future__ import annotations

import os
import tempfile

_CACHE_ROOT = tempfile.mkdtemp(prefix="ssl4eos12-tests-")
os.environ["HF_HOME"] = os.path.join(_CACHE_ROOT, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE_ROOT, "datasets")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ.pop("HF_TOKEN", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
import zarr  # noqa: E402

from ssl4eos12.synth import synthesize  # noqa: E402


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
