"""The fast path for the big arrays of a Zarr v2 zip: Blosc-decode each chunk straight from the page cache.

Going through zarr, a chunk is copied from the page cache into a ``bytes`` object (``zipfile`` read, with
its CRC-32), decoded into a second, freshly allocated ``bytes`` object, and copied a third time into the
output array. For ``bands`` that is ~450 MB per S2 file, three times over, and it made reading a file
about twice as slow as decoding it. Here the zip is memory-mapped, each member's CRC-32 is checked on the
mapped bytes, and Blosc decodes it directly into the output array: one pass over the compressed bytes,
one write of the decoded ones. A tar member's chunks, small, are checked and decoded by one call of a compiled
helper (``_chunks.c``, built at install where a C compiler is at hand: :func:`decode_stored`) that holds no GIL,
with the same CRC-32 and Blosc functions as the Python loop it replaces, which stays for installs without it.
Decoded members' pages are dropped from the mapping as it goes, so the mapped file does not add to the process's
RSS. A remote file fetched whole into memory (``io.BytesIO`` or ``remote.FetchedFile``) is read the same way,
through its buffer.

Only arrays that xarray returns as stored take this path: Blosc with no filters, C order, a native
numeric dtype, no attributes but ``_ARRAY_DIMENSIONS`` and ``coordinates`` (so no CF decoding) and no
fill value (or NaN for floats, which xarray's masking leaves as is), every chunk a stored (not deflated) zip
member or not stored at all (a writer skips a chunk of fill values; it reads as 0, or NaN for floats, as zarr
gives it to xarray), and chunked along at most one axis, with chunk size 1 along it unless it is the first.
Anything else is left to xarray, so values are what xarray reads from the file either way.

An array chunked along its time axis (one chunk per timestamp, as SSL4EO-S12's files are) comes back as
a view with the time axis moved into place: values and shape are those of the file, the memory is
time-major. One location's time series ``array[i]`` is then four contiguous blocks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import ctypes
import functools
import json
import math
import mmap
import os
import struct
import sys
import threading
import zipfile
from collections.abc import Mapping, Sequence

import numcodecs
import numpy as np

try:  # the chunk loop in C (_chunks.c), built where a compiler was at hand; else the Python loop below, same values
    from . import _chunks
except ImportError:  # pragma: no cover - an install without the compiled helper
    _chunks = None
try:  # zlib-ng's SIMD CRC-32: same values, ~5x the system zlib's speed (0.03 instead of 0.15 CPU-s per S2L2A file)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; the standard library's still gives the same values
    from zlib import crc32

_LOCAL_HEADER = zipfile.sizeFileHeader  # 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: A local file header's signature, name length and extra field length.
_LOCAL_LENGTHS = struct.Struct("<4s22xHH")
#: Array attributes that change no value xarray reads.
_VALUELESS_ATTRIBUTES = {"_ARRAY_DIMENSIONS", "coordinates"}
#: Where the decoded arrays are allocated (``allocate(shape, dtype)``): fresh ``np.empty`` unless a caller that
#: can reuse its arrays says otherwise (:func:`allocating`).
_ALLOCATE: contextvars.ContextVar = contextvars.ContextVar("ssl4eos12_fastzip_allocate", default=np.empty)
#: How many chunks of an array are decoded at once (:func:`decoding`): 1 decodes in the calling thread while a
#: helper checks the CRC-32s ahead; more run CRC check and decode of each chunk on that many threads.
_THREADS: contextvars.ContextVar = contextvars.ContextVar("ssl4eos12_fastzip_threads", default=1)
#: How a reader of tar members wants their big arrays (:func:`decoding`): see :data:`MEMBER_ARRAYS`.
_MEMBERS: contextvars.ContextVar = contextvars.ContextVar("ssl4eos12_fastzip_members", default="stacked")
#: The ways a block of tar members holds their big arrays (``bands``, ``cloud_mask``): ``"stacked"``, one
#: ``(members, ...)`` array each (from the reader's pool, if it has one); ``"separate"``, each member's own arrays
#: (a consumer that keeps one example keeps only its memory, so it need not copy it out); ``"encoded"``, left
#: encoded until each example is used (``ssl4eos12.Loader`` decodes them straight into its batch slots).
MEMBER_ARRAYS = ("stacked", "separate", "encoded")
#: Compressed bytes of an array per decoding thread, at least.
PARALLEL_BYTES = 4 << 20
_BLOSC_HEADER = 16


def blosc_decoded_size(view) -> int:
    """The decoded size a Blosc chunk's header gives (-1 for a buffer too short to hold a header)."""
    return int.from_bytes(view[4:8], "little") if len(view) >= _BLOSC_HEADER else -1


