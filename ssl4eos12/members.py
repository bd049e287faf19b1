"""Members of the webdataset tars by byte range: the member index, and reading only the chosen members.

Each location is one member per modality, a contiguous byte range of its tar. :func:`walk_tar` lists a tar's
members (key, data offset, size) by reading its headers only: 512 bytes per member (a pax header's data too,
where the tar has them), by range requests for a remote tar, never its data. ``ssl4eos12 index`` records them as
the index's ``key``, ``position`` and ``{M}_offset``, ``{M}_size``, ``{M}_tar_size`` columns
(:mod:`ssl4eos12.index`), and :func:`ssl4eos12.index.select` hands them to the readers with each tar's selection
(:class:`MemberSelection`). :func:`read_members` then fetches only those members: neighbours whose gap is small
are coalesced into one request (:func:`coalesce`), and each range starts at the member's own tar header, which
is checked (name and size), as is the tar's size (a range answer's ``Content-Range`` tells it): a tar changed
since it was indexed raises :class:`~ssl4eos12.errors.SSL4EOS12DataError` naming it, never hands over wrong
bytes.

Memory: one coalesced range at a time per modality and request, at most :data:`MAX_RANGE` bytes (plus a single
member larger than that).
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .constants import ZARR_ZIP_SUFFIX
from .errors import SSL4EOS12DataError, SSL4EOS12FileError
from .sources.remote import ChangedFileError, RangeReader, RemoteFileError
from .sources.webdataset import member_key

logger = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE  # 512
#: Two chosen members are fetched in one request when the bytes between them are at most this many ...
MAX_GAP = 1 << 20
#: ... and at most this share of the chosen bytes of the request: the unchosen bytes sent stay under 10%.
MAX_GAP_SHARE = 0.05
#: A coalesced request is not grown beyond this many bytes (memory: one such range per modality in flight).
MAX_RANGE = 64 << 20
#: Parallel requests of one read (a location's modalities, or a block's ranges).
READ_THREADS = 8
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_SKIPPED_TYPES = (tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK)


@dataclass(frozen=True)
class TarMember:
    """One member of a tar: its key (the name up to the first dot), name, and data's offset and size."""

    key: str
    name: str
    offset: int
    size: int


def _stale(url: str, why: str) -> SSL4EOS12DataError:
    return SSL4EOS12DataError(f"{url}: the member index is stale ({why}): the tar changed since it was indexed; "
                              f"rerun `ssl4eos12 index` (with --out where it was written) to bring it up to date")


