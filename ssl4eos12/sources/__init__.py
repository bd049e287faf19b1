"""Where examples come from: one module per on-disk layout, behind the interface of :mod:`.base`.

:func:`open_source` gives the source of a data root; the builder, ``convert``, ``verify`` and ``index``
read through it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from ..constants import SPLIT_FOLDERS, TAR_SUFFIX, ZARR_ZIP_SUFFIX, split_list_path, webdataset_metadata_path
from ..errors import SSL4EOS12DataError
from .base import ON_BAD_FILE_CHOICES, Block, Layout, ModalityFile, Source
from .chunked import ChunkedSource
from .remote import is_remote, normalize_root, url_to_fs
from .webdataset import WebDatasetSource

#: The layouts this package reads, by the name the ``layout=`` keyword takes.
SOURCES: dict[str, type[Source]] = {ChunkedSource.name: ChunkedSource, WebDatasetSource.name: WebDatasetSource}


def open_source(root: str, modalities: Sequence[str], download_config=None, layout: str | None = None,
                fetch_options=None) -> Source:
    """The source of the data under ``root`` (any local path or fsspec URL), for ``modalities``.

    ``layout`` (``"zarr"`` or ``"webdataset"``) forces one; by default it is recognised from the files
    (:func:`detect_layout`). ``fetch_options``: how remote files are fetched
    (:class:`~ssl4eos12.sources.remote.FetchOptions`).
    """
    root = normalize_root(root)
    if layout is None:
        layout = detect_layout(root, modalities[0], download_config)
    if layout not in SOURCES:
        raise ValueError(f"layout must be one of {list(SOURCES)}, got {layout!r}")
    return SOURCES[layout](root, modalities, download_config, fetch_options)


def detect_layout(root: str, modality: str, download_config=None) -> str:
    """``"webdataset"`` where the modality's folders hold ``*.tar``, else ``"zarr"`` (the Zarr zips).

    A root whose folders hold both raises: pass ``layout=`` to choose. An HTTP root may not list folders,
    so the files naming the shards decide first there: the Zarr release's ``splits/`` lists, or the
    webdataset release's metadata parquets. A root where nothing is found (or that cannot be reached) is left
    to the Zarr reader, whose errors say what it expected or why the root failed.
    """
    fs, root_path = url_to_fs(root, download_config)
    if root.startswith(("http://", "https://")):
        for folder in SPLIT_FOLDERS.values():
            if _exists(fs, posixpath.join(root_path, split_list_path(folder))):
                return ChunkedSource.name
            if _exists(fs, posixpath.join(root_path, webdataset_metadata_path(folder))):
                return WebDatasetSource.name
    found = set()
    for folder in SPLIT_FOLDERS.values():
        try:
            names = fs.ls(posixpath.join(root_path, folder, modality), detail=False)
        except Exception:  # noqa: BLE001, S112 - unreachable or unlistable: the reader's own errors say why
            continue
        found.update(layout for layout, suffix in ((WebDatasetSource.name, TAR_SUFFIX), (ChunkedSource.name, ZARR_ZIP_SUFFIX))
                     if any(name.endswith(suffix) for name in names))
    if len(found) > 1:
        raise SSL4EOS12DataError(
            f"{root}: the {modality} folders hold both Zarr zips (*{ZARR_ZIP_SUFFIX}) and webdataset tars "
            f"(*{TAR_SUFFIX}); pass layout='zarr' or layout='webdataset' to choose"
        )
    if found:
        return found.pop()
    if not is_remote(root):
        return ChunkedSource.name
    for folder in SPLIT_FOLDERS.values():
        if _exists(fs, posixpath.join(root_path, webdataset_metadata_path(folder))):
            return WebDatasetSource.name
    return ChunkedSource.name


def _exists(fs, path: str) -> bool:
    try:
        return fs.exists(path)
    except Exception:  # noqa: BLE001 - unreachable: the reader's own errors say why
        return False


__all__ = ["ON_BAD_FILE_CHOICES", "SOURCES", "Block", "ChunkedSource", "Layout", "ModalityFile", "Source",
           "WebDatasetSource", "detect_layout", "normalize_root", "open_source"]
