"""The webdataset release: per-modality tar series of per-location Zarr zips, joined on the member key.

    ROOT/{train,val}_metadata.parquet                      optional; a ``tar`` column names each location's shard
    ROOT/{train,val}/{MODALITY}/ssl4eos12_shard_NNNNNN.tar    members ``<key>.zarr.zip``, one per location

One shard is one tar name: the tar of that name in every modality folder holds the same keys in the same
order. A member is a Zarr v2 zip of ONE location (``bands`` ``[time, band, y, x]``, ``cloud_mask``,
``time``, 0-d ``center_lat``/``center_lon``/``crs``/``sample``, ...); which optional variables it has is read
from the files, never assumed (:func:`member_layout`).

Each tar is read front to back (python ``tarfile`` over a file that only ever reads forward), one member per
modality at a time, so memory holds a few locations per modality, never a tar (a train S2L1C tar is ~1.9 GB).
A remote tar is one streaming request read in 16 MB windows, the next two fetched while one is decoded
(:func:`~ssl4eos12.sources.remote.open_sequential`), and for streaming the builder's prefetch opens the next
shard's tars (their first windows fetched) while the current shard is decoded (:meth:`WebDatasetSource.fetch`):
per modality at most ~4 windows (64 MB) per open tar, two tars open. The per-modality streams are zipped
and every step checks that all modalities hold the same key: a missing, extra or reordered member raises
:class:`SSL4EOS12FileError` naming both tars and the first differing keys (the authors' loader warns and
drops the rest of the shard). With ``on_bad_file="skip"`` the builder then skips the rest of that shard.

A split's shards are the ``tar`` column of its metadata parquet for remote roots (a plain HTTP server may
not list folders), else a listing of the first modality's folder (a local copy may hold only some shards).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import logging
import mmap
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import xarray as xr

from ..constants import BANDS_DTYPE, TAR_SUFFIX, ZARR_ZIP_SUFFIX, webdataset_metadata_path
from ..errors import SSL4EOS12DataError, SSL4EOS12FileError
from ..prefetch import Cancelled, produced_ahead
from . import fastzip, zipmember
from .base import Block, Layout, ModalityFile, Source
from .chunked import join_on_sample
from .remote import is_remote, open_random_access, open_sequential, serves_ranges, url_to_fs
from .zarrzip import EXPECTED_DTYPES, ZIP_SOURCE, _describe, _dtype_matches, open_zarr_zip

#: Locations per block: a full-size location of all seven modalities decodes to ~20 MB.
BLOCK_LOCATIONS = 4
#: Blocks of a local tar read and decoded ahead of the one in use (where decoding uses several threads): ~30 MB each
#: for S2L2A, ~70 MB for the four Sentinel modalities. Measured on 2 cores, streaming S2L2A tars: 0.87-0.92 s per
#: pass of 128 locations with none ahead, 0.76-0.77 s with 2 (the reading and decoding of a tar member are half
#: Python, so one block at a time left the second core idle).
BLOCKS_AHEAD = 2
#: Read size of the tar stream: large reads keep per-call overhead low; the stream itself is one request.
STREAM_READ_SIZE = 1 << 20
#: Members of a mapped local tar whose pages are kept mapped behind the one handed out: the blocks being decoded
#: (``BLOCK_LOCATIONS`` members each, ``BLOCKS_AHEAD`` ahead) read theirs without faulting them in again.
MAPPED_BEHIND = 4 * BLOCK_LOCATIONS
#: Window of the remote reads that look at a tar's first member only (a full-size member is ~1-7 MB).
PROBE_WINDOW = 1 << 20
#: The optional per-location variables, with their dims in a member (the time coordinate may hold the
#: timestamps instead of ``time_``).
OPTIONAL_VARIABLES: dict[str, tuple[str, ...]] = {
    "crs": (), "time_": ("time",), "file_id": ("time",), "sample_id": ("time",), "x_": ("x",), "y_": ("y",),
}
_STANDARD = {"bands", "cloud_mask", "center_lat", "center_lon", "sample", *OPTIONAL_VARIABLES}

logger = logging.getLogger(__name__)
#: Members read through xarray instead of the direct path, by reason; tars whose fallback was logged.
_FALLBACKS: collections.Counter = collections.Counter()
_FALLBACK_TARS: set[str] = set()
_FALLBACK_LOCK = threading.Lock()


def fallbacks() -> collections.Counter:
    """How many members this process read through xarray rather than the direct path, by reason: the values are
    the same either way, but the fallback costs ~20x the time of a member."""
    with _FALLBACK_LOCK:
        return collections.Counter(_FALLBACKS)


def _fell_back(where: str, reason: str) -> None:
    tar = where.rsplit(":", 1)[0]
    with _FALLBACK_LOCK:
        _FALLBACKS[reason] += 1
        first = tar not in _FALLBACK_TARS
        _FALLBACK_TARS.add(tar)
    if first:  # once per tar: a release's members share one layout, so one is like the rest
        logger.warning("%s: members read through xarray, ~20x slower (%s)", tar, reason)


class WebDatasetSource(Source):
    """Webdataset tars of per-location Zarr zips: one shard per tar name, modalities joined on the member key."""

    name = "webdataset"
    keyed = True

    def shards(self, split_folder: str) -> list[str]:
        fs, root_path = url_to_fs(self.root, self.download_config)
        if not is_remote(self.root):
            if not fs.isdir(root_path):
                raise SSL4EOS12DataError(f"{self.root}: data directory does not exist")
            return list_tars(fs, posixpath.join(root_path, split_folder, self.modalities[0]))
        metadata = self._metadata(split_folder)
        if metadata is not None:
            return list(dict.fromkeys(metadata))  # unique, in order of first appearance
        return list_tars(fs, posixpath.join(root_path, split_folder, self.modalities[0]))

    def url(self, split_folder: str, modality: str, shard: str) -> str:
        return posixpath.join(self.root, split_folder, modality, shard)

    def probe(self, split_folder: str, shard: str, modality: str) -> tuple[Layout, int]:
        """Layout from the first member; the number of locations from the metadata, else by reading the tar."""
        layout = self._first_layout(split_folder, shard, modality)
        metadata = self._metadata(split_folder)
        if metadata is not None and shard in metadata:
            return layout, sum(1 for name in metadata if name == shard)
        url = self.url(split_folder, modality, shard)
        return layout, sum(1 for _ in iter_members(url, self.download_config, options=self.fetch_options))

    def layouts(self, split_folder: str, shard: str) -> tuple[Layout, ...]:
        """Every modality's layout from the first member of its tar: one short read per modality."""
        return tuple(self._first_layout(split_folder, shard, m) for m in self.modalities)

    def _first_layout(self, split_folder: str, shard: str, modality: str) -> Layout:
        url = self.url(split_folder, modality, shard)
        if is_remote(url) and serves_ranges(url):
            from ..members import first_member

            with _tar_errors(url):
                first = first_member(url, self.download_config, self.fetch_options)
            if first is not None:  # its header and its bytes by range: the probe sends one member
                key, data = first
                where = f"{url}:{key}{ZARR_ZIP_SUFFIX}"
                with open_zarr_zip(where, data=data) as dataset:
                    return member_layout(where, modality, dataset.variables, set(dataset.coords))
        with contextlib.closing(iter_members(url, self.download_config, probe=True,
                                             options=self.fetch_options)) as members:
            for key, data in members:
                where = f"{url}:{key}{ZARR_ZIP_SUFFIX}"
                with open_zarr_zip(where, data=data) as dataset:
                    return member_layout(where, modality, dataset.variables, set(dataset.coords))
        raise SSL4EOS12FileError(url, "the tar holds no member")

    @functools.cache  # noqa: B019 - one small column per split, for the source's life
    def _metadata(self, split_folder: str) -> tuple[str, ...] | None:
        """The shard (tar name) of each location, from the split's metadata parquet; ``None`` without one."""
        path = posixpath.join(self.root, webdataset_metadata_path(split_folder))
        try:
            with open_random_access(path, self.download_config) as f:
                table = pq.read_table(f, columns=["tar"])
        except (FileNotFoundError, KeyError):
            return None
        except Exception as err:  # an unreadable parquet, a missing column
            raise SSL4EOS12FileError(path, f"cannot read the tar column of the metadata ({err})") from err
        return tuple(posixpath.basename(str(name)) for name in table.column("tar").to_pylist())

    def fetch(
        self, split_folder: str, shard: str, layouts: Sequence[Layout],
        variables: dict[str, Sequence[str]] | None = None,
    ) -> Callable[[], Iterator[Block]]:
        """For a remote root, open the shard's tars now (their first windows fetched, the next ones on their
        way: :func:`open_tar`), so the builder's prefetch starts the next shard while this one is decoded."""
        if not is_remote(self.root):
            return super().fetch(split_folder, shard, layouts, variables)
        files = {}
        try:
            for layout in layouts:
                url = self.url(split_folder, layout.modality, shard)
                with _tar_errors(url):
                    files[layout.modality] = open_tar(url, self.download_config, self.fetch_options)
        except BaseException:
            for file in files.values():
                file.close()
            raise
        return functools.partial(self.blocks, split_folder, shard, layouts, variables, files)

    def blocks(
        self, split_folder: str, shard: str, layouts: Sequence[Layout],
        variables: dict[str, Sequence[str]] | None = None, files: dict | None = None,
    ) -> Iterator[Block]:
        """As :meth:`Source.blocks`; ``files``: the tars already opened by :meth:`fetch` (closed here).

        Where the reader decodes on several threads (:func:`.fastzip.decode_threads`), local tars' next
        :data:`BLOCKS_AHEAD` blocks are read and decoded in a background thread while this one is used.
        """
        blocks = self._read_blocks(split_folder, shard, layouts, variables, files)
        if fastzip.decode_threads() > 1 and not is_remote(self.root):
            blocks = produced_ahead(blocks, BLOCKS_AHEAD, "ssl4eos12-blocks")
        yield from blocks

    def _read_blocks(self, split_folder: str, shard: str, layouts: Sequence[Layout],
                     variables: dict[str, Sequence[str]] | None = None, files: dict | None = None,
                     ) -> Iterator[Block]:
        urls = {layout.modality: self.url(split_folder, layout.modality, shard) for layout in layouts}
        with contextlib.ExitStack() as stack:
            for file in (files or {}).values():
                stack.callback(file.close)
            streams = {m: stack.enter_context(contextlib.closing(
                iter_members(url, self.download_config, (files or {}).get(m), options=self.fetch_options)))
                for m, url in urls.items()}
            # where members are decoded on several threads, one pool for the tar, and the next block's members
            # handed to it before this block's are all done: no thread waits for the slowest member of a block
            threads = fastzip.decode_threads()
            pool = None
            if threads > 1 and fastzip.member_arrays() != "encoded":
                pool = ThreadPoolExecutor(threads, thread_name_prefix="ssl4eos12-decode")
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            started = ((keys, {
                layout.modality: _members_reader(
                    [f"{urls[layout.modality]}:{key}{ZARR_ZIP_SUFFIX}" for key in keys], layout, [row[i] for row in rows],
                    None if variables is None else variables.get(layout.modality), pool)
                for i, layout in enumerate(layouts)}) for keys, rows in _batched(_joined(streams, urls), BLOCK_LOCATIONS))
            offset = 0
            for keys, decoders in _started_ahead(started, 1 if pool is not None else 0):
                yield self._joined_block(split_folder, shard, offset, keys, decoders)
                offset += len(keys)

    def _joined_block(self, split_folder: str, shard: str, offset: int, keys: list[str], decoders: dict) -> Block:
        """The block of the members ``keys`` at ``offset`` in the shard, once each modality's decoding
        (:func:`_members_reader`) is done."""
        parts = {modality: decoded() for modality, decoded in decoders.items()}
        orders = join_on_sample(self.url(split_folder, "*", shard), parts)
        if any(not np.array_equal(order, np.arange(len(keys))) for order in orders.values()):
            raise SSL4EOS12FileError(self.url(split_folder, "*", shard),
                                     f"members of the same key hold different samples near key {keys[0]}")
        return Block(shard, parts, orders, offset=offset, keys=np.array(keys))

    def blocks_for(self, split_folder: str, shard: str, layouts: Sequence[Layout], selection=None,
                   variables: dict[str, Sequence[str]] | None = None) -> Iterator[Block]:
        """As :meth:`Source.blocks_for`; a selection that knows where its members are
        (:class:`~ssl4eos12.members.MemberSelection`, from an index that records them) reads only those."""
        from ..members import members_of

        members = members_of(selection)
        if members is None or (is_remote(self.root) and not serves_ranges(self.root)):  # ranges or nothing
            return super().blocks_for(split_folder, shard, layouts, selection, variables)
        return self.member_blocks(split_folder, shard, layouts, members, variables)

    def member_blocks(self, split_folder: str, shard: str, layouts: Sequence[Layout], members,
                      variables: dict[str, Sequence[str]] | None = None, readers: dict | None = None,
                      ) -> Iterator[Block]:
        """The blocks of the chosen ``members`` (:class:`~ssl4eos12.members.ShardMembers`) of a shard, fetched by
        range (:func:`~ssl4eos12.members.read_members`): a block per run of up to :data:`BLOCK_LOCATIONS`
        consecutive members, its ``offset`` their position in the tar. Remote blocks are fetched
        :data:`BLOCKS_AHEAD` ahead of their use (memory: that many blocks' member bytes and arrays). ``readers``:
        a dict of :class:`~ssl4eos12.sources.remote.RangeReader` per tar URL kept across calls."""
        runs, run = [], []
        for i, position in enumerate(members.positions.tolist()):
            if run and (position != members.positions[run[-1]] + 1 or len(run) == BLOCK_LOCATIONS):
                runs.append(run)
                run = []
            run.append(i)
        if run:
            runs.append(run)
        blocks = self._member_blocks(split_folder, shard, layouts, members, runs, variables,
                                     {} if readers is None else readers)
        if len(runs) > 1 and (is_remote(self.root) or fastzip.decode_threads() > 1):
            blocks = produced_ahead(blocks, BLOCKS_AHEAD, "ssl4eos12-members")
        yield from blocks

    def _member_blocks(self, split_folder, shard, layouts, members, runs, variables, readers) -> Iterator[Block]:
        from ..members import read_members

        urls = {layout.modality: self.url(split_folder, layout.modality, shard) for layout in layouts}
        for run in runs:
            chosen = members.take(run)
            datas = read_members(urls, chosen, self.download_config, self.fetch_options, readers)
            keys = list(chosen.keys)
            decoders = {
                layout.modality: _members_reader([f"{urls[layout.modality]}:{key}{ZARR_ZIP_SUFFIX}" for key in keys],
                                                 layout, datas[layout.modality],
                                                 None if variables is None else variables.get(layout.modality))
                for layout in layouts
            }
            yield self._joined_block(split_folder, shard, int(chosen.positions[0]), keys, decoders)


