"""The GeoParquet index of a data root, and the selection by place, time, cloud and id that it serves.

The index of a split is one GeoParquet file, ``ROOT/splits/ssl4eos12_{train,val}_index.parquet`` by default
(written by ``ssl4eos12 index DATA_DIR`` or :func:`build_index`), with one row per (location, timestamp)::

    sample  file  split  time_index  {M}_time ...  center_lon  center_lat  crs  {M}_cloud_fraction ...  geometry

``{M}_time`` is the time of every modality indexed, ``{M}_cloud_fraction`` the share of the pixels of each
Sentinel-2 modality's cloud mask in :data:`~ssl4eos12.constants.CLOUD_CLASSES` (thin cloud, thick cloud, cloud
shadow) at that timestamp, ``geometry`` the patch footprint: a WKB polygon in EPSG:4326 (lon/lat), the four
corners of the patch's pixel extent in its UTM zone (``x_``/``y_`` are pixel centres, so the extent reaches half
a pixel beyond them) projected with pyproj, as the authors' own index draws them. The file carries GeoParquet
1.1 ``geo`` metadata, so geopandas, DuckDB and GDAL read it as a geo table. Building it reads only the small
variables and the cloud masks, never ``bands``.

Where a root has no such index, the authors' own metadata serves the filters it can (:func:`load_index`): the
Zarr release's ``splits/{train,val}_metadata.parquet`` (sample, S2 time, footprint, file: no cloud cover, no
Sentinel-1 time) and the webdataset release's ``{train,val}_metadata.parquet`` (centres, shard, cloud cover per
timestamp). A filter the table cannot serve raises :class:`~ssl4eos12.errors.SSL4EOS12DataError` saying to run
``ssl4eos12 index``.

:func:`select` is the one place that turns filters into *which files, locations and timestamps to read*; the
``datasets`` builder and the training ``Loader`` both consume its result.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import math
import os
import posixpath
import shutil
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .constants import (
    CLOUD_CLASSES,
    CLOUD_MASKED,
    MODALITIES,
    SPLIT_FOLDERS,
    UNDATED_MODALITIES,
    index_path,
    split_metadata_path,
)
from .errors import SSL4EOS12DataError, SSL4EOS12FileError
from .sources import Block, normalize_root, open_source
from .sources.remote import is_remote, open_random_access

if TYPE_CHECKING:  # annotations only: datasets is imported where features are made, members where read
    import datasets

    from .members import ShardMembers

logger = logging.getLogger(__name__)

#: The variables the index reads from every modality's files (plus ``cloud_mask`` where there is one).
INDEX_VARIABLES = ("center_lat", "center_lon", "crs", "time_", "x_", "y_")
GEO_VERSION = "1.1.0"
#: The time a static layer states for its one timestamp (DEM): no date, exempt from the time filter.
_NO_DATE = np.datetime64(0, "ns")
_INDEX_FORMAT = 2

#: What :func:`select` returns: per file (in order), the locations kept, each with the time indices kept
#: (``None``: the whole time series).
Selection = dict[str, dict[str, frozenset[int] | None]]


# --- cloud fraction and footprints ------------------------------------------------------------------------

def cloud_fraction(cloud_mask: np.ndarray) -> np.ndarray:
    """Share of the pixels of each mask (last two axes) in :data:`~ssl4eos12.constants.CLOUD_CLASSES`, float32."""
    cloudy = is_cloudy(cloud_mask)
    return (np.count_nonzero(cloudy, axis=(-2, -1)) / math.prod(cloud_mask.shape[-2:])).astype(np.float32)


def is_cloudy(cloud_mask: np.ndarray) -> np.ndarray:
    """Whether each pixel's class is in :data:`~ssl4eos12.constants.CLOUD_CLASSES` (a boolean array).

    The classes are a range (3-5): for unsigned masks one wrapping subtraction and one comparison, ~7x faster than
    ``np.isin`` (which it equals).
    """
    low, high = min(CLOUD_CLASSES), max(CLOUD_CLASSES)
    if cloud_mask.dtype.kind != "u" or set(CLOUD_CLASSES) != set(range(low, high + 1)):
        return np.isin(cloud_mask, CLOUD_CLASSES)
    # values below ``low`` wrap around to large ones
    return np.subtract(cloud_mask, cloud_mask.dtype.type(low), dtype=cloud_mask.dtype) <= high - low


def footprints(x: np.ndarray, y: np.ndarray, crs: np.ndarray) -> np.ndarray:
    """``(n, 5, 2)`` lon/lat rings (closed, counter-clockwise) of the pixel extents of ``n`` patches.

    ``x`` ``(n, W)`` and ``y`` ``(n, H)`` are pixel-centre coordinates in metres in the projected ``crs`` (EPSG
    code) of each patch.
    """
    from pyproj import Transformer

    half_x = np.abs(x[:, -1] - x[:, 0]) / max(x.shape[1] - 1, 1) / 2
    half_y = np.abs(y[:, -1] - y[:, 0]) / max(y.shape[1] - 1, 1) / 2
    x0, x1 = x.min(axis=1) - half_x, x.max(axis=1) + half_x
    y0, y1 = y.min(axis=1) - half_y, y.max(axis=1) + half_y
    ring_x = np.stack([x1, x1, x0, x0, x1], axis=1)
    ring_y = np.stack([y0, y1, y1, y0, y0], axis=1)
    rings = np.empty(ring_x.shape + (2,))
    for code in np.unique(crs):
        rows = crs == code
        transformer = Transformer.from_crs(int(code), 4326, always_xy=True)
        rings[rows, :, 0], rings[rows, :, 1] = transformer.transform(ring_x[rows], ring_y[rows])
    return rings


def utm_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of the UTM zone of each point (326zz north, 327zz south; no Norway/Svalbard exceptions)."""
    zone = np.clip(np.floor((np.asarray(lon) + 180) / 6).astype(np.int64) + 1, 1, 60)
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


