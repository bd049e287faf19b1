"""Where examples come from: one module per on-disk layout, behind the interface of :mod:`.base`.

:func:`open_source` gives the source of a data root; the builder, ``convert``, ``verify`` and ``index``
read through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import ON_BAD_FILE_CHOICES, Block, Layout, ModalityFile, Source
from .chunked import ChunkedSource
from .remote import normalize_root

#: The layouts this package reads, by the name the ``layout=`` keyword takes.
SOURCES: dict[str, type[Source]] = {ChunkedSource.name: ChunkedSource}


def open_source(root: str, modalities: Sequence[str], download_config=None) -> Source:
    """The source of the data under ``root`` (any local path or fsspec URL), for ``modalities``."""
    return ChunkedSource(normalize_root(root), modalities, download_config)


__all__ = ["ON_BAD_FILE_CHOICES", "SOURCES", "Block", "ChunkedSource", "Layout", "ModalityFile", "Source",
           "normalize_root", "open_source"]