def list_tars(fs, folder: str) -> list[str]:
    """Tar names in a folder, sorted; ``[]`` when there is no such folder."""
    try:
        names = fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(posixpath.basename(p) for p in names if p.endswith(TAR_SUFFIX))


def iter_members(url: str, download_config=None, file=None, *, probe: bool = False,
                 options=None) -> Iterator[tuple[str, bytes | memoryview]]:
    """``(key, bytes)`` of each member of a tar, read front to back.

    A local tar is memory-mapped: each member is a view of the page cache, no copy (its pages are let go of
    :data:`MAPPED_BEHIND` members later; a view still held reads them back in). ``file``: the tar already opened
    (:func:`open_tar`; the caller closes it); else it is opened here, for reading its first members only where
    ``probe``. Every problem (a truncated tar, a member that is not ``<key>.zarr.zip``, a lost connection) raises
    :class:`SSL4EOS12FileError` naming the tar.
    """
    with _tar_errors(url), contextlib.ExitStack() as stack:
        if file is None and not is_remote(url):
            yield from _mapped_members(url, url_to_fs(url, download_config))
            return
        if file is None:
            file = stack.enter_context(open_tar(url, download_config, options, probe=probe))
        # "r:" over a forward-only reader, not tarfile's stream mode "r|": the stream mode copies each member
        # several times over in small reads (~18 ms per 5 MB member, measured; ~2.5 ms this way)
        reader = _ForwardReader(file)
        tar = stack.enter_context(tarfile.open(fileobj=reader, mode="r:"))
        for info in _files(url, tar):
            yield member_key(url, info.name), reader.member(info.offset_data, info.size)


