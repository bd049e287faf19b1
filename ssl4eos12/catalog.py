"""What a split of a data root holds, as data: the start of the catalog of ``DESIGN.md``.

For now this is the data's fingerprint: what keys the prepared ``datasets`` cache, so that a prepared dataset
follows its data. ``datasets`` keys its packaged builders on their data files' origin (local size and
modification time, remote ETag); this does the same for every file a config reads: each modality's shard
files of both splits, and the files that decide which shards and locations there are (split lists, the
authors' metadata, the index). Nothing is read but directory listings and file metadata, never the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from .constants import (SPLIT_FOLDERS, index_path, split_list_path, split_metadata_path,
                        webdataset_metadata_path)
from .sources.remote import is_remote, normalize_root, url_to_fs

#: Metadata fields that identify a remote file's content, as fsspec's file systems name them (HTTP's ETag,
#: the Hub's blob and LFS ids), with its size and modification time as the fallback.
_REMOTE_IDENTITY = ("ETag", "etag", "blob_id", "lfs", "last_commit", "mtime", "LastModified", "last_modified", "size")
#: Parallel metadata requests for remote files a listing did not describe.
_INFO_THREADS = 16


def fingerprint(root: str, modalities: Sequence[str], index: Optional[str] = None, download_config=None) -> str:
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


def _identities(root: str, modalities: Sequence[str], index: Optional[str], download_config) -> list[tuple]:
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
        except Exception:  # noqa: BLE001 - a server that does not list folders: the shard files come from the lists
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


def _remote_info(fs, path: str) -> Optional[tuple]:
    try:
        return path, _identity(fs.info(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _identity(info: dict) -> tuple:
    return tuple((name, str(info[name])) for name in _REMOTE_IDENTITY if info.get(name) is not None)


__all__ = ["fingerprint"]