def walk_tar(url: str, download_config=None, options=None) -> tuple[list[TarMember], int]:
    """The ``<key>.zarr.zip`` members of the tar ``url`` in order, and the tar's size, from its headers alone.

    A remote tar is read by range requests of its headers: 512 bytes per member (1,536 where every member has a
    pax header before it: both in one request). A member that is not ``<key>.zarr.zip`` raises
    :class:`~ssl4eos12.errors.SSL4EOS12FileError` naming the tar, as reading it would.
    """
    reader = RangeReader(url, download_config, options)
    try:
        first = reader.read(0, BLOCK)
    except FileNotFoundError as err:
        raise SSL4EOS12FileError(url, "file not found") from err
    except (OSError, RemoteFileError) as err:
        raise SSL4EOS12FileError(url, f"could not read its headers ({type(err).__name__}: {err})") from err
    size = reader.size
    members: list[TarMember] = []
    position, buffer, buffer_start = 0, first, 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    read_size = BLOCK

    def block_at(start: int, length: int) -> memoryview:
        nonlocal buffer, buffer_start
        if not (buffer_start <= start and start + length <= buffer_start + len(buffer)):
            stop = min(size, start + max(length, read_size))
            if stop < start + length:
                raise SSL4EOS12FileError(url, f"not a readable tar file, truncated at byte {size}")
            buffer, buffer_start = reader.read(start, stop, size), start
        return memoryview(buffer)[start - buffer_start:start - buffer_start + length]

    while position + BLOCK <= size:
        header = bytes(block_at(position, BLOCK))
        if header.count(0) == BLOCK:  # the end-of-archive blocks
            break
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.TarError as err:
            raise SSL4EOS12FileError(url, f"not a readable tar file: bad header at byte {position} ({err})") from err
        data = position + BLOCK
        length = int(pax.get("size", info.size)) if info.type not in _PAX_TYPES else info.size
        following = data + -(-length // BLOCK) * BLOCK
        if info.type in _PAX_TYPES:
            pax = _pax_records(bytes(block_at(data, info.size)))
            read_size = 3 * BLOCK  # a pax tar: the next header, its data and the member's header in one request
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = bytes(block_at(data, info.size)).rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type in _SKIPPED_TYPES:
            pass
        else:
            name = pax.get("path", long_name or info.name)
            pax, long_name = {}, None
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                members.append(TarMember(member_key(url, name), name, data, length))
        position = following
    return members, size


def first_member(url: str, download_config=None, options=None) -> tuple[str, bytes] | None:
    """``(key, bytes)`` of a remote tar's first member by two range requests (its header, then its data): a
    layout probe that sends one member and 512 bytes. ``None`` where the first header is not a plain one (a pax
    or GNU long-name header: the caller reads the tar's start instead)."""
    reader = RangeReader(url, download_config, options)
    header = bytes(reader.read(0, BLOCK))
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.TarError:
        return None
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or reader.size is None:
        return None
    try:
        key = member_key(url, info.name)
    except SSL4EOS12FileError:
        return None  # the tar reader names the problem
    if BLOCK + info.size > reader.size:
        return None
    return key, bytes(reader.read(BLOCK, BLOCK + info.size, reader.size))


def _pax_records(data: bytes) -> dict[str, str]:
    records, at = {}, 0
    while at < len(data) and data[at:at + 1] not in (b"\0", b""):
        length = int(data[at:data.index(b" ", at)])
        keyword, _, value = data[data.index(b" ", at) + 1:at + length - 1].partition(b"=")
        records[keyword.decode()] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


@dataclass(frozen=True)
class ShardMembers:
    """Chosen members of one shard (one tar name): per location its key and position in the tar, and per modality
    each member's data offset and size and the tar's size when indexed."""

    keys: tuple[str, ...]
    positions: np.ndarray
    offsets: Mapping[str, np.ndarray]
    sizes: Mapping[str, np.ndarray]
    tar_sizes: Mapping[str, int]
    #: The location id of each (where the index names them).
    samples: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows) -> ShardMembers:
        rows = np.asarray(rows, dtype=np.int64)
        return ShardMembers(tuple(self.keys[i] for i in rows), self.positions[rows],
                            {m: v[rows] for m, v in self.offsets.items()}, {m: v[rows] for m, v in self.sizes.items()},
                            dict(self.tar_sizes), None if self.samples is None else self.samples[rows])

    def nbytes(self, modalities: Sequence[str] | None = None) -> int:
        """The chosen members' bytes (of ``modalities``; default all)."""
        return int(sum(self.sizes[m].sum() for m in (modalities or self.sizes)))


class MemberSelection(dict):
    """A tar's selection (``{sample: time indices or None}``, :func:`ssl4eos12.index.select`) that also knows where
    its members are (:attr:`members`, in tar order): a reader fetches just those."""

    members: ShardMembers

    def __init__(self, selection: Mapping, members: ShardMembers):
        super().__init__(selection)
        self.members = members

    def __reduce__(self):
        return MemberSelection, (dict(self), self.members)


def members_of(selection) -> ShardMembers | None:
    """The member positions a selection carries, or ``None``."""
    return getattr(selection, "members", None)


def coalesce(spans: Sequence[tuple[int, int]], max_gap: int = MAX_GAP, share: float = MAX_GAP_SHARE,
             max_range: int = MAX_RANGE) -> list[tuple[int, int, list[int]]]:
    """Group ``(start, stop)`` spans (sorted by start, not overlapping) into requests ``(start, stop, [span
    indices])``: a neighbour joins when the gap is at most ``max_gap`` bytes and the gaps stay at most ``share`` of
    the spans' own bytes, and the request stays under ``max_range``."""
    requests: list[tuple[int, int, list[int]]] = []
    wanted = 0
    for i, (start, stop) in enumerate(spans):
        if requests:
            first, last, members = requests[-1]
            gap = start - last
            joined_wanted = wanted + (stop - start)
            if (0 <= gap <= max_gap and (stop - first) - joined_wanted <= share * joined_wanted
                    and stop - first <= max_range):
                requests[-1] = (first, stop, members + [i])
                wanted = joined_wanted
                continue
        requests.append((start, stop, [i]))
        wanted = stop - start
    return requests


