"""Remote files: fsspec file systems with ``datasets``' authentication and retries, and a whole-file fetch at
the speed of the link.

``datasets`` keeps per-protocol storage options in ``DownloadConfig.storage_options`` and the Hub token in
``DownloadConfig.token``; the same conventions apply here, so ``load_dataset(..., token=...,
storage_options=...)`` reaches every file this package opens.

:func:`fetch` reads a whole file into one buffer allocated once (a private anonymous memory map with
transparent huge pages: no zero-filling, one page fault per 2 MB, returned to the OS when the file is closed;
inside a prefetch the buffers of closed files are reused). ``http(s)://`` and ``hf://`` are read with
``http.client`` straight into slices of that buffer (``readinto``: no per-chunk Python objects, no copies;
fsspec's aiohttp client spent twice the CPU time of this on the same bytes), optionally as several byte
ranges over parallel connections (:class:`FetchOptions`), each retried from where it stopped with
``datasets``' read-retry policy (``config.STREAMING_READ_MAX_RETRIES`` / ``STREAMING_READ_RETRY_INTERVAL``).
A read that gets no byte for ``timeout`` seconds counts as a failed attempt. Inside
:func:`ssl4eos12.prefetch.prefetch`, a file fetched over one connection is handed over as soon as its last
:data:`TAIL` bytes are in (a zip's directory, and these files' small arrays and cloud masks), and its body
is fetched right after, in the prefetch's thread, while the file is already being decoded
(:meth:`FetchedFile.wait`; reads wait for their bytes); a fetch stops as soon as its prefetch is closed.
Other protocols, proxied URLs and storage options this client does not understand go through fsspec, with
the same retries.

A server without Range support (``python -m http.server``, some mirrors) sends the whole file to every request.
Such a file is fetched whole over one connection, and a stalled fetch restarts from its first byte (the bytes
already read are skipped); :func:`open_random_access` reads parts of a file (a zip's directory, a Parquet footer)
by range, and the whole file where the server ignores ranges. What each server did is remembered for a while
(:func:`serves_ranges`), and a server that ignores ranges is logged once.

:func:`open_sequential` reads a file once, front to back (a webdataset tar), in windows fetched ahead into
pooled buffers: one request per file, each byte sent once, memory bounded by a few windows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import io
import ipaddress
import itertools
import logging
import mmap
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
import weakref
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import fsspec

from ..prefetch import Cancelled, CancelScope, current_scope, prefetch
from .failures import remote_cause

logger = logging.getLogger(__name__)

#: Parallel connections per file for hosts that are not on this machine: one connection to a WAN host is
#: usually limited well below the link (TCP window x round trip, per-connection CDN limits). Measured: see
#: benchmarks/README.md ("one file's fetch").
REMOTE_CONNECTIONS = 4
#: Parallel connections per file for loopback hosts: one saturates what the two sides' CPUs can do.
LOOPBACK_CONNECTIONS = 1
#: Seconds without a byte before a read counts as failed (and is retried).
READ_TIMEOUT = 60.0
#: No range is split finer than this: a request costs a round trip.
MIN_PIECE = 8 << 20
#: At most this many bytes per socket read.
_STEP = 8 << 20
#: Inside a prefetch, a file is handed over once its last TAIL bytes are in (a zip's directory, and the small
#: arrays and cloud masks of these files, ~5 MB of S2L2A's), its body arriving while it is decoded.
TAIL = 8 << 20
_REDIRECTS = 5
#: At most this many bytes per read when skipping what a whole-file answer sends before the bytes wanted.
_SKIP_STEP = 1 << 20
_HUGE_PAGE = 2 << 20
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FetchOptions:
    """How remote files are fetched (the builder's ``remote_connections`` / ``remote_prefetch`` /
    ``remote_timeout`` keywords).

    Args:
        connections: parallel byte-range requests per file; ``None``: :data:`LOOPBACK_CONNECTIONS` for a
            host on this machine, :data:`REMOTE_CONNECTIONS` otherwise.
        prefetch: source files fetched ahead of the one being decoded while streaming (0: none), each with
            every modality read; each holds its compressed bytes in memory (up to ~460 MB per modality file).
        timeout: seconds without a byte before a read is retried.
    """

    connections: int | None = None
    prefetch: int = 1
    timeout: float = READ_TIMEOUT

    def __post_init__(self):
        if self.connections is not None and (not isinstance(self.connections, int) or self.connections < 1):
            raise ValueError(f"remote_connections must be an integer >= 1 or None, got {self.connections!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ValueError(f"remote_prefetch must be an integer >= 0, got {self.prefetch!r}")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"remote_timeout must be a number of seconds > 0, got {self.timeout!r}")


def url_to_fs(url: str, download_config=None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and path for ``url`` (a local path or any fsspec URL)."""
    from datasets import config as datasets_config

    protocol = url.split("://", 1)[0] if "://" in url else "file"
    storage_options = _storage_options(protocol, download_config)
    if protocol == "hf":
        token = download_config.token if download_config else None
        storage_options = {"endpoint": datasets_config.HF_ENDPOINT, "token": token, **storage_options}
    elif protocol in ("http", "https"):
        storage_options.setdefault("client_kwargs", {"trust_env": True})  # honour proxy settings, as datasets does
    return fsspec.url_to_fs(url, **storage_options)


def _storage_options(protocol: str, download_config) -> dict:
    return dict((download_config.storage_options or {}).get(protocol, {})) if download_config else {}


def open_remote(url: str, download_config=None):
    """Open a remote file for reading exactly what is asked (no read-ahead, which would fetch bytes twice),
    with ``datasets``' read retries: for looking at metadata only. :func:`fetch` reads a whole file."""
    from datasets.utils import file_utils

    fs, path = url_to_fs(url, download_config)
    remote_file = fs.open(path, "rb", cache_type="none")
    # datasets' own policy for streamed files: config.STREAMING_READ_MAX_RETRIES / STREAMING_READ_RETRY_INTERVAL
    return file_utils._add_retries_to_file_obj_read_method(remote_file)


def open_random_access(url: str, download_config=None, options: FetchOptions | None = None):
    """Open a file to read parts of it (a zip's directory and a few of its members, a Parquet footer and a few
    columns): a local file as it is; a remote one part by part, each by a range request, or, from a server that
    ignores Range (it sends the whole file to every request), whole, fetched once (:func:`fetch`) and read in
    memory."""
    if not is_remote(url):
        fs, path = url_to_fs(url, download_config)
        return fs.open(path, "rb")
    if not serves_ranges(url):
        return fetch(url, download_config, options)
    return _PartsFile(url, download_config, options)


