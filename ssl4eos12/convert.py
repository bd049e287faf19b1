"""Convert the SSL4EO-S12 v1.1 Zarr zips to Parquet shards that ``datasets`` loads with no custom code.

The output folder is exactly the Hub repository::

    OUT_DIR/README.md                                   the dataset card (see :mod:`ssl4eos12.card`)
    OUT_DIR/{config}/{split}-NNNNN-of-MMMMM.parquet     the shards
    OUT_DIR/.ssl4eos12/manifest.json                    what every shard holds (rows, samples, sha256, statistics)
    OUT_DIR/.ssl4eos12/shards/{config}/{split}-NNNNN-of-MMMMM.json   one record per finished shard (local only)

Configs: one per modality (``S1GRD``, ``S2L1C``, ``S2L2A``, ``S2RGB``, and any other modality folder asked for),
with exactly the features of the builder's config of the same name, and a light ``default`` config for the
dataset viewer: a PNG ``thumbnail`` of each location plus the scalar metadata. Every config lists the same
locations in the same order (split-list order of the files, file order of the samples), so configs can be
zipped row by row.

Shard plan: a shard holds whole source files. Before anything is read, each (config, split) gets
``files_per_shard = max(1, MAX_SHARD_SIZE // (samples per file * uncompressed bytes per example))`` with
``datasets.config.MAX_SHARD_SIZE`` (500 MB, what ``Dataset.push_to_hub`` uses) and the samples per file of the
first file. At full size that is one file per S2L1C/S2L2A shard (464/428 MB), seven per S1GRD/S2RGB shard
and ~37 per ``default`` shard; zstd then brings the files to a few hundred MB. Row groups hold at most
50 MB of uncompressed data (:data:`ROW_GROUP_BYTES`) and never span two source files, far below the dataset
viewer's 286 MiB limit; a task keeps one decoded source file per modality, and one row group, in memory.

Resumable and byte-identical: a shard is written to a hidden ``.NAME.<random>.partial`` file in its folder
(which the data_files patterns never match), hashed, then ``os.replace``-d into place; its record is written
the same way afterwards. A rerun skips every shard whose record matches the plan and whose file has the
recorded size, removes leftovers, and rewrites the rest. The writer settings are fixed and nothing in a file
depends on time, paths or the order tasks finish in, so a resumed, a parallel or a Dask run produces the
same bytes as a clean sequential one (same library versions assumed).

Parallel: tasks are (config, split, shard); they run in a local process pool (spawned, ``workers``) or, with
``scheduler``, on a Dask distributed cluster whose workers see ``DATA_DIR`` and ``OUT_DIR`` at the same paths.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.arrow_writer import get_parquet_column_options
from datasets.utils.py_utils import convert_file_size_to_int
from datasets.utils.tqdm import tqdm as hf_tqdm

from .builder import join_on_sample, location_examples, modality_fields
from .constants import MODALITIES, SPLIT_FOLDERS
from .layout import SSL4EOS12DataError, list_split_files, normalize_root
from .native import arrow_to_numpy
from .schema import SHARED_FEATURES, TIMESTAMP, example_features
from .zarrzip import Layout, ModalityFile, SSL4EOS12FileError, layout_of, open_zarr_zip, read_modality_file

__all__ = [
    "DEFAULT_CONFIG", "MANIFEST_FILE", "ShardTask", "config_features", "convert", "convert_shard", "overview_features",
    "plan", "read_manifest", "verify", "verify_shard", "write_manifest",
]

logger = logging.getLogger(__name__)

#: Name of the light config the dataset viewer shows first.
DEFAULT_CONFIG = "default"
#: Modalities that can provide the thumbnails, in order of preference, and the bands they are made of.
THUMBNAIL_SOURCES = ("S2RGB", "S2L2A", "S2L1C")
THUMBNAIL_BANDS = ("B04", "B03", "B02")
#: Percentiles of a thumbnail's values mapped to black and white.
THUMBNAIL_STRETCH = (2.0, 98.0)

MANIFEST_DIR = ".ssl4eos12"
MANIFEST_FILE = f"{MANIFEST_DIR}/manifest.json"
RECORDS_DIR = f"{MANIFEST_DIR}/shards"
#: Bumped whenever the bytes written for the same input change: finished shards of older versions are redone.
FORMAT_VERSION = 1

#: Uncompressed bytes per row group: half of ``datasets.config.MAX_ROW_GROUP_SIZE`` (100 MB). Encoding a row group
#: of nested int16 arrays takes a few times its size (levels, dictionary indices, pages); at 50 MB a worker's
#: peak memory stays that of reading one S2L1C file (measured: ~1.0 GB, against ~1.4 GB at 100 MB), and the
#: viewer and streaming readers fetch less per row group. Same file sizes.
ROW_GROUP_BYTES = 50_000_000
#: Estimated bytes of one string value, for the shard plan only.
_STRING_BYTES = 40
_ZSTD_LEVEL = 3


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTask:
    """One output shard: which source files go into it and how they are laid out."""

    config: str
    split: str
    index: int
    num_shards: int
    files: tuple[str, ...]
    split_dir: str  # ROOT/{train,val}
    layouts: tuple[Layout, ...]  # the modalities read; the first one orders the rows
    thumbnail: Optional[str] = None  # modality the thumbnails are made from (default config only)
    rows_per_group: int = 1

    @property
    def path(self) -> str:
        """Path of the shard relative to the output folder."""
        return f"{self.config}/{self.split}-{self.index:05d}-of-{self.num_shards:05d}.parquet"

    @property
    def record_path(self) -> str:
        return f"{RECORDS_DIR}/{self.path.removesuffix('.parquet')}.json"

    @functools.cached_property
    def features(self) -> datasets.Features:
        return config_features(self.config, self.layouts, self.thumbnail)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of everything that decides the shard's bytes, except the source data itself."""
        spec = {
            "version": FORMAT_VERSION, "config": self.config, "split": self.split, "index": self.index,
            "num_shards": self.num_shards, "files": self.files, "thumbnail": self.thumbnail,
            "rows_per_group": self.rows_per_group, "features": self.features.to_dict(),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def config_features(config: str, layouts: tuple[Layout, ...], thumbnail: Optional[str]) -> datasets.Features:
    """A modality config's features are the builder's; the default config's are :func:`overview_features`."""
    if config == DEFAULT_CONFIG:
        return overview_features(layouts, thumbnail)
    return example_features(layouts)


def overview_features(layouts: tuple[Layout, ...], thumbnail: Optional[str]) -> datasets.Features:
    """Features of the ``default`` config: a thumbnail and the scalar metadata of every modality."""
    features = {}
    if thumbnail is not None:
        features["thumbnail"] = datasets.Image()
    features.update(SHARED_FEATURES)
    if thumbnail is not None:
        features["thumbnail_time_index"] = datasets.Value("int64")
    for layout in layouts:
        m = layout.modality
        features[f"{m}_time"] = datasets.List(TIMESTAMP, length=layout.num_times)
        if layout.has_cloud_mask:
            features[f"{m}_cloud_fraction"] = datasets.List(datasets.Value("float32"), length=layout.num_times)
    return datasets.Features(features)


def plan(data_dir: str, configs: Optional[Iterable[str]] = None, splits: Optional[Iterable[str]] = None,
         max_shard_size: int | str | None = None) -> list[ShardTask]:
    """Every shard of the conversion, computed from the file lists and the first file of each modality.

    ``configs`` defaults to every modality present plus ``default``; ``splits`` to every split present;
    ``max_shard_size`` (bytes of uncompressed data, or a string like ``"500MB"``) to
    ``datasets.config.MAX_SHARD_SIZE``.
    """
    root = normalize_root(data_dir)
    configs = list(dict.fromkeys(configs)) if configs else None
    wanted = [c for c in configs or () if c != DEFAULT_CONFIG]
    # the default config shows every modality there is
    candidates = list(dict.fromkeys([*wanted, *MODALITIES])) if not configs or DEFAULT_CONFIG in configs else wanted
    split_files = _split_files(root, list(splits or SPLIT_FOLDERS), candidates)
    first_dir = posixpath.join(root, SPLIT_FOLDERS[next(iter(split_files))])
    first_file = next(iter(split_files.values()))[0]
    probes = {m: probe for m in candidates if (probe := _probe(posixpath.join(first_dir, m, first_file), m))}
    missing = [c for c in wanted if c not in probes]
    if missing:
        raise SSL4EOS12DataError(f"{first_dir}: no files of modality {', '.join(missing)}")
    tasks = []
    for config in configs or [*probes, DEFAULT_CONFIG]:
        modalities, thumbnail = _config_modalities(config, probes)
        layouts = tuple(probes[m][0] for m in modalities)
        example_bytes = example_nbytes(config_features(config, layouts, thumbnail), layouts)
        files_per_shard, rows_per_group = shard_sizes(example_bytes, probes[modalities[0]][1], max_shard_size)
        for split, names in split_files.items():
            chunks = [tuple(names[i:i + files_per_shard]) for i in range(0, len(names), files_per_shard)]
            split_dir = posixpath.join(root, SPLIT_FOLDERS[split])
            tasks.extend(
                ShardTask(config, split, index, len(chunks), chunk, split_dir, layouts, thumbnail, rows_per_group)
                for index, chunk in enumerate(chunks)
            )
    return tasks


def _split_files(root: str, splits: list[str], modalities: list[str]) -> dict[str, list[str]]:
    """The file names of each split present (from the first modality that lists any)."""
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {list(SPLIT_FOLDERS)}")
    split_files = {}
    for split in splits:
        names = next((n for m in modalities if (n := list_split_files(root, SPLIT_FOLDERS[split], m))), None)
        if names:
            split_files[split] = names
    if not split_files:
        raise SSL4EOS12DataError(f"{root}: no SSL4EO-S12 files of {modalities} in split(s) {splits}")
    return split_files


def _config_modalities(config: str, probes: dict) -> tuple[list[str], Optional[str]]:
    """The modalities a config reads (the first orders the rows) and its thumbnail source."""
    if config != DEFAULT_CONFIG:
        return [config], None
    modalities = [m for m in MODALITIES if m in probes]
    if not modalities:
        raise SSL4EOS12DataError(f"the default config needs one of {MODALITIES}; found {list(probes)}")
    thumbnail = next((m for m in THUMBNAIL_SOURCES if m in probes), None)
    if thumbnail is None:
        logger.warning("no Sentinel-2 modality to make thumbnails from: the default config has none")
    return modalities, thumbnail


def shard_sizes(example_bytes: int, samples_per_file: int, max_shard_size: int | str | None = None) -> tuple[int, int]:
    """Files per shard and rows per row group, for examples of ``example_bytes`` uncompressed bytes."""
    max_shard_size = convert_file_size_to_int(max_shard_size or datasets.config.MAX_SHARD_SIZE)
    files_per_shard = max(1, max_shard_size // max(1, samples_per_file * example_bytes))
    return files_per_shard, max(1, ROW_GROUP_BYTES // example_bytes)


def _probe(url: str, modality: str) -> Optional[tuple[Layout, int]]:
    """Layout and number of samples of a file, or ``None`` if there is no such file."""
    try:
        with open_zarr_zip(url, whole=False) as dataset:  # metadata only
            return layout_of(url, modality, dataset), dataset.sizes["sample"]
    except SSL4EOS12FileError as err:
        if err.problem == "file not found":
            return None
        raise


def example_nbytes(features: datasets.Features, layouts: tuple[Layout, ...]) -> int:
    """Uncompressed bytes of one example, estimated from its features (images as raw RGB of the patch size)."""
    image_bytes = 3 * layouts[0].height * layouts[0].width

    def nbytes(feature) -> int:
        if isinstance(feature, datasets.Image):
            return image_bytes
        if isinstance(feature, datasets.features.features._ArrayXD):
            return math.prod(feature.shape) * np.dtype(feature.dtype).itemsize
        if isinstance(feature, datasets.List):
            return max(feature.length, 1) * nbytes(feature.feature)
        return _STRING_BYTES if feature.dtype in ("string", "large_string", "binary", "large_binary") \
            else feature.pa_type.byte_width

    return sum(nbytes(feature) for feature in features.values())


# ----------------------------------------------------------------------------------------------------------------
# Examples of a task, from the source files
# ----------------------------------------------------------------------------------------------------------------


def task_batches(task: ShardTask, name: str, stats: dict) -> Iterator[dict]:
    """The columns of one source file of ``task``, ``task.rows_per_group`` rows at a time; adds to ``stats``."""
    if task.config == DEFAULT_CONFIG:
        _, examples = task_examples(task, name)
        for batch in _batches(examples, task.rows_per_group):  # small: thumbnails and metadata
            yield {field: [example[field] for example in batch] for field in batch[0]}
        return
    layout = task.layouts[0]
    part = read_modality_file(_url(task, layout.modality, name), layout.modality, expected=layout)
    _add_statistics(stats, part)
    yield from modality_batches(name, part, task.rows_per_group)


def modality_batches(name: str, part: ModalityFile, size: int) -> Iterator[dict]:
    """The builder's examples of a file as columns of ``size`` rows: row slices, not one copy per example.

    The fields are the builder's own (:func:`~ssl4eos12.builder.location_examples` and ``modality_fields``,
    indexed with a slice of rows), so a config's rows are the builder's examples by construction.
    """
    shared = part.variables
    for start in range(0, len(part.samples), size):
        rows = slice(start, start + size)
        samples = part.samples[rows].tolist()
        # yielded without a local name, so the previous batch is freed before the next one is cut
        yield {"sample": samples, "file": [name] * len(samples), "center_lat": shared["center_lat"][rows],
               "center_lon": shared["center_lon"][rows], "crs": shared["crs"][rows],
               **modality_fields(part.layout.modality, part, rows, slice(None))}


def task_examples(task: ShardTask, name: str) -> tuple[list[str], Iterator[dict]]:
    """Samples (in row order) and examples, one dict per row, of one source file of ``task``."""
    if task.config != DEFAULT_CONFIG:
        layout = task.layouts[0]
        part = read_modality_file(_url(task, layout.modality, name), layout.modality, expected=layout)
        parts = {layout.modality: part}
        examples = location_examples(name, parts, join_on_sample(_url(task, "*", name), parts), False)
    else:
        parts = {layout.modality: _read_overview_variables(task, layout, name) for layout in task.layouts}
        examples = overview_examples(name, parts, join_on_sample(_url(task, "*", name), parts), task.thumbnail)
    samples = [str(s) for s in next(iter(parts.values())).samples]
    return samples, (example for _, example in examples)


def _url(task: ShardTask, modality: str, name: str) -> str:
    return posixpath.join(task.split_dir, modality, name)


def _read_overview_variables(task: ShardTask, layout: Layout, name: str) -> ModalityFile:
    """Only what the default config needs: reading S2L1C bands for its timestamps would be 464 MB per file."""
    names = ["center_lat", "center_lon", "crs", "time_", "cloud_mask"]
    if layout.modality == task.thumbnail:
        names.append("bands")
    return read_modality_file(_url(task, layout.modality, name), layout.modality, expected=layout, variables=names)


def overview_examples(
    name: str, parts: dict[str, ModalityFile], orders: dict[str, np.ndarray], thumbnail: Optional[str]
) -> Iterator[tuple[int, dict]]:
    """The ``default`` config's examples of one file (``(key, example)`` pairs, like the builder's)."""
    reference = next(iter(parts.values()))
    shared = reference.variables
    fractions = {
        m: cloud_fraction(part.variables["cloud_mask"]) for m, part in parts.items() if part.layout.has_cloud_mask
    }
    if thumbnail is not None:
        rgb = [parts[thumbnail].layout.band_names.index(b) for b in THUMBNAIL_BANDS]
    for i, sample in enumerate(reference.samples):
        example = {}
        if thumbnail is not None:
            row = orders[thumbnail][i]
            # the least cloudy timestamp (the first of equals); without a cloud mask, the first one
            t = int(np.argmin(fractions[thumbnail][row])) if thumbnail in fractions else 0
            png = thumbnail_png(parts[thumbnail].variables["bands"][row, t, rgb])
            example["thumbnail"] = {"bytes": png, "path": None}
        example.update(sample=str(sample), file=name, center_lat=float(shared["center_lat"][i]),
                       center_lon=float(shared["center_lon"][i]), crs=int(shared["crs"][i]))
        if thumbnail is not None:
            example["thumbnail_time_index"] = t
        for m, part in parts.items():
            example[f"{m}_time"] = part.variables["time_"][orders[m][i]]
            if m in fractions:
                example[f"{m}_cloud_fraction"] = fractions[m][orders[m][i]]
        yield i, example


def cloud_fraction(cloud_mask: np.ndarray) -> np.ndarray:
    """Share of the pixels of each (sample, timestamp) that the cloud mask flags (any non-zero class)."""
    fraction = np.count_nonzero(cloud_mask, axis=(-2, -1)) / math.prod(cloud_mask.shape[-2:])
    return fraction.astype(np.float32)


def thumbnail_png(rgb: np.ndarray) -> bytes:
    """A ``(3, H, W)`` true-colour patch as PNG, stretched so its 2nd-98th percentiles span black to white.

    One stretch for all three bands keeps the colour balance.
    """
    from PIL import Image

    values = rgb.astype(np.float32)
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, THUMBNAIL_STRETCH) if finite.size else (0.0, 1.0)
    scaled = (values - low) * (255.0 / max(float(high - low), 1e-6))
    pixels = np.nan_to_num(np.clip(scaled, 0, 255), nan=0).round().astype(np.uint8)
    buffer = BytesIO()
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _add_statistics(stats: dict, part: ModalityFile) -> None:
    """Add one file to per-band sums (exact integers for integer bands), cloud and no-data pixel counts."""
    bands = part.variables["bands"]
    per_band = stats.setdefault("bands", [{"count": 0, "sum": 0, "sum_sq": 0} for _ in range(bands.shape[2])])
    for b, entry in enumerate(per_band):
        values = bands[:, :, b]
        if values.dtype.kind in "iu":
            entry["count"] += values.size
            entry["sum"] += int(values.sum(dtype=np.int64))
            entry["sum_sq"] += int(np.square(values, dtype=np.int64).sum())
        else:
            values = values.astype(np.float64)
            valid = int(np.count_nonzero(~np.isnan(values)))
            entry["count"] += valid
            entry["sum"] += float(np.nansum(values))
            entry["sum_sq"] += float(np.nansum(np.square(values)))
            entry["nan"] = entry.get("nan", 0) + values.size - valid
    if part.layout.has_cloud_mask:
        mask = part.variables["cloud_mask"]
        stats["cloud_pixels"] = stats.get("cloud_pixels", 0) + int(np.count_nonzero(mask))
        stats["pixels"] = stats.get("pixels", 0) + int(mask.size)


# ----------------------------------------------------------------------------------------------------------------
# Arrow from numpy
# ----------------------------------------------------------------------------------------------------------------


def arrow_column(values, pa_type: pa.DataType) -> pa.Array:
    """One column from a ``(rows, ...)`` numpy array (shared, not copied) or a list of per-row values."""
    if isinstance(pa_type, pa.ExtensionType) or pa.types.is_list(pa_type) or pa.types.is_fixed_size_list(pa_type):
        if not isinstance(values, np.ndarray):
            values = np.stack([np.asarray(value) for value in values])
        return _nested_array(values, pa_type)
    return pa.array(values, type=pa_type)


def _nested_array(array: np.ndarray, pa_type: pa.DataType) -> pa.Array:
    """``(rows, d1, d2, ...)`` numpy array to Arrow (nested) lists of ``pa_type``, sharing the numpy buffer."""
    if isinstance(pa_type, pa.ExtensionType):  # datasets' ArrayND: lists of lists over the same values
        return pa.ExtensionArray.from_storage(pa_type, _nested_array(array, pa_type.storage_type))
    if pa.types.is_fixed_size_list(pa_type) or pa.types.is_list(pa_type):
        rows, width = array.shape[:2]
        child = _nested_array(array.reshape(rows * width, *array.shape[2:]), pa_type.value_type)
        if pa.types.is_fixed_size_list(pa_type):
            return pa.FixedSizeListArray.from_arrays(child, type=pa_type)
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * np.int32(width))
        return pa.ListArray.from_arrays(offsets, child, type=pa_type)
    return pa.array(np.ascontiguousarray(array), type=pa_type)


def _batches(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def writer_options(features: datasets.Features, schema: pa.Schema) -> dict:
    """``pq.ParquetWriter`` options: ``datasets``' per-column choices (and content-defined chunking), zstd.

    Fixed settings, no timestamps: the same table always gives the same bytes.
    """
    options = get_parquet_column_options(features, schema)
    # datasets picks snappy; zstd is much smaller for imagery. Embedded files (PNG) stay uncompressed.
    compression = {leaf: "zstd" if codec == "snappy" else codec for leaf, codec in options["compression"].items()}
    levels = {leaf: _ZSTD_LEVEL for leaf, codec in compression.items() if codec == "zstd"}
    return dict(options, compression=compression, compression_level=levels, write_page_index=True,
                use_content_defined_chunking=datasets.config.DEFAULT_CDC_OPTIONS)


# ----------------------------------------------------------------------------------------------------------------
# One task
# ----------------------------------------------------------------------------------------------------------------


def convert_shard(task: ShardTask, out_dir: str) -> dict:
    """Write one shard (to a temporary name, renamed when complete) and its record; return the record."""
    out = Path(out_dir)
    final = out / task.path
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    features = task.features
    schema = features.arrow_schema
    stats: dict = {}
    files, rows, num_bytes = [], 0, 0
    try:
        with pq.ParquetWriter(partial, schema, **writer_options(features, schema)) as writer:
            for name in task.files:
                samples = []
                for batch in task_batches(task, name, stats):
                    table = pa.Table.from_arrays([arrow_column(batch[f.name], f.type) for f in schema], schema=schema)
                    writer.write_table(table)  # one row group per batch
                    num_bytes += table.nbytes
                    samples += batch["sample"]
                    del batch, table  # before the next batch is cut: one in memory at a time
                rows += len(samples)
                files.append({"name": name, "rows": len(samples), "samples_sha256": samples_digest(samples)})
        digest = file_sha256(partial)
        size = partial.stat().st_size
        _fsync(partial)  # on disk before it becomes visible: a crash never leaves a renamed, empty shard
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    record = {
        "path": task.path, "config": task.config, "split": task.split, "index": task.index,
        "num_shards": task.num_shards, "rows": rows, "num_bytes": num_bytes, "size": size, "sha256": digest,
        "fingerprint": task.fingerprint, "files": files, "modalities": [layout.modality for layout in task.layouts],
        "band_names": list(task.layouts[0].band_names), "thumbnail": task.thumbnail,
        "features": features.to_dict(), "statistics": stats,
    }
    _write_json_atomic(out / task.record_path, record)
    return record


def samples_digest(samples: list[str]) -> str:
    return hashlib.sha256("\n".join(samples).encode()).hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _read_record(out: Path, task: ShardTask) -> Optional[dict]:
    try:
        return json.loads((out / task.record_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(out: Path, task: ShardTask) -> bool:
    """A shard is finished when its record matches the plan and its file has the recorded size."""
    record = _read_record(out, task)
    if record is None or record.get("fingerprint") != task.fingerprint:
        return False
    try:
        return (out / task.path).stat().st_size == record["size"]
    except FileNotFoundError:
        return False


def _clean(out: Path, tasks: list[ShardTask]) -> None:
    """Remove half-written files, and the shards (and records) of an older plan of the (config, split)s redone."""
    planned = {task.path for task in tasks}
    for partial in [*out.glob(".*.partial"), *(out / MANIFEST_DIR).glob(".*.partial")]:
        partial.unlink(missing_ok=True)  # the card's and the manifest's
    for config, split in dict.fromkeys((task.config, task.split) for task in tasks):
        for folder, suffix in ((out / config, ".parquet"), (out / RECORDS_DIR / config, ".json")):
            for partial in folder.glob(f".{split}-*.partial"):
                partial.unlink(missing_ok=True)
            for path in folder.glob(f"{split}-*-of-*{suffix}"):
                if f"{config}/{path.name.removesuffix(suffix)}.parquet" not in planned:
                    logger.info(f"removing {path}: not part of the current plan")
                    path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Running tasks
# ----------------------------------------------------------------------------------------------------------------


def run_tasks(fn: Callable, tasks: list, workers: Optional[int] = None, scheduler: Optional[str] = None,
              desc: str = "Converting") -> Iterator:
    """Results of ``fn(task)`` in completion order, on a Dask cluster, a process pool or inline, with a progress bar."""
    with hf_tqdm(total=len(tasks), desc=desc, unit="shard") as progress:
        for result in _map_unordered(fn, tasks, workers, scheduler):
            progress.update(1)
            yield result


def _map_unordered(fn: Callable, tasks: list, workers: Optional[int], scheduler: Optional[str]) -> Iterator:
    if not tasks:
        return
    if scheduler is not None:
        from distributed import Client
        from distributed import as_completed as dask_as_completed

        with Client(scheduler) as client:  # connecting to a running scheduler: closing leaves the cluster up
            futures = client.map(fn, tasks, pure=False)
            for future in dask_as_completed(futures):
                yield future.result()
        return
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers == 1:
        yield from map(fn, tasks)
        return
    # spawn, not fork: zarr, fsspec and pyarrow start threads that a forked child would inherit broken
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


# ----------------------------------------------------------------------------------------------------------------
# Conversion and manifest
# ----------------------------------------------------------------------------------------------------------------


def convert(data_dir, out_dir, configs=None, splits=None, workers=None, scheduler=None, max_shard_size=None) -> dict:
    """Convert the Zarr zips under ``data_dir`` to Parquet shards, a manifest and a dataset card in ``out_dir``.

    Args:
        data_dir: root of the SSL4EO-S12 v1.1 files (local path or fsspec URL).
        out_dir: output folder; reruns resume in it.
        configs: modality configs and/or ``"default"`` (default: every modality present and ``"default"``).
        splits: ``"train"`` and/or ``"validation"`` (default: every split present).
        workers: local worker processes (default: the CPU count; 1 runs in this process).
        scheduler: address of a Dask distributed scheduler to run the tasks on instead.
        max_shard_size: uncompressed bytes per shard (default ``datasets.config.MAX_SHARD_SIZE``, 500 MB); a shard
            always holds whole source files, at least one.

    Returns:
        The manifest (also written to ``OUT_DIR/.ssl4eos12/manifest.json``).
    """
    from .card import write_card

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan(data_dir, configs, splits, max_shard_size)
    _clean(out, tasks)
    todo = [task for task in tasks if not is_done(out, task)]
    if len(todo) < len(tasks):
        logger.info(f"{len(tasks) - len(todo)} of {len(tasks)} shard(s) already converted: skipping them")
    for _ in run_tasks(functools.partial(convert_shard, out_dir=str(out)), todo, workers, scheduler):
        pass
    manifest = write_manifest(out)
    for problem in alignment_problems(manifest):
        logger.warning(problem)
    write_card(out, manifest)
    return manifest


def write_manifest(out_dir) -> dict:
    """Gather the records of every shard present into ``.ssl4eos12/manifest.json``, with per-config totals."""
    out = Path(out_dir)
    split_order = {split: i for i, split in enumerate(SPLIT_FOLDERS)}
    records = []
    for path in (out / RECORDS_DIR).glob("*/*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        if (out / record["path"]).is_file():
            records.append(record)
    records.sort(key=lambda r: (r["config"], split_order.get(r["split"], len(split_order)), r["split"], r["index"]))
    configs: dict[str, dict] = {}
    shards = []
    for record in records:
        record = dict(record)
        features, statistics = record.pop("features"), record.pop("statistics")
        info = configs.setdefault(record["config"], {
            "features": features, "modalities": record["modalities"], "band_names": record["band_names"],
            "thumbnail": record["thumbnail"], "splits": {}, "statistics": {},
        })
        if info["features"] != features:
            raise ValueError(f"{record['path']}: features differ from the other shards of {record['config']}; "
                             f"convert the config again")
        split = info["splits"].setdefault(record["split"], {"num_shards": 0, "num_rows": 0, "num_bytes": 0, "size": 0})
        split["num_shards"] += 1
        split["num_rows"] += record["rows"]
        split["num_bytes"] += record["num_bytes"]
        split["size"] += record["size"]
        _merge_statistics(info["statistics"], statistics)
        for key in ("modalities", "band_names", "thumbnail"):
            del record[key]
        shards.append(record)
    for info in configs.values():
        info["statistics"] = summarize_statistics(info["statistics"], info["band_names"])
    from . import __version__

    manifest = {"format_version": FORMAT_VERSION, "generator": f"ssl4eos12 {__version__}", "configs": configs,
                "shards": shards}
    _write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest


def _merge_statistics(total: dict, stats: dict) -> None:
    for key, value in stats.items():
        if key == "bands":
            bands = total.setdefault("bands", [{} for _ in value])
            for entry, add in zip(bands, value):
                for name, number in add.items():
                    entry[name] = entry.get(name, 0) + number
        else:
            total[key] = total.get(key, 0) + value


def summarize_statistics(totals: dict, band_names: list[str]) -> dict:
    """Per-band mean and (population) standard deviation, cloud and no-data fractions, from the sums."""
    summary = {}
    if "bands" in totals:
        summary["bands"] = []
        names = band_names or [str(i) for i in range(len(totals["bands"]))]  # a file without band names
        for name, entry in zip(names, totals["bands"]):
            count, total, total_sq = entry["count"], entry["sum"], entry["sum_sq"]
            if not count:  # every value missing
                summary["bands"].append({"band": name, "count": 0, "mean": None, "std": None})
                continue
            # exact until the division for integer bands: Python ints do not overflow
            variance = (count * total_sq - total * total) / (count * count)
            band = {"band": name, "count": count, "mean": total / count, "std": math.sqrt(max(variance, 0.0))}
            if "nan" in entry:
                band["nan_fraction"] = entry["nan"] / (count + entry["nan"])
            summary["bands"].append(band)
    if totals.get("pixels"):
        summary["cloud_fraction"] = totals["cloud_pixels"] / totals["pixels"]
    return summary


def read_manifest(out_dir) -> dict:
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))


def alignment_problems(manifest: dict) -> list[str]:
    """Source files whose samples come in a different order in different configs (configs not row-aligned)."""
    orders: dict[tuple[str, str], dict[str, str]] = {}
    for record in manifest["shards"]:
        for source in record["files"]:
            orders.setdefault((record["split"], source["name"]), {})[record["config"]] = source["samples_sha256"]
    return [
        f"{split}/{name}: the configs {sorted(digests)} do not list its samples in the same order"
        for (split, name), digests in orders.items() if len(set(digests.values())) > 1
    ]


# ----------------------------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------------------------

#: Mismatching values reported per shard before moving on.
_MAX_VALUE_PROBLEMS = 5


def verify(out_dir, data_dir, workers=None, scheduler=None) -> list[str]:
    """Check every shard against the manifest (sha256, rows, samples) and every value against its source files.

    Returns human-readable problems, each naming the shard (or file) concerned; ``[]`` means all is well.
    """
    out = Path(out_dir).absolute()
    try:
        manifest = read_manifest(out)
    except FileNotFoundError:
        return [f"{out}: no {MANIFEST_FILE}; convert first"]
    records = {record["path"]: record for record in manifest["shards"]}
    problems = [f"{path}: not in the manifest" for path in
                sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.parquet")) if path not in records]
    problems += alignment_problems(manifest)
    by_split: dict[tuple[str, str], list[dict]] = {}
    for record in records.values():
        by_split.setdefault((record["config"], record["split"]), []).append(record)
    # the plan gives what the source files say about each config; the shard boundaries are the records'
    tasks = plan(data_dir, list(manifest["configs"]), list(dict.fromkeys(split for _, split in by_split)))
    templates, planned_files = {}, {}
    for task in tasks:
        templates.setdefault((task.config, task.split), task)
        planned_files.setdefault((task.config, task.split), []).extend(task.files)
    checks = []
    for key, split_records in by_split.items():
        split_records.sort(key=lambda r: r["index"])
        shard_files = [source["name"] for record in split_records for source in record["files"]]
        if shard_files != planned_files.get(key, []):
            problems.append(f"{key[0]}/{key[1]}: the shards hold {len(shard_files)} source file(s), {data_dir} lists "
                            f"{len(planned_files.get(key, []))} (or in another order)")
        if key not in templates:
            continue
        for record in split_records:
            task = dataclasses.replace(templates[key], index=record["index"], num_shards=record["num_shards"],
                                       files=tuple(source["name"] for source in record["files"]))
            if record["fingerprint"] != task.fingerprint:
                problems.append(f"{task.path}: converted with other features or settings than {data_dir} gives")
            checks.append((task, record))
    check = functools.partial(verify_shard, out_dir=str(out))
    for shard_problems in run_tasks(check, checks, workers, scheduler, desc="Verifying"):
        problems.extend(shard_problems)
    return sorted(problems)


def verify_shard(check: tuple[ShardTask, dict], out_dir: str) -> list[str]:
    """Problems of one shard: checksum, size, schema, rows, samples and every value against the source."""
    task, record = check
    path = Path(out_dir) / task.path
    if not path.is_file():
        return [f"{task.path}: missing"]
    problems = []
    if path.stat().st_size != record["size"] or file_sha256(path) != record["sha256"]:
        problems.append(f"{task.path}: sha256 differs from the manifest (modified or corrupt)")
    try:
        parquet = pq.ParquetFile(path)
        features = datasets.Features.from_arrow_schema(parquet.schema_arrow)
    except Exception as err:
        return problems + [f"{task.path}: not a readable Parquet file ({type(err).__name__}: {err})"]
    if features != task.features:
        return problems + [f"{task.path}: features differ from those of the source files"]
    if parquet.metadata.num_rows != record["rows"]:
        problems.append(f"{task.path}: {parquet.metadata.num_rows} rows, the manifest says {record['rows']}")
    expected = _expected_rows(task, record, problems)
    mismatches = 0
    try:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            columns = arrow_to_numpy(table)
            for i in range(table.num_rows):
                row_index, example = next(expected, (None, None))
                if example is None:
                    problems.append(f"{task.path}: more rows than its source files have")
                    return problems
                for name, value in example.items():
                    if not same_value(columns[name][i], value):
                        mismatches += 1
                        problems.append(f"{task.path}: row {row_index} ({example.get('sample')}), "
                                        f"{name} differs from the source")
                        if mismatches >= _MAX_VALUE_PROBLEMS:
                            return problems
    except Exception as err:  # a corrupt page, a source file that cannot be read
        return problems + [f"{task.path}: cannot compare with the source ({type(err).__name__}: {err})"]
    if next(expected, None) is not None:
        problems.append(f"{task.path}: fewer rows than its source files have")
    return problems


def _expected_rows(task: ShardTask, record: dict, problems: list[str]) -> Iterator[tuple[int, dict]]:
    """The source's examples of a shard, in order; notes files whose samples differ from the record's."""
    recorded = {source["name"]: source["samples_sha256"] for source in record["files"]}
    index = 0
    for name in task.files:
        samples, examples = task_examples(task, name)
        if recorded.get(name) != samples_digest(samples):
            problems.append(f"{task.path}: samples of {name} differ from the manifest")
        for example in examples:
            yield index, example
            index += 1


def same_value(actual, expected) -> bool:
    """Equal in value and dtype; NaN equals NaN; strings, lists of strings and images compared as such."""
    if isinstance(expected, (str, list, dict)):
        return actual == expected
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    return bool(np.array_equal(actual, expected, equal_nan=actual.dtype.kind in "fc"))