def centred_footprints(lon: np.ndarray, lat: np.ndarray, crs: np.ndarray, width: int, height: int,
                       pixel_size: float = 10.0) -> np.ndarray:
    """Footprints of ``width`` x ``height`` patches of ``pixel_size`` m pixels centred on each point (in ``crs``)."""
    from pyproj import Transformer

    x, y = np.empty(len(lon)), np.empty(len(lon))
    for code in np.unique(crs):
        rows = crs == code
        x[rows], y[rows] = Transformer.from_crs(4326, int(code), always_xy=True).transform(lon[rows], lat[rows])
    columns = (np.arange(width) - (width - 1) / 2) * pixel_size
    rows_ = (np.arange(height) - (height - 1) / 2) * pixel_size
    return footprints(x[:, None] + columns, y[:, None] - rows_, crs)


def polygon_wkb(ring: np.ndarray) -> bytes:
    """WKB (little-endian) of a polygon with one closed ring of ``(lon, lat)`` points."""
    return struct.pack("<BIII", 1, 3, 1, len(ring)) + np.ascontiguousarray(ring, dtype="<f8").tobytes()


def wkb_ring(wkb: bytes) -> np.ndarray:
    """The outer ring of a little-endian WKB polygon, ``(points, 2)``."""
    if wkb[0] != 1 or struct.unpack("<I", wkb[1:5])[0] != 3:
        raise ValueError("not a little-endian WKB polygon")
    (count,) = struct.unpack("<I", wkb[9:13])
    return np.frombuffer(wkb[13:13 + 16 * count], dtype="<f8").reshape(count, 2)


