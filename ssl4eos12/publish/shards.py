"""Convert SSL4EO-S12 v1.1 to Arrow shards that ``datasets`` loads with no custom code.

The output folder is exactly the Hub repository::

    OUT_DIR/README.md                                   the dataset card (see :mod:`.card`)
    OUT_DIR/{config}/{split}-NNNNN-of-MMMMM.arrow       the shards: Arrow IPC streams (why: see :mod:`.formats`)
    OUT_DIR/.ssl4eos12/manifest.json                    what every shard holds (rows, samples, checksum, statistics)
    OUT_DIR/.ssl4eos12/shards/{config}/{split}-NNNNN-of-MMMMM.json   one record per finished shard (local only)

Configs and the shard plan: see :mod:`.plan`.

Resumable and byte-identical: a shard is written to a hidden ``.NAME.<random>.partial`` file in its folder
(which the data_files patterns never match), hashed, then ``os.replace``-d into place; its record is written
the same way afterwards. A rerun skips every shard whose record matches the plan and whose file has the
recorded size, removes leftovers, and rewrites the rest. The writer settings are fixed and nothing in a file
depends on time, paths or the order tasks finish in, so a resumed, a parallel or a Dask run produces the
same bytes as a clean sequential one (same library versions assumed).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import uuid
import warnings
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import SSL4EOS12BadFileWarning, SSL4EOS12FileError
from ..index import block_rows, cloud_fraction, geo_metadata, index_variables, is_cloudy
from ..schema import location_examples, modality_fields
from ..sources import ON_BAD_FILE_CHOICES, Block, ModalityFile, fastzip
from .formats import EXTENSION, OLD_EXTENSIONS, ShardWriter, gatherable
from .manifest import (
    CHECKSUM,
    MANIFEST_DIR,
    RECORDS_DIR,
    alignment_problems,
    merge_statistics,
    samples_digest,
    write_json_atomic,
    write_manifest,
)
from .plan import DEFAULT_CONFIG, INDEX_CONFIG, ShardTask, is_done, plan, run_tasks, threads_per_task

logger = logging.getLogger(__name__)

#: Decoded arrays a process keeps for its next source file: the big arrays (bands, cloud mask) of one file, and
#: spares. A fresh file-sized array costs the kernel a page fault and a zeroed page per page written: measured on 2
#: cores, S2L1C converted in 0.89 s per two files with reused arrays, 1.47 s with fresh ones.
REUSED_ARRAYS = 4

THUMBNAIL_BANDS = ("B04", "B03", "B02")
#: Percentiles of a thumbnail's values mapped to black and white.
THUMBNAIL_STRETCH = (2.0, 98.0)
#: A thumbnail is this many times smaller than its patch, each pixel the mean of a square of them: the viewer shows
#: images in cells of ~100-200 px, and 132 px PNGs of the 264 px patches take a quarter of the bytes (~24 kB) and
#: of the encoding time (PNG encoding was 11% of a conversion's CPU time with full-size thumbnails).
THUMBNAIL_REDUCTION = 2


def task_batches(task: ShardTask, name: str, blocks: Iterable[Block], stats: dict, threads: int = 1) -> Iterator[dict]:
    """The columns of ``blocks``, source shard ``name`` of ``task`` (:func:`read_blocks`), ``task.rows_per_group``
    rows at a time; adds to ``stats``. ``threads``: how many threads compute statistics and make thumbnails.

    The big arrays are views of the decoded file (see :meth:`~.formats.ShardWriter.gather`); ``None`` after the
    last batch of a file."""
    if task.config == DEFAULT_CONFIG:
        examples = (example for block in blocks for _, example in overview_examples(block, task.thumbnail, threads))
        for batch in _batches(examples, task.rows_per_group):  # small: thumbnails and metadata
            yield {field: [example[field] for example in batch] for field in batch[0]}
        return
    if task.config == INDEX_CONFIG:
        for block in blocks:
            table = block_rows(block, task.split)  # the index file's rows, from the same blocks
            for batch in table.to_batches(task.rows_per_group):
                yield {**dict(zip(batch.schema.names, batch.columns)), "sample": batch.column("sample").to_pylist()}
        return
    for block in blocks:
        # the statistics on helper threads (numpy releases the GIL) while the batches are copied and written
        with ThreadPoolExecutor(threads, thread_name_prefix="ssl4eos12-statistics") as pool:
            part = block.reference
            pieces = [pool.submit(piece_statistics, part, rows) for rows in statistics_pieces(part)]
            yield from modality_batches(block.file, part, task.rows_per_group, block.keys)
            for piece in pieces:  # added in a fixed order: float sums do not depend on the number of threads
                merge_statistics(stats, piece.result())
        del block, part, pieces  # the next block may be decoded into their arrays
        yield None  # the end of a block: its arrays must be written (and so freed) before the next one is read


def read_blocks(task: ShardTask, name: str, threads: int = 1,
                memory: fastzip.ArrayPool | None = None) -> Iterator[Block]:
    """The blocks of source shard ``name`` of ``task``, with the variables its config needs, each decoded as it is
    asked for: on ``threads`` threads, the big arrays into ``memory`` if given."""
    variables = {DEFAULT_CONFIG: _overview_variables(task), INDEX_CONFIG: index_variables(task.layouts)}.get(task.config)
    return fastzip.decoding(task.source().blocks(task.split_folder, name, task.layouts, variables), memory, threads)


def modality_batches(name: str, part: ModalityFile, size: int, keys=None) -> Iterator[dict]:
    """The builder's examples of a file as columns of ``size`` rows: row slices (views), not one copy per example.

    The fields are the builder's own (:func:`~ssl4eos12.schema.location_examples` and ``modality_fields``,
    indexed with a slice of rows), so a config's rows are the builder's examples by construction.
    """
    shared = part.variables
    for start in range(0, len(part.samples), size):
        rows = slice(start, start + size)
        samples = part.samples[rows].tolist()
        # yielded without a local name, so the previous batch is freed before the next one is cut
        yield {"sample": samples, "file": [name] * len(samples),
               **({} if keys is None else {"key": keys[rows].tolist()}), "center_lat": shared["center_lat"][rows],
               "center_lon": shared["center_lon"][rows], "crs": shared["crs"][rows],
               **modality_fields(part.layout.modality, part, rows, slice(None), copy=False)}


def task_examples(task: ShardTask, name: str) -> tuple[list[str], Iterator[dict]]:
    """Samples (locations, in row order) and examples, one dict per row, of one source shard of ``task``."""
    blocks = list(read_blocks(task, name))
    samples = [str(s) for block in blocks for s in block.samples]
    if task.config == INDEX_CONFIG:
        examples = (example for block in blocks for example in table_examples(block_rows(block, task.split)))
    elif task.config != DEFAULT_CONFIG:
        examples = (example for block in blocks for _, example in location_examples(block, False))
    else:
        examples = (example for block in blocks for _, example in overview_examples(block, task.thumbnail))
    return samples, examples


def table_examples(table: pa.Table) -> Iterator[dict]:
    """The rows of ``table`` as dicts of the values a reader of the shard gets (native numpy dtypes)."""
    from ..torch import arrow_to_numpy  # torch is imported lazily there: no torch needed here

    columns = arrow_to_numpy(table)
    for i in range(table.num_rows):
        yield {name: values[i] for name, values in columns.items()}


def _overview_variables(task: ShardTask) -> dict[str, list[str]]:
    """Only what the default config needs: reading S2L1C bands for its timestamps would be 464 MB per file."""
    names = ["center_lat", "center_lon", "crs", "time_", "cloud_mask"]
    return {layout.modality: names + ["bands"] * (layout.modality == task.thumbnail) for layout in task.layouts}


def overview_examples(block: Block, thumbnail: str | None, threads: int = 1) -> Iterator[tuple[int, dict]]:
    """The ``default`` config's examples of one block (``(key, example)`` pairs, like the builder's)."""
    name, parts, orders = block.file, block.parts, block.orders
    reference = next(iter(parts.values()))
    shared = reference.variables
    fractions = {
        m: cloud_fraction(part.variables["cloud_mask"]) for m, part in parts.items() if part.layout.has_cloud_mask
    }
    if thumbnail is not None:
        rgb = [parts[thumbnail].layout.band_names.index(b) for b in THUMBNAIL_BANDS]
        rows = orders[thumbnail][:len(reference.samples)]
        # the least cloudy timestamp (the first of equals); without a cloud mask, the first one
        times = [int(np.argmin(fractions[thumbnail][row])) if thumbnail in fractions else 0 for row in rows]
        bands = parts[thumbnail].variables["bands"]
        # PNG encoding is most of this config's time and releases the GIL (as numpy does): on every core
        with ThreadPoolExecutor(threads, thread_name_prefix="ssl4eos12-thumbnails") as pool:
            pngs = list(pool.map(lambda row, t: thumbnail_png(bands[row, t, rgb]), rows, times))
    for i, sample in enumerate(reference.samples):
        example = {}
        if thumbnail is not None:
            t = times[i]
            example["thumbnail"] = {"bytes": pngs[i], "path": None}
        example.update(sample=str(sample), file=name)
        if block.keys is not None:
            example["key"] = str(block.keys[i])
        example.update(center_lat=float(shared["center_lat"][i]), center_lon=float(shared["center_lon"][i]),
                       crs=int(shared["crs"][i]))
        if thumbnail is not None:
            example["thumbnail_time_index"] = t
        for m, part in parts.items():
            example[f"{m}_time"] = part.variables["time_"][orders[m][i]]
            if m in fractions:
                example[f"{m}_cloud_fraction"] = fractions[m][orders[m][i]]
        yield i, example


def thumbnail_png(rgb: np.ndarray) -> bytes:
    """A ``(3, H, W)`` true-colour patch as a PNG thumbnail: stretched so that its 2nd-98th percentiles span black to
    white, then :data:`THUMBNAIL_REDUCTION` times smaller (each pixel the rounded mean of a square of them).

    One stretch for all three bands keeps the colour balance.
    """
    from PIL import Image

    if rgb.dtype == np.uint8:  # S2RGB: the stretch as a lookup table PIL applies to every band
        image = Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, -1))).point(_byte_table(rgb).tolist() * 3)
    else:
        image = Image.fromarray(np.ascontiguousarray(np.moveaxis(_stretched(rgb), 0, -1)))
    if min(image.size) >= THUMBNAIL_REDUCTION:
        image = image.reduce(THUMBNAIL_REDUCTION)
    buffer = BytesIO()
    # level 1 with run-length matching (zlib's Z_RLE): ~20% faster to encode than level 1 with the default strategy
    # (itself twice as fast as level 6) and 12% smaller, measured on the generated full-size S2RGB patches
    image.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def _stretched(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` stretched to uint8 (its 2nd-98th percentiles to 0-255; NaN to 0)."""
    if rgb.dtype.kind in "iu" and rgb.dtype.itemsize <= 2:  # every band of the release: through a lookup table
        return _stretch_integers(rgb)
    values = rgb.astype(np.float32)
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, THUMBNAIL_STRETCH) if finite.size else (0.0, 1.0)
    return _stretch(values, low, high)