def _read_into(read, target) -> int:
    """``readinto`` by way of ``read`` (one copy), for files whose reads hand out ``bytes``."""
    target = memoryview(target).cast("B")
    data = read(len(target))
    target[:len(data)] = data
    return len(data)


class _Positioned(io.RawIOBase):
    """A read-only, seekable file of a known size (``_extent()``) that keeps its own position."""

    _pos = 0

    def _extent(self) -> int:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._extent()}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.name}: I/O operation on a closed file")


class _PartsFile(_Positioned):
    """A remote file read where it is asked (:func:`open_random_access`): by range requests (fsspec, no read-ahead)
    until the server answers one with the whole file, then from the whole file, fetched once."""

    def __init__(self, url: str, download_config, options: FetchOptions | None):
        super().__init__()
        self.name = url
        self._download_config, self._options = download_config, options
        self._lock = threading.Lock()
        self._whole: FetchedFile | None = None
        self._pos = 0
        self._ranged = open_remote(url, download_config)
        self.size = self._ranged.size

    def _extent(self) -> int:
        return self.size

    def read(self, size: int = -1) -> bytes:
        self._check_open()
        with self._lock:  # the position and the switch to the whole file, for readers on several threads
            if self._whole is None:
                try:
                    self._ranged.seek(self._pos)
                    data = self._ranged.read(size)
                except Exception as err:
                    if not _ignores_ranges(err):
                        raise
                    self._switch_to_whole()
            if self._whole is not None:
                self._whole.seek(self._pos)
                data = self._whole.read(size)
            self._pos += len(data)
            return data

    def readinto(self, target) -> int:
        return _read_into(self.read, target)

    def _switch_to_whole(self) -> None:
        _learn_ranges(self.name, False)
        self._whole = fetch(self.name, self._download_config, self._options)
        ranged, self._ranged = self._ranged, None
        ranged.close()

    def close(self) -> None:
        if not self.closed:
            for file in (self._ranged, self._whole):
                if file is not None:
                    file.close()
            self._ranged = self._whole = None
        super().close()


# A server's Range support is learned from what it does, not from its Accept-Ranges header: many servers that serve
# ranges do not send it. Remembered, so a server that ignores ranges costs one wasted request, not one per file; for
# a while only, so a server replaced on the same address (a mirror upgraded) is asked again. What is remembered is
# only ever a cost (a whole file where a part would do, or a range tried in vain), never a value.
_RANGES_LOCK = threading.Lock()
#: ``scheme://host:port`` -> (whether the server answered its last Range request with the range (206) rather than the
#: whole file (200), when: ``time.monotonic()``).
_SERVES_RANGES: dict[str, tuple[bool, float]] = {}
#: Seconds a server's answer is remembered.
RANGES_MEMORY = 600.0
_NOTED: set[str] = set()


def _ignores_ranges(err: BaseException) -> bool:
    """Whether ``err`` says the server answered a range request with the whole file (fsspec's error)."""
    return (remote_cause(err) or ("",))[0] == "no-range"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def serves_ranges(url: str) -> bool:
    """Whether the server of ``url`` serves HTTP Range requests: ``False`` once it answered one with the whole
    file, ``True`` before it was asked (ranges are tried first)."""
    served, when = _SERVES_RANGES.get(_origin(url), (True, 0.0))
    return served or time.monotonic() - when > RANGES_MEMORY


def forget_servers() -> None:
    """Forget what every server did with Range requests (and that it was logged)."""
    with _RANGES_LOCK:
        _SERVES_RANGES.clear()
        _NOTED.clear()


def _learn_ranges(url: str, served: bool) -> None:
    origin = _origin(url)
    with _RANGES_LOCK:
        _SERVES_RANGES[origin] = (served, time.monotonic())
        note = not served and origin not in _NOTED
        _NOTED.add(origin)
    if note:
        logger.warning(
            f"{origin} does not support HTTP Range requests (it answered one with the whole file): each file from it "
            "is fetched whole, with one GET over one connection, also where only its metadata or some of its "
            "timestamps are read (single_timestamp with a time or cloud filter), and a stalled fetch restarts from "
            "the first byte; a server with Range support (nginx, Apache, the Hub) sends less")


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def normalize_root(root: str | os.PathLike) -> str:
    """A data root as this package uses it: local paths absolute, no trailing slash."""
    root = os.fspath(root)
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    return root.rstrip("/")


# ------------------------------------------------------------------------------------------------------------
# The fetched file
# ------------------------------------------------------------------------------------------------------------


class BufferPool:
    """Buffers of closed :class:`FetchedFile` objects, handed to the next fetches of the same iteration.

    Writing into fresh memory costs a page fault per 4 kB page: measured here, reading a 344 MB file into
    a fresh buffer took 0.45 s, into a reused one 0.09 s. A pool lives as long as the prefetch that made it
    (:meth:`ssl4eos12.prefetch.CancelScope.shared`) and holds no more than that iteration had in use at once:
    a buffer too small for a new file is unmapped when the bigger one is made. A buffer given back while a view of it
    lives (a tar member handed out as one: :meth:`SequentialFile.read_view`) is not handed out again before the view
    goes.
    """

    def __init__(self, max_buffers: int = 8):
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []
        self._max = max_buffers
        self._closed = False

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            # a buffer that a view still refers to (a tar member handed out as one: SequentialFile.read_view) keeps
            # its bytes until that goes: an idle one has the references of an object only a list holds, plus the
            # pool's, counted the same way (what the interpreter counts differs between Python versions)
            alone, *counts = [sys.getrefcount(o) for o in [object(), *self._free]]
            idle = [b for b, count in zip(self._free, counts) if count <= alone + 1]
            fits = [b for b in idle if len(b) >= size]
            if fits:
                buffer = min(fits, key=len)
                self._free.remove(buffer)
                return buffer
            smaller = next((b for b in idle if len(b) < size), None)
            if smaller is not None:
                self._free.remove(smaller)
        if smaller is not None:
            _close_buffer(smaller)  # replaced by the bigger one below: the pool does not grow
        return _allocate(size)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if not self._closed and len(self._free) < self._max:
                self._free.append(buffer)
                return
        _close_buffer(buffer)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for buffer in free:
            _close_buffer(buffer)


