"""SSL4EO-S12 v1.1 as a Hugging Face ``datasets`` builder.

SSL4EO-S12 v1.1 (Blumenstiel et al., 2025, https://arxiv.org/abs/2503.00168) is a multimodal,
multiseasonal Earth-observation pre-training dataset: 246,144 locations, four seasonal timestamps each,
seen by Sentinel-2 L1C, Sentinel-2 L2A, a Sentinel-2 RGB product and Sentinel-1 GRD, as 264 x 264 pixel
patches. The authors publish it as 3,846 Zarr v2 zip files per modality on the Hugging Face Hub
(``embed2scale/SSL4EO-S12-v1.1-Zarr``) and at https://datapub.fz-juelich.de/ssl4eo-s12/, laid out as::

    ROOT/splits/ssl4eos12_{train,val}.txt          optional lists of file names
    ROOT/{train,val}/{S1GRD,S2L1C,S2L2A,S2RGB}/ssl4eos12_{train,val}_seasonal_data_NNNNNN.zarr.zip

Since February 2026 the authors' main Hub repository (``embed2scale/SSL4EO-S12-v1.1``) holds the same data
as webdataset tars of per-location Zarr zips, with NDVI, LULC and DEM besides (the +1000 S2 offset removed)::

    ROOT/{train,val}/{S2L1C,S2L2A,S2RGB,S1GRD,NDVI,LULC,DEM}/ssl4eos12_shard_NNNNNN.tar

This builder reads either release as it is (the layout is recognised from the files), from a local folder, an ``http(s)://`` mirror or ``hf://``,
and yields one example per location (or per location and timestamp) with every modality, timestamp,
coordinate and metadata field, bit-identical to what xarray reads. One shard is one source file (or one
tar name), so streaming spreads files over DataLoader workers and nodes.

Usage::

    import ssl4eos12
    from datasets import load_dataset
    ds = load_dataset("ssl4eos12", "S2L2A", data_dir="data/ssl4eo-s12", split="validation")

Cite: see :data:`ssl4eos12.constants.CITATION`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import logging
import os
import posixpath
import re
import sys
import warnings
from dataclasses import dataclass

import datasets
from datasets.builder import Key

from .catalog import fingerprint
from .checks import check_modalities_keyword, check_modalities_present
from .constants import (
    CITATION,
    DESCRIPTION,
    HOMEPAGE,
    HOSTED_ROOT,
    LICENSE,
    MODALITIES,
    SPLIT_FOLDERS,
    WEBDATASET_HOSTED_ROOT,
    WEBDATASET_ONLY_MODALITIES,
    split_list_path,
)
from .errors import SSL4EOS12BadFileWarning, SSL4EOS12DataError, SSL4EOS12EmptySelectionWarning, SSL4EOS12FileError
from .index import Filters, count_examples, select_split, selected_times
from .members import members_of
from .prefetch import prefetch
from .schema import example_features, location_examples
from .sources import ON_BAD_FILE_CHOICES, SOURCES, Layout, Source, fastzip, normalize_root, open_source
from .sources.failures import diagnose_root, remote_failure_message
from .sources.remote import READ_TIMEOUT, FetchOptions, is_remote
from .streaming import PrefetchingExamplesIterable
from .timeorder import TIME_ORDERS, by_season, season_selection
from .torch import native_format

logger = logging.getLogger(__name__)

#: reshard() splits each source file into this many sample ranges.
RESHARD_PARTS_PER_FILE = 4


@dataclass
class SSL4EOS12Config(datasets.BuilderConfig):
    """BuilderConfig for SSL4EO-S12 v1.1.

    Args:
        modalities: a list of modality folders to join on file and sample (default: the config's own); the
            first orders the rows. Checked when the builder is created: a list (not a string) of folders the
            root has, keeping the modality of a single-modality config name.
        single_timestamp: one example per (location, timestamp) instead of one per location.
        root: root of the data (local path, ``http(s)://`` or ``hf://`` URL); ``data_dir`` works too.
            Without either, the hosted Zarr copy on the Hub is read (``HOSTED_ROOT``), or the webdataset
            repository (``WEBDATASET_HOSTED_ROOT``) for NDVI, LULC and DEM, which only it has.
        on_bad_file: ``"error"`` (default) raises on a bad source file; ``"skip"`` skips it with a
            :class:`SSL4EOS12BadFileWarning` per skipped file (in a tar: the rest of that tar).
        layout: ``"zarr"`` (64-sample Zarr zips) or ``"webdataset"`` (tars); default: recognised from the
            files. Needed only where a root holds both.
        time_order: ``"file"`` (default) keeps the files' order of each location's timestamps (by date);
            ``"season"`` orders them by month of year as the authors' ``reindex_seasonal``: by the months of the
            first of ``modalities`` with more than one dated timestamp, one order for every time-indexed field of
            every modality (slot t is one acquisition round). A one-timestamp modality (DEM) stays as it is; one
            with another number of timestamps raises ``SSL4EOS12DataError``. See :mod:`ssl4eos12.timeorder`.
        remote_prefetch: remote roots: source files fetched ahead of the one being decoded (default 1; 0:
            none), each with every modality read. Each holds its compressed bytes in memory (70-460 MB per
            modality file at full size).
        remote_connections: remote roots: parallel byte-range requests per file (default: 1 for a server on
            this machine, 4 otherwise; more helps where one connection is slower than the link).
        remote_timeout: remote roots: seconds without a byte before a read is retried (default 60), with
            ``datasets``' read-retry policy.

    Select before reading (served by the root's GeoParquet index, see :mod:`ssl4eos12.index`; only files that
    hold a match are opened, and the examples are the unfiltered ones):
        bbox: ``(min_lon, min_lat, max_lon, max_lat)``: locations whose centre lies inside, edges included;
            ``min_lon > max_lon`` means the box crosses the antimeridian.
        time_range: ``(start, end)``, ISO strings or datetimes (UTC; naive means UTC), start inclusive, end
            exclusive: every timestamp of every modality of the config must lie inside. Modalities without
            dates are exempt: a static layer (DEM, one timestamp at time 0) never fails a time filter.
        max_cloud_fraction: at most this share (0-1) of cloud mask pixels in the cloud classes 3-5 at every
            timestamp (the largest of the config's Sentinel-2 modalities counts).
        samples: location ids to keep (e.g. ``["0000173"]``).
        index: the index to filter with, when not at ``ROOT/splits/ssl4eos12_{train,val}_index.parquet``: a
            ``.parquet`` file or URL (one or more splits), or a folder or URL prefix holding those files.
        With ``single_timestamp=True`` each (location, timestamp) is judged alone.
    """

    modalities: list[str] | None = None
    single_timestamp: bool = False
    root: str | None = None
    on_bad_file: str = "error"
    bbox: tuple | None = None
    time_range: tuple | None = None
    max_cloud_fraction: float | None = None
    samples: list[str] | None = None
    index: str | None = None
    layout: str | None = None
    time_order: str = "file"
    remote_prefetch: int = 1
    remote_connections: int | None = None
    remote_timeout: float = READ_TIMEOUT

    def check_release_keywords(self) -> None:
        """``layout`` and ``time_order`` name known values (run when the builder is created)."""
        if self.layout is not None and self.layout not in SOURCES:
            raise ValueError(f"layout must be one of {list(SOURCES)} or None, got {self.layout!r}")
        if self.time_order not in TIME_ORDERS:
            raise ValueError(f"time_order must be one of {TIME_ORDERS}, got {self.time_order!r}")

    def __post_init__(self):
        super().__post_init__()
        self.filters()  # a bad filter keyword fails when the builder is created
        self.fetch_options()  # so does a bad remote_* value

    def fetch_options(self) -> FetchOptions:
        return FetchOptions(connections=self.remote_connections, prefetch=self.remote_prefetch,
                            timeout=self.remote_timeout)

    def filters(self) -> Filters:
        """The selection keywords, checked (``ValueError`` naming the bad one)."""
        return Filters.from_keywords(self.bbox, self.time_range, self.max_cloud_fraction, self.samples)


def check_keywords(config_kwargs: dict) -> None:
    """Every keyword is one the config has: a misspelling gets one line naming it and the valid ones."""
    known = {field.name for field in dataclasses.fields(SSL4EOS12Config)}
    unknown = sorted(set(config_kwargs) - known)
    if unknown:
        hints = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        said = ", ".join(f"{name!r}" + (f" (did you mean {hints[name][0]!r}?)" if hints[name] else "") for name in unknown)
        valid = sorted(known - {"name", "version", "description", "data_files"})
        raise ValueError(f"unknown keyword(s) {said} for the ssl4eos12 builder; valid keywords: {', '.join(valid)}")


class SSL4EOS12(datasets.GeneratorBasedBuilder):
    """SSL4EO-S12 v1.1: Sentinel-1/2 time series of 246,144 locations, read from the original Zarr zips."""

    BUILDER_CONFIG_CLASS = SSL4EOS12Config
    BUILDER_CONFIGS = [  # noqa: RUF012 - datasets reads this class attribute
        *(SSL4EOS12Config(name=m, modalities=[m], description=f"{m} time series") for m in MODALITIES),
        SSL4EOS12Config(name="all", modalities=list(MODALITIES), description="all four modalities, joined"),
        *(SSL4EOS12Config(name=m, modalities=[m], description=f"{m} (webdataset release only)")
          for m in WEBDATASET_ONLY_MODALITIES),
    ]
    DEFAULT_CONFIG_NAME = "all"
    # One location of all modalities is ~17 MB at full size: keep the Arrow writer's buffer small.
    DEFAULT_WRITER_BATCH_SIZE = 8

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        """The datasets config, its keywords checked first: one clear error here, not a traceback later."""
        check_keywords(config_kwargs)
        check_modalities_keyword(config_kwargs.get("modalities"), config_name or self.DEFAULT_CONFIG_NAME)
        on_bad_file = config_kwargs.get("on_bad_file")
        if on_bad_file is not None and on_bad_file not in ON_BAD_FILE_CHOICES:
            raise ValueError(f"on_bad_file={on_bad_file!r}: choose from {ON_BAD_FILE_CHOICES}")
        config, config_id = super()._create_builder_config(config_name, custom_features, config_id, **config_kwargs)
        config.check_release_keywords()
        if config.modalities is not None:
            check_modalities_present(data_root(config), config.modalities)
        config.filters()  # bbox, time_range, max_cloud_fraction, samples: ValueError naming the bad one
        return config, config_id

    def _info(self):
        return datasets.DatasetInfo(
            description=DESCRIPTION, citation=CITATION, homepage=HOMEPAGE, license=LICENSE, features=None
        )

    def _split_generators(self, dl_manager):
        if self.config.on_bad_file not in ON_BAD_FILE_CHOICES:
            raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE_CHOICES}, got {self.config.on_bad_file!r}")
        source = self._source(dl_manager.download_config)
        splits = []
        # streaming some splits: the others' files and indexes are not looked at
        requested = self.__dict__.get("_requested_splits") or SPLIT_FOLDERS
        for split, folder in SPLIT_FOLDERS.items():
            if split not in requested:
                continue
            files = _shards(source, folder)
            if files:
                splits.append(datasets.SplitGenerator(name=split, gen_kwargs={"files": files, "split_folder": folder}))
        if not splits and requested is not SPLIT_FOLDERS:
            present = [split for split, folder in SPLIT_FOLDERS.items() if split not in requested and _shards(source, folder)]
            if present:
                asked = ", ".join(repr(name) for name in sorted(requested))
                raise ValueError(f"split={asked}: {source.root} holds no files of it; available: {', '.join(present)}")
        if not splits:
            first = source.modalities[0]
            if source.root.startswith("hf://") and datasets.config.HF_HUB_OFFLINE:
                raise SSL4EOS12DataError(
                    f"{source.root}: HF_HUB_OFFLINE=1 is set, so the Hub is not read (it looks empty offline); "
                    f"unset HF_HUB_OFFLINE, or pass data_dir= (or root=) a local copy")
            if is_remote(source.root):  # a root that cannot be reached looks empty to fsspec
                message = diagnose_root(source.root, split_list_path(SPLIT_FOLDERS["train"]), source.download_config)
                if message:
                    raise SSL4EOS12DataError(message)
            raise SSL4EOS12DataError(
                f"{source.root}: no SSL4EO-S12 files for {first}: expected train/ or val/ folders "
                f"({', '.join(f'{f}/{first}/*.zarr.zip' for f in SPLIT_FOLDERS.values())}) or splits/ lists, "
                f"or webdataset tars ({', '.join(f'{f}/{first}/*.tar' for f in SPLIT_FOLDERS.values())})"
            )
        all_files = splits[0].gen_kwargs["files"]
        streaming = isinstance(dl_manager, datasets.StreamingDownloadManager)
        for split_generator in splits:
            # parallel to files: the locations (and timestamps) of each file to yield (None: all)
            split_generator.gen_kwargs["selections"] = self._select(source, split_generator, dl_manager.download_config,
                                                                    streaming)
        # probed from a selected file where there is one: a file without a match is never opened
        selected = next((g.gen_kwargs for g in splits if g.gen_kwargs["files"]), None)
        layouts = self._probe_layouts(source, selected or {**splits[0].gen_kwargs, "files": all_files})
        times = {layout.modality: layout.num_times for layout in layouts}
        if self.config.single_timestamp and len(set(times.values())) > 1:
            raise ValueError(
                f"single_timestamp=True needs one number of timestamps across the modalities, but they have "
                f"{times}: an example per timestamp has no counterpart in a modality with fewer (DEM has one, "
                f"static); load that modality without single_timestamp, or separately"
            )
        features = example_features(layouts, self.config.single_timestamp, keyed=source.keyed)
        if self.info.features is None:
            self.info.features = features
        for split_generator in splits:
            # a tuple, not a list: datasets shards list-valued gen_kwargs
            split_generator.gen_kwargs["layouts"] = layouts
            # parallel to files: the samples of each file a shard yields (None: all); see reshard()
            split_generator.gen_kwargs["sample_ranges"] = [None] * len(split_generator.gen_kwargs["files"])
            # recognised once here, not again in every worker
            split_generator.gen_kwargs["layout"] = source.name
        return splits

    def _select(self, source: Source, split_generator, download_config, streaming: bool) -> list:
        """Keep only the files with a match to the filters (their selections, parallel to ``files``).

        A selection that keeps nothing says so: a warning when streaming (the stream would be silently empty), an
        error when the prepared split is asked for (:meth:`_as_dataset`).
        """
        gen_kwargs = split_generator.gen_kwargs
        filters = self.config.filters()
        if not filters:
            return [None] * len(gen_kwargs["files"])
        selection = select_split(source.root, gen_kwargs["split_folder"], source.modalities, filters,
                                 self.config.single_timestamp, self.config.index, download_config,
                                 files=gen_kwargs["files"])
        files = [name for name in gen_kwargs["files"] if name in selection]
        examples = count_examples({f: selection[f] for f in files})
        logger.info(f"{split_generator.name}: {filters.describe()} selects {len(files)} of {len(gen_kwargs['files'])} "
                    f"file(s), {examples} example(s)")
        if source.keyed and is_remote(source.root) and files and members_of(selection[files[0]]) is None:
            logger.warning(f"{split_generator.name}: the index of {source.root} does not record where the members "
                           f"are, so each selected tar is streamed whole; `ssl4eos12 index {source.root} --out PATH` "
                           f"(and index=PATH) records them, and the selection then fetches only its members")
        if not examples and streaming:
            warnings.warn(_empty_selection(filters, split_generator.name, len(gen_kwargs["files"])),
                          SSL4EOS12EmptySelectionWarning, stacklevel=2)
        gen_kwargs["files"] = files
        return [selection[name] for name in files]

    def _array_pool(self, arrays: int) -> fastzip.ArrayPool:
        """Arrays to decode files into in a DataLoader worker, kept for the next file and the next shard (one
        shard is one file).

        A block is let go before the next is decoded, so once its examples' views are collated the last file's
        arrays take the next one's: a fresh file-sized array costs the kernel about as much as decoding into it.
        The pool keeps ``arrays`` of them (two decoded files' worth of memory) while the worker lives.
        """
        pool = self.__dict__.get("_decode_arrays")
        if pool is None or pool.keep < arrays:
            pool = self.__dict__["_decode_arrays"] = fastzip.ArrayPool(arrays)
        return pool

    def __getstate__(self):
        # a DataLoader worker gets its own arrays (and a lock cannot be pickled)
        return {name: value for name, value in super().__getstate__().items() if name != "_decode_arrays"}

    def _source(self, download_config=None, layout: str | None = None) -> Source:
        return open_source(data_root(self.config), self.config.modalities or MODALITIES,
                           download_config or self._download_config(), layout or self.config.layout,
                           self.config.fetch_options())

    def _probe_layouts(self, source: Source, gen_kwargs: dict) -> tuple[Layout, ...]:
        """Layouts of the first readable file (any bad file is the reader's to report or skip)."""
        for name in gen_kwargs["files"]:
            try:
                return source.layouts(gen_kwargs["split_folder"], name)
            except SSL4EOS12FileError:
                if self.config.on_bad_file != "skip":
                    raise
        raise SSL4EOS12DataError(
            f"{source.root}/{gen_kwargs['split_folder']}: no readable file among {len(gen_kwargs['files'])}"
        )

    def _download_config(self) -> datasets.DownloadConfig:
        """The token and storage options the builder was given, as the reading side expects them."""
        return datasets.DownloadConfig(token=self.token, storage_options=self.storage_options)

    def as_streaming_dataset(self, split=None, base_path=None):
        with self.asking_for(split):
            return super().as_streaming_dataset(split, base_path)

    @contextlib.contextmanager
    def asking_for(self, split):
        """Within it, ``_split_generators`` lists and selects only the splits named in ``split`` (a ``split=``
        argument; ``None``: every split): their errors and warnings name them, not another split."""
        self._requested_splits = _split_names(split)
        try:
            yield
        finally:
            del self._requested_splits

    def download_and_prepare(self, output_dir=None, download_config=None, download_mode=None, *args, **kwargs):
        if output_dir is None:
            self._key_cache_by_data(download_config, download_mode)
        return super().download_and_prepare(output_dir, download_config, download_mode, *args, **kwargs)

    def as_dataset(self, *args, **kwargs):
        if self._output_dir == self._cache_dir:
            self._key_cache_by_data()
        return super().as_dataset(*args, **kwargs)

    def _relative_data_dir(self, with_version=True, with_hash=True) -> str:
        relative = super()._relative_data_dir(with_version, with_hash)
        data = self.__dict__.get("_data_fingerprint")
        return posixpath.join(relative, f"data-{data}") if with_hash and data else relative

    def _key_cache_by_data(self, download_config=None, download_mode=None) -> None:
        """Key the prepared cache by the data it is built from (:func:`ssl4eos12.catalog.fingerprint`), the way
        ``datasets`` keys its packaged builders by their data files: a changed root is prepared anew, an unchanged
        one reuses its cache."""
        if "_data_fingerprint" in self.__dict__:
            return
        self._data_fingerprint = fingerprint(data_root(self.config), self.config.modalities or MODALITIES,
                                             self.config.index, download_config or self._download_config())
        self._cache_dir = self._output_dir = self._build_cache_dir()
        info_file = os.path.join(self._cache_dir, datasets.config.DATASET_INFO_FILENAME)
        if download_mode != datasets.DownloadMode.FORCE_REDOWNLOAD and os.path.exists(info_file):
            self.info = datasets.DatasetInfo.from_directory(self._cache_dir)

    def _as_dataset(self, split=None, *args, **kwargs) -> datasets.Dataset:
        """The prepared split, formatted like streaming yields it: numpy arrays of the files' dtypes."""
        filters = self.config.filters()
        if filters:
            for name in _split_names(split) or ():
                recorded = self.info.splits.get(name) if self.info.splits else None
                if recorded is not None and recorded.num_examples == 0:
                    raise SSL4EOS12DataError(_empty_selection(filters, name))
        return native_format(super()._as_dataset(split, *args, **kwargs))

    def _generate_shards(self, files, split_folder, layouts, sample_ranges, selections, layout):
        yield from files

    def _generate_more_gen_kwargs(self, files, split_folder, layouts, sample_ranges, selections, layout):
        """Split each file into sample ranges, for ``IterableDataset.reshard()`` when files < workers.

        A chunk holds all samples of its timestamp (and a tar is read front to back), so every part still
        reads its whole file: resharding trades I/O for parallelism.
        """
        source = self._source(layout=layout)
        for name, sample_range, selection in zip(files, sample_ranges, selections):
            start, stop = sample_range or (0, None)
            if stop is None:
                stop = source.probe(split_folder, name, layouts[0].modality)[1]
            step = max(1, -(-(stop - start) // RESHARD_PARTS_PER_FILE))
            parts = [(a, min(a + step, stop)) for a in range(start, stop, step)]
            yield {"files": [name] * len(parts), "split_folder": split_folder, "layouts": layouts,
                   "sample_ranges": parts, "selections": [selection] * len(parts), "layout": layout}

    def _get_examples_iterable_for_split(self, split_generator):
        # streaming: fetch the next shards' files while the current one is decoded
        return PrefetchingExamplesIterable(
            self._generate_examples, split_generator.gen_kwargs, self._generate_more_gen_kwargs,
            fetch_fn=self._fetch_thunks, ahead=self._prefetch_ahead(), features=self.info.features,
        )

    def _prefetch_ahead(self) -> int:
        return self.config.remote_prefetch if is_remote(data_root(self.config)) else 0  # local files: nothing to fetch

    def _fetch_thunks(self, files, split_folder, layouts, sample_ranges, selections, layout) -> list:
        """One thunk per file: it fetches the file and returns what decodes it (``Source.fetch``)."""
        source = self._source(layout=layout)
        thunks = []
        for name, selection in zip(files, selections):
            times = selected_times(selection)  # a remote file then sends only those timestamps' chunks
            if members_of(selection) is not None:  # an index that records the members: only those are read
                thunks.append(functools.partial(_deferred, source.blocks_for, split_folder, name, layouts, selection))
            elif times is None:
                thunks.append(functools.partial(source.fetch, split_folder, name, layouts))
            else:  # read by range when decoded: nothing to fetch ahead
                thunks.append(functools.partial(_deferred, source.blocks_at, split_folder, name, layouts, times))
        return thunks

    def _generate_examples(self, files, split_folder, layouts, sample_ranges, selections, layout, fetched=None):
        """Examples of ``files``; ``fetched``: an iterator giving each file's ``Source.fetch`` result, one per file
        (streaming hands one over, fetching ahead across shards); without it the files are prefetched here."""
        skipped = 0
        # In a DataLoader worker every example goes to the collate function, which copies it into the batch at
        # once (and the DataLoader hands the user nothing else): views save a copy of every example, and each file
        # is decoded into the last one's arrays (bands and cloud masks of every modality, of two files: a batch
        # may span two). Elsewhere examples are copies and every file fresh memory: a reused file stays resident
        # while the next one's zip pages are mapped, which raised the peak RSS of streaming `all` by ~130 MB.
        in_worker = _in_dataloader_worker()
        pool = self._array_pool(4 * len(layouts)) if in_worker else None
        # one file at a time here: its chunks decoded on every core, unless DataLoader workers use them already
        threads = 1 if in_worker else fastzip.usable_cores()
        with contextlib.ExitStack() as stack:
            if fetched is None:
                thunks = self._fetch_thunks(files, split_folder, layouts, sample_ranges, selections, layout)
                fetched = stack.enter_context(prefetch(thunks, self._prefetch_ahead()))
            for file_index, (name, sample_range, selection) in enumerate(zip(files, sample_ranges, selections)):
                try:
                    decode = next(fetched)
                    # a tar's members decoded into arrays of their own: an example is then its member's array,
                    # not a copy out of a block (in a worker, into the pool's arrays, which collate copies)
                    for block in fastzip.decoding(decode(), pool, threads, "stacked" if in_worker else "separate"):
                        chosen = selection
                        if self.config.time_order == "season":
                            if selection is not None and selected_times(selection) is not None:
                                chosen = season_selection(block, selection)  # time indices of the files' order
                            block = by_season(block)
                        for key, example in location_examples(block, self.config.single_timestamp, sample_range,
                                                              chosen, copy=not in_worker):
                            yield Key(file_index, key), example
                        # before the next block is read: memory holds one decoded block per modality
                        del block
                except SSL4EOS12FileError as err:
                    if self.config.on_bad_file != "skip":
                        raise
                    skipped += 1
                    warnings.warn(f"skipping {err} ({skipped} file(s) skipped in this shard so far)",
                                  SSL4EOS12BadFileWarning, stacklevel=2)
                finally:
                    decode = None  # its fetched bytes go now, not when the next file's arrive


def _in_dataloader_worker() -> bool:
    torch = sys.modules.get("torch")  # a DataLoader worker has imported torch; do not import it for numpy users
    return torch is not None and torch.utils.data.get_worker_info() is not None


def _split_names(split) -> frozenset | None:
    """The split names in a ``split=`` argument (``"train[:10%]+validation"``); ``None``: every split."""
    if split is None or str(split) == str(datasets.Split.ALL):
        return None
    return frozenset(name for name in re.findall(r"[A-Za-z_]\w*", str(split)) if name in SPLIT_FOLDERS)


def _empty_selection(filters, split: str, files: int | None = None) -> str:
    among = f" among the {files} file(s)" if files is not None else ""
    return (f"{filters.describe()} keeps no example of split {split!r}{among}: widen the selection, or check the "
            f"ids, the box (min_lon, min_lat, max_lon, max_lat) and the dates against the index")


def _deferred(read, *args):
    """What a thunk returns for a file read only when it is decoded: ``read(*args)``, later."""
    return functools.partial(read, *args)


def _shards(source: Source, split_folder: str) -> list[str]:
    """The shards of a split; a remote root that cannot be read raises one line saying why and what to do."""
    try:
        return source.shards(split_folder)
    except (SSL4EOS12DataError, SSL4EOS12FileError):
        raise
    except Exception as err:
        message = remote_failure_message(source.root, err) if is_remote(source.root) else None
        if message is None:
            raise
        raise SSL4EOS12DataError(message) from None


def data_root(config: SSL4EOS12Config) -> str:
    """``root``, else ``data_dir``, else the hosted copy; local paths absolute, without a trailing slash.

    The hosted default is the Zarr copy, unless a modality only the webdataset release has is asked for.
    """
    hosted = WEBDATASET_HOSTED_ROOT if set(config.modalities or ()) & set(WEBDATASET_ONLY_MODALITIES) else HOSTED_ROOT
    return normalize_root(config.root or config.data_dir or hosted)