def _mapped_members(url: str, located) -> Iterator[tuple[str, memoryview]]:
    """:func:`iter_members` of a local tar, memory-mapped: reading a 4 MB member into ``bytes`` cost ~1.9 ms (the
    copy and the fresh pages), as much as half its decoding; a view of the mapped file costs ~0.02 ms."""
    _, path = located  # a local path, as url_to_fs gives it
    with open(path, "rb") as file:
        if not os.fstat(file.fileno()).st_size:
            raise tarfile.ReadError("empty file")
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own descriptor
    # no close: the views handed out keep the mapping alive, and it goes with the last of them
    # reads the headers only, from the mapping (closing the TarFile leaves a file it was given open)
    with tarfile.open(fileobj=mapped, mode="r:") as tar:
        spans: collections.deque[tuple[int, int]] = collections.deque()
        for info in _files(url, tar):
            start, stop = info.offset_data, info.offset_data + info.size
            if stop > len(mapped):
                raise tarfile.ReadError(f"unexpected end of data in member {info.name!r}")
            key = member_key(url, info.name)
            spans.append((start, stop))
            fastzip.map_pages(mapped, start, stop)
            # mapped pages count in the process's memory until let go of; members left encoded keep theirs mapped
            # until the last of their tar is decoded (the mapping goes with it): their compressed size, where the
            # decoded members would take ~1.6x that
            if len(spans) > MAPPED_BEHIND and fastzip.member_arrays() != "encoded":
                fastzip.drop_pages(mapped, *spans.popleft())
            yield key, memoryview(mapped)[start:stop]