def _pool() -> BufferPool | None:
    """The buffer pool of the prefetch running this fetch (``None`` outside one: buffers are unmapped on close)."""
    return current_scope().shared("ssl4eos12.remote.buffers", BufferPool, BufferPool.close)


def _take(size: int, pool: BufferPool | None) -> mmap.mmap:
    return pool.take(size) if pool is not None else _allocate(size)


def _give(buffer: mmap.mmap, pool: BufferPool | None) -> None:
    if pool is not None:
        pool.give(buffer)
    else:
        _close_buffer(buffer)


class FetchedFile(_Positioned):
    """A whole remote file in memory, read-only and seekable; :meth:`getbuffer` gives its bytes without a copy
    (as ``io.BytesIO.getbuffer`` does). Closing it hands the memory back: to the pool of the iteration
    that fetched it, else to the OS."""

    def __init__(self, buffer: mmap.mmap, size: int, name: str, pool: BufferPool | None = None,
                 missing: int = 0):
        super().__init__()
        self._pool = pool
        self._buffer = buffer
        self._view = memoryview(buffer)[:size]
        self._size = size
        self._pos = 0
        self._handed_out: list[memoryview] = []
        self.name = name
        # bytes [arrived, missing) are still on their way (:meth:`_fill`), the rest is here
        self._arrived = 0 if missing else size
        self._missing = missing
        self._arrival = threading.Condition()
        self._filling = "pending" if missing else "done"  # pending -> filling -> done; or closed while pending
        self._error: BaseException | None = None
        self._fill_scope: CancelScope | None = None
        self._filler: int | None = None  # the thread that runs _fill(*_fill_args) once the file is handed over
        self._fill_args: tuple = ()

    def getbuffer(self, complete: bool = True) -> memoryview:
        """The file's bytes, valid until the file is closed (closing releases the view).

        ``complete=False``: at once, while bytes may still be arriving; read a range only after
        :meth:`wait` for it. By default this waits for every byte.
        """
        self._check_open()
        if complete:
            self.wait(0, self._size)
        view = self._view[:]
        self._handed_out.append(view)
        return view

    def wait(self, start: int, stop: int, block: bool = True) -> bool:
        """Wait until bytes ``start``..``stop`` have arrived (``block=False``: only say whether they have).

        Raises what stopped their fetch (as :func:`fetch` would have raised it).
        """
        if self._has(start, stop):
            return True
        if self._filling == "pending" and threading.get_ident() == self._filler:
            # the thread that is to fetch the body, reading the file before handing it over (a thunk that
            # fetches and decodes at once): fetch the body now rather than wait for itself
            self._fill(*self._fill_args)
        with self._arrival:
            while not self._has(start, stop):
                if self._error is not None:
                    raise self._error
                if not block:
                    return False
                if self._filling == "closed":
                    raise ValueError(f"{self.name}: I/O operation on a closed fetched file")
                self._arrival.wait()
        return True

    def _has(self, start: int, stop: int) -> bool:
        # what is still on its way: bytes [arrived, missing)
        return stop <= self._arrived or start >= self._missing or self._arrived >= self._missing

    def view(self, start: int, stop: int) -> memoryview:
        """Bytes ``start``..``stop`` (arrived: :meth:`wait`), as a view that stays valid after the file is closed:
        its buffer is neither unmapped nor reused while the view lives."""
        self._check_open()
        return memoryview(self._buffer)[start:stop]

    def read(self, size: int = -1) -> bytes:
        self._check_open()
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end > self._pos:
            self.wait(self._pos, end)
        out = bytes(self._view[self._pos:end]) if end > self._pos else b""
        self._pos = max(self._pos, end)
        return out

    def readinto(self, target) -> int:
        return _read_into(self.read, target)

    def _extent(self) -> int:
        return self._size

    def close(self) -> None:
        if not self.closed:
            self._stop_filling()  # no write may land in a buffer that went back to the pool
            try:
                for view in (*self._handed_out, self._view):
                    view.release()  # a buffer going back to the pool must not be visible through any view
            except BufferError:  # something built on a view (an array) still uses it: leave it to the GC
                pass
            else:
                _give(self._buffer, self._pool)
            self._buffer = self._handed_out = None
        super().close()

    # -- the bytes that arrive after the file was handed over ---------------------------------------------

    def _fill(self, url: str, headers: dict[str, str], options: FetchOptions) -> None:
        """Fetch the missing bytes ``0..missing`` (deferred work of a prefetch: :func:`_fetch_arriving`)."""
        parent = current_scope()
        with self._arrival:
            if self._filling != "pending":
                return  # closed before its turn came
            self._filling = "filling"
            self._fill_scope = scope = CancelScope()
        view = memoryview(self._buffer)[:self._missing]
        error = None
        try:
            piece = _Piece(url, headers, options, scope, 0, self._missing, self._size, view, None)
            piece.progress = self._arrive
            with parent.closing(scope.cancel):  # the prefetch's end stops it too
                piece.run()
        except BaseException as err:  # noqa: BLE001 - the reader of the file gets it from wait()
            error = err
        finally:
            with contextlib.suppress(BufferError):
                view.release()
        with self._arrival:
            self._filling = "done"
            self._error = error
            self._arrival.notify_all()

    def _arrive(self, offset: int) -> None:
        with self._arrival:
            self._arrived = offset
            self._arrival.notify_all()

    def _stop_filling(self) -> None:
        with self._arrival:
            if self._filling == "pending":
                self._filling = "closed"
            scope = self._fill_scope if self._filling == "filling" else None
        if scope is not None:
            scope.cancel()  # interrupts its read at once
            with self._arrival:
                while self._filling == "filling":
                    self._arrival.wait()


def _allocate(size: int) -> mmap.mmap:
    # anonymous mapping: pages are zero on first touch, so nothing is written twice (bytearray(n) memsets).
    # Transparent huge pages where the kernel gives them on request ("madvise" mode, a common default): one
    # fault per 2 MB instead of per 4 kB; measured here, a first write of 344 MB took 0.07 s instead of 0.17 s,
    # and unmapping 1 ms instead of 12 ms.
    # (private: a shared anonymous map is shmem, which gets no huge pages in that mode)
    buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # a kernel without THP: 4 kB pages, as before
            buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