def blosc_decode_into(view, out: np.ndarray, address: int | None = None) -> None:
    """Blosc-decode the chunk ``view`` into ``out``, which it must fill exactly (checked by the caller:
    :func:`blosc_decoded_size`). Raises ``ValueError`` for a chunk that does not decode.

    ``address``: where ``view``'s bytes are (:func:`buffer_address` of the buffer it is a slice of, plus its
    start), for a caller that knows it: c-blosc's ``blosc_decompress_ctx`` is then called through ``ctypes``
    (~0.6 us, the GIL let go while it decodes). Otherwise ``numcodecs.blosc.decompress`` (~1.6 us of Python a
    call, but py-spy saw the GIL held ~9 us a call in a busy ``Loader``: its argument checks and
    ``multiprocessing.current_process()``), never the ``Blosc`` codec's ``decode``, whose buffer checks and codec
    objects held the GIL ~20-40 us a chunk."""
    # c-blosc trusts the header's compressed size: a chunk that claims more bytes than it has is refused here
    if int.from_bytes(view[12:16], "little") != len(view):
        raise ValueError(f"Blosc chunk of {len(view)} bytes whose header says {int.from_bytes(view[12:16], 'little')}")
    if address is None or _blosc_decompress is None or not out.flags.c_contiguous or not out.flags.writeable:
        numcodecs.blosc.decompress(view, out)
        return
    decoded = _blosc_decompress(address, out.ctypes.data, out.nbytes, 1)
    if decoded != out.nbytes:
        raise ValueError(f"Blosc chunk of {len(view)} bytes does not decode into {out.nbytes} ({decoded})")


def buffer_address(buffer) -> int | None:
    """Where the bytes of ``buffer`` (``bytes``, a memoryview, an mmap) start in memory; ``None`` if unknown."""
    with contextlib.suppress(TypeError, ValueError, BufferError), memoryview(buffer) as view:
        if view.nbytes:
            return np.frombuffer(view, np.uint8, count=1).ctypes.data
    return None


def _c_blosc_decompress():
    """c-blosc's ``blosc_decompress_ctx`` as numcodecs' extension exports it, through ctypes (``None`` where it
    does not: then numcodecs' own call is used)."""
    try:
        function = ctypes.CDLL(numcodecs.blosc.__file__).blosc_decompress_ctx
    except (OSError, AttributeError):  # pragma: no cover - a numcodecs build without the symbol exported
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_blosc_decompress = _c_blosc_decompress()


@contextlib.contextmanager
def allocating(allocate):
    """In this context (this thread), decode into arrays from ``allocate(shape, dtype)`` instead of fresh ones.

    A fresh file-sized array costs the kernel a page fault and a page of zeroes for every page written; a caller
    that knows when an array is free again (``ssl4eos12.Loader``) hands out reused ones and saves that.
    """
    with _setting(_ALLOCATE, allocate):
        yield


@contextlib.contextmanager
def _setting(variable: contextvars.ContextVar, value):
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