def geo_metadata(geometry: Sequence[bytes]) -> dict:
    """GeoParquet 1.1 ``geo`` metadata of a WKB polygon column in EPSG:4326 (lon/lat order)."""
    from pyproj import CRS

    rings = np.concatenate([wkb_ring(g) for g in geometry]) if len(geometry) else np.zeros((0, 2))
    bbox = [float(v) for v in (*rings.min(axis=0), *rings.max(axis=0))] if len(rings) else []
    column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": CRS.from_epsg(4326).to_json_dict(),
              "edges": "planar"}
    if bbox:
        column["bbox"] = bbox
    return {"version": GEO_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


# --- building the index -----------------------------------------------------------------------------------

def block_rows(block: Block, split: str) -> pa.Table:
    """The index rows of one block: one per (location, timestamp), from its small variables and cloud masks."""
    reference = block.reference.variables
    layout = block.reference.layout
    n = len(block)
    num_times = max(part.layout.num_times for part in block.parts.values())
    lon, lat = reference["center_lon"], reference["center_lat"]
    crs = reference.get("crs")
    if "x_" in reference and "y_" in reference and crs is not None:
        ring = footprints(reference["x_"], reference["y_"], crs)
    else:  # a release without the coordinate vectors: the patch's size around its centre, in its UTM zone
        ring = centred_footprints(lon, lat, crs if crs is not None else utm_epsg(lon, lat), layout.width, layout.height)
    geometry = [polygon_wkb(r) for r in ring]
    repeat = functools.partial(np.repeat, repeats=num_times)
    columns = {
        "sample": pa.array(repeat(block.samples.astype(str)), pa.string()),
        "file": pa.array([block.file] * (n * num_times), pa.string()),
        "split": pa.array([split] * (n * num_times), pa.string()),
        "time_index": pa.array(np.tile(np.arange(num_times, dtype=np.int64), n)),
    }
    for modality, part in block.parts.items():
        times = np.full((n, num_times), np.datetime64("NaT"), dtype="datetime64[ns]")
        times[:, :part.layout.num_times] = part.variables["time_"][block.orders[modality]]
        columns[f"{modality}_time"] = pa.array(times.reshape(-1), pa.timestamp("ns"))
    columns["center_lon"] = pa.array(repeat(lon), pa.float64())
    columns["center_lat"] = pa.array(repeat(lat), pa.float64())
    columns["crs"] = pa.array(repeat(crs) if crs is not None else [None] * (n * num_times), pa.int64())
    for modality, part in block.parts.items():
        if part.layout.has_cloud_mask:
            fractions = np.full((n, num_times), np.nan, dtype=np.float32)
            fractions[:, :part.layout.num_times] = cloud_fraction(part.variables["cloud_mask"][block.orders[modality]])
            columns[f"{modality}_cloud_fraction"] = pa.array(fractions.reshape(-1), pa.float32())
    columns["geometry"] = pa.array([g for g in geometry for _ in range(num_times)], pa.binary())
    return pa.table(columns)


def index_variables(layouts: Iterable) -> dict[str, list[str]]:
    """What indexing reads of each modality: the small variables, and the cloud mask where there is one."""
    return {layout.modality: list(INDEX_VARIABLES) + ["cloud_mask"] * layout.has_cloud_mask for layout in layouts}


def index_features(layouts: Sequence) -> datasets.Features:
    """The columns of :func:`block_rows` as ``datasets`` features (the converted copy's ``index`` config)."""
    import datasets

    features = {"sample": datasets.Value("string"), "file": datasets.Value("string"),
                "split": datasets.Value("string"), "time_index": datasets.Value("int64")}
    features.update({f"{layout.modality}_time": datasets.Value("timestamp[ns]") for layout in layouts})
    features.update(center_lon=datasets.Value("float64"), center_lat=datasets.Value("float64"),
                    crs=datasets.Value("int64"))
    features.update({f"{layout.modality}_cloud_fraction": datasets.Value("float32") for layout in layouts
                     if layout.has_cloud_mask})
    features["geometry"] = datasets.Value("binary")
    return datasets.Features(features)


@dataclass(frozen=True)
class IndexTask:
    """One shard of one split to index; writes its rows to ``part``."""

    root: str
    split: str
    shard: str
    modalities: tuple[str, ...]
    part: str  # where the shard's rows go (a Parquet file; its existence means done)

    #: ``headers_only``: the rows of the authors' metadata for this shard (a webdataset root): only the tars'
    #: headers are read, never their members (see :func:`header_rows`).
    metadata: pd.DataFrame | None = field(default=None, compare=False)

    def run(self) -> str:
        source = open_source(self.root, self.modalities)
        folder = SPLIT_FOLDERS[self.split]
        if self.metadata is not None:
            write_atomic(header_rows(source, folder, self.shard, self.split, self.metadata), self.part)
            return self.part
        layouts = source.layouts(folder, self.shard)
        tables, keys = [], []
        for block in source.blocks(folder, self.shard, layouts, index_variables(layouts)):
            tables.append(block_rows(block, self.split))
            if block.keys is not None:
                keys += [str(k) for k in block.keys]
        table = pa.concat_tables(tables)
        if source.keyed:
            table = with_members(table, keys, member_columns(source, folder, self.shard, keys))
        write_atomic(table, self.part)
        return self.part


def member_columns(source, split_folder: str, shard: str, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per location of a shard (in tar order): ``key``, ``position``, and per modality the member's data
    ``{M}_offset``, ``{M}_size`` and its tar's ``{M}_tar_size``, from the tars' headers (:func:`walk_tar`, every
    modality's tar in parallel). ``keys``: the keys the shard's members must have, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from .members import walk_tar

    urls = {m: source.url(split_folder, m, shard) for m in source.modalities}
    with ThreadPoolExecutor(len(urls), thread_name_prefix="ssl4eos12-headers") as pool:
        walked = dict(zip(urls, pool.map(lambda url: walk_tar(url, source.download_config, source.fetch_options),
                                         urls.values())))
    first = source.modalities[0]
    names = [member.key for member in walked[first][0]]
    if keys is not None and list(keys) != names:
        raise SSL4EOS12FileError(urls[first], "its headers list other members than reading it gave (changed "
                                              "while it was indexed?)")
    columns = {"key": np.array(names, dtype=object), "position": np.arange(len(names), dtype=np.int64)}
    for modality, (members, tar_size) in walked.items():
        if [member.key for member in members] != names:
            raise SSL4EOS12FileError(urls[modality], f"its members' keys differ from those of {urls[first]}: the "
                                                     f"modalities are not aligned")
        columns[f"{modality}_offset"] = np.array([member.offset for member in members], dtype=np.int64)
        columns[f"{modality}_size"] = np.array([member.size for member in members], dtype=np.int64)
        columns[f"{modality}_tar_size"] = np.full(len(members), tar_size, dtype=np.int64)
    return columns


def with_members(table: pa.Table, keys: Sequence[str], columns: dict[str, np.ndarray]) -> pa.Table:
    """``table`` (rows of locations in ``keys``' order, each repeated per timestamp) with the member columns:
    ``key`` and ``position`` after ``file``, the offsets and sizes before ``geometry``."""
    repeats = table.num_rows // max(len(keys), 1)
    if repeats * len(keys) != table.num_rows:
        raise ValueError(f"{table.num_rows} index rows for {len(keys)} locations")
    at = table.schema.get_field_index("file") + 1
    table = table.add_column(at, "key", pa.array(np.repeat(columns["key"], repeats).tolist(), pa.string()))
    table = table.add_column(at + 1, "position", pa.array(np.repeat(columns["position"], repeats), pa.int64()))
    at = table.schema.get_field_index("geometry")
    for name, values in columns.items():
        if name not in ("key", "position"):
            table = table.add_column(at, name, pa.array(np.repeat(values, repeats), pa.int64()))
            at += 1
    return table


def header_rows(source, split_folder: str, shard: str, split: str, metadata: pd.DataFrame) -> pa.Table:
    """The index rows of one tar shard from its headers and the authors' metadata alone (no member is read).

    ``metadata``: the shard's rows of ``{split}_metadata.parquet`` (:func:`from_webdataset_metadata`: the location
    id, centre and cloud cover per timestamp), matched to the members by ``key`` where the metadata has that
    column, else by order. No crs, no times: ``time_range`` needs the full index; the footprint is the patch's
    size (264 x 264 pixels of 10 m) around its centre in its UTM zone.
    """
    columns = member_columns(source, split_folder, shard)
    keys = list(columns["key"])
    frame = metadata.reset_index(drop=True)
    times = int(frame["time_index"].max()) + 1 if len(frame) else 1
    where = source.url(split_folder, source.modalities[0], shard)
    if "key" in frame.columns:
        order = {key: i for i, key in enumerate(keys)}
        missing = sorted(set(frame["key"]) ^ set(keys))
        if missing:
            raise SSL4EOS12FileError(where, f"the metadata and the tar hold different keys ({missing[:3]})")
        frame = frame.assign(_at=frame["key"].map(order)).sort_values(["_at", "time_index"], kind="stable")
        frame = frame.drop(columns=["_at", "key"])
    if len(frame) != len(keys) * times:
        raise SSL4EOS12FileError(where, f"the metadata lists {len(frame) // times} locations of this tar, its "
                                        f"headers {len(keys)}")
    if "sample" not in frame.columns:
        raise SSL4EOS12DataError(f"{where}: the metadata names no location id (sample): index without "
                                 f"--headers-only (it reads the members)")
    lon, lat = frame["center_lon"].to_numpy(np.float64), frame["center_lat"].to_numpy(np.float64)
    rings = centred_footprints(lon, lat, utm_epsg(lon, lat), 264, 264)
    data = {"sample": pa.array(frame["sample"].astype(str).tolist(), pa.string()),
            "file": pa.array([shard] * len(frame), pa.string()),
            "split": pa.array([split] * len(frame), pa.string()),
            "time_index": pa.array(frame["time_index"].to_numpy(np.int64)),
            "center_lon": pa.array(lon), "center_lat": pa.array(lat)}
    for column in frame.columns:
        if column.endswith("_cloud_fraction") and column.removesuffix("_cloud_fraction") in source.modalities:
            data[column] = pa.array(frame[column].to_numpy(np.float32))
    data["geometry"] = pa.array([polygon_wkb(ring) for ring in rings], pa.binary())
    return with_members(pa.table(data), keys, columns)


def _run_task(task: IndexTask) -> str:
    return task.run()


def write_atomic(table: pa.Table, path: str) -> None:
    """Write ``table`` to a hidden temporary file beside ``path``, then rename: never half a file at ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        pq.write_table(table, partial, compression="zstd")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def present_modalities(source_root: str, split_folder: str, shard: str, candidates: Iterable[str]) -> list[str]:
    """The ``candidates`` that have a file for ``shard``."""
    found = []
    for modality in candidates:
        try:
            open_source(source_root, [modality]).probe(split_folder, shard, modality)
        except SSL4EOS12FileError as err:
            if err.problem != "file not found":
                raise
            continue
        found.append(modality)
    return found


def build_index(
    data_dir: str, out: str | None = None, *, splits: Iterable[str] | None = None,
    modalities: Sequence[str] | None = None, workers: int | None = None, scheduler: str | None = None,
    headers_only: bool = False,
) -> dict[str, Path]:
    """Index every split of ``data_dir``; return the written file of each split.

    Args:
        data_dir: the data root (local path or fsspec URL).
        out: where to write: a ``.parquet`` file (every split in one, told apart by ``split``), or a folder that
            gets ``ssl4eos12_{train,val}_index.parquet``. Default: ``DATA_DIR/splits/`` (local roots only), where
            the builder looks.
        splits: ``"train"`` and/or ``"validation"`` (default: every split present).
        modalities: the modalities to index (default: those of the four the root has).
        workers, scheduler: as :func:`ssl4eos12.publish.convert`: a local process pool of ``workers`` (1: in this
            process) or a Dask distributed cluster; each task indexes one shard.
        headers_only: a webdataset root: read only the tars' headers (512 bytes per member, by range requests for
            a remote root: the tars are never downloaded) and take the rest from the authors' metadata parquet
            (location ids, centres, cloud cover per timestamp; see :func:`header_rows`). Serves ``samples``,
            ``bbox`` and ``max_cloud_fraction`` and the selective reads, not ``time_range``.

    On a webdataset root the index also records where each location's members are: ``key``, ``position`` (in the
    tar) and, per modality ``M``, ``{M}_offset``/``{M}_size`` (the member's data in its tar) and ``{M}_tar_size``
    (the tar's size, which tells a stale index); the tar is the ``file`` column (:mod:`ssl4eos12.members`).

    Resumable: each shard's rows go to a part file (hidden folder beside the output) as soon as it is done, and a
    rerun skips the parts there are; the index is assembled, atomically, once all parts exist.
    """
    from .publish.plan import run_tasks

    root = normalize_root(data_dir)
    if out is None:
        if is_remote(root):
            raise SSL4EOS12DataError(f"{root}: a remote root cannot be written to: pass an output path (--out)")
        out = str(Path(root) / "splits")
    splits = list(splits or SPLIT_FOLDERS)
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {list(SPLIT_FOLDERS)}")
    shards = {}
    for split in splits:
        names = open_source(root, [(modalities or MODALITIES)[0]]).shards(SPLIT_FOLDERS[split])
        if not names and not modalities:  # the first modality may be missing: any of the four lists the shards
            names = next((n for m in MODALITIES if (n := open_source(root, [m]).shards(SPLIT_FOLDERS[split]))), [])
        if names:
            shards[split] = names
    if not shards:
        raise SSL4EOS12DataError(f"{root}: no SSL4EO-S12 files in split(s) {splits}")
    if modalities is None:
        split, names = next(iter(shards.items()))
        modalities = present_modalities(root, SPLIT_FOLDERS[split], names[0], MODALITIES)
    modalities = tuple(modalities)
    metadata: dict[str, dict[str, pd.DataFrame]] = {}
    if headers_only:
        if open_source(root, modalities[:1]).name != "webdataset":
            raise SSL4EOS12DataError(f"{root}: headers_only (--headers-only) needs the webdataset release (tars)")
        for split in shards:
            url = posixpath.join(root, f"{SPLIT_FOLDERS[split]}_metadata.parquet")
            frame = _read_parquet(url)
            if frame is None:
                raise SSL4EOS12DataError(f"{url}: not found: --headers-only takes the locations from the authors' "
                                         f"metadata; index without it (it reads the members)")
            rows = from_webdataset_metadata(frame, url)
            metadata[split] = {name: group for name, group in rows.groupby("file", sort=False)}
    single_file = str(out).endswith(".parquet")
    out_path = Path(out)
    parts_dir = (out_path.parent if single_file else out_path) / \
        f".ssl4eos12-index-parts-{_fingerprint(root, modalities, headers_only)}"
    tasks = [IndexTask(root, split, name, modalities, str(parts_dir / SPLIT_FOLDERS[split] / f"{name}.parquet"),
                       _shard_metadata(metadata, split, name, root) if headers_only else None)
             for split, names in shards.items() for name in names]
    todo = [task for task in tasks if not os.path.exists(task.part)]
    if len(todo) < len(tasks):
        logger.info(f"{len(tasks) - len(todo)} of {len(tasks)} shard(s) already indexed: skipping them")
    for _ in run_tasks(_run_task, todo, workers, scheduler, desc="Indexing"):
        pass
    written = {}
    tables = {split: pa.concat_tables([pq.read_table(t.part) for t in tasks if t.split == split]) for split in shards}
    if single_file:
        written = {split: out_path for split in shards}
        _write_index(pa.concat_tables(tables.values()), out_path)
    else:
        for split, table in tables.items():
            written[split] = out_path / posixpath.basename(index_path(SPLIT_FOLDERS[split]))
            _write_index(table, written[split])
    shutil.rmtree(parts_dir, ignore_errors=True)
    for split, path in written.items():
        logger.info(f"{split}: indexed {tables[split].num_rows} (location, timestamp) rows of "
                    f"{len(shards[split])} file(s) to {path}")
    return written


def _shard_metadata(metadata: dict, split: str, shard: str, root: str) -> pd.DataFrame:
    try:
        return metadata[split][shard]
    except KeyError:
        raise SSL4EOS12DataError(f"{root}: the {SPLIT_FOLDERS[split]} metadata lists no location of {shard}: "
                                 f"index without --headers-only (it reads the members)") from None


def _fingerprint(root: str, modalities: tuple[str, ...], headers_only: bool = False) -> str:
    spec = json.dumps({"format": _INDEX_FORMAT, "root": root, "modalities": modalities, "headers": headers_only})
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _write_index(table: pa.Table, path: Path) -> None:
    geo = geo_metadata(table.column("geometry").to_pylist())
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    write_atomic(table, str(path))


# --- reading an index, or the authors' metadata ------------------------------------------------------------

def load_index(root: str, split_folder: str, index: str | None = None, download_config=None) -> pd.DataFrame:
    """The index rows of one split as a ``DataFrame`` (``geometry`` left out), from the best table there is.

    In order: ``index`` (a ``.parquet`` file or URL holding one or more splits, or a folder or URL prefix holding
    ``ssl4eos12_{split}_index.parquet``); ``ROOT/splits/ssl4eos12_{split}_index.parquet``; the authors'
    metadata of the Zarr release (``ROOT/splits/{split}_metadata.parquet``) or of the webdataset release
    (``ROOT/{split}_metadata.parquet``). Columns the table lacks are absent (see :func:`select`).
    """
    split = _split_name(split_folder)
    if index is not None:
        location = str(index) if "://" in str(index) else normalize_root(index)
        url = location if location.endswith(".parquet") else posixpath.join(
            location, posixpath.basename(index_path(split_folder)))
        frame = _read_parquet(url, download_config)
        if frame is None:
            raise SSL4EOS12DataError(f"{url}: index not found (index=...); write one with `ssl4eos12 index`")
        return _own_index(frame, split, url)
    url = posixpath.join(root, index_path(split_folder))
    if (frame := _read_parquet(url, download_config)) is not None:
        return _own_index(frame, split, url)
    url = posixpath.join(root, split_metadata_path(split_folder))
    if (frame := _read_parquet(url, download_config, geometry=True)) is not None:
        return from_zarr_metadata(frame, url)
    url = posixpath.join(root, f"{split_folder}_metadata.parquet")
    if (frame := _read_parquet(url, download_config)) is not None:
        return from_webdataset_metadata(frame, url)
    raise SSL4EOS12DataError(
        f"{root}: no index of split {split_folder} to filter with (looked for {index_path(split_folder)} and the "
        f"authors' metadata): run `ssl4eos12 index {root}` (or pass index=PATH_OR_URL)"
    )


def _split_name(split_folder: str) -> str:
    return next((name for name, folder in SPLIT_FOLDERS.items() if folder == split_folder), split_folder)


def _read_parquet(url: str, download_config=None, geometry: bool = False) -> pd.DataFrame | None:
    """The table at ``url`` (its geometry only if asked: selecting needs none), or ``None`` if there is none."""
    try:
        with open_random_access(url, download_config) as f:
            names = pq.read_schema(f).names
            f.seek(0)
            columns = [name for name in names if geometry or name != "geometry"]
            return pq.read_table(f, columns=columns).to_pandas()
    except FileNotFoundError:
        return None


def _own_index(frame: pd.DataFrame, split: str, url: str) -> pd.DataFrame:
    if "split" in frame.columns:
        splits = sorted(frame["split"].unique())
        frame = frame[frame["split"] == split]
        if frame.empty and splits:
            raise SSL4EOS12DataError(f"{url}: the index holds no rows of split {split} (only {splits}): index "
                                     f"that split too (`ssl4eos12 index DATA_DIR --splits {split}`)")
    frame.attrs["source"] = url
    return frame.reset_index(drop=True)


def from_zarr_metadata(frame: pd.DataFrame, url: str) -> pd.DataFrame:
    """The Zarr release's ``splits/*_metadata.parquet`` as index rows: sample, file, time_index, the S2 time, the
    footprint's centre (the mean of its four corners, not the file's ``center_lon``/``center_lat``: a location on
    the very edge of a ``bbox`` may fall on either side). No cloud cover, no Sentinel-1 time."""
    wkb = frame["geometry"].tolist()
    centres = np.array([wkb_ring(g)[:4].mean(axis=0) for g in wkb]) if wkb else np.zeros((0, 2))
    rows = pd.DataFrame({
        "sample": frame["sample_id"].astype(str).to_numpy(), "file": frame["file"].to_numpy(),
        "time_index": frame["time_id"].astype(np.int64).to_numpy(),
        "center_lon": centres[:, 0], "center_lat": centres[:, 1],
    })
    for modality in ("S2L1C", "S2L2A", "S2RGB"):  # the Sentinel-2 product's time (its tile_id is an S2 tile)
        rows[f"{modality}_time"] = frame["time"].to_numpy()
    rows.attrs["source"] = url
    return rows


def from_webdataset_metadata(frame: pd.DataFrame, url: str) -> pd.DataFrame:
    """The webdataset release's ``*_metadata.parquet`` as index rows: the shard (``tar``), centres, the cloud cover
    ``cloud_cover_0..3`` of each timestamp (read as every Sentinel-2 modality's), and the location id where a
    ``sample``/``sample_id`` column names it."""
    id_column = next((c for c in ("sample", "sample_id") if c in frame.columns), None)
    covers = sorted((c for c in frame.columns if c.startswith("cloud_cover_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    rows = []
    for t, column in enumerate(covers or [None]):
        part = pd.DataFrame({"file": frame["tar"].to_numpy(), "time_index": np.int64(t),
                             "center_lon": frame["center_lon"].to_numpy(), "center_lat": frame["center_lat"].to_numpy()})
        if id_column is not None:
            part.insert(0, "sample", frame[id_column].astype(str).to_numpy())
        if "key" in frame.columns:  # the member key: matches the rows to the tars' members
            part["key"] = frame["key"].astype(str).to_numpy()
        if column is not None:
            for modality in ("S2L1C", "S2L2A", "S2RGB"):
                part[f"{modality}_cloud_fraction"] = frame[column].to_numpy(dtype=np.float32)
        part["_row"] = np.arange(len(frame))
        rows.append(part)
    rows = pd.concat(rows).sort_values(["_row", "time_index"], kind="stable").drop(columns="_row")
    rows.attrs["source"] = url
    return rows.reset_index(drop=True)


# --- filters and selection --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    """The selection keywords, checked and normalised (see :meth:`from_keywords`)."""

    bbox: tuple[float, float, float, float] | None = None
    time_range: tuple[np.datetime64, np.datetime64] | None = None
    max_cloud_fraction: float | None = None
    samples: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.bbox, self.time_range, self.max_cloud_fraction, self.samples))

    @classmethod
    def from_keywords(cls, bbox=None, time_range=None, max_cloud_fraction=None, samples=None) -> Filters:
        """Check the builder keywords; a bad one raises ``ValueError`` naming it and what it takes."""
        return cls(_check_bbox(bbox), _check_time_range(time_range), _check_cloud(max_cloud_fraction),
                   _check_samples(samples))

    def describe(self) -> str:
        parts = []
        if self.bbox is not None:
            parts.append(f"bbox={self.bbox}")
        if self.time_range is not None:
            parts.append(f"time_range=[{self.time_range[0]}, {self.time_range[1]})")
        if self.max_cloud_fraction is not None:
            parts.append(f"max_cloud_fraction={self.max_cloud_fraction}")
        if self.samples is not None:
            shown = ", ".join(repr(sample) for sample in sorted(self.samples)[:3])
            more = f", ... ({len(self.samples)} ids)" if len(self.samples) > 3 else ""
            parts.append(f"samples=[{shown}{more}]")
        return ", ".join(parts)


def _check_bbox(bbox) -> tuple[float, float, float, float] | None:
    if bbox is None:
        return None
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbox must be four numbers (min_lon, min_lat, max_lon, max_lat), got {bbox!r}")
    min_lon, min_lat, max_lon, max_lat = values
    if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180):
        raise ValueError(f"bbox longitudes must lie in [-180, 180], got {bbox!r}")
    if not (-90 <= min_lat <= max_lat <= 90):
        raise ValueError(f"bbox latitudes must satisfy -90 <= min_lat <= max_lat <= 90, got {bbox!r}")
    return values


def _to_utc_datetime64(value, name: str) -> np.datetime64:
    """An ISO string, ``datetime``/``date`` or ``datetime64`` as UTC ``datetime64[ns]`` (naive means UTC)."""
    if isinstance(value, np.datetime64):
        return value.astype("datetime64[ns]")
    if isinstance(value, (str, datetime.date, pd.Timestamp)):
        try:
            stamp = pd.Timestamp(value)
        except ValueError as err:
            raise ValueError(f"time_range {name} {value!r} is not an ISO date or time ({err})") from None
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        return stamp.to_datetime64().astype("datetime64[ns]")
    raise ValueError(f"time_range {name} must be an ISO string, datetime or datetime64, got {value!r}")


def _check_time_range(time_range) -> tuple[np.datetime64, np.datetime64] | None:
    if time_range is None:
        return None
    if isinstance(time_range, str) or len(time_range) != 2:
        raise ValueError(f"time_range must be (start, end), got {time_range!r}")
    start, end = (_to_utc_datetime64(v, n) for v, n in zip(time_range, ("start", "end")))
    if not start < end:
        raise ValueError(f"time_range start must come before its end (end is exclusive), got {time_range!r}")
    return start, end


def _check_cloud(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= 1:
        raise ValueError(f"max_cloud_fraction must be a number between 0 and 1, got {value!r}")
    return float(value)


def _check_samples(samples) -> frozenset[str] | None:
    if samples is None:
        return None
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Iterable):
        raise ValueError(f"samples must be a list of location ids (e.g. ['0000173']), got {samples!r}")
    # ids are 7-digit strings; an integer id means the same location
    return frozenset(f"{s:07d}" if isinstance(s, (int, np.integer)) else str(s) for s in samples)


def select(rows: pd.DataFrame, modalities: Sequence[str], filters: Filters, single_timestamp: bool = False) -> Selection:
    """Which files, locations and timestamps pass ``filters``: ``{file: {sample: time indices or None}}``.

    ``rows``: index rows of one split (:func:`load_index`). A location passes when its centre lies in ``bbox``
    (edges included; ``min_lon > max_lon`` crosses the antimeridian) and its id is in ``samples``; a timestamp
    when the time of every one of ``modalities`` lies in ``[start, end)`` and the largest cloud fraction of their
    Sentinel-2 modalities is at most ``max_cloud_fraction``. Modalities without dates are exempt from the time
    filter: the static ones (:data:`~ssl4eos12.constants.UNDATED_MODALITIES`, DEM: one timestamp at time 0)
    always, and any timestamp whose time is missing (``NaT``: a modality with fewer timestamps than the others) or
    time 0 (1970-01-01T00:00, the release's "no date"); a time filter over undated modalities alone keeps
    everything. A time series (``single_timestamp=False``) is kept when every timestamp passes, and maps to
    ``None``; with ``single_timestamp`` each (location, timestamp) is judged alone and a location maps to the set
    of its time indices kept (in the files' own time order: see :func:`ssl4eos12.timeorder.season_selection` for
    a season-ordered reader). Files without a match are absent; the order is the rows' (files, then locations, in
    first appearance).

    Raises :class:`SSL4EOS12DataError` when ``rows`` cannot serve a filter (e.g. the authors' metadata has no
    cloud cover): the message says to run ``ssl4eos12 index``.

    A reader applies a selection file by file, reading each selected file once and nothing else::

        rows = load_index(root, "train")                       # or select_split(root, "train", ...)
        selection = select(rows, ["S2L2A"], Filters.from_keywords(bbox=(5, 45, 15, 55)), single_timestamp)
        for file, samples in selection.items():                # files in the index's order
            times = selected_times(samples)                    # None: every timestamp is needed
            ...read `file` (Source.blocks, or Source.blocks_at(..., times) where times is not None)...
            ...yield the locations `samples` holds; with single_timestamp, only the time indices samples[id]...

    The builder does exactly this (:func:`ssl4eos12.schema.location_examples` takes ``samples`` as its
    ``selection``).
    """
    source = rows.attrs.get("source", "the index")
    needed = []
    if filters.samples is not None:
        needed.append("sample")
    if filters.bbox is not None:
        needed += ["center_lon", "center_lat"]
    time_columns = [f"{m}_time" for m in modalities if m not in UNDATED_MODALITIES] \
        if filters.time_range is not None else []
    cloud_columns = []
    if filters.max_cloud_fraction is not None:
        cloud_columns = [f"{m}_cloud_fraction" for m in modalities if m in CLOUD_MASKED or
                         f"{m}_cloud_fraction" in rows.columns]
        if not cloud_columns:
            raise ValueError(f"max_cloud_fraction needs a Sentinel-2 modality (a cloud mask) among {list(modalities)}")
    missing = [c for c in ["file", "time_index", *needed, *time_columns, *cloud_columns] if c not in rows.columns]
    if "sample" not in rows.columns and "sample" not in missing:
        missing.insert(0, "sample")
    if missing:
        raise SSL4EOS12DataError(
            f"{source} has no column(s) {', '.join(missing)} needed for {filters.describe()}: run "
            f"`ssl4eos12 index DATA_DIR` to write a full index (with --modalities naming every modality of the "
            f"config, if not the four), or pass index=PATH_OR_URL"
        )
    passes = np.ones(len(rows), dtype=bool)
    if filters.samples is not None:
        passes &= rows["sample"].astype(str).isin(filters.samples).to_numpy()
    if filters.bbox is not None:
        min_lon, min_lat, max_lon, max_lat = filters.bbox
        lon, lat = rows["center_lon"].to_numpy(), rows["center_lat"].to_numpy()
        inside_lon = (lon >= min_lon) & (lon <= max_lon) if min_lon <= max_lon else (lon >= min_lon) | (lon <= max_lon)
        passes &= inside_lon & (lat >= min_lat) & (lat <= max_lat)
    if filters.time_range is not None:
        start, end = filters.time_range
        for column in time_columns:
            times = rows[column].to_numpy().astype("datetime64[ns]")
            undated = np.isnat(times) | (times == _NO_DATE)  # no timestamp there, or a static layer's time 0
            passes &= undated | ((times >= start) & (times < end))
    if cloud_columns:
        worst = rows[cloud_columns].to_numpy(dtype=np.float32).max(axis=1)
        passes &= worst <= np.float32(filters.max_cloud_fraction)  # NaN (no mask at that time) fails
    keys = pd.DataFrame({"file": rows["file"].to_numpy(), "sample": rows["sample"].astype(str).to_numpy(),
                         "time_index": rows["time_index"].to_numpy(), "passes": passes})
    selection: Selection = {}
    if single_timestamp:
        for (file, sample), group in keys[keys["passes"]].groupby(["file", "sample"], sort=False):
            selection.setdefault(file, {})[sample] = frozenset(int(t) for t in group["time_index"])
    else:
        kept = keys.groupby(["file", "sample"], sort=False)["passes"].all()
        for file, sample in kept.index[kept.to_numpy()]:
            selection.setdefault(file, {})[sample] = None
    return with_member_positions(selection, rows, modalities)


def member_positions(rows: pd.DataFrame, modalities: Sequence[str]) -> dict[str, ShardMembers] | None:
    """Per tar, where every location's members are (in tar order), from an index that records them (``None``
    where it does not record them for all of ``modalities``)."""
    from .members import ShardMembers

    needed = ["file", "sample", "key", "position",
              *(f"{m}_{what}" for m in modalities for what in ("offset", "size", "tar_size"))]
    if any(column not in rows.columns for column in needed):
        return None
    firsts = rows[needed].drop_duplicates(["file", "position"]).sort_values(["file", "position"], kind="stable")
    out = {}
    for file, part in firsts.groupby("file", sort=False):
        out[file] = ShardMembers(
            tuple(part["key"].astype(str)), part["position"].to_numpy(np.int64),
            {m: part[f"{m}_offset"].to_numpy(np.int64) for m in modalities},
            {m: part[f"{m}_size"].to_numpy(np.int64) for m in modalities},
            {m: int(part[f"{m}_tar_size"].iloc[0]) for m in modalities}, part["sample"].astype(str).to_numpy())
    return out


def with_member_positions(selection: Selection, rows: pd.DataFrame, modalities: Sequence[str]) -> Selection:
    """``selection`` with each tar's :class:`~ssl4eos12.members.MemberSelection` where the index records the
    members (the readers then fetch only those), else as it is."""
    from .members import MemberSelection

    if not selection:
        return selection
    positions = member_positions(rows[rows["file"].isin(list(selection))], modalities)
    if positions is None:
        return selection
    out: Selection = {}
    for file, samples in selection.items():
        members = positions[file]
        chosen = np.flatnonzero(np.isin(members.samples, list(samples)))
        out[file] = MemberSelection(samples, members.take(chosen))
    return out


def count_examples(selection: Selection) -> int:
    """Examples a selection yields: one per location kept whole, or per kept (location, timestamp)."""
    return sum(1 if times is None else len(times) for samples in selection.values() for times in samples.values())


def selected_times(samples: dict[str, frozenset[int] | None] | None) -> list[int] | None:
    """The time indices a file's selection needs (sorted), or ``None`` when it needs them all."""
    if samples is None or any(times is None for times in samples.values()):
        return None
    return sorted(set().union(*samples.values()))


def select_split(root: str, split_folder: str, modalities: Sequence[str], filters: Filters,
                 single_timestamp: bool = False, index: str | None = None, download_config=None,
                 files: Sequence[str] | None = None) -> Selection:
    """:func:`select` over the index of one split of ``root`` (see :func:`load_index` for where it is read).

    ``files``: the split's shards; one the index does not list raises (a stale index would drop it silently).
    """
    rows = load_index(root, split_folder, index, download_config)
    if files is not None:
        check_coverage(rows, files)
    return select(rows, modalities, filters, single_timestamp)


def check_coverage(rows: pd.DataFrame, files: Sequence[str]) -> None:
    """Raise :class:`SSL4EOS12DataError` when the index lacks some of ``files`` (it was written before they came)."""
    indexed = set(rows["file"].unique()) if "file" in rows.columns else set()
    missing = [name for name in files if name not in indexed]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SSL4EOS12DataError(
            f"{rows.attrs.get('source', 'the index')} does not list {len(missing)} of the {len(files)} file(s) of "
            f"the split ({', '.join(missing[:3])}{more}): rerun `ssl4eos12 index DATA_DIR` to bring it up to date"
        )


__all__ = ["CLOUD_CLASSES", "Filters", "Selection", "build_index", "check_coverage", "cloud_fraction", "count_examples",
           "footprints", "geo_metadata", "index_features", "index_variables", "load_index", "select", "select_split",
           "selected_times"]
