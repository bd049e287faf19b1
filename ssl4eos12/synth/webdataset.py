"""Generate look-alike data of the webdataset release: per-modality tars of per-location Zarr zips.

    ROOT/{train,val}_metadata.parquet
    ROOT/{train,val}/{S2L1C,S2L2A,S2RGB,S1GRD,NDVI,LULC,DEM}/ssl4eos12_shard_NNNNNN.tar

Each member ``<key>.zarr.zip`` is one location of one modality, written like the authors' files: xarray
``to_zarr`` (Zarr v2, consolidated, one chunk per timestamp, Blosc-LZ4) into a folder, zipped with stored
entries; the tars are written as webdataset's ``TarWriter`` writes them (``uname``/``gname`` "bigdata",
mode 0o444). The scenes come from the Zarr release's generator (:func:`ssl4eos12.synth.make_dataset`) with
what the release changed: the +1000 S2 offset removed, the timestamps in the ``time`` coordinate (int64
nanoseconds since the epoch, which the authors' loader reads raw as datetime64[ns]; no ``time_`` or
``sample_id``), NDVI (float32, may hold NaN), LULC (the scenes' land cover in patches of uint8 classes 0..9,
with the S2 timestamps and a static ``esri_original`` map) and DEM (float32 elevation, one timestamp with value 0, no date).
The member key ``ssl4eos12_{split}_seasonal_data_{i:07d}`` is not the location id held in ``sample``.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
import zarr

from ..constants import (
    S2_OFFSET,
    SPLIT_FOLDERS,
    WEBDATASET_MODALITIES,
    ZARR_ZIP_SUFFIX,
    shard_name,
    webdataset_metadata_path,
)
from . import BARE, CROP, FOREST, URBAN, WATER, ZIP_DATE_TIME, land_cover, make_dataset, make_locations, zarr_encoding

#: Sentinel-2 products: they share a location's timestamps (LULC carries them too).
_S2 = ("S2L1C", "S2L2A", "S2RGB")
#: Modalities derived from others: no product ids.
_DERIVED = ("NDVI", "LULC", "DEM")
#: What webdataset's TarWriter sets on every member.
_TAR_OWNER = "bigdata"
_TAR_MODE = 0o444
_TAR_MTIME = 1_771_459_200  # 2026-02-19, the release's last update (TarWriter uses the time of writing)
#: LULC's classes are not documented. synth takes Esri's 10 m land cover (what ``esri_original`` suggests: 1 water,
#: 2 trees, 4 flooded vegetation, 5 crops, 7 built area, 8 bare ground, 9 snow/ice, 10 clouds, 11 rangeland)
#: renumbered in order to 0..9 (0: no data), and maps each scene's own cover onto it.
_ESRI_OF_COVER = np.zeros(5, np.uint8)
_ESRI_OF_COVER[[WATER, FOREST, CROP, BARE, URBAN]] = [1, 2, 5, 8, 7]
_LULC_OF_ESRI = np.array([0, 1, 2, 0, 3, 4, 0, 5, 6, 7, 8, 9], np.uint8)


def synthesize_webdataset(
    out_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("train", "validation"),
    files: int = 2,
    samples: int = 4,
    size: int = 32,
    times: int = 4,
    modalities: tuple[str, ...] = WEBDATASET_MODALITIES,
    metadata: bool = True,
    seed: int = 0,
) -> Path:
    """Write a small webdataset-release tree under ``out_dir`` and return its path.

    ``files`` tars per split and modality, ``samples`` locations per tar; ``metadata`` writes the
    ``{split}_metadata.parquet`` files (``tar``, ``key``, ``sample``, ``center_lat``, ``center_lon``).
    """
    out = Path(out_dir)
    next_id = 0
    for split_index, split in enumerate(splits):
        folder = SPLIT_FOLDERS.get(split, split)
        rows: dict[str, list] = {"tar": [], "key": [], "sample": [], "center_lat": [], "center_lon": []}
        for shard_index in range(files):
            shard_seed = seed * 1_000_003 + split_index * 10_007 + shard_index
            rng = np.random.default_rng(shard_seed)
            locations = make_locations(rng, 1_000_000 + next_id, samples)
            keys = [f"ssl4eos12_{folder}_seasonal_data_{next_id + i + 1:07d}" for i in range(samples)]
            next_id += samples
            datasets = _modality_datasets(modalities, locations, times, size, shard_seed)
            name = shard_name(shard_index + 1)
            for modality, ds in datasets.items():
                members = ((f"{key}{ZARR_ZIP_SUFFIX}", location_zip(ds.isel(sample=i))) for i, key in enumerate(keys))
                write_tar(out / folder / modality / name, members)
            rows["tar"] += [name] * samples
            rows["key"] += keys
            rows["sample"] += locations.sample.tolist()
            rows["center_lat"] += locations.center_lat.tolist()
            rows["center_lon"] += locations.center_lon.tolist()
        if metadata:
            pq.write_table(pa.table(rows), out / webdataset_metadata_path(folder))
    return out


def _modality_datasets(modalities, locations, times: int, size: int, seed: int) -> dict[str, xr.Dataset]:
    """One shard's ``xarray.Dataset`` per modality (first axis: sample), as the release's values are."""
    out = {}
    s2_times = None
    for index, modality in enumerate(modalities):
        base = modality if modality not in ("LULC", "DEM") else "NDVI"
        num_times = 1 if modality == "DEM" else times
        shared = s2_times if modality in (*_S2, "LULC") else None
        ds = make_dataset(base, locations, num_times=num_times, size=size, seed=seed * 31 + index, times=shared)
        if modality in _S2 and s2_times is None:
            s2_times = ds["time_"].values
        bands = ds["bands"]
        if modality in ("S2L1C", "S2L2A"):
            ds["bands"] = bands - np.int16(S2_OFFSET)  # the release removed the offset
        elif modality == "NDVI":
            values = bands.values.copy()
            values[0, 0, 0, 0, :2] = np.nan  # no-data pixels, as where S2 has none
            ds["bands"] = bands.copy(data=values)
        elif modality == "LULC":  # the land cover the other modalities show, one map for every timestamp
            esri = _ESRI_OF_COVER[land_cover(locations, size)]
            lulc = np.broadcast_to(_LULC_OF_ESRI[esri][:, None, None], bands.shape)
            ds["bands"] = bands.copy(data=np.ascontiguousarray(lulc))
            ds["esri_original"] = (("sample", "y", "x"), esri)
        elif modality == "DEM":
            ds["bands"] = bands.copy(data=(bands.values * 2000 + 500).astype(np.float32))
            ds["time_"] = ds["time_"].copy(data=np.zeros(ds["time_"].shape, "datetime64[ns]"))  # time 0: no date
        if modality in _DERIVED:
            ds = ds.drop_vars("file_id").assign_coords(band=[modality])
        out[modality] = ds
    return out


def location_zip(location: xr.Dataset) -> bytes:
    """One location's dataset as a member: timestamps in the ``time`` coordinate, then a Zarr v2 zip."""
    times = location["time_"].values
    return zarr_zip_bytes(location.drop_vars(["time_", "sample_id"]).assign_coords(time=times))