class ArrayPool:
    """Memory to decode files into (:func:`decoding`), reused once nothing else refers to it.

    A fresh file-sized array costs the kernel a page fault and a page of zeroes for every page the decoder
    writes, and finding free huge pages with several files in memory costs it compaction too: measured on 2
    cores in ``ssl4eos12.Loader``, 3-9 ms of system time per S2L2A example, more than the Blosc decoding itself
    (2.8 ms); with reused arrays 0.3-0.6 ms. A buffer is handed out again only once this pool holds the last
    reference to it (every array made from it, and every view of those, refers to it), so nothing still reading
    a decoded file (a block in a shuffle window, a batch being gathered) sees it overwritten. An array is made
    from an idle buffer of its size, or up to twice its size (one modality's bands take another's: S2L2A's
    those of S2L1C). At most ``keep`` buffers are kept; arrays under ``MIN_BYTES`` are left to numpy, whose
    allocator recycles them anyway.
    """

    MIN_BYTES = 16 << 20

    def __init__(self, keep: int):
        self.keep = keep
        self.buffers: list[np.ndarray] = []  # flat uint8
        self.lock = threading.Lock()
        self.reuse = getattr(sys, "_is_gil_enabled", lambda: True)()  # refcounts are approximate without the GIL

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        shape, dtype = tuple(shape), np.dtype(dtype)
        size = dtype.itemsize * math.prod(shape)
        if not self.reuse or size < self.MIN_BYTES:
            return np.empty(shape, dtype)
        with self.lock:
            idle = [i for i in range(len(self.buffers)) if sys.getrefcount(self.buffers[i]) == 2]  # list + argument
            fits = [i for i in idle if size <= self.buffers[i].nbytes <= 2 * size]
            if fits:
                buffer = self.buffers[min(fits, key=lambda i: self.buffers[i].nbytes)]
            else:
                if len(self.buffers) >= self.keep and idle:  # full: an idle buffer that does not fit makes room
                    self.buffers.pop(idle[0])
                buffer = np.empty(size, np.uint8)
                if len(self.buffers) < self.keep:
                    self.buffers.append(buffer)
            return buffer[:size].view(dtype).reshape(shape)

    def clear(self) -> None:
        with self.lock:
            self.buffers.clear()


def member_arrays() -> str:
    """How the reader in this context wants tar members' big arrays (:data:`MEMBER_ARRAYS`, :func:`decoding`)."""
    return _MEMBERS.get()


def decode_threads() -> int:
    """How many threads the reader in this context decodes with (:func:`decoding`): for a reader of many small
    arrays (a tar's members) to decode several at once."""
    return _THREADS.get()


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as a container or ``taskset`` limits it)."""
    with contextlib.suppress(AttributeError, OSError):  # no affinity where the platform has none
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array to decode into: from the allocator in force (:func:`allocating`), else a fresh ``np.empty``."""
    return _ALLOCATE.get()(tuple(shape), np.dtype(dtype))


def decoding(blocks, pool: ArrayPool | None = None, threads: int = 1, members: str = "stacked"):
    """``blocks`` (an iterator of decoded blocks), each decoded into arrays from ``pool`` (if given) and with
    ``threads`` chunks of an array decoded at once; ``members``: how a block of tar members holds their big
    arrays (:data:`MEMBER_ARRAYS`; ``"separate"`` and ``"encoded"`` give ``ssl4eos12.sources.webdataset.Encoded``).

    More threads are for a reader that decodes one file at a time (streaming, conversion): Blosc decodes one
    chunk per thread, and a file's chunks are large (one per timestamp, ~110 MB for S2L1C). A reader that
    decodes several files at once on its own threads (``ssl4eos12.Loader``, DataLoader workers) keeps 1.

    The settings are in force only while the next block is decoded, never across a ``yield``: a generator that
    set them and was left suspended would leak them into its caller's other reads.
    """
    while True:
        allocation = allocating(pool.empty) if pool is not None else contextlib.nullcontext()
        with allocation, _setting(_THREADS, max(1, threads)), _setting(_MEMBERS, members):
            block = next(blocks, None)
        if block is None:
            return
        yield block


def read_arrays(source, names) -> dict[str, np.ndarray]:
    """Decode the arrays ``names`` of a zip that can take the fast path.

    ``source`` is a local path (memory-mapped) or an object with ``getbuffer()`` holding the whole zip (a
    fetched remote file; read through its buffer, without a copy). Returns the arrays it read; the caller reads
    the others (and any it cannot) through xarray. Raises ``zipfile.BadZipFile`` on a CRC mismatch or a malformed
    member, as ``zipfile`` would, and ``ValueError`` on a chunk that does not decode to its expected size.
    """
    if hasattr(source, "getbuffer"):  # io.BytesIO, remote.FetchedFile
        position = source.tell()
        try:
            # a fetched file whose body may still be arriving: each member is decoded once it is in
            wait = getattr(source, "wait", None)
            with zipfile.ZipFile(source) as zf, (source.getbuffer() if wait is None else
                                                 source.getbuffer(complete=False)) as buffer:
                return _read(zf, buffer, names, wait)
        finally:
            source.seek(position)
    with open(source, "rb") as file, zipfile.ZipFile(file) as zf, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return _read(zf, mapped, names)