# ------------------------------------------------------------------------------------------------------------
# fetch
# ------------------------------------------------------------------------------------------------------------


def fetch(url: str, download_config=None, options: FetchOptions | None = None) -> FetchedFile:
    """Fetch the whole remote file ``url`` into memory, at the speed of the link.

    Raises ``FileNotFoundError`` (no such file), ``PermissionError`` (401/403), ``ConnectionError`` once
    ``datasets``' read retries are exhausted, and :class:`~ssl4eos12.prefetch.Cancelled` when the prefetch
    running it is closed.
    """
    options = options or FetchOptions()
    target = _http_target(url, download_config)
    if target is None:
        return _fetch_fsspec(url, download_config)
    return _fetch_http(target.url, target.headers, options, size=target.size, name=url)


@dataclass(frozen=True)
class _HttpTarget:
    """Where ``http.client`` reads a file: the URL (``hf://`` resolved), its headers and, if known, its size."""

    url: str
    headers: dict
    size: int | None


def _http_target(url: str, download_config) -> _HttpTarget | None:
    """``url`` as this module's HTTP client reads it, or ``None`` when fsspec must (other protocols, proxies,
    storage options that are more than headers)."""
    protocol = url.split("://", 1)[0].lower()
    if protocol in ("http", "https"):
        headers = _plain_http_headers(_storage_options(protocol, download_config))
        if headers is not None and _proxy_for(url) is None:
            return _HttpTarget(url, headers, None)
    elif protocol == "hf":
        fs, path = url_to_fs(url, download_config)
        info = fs.info(path)  # FileNotFoundError for a missing file, with the Hub's own message
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        # the Hub's auth as HfFileSystem sends it, to the /resolve/ URL of the resolved revision
        headers = build_hf_headers(token=fs.token)
        resolved = fs.resolve_path(path)
        http_url = hf_hub_url(resolved.repo_id, resolved.path_in_repo, repo_type=resolved.repo_type,
                              revision=resolved.revision, endpoint=fs.endpoint)
        if _proxy_for(http_url) is None:
            return _HttpTarget(http_url, headers, info["size"])
    return None


# ------------------------------------------------------------------------------------------------------------
# A file read front to back (the webdataset tars)
# ------------------------------------------------------------------------------------------------------------

#: Bytes per window of a file read front to back: big enough that a window costs few calls, small enough that
#: a few per stream stay cheap in memory.
WINDOW = 16 << 20
#: Windows fetched beyond the one being read.
WINDOWS_AHEAD = 2


def open_sequential(url: str, download_config=None, options: FetchOptions | None = None, *,
                    window: int | None = None, ahead: int | None = None, streamed: bool = True) -> SequentialFile:
    """Open the remote file ``url`` to be read once, front to back (a tar), at the speed of the link.

    The file comes in windows of ``window`` bytes (default :data:`WINDOW`), fetched into pooled buffers up to
    ``ahead`` (default :data:`WINDOWS_AHEAD`) windows beyond the one being read, by a background thread
    (:func:`~ssl4eos12.prefetch.prefetch`). ``streamed``: one
    request for the whole file, read window by window (resumed by range where it breaks; each byte is sent
    once); else one range request per window (for reading only the start of a file: nothing more is sent).
    The first window is fetched before this returns, so opening the next file ahead of its use (in a
    prefetch) has its first bytes ready. Memory: at most ``ahead + 2`` windows. Closing the file, or the
    prefetch that opened it, stops its fetches at once.

    Raises what :func:`fetch` raises.
    """
    return SequentialFile(url, download_config, options or FetchOptions(), WINDOW if window is None else window,
                          WINDOWS_AHEAD if ahead is None else ahead, streamed)