def _files(url: str, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for info in tar:
        # a TarFile keeps every TarInfo, each pointing back at it: a cycle that kept
        # each finished tar's read buffer alive until a full garbage collection (measured)
        tar.members = []
        if info.isfile():
            yield info


def member_key(url: str, name: str) -> str:
    """The key of the member ``name`` of the tar ``url`` (``<key>.zarr.zip``); any other name raises
    :class:`SSL4EOS12FileError` naming the tar."""
    key, _, extension = posixpath.basename(name).partition(".")
    if "." + extension != ZARR_ZIP_SUFFIX or not key:
        raise SSL4EOS12FileError(url, f"member {name!r} is not a <key>{ZARR_ZIP_SUFFIX} member")
    return key


@contextlib.contextmanager
def _tar_errors(url: str) -> Iterator[None]:
    """Any failure to read the tar ``url`` as :class:`SSL4EOS12FileError` naming it (a cancellation passes)."""
    try:
        yield
    except (SSL4EOS12FileError, Cancelled):
        raise
    except FileNotFoundError as err:
        raise SSL4EOS12FileError(url, "file not found") from err
    except tarfile.TarError as err:
        raise SSL4EOS12FileError(url, f"not a readable tar file, truncated or corrupt ({err})") from err
    except Exception as err:  # OSError, ConnectionError; aiohttp and huggingface_hub raise their own types too
        raise SSL4EOS12FileError(url, f"could not be read to the end ({type(err).__name__}: {err})") from err


class _ForwardReader(io.RawIOBase):
    """A file read once, front to back, that ``tarfile`` may treat as seekable: a seek may only go forward
    (the bytes in between are read and dropped), and a read returns all the bytes asked for unless the file
    ends (a network stream may return fewer per call)."""

    def __init__(self, file):
        self._file = file
        self._position = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._position + offset if whence == io.SEEK_CUR else None
        if target is None or target < self._position:
            raise io.UnsupportedOperation(f"the tar is read front to back: cannot seek to {offset} ({whence})")
        while self._position < target:
            if not self.read(min(target - self._position, STREAM_READ_SIZE)):
                break
        return self._position

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if 0 <= size and 0 < len(data) < size:
            parts = [data]
            have = len(data)
            while have < size and (more := self._file.read(size - have)):
                parts.append(more)
                have += len(more)
            data = b"".join(parts)
        self._position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def member(self, offset: int, size: int) -> bytes | memoryview:
        """The ``size`` bytes at ``offset`` (ahead of the position): a view of the stream's buffer where it gives one
        (:meth:`~ssl4eos12.sources.remote.SequentialFile.read_view`: a member of a remote tar, no copy)."""
        self.seek(offset)
        read_view = getattr(self._file, "read_view", None)
        data = self.read(size) if read_view is None else read_view(size)
        if len(data) < size:
            raise tarfile.ReadError(f"unexpected end of data: {len(data)} of a member's {size} bytes")
        if read_view is not None:
            self._position += len(data)
        return data


def open_tar(url: str, download_config=None, options=None, *, probe: bool = False):
    """The tar as a file read once, front to back: a local one as is; a remote one through
    :func:`~ssl4eos12.sources.remote.open_sequential` (its next windows fetched while this one is read; one
    request per tar; ``probe``: small windows, each its own range request, none ahead, so reading the first
    member sends little more than it)."""
    if not is_remote(url):
        fs, path = url_to_fs(url, download_config)
        return fs.open(path, "rb")
    if probe:
        return open_sequential(url, download_config, options, window=PROBE_WINDOW, ahead=0, streamed=False)
    return open_sequential(url, download_config, options)


def _joined(streams: dict[str, Iterator], urls: dict[str, str]) -> Iterator[tuple[str, list[bytes]]]:
    """``(key, [member bytes per modality])``, checking that every modality's tar has the same key in turn."""
    (first, reference), *others = streams.items()
    position = 0
    while True:
        head = next(reference, None)
        rows = [head]
        for modality, stream in others:
            other = next(stream, None)
            if (head is None) != (other is None) or (head is not None and other[0] != head[0]):
                raise SSL4EOS12FileError(urls[first], _divergence(first, urls, modality, position, head, other))
            rows.append(other)
        if head is None:
            return
        yield head[0], [data for _, data in rows]
        position += 1


def _started_ahead(items: Iterator, count: int) -> Iterator:
    """``items`` in order, each handed out once the ``count`` after it are taken (their work started)."""
    window = collections.deque(itertools.islice(items, count))
    for item in items:
        window.append(item)
        yield window.popleft()
    yield from window


def _divergence(first: str, urls: dict[str, str], modality: str, position: int, head, other) -> str:
    def key(entry):
        return "the end of the tar" if entry is None else repr(entry[0])

    return (f"the tars of {first} and {modality} ({urls[modality]}) diverge at member {position}: "
            f"{key(head)} in {first}, {key(other)} in {modality}; the modalities are not aligned")


def _batched(joined: Iterator[tuple[str, list[bytes]]], size: int) -> Iterator[tuple[list[str], list[list[bytes]]]]:
    keys: list[str] = []
    rows: list[list[bytes]] = []
    for key, row in joined:
        keys.append(key)
        rows.append(row)
        if len(keys) == size:
            yield keys, rows
            keys, rows = [], []
    if keys:
        yield keys, rows


def member_layout(where: str, modality: str, variables: Mapping, coords) -> Layout:
    """Check the variables, dims and dtypes of one member (one location) and return its layout.

    ``variables``: every variable as xarray opens it (``Dataset.variables``, or a :class:`zipmember.Member`'s,
    whose big arrays are specs with dims, shape and dtype); ``coords``: the names of the coordinates.
    """
    for name, dims in {"center_lat": (), "center_lon": (), "bands": None}.items():
        if name not in variables:
            raise SSL4EOS12FileError(where, f"missing variable {name} for modality {modality}")
        if dims is not None and variables[name].dims != dims:
            raise SSL4EOS12FileError(where, f"variable {name} has dims {variables[name].dims}, expected {dims}")
    bands = variables["bands"]
    if bands.dims[:1] != ("time",) or len(bands.dims) > 5:
        raise SSL4EOS12FileError(where, f"bands has dims {bands.dims}, expected (time, ...) of at most 5")
    if modality in BANDS_DTYPE and bands.dtype != np.dtype(BANDS_DTYPE[modality]):
        raise SSL4EOS12FileError(where, f"bands has dtype {bands.dtype}, expected {BANDS_DTYPE[modality]}")
    if "cloud_mask" in variables and variables["cloud_mask"].dims != ("time", "y", "x"):
        raise SSL4EOS12FileError(where, f"cloud_mask has dims {variables['cloud_mask'].dims}, expected (time, y, x)")
    present = [name for name, dims in OPTIONAL_VARIABLES.items()
               if name in variables and variables[name].dims == dims]
    if "time_" not in present and _time_coordinate(variables) is not None:
        present.append("time_")
    for name in [*present, "center_lat", "center_lon", "cloud_mask"]:
        expected = EXPECTED_DTYPES.get(name)
        variable = _time_coordinate(variables) if name == "time_" and "time_" not in variables else \
            variables.get(name)
        if expected and variable is not None and not _dtype_matches(variable.dtype, expected):
            raise SSL4EOS12FileError(where, f"variable {name} has dtype {variable.dtype}, expected {expected}")
    statics = tuple(
        (name, tuple(var.shape), str(var.dtype)) for name, var in sorted(variables.items())
        if name not in coords and name not in _STANDARD and "time" not in var.dims and 1 <= var.ndim <= 5
        and var.dtype.kind in "biuf"
    )
    band_names = tuple(str(b) for b in variables["band"].values) if "band" in coords else ()
    sizes = {dim: size for var in variables.values() for dim, size in zip(var.dims, var.shape)}
    return Layout(
        modality=modality,
        num_times=sizes["time"],
        band_names=band_names,
        bands_shape=tuple(bands.shape[1:]),
        bands_dtype=str(bands.dtype),
        height=sizes.get("y", 0),
        width=sizes.get("x", 0),
        has_cloud_mask="cloud_mask" in variables,
        variables=tuple(name for name in OPTIONAL_VARIABLES if name in present),
        statics=statics,
    )


def _time_coordinate(variables: Mapping) -> xr.Variable | None:
    """The timestamps held by the ``time`` coordinate itself (the webdataset release's way), if it holds them."""
    variable = variables.get("time")
    if variable is not None and variable.dims == ("time",) and variable.dtype.kind == "M":
        return variable
    return None


def _read_members(wheres: list[str], layout: Layout, datas: list[bytes], variables=None) -> ModalityFile:
    """Members of one modality, side by side: their big arrays decoded as the reader wants them
    (:func:`.fastzip.member_arrays`): straight into one ``(members, ...)`` array each (allocated as
    :func:`.fastzip.empty` says: a reader that reuses its arrays gets them here too), into each member's own
    arrays, or left encoded (both :class:`Encoded`); the small ones stacked; several members at once where
    :func:`.fastzip.decode_threads` says so."""
    return _members_reader(wheres, layout, datas, variables)()


def _members_reader(wheres: list[str], layout: Layout, datas: list[bytes], variables=None,
                    pool: ThreadPoolExecutor | None = None) -> Callable[[], ModalityFile]:
    """:func:`_read_members`, started: the members are decoded on ``pool`` (if given) while the caller goes on;
    calling the result waits for them and gives the :class:`ModalityFile` (raising what a member raised)."""
    shapes = {"bands": ((layout.num_times, *layout.bands_shape), layout.bands_dtype),
              "cloud_mask": ((layout.num_times, layout.height, layout.width), np.uint8)}
    wanted = [n for n in _names(layout, variables) if n in zipmember.BIG_ARRAYS]
    mode = fastzip.member_arrays()
    stacked = {name: fastzip.empty((len(datas), *shapes[name][0]), shapes[name][1])
               for name in wanted} if mode == "stacked" else {}

    def read(i: int) -> dict[str, np.ndarray]:
        out = {name: array[i] for name, array in stacked.items()} if mode == "stacked" else \
            {name: np.empty(*shapes[name]) for name in wanted} if mode == "separate" else None
        return _read_member(wheres[i], layout, datas[i], variables, out, defer=mode == "encoded")

    def assembled(members: list[dict]) -> ModalityFile:
        arrays = dict(stacked) if mode == "stacked" else {
            name: Encoded(name, (len(datas), *shapes[name][0]), shapes[name][1], [m[name] for m in members])
            for name in wanted}
        return ModalityFile(layout, {name: arrays[name] if name in arrays else np.stack([m[name] for m in members])
                                     for name in members[0]})

    if pool is not None and mode != "encoded":
        futures = [pool.submit(read, i) for i in range(len(datas))]
        return lambda: assembled([future.result() for future in futures])
    # members are small (~0.5 MB chunks): where the reader decodes on several threads, a member on each
    threads = min(fastzip.decode_threads(), len(datas))
    if threads > 1 and mode != "encoded":
        with ThreadPoolExecutor(threads, thread_name_prefix="ssl4eos12-decode") as own:
            members = list(own.map(read, range(len(datas))))
    else:
        members = [read(i) for i in range(len(datas))]
    return lambda: assembled(members)


class _Pending(NamedTuple):
    """A member's big array left encoded: what decoding it takes (:meth:`Encoded.decode_into`)."""

    where: str
    data: bytes | memoryview
    made: zipmember.Template
    entries: dict
    expected: Layout


class Encoded:
    """A big array (``bands``, ``cloud_mask``) of some tar members, ``(members, time, ...)``, each member's own: left
    encoded, a member's values are decoded when they are used, straight into the caller's memory
    (:meth:`decode_into`: the ``Loader``'s batch slot, one write of the decoded bytes instead of two), and only for
    the members and timestamps used; or already decoded into the member's own arrays. Indexing (``array[i]``,
    ``array[i, t]``) gives the member's array (or a view of it), or decodes into a new one. Values are the direct
    path's, or xarray's for a member that does not take it, as for a stacked block.

    Memory: the members' bytes (the mapped pages of a local tar, or the bytes of a remote one), not their decoded
    size (~1.6x that for S2L2A).
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype, members: list, times: np.ndarray | None = None):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.members = members  # per member: a _Pending, or its values already decoded (any other path)
        self.times = times  # (members, time): the member's chunk that goes to each timestamp, if not the file's

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    #: Indexing gives arrays no block refers to (a member's own, or new): a consumer may keep them as they are.
    owned = True

    def __getitem__(self, index) -> np.ndarray:
        row, time = index if isinstance(index, tuple) else (index, None)
        row, time = int(row), None if time == slice(None) else time
        member = self.members[row]
        if isinstance(member, np.ndarray) and self.times is None:  # decoded into its own array
            return member if time is None else member[time]
        out = np.empty(self.shape[1:] if time is None else self.shape[2:], self.dtype)
        self.decode_into(row, out, time)
        return out

    def decode_into(self, row: int, out: np.ndarray, time: int | None = None) -> None:
        """Decode member ``row`` (its timestamp ``time`` only, if given) into ``out``."""
        order = None if self.times is None else self.times[row].tolist()
        if time is not None:
            order = [time if order is None else order[time]]
            out = out[None]
        member = self.members[row]
        if not isinstance(member, _Pending):
            out[...] = member if order is None else member[order]
            return
        try:
            fastzip.decode_arrays(member.entries, member.data, member.made.metadata, [self.name], crc_thread=False,
                                  out={self.name: out}, orders=None if order is None else {self.name: order},
                                  layouts=member.made.big)
        except Exception as err:  # noqa: BLE001 - a chunk that does not decompress, a CRC error: xarray names it
            values = _through_xarray(member.where, f"cannot decode: {type(err).__name__}", member.expected,
                                     member.data, [self.name], None)[self.name]
            out[...] = values if order is None else values[order]

    def take_times(self, rows: np.ndarray) -> Encoded:
        """The array with member ``i``'s timestamps in the order ``rows[i]`` (as ``np.take_along_axis`` on axis 1)."""
        times = np.asarray(rows) if self.times is None else np.take_along_axis(self.times, np.asarray(rows), axis=1)
        return Encoded(self.name, self.shape, self.dtype, self.members, times)


def _read_member(where: str, expected: Layout, data: bytes, variables=None,
                 out: dict[str, np.ndarray] | None = None, defer: bool = False) -> dict[str, np.ndarray]:
    """Decode the variables of one member (default: all its layout has), checked against ``expected``; the big
    ones into the arrays of ``out`` where it has them, or (``defer``) left encoded as a :class:`_Pending` where
    the member takes the direct path.

    The member is decoded directly (:mod:`.zipmember`) where it is the simple case, else through xarray;
    the values are what xarray reads either way.
    """
    try:
        found = zipmember.template(data)
    except Exception as err:  # noqa: BLE001 - a corrupt member: xarray's reading below names the problem
        return _through_xarray(where, f"cannot open: {type(err).__name__}", expected, data, variables, out)
    if found is None:
        return _read_member_general(where, expected, data, variables, out)
    made, entries = found
    # the layout is the template's (its metadata and band values are this member's): checked once per template
    wanted = None if variables is None else tuple(variables)
    reads = made.checked.get((expected, wanted))
    if reads is None:
        member = made.member
        names = _names(_checked_layout(where, expected, member.variables, member.coords), variables)
        stored = {name: "time" if name == "time_" and "time_" not in member.variables else name for name in names}
        if "sample" in member.variables:
            stored["sample"] = "sample"
        reads = made.checked.setdefault((expected, wanted), stored)
    sources = list(dict.fromkeys(reads.values()))
    left = [name for name in sources if name in zipmember.BIG_ARRAYS] if defer else []
    try:
        read = zipmember.read_values(made, data, entries, [name for name in sources if name not in left], out)
    except Exception as err:  # noqa: BLE001 - a chunk that does not decompress, a CRC error: xarray names it
        return _through_xarray(where, f"cannot decode: {type(err).__name__}", expected, data, variables, out)
    read.update({name: _Pending(where, data, made, entries, expected) for name in left})
    values = {name: read[source] for name, source in reads.items()}
    values["sample"] = np.asarray(values["sample"]).astype(str) if "sample" in values else _sample(where, {})
    return values


def _through_xarray(where: str, why: str, expected: Layout, data: bytes, variables, out) -> dict[str, np.ndarray]:
    """A member the direct path cannot read, read by xarray (and counted as a fallback, logged once per tar)."""
    _fell_back(where, why)
    return _read_member_xarray(where, expected, data, variables, out)


def _read_member_general(where: str, expected: Layout, data: bytes, variables=None,
                         out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """:func:`_read_member` for a member whose zip :func:`.zipmember.template` leaves to ``zipfile``."""
    try:
        member = zipmember.open_member(data)
    except Exception as err:  # noqa: BLE001 - a corrupt member: xarray's reading below names the problem
        return _through_xarray(where, f"cannot open: {type(err).__name__}", expected, data, variables, out)
    if member is None:
        return _through_xarray(where, "not the simple case", expected, data, variables, out)
    names = _names(_checked_layout(where, expected, member.variables, member.coords), variables)
    try:
        values = member.read_big([n for n in zipmember.BIG_ARRAYS if n in names], out)
        for name in names:
            if name not in values:
                values[name] = _variable(member.variables, name).values
    except Exception as err:  # noqa: BLE001 - a chunk that does not decompress, a CRC error: xarray names it
        return _through_xarray(where, f"cannot decode: {type(err).__name__}", expected, data, variables, out)
    values["sample"] = _sample(where, member.variables)
    return values


def _read_member_xarray(where: str, expected: Layout, data: bytes, variables=None,
                        out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """:func:`_read_member` through ``xarray.open_zarr``: the reference, and the way for any other member."""
    with open_zarr_zip(where, data=data) as dataset:
        names = _names(_checked_layout(where, expected, dataset.variables, set(dataset.coords)), variables)
        try:
            big = [n for n in zipmember.BIG_ARRAYS if n in names]
            direct = fastzip.read_arrays(dataset.encoding[ZIP_SOURCE], big)
            values = {name: direct[name] if name in direct else _variable(dataset.variables, name).values
                      for name in names}
            for name, array in (out or {}).items():
                if name in values:
                    array[...] = values[name]
                    values[name] = array
        except Exception as err:  # a chunk that does not decompress, a CRC error
            raise SSL4EOS12FileError(where, f"cannot read data ({type(err).__name__}: {err})") from err
        values["sample"] = _sample(where, dataset.variables)
    return values


def _checked_layout(where: str, expected: Layout, variables: Mapping, coords) -> Layout:
    layout = member_layout(where, expected.modality, variables, coords)
    if layout != expected:
        raise SSL4EOS12FileError(where, f"layout {_describe(layout)} {layout.variables} differs from the "
                                        f"dataset's {_describe(expected)} {expected.variables}")
    return layout


def _names(layout: Layout, variables=None) -> list[str]:
    """The variables to read of a member with this layout: all it has, or those of ``variables`` among them."""
    names = ["bands", "center_lat", "center_lon", *(layout.variables or ()), *(s[0] for s in layout.statics)]
    if layout.has_cloud_mask:
        names.append("cloud_mask")
    return names if variables is None else [name for name in names if name in variables]


def _variable(variables: Mapping, name: str):
    """A variable; ``time_`` is the ``time`` coordinate where the member keeps its timestamps there."""
    return _time_coordinate(variables) if name == "time_" and "time_" not in variables else variables[name]


def _sample(where: str, variables: Mapping) -> np.ndarray:
    # no sample id in the member: the key is the location's only name
    return np.asarray(variables["sample"].values if "sample" in variables
                      else where.rsplit(":", 1)[-1].removesuffix(ZARR_ZIP_SUFFIX)).astype(str)