def read_members(urls: Mapping[str, str], members: ShardMembers, download_config=None, options=None,
                 readers: dict | None = None) -> dict[str, list[bytes]]:
    """The bytes of the chosen members of every modality (``urls``: modality -> tar), in ``members``' order.

    Each request starts at a member's tar header, which must name the member's key and size, and the tar must
    have the size it had when indexed: otherwise :class:`~ssl4eos12.errors.SSL4EOS12DataError` names the tar and
    says to rerun ``ssl4eos12 index``. ``readers``: :class:`RangeReader` per URL to reuse (resolved ``hf://``).
    """
    jobs = []
    for modality, url in urls.items():
        offsets, sizes = members.offsets[modality], members.sizes[modality]
        order = np.argsort(offsets, kind="stable")
        spans = [(int(offsets[i]) - BLOCK, int(offsets[i] + sizes[i])) for i in order]
        for start, stop, parts in coalesce(spans):
            jobs.append((modality, url, start, stop, [int(order[p]) for p in parts]))
    out = {modality: [b""] * len(members) for modality in urls}
    readers = readers if readers is not None else {}

    def run(job) -> None:
        modality, url, start, stop, rows = job
        reader = readers.get(url) or readers.setdefault(url, RangeReader(url, download_config, options))
        expected = members.tar_sizes.get(modality)
        try:
            data = reader.read(start, stop, expected)
        except ChangedFileError as err:
            raise _stale(url, f"it has {err.size} bytes, the index says {err.expected}") from None
        except FileNotFoundError as err:
            raise SSL4EOS12FileError(url, "file not found") from err
        except RemoteFileError as err:
            raise _stale(url, str(err)) if expected is not None and "HTTP 416" in str(err) else \
                SSL4EOS12FileError(url, f"could not be read ({err})") from err
        except OSError as err:
            raise SSL4EOS12FileError(url, f"could not be read ({type(err).__name__}: {err})") from err
        view = memoryview(data)
        for row in rows:
            offset, size, key = int(members.offsets[modality][row]), int(members.sizes[modality][row]), members.keys[row]
            header = bytes(view[offset - BLOCK - start:offset - start])
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.TarError:
                raise _stale(url, f"no tar header before member {key} at byte {offset}") from None
            name = posixpath.basename(info.name)
            if info.size != size or not (name == key + ZARR_ZIP_SUFFIX or (len(info.name) >= 99 and
                                                                          (key + ZARR_ZIP_SUFFIX).startswith(name))):
                raise _stale(url, f"the header at byte {offset - BLOCK} is {info.name!r} of {info.size} bytes, not "
                                  f"{key}{ZARR_ZIP_SUFFIX} of {size}")
            out[modality][row] = bytes(view[offset - start:offset + size - start])
        view.release()

    if len(jobs) == 1:
        run(jobs[0])
    else:
        with ThreadPoolExecutor(min(READ_THREADS, len(jobs)), thread_name_prefix="ssl4eos12-members") as pool:
            for future in [pool.submit(run, job) for job in jobs]:
                future.result()
    return out


def requested_bytes(members: ShardMembers, modalities: Sequence[str]) -> int:
    """Bytes :func:`read_members` requests for ``members`` (coalesced ranges, their headers included)."""
    total = 0
    for modality in modalities:
        offsets, sizes = members.offsets[modality], members.sizes[modality]
        order = np.argsort(offsets, kind="stable")
        spans = [(int(offsets[i]) - BLOCK, int(offsets[i] + sizes[i])) for i in order]
        total += sum(stop - start for start, stop, _ in coalesce(spans))
    return total


__all__ = ["MemberSelection", "ShardMembers", "TarMember", "coalesce", "members_of", "read_members", "walk_tar"]
