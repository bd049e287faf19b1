"""What every source of examples gives: the interface between the on-disk layouts and their readers.

A *source* is one data root in one on-disk layout (the 64-sample Zarr zips of :mod:`.chunked`; the
webdataset tars of the later release). It names the *shards* of each split (a source file or a tar: the
unit that DataLoader workers, nodes and conversion tasks split), tells the :class:`Layout` of each
modality, and reads a shard as a sequence of :class:`Block`: decoded arrays of several locations, every
modality's rows lined up on the same locations. The builder, ``convert``, ``verify`` and ``index`` take
their examples from these blocks and never know which release they read.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

#: ``on_bad_file`` values: raise on the first bad source file, or skip it (warned and counted).
ON_BAD_FILE_CHOICES = ("error", "skip")


@dataclass(frozen=True)
class Layout:
    """The shape of one modality's files: what the ``datasets`` features are built from."""

    modality: str
    num_times: int
    band_names: tuple[str, ...]
    bands_shape: tuple[int, ...]  # per sample and timestamp, e.g. (C, H, W)
    bands_dtype: str
    height: int
    width: int
    has_cloud_mask: bool
    #: The optional per-location variables the files have (``crs``, ``time_``, ``file_id``, ``x_``, ``y_``);
    #: ``None``: all of them, as every file of the Zarr release has. The example has a field for each.
    variables: tuple[str, ...] | None = None
    #: Time-less arrays beyond the standard ones (LULC's ``esri_original``): ``(name, shape, dtype)`` each.
    statics: tuple[tuple[str, tuple[int, ...], str], ...] = ()

    def has(self, name: str) -> bool:
        """Whether the files hold the per-location variable ``name``."""
        return self.variables is None or name in self.variables


@dataclass
class ModalityFile:
    """Every variable of one modality's file, decoded, as numpy arrays (first axis: sample)."""

    layout: Layout
    variables: dict[str, np.ndarray]

    @property
    def samples(self) -> np.ndarray:
        return self.variables["sample"]


@dataclass
class Block:
    """Decoded arrays of some locations of one shard, every modality's rows lined up.

    Row ``orders[m][i]`` of ``parts[m]`` is the location of row ``i`` of the first modality, whose order is
    the block's. ``file`` names where the rows come from (the source file, or the shard's tar). ``offset`` is
    the position of the block's first location in its shard, so positions stay unique across a shard's
    blocks; ``keys`` are the member keys of the locations where the layout has them (the tar release).
    """

    file: str
    parts: dict[str, ModalityFile]
    orders: dict[str, np.ndarray]
    offset: int = 0
    keys: np.ndarray | None = None

    @property
    def reference(self) -> ModalityFile:
        """The first modality's arrays: they give the block's row order and shared fields."""
        return next(iter(self.parts.values()))

    @property
    def samples(self) -> np.ndarray:
        return self.reference.samples

    def __len__(self) -> int:
        return len(self.samples)


class Source(abc.ABC):
    """One data root in one on-disk layout, read for a set of modalities.

    Args:
        root: the data root, normalised (:func:`~ssl4eos12.sources.remote.normalize_root`).
        modalities: the modality folders to read and join; the first orders the rows.
        download_config: ``datasets.DownloadConfig`` with the token and storage options for remote roots.
        fetch_options: how remote files are fetched (:class:`~ssl4eos12.sources.remote.FetchOptions`).
    """

    #: The name of the layout, as the ``layout=`` keyword and the CLI call it.
    name: str = ""
    #: Whether its locations have member keys (:attr:`Block.keys`): the examples then carry a ``key`` field.
    keyed: bool = False

    def __init__(self, root: str, modalities: Sequence[str], download_config=None, fetch_options=None):
        from .remote import FetchOptions

        self.root = root
        self.modalities = tuple(modalities)
        self.download_config = download_config
        self.fetch_options = fetch_options or FetchOptions()

    @abc.abstractmethod
    def shards(self, split_folder: str) -> list[str]:
        """Shard names of one split (``train``/``val`` folder), in order; ``[]`` when the split is absent."""

    @abc.abstractmethod
    def probe(self, split_folder: str, shard: str, modality: str) -> tuple[Layout, int]:
        """Layout of a modality and number of locations of a shard, from its metadata only."""

    @abc.abstractmethod
    def blocks(
        self, split_folder: str, shard: str, layouts: Sequence[Layout],
        variables: dict[str, Sequence[str]] | None = None,
    ) -> Iterator[Block]:
        """The decoded, joined blocks of a shard, each checked against ``layouts``.

        ``variables``: per modality, the variables to read (default: all); the rest are never decoded.
        Problems with the data raise :class:`~ssl4eos12.errors.SSL4EOS12FileError` naming the file.
        """

    def blocks_at(self, split_folder: str, shard: str, layouts: Sequence[Layout], times: Sequence[int]) -> Iterator[Block]:
        """As :meth:`blocks`, for a reader that needs only the time indices ``times`` of the shard.

        A source that can read fewer bytes for fewer timestamps does (the arrays keep their shape; the other
        timestamps must not be used); by default the whole shard is read.
        """
        return self.blocks(split_folder, shard, layouts)

    def blocks_for(self, split_folder: str, shard: str, layouts: Sequence[Layout], selection=None,
                   variables: dict[str, Sequence[str]] | None = None) -> Iterator[Block]:
        """The blocks a reader of ``selection`` (``{sample: time indices or None}``, or ``None``: every location)
        needs: at least the selected locations (others may come too: the reader filters), read as cheaply as the
        source can (:meth:`blocks_at` where only some timestamps are needed)."""
        if selection is None or any(times is None for times in selection.values()):
            return self.blocks(split_folder, shard, layouts, variables)
        if not selection:
            return iter(())
        return self.blocks_at(split_folder, shard, layouts, sorted(set().union(*selection.values())))

    def fetch(
        self, split_folder: str, shard: str, layouts: Sequence[Layout],
        variables: dict[str, Sequence[str]] | None = None,
    ) -> Callable[[], Iterator[Block]]:
        """Do the I/O of a shard now and return what decodes it: ``fetch(...)()`` is ``blocks(...)``.

        The builder runs ``fetch`` of the next shards in a background thread while it decodes the current
        one (:func:`ssl4eos12.prefetch.prefetch`), so a source that reads remote files fetches them here, and
        stops when :func:`ssl4eos12.prefetch.current_scope` is cancelled. By default nothing is done ahead.
        Raises what ``blocks`` raises for a file that cannot be fetched.
        """
        return functools.partial(self.blocks, split_folder, shard, layouts, variables)

    def layouts(self, split_folder: str, shard: str) -> tuple[Layout, ...]:
        """Layouts of every modality, probed from one shard."""
        return tuple(self.probe(split_folder, shard, m)[0] for m in self.modalities)