def _read(zf: zipfile.ZipFile, mapped, names, wait=None) -> dict[str, np.ndarray]:
    try:
        metadata = json.loads(zf.read(".zmetadata"))["metadata"]
    except (KeyError, ValueError, TypeError):
        return {}
    return decode_arrays(zf, mapped, metadata, names, wait=wait)


def plannable(zf: zipfile.ZipFile, name: str, metadata: dict) -> bool:
    """Whether the array ``name`` can take the fast path (:func:`decode_arrays` will decode it)."""
    return _plan(zf, name, metadata) is not None


def decode_arrays(zf: zipfile.ZipFile, mapped, metadata: dict, names, crc_thread: bool = True,
                  out: Mapping[str, np.ndarray] | None = None, wait=None,
                  orders: Mapping[str, Sequence[int]] | None = None, layouts: Mapping | None = None,
                  ) -> dict[str, np.ndarray]:
    """As :func:`read_arrays`, for a zip already open: ``mapped`` is its bytes (a buffer, ``bytes`` or mmap),
    ``metadata`` its parsed consolidated metadata. ``out``: arrays to decode some of ``names`` into (of their
    shape and dtype; straight into them where the chunks are laid out as they are, else copied in), returned.
    ``wait(start, stop, block=True)``: for bytes still arriving (``remote.FetchedFile.wait``), called before a
    member's bytes are read.

    ``orders``: for an array chunked one index of its first axis per chunk (a member's ``bands``, one chunk per
    timestamp), the chunks to decode, in the order they go into its ``out`` (whose first axis has that length):
    one timestamp of a location, or its timestamps in another order, decoded straight where they go.
    ``layouts``: the arrays' :func:`array_layout`, where the caller keeps them (a tar's members share theirs).

    ``crc_thread=False`` checks the CRC-32s in this thread: for a small zip (a tar member of a few MB) starting
    a thread and handing results back costs more than it saves (measured: ~4 ms per 5 MB member, under load).
    """
    decoded: dict[str, np.ndarray] = {}
    layouts = layouts or {}
    if not crc_thread and wait is None:  # a tar member's, read by its directory's skeleton: one call per array
        names = [name for name in names
                 if not _decoded_by_rows(zf, mapped, name, layouts.get(name), out, orders, decoded)]
    plans = {name: plan for name in names if (plan := _plan(zf, name, metadata, layouts.get(name))) is not None}
    if not plans:
        return decoded
    # One thread checks CRC-32s ahead while Blosc decodes (both release the GIL). It lives for this call
    # only: a pool kept across calls would be dead in a forked DataLoader worker.
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ssl4eos12-crc") if crc_thread else _Inline()
    with pool as crc_pool:
        for name, (dtype, shape, members, axis, chunk_len) in plans.items():
            order = (orders or {}).get(name)
            if order is not None:
                if axis != 0 or chunk_len != 1:
                    raise ValueError(f"{name}: chunks in a chosen order need one chunk per index of the first axis")
                members, shape = [members[k] for k in order], (len(order), *shape[1:])
            decoded[name] = _decode(mapped, crc_pool, dtype, shape, members, axis, chunk_len, (out or {}).get(name),
                                    wait)
    return decoded


class _Inline(contextlib.AbstractContextManager):
    """An executor that runs each call at once, in the calling thread."""

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def __exit__(self, *exc) -> None:
        return None


def array_spec(zarray) -> tuple[np.dtype, tuple[int, ...], tuple[int, ...]] | None:
    """``(dtype, shape, chunks)`` of a Zarr v2 ``.zarray``, or ``None`` when it is not one this module can read."""
    if not isinstance(zarray, dict):
        return None
    try:
        return np.dtype(zarray["dtype"]), tuple(int(s) for s in zarray["shape"]), tuple(int(c) for c in zarray["chunks"])
    except (KeyError, TypeError, ValueError):
        return None