class SequentialFile(io.RawIOBase):
    """A remote file read front to back, window by window; see :func:`open_sequential`."""

    def __init__(self, url, download_config, options: FetchOptions, window: int, ahead: int, streamed: bool):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1 byte, got {window!r}")
        self.name = url
        self._window: FetchedFile | None = None
        self._view: memoryview | None = None
        self._used = 0  # bytes of the current window already read
        self._position = 0
        self._windows = self._reader = None  # for close(), should what follows fail
        self._reader = _window_reader(url, download_config, options, streamed)
        size = self._reader.size
        if size is None:  # no byte ranges: the whole file is one window
            thunks = [self._reader.read_all]
        else:
            thunks = (functools.partial(self._reader.read, min(start + window, size))
                      for start in range(0, size, window))
        self._windows = prefetch(thunks, ahead)
        opened = current_scope().shared("ssl4eos12.remote.sequential", _OpenFiles, _OpenFiles.close)
        if opened is not None:  # the prefetch that opens this file closes it when it ends (even if not yet used)
            opened.add(self)
        try:
            with current_scope().closing(self.close):
                self._next_window()
            current_scope().check()
        except BaseException:
            self.close()
            current_scope().check()  # closed by a cancellation: say so, not what the closed file raised
            raise

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def _next_window(self) -> bool:
        """Move to the next window; ``False`` at the end of the file."""
        self._release(self._detach())
        if self.closed:
            raise ValueError(f"{self.name}: I/O operation on a closed file")
        window = next(self._windows, None)
        if window is None:
            return False
        self._window, self._view, self._used = window, window.getbuffer(), 0
        return True

    def _detach(self) -> tuple:
        window, view, self._window, self._view = self._window, self._view, None, None
        return window, view

    @staticmethod
    def _release(detached: tuple) -> None:
        window, view = detached
        if view is not None:
            view.release()
        if window is not None:
            window.close()  # its buffer goes back to the pool, for a later window

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest for ``-1``); fewer only at the end of the file."""
        parts: list[memoryview] = []
        passed = []  # windows read to their end: released after the copy below (their buffers get reused)
        wanted = float("inf") if size is None or size < 0 else size
        have = 0
        try:
            while have < wanted:
                if self._view is None or self._used == len(self._view):
                    passed.append(self._detach())
                    if not self._next_window():
                        break
                take = int(min(wanted - have, len(self._view) - self._used))
                parts.append(self._view[self._used:self._used + take])
                self._used += take
                have += take
            # the one copy, out of the pooled buffers (also where the bytes span windows)
            data = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        finally:
            for part in parts:
                part.release()
            for detached in passed:
                self._release(detached)
        self._position += have
        return data

    def readinto(self, target) -> int:
        return _read_into(self.read, target)

    def read_view(self, size: int) -> bytes | memoryview:
        """The next ``size`` bytes (fewer only at the end of the file), as :meth:`read` gives them, except that bytes
        within one window come as a view of it (no copy: the window's buffer is kept while the view lives)."""
        if self._view is not None and self._used == len(self._view) and size:
            self._next_window()  # the current one is used up: the bytes may all be in the next one
        if self._view is not None and size <= len(self._view) - self._used and self._window is not None:
            data = self._window.view(self._used, self._used + size)
            self._used += size
            self._position += size
            return data
        return self.read(size)

    def close(self) -> None:
        if not self.closed:
            if self._windows is not None:
                self._windows.close()  # stops the fetch of the next windows (and joins its thread)
            self._release(self._detach())
            if self._reader is not None:
                self._reader.close()
        super().close()


class _OpenFiles:
    """The :class:`SequentialFile` objects a prefetch opened, closed when it ends."""

    def __init__(self):
        self._files = weakref.WeakSet()

    def add(self, file) -> None:
        self._files.add(file)

    def close(self) -> None:
        for file in list(self._files):
            file.close()


def _window_reader(url: str, download_config, options: FetchOptions, streamed: bool):
    target = _http_target(url, download_config)
    if target is None:
        return _FsspecWindows(url, download_config)
    ranges = True  # a size from the Hub's listing: the Hub serves byte ranges
    if target.size is None:
        size, ranges = _probe(target.url, target.headers, options, current_scope())
        target = dataclasses.replace(target, size=size)
    if not (ranges and serves_ranges(target.url)):
        # windows of one request, where each range request would get the whole file: a reader that stops early
        # (a probe of the first member) is sent little more than it read
        streamed = True
    # the buffers of the iteration that opens the file (the builder's prefetch of a shard's tars), so that one tar's
    # windows are the next one's: each file's own prefetch would make its first few fresh
    return _HttpWindows(url, target, options, streamed, _pool())


class _HttpWindows:
    """Windows of a file, each read into a pooled buffer: through one request for the whole file
    (``streamed``), else one range request each."""

    def __init__(self, name: str, target: _HttpTarget, options: FetchOptions, streamed: bool,
                 pool: BufferPool | None = None):
        self.name, self.target, self.options, self.streamed = name, target, options, streamed
        self.pool = pool  # the buffers to read into (else those of the prefetch that reads each window)
        self.size = target.size
        self._piece: _Piece | None = None
        self._offset = 0

    def read(self, stop: int) -> FetchedFile:
        """The next window, up to byte ``stop`` (in the prefetch's thread)."""
        start, size, pool = self._offset, self.size, self.pool or _pool()
        buffer = _take(stop - start, pool)
        view = memoryview(buffer)[:stop - start]
        try:
            if self.streamed:
                if self._piece is None:
                    self._piece = _Piece(self.target.url, self.target.headers, self.options, current_scope(),
                                         0, size, size, None, None)
                piece = self._piece
                piece.scope, piece.view, piece.base = current_scope(), view, start
                piece.run(until=stop)
            else:
                _Piece(self.target.url, self.target.headers, self.options, current_scope(), start, stop, size,
                       view, None).run()
        except BaseException:
            view.release()
            _close_buffer(buffer)
            raise
        finally:
            if self._piece is not None:
                self._piece.view = None
        view.release()
        self._offset = stop
        return FetchedFile(buffer, stop - start, self.name, pool)

    def read_all(self) -> FetchedFile:
        return _fetch_single(self.target.url, self.target.headers, self.options, current_scope(), None, self.name)

    def close(self) -> None:
        if self._piece is not None:
            self._piece.close()


class _FsspecWindows:
    """Windows of a file that fsspec reads (other protocols, proxies): consecutive reads of one open file, each
    a range request; from an HTTP server that ignores ranges, one stream of the whole file."""

    def __init__(self, url: str, download_config):
        self.name = url
        self._download_config = download_config
        self._file = open_remote(url, download_config)
        self.size = self._file.size
        self._position = 0
        self._streamed = False
        self._lock = threading.Lock()

    def read(self, stop: int) -> FetchedFile:
        with self._lock:
            data = self._read(stop - self._position)
        if not data:
            raise RemoteFileError(f"{self.name}: the file ends before byte {stop}")
        buffer = _allocate(len(data))
        buffer[:len(data)] = data
        return FetchedFile(buffer, len(data), self.name)

    def read_all(self) -> FetchedFile:
        with self._lock:
            data = self._read(-1)
        buffer = _allocate(len(data))
        buffer[:len(data)] = data
        return FetchedFile(buffer, len(data), self.name)

    def _read(self, size: int) -> bytes:
        if not self._streamed:
            try:
                data = self._file.read(size)
            except Exception as err:
                if not _ignores_ranges(err):
                    raise
                self._stream()
            else:
                self._position += len(data)
                return data
        parts, have = [], 0
        while size < 0 or have < size:  # a stream returns what has arrived
            part = self._file.read(-1 if size < 0 else size - have)
            if not part:
                break
            parts.append(part)
            have += len(part)
        self._position += have
        return b"".join(parts)

    def _stream(self) -> None:
        """From here on, the file as one stream (one GET, no range), the bytes already read skipped."""
        _learn_ranges(self.name, False)
        fs, path = url_to_fs(self.name, self._download_config)
        stream = fs.open(path, "rb", block_size=0)  # fsspec's streaming HTTP file
        skip = self._position
        while skip:
            part = stream.read(min(skip, _SKIP_STEP))
            if not part:
                stream.close()
                raise RemoteFileError(f"{self.name}: the file ends before byte {self._position}")
            skip -= len(part)
        self._file.close()
        self._file, self._streamed = stream, True

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _plain_http_headers(storage_options: dict) -> dict[str, str] | None:
    """Headers that carry the storage options of an ``http(s)`` URL, or ``None`` when they hold more than
    headers and basic auth (then fsspec reads the file)."""
    client_kwargs = dict(storage_options.get("client_kwargs") or {})
    client_kwargs.pop("trust_env", None)
    options = {k: v for k, v in storage_options.items() if k != "client_kwargs"}
    headers = {**(client_kwargs.pop("headers", None) or {}), **(options.pop("headers", None) or {})}
    for auth in (client_kwargs.pop("auth", None), options.pop("auth", None)):
        if auth is not None:
            if not hasattr(auth, "encode"):  # aiohttp.BasicAuth
                return None
            headers["Authorization"] = auth.encode()
    if client_kwargs or options:
        return None
    return {str(k): str(v) for k, v in headers.items()}


def _proxy_for(url: str) -> str | None:
    """The proxy the environment sets for ``url`` (as aiohttp with ``trust_env`` would use), if any."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return proxy
    return None


def _fetch_fsspec(url: str, download_config) -> FetchedFile:
    """Any other file system: one read through fsspec with ``datasets``' read retries, then one copy."""
    with open_remote(url, download_config) as remote_file:
        data = remote_file.read()
    buffer = _allocate(len(data))
    buffer[:len(data)] = data
    return FetchedFile(buffer, len(data), url)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _fetch_http(url: str, headers: dict[str, str], options: FetchOptions, size: int | None,
                name: str | None = None) -> FetchedFile:
    name = name or url
    connections = options.connections or (LOOPBACK_CONNECTIONS if _is_loopback(url) else REMOTE_CONNECTIONS)
    scope = current_scope()
    arriving = connections == 1 and scope.deferrable  # inside a prefetch, which fetches the body after handing over
    ranges = size is not None  # a size from the Hub's listing: the Hub serves byte ranges
    if (connections > 1 or arriving) and size is None:
        try:
            size, ranges = _probe(url, headers, options, scope)
        except PermissionError:  # a HEAD refused (a URL signed for GET only): the GET below says what it gets
            size, ranges = None, False
    if not (ranges and serves_ranges(url)):
        # neither pieces on parallel connections nor the tail first: one GET of the whole file
        return _fetch_single(url, headers, options, scope, size, name)
    if arriving and size >= 2 * TAIL:
        return _fetch_arriving(url, headers, options, scope, size, name)
    if connections == 1 or size < 2 * MIN_PIECE:
        return _fetch_single(url, headers, options, scope, size, name)
    pieces = min(connections, size // MIN_PIECE)
    bounds = [size * i // pieces for i in range(pieces + 1)]
    pool = _pool()
    buffer = _take(size, pool)
    try:
        view = memoryview(buffer)
        try:
            _read_ranges(url, headers, options, scope, view, list(itertools.pairwise(bounds)), size)
        finally:
            view.release()
        return FetchedFile(buffer, size, name, pool)
    except BaseException:
        _close_buffer(buffer)
        raise


def _fetch_arriving(url, headers, options, scope: CancelScope, size: int, name: str) -> FetchedFile:
    """The last :data:`TAIL` bytes now, the rest after the file is handed over (:meth:`CancelScope.defer`):
    a zip's directory and small arrays are at its end, so decoding starts while its body arrives."""
    missing = size - TAIL
    pool = _pool()
    buffer = _take(size, pool)
    view = memoryview(buffer)[:size]
    try:
        _Piece(url, headers, options, scope, missing, size, size, view[missing:], None).run()
    except BaseException:
        view.release()
        _close_buffer(buffer)
        raise
    view.release()
    file = FetchedFile(buffer, size, name, pool, missing=missing)
    file._filler, file._fill_args = threading.get_ident(), (url, headers, options)
    scope.defer(functools.partial(file._fill, *file._fill_args))
    return file


def _close_buffer(buffer: mmap.mmap) -> None:
    """Unmap a buffer now; where a failed read's traceback still holds a view of it, when that goes."""
    with contextlib.suppress(BufferError):
        buffer.close()


def _fetch_single(url, headers, options, scope, size, name) -> FetchedFile:
    """One connection: a GET of the whole file (without a known size, its Content-Length sizes the buffer)."""
    state: dict = {}
    pool = _pool()

    def allocate(total: int) -> memoryview:
        state["buffer"], state["size"] = _take(total, pool), total
        return memoryview(state["buffer"])[:total]

    piece = _Piece(url, headers, options, scope, 0, size, size, None if size is None else allocate(size), allocate)
    try:
        piece.run()
    except BaseException:
        if piece.view is not None:
            piece.view.release()
        if "buffer" in state:
            _close_buffer(state["buffer"])
        raise
    piece.view.release()
    return FetchedFile(state["buffer"], state["size"], name, pool)


def _read_ranges(url, headers, options, parent: CancelScope, view: memoryview, ranges, size: int) -> None:
    """Read ``ranges`` of ``url`` in parallel into their slices of ``view``; the first failure cancels the rest."""
    scope = CancelScope()
    errors: list[BaseException] = []
    pieces = [_Piece(url, headers, options, scope, start, stop, size, view[start:stop], None) for start, stop in ranges]

    def run(piece: _Piece) -> None:
        try:
            piece.run()
        except BaseException as err:  # noqa: BLE001 - raised by the caller once every piece stopped
            errors.append(err)
            scope.cancel()

    threads = [threading.Thread(target=run, args=(p,), name="ssl4eos12-range", daemon=True) for p in pieces[1:]]
    with parent.closing(scope.cancel):
        try:
            for thread in threads:
                thread.start()
            run(pieces[0])
        finally:
            for thread in threads:
                if thread.is_alive() or thread.ident is not None:
                    thread.join()
            for piece in pieces:
                piece.view.release()
    if errors:
        first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
        for err in errors:
            if err is not first:
                err.__traceback__ = None  # its frames hold views of the buffer
        raise first
    parent.check()


def _probe(url: str, headers: dict[str, str], options: FetchOptions, scope: CancelScope) -> tuple[int | None, bool]:
    """The size of ``url`` from a HEAD request (``None`` if not told), and whether the server says it serves byte
    ranges (``Accept-Ranges: bytes``)."""
    failures = 0
    while True:
        scope.check()
        try:
            with _request("HEAD", url, headers, options, scope) as response:
                if response.status in (404, 410):
                    raise FileNotFoundError(f"{url}: HTTP {response.status}")
                if response.status in (401, 403):
                    raise _denied(url, response.status)
                if response.status in _RETRY_STATUSES:
                    raise _Retryable(f"HTTP {response.status}")
                length = response.getheader("Content-Length")
                if response.status != 200 or not length:
                    return None, False
                return int(length), "bytes" in (response.getheader("Accept-Ranges") or "")
        except (_Retryable, OSError, http.client.HTTPException) as err:
            if isinstance(err, (FileNotFoundError, PermissionError)) or scope.cancelled:
                scope.check()
                raise
            failures = _wait_retry(url, failures, err, scope)


def _denied(url: str, status: int) -> PermissionError:
    err = PermissionError(f"{url}: HTTP {status}")
    err.status = status  # as aiohttp's errors carry it, for failures.remote_cause
    return err


class RemoteFileError(Exception):
    """The server answered, but not with the file (no byte ranges where they are needed, a changed size)."""


class ChangedFileError(RemoteFileError):
    """The file's size is not the one expected: it changed since it was measured (an index is stale)."""

    def __init__(self, url: str, size: int, expected: int):
        super().__init__(f"{url}: the file has {size} bytes, expected {expected} (changed on the server?)")
        self.url, self.size, self.expected = url, size, expected


class _Retryable(Exception):
    """A failed attempt worth retrying (a server error status, a stalled or truncated body)."""


@contextlib.contextmanager
def _request(method: str, url: str, headers: dict[str, str], options: FetchOptions, scope: CancelScope,
             byte_range: str | None = None):
    """One request on a new connection, following redirects (the Hub sends files from a CDN); the response
    is yielded with its connection, which is closed on exit and by a cancellation of ``scope``."""
    headers = dict(headers)
    if byte_range:
        headers["Range"] = byte_range
    for _ in range(_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=options.timeout,
                                                     context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=options.timeout)
        try:
            with scope.closing(lambda c=connection: _abort(c)):
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                connection.request(method, target, headers=headers)
                response = connection.getresponse()
                location = response.getheader("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    new_url = urljoin(url, location)
                    if urlsplit(new_url).netloc != parts.netloc:
                        headers.pop("Authorization", None)  # the token is for the Hub, not for its CDN
                    url = new_url
                    continue
                yield response
                return
        finally:
            connection.close()
    raise RemoteFileError(f"{url}: more than {_REDIRECTS} redirects")


def _abort(connection: http.client.HTTPConnection) -> None:
    """Interrupt a blocking read on ``connection`` from another thread."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Piece:
    """Bytes ``start``..``stop`` of ``url`` (a file of ``size`` bytes) into ``view``, resumed where it stopped
    after each failed attempt (from the file's first byte, the bytes before the view's skipped, where the server
    answers the range with the whole file: only a piece that runs to the end of the file can).

    ``stop=size=None``: the whole file, whose size the first response tells (``allocate`` then makes
    ``view``). Attempts that make progress reset the retry count, so only a server that stops giving bytes
    exhausts ``datasets``' retries. :meth:`run` with ``until`` reads only up to there and keeps the response
    open for the next call (a file read front to back in windows, :class:`SequentialFile`, one request for
    all of them); then ``view``/``base`` are the next window's, and :meth:`close` ends the request.
    """

    def __init__(self, url, headers, options, scope, start, stop, size, view, allocate):
        self.url, self.headers, self.options, self.scope = url, headers, options, scope
        self.start = start
        self.stop = stop
        self.size = size
        self.view = view
        self.allocate = allocate
        self.offset = start  # the next byte to read, in file coordinates
        self.base = start  # file offset of view[0]
        self._request: contextlib.ExitStack | None = None  # the open request, while one is
        self.progress = None  # called with the offset reached after each read, if set
        self._response = None
        self._drain = False
        self._skip = 0  # bytes of the body before the ones wanted (a whole-file answer to a range request)
        self.total = None  # the file's size, as a range answer's Content-Range tells it

    def run(self, until: int | None = None) -> None:
        keep_open = until is not None
        failures = 0
        try:
            while self.stop is None or self.offset < (until if keep_open else self.stop):
                self.scope.check()
                before = self.offset
                try:
                    if self._response is None:
                        self._open()
                    self._read_body(until if keep_open else self.stop)
                except (_Retryable, OSError, http.client.HTTPException) as err:
                    self.close()
                    if isinstance(err, (FileNotFoundError, PermissionError)) or self.scope.cancelled:
                        self.scope.check()
                        raise
                    if self.offset > before:
                        failures = 0
                    failures = _wait_retry(self.url, failures, err, self.scope)
        except BaseException:
            self.close()
            raise
        if not keep_open:
            self.close()

    def close(self) -> None:
        """End the open request, if any (its connection is closed)."""
        request, self._request, self._response = self._request, None, None
        if request is not None:
            request.close()

    def _open(self) -> None:
        whole = self.offset == 0 and self.stop == self.size  # the whole file (also when its size is not known)
        byte_range = None if whole else f"bytes={self.offset}-{'' if self.stop is None else self.stop - 1}"
        self._skip = 0
        request = contextlib.ExitStack()
        try:
            response = request.enter_context(
                _request("GET", self.url, self.headers, self.options, self.scope, byte_range))
            self._check(response, byte_range)
        except BaseException:
            request.close()
            raise
        self._request, self._response = request, response
        # Body bytes that came with the headers sit in the reader's buffer, and readinto1 would copy them and
        # then still block on the socket (losing their count if that times out): read1 hands them over alone,
        # first. http.client's readinto is left for chunked bodies (its framing), which static file servers
        # do not send.
        self._drain = not response.chunked

    def _check(self, response, byte_range) -> None:
        status = response.status
        if status in (404, 410):
            raise FileNotFoundError(f"{self.url}: HTTP {status}")
        if status in (401, 403):
            raise _denied(self.url, status)
        if status in _RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}")
        if status == 200:  # the whole file, whatever was asked
            if byte_range is not None:
                _learn_ranges(self.url, False)
                if self.start != 0 or (self.stop is not None and self.stop != self.size):
                    raise RemoteFileError(f"{self.url}: the server ignores byte ranges (HTTP 200 to {byte_range})")
            total = response.length
            if self.stop is None:
                if total is None:
                    raise RemoteFileError(f"{self.url}: the server sends no Content-Length")
                self.view = self.allocate(total)
                self.stop = self.size = total
            elif total is not None and total != self.size:
                raise ChangedFileError(self.url, total, self.size)
            # from the first byte again: the bytes before this view's are skipped (a window read front to back has
            # handed them over already), the view's own overwritten with the same bytes
            self._skip = self.base
            self.offset = self.base
        elif status == 206:
            _learn_ranges(self.url, True)
            total = _content_range_total(response.getheader("Content-Range"))
            if total is not None:
                self.total = total
                if self.size is not None and total != self.size:
                    raise ChangedFileError(self.url, total, self.size)
            first = _content_range_start(response.getheader("Content-Range"))
            if first != self.offset:
                got = response.getheader("Content-Range")
                raise RemoteFileError(f"{self.url}: asked for {byte_range}, got {got}")
            if response.length is not None and response.length != self.stop - self.offset:
                raise RemoteFileError(f"{self.url}: the server sends {response.length} bytes for "
                                      f"{self.stop - self.offset}")
        else:
            raise RemoteFileError(f"{self.url}: HTTP {status} {response.reason}")

    def _read_body(self, until: int) -> None:
        # One socket read per call, straight into the buffer (BufferedReader.readinto1): a read that times out
        # loses nothing already received, so the retry resumes at the exact byte.
        response, view = self._response, self.view
        while self._skip:
            self.scope.check()
            try:
                data = (response.read1 if response.chunked else response.fp.read1)(min(self._skip, _SKIP_STEP))
            except TimeoutError as err:
                raise _Retryable(f"no data for {self.options.timeout:g} s after byte {self.base - self._skip}") from err
            if not data:
                raise _Retryable(f"connection closed after byte {self.base - self._skip} of {self.stop}")
            self._skip -= len(data)
        read = response.readinto if response.chunked else response.fp.readinto1
        while self.offset < until:
            self.scope.check()
            target = view[self.offset - self.base:min(self.offset + _STEP, until) - self.base]
            try:
                if self._drain:  # what the reader buffered with the headers, or one socket read
                    data = response.fp.read1(min(len(target), 1 << 16))
                    n = len(data)
                    target[:n] = data
                    self._drain = False
                else:
                    n = read(target)
            except TimeoutError as err:
                raise _Retryable(f"no data for {self.options.timeout:g} s after byte {self.offset}") from err
            finally:
                with contextlib.suppress(BufferError):  # a failed read's traceback may still hold it
                    target.release()
            if not n:
                raise _Retryable(f"connection closed after byte {self.offset} of {self.stop}")
            self.offset += n
            if self.progress is not None:
                self.progress(self.offset)


def _content_range_total(header: str | None) -> int | None:
    """The file size of a ``Content-Range: bytes a-b/size`` header (``None``: not told, or ``*``)."""
    with contextlib.suppress(AttributeError, ValueError, IndexError):
        return int(header.rsplit("/", 1)[1])
    return None


def _content_range_start(header: str | None) -> int | None:
    with contextlib.suppress(AttributeError, ValueError, IndexError):
        return int(header.split()[1].split("-")[0])
    return None


def _wait_retry(url: str, failures: int, err: BaseException, scope: CancelScope) -> int:
    """Count a failed attempt; raise ``ConnectionError`` once ``datasets``' retries are spent, else wait."""
    from datasets import config as datasets_config

    failures += 1
    if failures > datasets_config.STREAMING_READ_MAX_RETRIES:
        raise ConnectionError(f"{err} ({datasets_config.STREAMING_READ_MAX_RETRIES} retries)") from err
    if scope.wait(datasets_config.STREAMING_READ_RETRY_INTERVAL):
        raise Cancelled
    return failures


# ------------------------------------------------------------------------------------------------------------
# Byte ranges of a file (members of a tar)
# ------------------------------------------------------------------------------------------------------------

class RangeReader:
    """Byte ranges of one file, each by one range request (``http(s)://`` and ``hf://`` through this module's
    client, with its retries; other protocols through fsspec; local files by seek and read).

    ``size``: the file's size as last measured; a file of another size raises :class:`ChangedFileError` (a range
    answer's ``Content-Range`` tells the size at no cost). :attr:`size` is what the last answer told. Pickles
    without its resolved URL (a ``DataLoader`` worker resolves its own) and opens a connection per request, so
    every process and thread reads on its own connections.
    """

    def __init__(self, url: str, download_config=None, options: FetchOptions | None = None,
                 size: int | None = None):
        self.url = url
        self.download_config = download_config
        self.options = options or FetchOptions()
        self.size = size
        self._target: _HttpTarget | None | bool = False  # False: not resolved yet

    def __getstate__(self):
        return {**self.__dict__, "_target": False}

    def _resolve(self):
        if self._target is False:
            self._target = _http_target(self.url, self.download_config) if is_remote(self.url) else None
        return self._target

    def read(self, start: int, stop: int, size: int | None = None) -> bytearray:
        """Bytes ``start:stop`` (``stop`` at most the file's size); ``size``: the file's expected size."""
        expected = size if size is not None else None
        if not is_remote(self.url):
            fs, path = url_to_fs(self.url, self.download_config)
            with fs.open(path, "rb") as f:
                actual = f.size if getattr(f, "size", None) is not None else fs.size(path)
                if expected is not None and actual != expected:
                    raise ChangedFileError(self.url, actual, expected)
                self.size = actual
                f.seek(start)
                data = bytearray(f.read(stop - start))
        else:
            target = self._resolve()
            if target is None:  # fsspec: its own range reads, the size from its metadata
                fs, path = url_to_fs(self.url, self.download_config)
                actual = fs.size(path)
                if expected is not None and actual != expected:
                    raise ChangedFileError(self.url, actual, expected)
                self.size = actual
                data = bytearray(fs.cat_file(path, start, stop))
            else:
                if expected is None and target.size is not None:
                    expected = target.size
                data = bytearray(stop - start)
                view = memoryview(data)
                piece = _Piece(target.url, target.headers, self.options, current_scope(), start, stop, expected,
                               view, None)
                try:
                    piece.run()
                finally:
                    view.release()
                if piece.total is not None:
                    self.size = piece.total
                elif expected is not None:
                    self.size = expected
        if len(data) != stop - start:
            raise RemoteFileError(f"{self.url}: {len(data)} bytes at {start}, expected {stop - start} (the file "
                                  f"ends first: truncated or changed?)")
        return data


def read_range(url: str, start: int, stop: int, download_config=None, options: FetchOptions | None = None,
               size: int | None = None) -> bytearray:
    """Bytes ``start:stop`` of ``url`` in one range request (see :class:`RangeReader`)."""
    return RangeReader(url, download_config, options).read(start, stop, size)
