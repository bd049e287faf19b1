"""What a split of a data root holds, as data: the plan every reader shares.

:func:`resolve` gives a split's :class:`Catalog`: where to read (the source), the modalities' layouts and the
``datasets`` features, and one :class:`Entry` per shard with the locations (and timestamps) a selection keeps
and how many examples that makes. The builder resolves it through its ``_split_generators``; the ``Loader``
plans its epochs from it (:mod:`ssl4eos12.sampling`) without decoding anything first.

:func:`fingerprint` identifies the data: it keys the prepared ``datasets`` cache (so that a prepared dataset
follows its data) and ties a ``Loader`` state to the data it was saved on. ``datasets`` keys its packaged
builders on their data files' origin (local size and modification time, remote ETag); this does the same for
every file a config reads: each modality's shard files of both splits, and the files that decide which shards
and locations there are (split lists, the authors' metadata, the index). Nothing is read but directory listings
and file metadata, never the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .constants import SPLIT_FOLDERS, index_path, split_list_path, split_metadata_path, webdataset_metadata_path
from .errors import SSL4EOS12BadFileWarning, SSL4EOS12FileError
from .sources import Layout, Source
from .sources.remote import is_remote, normalize_root, url_to_fs


@dataclass(frozen=True, eq=False)
class Entry:
    """One shard of a split, and which of its examples a reader takes.

    ``rows``: locations by index in the shard's own order; ``selection``: locations by sample id, each with the
    time indices kept (``None``: all), as the builder's filters give them (:func:`ssl4eos12.index.select`).
    ``None``: no restriction.
    """

    shard: str
    rows: np.ndarray | None = None
    selection: Mapping[str, frozenset | None] | None = None

    def examples(self, num_times: int) -> int | None:
        """Examples this entry gives (``num_times``: timestamps per location when an example is one timestamp,
        else 1); ``None`` when that takes the shard's number of locations (read from its metadata)."""
        if self.selection is not None and self.rows is None:  # the filters name every example
            return sum(num_times if (kept is None or num_times == 1) else len(kept)
                       for kept in self.selection.values())
        if self.rows is not None and self.selection is None:
            return len(self.rows) * num_times
        return None


@dataclass
class Catalog:
    """A split as the builder resolves it: where to read, the layouts, the features and the shards' entries."""

    source: Source
    split: str
    split_folder: str
    layouts: tuple[Layout, ...]
    entries: tuple[Entry, ...]
    features: Any  # datasets.Features: the fields and their order
    single_timestamp: bool
    on_bad_file: str
    time_order: str = "file"
    index: str | None = None
    _counts: tuple[int, ...] | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def times_per_example(self) -> int:
        """Timestamps an example splits a location into: every one when ``single_timestamp``, else 1."""
        return self.layouts[0].num_times if self.single_timestamp else 1

    def counts(self, threads: int = 8) -> tuple[int, ...]:
        """Examples of every entry (computed once): from its selection, or its shard's locations, probed from the
        shard's metadata in parallel where not known (an unreadable shard counts 0 with ``on_bad_file="skip"``)."""
        if self._counts is not None:
            return self._counts
        times = self.times_per_example
        counts = [entry.examples(times) for entry in self.entries]
        missing = [i for i, count in enumerate(counts) if count is None]
        if missing:
            modality = self.layouts[0].modality

            def count(i: int) -> int:
                try:
                    return self.source.probe(self.split_folder, self.entries[i].shard, modality)[1]
                except SSL4EOS12FileError as err:
                    if self.on_bad_file != "skip":
                        raise
                    warnings.warn(f"skipping {err} (counted as no example, before any epoch: every rank's number "
                                  f"of batches stays equal)", SSL4EOS12BadFileWarning, stacklevel=2)
                    return 0

            with ThreadPoolExecutor(max(1, threads), thread_name_prefix="ssl4eos12-count") as pool:
                for i, locations in zip(missing, pool.map(count, missing)):
                    counts[i] = locations * times
        self._counts = tuple(counts)
        return self._counts

    def fingerprint(self) -> str:
        """:func:`fingerprint` of the data this catalog reads (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.source.root, self.source.modalities, self.index,
                                            self.source.download_config)
        return self._fingerprint


def entries_of(gen_kwargs: Mapping) -> list[Entry]:
    """The entries the builder's split generator asks for: the one place that reads its ``gen_kwargs``.

    Builder keywords that select locations arrive here: sample ranges as rows of each shard, the filters
    (``bbox``, ``time_range``, ``max_cloud_fraction``, ``samples``) as each shard's selection.
    """
    files = gen_kwargs["files"]
    ranges = gen_kwargs.get("sample_ranges") or [None] * len(files)
    selections = gen_kwargs.get("selections") or [None] * len(files)
    return [Entry(name, None if sample_range is None else np.arange(*sample_range), selection)
            for name, sample_range, selection in zip(files, ranges, selections)]


def resolve(builder, split: str) -> Catalog:
    """Resolve ``split`` through the builder's ``_split_generators``, as ``as_streaming_dataset`` does."""
    from datasets import DownloadConfig
    from datasets.download.streaming_download_manager import StreamingDownloadManager

    download_config = DownloadConfig(token=builder.token, storage_options=builder.storage_options)
    dl_manager = StreamingDownloadManager(base_path=builder.base_path, download_config=download_config,
                                          dataset_name=builder.dataset_name, data_dir=builder.config.data_dir)
    with builder.asking_for(split):  # the other split is neither listed nor selected
        generators = {str(g.name): g for g in builder._split_generators(dl_manager)}
    if split not in generators:
        raise ValueError(f"split={split!r}: not in this data; available: {', '.join(sorted(generators))}")
    kwargs = generators[split].gen_kwargs
    return Catalog(
        source=builder._source(download_config), split=split, split_folder=kwargs["split_folder"],
        layouts=tuple(kwargs["layouts"]), entries=tuple(entries_of(kwargs)), features=builder.info.features,
        single_timestamp=bool(builder.config.single_timestamp), on_bad_file=builder.config.on_bad_file,
        time_order=builder.config.time_order, index=builder.config.index,
    )