def array_layout(name: str, metadata: dict):
    """``(dtype, shape, chunk keys, axis, chunk length)`` of an array the fast path takes, from the zip's
    consolidated metadata alone (what every member of a tar's layout shares), or ``None`` when it is xarray's to
    read."""
    zarray = metadata.get(f"{name}/.zarray")
    zattrs = metadata.get(f"{name}/.zattrs", {})
    spec = array_spec(zarray)
    # "coordinates" only tells xarray which variables are coordinates: it changes no value
    if spec is None or not isinstance(zattrs, dict) or set(zattrs) - _VALUELESS_ATTRIBUTES:
        return None
    dtype, shape, chunks = spec
    compressor = zarray.get("compressor") or {}
    fill_value = zarray.get("fill_value")
    if (
        zarray.get("zarr_format") != 2
        or compressor.get("id") != "blosc"
        or zarray.get("filters")
        or zarray.get("order", "C") != "C"
        or dtype.kind not in "biuf"
        or not dtype.isnative
        or not (fill_value is None or (dtype.kind == "f" and fill_value == "NaN"))
        or len(shape) != len(chunks)
        or not shape
        or 0 in shape
        or 0 in chunks
    ):
        return None
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    split = [d for d, n in enumerate(grid) if n > 1]
    axis = split[0] if split else 0
    if len(split) > 1 or any(chunks[d] != shape[d] for d in range(len(shape)) if d != axis):
        return None
    if shape[axis] % chunks[axis] or (axis != 0 and chunks[axis] != 1):
        return None
    separator = zarray.get("dimension_separator", ".")
    keys = tuple(f"{name}/" + separator.join(str(i if d == axis else 0) for d in range(len(shape)))
                 for i in range(grid[axis]))
    return dtype, shape, keys, axis, chunks[axis]


