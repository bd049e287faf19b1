"""The conversion's plan: which shards each (config, split) gets, and the tasks that write them.

Configs: one per modality (``S1GRD``, ``S2L1C``, ``S2L2A``, ``S2RGB``, and any other modality folder asked for),
with exactly the features of the builder's config of the same name, and a light ``default`` config for the
dataset viewer: a PNG ``thumbnail`` of each location plus the scalar metadata, and an ``index`` config: the
GeoParquet index's columns (:mod:`ssl4eos12.index`, one row per (location, timestamp), ``geometry`` as WKB) for
filtering before fetching the rows of a modality config by ``sample``. Every config lists the same
locations in the same order (split-list order of the files, file order of the samples), so configs can be
zipped row by row (the index config: each location once per timestamp, in the same order).

Shard plan: a shard holds whole source files. Before anything is read, each (config, split) gets
``files_per_shard = max(1, MAX_SHARD_SIZE // (samples per file * uncompressed bytes per example))`` with
``datasets.config.MAX_SHARD_SIZE`` (500 MB, what ``Dataset.push_to_hub`` uses) and the samples per file of the
first file. At full size that is one file per S2L1C/S2L2A shard (464/428 MB), seven per S1GRD/S2RGB shard
and ~37 per ``default`` shard. Record batches hold at most 32 MB of uncompressed data
(:data:`~.formats.RECORD_BATCH_BYTES`) and never span two source files. Memory: a task keeps one decoded source
file per modality (S2L1C at full size: 464 MB) and at most two record batches of it being written (the big columns
are written from the decoded file itself; a file is written out before the next is read), plus the small columns
of one record batch.

Parallel: tasks are (config, split, shard); they run in a local process pool (spawned, ``workers``) or, with
``scheduler``, on a Dask distributed cluster whose workers see ``DATA_DIR`` and ``OUT_DIR`` at the same paths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets.utils.py_utils import convert_file_size_to_int
from datasets.utils.tqdm import tqdm as hf_tqdm

from ..constants import MODALITIES, SPLIT_FOLDERS
from ..errors import SSL4EOS12DataError, SSL4EOS12FileError
from ..index import index_features
from ..schema import SHARED_FEATURES, TIMESTAMP, example_features
from ..sources import Layout, Source, normalize_root, open_source
from ..sources.fastzip import usable_cores
from .formats import EXTENSION, RECORD_BATCH_BYTES
from .manifest import FORMAT_VERSION, RECORDS_DIR

logger = logging.getLogger(__name__)

#: Name of the light config the dataset viewer shows first.
DEFAULT_CONFIG = "default"
#: Name of the config holding the index (:mod:`ssl4eos12.index`): one row per (location, timestamp).
INDEX_CONFIG = "index"
#: Configs that read every modality present, not one.
OVERVIEW_CONFIGS = (DEFAULT_CONFIG, INDEX_CONFIG)
#: Modalities that can provide the thumbnails, in order of preference.
THUMBNAIL_SOURCES = ("S2RGB", "S2L2A", "S2L1C")
#: Estimated bytes of one string value, for the shard plan only.
_STRING_BYTES = 40


@dataclass(frozen=True)
class ShardTask:
    """One output shard: which source files go into it and how they are laid out."""

    config: str
    split: str
    index: int
    num_shards: int
    files: tuple[str, ...]
    root: str  # the data root, normalised
    layouts: tuple[Layout, ...]  # the modalities read; the first one orders the rows
    thumbnail: str | None = None  # modality the thumbnails are made from (default config only)
    rows_per_group: int = 1
    keyed: bool = False  # the source names locations by member key (the tar release): a ``key`` column

    @property
    def stem(self) -> str:
        """``{config}/{split}-NNNNN-of-MMMMM``: the shard's path without its extension."""
        return f"{self.config}/{self.split}-{self.index:05d}-of-{self.num_shards:05d}"

    @property
    def path(self) -> str:
        """Path of the shard relative to the output folder."""
        return self.stem + EXTENSION

    @property
    def record_path(self) -> str:
        return f"{RECORDS_DIR}/{self.stem}.json"

    @property
    def split_folder(self) -> str:
        return SPLIT_FOLDERS[self.split]

    def source(self) -> Source:
        """The source of the modalities this shard reads."""
        return open_source(self.root, [layout.modality for layout in self.layouts])

    @functools.cached_property
    def features(self) -> datasets.Features:
        return config_features(self.config, self.layouts, self.thumbnail, self.keyed)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of everything that decides the shard's bytes, except the source data itself."""
        spec = {
            "version": FORMAT_VERSION, "config": self.config, "split": self.split, "index": self.index,
            "num_shards": self.num_shards, "files": self.files, "thumbnail": self.thumbnail,
            "rows_per_group": self.rows_per_group, "features": self.features.to_dict(),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def config_features(config: str, layouts: tuple[Layout, ...], thumbnail: str | None,
                    keyed: bool = False) -> datasets.Features:
    """A modality config's features are the builder's; the default config's are :func:`overview_features`, the
    index config's the index file's columns (:func:`ssl4eos12.index.index_features`)."""
    if config == INDEX_CONFIG:
        return index_features(layouts)
    if config == DEFAULT_CONFIG:
        return overview_features(layouts, thumbnail, keyed)
    return example_features(layouts, keyed=keyed)


def overview_features(layouts: tuple[Layout, ...], thumbnail: str | None, keyed: bool = False) -> datasets.Features:
    """Features of the ``default`` config: a thumbnail and the scalar metadata of every modality."""
    features = {}
    if thumbnail is not None:
        features["thumbnail"] = datasets.Image()
    for name, feature in SHARED_FEATURES.items():
        features[name] = feature
        if name == "file" and keyed:
            features["key"] = datasets.Value("string")
    if thumbnail is not None:
        features["thumbnail_time_index"] = datasets.Value("int64")
    for layout in layouts:
        m = layout.modality
        features[f"{m}_time"] = datasets.List(TIMESTAMP, length=layout.num_times)
        if layout.has_cloud_mask:
            features[f"{m}_cloud_fraction"] = datasets.List(datasets.Value("float32"), length=layout.num_times)
    return datasets.Features(features)


def plan(data_dir: str, configs: Iterable[str] | None = None, splits: Iterable[str] | None = None,
         max_shard_size: int | str | None = None, on_bad_file: str = "error") -> list[ShardTask]:
    """Every shard of the conversion, computed from the file lists and the first file of each modality.

    ``configs`` defaults to every one of the four modalities of :data:`MODALITIES` present plus ``default`` and
    ``index`` (other folders, such as NDVI, LULC and DEM, when named); ``splits`` to every split present;
    ``max_shard_size`` (bytes of uncompressed data, or a string like ``"500MB"``) to
    ``datasets.config.MAX_SHARD_SIZE``.
    """
    root = normalize_root(data_dir)
    configs = list(dict.fromkeys(configs)) if configs else None
    wanted = [c for c in configs or () if c not in OVERVIEW_CONFIGS]
    # the default and index configs show every modality there is
    candidates = list(dict.fromkeys([*wanted, *MODALITIES])) \
        if not configs or set(configs) & set(OVERVIEW_CONFIGS) else wanted
    split_files, layout = _split_files(root, list(splits or SPLIT_FOLDERS), candidates)
    first_folder = SPLIT_FOLDERS[next(iter(split_files))]
    first_files = next(iter(split_files.values()))
    source = open_source(root, candidates, layout=layout)
    probes = {m: probe for m in candidates if (probe := _probe(source, first_folder, first_files, m, on_bad_file))}
    missing = [c for c in wanted if c not in probes]
    if missing:
        raise SSL4EOS12DataError(f"{root}/{first_folder}: no files of modality {', '.join(missing)}")
    tasks = []
    for config in configs or [*probes, *OVERVIEW_CONFIGS]:
        modalities, thumbnail = _config_modalities(config, probes)
        layouts = tuple(probes[m][0] for m in modalities)
        example_bytes = example_nbytes(config_features(config, layouts, thumbnail, source.keyed), layouts)
        files_per_shard, rows_per_group = shard_sizes(example_bytes, probes[modalities[0]][1], max_shard_size)
        for split, names in split_files.items():
            chunks = [tuple(names[i:i + files_per_shard]) for i in range(0, len(names), files_per_shard)]
            tasks.extend(
                ShardTask(config, split, index, len(chunks), chunk, root, layouts, thumbnail, rows_per_group,
                          source.keyed)
                for index, chunk in enumerate(chunks)
            )
    return tasks


def _split_files(root: str, splits: list[str], modalities: list[str]) -> tuple[dict[str, list[str]], str]:
    """The file names of each split present (from the first modality that lists any), and the layout of the
    modality that listed the first: a modality without files (a tar root without S1GRD) would look like Zarr zips."""
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {list(SPLIT_FOLDERS)}")
    split_files, layouts = {}, []
    for split in splits:
        for m in modalities:
            source = open_source(root, [m])
            if names := source.shards(SPLIT_FOLDERS[split]):
                split_files[split] = names
                layouts.append(source.name)
                break
    if not split_files:
        raise SSL4EOS12DataError(f"{root}: no SSL4EO-S12 files of {modalities} in split(s) {splits}")
    return split_files, layouts[0]


def _config_modalities(config: str, probes: dict) -> tuple[list[str], str | None]:
    """The modalities a config reads (the first orders the rows) and its thumbnail source."""
    if config not in OVERVIEW_CONFIGS:
        return [config], None
    modalities = [m for m in MODALITIES if m in probes]
    if not modalities:
        raise SSL4EOS12DataError(f"the {config} config needs one of {MODALITIES}; found {list(probes)}")
    if config == INDEX_CONFIG:
        return modalities, None
    thumbnail = next((m for m in THUMBNAIL_SOURCES if m in probes), None)
    if thumbnail is None:
        logger.warning("no Sentinel-2 modality to make thumbnails from: the default config has none")
    return modalities, thumbnail


def shard_sizes(example_bytes: int, samples_per_file: int, max_shard_size: int | str | None = None) -> tuple[int, int]:
    """Files per shard and rows per record batch, for examples of ``example_bytes`` uncompressed bytes."""
    max_shard_size = convert_file_size_to_int(max_shard_size or datasets.config.MAX_SHARD_SIZE)
    files_per_shard = max(1, max_shard_size // max(1, samples_per_file * example_bytes))
    return files_per_shard, max(1, RECORD_BATCH_BYTES // example_bytes)


def _probe(source: Source, split_folder: str, shards: list[str], modality: str,
           on_bad_file: str = "error") -> tuple[Layout, int] | None:
    """Layout and number of samples of the first shard's modality, or ``None`` if there is no such file.

    With ``on_bad_file="skip"`` a first shard that cannot be read gives way to the next (the conversion skips it).
    """
    for shard in shards:
        try:
            return source.probe(split_folder, shard, modality)
        except SSL4EOS12FileError as err:
            if err.problem == "file not found" and shard == shards[0]:
                return None
            if on_bad_file != "skip":
                raise
    return None


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


def read_record(out: Path, task: ShardTask) -> dict | None:
    try:
        return json.loads((out / task.record_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(out: Path, task: ShardTask) -> bool:
    """A shard is finished when its record matches the plan and its file has the recorded size."""
    record = read_record(out, task)
    if record is None or record.get("fingerprint") != task.fingerprint or record.get("skipped"):
        return False  # a shard that left files out is tried again
    try:
        return (out / task.path).stat().st_size == record["size"]
    except FileNotFoundError:
        return False


def worker_count(workers: int | None, tasks: int) -> int:
    """Local worker processes for ``tasks`` tasks: ``workers`` (default: every core), no more than tasks."""
    return max(1, min(workers or usable_cores(), tasks))


def threads_per_task(workers: int | None, scheduler: str | None, tasks: int) -> int:
    """Threads a task may use (to decode, hash, make thumbnails): the cores its local worker processes share out;
    1 on a Dask cluster, whose workers run a task on each of their threads."""
    return 1 if scheduler is not None else max(1, usable_cores() // worker_count(workers, tasks))


def run_tasks(fn: Callable, tasks: list, workers: int | None = None, scheduler: str | None = None,
              desc: str = "Converting") -> Iterator:
    """Results of ``fn(task)`` in completion order, on a Dask cluster, a process pool or inline, with a progress bar."""
    with hf_tqdm(total=len(tasks), desc=desc, unit="shard") as progress:
        for result in _map_unordered(fn, tasks, workers, scheduler):
            progress.update(1)
            yield result


def _map_unordered(fn: Callable, tasks: list, workers: int | None, scheduler: str | None) -> Iterator:
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
    workers = worker_count(workers, len(tasks))
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