#: Metadata fields that identify a remote file's content, as fsspec's file systems name them (HTTP's ETag,
#: the Hub's blob and LFS ids), with its size and modification time as the fallback.
_REMOTE_IDENTITY = ("ETag", "etag", "blob_id", "lfs", "last_commit", "mtime", "LastModified", "last_modified", "size")
#: Parallel metadata requests for remote files a listing did not describe.
_INFO_THREADS = 16


def fingerprint(root: str, modalities: Sequence[str], index: str | None = None, download_config=None) -> str:
    """A short hex digest that changes whenever a file that ``modalities`` of ``root`` would read changes.

    Local files count by name, size and modification time (nanoseconds); remote ones by what their listing or
    metadata gives (ETag, the Hub's blob id, size, modification time). ``index``: the builder's ``index=``
    keyword, when the index is kept elsewhere.
    """
    root = normalize_root(root)
    digest = hashlib.sha256()
    for entry in sorted(_identities(root, modalities, index, download_config)):
        digest.update(json.dumps(entry, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _identities(root: str, modalities: Sequence[str], index: str | None, download_config) -> list[tuple]:
    folders = [posixpath.join(folder, modality) for folder in SPLIT_FOLDERS.values() for modality in modalities]
    files = [path for folder in SPLIT_FOLDERS.values() for path in
             (split_list_path(folder), split_metadata_path(folder), webdataset_metadata_path(folder),
              index_path(folder))]
    extra = [] if index is None else [str(index) if "://" in str(index) else normalize_root(index)]
    if not is_remote(root):
        return _local(root, folders, files) + [item for path in extra for item in _local_path(path)]
    return _remote(root, folders, files, download_config) + [
        item for path in extra for item in _remote_path(path, download_config)]


def _local(root: str, folders: list[str], files: list[str]) -> list[tuple]:
    root = root.removeprefix("file://")
    entries = []
    for folder in folders:
        try:
            with os.scandir(os.path.join(root, folder)) as listing:
                entries += [(posixpath.join(folder, e.name), *_stat(e.stat())) for e in listing if e.is_file()]
        except (FileNotFoundError, NotADirectoryError):
            continue
    for name in files:
        try:
            entries.append((name, *_stat(os.stat(os.path.join(root, name)))))
        except FileNotFoundError:
            continue
    return entries


def _local_path(path: str) -> list[tuple]:
    """A local ``index=`` file, or every file of a folder."""
    path = path.removeprefix("file://")
    if os.path.isdir(path):
        return _local(path, ["."], [])
    try:
        return [(path, *_stat(os.stat(path)))]
    except FileNotFoundError:
        return []


def _stat(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


def _remote(root: str, folders: list[str], files: list[str], download_config) -> list[tuple]:
    fs, root_path = url_to_fs(root, download_config)
    entries, undescribed = [], []
    for folder in folders:
        try:
            listing = fs.ls(posixpath.join(root_path, folder), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except Exception:  # noqa: BLE001, S112 - a server that does not list folders: the shards come from the lists
            continue
        for info in listing:
            identity = _identity(info)
            if identity:
                entries.append((info["name"], identity))
            else:
                undescribed.append(info["name"])
    # an HTTP listing names files without their size or ETag: ask each one (HEAD requests, in parallel)
    undescribed += [posixpath.join(root_path, name) for name in files]
    with ThreadPoolExecutor(_INFO_THREADS) as pool:
        entries += [entry for entry in pool.map(lambda path: _remote_info(fs, path), undescribed) if entry]
    return entries


def _remote_path(url: str, download_config) -> list[tuple]:
    fs, path = url_to_fs(url, download_config)
    entry = _remote_info(fs, path)
    return [entry] if entry else []


def _remote_info(fs, path: str) -> tuple | None:
    try:
        return path, _identity(fs.info(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _identity(info: dict) -> tuple:
    return tuple((name, str(info[name])) for name in _REMOTE_IDENTITY if info.get(name) is not None)


__all__ = ["Catalog", "Entry", "entries_of", "fingerprint", "resolve"]
