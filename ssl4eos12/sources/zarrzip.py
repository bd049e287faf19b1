"""Reading SSL4EO-S12 Zarr v2 zip files with zarr 3 and xarray, locally or over fsspec.

``xr.open_zarr("file.zarr.zip")`` fails with zarr 3 (the path is taken for a directory), so local files
are opened through ``zarr.storage.ZipStore`` and remote ones (``http(s)://``, ``hf://``, any fsspec URL)
through fsspec's zip file system over the remote file, wrapped in ``zarr.storage.FsspecStore``.
Remote files are opened without a read-ahead cache: zarr reads each zip member (one chunk) whole, so a
cache would only fetch bytes a second time.

Values are decoded by xarray, so what this module returns is by construction what xarray reads from
the file; the big arrays (``bands``, ``cloud_mask``) are decoded by :mod:`ssl4eos12.fastzip`, which only
takes arrays that xarray returns exactly as stored. Every problem with a file surfaces as one :class:`SSL4EOS12FileError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import zipfile
from collections.abc import Iterator

import numpy as np
import xarray as xr
import zarr
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.zip import ZipFileSystem

from ..constants import BANDS_DTYPE, CLOUD_MASKED
from ..errors import SSL4EOS12FileError
from . import fastzip
from .base import Layout, ModalityFile
from .failures import remote_cause, remote_failure_message
from .remote import FetchedFile, FetchOptions, RemoteFileError, fetch, is_remote, open_random_access, serves_ranges

#: Variables every modality's file has, with their dimensions (``bands`` may have any trailing dims
#: for modalities beyond the four).
PER_SAMPLE_VARIABLES: dict[str, tuple[str, ...]] = {
    "center_lat": ("sample",),
    "center_lon": ("sample",),
    "crs": ("sample",),
    "file_id": ("sample", "time"),
    "sample_id": ("sample", "time"),
    "time_": ("sample", "time"),
    "x_": ("sample", "x"),
    "y_": ("sample", "y"),
}
BANDS_DIMS = ("sample", "time", "band", "y", "x")
#: Variables read by :mod:`ssl4eos12.fastzip` where they can be (the others are tiny).
_DIRECT_VARIABLES = ("bands", "cloud_mask")
#: ``encoding`` key of a dataset from :func:`open_zarr_zip`: the zip as :func:`fastzip.read_arrays` reads it.
ZIP_SOURCE = "ssl4eos12_zip_source"
CLOUD_MASK_DIMS = ("sample", "time", "y", "x")
#: Dtype kind each variable must have ("U": fixed-width unicode, "M": datetime64).
EXPECTED_DTYPES: dict[str, str] = {
    "center_lat": "float64", "center_lon": "float64", "crs": "int64", "file_id": "U", "sample_id": "U",
    "time_": "datetime64[ns]", "x_": "float64", "y_": "float64", "cloud_mask": "uint8",
}



@contextlib.contextmanager
def open_zarr_zip(url: str, download_config=None, whole: bool = True, data: bytes | None = None,
                  fetched: FetchedFile | None = None, options: FetchOptions | None = None) -> Iterator[xr.Dataset]:
    """Open a Zarr v2 zip lazily as an ``xarray.Dataset`` (no dask), closing everything on exit.

    ``whole``: a remote file is fetched whole (:func:`fetch_zip`, to read all of it), else piecewise (by range
    requests; whole all the same from a server that ignores them).
    ``data``: the zip's bytes, already read (a tar member); ``url`` then only names it in errors.
    ``fetched``: the remote file, fetched already (it is closed on exit).
    """
    with contextlib.ExitStack() as stack:
        if fetched is not None:
            stack.enter_context(fetched)
        elif data is None and is_remote(url) and (whole or not serves_ranges(url)):
            fetched = stack.enter_context(fetch_zip(url, download_config, options))
        store = None
        try:
            store, source = _open_store(url, download_config, stack, data if fetched is None else fetched, options)
            dataset = xr.open_zarr(store, consolidated=True, chunks=None, zarr_format=2)
            dataset.encoding[ZIP_SOURCE] = source
        except FileNotFoundError as err:
            if store is None:
                raise SSL4EOS12FileError(url, "file not found") from err
            raise SSL4EOS12FileError(url, f"not a consolidated Zarr v2 store (no {err})") from err
        except zipfile.BadZipFile as err:
            raise SSL4EOS12FileError(url, f"not a readable zip file, truncated or corrupt ({err})") from err
        except ConnectionError as err:  # what datasets' read retries raise once they are exhausted
            raise _unreachable(url, err) from err
        except Exception as err:  # zarr/xarray raise many types for "this is not a consolidated Zarr v2 store"
            cause = remote_cause(err) if is_remote(url) else None
            if cause is not None:  # not the file's fault: the server's (no Range support, 401/403, offline)
                raise SSL4EOS12FileError(url, remote_failure_message(url, err).removeprefix(f"{url}: ")) from None
            raise SSL4EOS12FileError(url, f"not a consolidated Zarr v2 store ({type(err).__name__}: {err})") from err
        stack.callback(dataset.close)
        yield dataset


def fetch_zip(url: str, download_config=None, options: FetchOptions | None = None) -> FetchedFile:
    """Fetch a remote zip whole (:func:`~ssl4eos12.sources.remote.fetch`); every failure is one
    :class:`SSL4EOS12FileError` naming the file. A cancellation (:class:`~ssl4eos12.prefetch.Cancelled`)
    passes through."""
    try:
        return fetch(url, download_config, options)
    except FileNotFoundError as err:
        raise SSL4EOS12FileError(url, "file not found") from err
    except PermissionError as err:  # 401/403, said as failures.py says it for every client
        message = remote_failure_message(url, err)
        problem = message.removeprefix(f"{url}: ") if message else f"access denied ({err})"
        raise SSL4EOS12FileError(url, problem) from err
    except ConnectionError as err:
        raise _unreachable(url, err) from err
    except RemoteFileError as err:
        raise SSL4EOS12FileError(url, f"could not be fetched ({err})") from err


def _open_store(url: str, download_config, stack: contextlib.ExitStack, data: bytes | FetchedFile | None = None,
                options: FetchOptions | None = None):
    """The zarr store of a zip, and the zip for :func:`fastzip.read_arrays` (a path, a file in memory or None).

    ``data``: the zip in memory, as bytes (a tar member) or fetched (:class:`FetchedFile`, closed by the caller).
    """
    if data is not None:
        # a BytesIO entered: its memory is freed on exit, not at the next gc
        buffer = data if isinstance(data, FetchedFile) else stack.enter_context(io.BytesIO(data))
        store = _BufferZipStore(buffer)
        stack.callback(lambda: store._is_open and store.close())
        return store, buffer
    if is_remote(url):  # read piecewise: the metadata, or a few timestamps' chunks
        remote_file = stack.enter_context(open_random_access(url, download_config, options))
        zip_fs = ZipFileSystem(fo=remote_file, skip_instance_cache=True)
        stack.callback(zip_fs.close)
        # Build the listing now, in this thread: the async wrapper reads from several threads, and fsspec fills
        # the listing lazily in two steps, so a thread could see it half-built and miss .zmetadata (seen).
        zip_fs.ls("", detail=False)
        store = zarr.storage.FsspecStore(AsyncFileSystemWrapper(zip_fs, asynchronous=True, skip_instance_cache=True), read_only=True, path="")
        return store, None
    path = url.removeprefix("file://")
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    store = zarr.storage.ZipStore(path, mode="r")
    # ZipStore opens its zip on first access, and cannot close one it never opened
    stack.callback(lambda: store._is_open and store.close())
    return store, path


class _BufferZipStore(zarr.storage.ZipStore):
    """A read-only ``ZipStore`` over a zip held in memory (a tar member, a fetched file): zarr's own zip reading,
    no threads.

    fsspec's zip file system would do too, but its objects form reference cycles that keep each member's
    buffer alive until a garbage collection, and it fills its listing lazily from several threads (a thread
    could miss ``.zmetadata``: seen).
    """

    def __init__(self, buffer: io.BytesIO | FetchedFile):
        super().__init__("<memory>", mode="r")
        self._buffer = buffer

    def _sync_open(self) -> None:
        self._lock = threading.RLock()
        self._zf = zipfile.ZipFile(self._buffer, mode="r")
        self._is_open = True


def _unreachable(url: str, err: ConnectionError) -> SSL4EOS12FileError:
    return SSL4EOS12FileError(url, f"could not be read from the server, retries exhausted ({err})")


def layout_of(url: str, modality: str, dataset: xr.Dataset) -> Layout:
    """Check the variables, dims and dtypes of an open file and return its layout."""
    required = dict(PER_SAMPLE_VARIABLES, bands=BANDS_DIMS)
    if modality in CLOUD_MASKED:
        required["cloud_mask"] = CLOUD_MASK_DIMS
    missing = sorted(set(required) - set(dataset.variables))
    if missing:
        raise SSL4EOS12FileError(url, f"missing variable(s) {', '.join(missing)} for modality {modality}")
    for name, dims in required.items():
        actual = dataset[name].dims
        if name == "bands" and modality not in BANDS_DTYPE:
            ok = actual[:2] == ("sample", "time") and len(actual) <= 6
        else:
            ok = actual == dims
        if not ok:
            raise SSL4EOS12FileError(url, f"variable {name} has dims {actual}, expected {dims}")
    for name, expected in EXPECTED_DTYPES.items():
        if name in dataset.variables and not _dtype_matches(dataset[name].dtype, expected):
            raise SSL4EOS12FileError(url, f"variable {name} has dtype {dataset[name].dtype}, expected {expected}")
    bands = dataset["bands"]
    if modality in BANDS_DTYPE and bands.dtype != np.dtype(BANDS_DTYPE[modality]):
        raise SSL4EOS12FileError(url, f"bands has dtype {bands.dtype}, expected {BANDS_DTYPE[modality]}")
    band_names = tuple(str(b) for b in dataset["band"].values) if "band" in dataset.coords else ()
    return Layout(
        modality=modality,
        num_times=dataset.sizes["time"],
        band_names=band_names,
        bands_shape=tuple(bands.shape[2:]),
        bands_dtype=str(bands.dtype),
        height=dataset.sizes.get("y", 0),
        width=dataset.sizes.get("x", 0),
        has_cloud_mask="cloud_mask" in dataset.variables,
    )


def _dtype_matches(dtype: np.dtype, expected: str) -> bool:
    return dtype.kind == expected if len(expected) == 1 else dtype == np.dtype(expected)


def probe_layout_and_size(url: str, modality: str, download_config=None) -> tuple[Layout, int]:
    """Layout and number of samples (locations) of a file, from its metadata (and coordinates) only."""
    with open_zarr_zip(url, download_config, whole=False) as dataset:
        return layout_of(url, modality, dataset), dataset.sizes["sample"]


def read_modality_file(
    url: str, modality: str, download_config=None, expected: Layout | None = None, variables=None,
    fetched: FetchedFile | None = None, options: FetchOptions | None = None,
) -> ModalityFile:
    """Read and decode the variables of one file (default: all), checking it against the ``expected`` layout.

    ``fetched``: the remote file, fetched already (:func:`fetch_zip`; closed here). Without it a remote file
    is fetched now, unless asked for a subset without ``bands``: then it is read piecewise (the other
    variables are a few small zip entries, not worth fetching the whole file for).
    """
    with open_zarr_zip(url, download_config, whole=wants_whole_file(variables), fetched=fetched,
                       options=options) as dataset:
        layout = layout_of(url, modality, dataset)
        if expected is not None and layout != expected:
            raise SSL4EOS12FileError(url, f"layout {_describe(layout)} differs from the dataset's {_describe(expected)}")
        if variables is None:
            names = ["bands", *PER_SAMPLE_VARIABLES] + (["cloud_mask"] if layout.has_cloud_mask else [])
        else:
            names = [name for name in variables if name != "cloud_mask" or layout.has_cloud_mask]
        try:
            # the big arrays: decoded straight from the page cache or fetched bytes (fastzip); the rest: xarray
            source = dataset.encoding.get(ZIP_SOURCE)
            direct = {} if source is None else fastzip.read_arrays(source, [n for n in _DIRECT_VARIABLES if n in names])
            values = {name: direct[name] if name in direct else dataset[name].values for name in names}
        except ConnectionError as err:
            raise _unreachable(url, err) from err
        except Exception as err:  # a chunk that does not decompress, a CRC error
            raise SSL4EOS12FileError(url, f"cannot read data ({type(err).__name__}: {err})") from err
        values["sample"] = dataset["sample"].values.astype(str)
    if "sample_id" in values:
        _check_sample_ids(url, values["sample"], values["sample_id"])
    return ModalityFile(layout, values)


def read_modality_times(
    url: str, modality: str, times: list[int], download_config=None, expected: Layout | None = None,
) -> ModalityFile:
    """Every variable of one file, the big ones (``bands``, ``cloud_mask``) only at the time indices ``times``.

    Each timestamp is one chunk, one zip entry, of each big variable: read piecewise, a remote file sends only
    those entries (range reads) and its small variables. The big arrays keep their full shape so that rows and
    time indices mean what they mean in the file; the timestamps not read hold zeros and must not be used.
    """
    with open_zarr_zip(url, download_config, whole=False) as dataset:
        layout = layout_of(url, modality, dataset)
        if expected is not None and layout != expected:
            raise SSL4EOS12FileError(url, f"layout {_describe(layout)} differs from the dataset's {_describe(expected)}")
        try:
            values = {name: dataset[name].values for name in PER_SAMPLE_VARIABLES}
            for name in ["bands"] + (["cloud_mask"] if layout.has_cloud_mask else []):
                variable = dataset[name]
                values[name] = np.zeros(variable.shape, variable.dtype)
                values[name][:, times] = variable.isel(time=times).values  # only these chunks are read
        except ConnectionError as err:
            raise _unreachable(url, err) from err
        except Exception as err:  # a chunk that does not decompress, a CRC error
            raise SSL4EOS12FileError(url, f"cannot read data ({type(err).__name__}: {err})") from err
        values["sample"] = dataset["sample"].values.astype(str)
    _check_sample_ids(url, values["sample"], values["sample_id"])
    return ModalityFile(layout, values)


def _describe(layout: Layout) -> str:
    return (f"(times={layout.num_times}, bands={layout.bands_shape}, dtype={layout.bands_dtype}, "
            f"cloud_mask={layout.has_cloud_mask})")


def _check_sample_ids(url: str, samples: np.ndarray, sample_ids: np.ndarray) -> None:
    """``sample_id`` is derived data: it must read ``f"{sample}_{t}"``; anything else means a broken file."""
    expected = np.char.add(np.char.add(samples[:, None].astype(str), "_"), np.arange(sample_ids.shape[1]).astype(str))
    bad = np.nonzero((sample_ids != expected).any(axis=1))[0]
    if bad.size:
        raise SSL4EOS12FileError(
            url, f"sample_id does not match sample for sample(s) {', '.join(samples[bad][:5])}"
        )


def wants_whole_file(variables) -> bool:
    """Whether reading ``variables`` (``None``: all) of a remote file is worth fetching all of it."""
    return variables is None or "bands" in variables