def zarr_zip_bytes(ds: xr.Dataset, encoding: dict | None = None) -> bytes:
    """``ds`` as a member's bytes: a consolidated Zarr v2 zip, one chunk per timestamp, Blosc-LZ4, every chunk
    stored, timestamps as int64 nanoseconds since the epoch, entries stored and sorted.

    As :func:`ssl4eos12.synth.write_zarr_zip` writes a file, through an in-memory store: members are small and
    many. ``encoding``: per-variable settings on top of those (filters, fill values, ``write_empty_chunks``...).
    """
    encoding = zarr_encoding(ds, encoding)
    for name, variable in ds.variables.items():
        if "time" in variable.dims:
            encoding[name]["chunks"] = tuple(1 if d == "time" else n for d, n in zip(variable.dims, variable.shape))
    entries: dict = {}
    ds.to_zarr(zarr.storage.MemoryStore(entries), mode="w", zarr_format=2, consolidated=True, encoding=encoding)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(entries):
            zf.writestr(zipfile.ZipInfo(key, date_time=ZIP_DATE_TIME), entries[key].to_bytes(), zipfile.ZIP_STORED)
    return buffer.getvalue()


def write_tar(path: Path, members) -> None:
    """Write ``(name, bytes)`` members as webdataset's TarWriter does, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with tarfile.open(partial, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = _TAR_MODE
            info.uname = info.gname = _TAR_OWNER
            tar.addfile(info, io.BytesIO(data))
    os.replace(partial, path)