def _decoded_by_rows(zf, mapped, name: str, layout, out, orders, decoded: dict) -> bool:
    """Decode ``name`` into ``decoded`` in one call of the compiled helper, where the zip's entries are a directory
    read by its skeleton (they give the chunks' rows: :meth:`.zipmember._Listed.rows`), every chunk is stored and
    each is one index of the first axis; ``False`` where it is not that case or a chunk has a problem (the general
    path then reads the array, and raises the problem)."""
    rows_of = getattr(zf, "rows", None)
    if rows_of is None or layout is None or _NATIVE is None:
        return False
    dtype, shape, keys, axis, chunk_len = layout
    order = (orders or {}).get(name)
    if axis != 0:
        return False
    if order is not None:
        if chunk_len != 1:
            return False
        keys, shape = tuple(keys[k] for k in order), (len(order), *shape[1:])
    rows = rows_of(keys)
    target = (out or {}).get(name)
    if rows is None or (target is not None and (target.shape != shape or target.dtype != dtype)):
        return False
    result = target if target is not None and target.flags.c_contiguous and target.flags.writeable else \
        empty(shape, dtype)
    offsets, sizes, crcs = zf.columns
    starts, nbytes, blosc = _slots(len(keys), result.nbytes // len(keys))
    if decode_stored(mapped, offsets[rows], sizes[rows], crcs[rows], result.reshape(-1).view(np.uint8), starts,
                     nbytes, blosc) != len(keys):
        return False
    decoded[name] = _decoded(result, axis, target)
    return True


@functools.lru_cache(maxsize=64)
def _slots(count: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where ``count`` consecutive Blosc chunks of ``size`` bytes each go (:func:`decode_stored`'s arguments)."""
    return np.arange(count, dtype=np.int64) * size, np.full(count, size, np.int64), np.ones(count, np.uint8)


def _plan(zf: zipfile.ZipFile, name: str, metadata: dict, layout=None):
    """What decoding ``name`` takes (``layout``: its :func:`array_layout`, if known), or ``None`` when it is
    xarray's to read."""
    layout = array_layout(name, metadata) if layout is None else layout
    if layout is None:
        return None
    dtype, shape, keys, axis, chunk_len = layout
    members = []
    for key in keys:
        try:
            info = zf.getinfo(key)
        except KeyError:  # not stored (a writer skips a chunk of fill values): None, filled when decoding
            members.append(None)
            continue
        if not _stored(info):
            return None
        members.append(info)
    return dtype, shape, members, axis, chunk_len


def _decode(mapped, crc_pool, dtype: np.dtype, shape: tuple[int, ...], members, axis: int, chunk_len: int,
            out: np.ndarray | None = None, wait=None):
    if out is not None and (out.shape != shape or out.dtype != dtype):
        raise ValueError(f"cannot decode a {dtype} array of shape {shape} into a {out.dtype} one of {out.shape}")
    if axis == 0:
        result = out if out is not None and out.flags.c_contiguous else empty(shape, dtype)
        blocks = [result[i * chunk_len:(i + 1) * chunk_len] for i in range(len(members))]
    else:  # one chunk per index of ``axis``: decode time-major, hand out the file's axis order
        result = empty((shape[axis], *shape[:axis], *shape[axis + 1:]), dtype)
        blocks = list(result)
    # a chunk that is not stored reads as zarr reads it for xarray: the fill value (NaN), or 0 for a null one
    for block in (block for info, block in zip(members, blocks) if info is None):
        block[...] = np.nan if dtype.kind == "f" else 0
    slots = [k for k, info in enumerate(members) if info is not None]  # where each stored chunk goes
    stored = [(info, block) for info, block in zip(members, blocks) if info is not None]
    if not stored:  # no chunk stored at all (a mask of a location clear at every timestamp): all fill value
        return _decoded(result, axis, out)
    members, blocks = zip(*stored)
    with contextlib.ExitStack() as views:
        spans: list[tuple[int, int]] = []
        data: list[memoryview] = []

        def arrived(j: int, block: bool = True) -> bool:
            """Members up to ``j`` have their views (their bytes are in: waited for where they arrive)."""
            while len(spans) <= j:
                info = members[len(spans)]
                if wait is not None and not wait(info.header_offset, info.header_offset + _LOCAL_HEADER, block):
                    return False
                start, stop = _member_span(mapped, info)
                if wait is not None and not wait(start, stop, block):
                    return False
                spans.append((start, stop))
                data.append(views.enter_context(memoryview(mapped)[start:stop]))
            return True

        # a thread per chunk pays off for large chunks only (a tar member's are ~0.5 MB: one thread is faster)
        threads = min(_THREADS.get(), len(members), max(1, sum(i.compress_size for i in members) // PARALLEL_BYTES))
        if threads > 1:
            _decode_on_threads(mapped, members, blocks, arrived, data, spans, threads)
            return _decoded(result, axis, out)
        if isinstance(crc_pool, _Inline) and wait is None:  # a tar member's: no thread, no future per chunk
            done = _decode_natively(mapped, members, result, slots, blocks[0].nbytes)
            members, blocks = members[done:], blocks[done:]  # those left: the Python loop (raising for a bad one)
            base = buffer_address(mapped) if members else None
            for info, block in zip(members, blocks):
                start, stop = _member_span(mapped, info)
                with memoryview(mapped)[start:stop] as view:
                    _decode_member(info, view, block, crc32(view), None if base is None else base + start)
            return _decoded(result, axis, out)
        crcs: list = []
        try:
            for k, (info, block) in enumerate(zip(members, blocks)):
                arrived(k)
                view, span = data[k], spans[k]
                # the CRC thread checks one member ahead (if it is in), no further: mapped pages count in RSS
                # until dropped
                if k + 1 < len(members):
                    arrived(k + 1, block=False)
                crcs.extend(crc_pool.submit(crc32, v) for v in data[len(crcs):k + 2])
                _decode_member(info, view, block, crcs[k].result())
                drop_pages(mapped, *span)
        finally:  # no view may be released while the CRC thread still reads it
            concurrent.futures.wait(crcs)
    return _decoded(result, axis, out)


def decodes_natively() -> bool:
    """Whether :func:`decode_stored` has its compiled helper (else it decodes nothing)."""
    return _NATIVE is not None


def decode_stored(data, headers: np.ndarray, sizes: np.ndarray, crcs: np.ndarray, out: np.ndarray,
                  starts: np.ndarray, nbytes: np.ndarray, blosc: np.ndarray) -> int:
    """Check and decode the stored members of the zip ``data`` whose local headers are at ``headers`` (their sizes
    and CRC-32s as the central directory gives them) into the flat ``uint8`` array ``out``, member ``i`` into
    ``out[starts[i]:starts[i] + nbytes[i]]``, Blosc-decoded where ``blosc[i]``, else as it is: one call of the
    compiled helper (``_chunks.c``), without the GIL.

    Returns how many it decoded: all of them, or those before the first it found a problem with (a caller's Python
    path then reads that one again, and raises its problem as ``zipfile`` or Blosc would), or 0 where the helper is
    not at hand or cannot take the buffers.
    """
    if _NATIVE is None or not len(headers):
        return 0
    try:
        return _chunks.decode(data, headers.astype(np.int64, copy=False), sizes.astype(np.int64, copy=False),
                              crcs.astype(np.uint32, copy=False), out, starts.astype(np.int64, copy=False),
                              nbytes.astype(np.int64, copy=False), blosc.astype(np.uint8, copy=False), *_NATIVE)
    except (TypeError, ValueError, BufferError):  # a buffer it cannot take (not contiguous, not bytes-like)
        return 0


def _decode_natively(mapped, members, result: np.ndarray, slots: list[int], slot_bytes: int) -> int:
    """:func:`decode_stored` of the Blosc chunks ``members`` into ``result``, slot ``slots[i]`` (of ``slot_bytes``)
    taking ``members[i]``."""
    if _NATIVE is None or not result.flags.c_contiguous or not result.flags.writeable or not members:
        return 0
    _, nbytes, blosc = _slots(len(members), slot_bytes)
    return decode_stored(mapped, np.array([info.header_offset for info in members], np.int64),
                         np.array([info.compress_size for info in members], np.int64),
                         np.array([info.CRC for info in members], np.uint32), result.reshape(-1).view(np.uint8),
                         np.array(slots, np.int64) * slot_bytes, nbytes, blosc)


def _native_functions() -> tuple[int, int] | None:
    """The addresses of zlib-ng's ``zng_crc32_z`` and c-blosc's ``blosc_decompress_ctx`` for the compiled helper
    (``None`` where either, or the helper, is not at hand: the Python loop then does the same)."""
    if _chunks is None or _blosc_decompress is None:
        return None
    try:
        import zlib_ng.zlib_ng

        crc = ctypes.CDLL(zlib_ng.zlib_ng.__file__).zng_crc32_z
    except (ImportError, OSError, AttributeError):  # pragma: no cover - zlib-ng is a dependency
        return None
    return ctypes.cast(crc, ctypes.c_void_p).value, ctypes.cast(_blosc_decompress, ctypes.c_void_p).value


def _decode_member(info: zipfile.ZipInfo, view: memoryview, block: np.ndarray, crc: int,
                   address: int | None = None) -> None:
    """Decode member ``info`` (its bytes ``view``, at ``address`` if known; their CRC-32 ``crc``) into ``block``,
    checked as ``zipfile`` would."""
    _check_crc(info, crc)
    # Blosc header: bytes 4-8 hold the decoded size; decoding into a larger buffer would not fail
    decoded_size = blosc_decoded_size(view)
    if decoded_size != block.nbytes:
        raise ValueError(f"chunk {info.filename!r} decodes to {decoded_size} bytes, expected {block.nbytes}")
    blosc_decode_into(view, block, address)


def _decode_on_threads(mapped, members, blocks, arrived, data, spans, threads: int) -> None:
    """Check and decode each member on one of ``threads`` threads, at most ``threads`` at once (so at most that
    many members' pages are mapped), in file order: ``arrived`` waits for bytes still arriving here."""

    def check_and_decode(k: int) -> None:
        _decode_member(members[k], data[k], blocks[k], crc32(data[k]))
        drop_pages(mapped, *spans[k])

    running: list = []
    # a pool for this call only, as the CRC thread's: one kept across calls would be dead in a forked worker
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ssl4eos12-decode") as pool:
        try:
            for k in range(len(members)):
                if len(running) >= threads:
                    running.pop(0).result()  # the oldest first: its error is the first in file order
                arrived(k)
                running.append(pool.submit(check_and_decode, k))
            for future in running:
                future.result()
        finally:  # no view may be released while a thread still reads it
            concurrent.futures.wait(running)


def _decoded(result: np.ndarray, axis: int, out: np.ndarray | None) -> np.ndarray:
    """The decoded time-major ``result`` in the file's axis order (and in ``out``, if given)."""
    result = result if axis == 0 else np.moveaxis(result, 0, axis)
    if out is not None and result is not out:
        out[...] = result
        return out
    return result


def _member_span(mapped, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where the stored bytes of a zip member are in the mapped file (or buffer)."""
    try:
        signature, name_length, extra_length = _LOCAL_LENGTHS.unpack_from(mapped, info.header_offset)
    except struct.error:
        signature = b""
    if signature != _LOCAL_SIGNATURE:
        raise zipfile.BadZipFile(f"Bad magic number for file header of {info.filename!r}")
    start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
    if start + info.compress_size > len(mapped):
        raise zipfile.BadZipFile(f"Truncated file: member {info.filename!r} runs past the end")
    return start, start + info.compress_size


def member_bytes(zf: zipfile.ZipFile, mapped, name: str):
    """The bytes of member ``name`` of a zip held in ``mapped``: for a stored (uncompressed) member a view of
    ``mapped``, CRC-32 checked, without ``zipfile``'s per-read objects (~4x faster for the small chunks of a tar
    member); otherwise ``zf.read``. Raises ``KeyError`` for a missing member, ``zipfile.BadZipFile`` as
    ``zipfile`` would."""
    return stored_member(zf, mapped, name)[0]


def stored_member(zf: zipfile.ZipFile, mapped, name: str):
    """:func:`member_bytes`, and where they start in ``mapped`` (``None`` for a member ``zipfile`` reads)."""
    info = zf.getinfo(name)
    if not _stored(info):
        return zf.read(info), None
    start, stop = _member_span(mapped, info)
    view = memoryview(mapped)[start:stop]
    _check_crc(info, crc32(view))
    return view, start


def _stored(info: zipfile.ZipInfo) -> bool:
    """Whether a member's bytes are its data as they are: not compressed by zip, not encrypted."""
    return info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1


def _check_crc(info: zipfile.ZipInfo, crc: int) -> None:
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")


def drop_pages(mapped, start: int, stop: int) -> None:
    """Unmap the pages of a decoded member from this process (they stay in the page cache; a view still held reads
    them back in)."""
    if not isinstance(mapped, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    # through ctypes, which lets the GIL go: mmap.madvise holds it while the kernel unmaps the pages (~70 us for a
    # 4 MB tar member, measured: 8% of the GIL a Loader held on tars)
    if not _advise(mapped, start, stop, mmap.MADV_DONTNEED):
        with contextlib.suppress(OSError, ValueError):
            aligned = start - start % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_DONTNEED, aligned, stop - aligned)


def map_pages(mapped, start: int, stop: int) -> None:
    """Map the pages of ``mapped[start:stop]`` into this process now (where the kernel can), without the GIL.

    Python code that touches a page of a mapped file first takes the page fault holding the GIL: a tar member's
    zip directory, each chunk's header, read through views of a mapped tar, were ~25% of the GIL a ``Loader`` held
    on tars (py-spy), each fault mapping the member's pages a few at a time.
    """
    global _can_populate
    if _can_populate and isinstance(mapped, mmap.mmap) and not _advise(mapped, start, stop, _MADV_POPULATE_READ):
        _can_populate = False  # a kernel before 5.14, or no libc madvise: the pages fault in as they are read


def _advise(mapped: mmap.mmap, start: int, stop: int, advice: int) -> bool:
    """``madvise`` of the pages holding ``mapped[start:stop]`` through ctypes (no GIL); ``False`` where it fails."""
    if _madvise is None or stop <= start:
        return _madvise is not None
    base = buffer_address(mapped)
    if base is None:
        return False
    aligned = start - start % mmap.PAGESIZE
    return _madvise(base + aligned, min(stop, len(mapped)) - aligned, advice) == 0


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - a libc without madvise
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_madvise = _libc_madvise()
#: Linux's MADV_POPULATE_READ (5.14+), which Python 3.11's mmap module does not name.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_can_populate = sys.platform.startswith("linux")
#: What the compiled helper calls (zlib-ng's CRC-32 and c-blosc's decoder, by address); ``None`` without it.
_NATIVE = _native_functions()
