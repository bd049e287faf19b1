"""Generate sample data in the exact on-disk format of SSL4EO-S12 v1.1.

The real data cannot be downloaded everywhere (4 TB, and CI has no internet), so every test fixture and
the README's demo come from here. The files match the real ones in every respect the package relies on:
Zarr format 2 inside a zip with stored (not deflated) entries and no duplicate entries, consolidated
metadata, one chunk per timestamp holding all samples of the file, Blosc-LZ4, fixed-width unicode
strings, CF-encoded ``datetime64[ns]`` timestamps, the same locations in the same order in every
modality, and the ``splits/`` lists. Values are random but in realistic ranges per modality.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from numcodecs import Blosc

from ..constants import BANDS, CLOUD_MASKED, MODALITIES, SPLIT_FOLDERS, file_name, split_list_path

#: The compressor of the real files (xarray's default for zarr v2 at the time they were written).
COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)

#: Modalities beyond the four that the generator can also write, to exercise feature inference.
EXTRA_MODALITIES: dict[str, tuple[str, tuple[str, ...]]] = {"NDVI": ("float32", ("NDVI",))}

PIXEL_SIZE_M = 10.0
SEASON_START = np.datetime64("2020-03-01T00:00:00", "ns")
SEASON_LENGTH = np.timedelta64(91, "D")


@dataclass(frozen=True)
class Locations:
    """The locations of one file: what every modality of that file shares."""

    sample: np.ndarray  # <U7 ids
    center_lat: np.ndarray
    center_lon: np.ndarray
    crs: np.ndarray
    easting: np.ndarray  # upper-left corner, metres
    northing: np.ndarray


def make_locations(rng: np.random.Generator, first_id: int, num_samples: int) -> Locations:
    lat = rng.uniform(-56.0, 72.0, num_samples)
    lon = rng.uniform(-180.0, 180.0, num_samples)
    zone = np.floor((lon + 180.0) / 6.0).astype(np.int64) + 1
    crs = np.where(lat >= 0, 32600, 32700) + zone
    return Locations(
        sample=np.array([f"{first_id + i:07d}" for i in range(num_samples)], dtype="<U7"),
        center_lat=lat,
        center_lon=lon,
        crs=crs.astype(np.int64),
        easting=rng.uniform(200_000.0, 800_000.0, num_samples).round(),
        northing=rng.uniform(100_000.0, 9_000_000.0, num_samples).round(),
    )


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
    """Blocky low-frequency noise plus fine noise: compresses about like real imagery does."""
    block = 8
    coarse = rng.random(shape + (-(-size // block), -(-size // block)), dtype=np.float32)
    field = np.repeat(np.repeat(coarse, block, axis=-2), block, axis=-1)[..., :size, :size]
    return field + rng.random(field.shape, dtype=np.float32) * 0.05


def _band_values(modality: str, rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
    field = _smooth_field(rng, shape, size)
    if modality in ("S2L1C", "S2L2A"):
        return (1000 + field * 5000).astype(np.int16)  # +1000 offset, reflectance * 10,000
    if modality == "S2RGB":
        return (field * 255).astype(np.uint8)
    if modality == "S1GRD":
        values = (-30.0 + field * 28.0).astype(np.float16)  # dB
        values[0, 0, :, 0, :3] = np.nan  # real S1 patches have no-data pixels at swath edges
        return values
    dtype, _ = EXTRA_MODALITIES[modality]
    return (field * 2 - 1).astype(dtype)


def _timestamps(rng: np.random.Generator, num_samples: int, num_times: int, sentinel1: bool) -> np.ndarray:
    offsets = rng.integers(0, 80 * 86_400, (num_samples, num_times)) * np.timedelta64(1, "s")
    # Sentinel-1 passes at dusk, Sentinel-2 in the morning: the two never share a timestamp.
    hour = np.timedelta64(18 if sentinel1 else 10, "h")
    return (SEASON_START + np.arange(num_times) * SEASON_LENGTH + offsets + hour).astype("datetime64[ns]")


def _product_ids(times: np.ndarray, crs: np.ndarray, sentinel1: bool) -> np.ndarray:
    stamps = np.datetime_as_string(times, unit="s")
    stamps = np.char.replace(np.char.replace(stamps, "-", ""), ":", "")
    if sentinel1:
        ids = [[f"S1A_IW_GRDH_1SDV_{s}_{s}_0{int(c) % 100000:05d}_0{int(c) % 99999:05X}_ABCD" for s in row]
               for row, c in zip(stamps, crs)]
        return np.array(ids, dtype="<U67")
    ids = [[f"{s}_{s}_T{int(c) % 100:02d}{'ABCDEFGH'[int(c) % 8]}XH" for s in row] for row, c in zip(stamps, crs)]
    return np.array(ids, dtype="<U38")


def make_dataset(
    modality: str, locations: Locations, *, num_times: int = 4, size: int = 264, seed: int = 0,
    times: np.ndarray | None = None,
) -> xr.Dataset:
    """One file's ``xarray.Dataset`` for ``modality``, as the authors' pipeline writes it."""
    rng = np.random.default_rng(seed)
    num_samples = len(locations.sample)
    band_names = BANDS.get(modality) or EXTRA_MODALITIES[modality][1]
    sentinel1 = modality == "S1GRD"
    if times is None:
        times = _timestamps(rng, num_samples, num_times, sentinel1)
    pixel = np.arange(size)
    data_vars: dict[str, tuple] = {
        "bands": (("sample", "time", "band", "y", "x"),
                  _band_values(modality, rng, (num_samples, num_times, len(band_names)), size)),
        "center_lat": (("sample",), locations.center_lat),
        "center_lon": (("sample",), locations.center_lon),
        "crs": (("sample",), locations.crs),
        "file_id": (("sample", "time"), _product_ids(times, locations.crs, sentinel1)),
        "sample_id": (("sample", "time"),
                      np.array([[f"{s}_{t}" for t in range(num_times)] for s in locations.sample], dtype="<U9")),
        "time_": (("sample", "time"), times),
        "x_": (("sample", "x"), locations.easting[:, None] + PIXEL_SIZE_M * (pixel + 0.5)),
        "y_": (("sample", "y"), locations.northing[:, None] - PIXEL_SIZE_M * (pixel + 0.5)),
    }
    if modality in CLOUD_MASKED:
        mask = (_smooth_field(rng, (num_samples, num_times), size) * 4).astype(np.uint8)
        data_vars["cloud_mask"] = (("sample", "time", "y", "x"), np.minimum(mask, 3))
    coords = {
        "band": np.array(band_names),
        "sample": locations.sample,
        "time": np.arange(num_times, dtype=np.int64),
        "x": pixel.astype(np.int64),
        "y": pixel.astype(np.int64),
    }
    return xr.Dataset(data_vars, coords=coords)


def write_zarr_zip(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` like the real files: Zarr v2, one chunk per timestamp, Blosc-LZ4, stored zip entries.

    Writing through a ``ZipStore`` would leave duplicate zip entries (zarr rewrites metadata), so the
    store is written as a directory first and then zipped, atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "time" in ds.dims:
        ds = ds.chunk({"time": 1})
    encoding = {name: {"compressors": [COMPRESSOR]} for name in ds.variables}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") as tmp:
        store_dir = Path(tmp) / "store.zarr"
        ds.to_zarr(store_dir, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
        partial = Path(tmp) / "partial.zip"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for member in sorted(p for p in store_dir.rglob("*") if p.is_file()):
                zf.write(member, member.relative_to(store_dir).as_posix())
        os.replace(partial, path)


def synthesize(
    out_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("train", "validation"),
    files: int = 2,
    samples: int = 8,
    size: int = 32,
    times: int = 4,
    modalities: tuple[str, ...] = MODALITIES,
    split_lists: bool = True,
    seed: int = 0,
    progress=None,
) -> Path:
    """Write a small SSL4EO-S12 v1.1 tree under ``out_dir`` and return its path.

    ``modalities`` may include the extra modalities of :data:`EXTRA_MODALITIES` (e.g. ``"NDVI"``).
    S2L1C, S2L2A and S2RGB of a location share timestamps and product ids (they come from the same
    Sentinel-2 product); S1GRD has its own. ``progress``, if given, is called with the path of each file written.
    """
    out = Path(out_dir)
    next_id = 0
    for split_index, split in enumerate(splits):
        folder = SPLIT_FOLDERS.get(split, split)
        names = [file_name(folder, i + 1) for i in range(files)]
        for file_index, name in enumerate(names):
            file_seed = seed * 1_000_003 + split_index * 10_007 + file_index
            rng = np.random.default_rng(file_seed)
            locations = make_locations(rng, next_id, samples)
            next_id += samples
            s2_times = _timestamps(rng, samples, times, sentinel1=False)
            for modality_index, modality in enumerate(modalities):
                shared_times = s2_times if modality in ("S2L1C", "S2L2A", "S2RGB") else None
                ds = make_dataset(modality, locations, num_times=times, size=size,
                                  seed=file_seed * 31 + modality_index, times=shared_times)
                write_zarr_zip(ds, out / folder / modality / name)
                if progress is not None:
                    progress(out / folder / modality / name)
        if split_lists:
            list_path = out / split_list_path(folder)
            list_path.parent.mkdir(parents=True, exist_ok=True)
            list_path.write_text("".join(f"{name}\n" for name in names))
    return out

