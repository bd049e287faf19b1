"""Generate sample data in the exact on-disk format of SSL4EO-S12 v1.1.

The real data cannot be downloaded everywhere (4 TB, and CI has no internet), so every test fixture and
the README's demo come from here. The files match the real ones in every respect the package relies on:
Zarr format 2 inside a zip with stored (not deflated) entries and no duplicate entries, consolidated
metadata, one chunk per timestamp holding all samples of the file, every chunk stored (zarr 2 reads what
is not as uninitialised memory), Blosc-LZ4, fixed-width unicode strings, ``datetime64[ns]`` timestamps
CF-encoded as int64 nanoseconds since the epoch, the same locations in the same order in every
modality, and the ``splits/`` lists. The locations and Sentinel-2 times are real ones (:data:`LOCATIONS_CSV`);
the images are generated scenes that look like the Earth: water, forest, fields, bare soil and towns that
change with the seasons, snow in winter, clouds with their shadows and a cloud mask in the authors' classes,
and Sentinel-1 backscatter that follows the land cover. Deterministic in the seed, and fast.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from numcodecs import Blosc

from ..constants import BANDS, CLOUD_MASKED, MODALITIES, SPLIT_FOLDERS, file_name, split_list_path

#: The compressor of the real files (xarray's default for zarr v2 at the time they were written).
COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
#: How both releases store timestamps: int64 nanoseconds since the epoch, which the authors' webdataset loader
#: reads raw, as datetime64[ns] values (xarray would otherwise pick units from the data, such as days since
#: the first date).
TIME_ENCODING = {"units": "nanoseconds since 1970-01-01", "dtype": "int64"}
#: Date of every zip entry synth writes (the zip format's epoch), so the same data gives the same bytes.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_MTIME = time.mktime(ZIP_DATE_TIME + (0, 0, -1))

#: Modalities beyond the four that the generator can also write, to exercise feature inference.
EXTRA_MODALITIES: dict[str, tuple[str, tuple[str, ...]]] = {"NDVI": ("float32", ("NDVI",))}

PIXEL_SIZE_M = 10.0
SEASON_START = np.datetime64("2020-03-01T00:00:00", "ns")
SEASON_LENGTH = np.timedelta64(91, "D")

#: Real locations of the validation split (centre, UTM zone, Sentinel-2 times): see scripts/make_synth_locations.py.
LOCATIONS_CSV = Path(__file__).with_name("locations.csv")


@dataclass(frozen=True)
class Locations:
    """The locations of one file: what every modality of that file shares."""

    sample: np.ndarray  # <U7 ids
    center_lat: np.ndarray
    center_lon: np.ndarray
    crs: np.ndarray
    easting: np.ndarray  # patch centre in the UTM zone of ``crs``, metres (on the 10 m grid)
    northing: np.ndarray
    times: np.ndarray | None = None  # (sample, 4) real Sentinel-2 acquisition times, datetime64[ns]
    scene_seed: np.ndarray | None = None  # one per location: every modality of a location shows one scene


@functools.lru_cache(maxsize=1)
def real_locations() -> dict[str, np.ndarray]:
    """The table of real locations: ``center_lon``, ``center_lat``, ``crs`` and ``times`` (N, 4)."""
    rows = [line.split(",") for line in LOCATIONS_CSV.read_text().split()[1:]]
    return {
        "center_lon": np.array([float(r[1]) for r in rows]),
        "center_lat": np.array([float(r[2]) for r in rows]),
        "crs": np.array([int(r[3]) for r in rows], dtype=np.int64),
        "times": np.array([r[4:8] for r in rows], dtype="datetime64[ns]"),
    }


def make_locations(rng: np.random.Generator, first_id: int, num_samples: int) -> Locations:
    """Locations ``first_id`` … at real places and times (the table's rows, in turn; ids are synthetic)."""
    table = real_locations()
    rows = (first_id + np.arange(num_samples)) % len(table["crs"])
    lon, lat, crs = table["center_lon"][rows], table["center_lat"][rows], table["crs"][rows]
    easting, northing = utm_coordinates(lon, lat, crs)
    return Locations(
        sample=np.array([f"{first_id + i:07d}" for i in range(num_samples)], dtype="<U7"),
        center_lat=lat,
        center_lon=lon,
        crs=crs,
        # pixel edges on the 10 m grid, as Sentinel-2's are
        easting=np.round(easting / PIXEL_SIZE_M) * PIXEL_SIZE_M,
        northing=np.round(northing / PIXEL_SIZE_M) * PIXEL_SIZE_M,
        times=table["times"][rows],
        scene_seed=rng.integers(0, 2**62, num_samples),
    )


def utm_coordinates(lon: np.ndarray, lat: np.ndarray, crs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Easting and northing of WGS 84 points in each one's own projected ``crs`` (EPSG code)."""
    from pyproj import Transformer

    easting, northing = np.empty(len(lon)), np.empty(len(lon))
    for code in np.unique(crs):
        where = crs == code
        transformer = Transformer.from_crs(4326, int(code), always_xy=True)
        easting[where], northing[where] = transformer.transform(lon[where], lat[where])
    return easting, northing


# --- scenes: one land cover per location, seasons and clouds per timestamp --------------------------------

#: Land-cover classes of a scene (internal; the cloud mask has its own codes, :data:`MASK_CLASSES`).
WATER, FOREST, CROP, BARE, URBAN = range(5)
#: The authors' cloud-mask classes: 0 land, 1 water, 2 snow, 3 thin cloud, 4 thick cloud, 5 cloud shadow, 6 no data.
MASK_CLASSES = {"land": 0, "water": 1, "snow": 2, "thin_cloud": 3, "thick_cloud": 4, "cloud_shadow": 5, "no_data": 6}

_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: Surface reflectance x 10,000 per band (Sentinel-2 order) of each cover, typical values of spectral libraries.
_SPECTRA = {
    WATER: (600, 500, 450, 300, 250, 200, 180, 150, 130, 60, 5, 50, 30),
    FOREST: (250, 300, 500, 300, 800, 2200, 2800, 3000, 3100, 1000, 10, 1500, 700),
    CROP: (300, 400, 700, 450, 1200, 2800, 3300, 3600, 3700, 1200, 10, 2000, 1000),
    BARE: (900, 1100, 1400, 1700, 1900, 2100, 2300, 2400, 2500, 900, 15, 3000, 2600),
    URBAN: (1300, 1350, 1380, 1400, 1500, 1650, 1750, 1850, 1900, 800, 15, 2200, 1900),
}
_SNOW = (9000, 9000, 8800, 8600, 8400, 8000, 7800, 7600, 7400, 3000, 50, 1200, 900)
_CLOUD = (7000, 7200, 7000, 7000, 7200, 7400, 7500, 7600, 7600, 4000, 1000, 5000, 3500)
#: Top-of-atmosphere (L1C) minus surface (L2A) reflectance: the haze that atmospheric correction removes.
_HAZE = (700, 420, 260, 160, 140, 110, 100, 90, 80, 60, 20, 30, 15)
#: Sentinel-1 backscatter (VV, VH) in dB of each cover (and of snow).
_BACKSCATTER = {WATER: (-22.0, -29.0), FOREST: (-8.0, -14.0), CROP: (-11.0, -18.0), BARE: (-14.0, -22.0),
                URBAN: (-4.0, -11.0)}
_SNOW_BACKSCATTER = (-13.0, -20.0)


@dataclass
class Scene:
    """What one location looks like at each of its timestamps (``T`` timestamps of ``H`` x ``W`` pixels)."""

    cover: np.ndarray  # (H, W) land-cover class
    relief: np.ndarray  # (H, W) 0..1, terrain height
    texture: np.ndarray  # (H, W) ~1, fine variation within a cover
    green: np.ndarray  # (T,) 0..1, how green the vegetation is at each timestamp
    snow: np.ndarray  # (T, H, W) bool
    cloud: np.ndarray  # (T, H, W) 0..1 cloud opacity
    shadow: np.ndarray  # (T, H, W) bool
    mask: np.ndarray  # (T, H, W) uint8 cloud-mask classes


def _noise(rng: np.random.Generator, shape: tuple[int, ...], size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random ``cells`` x ``cells`` grid, interpolated (smoothstep) to ``size`` pixels.

    The grid does not depend on ``size``: a scene looks the same at any resolution.
    """
    grid = rng.random(shape + (cells + 1, cells + 1), dtype=np.float32)
    position = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    low = np.floor(position).astype(np.int64)
    f = position - low
    f = f * f * (3 - 2 * f)
    rows = grid[..., low, :] * (1 - f)[:, None] + grid[..., low + 1, :] * f[:, None]
    return rows[..., :, low] * (1 - f) + rows[..., :, low + 1] * f


def _fractal(rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
    field = 0.6 * _noise(rng, shape, size, 3) + 0.3 * _noise(rng, shape, size, 8) + 0.1 * _noise(rng, shape, size, 24)
    low = field.min(axis=(-2, -1), keepdims=True)
    high = field.max(axis=(-2, -1), keepdims=True)
    return (field - low) / np.maximum(high - low, 1e-6)


def _land(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scene's ground: land-cover classes (int8) in patches, relief and texture, all ``(size, size)``."""
    relief = _fractal(rng, (), size)
    vegetation = _fractal(rng, (), size)
    town = _noise(rng, (), size, 5)
    texture = 1 + 0.12 * (_noise(rng, (), size, 48) - 0.5) + 0.04 * (rng.random((size, size), dtype=np.float32) - 0.5)
    water_level = rng.choice([0.0, rng.uniform(0.05, 0.4)], p=[0.5, 0.5])
    cover = np.full((size, size), BARE, dtype=np.int8)
    cover[vegetation > 0.3] = CROP
    cover[vegetation > 0.62] = FOREST
    cover[(town > 0.78) & (vegetation < 0.55)] = URBAN
    cover[relief < water_level] = WATER
    return cover, relief, texture


def land_cover(locations: Locations, size: int) -> np.ndarray:
    """``(sample, size, size)`` land-cover classes of the locations' scenes: the ground every modality shows."""
    return np.stack([_land(np.random.default_rng(seed), size)[0] for seed in _scene_seeds(locations)])


def make_scene(seed: int, latitude: float, times: np.ndarray, size: int) -> Scene:
    """A plausible scene: water in the lows, forest, fields, bare soil and towns, seasons, snow and clouds.

    Deterministic in ``seed``; the clouds of timestamp ``t`` depend on ``(seed, t)`` only, so every Sentinel-2
    modality of a location (same timestamps) sees the same clouds, and Sentinel-1 the same ground.
    """
    rng = np.random.default_rng(seed)
    cover, relief, texture = _land(rng, size)
    months = times.astype("datetime64[M]").astype(np.int64) % 12 + 1
    summer = 7 if latitude >= 0 else 1
    green = 0.5 + 0.5 * np.cos(2 * np.pi * (months - summer) / 12)
    winter = np.abs(months - summer) % 12 >= 5  # the three months around midwinter
    snowy = abs(latitude) > 40 and rng.random() < 0.7
    snow = np.zeros((len(times), size, size), dtype=bool)
    clouds = np.zeros((len(times), size, size), dtype=np.float32)
    shadow = np.zeros((len(times), size, size), dtype=bool)
    mask = np.zeros((len(times), size, size), dtype=np.uint8)
    for t in range(len(times)):
        weather = np.random.default_rng([seed, t])
        if snowy and winter[t]:
            snow[t] = (relief > weather.uniform(0.2, 0.7)) & (cover != WATER)
        cover_fraction = weather.choice([0.0, weather.uniform(0.02, 0.5)], p=[0.5, 0.5])  # mostly clear-ish, as selected
        if cover_fraction > 0:
            field = _fractal(weather, (), size)
            threshold = np.quantile(field, 1 - cover_fraction)
            clouds[t] = np.clip((field - threshold) / 0.15, 0, 1)
            dy, dx = (weather.integers(2, 6, 2) * size) // 64 + 1  # shadows fall a few pixels away from the sun
            cast = np.zeros_like(shadow[t])
            cast[dy:, dx:] = clouds[t][:-dy, :-dx] > 0.5
            shadow[t] = cast & (clouds[t] == 0)
        mask[t][cover == WATER] = MASK_CLASSES["water"]
        mask[t][snow[t]] = MASK_CLASSES["snow"]
        mask[t][shadow[t]] = MASK_CLASSES["cloud_shadow"]
        mask[t][clouds[t] > 0] = MASK_CLASSES["thin_cloud"]
        mask[t][clouds[t] > 0.6] = MASK_CLASSES["thick_cloud"]
    return Scene(cover, relief, texture, green, snow, clouds, shadow, mask)


def reflectance(scene: Scene, band_names: tuple[str, ...], top_of_atmosphere: bool) -> np.ndarray:
    """``(T, C, H, W)`` float32 reflectance x 10,000 of a scene: L2A (surface) or L1C (with haze)."""
    bands = [_S2_BANDS.index(b) for b in band_names]
    spectra = {c: np.array(v, dtype=np.float32)[bands] for c, v in _SPECTRA.items()}
    out = np.empty((len(scene.green), len(bands)) + scene.cover.shape, dtype=np.float32)
    for t, green in enumerate(scene.green):
        # vegetation browns towards bare soil out of season; forest less than fields
        seasonal = {**spectra,
                    CROP: green * spectra[CROP] + (1 - green) * spectra[BARE],
                    FOREST: (0.6 + 0.4 * green) * spectra[FOREST] + (0.4 - 0.4 * green) * spectra[BARE]}
        table = np.stack([seasonal[c] for c in range(len(seasonal))])  # (cover, C)
        ground = np.moveaxis(table[scene.cover], -1, 0) * scene.texture * (0.85 + 0.3 * scene.relief)
        if scene.snow[t].any():  # (skipping the no-ops keeps full-size generation fast)
            ground = np.where(scene.snow[t], np.array(_SNOW, dtype=np.float32)[bands][:, None, None], ground)
        if scene.shadow[t].any():
            ground[:, scene.shadow[t]] *= 0.35
        if top_of_atmosphere:
            ground += np.array(_HAZE, dtype=np.float32)[bands][:, None, None]
        if scene.cloud[t].any():
            cloud = np.array(_CLOUD, dtype=np.float32)[bands][:, None, None] * (0.9 + 0.2 * scene.relief)
            ground += (cloud - ground) * scene.cloud[t]
        out[t] = ground
    return out


def backscatter(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """``(T, 2, H, W)`` float32 Sentinel-1 VV/VH in dB: by cover, brighter on slopes, with speckle; clouds unseen."""
    table = np.array([_BACKSCATTER[c] for c in range(len(_BACKSCATTER))], dtype=np.float32)
    base = np.moveaxis(table[scene.cover], -1, 0)  # (2, H, W)
    slope = np.gradient(scene.relief, axis=-1) * scene.relief.shape[-1] * 2.0
    out = np.empty((len(scene.green), 2) + scene.cover.shape, dtype=np.float32)
    for t, green in enumerate(scene.green):
        db = base + slope + np.where(scene.cover == CROP, 2.0 * green - 1.0, 0.0)
        db = np.where(scene.snow[t], np.array(_SNOW_BACKSCATTER, dtype=np.float32)[:, None, None] + slope, db)
        looks = 4.4  # multilooked GRD: gamma-distributed speckle in the linear domain
        speckle = rng.gamma(looks, 1 / looks, db.shape).astype(np.float32)
        out[t] = db + 10 * np.log10(speckle)
    return out


def _scene_seeds(locations: Locations) -> list[int]:
    seeds = locations.scene_seed
    if seeds is None:
        seeds = np.array([int(s) for s in locations.sample])
    return [int(seed) for seed in seeds]


def _scenes(locations: Locations, times: np.ndarray, size: int) -> list[Scene]:
    return [make_scene(seed, float(locations.center_lat[i]), times[i], size)
            for i, seed in enumerate(_scene_seeds(locations))]


def _band_values(modality: str, scenes: list[Scene], band_names: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    if modality in ("S2L1C", "S2L2A", "S2RGB"):
        # one location at a time into the output: no float copy of the whole file in memory
        rgb = modality == "S2RGB"
        names = ("B04", "B03", "B02") if rgb else band_names
        out = np.empty((len(scenes), len(scenes[0].green), len(names)) + scenes[0].cover.shape,
                       dtype=np.uint8 if rgb else np.int16)
        for i, scene in enumerate(scenes):
            values = reflectance(scene, names, modality == "S2L1C")
            if rgb:  # a true-colour product: surface reflectance 0..3000 spread over 0..255
                values *= 255 / 3000
                np.clip(values, 0, 255, out=values)
            else:  # +1000 offset, as the files store it
                np.clip(values, 0, 15000, out=values)
                values += 1000
            out[i] = np.rint(values, out=values)
        return out
    if modality == "S1GRD":
        values = np.stack([backscatter(s, rng) for s in scenes]).astype(np.float16)
        values[0, 0, :, 0, :3] = np.nan  # real S1 patches have no-data pixels at swath edges
        return values
    dtype, _ = EXTRA_MODALITIES[modality]
    red_nir = np.stack([reflectance(s, ("B04", "B08"), False) for s in scenes])
    red, nir = red_nir[:, :, :1], red_nir[:, :, 1:]
    return ((nir - red) / np.maximum(nir + red, 1.0)).astype(dtype)


def _timestamps(rng: np.random.Generator, num_samples: int, num_times: int, sentinel1: bool) -> np.ndarray:
    offsets = rng.integers(0, 80 * 86_400, (num_samples, num_times)) * np.timedelta64(1, "s")
    # Sentinel-1 passes at dusk, Sentinel-2 in the morning: the two never share a timestamp.
    hour = np.timedelta64(18 if sentinel1 else 10, "h")
    return (SEASON_START + np.arange(num_times) * SEASON_LENGTH + offsets + hour).astype("datetime64[ns]")


def location_times(locations: Locations, num_times: int, sentinel1: bool, rng: np.random.Generator) -> np.ndarray:
    """``(sample, num_times)`` acquisition times: the real Sentinel-2 ones (a year later for a fifth and on);
    Sentinel-1 a few days from each, at another hour of the day (the two never share a timestamp)."""
    if locations.times is None:
        return _timestamps(rng, len(locations.sample), num_times, sentinel1)
    real = locations.times
    year = np.timedelta64(365, "D")
    times = np.stack([real[:, t % real.shape[1]] + (t // real.shape[1]) * year for t in range(num_times)], axis=1)
    if sentinel1:
        days = rng.integers(-5, 6, times.shape) * np.timedelta64(1, "D")
        minutes = rng.integers(6 * 60, 10 * 60, times.shape) * np.timedelta64(1, "m")
        times = times + days + minutes
    return times.astype("datetime64[ns]")


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
    """One file's ``xarray.Dataset`` for ``modality``, as the authors' pipeline writes it.

    Every modality made from the same ``locations`` (and S2 ``times``) shows the same scenes and clouds.
    """
    rng = np.random.default_rng(seed)
    band_names = BANDS.get(modality) or EXTRA_MODALITIES[modality][1]
    sentinel1 = modality == "S1GRD"
    if times is None:
        times = location_times(locations, num_times, sentinel1, rng)
    # the scene, clouds and snow follow the Sentinel-2 timestamps; Sentinel-1 sees the same ground
    s2_times = times if not sentinel1 or locations.times is None else location_times(locations, num_times, False, rng)
    scenes = _scenes(locations, s2_times, size)
    pixel = np.arange(size)
    # pixel centres, north up; the patch centre falls on the middle pixel edge
    x = locations.easting[:, None] + PIXEL_SIZE_M * (pixel - size / 2 + 0.5)
    y = locations.northing[:, None] - PIXEL_SIZE_M * (pixel - size / 2 + 0.5)
    data_vars: dict[str, tuple] = {
        "bands": (("sample", "time", "band", "y", "x"), _band_values(modality, scenes, band_names, rng)),
        "center_lat": (("sample",), locations.center_lat),
        "center_lon": (("sample",), locations.center_lon),
        "crs": (("sample",), locations.crs),
        "file_id": (("sample", "time"), _product_ids(times, locations.crs, sentinel1)),
        "sample_id": (("sample", "time"),
                      np.array([[f"{s}_{t}" for t in range(num_times)] for s in locations.sample], dtype="<U9")),
        "time_": (("sample", "time"), times),
        "x_": (("sample", "x"), x),
        "y_": (("sample", "y"), y),
    }
    if modality in CLOUD_MASKED:
        data_vars["cloud_mask"] = (("sample", "time", "y", "x"), np.stack([s.mask for s in scenes]))
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
    encoding = zarr_encoding(ds)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") as tmp:
        store_dir = Path(tmp) / "store.zarr"
        ds.to_zarr(store_dir, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
        partial = Path(tmp) / "partial.zip"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for member in sorted(p for p in store_dir.rglob("*") if p.is_file()):
                # zipfile stamps an entry with its file's mtime: a fixed one makes the same data the same bytes
                os.utime(member, (ZIP_MTIME, ZIP_MTIME))
                zf.write(member, member.relative_to(store_dir).as_posix())
        os.replace(partial, path)


def zarr_encoding(ds: xr.Dataset, overrides: dict | None = None) -> dict:
    """``to_zarr``'s per-variable encoding of the real files, with ``overrides`` (per variable) on top.

    Every chunk is written, even one of zeros (a clear cloud mask): zarr 2, the authors' reader, reads a chunk
    that is not stored as uninitialised memory where the fill value is null, as it is for integers in the
    real files; zarr 2's writers stored every chunk, zarr 3's skip those that equal the fill value.
    """
    encoding = {}
    for name, variable in ds.variables.items():
        encoding[name] = {"compressors": [COMPRESSOR], "write_empty_chunks": True}
        if variable.dtype.kind == "M":
            encoding[name].update(TIME_ENCODING)
        encoding[name].update((overrides or {}).get(name, {}))
    return encoding


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
            s2_times = location_times(locations, times, False, rng)
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


# the webdataset release's look-alike builds on the generators above
from .webdataset import synthesize_webdataset as synthesize_webdataset