def _stretch(values: np.ndarray, low, high) -> np.ndarray:
    """float32 ``values`` from ``low``-``high`` to 0-255 (uint8); NaN to 0."""
    scaled = (values - np.float32(low)) * np.float32(255.0 / max(float(high - low), 1e-6))
    return np.nan_to_num(np.clip(scaled, 0, 255), nan=0).round().astype(np.uint8)


def _byte_table(rgb: np.ndarray) -> np.ndarray:
    """The stretch of uint8 ``rgb`` as a table of 256 uint8 values: percentiles from a histogram."""
    ranks = np.cumsum(np.bincount(rgb.reshape(-1), minlength=256))
    low, high = (_percentile_of_counts(ranks, q) for q in THUMBNAIL_STRETCH)
    return _stretch(np.arange(256, dtype=np.float32), low, high)


def _stretch_integers(rgb: np.ndarray) -> np.ndarray:
    """:func:`_stretch` of integer values: percentiles from a histogram, each possible value stretched once.

    ~2.5x faster than sorting and stretching every pixel; the percentiles are ``np.percentile``'s (linear).
    """
    smallest = int(rgb.min())
    offsets = (rgb if smallest == 0 and rgb.dtype.kind == "u" else rgb.astype(np.int32) - smallest).reshape(-1)
    counts = np.bincount(offsets)
    ranks = np.cumsum(counts)
    low, high = (_percentile_of_counts(ranks, q) + smallest for q in THUMBNAIL_STRETCH)
    table = _stretch(np.arange(smallest, smallest + len(counts), dtype=np.float32), low, high)
    return table[offsets].reshape(rgb.shape)


def _percentile_of_counts(ranks: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (``np.percentile``'s linear method) of the values ``0..`` whose cumulative counts
    are ``ranks``."""
    position = (int(ranks[-1]) - 1) * q / 100
    below = math.floor(position)
    first, second = np.searchsorted(ranks, [below, min(below + 1, int(ranks[-1]) - 1)], side="right")
    return float(first) + (float(second) - float(first)) * (position - below)


#: Locations per piece of a file's statistics (:func:`statistics_pieces`).
STATISTICS_PIECE = 16


def statistics_pieces(part: ModalityFile) -> list[slice]:
    """The rows of ``part`` in pieces of :data:`STATISTICS_PIECE` locations, whose statistics can be computed on
    several threads at once: fixed pieces, so that the float sums are the same whatever the number of threads."""
    return [slice(start, start + STATISTICS_PIECE) for start in range(0, len(part.samples), STATISTICS_PIECE)]


def piece_statistics(part: ModalityFile, rows: slice) -> dict:
    """Per-band sums (exact integers for integer bands), cloud and no-data pixel counts of ``rows`` of one file:
    what :func:`~.manifest.merge_statistics` adds up."""
    stats: dict = {}
    bands = part.variables["bands"][rows]
    per_band = stats["bands"] = [{"count": 0, "sum": 0, "sum_sq": 0} for _ in range(bands.shape[2])]
    if bands.dtype.kind in "iu" and bands.dtype.itemsize <= 2:
        sums, squares = _integer_sums(bands)
        for entry, total, total_sq in zip(per_band, sums.tolist(), squares.tolist()):
            entry["count"] += bands.size // len(per_band)
            entry["sum"] += total
            entry["sum_sq"] += total_sq
    else:
        _add_float_statistics(per_band, bands)
    if part.layout.has_cloud_mask:
        mask = part.variables["cloud_mask"][rows]
        stats["cloud_pixels"] = int(np.count_nonzero(is_cloudy(mask)))
        stats["pixels"] = int(mask.size)
    return stats


def _integer_sums(bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-band sums and sums of squares of 8- or 16-bit integer ``(sample, time, band, ...)`` bands, int64.

    One (sample, timestamp) at a time, a contiguous block in the time-major arrays the sources decode and small
    enough for the cache. Squares in 32 bits (exact: at most 2**32 - 2**17 + 1 for uint16), summed in 64 bits
    (exact for < 2**31 values of a band per file): ~3x faster than float64 or int64 temporaries.
    """
    square_type = np.uint32 if bands.dtype.kind == "u" else np.int32
    sum_type = np.uint64 if bands.dtype.kind == "u" else np.int64
    num_bands = bands.shape[2]
    sums, squares = np.zeros(num_bands, sum_type), np.zeros(num_bands, sum_type)
    for t in range(bands.shape[1]):
        for i in range(bands.shape[0]):
            block = bands[i, t].reshape(num_bands, -1)
            sums += block.sum(axis=1, dtype=sum_type)
            squares += np.square(block, dtype=square_type).sum(axis=1, dtype=sum_type)
    return sums, squares


#: Values per block of the float statistics: small enough for the cache.
_STATISTICS_BLOCK = 1 << 20


def _add_float_statistics(per_band: list[dict], bands: np.ndarray) -> None:
    """Float (or wide integer) bands: sums in float64 (int64 for integers), no-data (NaN) counted, block by block."""
    samples, times, num_bands = bands.shape[:3]
    pixels = math.prod(bands.shape[3:])
    integer = bands.dtype.kind in "iu"
    step = max(1, _STATISTICS_BLOCK // (num_bands * pixels))
    for t in range(times):  # one timestamp at a time: contiguous in the time-major arrays the sources decode
        for start in range(0, samples, step):
            block = bands[start:start + step, t].astype(np.int64 if integer else np.float64)
            block = block.reshape(-1, num_bands, pixels)
            if integer:
                sums, squares = block.sum(axis=(0, 2)), np.einsum("sbp,sbp->b", block, block)
                for entry, total, total_sq in zip(per_band, sums, squares):
                    entry["count"] += block.shape[0] * pixels
                    entry["sum"] += int(total)
                    entry["sum_sq"] += int(total_sq)
                continue
            missing = np.isnan(block)
            np.copyto(block, 0.0, where=missing)  # what np.nansum does, once for both sums
            nans = np.count_nonzero(missing, axis=(0, 2))
            sums, squares = block.sum(axis=(0, 2)), np.einsum("sbp,sbp->b", block, block)
            for entry, nan, total, total_sq in zip(per_band, nans, sums, squares):
                entry["count"] += block.shape[0] * pixels - int(nan)
                entry["sum"] += float(total)
                entry["sum_sq"] += float(total_sq)
                entry["nan"] = entry.get("nan", 0) + int(nan)


def arrow_column(values, pa_type: pa.DataType, gather=None) -> pa.Array:
    """One column from a ``(rows, ...)`` numpy array (shared, not copied), an Arrow array, or a list of per-row
    values. ``gather``: a writer's :meth:`~.formats.ShardWriter.gather`, for arrays worth writing block by block."""
    if isinstance(values, pa.Array):
        return values if values.type == pa_type else values.cast(pa_type)
    if isinstance(pa_type, pa.ExtensionType) or pa.types.is_list(pa_type) or pa.types.is_fixed_size_list(pa_type):
        if not isinstance(values, np.ndarray):
            values = np.stack([np.asarray(value) for value in values])
        elif gather is not None and gatherable(values):
            values = gather(values)
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


def convert_shard(task: ShardTask, out_dir: str, on_bad_file: str = "error", threads: int = 1,
                  reuse_arrays: bool = False, _skip: dict | None = None) -> dict:
    """Write one shard (to a temporary name, renamed when complete) and its record; return the record.

    ``threads``: how many threads it may use (to decode, compute statistics, make thumbnails). ``reuse_arrays``:
    decode into the arrays of this process's last source file (:func:`decode_memory`), and keep this one's.

    ``on_bad_file="skip"``: a source file that cannot be read is left out with a :class:`SSL4EOS12BadFileWarning`
    and listed in the record's ``skipped`` (name and problem), as the builder skips it.
    """
    out = Path(out_dir)
    final = out / task.path
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    features = task.features
    schema = features.arrow_schema
    stats: dict = {}
    files, rows, num_bytes, skipped = [], 0, 0, []
    # the index config is GeoParquet-compatible: its schema carries the ``geo`` metadata (no bbox: not known yet)
    metadata = {b"geo": json.dumps(geo_metadata([])).encode()} if task.config == INDEX_CONFIG else None
    try:
        with ShardWriter(partial, features, metadata) as writer:  # hashed while written, fsync-ed when closed
            for name in task.files:
                samples, file_rows = [], 0
                try:
                    if _skip and name in _skip:  # found bad after rows of it were written: see below
                        raise _skip[name]
                    blocks = read_blocks(task, name, threads, decode_memory() if reuse_arrays else None)
                    for batch in task_batches(task, name, blocks, stats, threads):
                        if batch is None:
                            writer.drain()
                            continue
                        table = pa.Table.from_arrays([arrow_column(batch[f.name], f.type, writer.gather)
                                                      for f in schema], schema=schema)
                        writer.write_table(table)  # one record batch per batch
                        num_bytes += table.nbytes
                        file_rows += table.num_rows
                        samples += batch["sample"]
                        del batch, table  # before the next batch is cut (the writer holds <= 64 MB of earlier ones)
                except SSL4EOS12FileError as err:
                    if on_bad_file != "skip":
                        raise
                    if samples:  # rows of it are written already: write the shard again without it
                        return convert_shard(task, out_dir, on_bad_file, threads, reuse_arrays,
                                             {**(_skip or {}), name: err})
                    skipped.append({"name": name, "problem": err.problem})  # no local path: the card is published
                    warnings.warn(f"skipping {err}", SSL4EOS12BadFileWarning, stacklevel=2)
                    continue
                rows += file_rows
                # the locations, once each (the index config has a row per timestamp): configs stay comparable
                locations = list(dict.fromkeys(samples))
                files.append({"name": name, "rows": file_rows, "samples_sha256": samples_digest(locations)})
        digest = writer.checksum
        size = partial.stat().st_size
        os.replace(partial, final)  # on disk already: a crash never leaves a renamed, empty shard
    finally:
        partial.unlink(missing_ok=True)
    record = {
        "path": task.path, "config": task.config, "split": task.split, "index": task.index,
        "num_shards": task.num_shards, "rows": rows, "num_bytes": num_bytes, "size": size, CHECKSUM: digest,
        "fingerprint": task.fingerprint, "files": files, "modalities": [layout.modality for layout in task.layouts],
        "band_names": list(task.layouts[0].band_names), "thumbnail": task.thumbnail,
        "features": features.to_dict(), "statistics": stats, **({"skipped": skipped, "planned": list(task.files)} if skipped else {}),
    }
    write_json_atomic(out / task.record_path, record)
    return record


@functools.cache
def decode_memory() -> fastzip.ArrayPool:
    """This process's arrays to decode source files into (:data:`REUSED_ARRAYS`), kept from one task to the next:
    by a worker process for its life, by :func:`convert` run here until it returns."""
    return fastzip.ArrayPool(REUSED_ARRAYS)


def _clean(out: Path, tasks: list[ShardTask]) -> None:
    """Remove half-written files, and the shards (and records) of an older plan of the (config, split)s redone."""
    planned = {task.stem: task.path for task in tasks}
    for partial in [*out.glob(".*.partial"), *(out / MANIFEST_DIR).glob(".*.partial")]:
        partial.unlink(missing_ok=True)  # the card's and the manifest's
    for config, split in dict.fromkeys((task.config, task.split) for task in tasks):
        folders = [(out / config, suffix) for suffix in (EXTENSION, *OLD_EXTENSIONS)] + \
            [(out / RECORDS_DIR / config, ".json")]
        for folder, suffix in folders:
            for partial in folder.glob(f".{split}-*.partial"):
                partial.unlink(missing_ok=True)
            for path in folder.glob(f"{split}-*-of-*{suffix}"):
                # a shard (or record) of another plan, or a shard of another format
                stem = f"{config}/{path.name.removesuffix(suffix)}"
                if not (stem in planned if suffix == ".json" else planned.get(stem) == f"{stem}{suffix}"):
                    logger.info(f"removing {path}: not part of the current plan")
                    path.unlink(missing_ok=True)


def convert(data_dir, out_dir, configs=None, splits=None, workers=None, scheduler=None, max_shard_size=None,
            on_bad_file: str = "error", stats: dict | None = None) -> dict:
    """Convert the Zarr zips under ``data_dir`` to Arrow shards, a manifest and a dataset card in ``out_dir``.

    Args:
        data_dir: root of the SSL4EO-S12 v1.1 files (local path or fsspec URL).
        out_dir: output folder; reruns resume in it.
        configs: modality configs and/or ``"default"`` (default: every modality present and ``"default"``).
        splits: ``"train"`` and/or ``"validation"`` (default: every split present).
        workers: local worker processes (default: the CPU count; 1 runs in this process).
        scheduler: address of a Dask distributed scheduler to run the tasks on instead.
        max_shard_size: uncompressed bytes per shard (default ``datasets.config.MAX_SHARD_SIZE``, 500 MB); a shard
            always holds whole source files, at least one.
        on_bad_file: ``"error"`` (default) stops at the first source file that cannot be read; ``"skip"`` leaves
            such files out (one :class:`SSL4EOS12BadFileWarning` each) and lists them in the manifest (``skipped``
            of each shard) and the card. A rerun tries them again.
        stats: if given, filled with ``written`` and ``done`` (shards written now, and found finished).

    Returns:
        The manifest (also written to ``OUT_DIR/.ssl4eos12/manifest.json``).
    """
    from .card import write_card  # the card imports the plan: imported here, not at the top

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if on_bad_file not in ON_BAD_FILE_CHOICES:
        raise ValueError(f"on_bad_file={on_bad_file!r}: choose from {ON_BAD_FILE_CHOICES}")
    tasks = plan(data_dir, configs, splits, max_shard_size, on_bad_file=on_bad_file)
    _clean(out, tasks)
    todo = [task for task in tasks if not is_done(out, task)]
    if len(todo) < len(tasks):
        logger.info(f"{len(tasks) - len(todo)} of {len(tasks)} shard(s) already converted: skipping them")
    if todo:
        # a Dask worker lives on after the conversion: it does not keep a file's arrays
        threads = threads_per_task(workers, scheduler, len(todo))
        task = functools.partial(convert_shard, out_dir=str(out), on_bad_file=on_bad_file, threads=threads,
                                 reuse_arrays=scheduler is None)
        try:
            for _ in run_tasks(task, todo, workers, scheduler):
                pass
        finally:
            decode_memory().clear()
    if stats is not None:
        stats.update(written=len(todo), done=len(tasks) - len(todo))
    manifest = write_manifest(out)
    for problem in alignment_problems(manifest):
        logger.warning(problem)
    write_card(out, manifest)
    return manifest
