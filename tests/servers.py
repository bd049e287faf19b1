"""Local HTTP test servers: a static Range file server and a fake Hugging Face Hub.

Both servers bind to 127.0.0.1 on an ephemeral port, run in a daemon thread and are
used as context managers::

    with RangeHTTPServer(root_dir) as srv:
        srv.url  # "http://127.0.0.1:PORT"

    with HubServer(tokens={"hf_valid": "user"}) as hub, use_hub(hub, token="hf_valid"):
        HfApi().create_repo("user/data", repo_type="dataset")

The servers use the standard library only (plus PyYAML, a huggingface_hub dependency, to
expose a README's YAML header as ``cardData``). ``use_hub`` patches the
module-level constants that ``huggingface_hub`` and ``datasets`` compute from the
environment at *import* time (endpoint, cache directories, Xet switch, ...), so tests can
point the real clients at a ``HubServer`` without setting environment variables before the
first import.

``RangeHTTPServer``
    Serves files of a directory with HEAD/GET and single ``Range: bytes=...`` requests
    (``a-b``, ``a-``, ``-n``), logs every request and the body bytes served per path, and
    injects faults (``fail_next``: error statuses, ``drop_next``: truncated bodies, ``stall_next``: a
    body that stops mid-way without closing). ``ranges=False``: a server without Range support
    (every GET gets the whole file, no ``Accept-Ranges``), with the same log and faults.

``PlainHTTPServer``
    Python's own ``http.server.SimpleHTTPRequestHandler`` (``python -m http.server``), the
    real-world server without Range support, with its requests and body bytes logged.

``HubServer``
    Implements the subset of the Hub HTTP API that ``huggingface_hub`` 2.4 (``HfApi``,
    ``hf_hub_download``, ``HfFileSystem``) and ``datasets`` 5.2 (``load_dataset``) use:
    repo creation and info, whoami, tree / paths-info listings, preupload + NDJSON commits
    (regular files inline, LFS files through the LFS batch API with "basic" transfers that
    upload back to this server), branches, pull-request refs (``create_pr``) and
    ``/resolve/`` downloads with Range support and the Hub's metadata headers. Storage is
    in memory. Access rules are deliberately simple: any valid token may write to any
    namespace; private repos are readable by any valid token and hidden (401 +
    ``X-Error-Code: RepoNotFound``) from anonymous callers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import os
import posixpath
import socket
import tempfile
import threading
import traceback
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "HubRequest",
    "HubServer",
    "PlainHTTPServer",
    "RangeHTTPServer",
    "parse_range",
    "use_hub",
]


# --------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------


class RangeNotSatisfiable(Exception):
    """Raised by :func:`parse_range` when a syntactically valid range cannot be served."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a ``Range`` header against a resource of ``size`` bytes.

    Returns ``(start, end)`` with ``end`` *inclusive*, or ``None`` when the whole resource
    must be served (no header, a unit other than bytes, multiple ranges or a malformed
    spec: RFC 9110 lets a server ignore those). Raises :class:`RangeNotSatisfiable` for a
    well-formed range that lies outside the resource, which must be answered with 416.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":  # suffix range: the last n bytes
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                raise RangeNotSatisfiable
            return max(size - n, 0), size - 1
        start = int(first)
        end = int(last) if last != "" else size - 1
    except ValueError:
        return None
    if start < 0 or (last != "" and end < start):
        return None  # malformed ("bytes=5-2"): ignored, the whole resource is served
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks open connections so ``stop()`` can close them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: _BackgroundServer, handler: type[BaseHTTPRequestHandler]):
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    def process_request_thread(self, request, client_address):  # type: ignore[override]
        with self._conns_lock:
            self._conns.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def close_connections(self) -> None:
        # Keep-alive handler threads block on reading the next request: shutting their
        # sockets down makes them see EOF and exit, so no thread outlives the server.
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address):
        pass


class _BaseHandler(BaseHTTPRequestHandler):
    """Common request handler: HTTP/1.1 keep-alive, quiet logs, body reading."""

    protocol_version = "HTTP/1.1"  # keep-alive: httpx/aiohttp reuse connections
    timeout = 30  # an idle keep-alive connection does not pin a thread forever
    # Headers and body go out in separate writes: with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per request on keep-alive connections).
    disable_nagle_algorithm = True
    server: _QuietThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        """Read the whole request body (Content-Length or chunked transfer encoding).

        The body is always consumed, even for requests answered with an error, because a
        leftover body would be parsed as the next request on a keep-alive connection.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers end with an empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class _BackgroundServer:
    """Owns a ``ThreadingHTTPServer`` running ``serve_forever`` in a daemon thread."""

    _handler_class: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self._httpd: _QuietThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, without trailing slash: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        if self._httpd is not None:
            return self
        self._httpd = _QuietThreadingHTTPServer(self, self._handler_class)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # stops serve_forever (returns once the loop has exited)
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# RangeHTTPServer
# --------------------------------------------------------------------------------------


class _RangeHandler(_BaseHandler):
    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner: RangeHTTPServer = self.server.owner  # type: ignore[assignment]
        self.read_body()
        path = urlsplit(self.path).path
        range_header = self.headers.get("Range")
        fault = owner._record_and_take_fault(self.command, path, range_header)

        if fault is not None and fault[0] == "fail":
            body = f"injected failure {fault[1]}\n".encode()
            self._send_simple(fault[1], body, head)
            return

        file_path = owner._resolve(path)
        if file_path is None:
            self._send_simple(404, b"not found\n", head)
            return
        # Only the requested bytes are read: a whole-file read (and hash) per request would make the
        # fixture, not the client, the bottleneck on full-size files.
        stat = file_path.stat()
        size = stat.st_size
        try:
            rng = parse_range(range_header, size) if owner.ranges else None
        except RangeNotSatisfiable:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 200 if rng is None else 206
        start, end = rng or (0, size - 1)
        self.send_response(status)
        if owner.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{size:x}"')
        if rng is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with open(file_path, "rb") as f:
            f.seek(start)
            body = f.read(end + 1 - start)
        if fault is not None and fault[0] == "stall":
            # A server that stops sending mid-body: part of the body, then silence (until the stall ends or
            # the server stops), then the connection is closed.
            keep = len(body) // 2 if fault[1][0] is None else min(fault[1][0], len(body))
            owner._add_bytes(path, keep)
            self.wfile.write(body[:keep])
            self.wfile.flush()
            owner._stopping.wait(fault[1][1])
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault[0] == "drop":
            # Headers promise the full Content-Length; send only part of it and close so
            # the client sees a truncated body (a broken connection mid-transfer).
            keep = len(body) // 2 if fault[1] is None else min(fault[1], len(body))
            owner._add_bytes(path, keep)
            self.wfile.write(body[:keep])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        # Count before writing: once the client has the bytes, a test may read the log.
        owner._add_bytes(path, len(body))
        self.wfile.write(body)

    def _send_simple(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _FileServer(_BackgroundServer):
    """Serves the files under ``root_dir`` and logs what it was asked for and how many body bytes it sent."""

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root_dir).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(self.root)
        self._lock = threading.Lock()
        self.bytes_served: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []

    def gets(self, suffix: str = "") -> list[tuple[str, str | None]]:
        """``(path, range_header)`` of the GET requests for paths ending in ``suffix``, in arrival order."""
        with self._lock:
            return [(path, rng) for method, path, rng in self.requests if method == "GET" and path.endswith(suffix)]

    def reset_log(self) -> None:
        with self._lock:
            self.bytes_served.clear()
            self.requests.clear()

    def _add_bytes(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_served[path] = self.bytes_served.get(path, 0) + n


class RangeHTTPServer(_FileServer):
    """Static file server for ``root_dir`` with byte-range support and fault injection.

    ``ranges=False``: a server without Range support, as many plain static servers are: a ``Range`` header is
    ignored (the whole file, status 200) and no ``Accept-Ranges`` is sent.

    Attributes (read them after the requests of interest completed):
        bytes_served: ``{url_path: total body bytes sent}`` (HEAD and error bodies excluded).
        requests: ``[(method, url_path, range_header_or_None), ...]`` in arrival order.
    """

    _handler_class = _RangeHandler

    def __init__(self, root_dir: str | os.PathLike[str], *, ranges: bool = True) -> None:
        super().__init__(root_dir)
        self.ranges = ranges
        # queue of pending faults, consumed by GET requests in arrival order
        self._faults: list[tuple[str, Any]] = []
        self._stopping = threading.Event()  # ends stalls when the server stops

    def url_for(self, relative_path: str) -> str:
        """Full URL of a file given its path relative to ``root_dir``."""
        return f"{self.url}/{quote(relative_path.lstrip('/'))}"

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next ``n`` GET requests with ``status`` (and no file content)."""
        with self._lock:
            self._faults.extend([("fail", status)] * n)

    def drop_next(self, n: int = 1, after_bytes: int | None = None) -> None:
        """Make the next ``n`` GET requests send full headers but a truncated body.

        ``after_bytes`` is how many body bytes are sent before the connection is closed
        (default: half of the body; ``0`` closes right after the headers).
        """
        with self._lock:
            self._faults.extend([("drop", after_bytes)] * n)

    def stop(self) -> None:
        self._stopping.set()
        super().stop()
        self._stopping.clear()

    def open_connections(self) -> int:
        """Client connections the server holds open now (its side of them)."""
        httpd = self._httpd
        if httpd is None:
            return 0
        with httpd._conns_lock:
            return len(httpd._conns)

    def stall_next(self, n: int = 1, after_bytes: int | None = None, seconds: float = 3600,
                   path: str | None = None) -> None:
        """Make the next ``n`` GET requests (of ``path`` only, if given) send ``after_bytes`` of the body
        (default: half), then nothing for ``seconds`` (or until the server stops), then close the connection."""
        with self._lock:
            self._faults.extend([("stall", (after_bytes, seconds), path)] * n)

    # -- used by the handler -----------------------------------------------------------

    def _record_and_take_fault(
        self, method: str, path: str, range_header: str | None
    ) -> tuple[str, Any] | None:
        with self._lock:
            self.requests.append((method, path, range_header))
            if method == "GET":
                for i, fault in enumerate(self._faults):
                    if len(fault) < 3 or fault[2] in (None, path):  # a fault for any path, or for this one
                        return self._faults.pop(i)[:2]
        return None

    def _resolve(self, url_path: str) -> Path | None:
        rel = posixpath.normpath("/" + unquote(url_path)).lstrip("/")
        candidate = (self.root / rel).resolve()
        # refuse anything escaping the root (e.g. "/../etc/passwd") and directories
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None


# --------------------------------------------------------------------------------------
# PlainHTTPServer: Python's own static file server
# --------------------------------------------------------------------------------------


class _PlainHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` as it is (HTTP/1.0, ``Range`` ignored, no ``Accept-Ranges``), only logged."""

    server: _QuietThreadingHTTPServer

    def __init__(self, request, client_address, server) -> None:
        super().__init__(request, client_address, server, directory=str(server.owner.root))

    def send_head(self):
        owner: PlainHTTPServer = self.server.owner  # type: ignore[assignment]
        owner._log(self.command, urlsplit(self.path).path, self.headers.get("Range"))
        return super().send_head()

    def copyfile(self, source, outputfile) -> None:
        owner: PlainHTTPServer = self.server.owner  # type: ignore[assignment]
        path = urlsplit(self.path).path
        while chunk := source.read(64 << 10):
            # counted before it is written (once the client has the bytes, a test may read the log), taken back
            # if the client hangs up mid-body: the log holds what it was sent
            owner._add_bytes(path, len(chunk))
            try:
                outputfile.write(chunk)
            except OSError:
                owner._add_bytes(path, -len(chunk))
                raise

    def log_message(self, format: str, *args: Any) -> None:
        pass


class PlainHTTPServer(_FileServer):
    """``python -m http.server`` for ``root_dir`` on 127.0.0.1: no Range support, as many mirrors are.

    Attributes: ``requests`` ``[(method, url_path, range_header_or_None), ...]`` and ``bytes_served``
    ``{url_path: body bytes written}``, as :class:`RangeHTTPServer` keeps them.
    """

    _handler_class = _PlainHandler

    def _log(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))


# --------------------------------------------------------------------------------------
# HubServer: storage model
# --------------------------------------------------------------------------------------

_REPO_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}

# A subset of the .gitattributes the Hub writes into new repos: it decides which files the
# preupload endpoint sends through LFS (besides large and binary files).
DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tif filter=lfs diff=lfs merge=lfs -text
*.tiff filter=lfs diff=lfs merge=lfs -text
*.zarr filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
"""


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class _Entry:
    """A file in a commit's tree. Content lives in the server's blob store (by sha256)."""

    size: int
    sha256: str
    lfs: bool
    git_oid: str  # git blob oid: of the content, or of the LFS pointer file for LFS files

    @classmethod
    def make(cls, data: bytes, sha256: str, lfs: bool) -> _Entry:
        blob = _lfs_pointer(sha256, len(data)) if lfs else data
        return cls(size=len(data), sha256=sha256, lfs=lfs, git_oid=_git_blob_oid(blob))

    def to_json(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": self.size, "path": path}
        if self.lfs:
            out["lfs"] = {
                "oid": self.sha256,
                "size": self.size,
                "pointerSize": len(_lfs_pointer(self.sha256, self.size)),
            }
        return out


@dataclass
class _Commit:
    oid: str
    parent: str | None
    tree: dict[str, _Entry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> commit oid
    commits: dict[str, _Commit] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)  # sha256 of LFS objects stored for the repo
    next_pr: int = 1

    @property
    def url_path(self) -> str:
        return _REPO_TYPE_PREFIX[self.repo_type] + self.repo_id


class HubRequest(NamedTuple):
    """One request handled by :class:`HubServer`.

    ``path`` is the request target as received (percent-encoded, with ``?query`` if any);
    ``bytes`` is the number of response body bytes sent (0 for HEAD).
    """

    method: str
    path: str
    status: int
    bytes: int


class _HubError(Exception):
    """An error answered as a Hub-style JSON error (with the Hub's error headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        header_message: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = dict(extra or {})  # additional fields of the JSON error body
        self.headers = dict(headers or {})
        if code is not None:
            # huggingface_hub.utils.hf_raise_for_status maps this header to its error types
            self.headers["X-Error-Code"] = code
        if header_message:
            self.headers["X-Error-Message"] = message


# --------------------------------------------------------------------------------------
# HubServer: HTTP handler
# --------------------------------------------------------------------------------------


class _HubHandler(_BaseHandler):
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- plumbing ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self._response: tuple[int, bytes, dict[str, str], str] | None = None
        try:
            body = self.read_body()
            self._hub._route(self, split.path, parse_qs(split.query, keep_blank_values=True), body)
        except _HubError as err:
            self.send_json(err.status, {"error": err.message, **err.extra}, headers=err.headers)
        except Exception as err:  # noqa: BLE001 - a bug in the fake: make it visible in the client error
            detail = "".join(traceback.format_exception(err))
            self.send_json(500, {"error": f"HubServer internal error: {err!r}\n{detail}"})
        if self._response is None:
            self.send_json(500, {"error": "HubServer internal error: no response"})
        assert self._response is not None
        status, payload, headers, content_type = self._response
        sent = 0 if self.command == "HEAD" else len(payload)
        target = split.path + (f"?{split.query}" if split.query else "")
        # Log before answering: a test may inspect the log as soon as the client returns.
        self._hub._log(HubRequest(self.command, target, status, sent))
        # Written outside the hub lock (endpoints only *prepare* responses): a client that
        # reads a response lazily must not block every other request.
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if sent:
            self.wfile.write(payload)

    @property
    def _hub(self) -> HubServer:
        return self.server.owner  # type: ignore[return-value]

    def send_bytes(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Set the response (sent by ``_dispatch`` once the endpoint returns)."""
        self._response = (status, body, dict(headers or {}), content_type)

    def send_json(
        self,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), headers, content_type)


def _split_revision(segments: list[str]) -> tuple[str, list[str]]:
    """Split raw (still percent-encoded) URL segments into ``(revision, rest)``.

    Clients quote revisions with ``safe=""`` ("refs%2Fpr%2F1"), but an unquoted special ref
    ("refs/pr/1", "refs/convert/parquet") spans three segments: accept both.
    """
    if not segments:
        raise _HubError(400, "Missing revision")
    if unquote(segments[0]) == "refs" and len(segments) >= 3:
        return "/".join(unquote(s) for s in segments[:3]), segments[3:]
    return unquote(segments[0]), segments[1:]


def _join_path(segments: list[str]) -> str:
    # each segment may itself hold encoded slashes (quote(path, safe="")): unquote each
    return "/".join(unquote(s) for s in segments).strip("/")


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in {"1", "true", "yes"}


# --------------------------------------------------------------------------------------
# HubServer
# --------------------------------------------------------------------------------------


class HubServer(_BackgroundServer):
    """In-memory fake of the Hugging Face Hub HTTP API (see the module docstring).

    Args:
        tokens: ``{token: username}``; requests must send ``Authorization: Bearer <token>``
            to write. An Authorization header with an unknown token is rejected with 401
            on every endpoint, as the Hub does.
        lfs_threshold: files at least this large go through LFS even if ``.gitattributes``
            does not say so (the Hub uses 10 MB).

    Attributes:
        requests: every handled request as :class:`HubRequest` ``(method, path, status,
            bytes)``.
        lfs_uploads: ``[(repo_id, sha256, size), ...]`` for each LFS object uploaded.
    """

    _handler_class = _HubHandler

    def __init__(self, tokens: Mapping[str, str] | None = None, *, lfs_threshold: int = 10 * 1024 * 1024):
        super().__init__()
        self.tokens = dict(tokens or {})
        self.lfs_threshold = lfs_threshold
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> content (shared by all repos)
        self._pending_lfs: dict[tuple[str, str, str], int] = {}  # (type, repo, oid) -> size
        self._counter = itertools.count()
        self.requests: list[HubRequest] = []
        self.lfs_uploads: list[tuple[str, str, int]] = []

    # -- public helpers for tests ------------------------------------------------------

    def reset_log(self) -> None:
        """Forget the logged requests and LFS uploads (stored content is kept)."""
        with self._lock:
            self.requests.clear()
            self.lfs_uploads.clear()

    @property
    def lfs_bytes_uploaded(self) -> int:
        """Total bytes received through LFS uploads (PUTs to the upload URLs)."""
        with self._lock:
            return sum(size for _, _, size in self.lfs_uploads)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Content of every file of ``repo_id`` at ``revision`` (branch, PR ref or sha)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = self._commit_for(repo, revision)
            if commit is None:
                raise KeyError(f"unknown revision {revision!r} of {repo_id}")
            return {path: self._blobs[entry.sha256] for path, entry in sorted(commit.tree.items())}

    def refs(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        """``{ref_name: commit_sha}`` of a repo: branches ("main", ...) and "refs/pr/N"."""
        with self._lock:
            return dict(self._repos[(repo_type, repo_id)].refs)

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> set[str]:
        """Paths stored as LFS files at ``revision``."""
        with self._lock:
            commit = self._commit_for(self._repos[(repo_type, repo_id)], revision)
            assert commit is not None
            return {path for path, entry in commit.tree.items() if entry.lfs}

    def create_repo(
        self, repo_id: str, repo_type: str = "dataset", private: bool = False, author: str = "seed"
    ) -> None:
        """Create an empty repo (initial commit holding ``.gitattributes``) if missing."""
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                self._create_repo(repo_type, repo_id, private, author)

    def seed(
        self,
        repo_id: str,
        local_dir: str | os.PathLike[str] | None = None,
        *,
        files: Mapping[str, bytes] | None = None,
        repo_type: str = "dataset",
        private: bool = False,
        revision: str = "main",
        commit_message: str = "Seed files",
    ) -> str:
        """Commit the files of ``local_dir`` (recursively) and/or ``files`` without a client.

        Creates the repo (and the branch ``revision`` from main) when missing; files are
        stored as LFS or regular with the same rules as the preupload endpoint. Returns the
        new commit sha.
        """
        content: dict[str, bytes] = {}
        if local_dir is not None:
            root = Path(local_dir)
            for path in sorted(root.rglob("*")):
                if path.is_file() and ".git" not in path.relative_to(root).parts:
                    content[path.relative_to(root).as_posix()] = path.read_bytes()
        content.update(files or {})
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = self._create_repo(repo_type, repo_id, private, "seed")
            if revision not in repo.refs:
                repo.refs[revision] = repo.refs["main"]
            head = repo.commits[repo.refs[revision]]
            gitattributes = self._gitattributes(head)
            tree = dict(head.tree)
            for path, data in content.items():
                sha = self._store_blob(data)
                lfs = self._should_use_lfs(path, len(data), data[:512], gitattributes)
                if lfs:
                    repo.lfs_objects.add(sha)
                tree[path] = self._entry(data, sha, lfs)
            commit = self._new_commit(repo, head.oid, tree, commit_message, "", "seed")
            repo.refs[revision] = commit.oid
            return commit.oid

    # -- storage helpers (call with the lock held) -------------------------------------

    def _log(self, record: HubRequest) -> None:
        with self._lock:
            self.requests.append(record)

    def _store_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(sha, data)
        return sha

    @staticmethod
    def _entry(data: bytes, sha: str, lfs: bool) -> _Entry:
        return _Entry.make(data, sha, lfs)

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso())
        data = DEFAULT_GITATTRIBUTES.encode()
        tree = {".gitattributes": self._entry(data, self._store_blob(data), lfs=False)}
        commit = self._new_commit(repo, None, tree, "initial commit", "", author)
        repo.refs["main"] = commit.oid
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _new_commit(
        self, repo: _Repo, parent: str | None, tree: dict[str, _Entry], title: str, message: str, author: str
    ) -> _Commit:
        seed = json.dumps(
            [parent, title, message, next(self._counter), sorted((p, e.sha256) for p, e in tree.items())]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = _Commit(oid, parent, tree, title, message, author, _now_iso())
        repo.commits[oid] = commit
        return commit

    def _commit_for(self, repo: _Repo, revision: str) -> _Commit | None:
        """Resolve a branch, ``refs/heads/x``, ``refs/pr/N`` or (prefix of a) commit sha."""
        revision = revision.removeprefix("refs/heads/")
        if revision in repo.refs:
            return repo.commits[repo.refs[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        return None

    def _gitattributes(self, commit: _Commit) -> list[str]:
        entry = commit.tree.get(".gitattributes")
        if entry is None:
            return []
        patterns = []
        for line in self._blobs[entry.sha256].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
                patterns.append(parts[0])
        return patterns

    def _should_use_lfs(self, path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
        # Same inputs as the Hub's decision: .gitattributes patterns, size and binary-ness.
        if size == 0:
            return False  # the client uploads empty files as regular anyway
        if size >= self.lfs_threshold or b"\0" in sample:
            return True
        name = posixpath.basename(path)
        for pattern in patterns:
            pattern = pattern.lstrip("/")
            if "/" in pattern.rstrip("/"):
                if fnmatch.fnmatch(path, pattern):
                    return True
            elif fnmatch.fnmatch(name, pattern):
                return True
        return False

    # -- auth ----------------------------------------------------------------------------

    def _user(self, handler: _HubHandler) -> str | None:
        auth = handler.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            # The Hub answers an invalid token with this exact message (also as header):
            # huggingface_hub then raises a plain HfHubHTTPError (401) rather than
            # RepositoryNotFoundError.
            raise _HubError(401, "Invalid credentials in Authorization header", header_message=True)
        return user

    def _require_user(self, handler: _HubHandler) -> str:
        user = self._user(handler)
        if user is None:
            raise _HubError(401, "Invalid username or password.")
        return user

    def _get_repo(self, user: str | None, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            # Like the Hub: anonymous callers get 401 (private and missing repos look alike)
            raise _HubError(
                401 if user is None else 404,
                "Repository not found",
                code="RepoNotFound",
                header_message=True,
            )
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = self._commit_for(repo, revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound", header_message=True)
        return commit

    # -- routing -------------------------------------------------------------------------

    def _route(self, h: _HubHandler, path: str, query: dict[str, list[str]], body: bytes) -> None:
        method = h.command
        segs = [s for s in path.split("/") if s]
        with self._lock:
            user = self._user(h)  # validates the token on every endpoint

            if segs[:1] == ["api"]:
                return self._route_api(h, method, segs[1:], query, body, user)
            if segs[:1] == ["__lfs__"]:
                return self._lfs_transfer(h, method, segs[1:], body)

            # /{datasets/|spaces/}{ns}/{name}[.git]/...
            repo_type = "model"
            if segs and segs[0] in ("datasets", "spaces"):
                repo_type = _API_TYPES[segs[0]]
                segs = segs[1:]
            if len(segs) >= 3:
                ns, name, rest = unquote(segs[0]), unquote(segs[1]), segs[2:]
                if name.endswith(".git") and rest == ["info", "lfs", "objects", "batch"] and method == "POST":
                    return self._lfs_batch(h, user, repo_type, f"{ns}/{name[:-4]}", body)
                if rest[0] == "resolve" and method in ("GET", "HEAD"):
                    revision, file_segs = _split_revision(rest[1:])
                    return self._resolve(h, user, repo_type, f"{ns}/{name}", revision, _join_path(file_segs))
        raise _HubError(404, f"Not found: {method} {path}")

    def _route_api(
        self,
        h: _HubHandler,
        method: str,
        segs: list[str],
        query: dict[str, list[str]],
        body: bytes,
        user: str | None,
    ) -> None:
        if segs == ["whoami-v2"] and method == "GET":
            return self._whoami(h, user)
        if segs == ["repos", "create"] and method == "POST":
            return self._api_create_repo(h, user, body)
        if segs == ["repos", "delete"] and method in ("POST", "DELETE"):
            return self._api_delete_repo(h, user, body)
        if segs == ["validate-yaml"] and method == "POST":
            return h.send_json(200, {"errors": [], "warnings": []})
        if segs == ["agent-harnesses"] and method == "GET":
            # huggingface_hub fetches this registry once per process to build its user agent
            return h.send_json(200, {"standardEnvVars": [], "harnesses": {}})
        if len(segs) >= 3 and segs[0] in _API_TYPES:
            repo_type = _API_TYPES[segs[0]]
            repo_id = f"{unquote(segs[1])}/{unquote(segs[2])}"
            rest = segs[3:]
            action = rest[0] if rest else None
            if action is None and method == "GET":
                return self._repo_info(h, user, repo_type, repo_id, "main", query)
            if action == "revision" and method == "GET":
                revision, _ = _split_revision(rest[1:])
                return self._repo_info(h, user, repo_type, repo_id, revision, query)
            if action == "tree" and method == "GET":
                revision, path_segs = _split_revision(rest[1:])
                return self._tree(h, user, repo_type, repo_id, revision, _join_path(path_segs), query)
            if action == "paths-info" and method == "POST":
                revision, _ = _split_revision(rest[1:])
                return self._paths_info(h, user, repo_type, repo_id, revision, body)
            if action == "preupload" and method == "POST":
                revision, _ = _split_revision(rest[1:])
                return self._preupload(h, user, repo_type, repo_id, revision, body)
            if action == "commit" and method == "POST":
                revision, _ = _split_revision(rest[1:])
                return self._commit(h, user, repo_type, repo_id, revision, query, body)
            if action == "branch" and method in ("POST", "DELETE"):
                return self._branch(h, user, repo_type, repo_id, _join_path(rest[1:]), method, body)
            if action == "refs" and method == "GET":
                return self._list_refs(h, user, repo_type, repo_id, query)
            if action == "commits" and method == "GET":
                revision, _ = _split_revision(rest[1:] or ["main"])
                return self._list_commits(h, user, repo_type, repo_id, revision)
        raise _HubError(404, f"Not found: {method} /api/{'/'.join(segs)}")

    # -- endpoints: account and repos -----------------------------------------------------

    def _whoami(self, h: _HubHandler, user: str | None) -> None:
        if user is None:
            raise _HubError(401, "Invalid username or password.")
        h.send_json(
            200,
            {
                "type": "user",
                "id": hashlib.md5(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": f"{user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _api_create_repo(self, h: _HubHandler, user: str | None, body: bytes) -> None:
        user = user or self._require_user(h)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _REPO_TYPE_PREFIX:
            raise _HubError(400, f"Invalid repo type: {repo_type}")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.url}/{_REPO_TYPE_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            # create_repo(exist_ok=True) swallows this 409, then reads "url" from its body
            raise _HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self._create_repo(repo_type, repo_id, private, user)
        h.send_json(200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _api_delete_repo(self, h: _HubHandler, user: str | None, body: bytes) -> None:
        user = user or self._require_user(h)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        self._get_repo(user, repo_type, repo_id)
        del self._repos[(repo_type, repo_id)]
        h.send_json(200, {})

    def _repo_info(
        self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, revision: str, query: dict
    ) -> None:
        repo = self._get_repo(user, repo_type, repo_id)
        commit = self._get_commit(repo, revision)
        blobs = _truthy(query.get("blobs"))
        siblings = []
        for path, entry in sorted(commit.tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:  # siblings name the LFS oid "sha256" (tree entries: "oid")
                    pointer_size = len(_lfs_pointer(entry.sha256, entry.size))
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.md5(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }
        card_data = self._card_data(commit)
        if card_data is not None:
            info["cardData"] = card_data
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        h.send_json(200, info)

    def _card_data(self, commit: _Commit) -> dict | None:
        entry = commit.tree.get("README.md")
        if entry is None:
            return None
        text = self._blobs[entry.sha256].decode("utf-8", errors="replace")
        if not text.startswith("---"):
            return None
        end = text.find("\n---", 3)
        if end < 0:
            return None
        try:
            import yaml  # PyYAML: a dependency of huggingface_hub

            data = yaml.safe_load(text[3:end])
        except Exception:  # noqa: BLE001 - any unreadable front matter is no card data
            return None
        return data if isinstance(data, dict) else None

    # -- endpoints: listings -----------------------------------------------------------------

    def _tree_oid(self, commit: _Commit, directory: str) -> str:
        prefix = directory + "/" if directory else ""
        items = sorted((p, e.git_oid) for p, e in commit.tree.items() if p.startswith(prefix))
        return hashlib.sha1(json.dumps(items).encode()).hexdigest()

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str, is_dir: bool) -> dict[str, str]:
        """Most recent ancestor of ``commit`` (inclusive) that changed ``path``."""

        def signature(c: _Commit) -> Any:
            if not is_dir:
                entry = c.tree.get(path)
                return None if entry is None else entry.git_oid
            prefix = path + "/" if path else ""
            return sorted((p, e.git_oid) for p, e in c.tree.items() if p.startswith(prefix))

        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if signature(parent) != signature(current):
                break
            current = parent
        return {"id": current.oid, "title": current.title, "date": current.date}

    def _dirs(self, commit: _Commit) -> set[str]:
        dirs = set()
        for path in commit.tree:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def _path_json(self, repo: _Repo, commit: _Commit, path: str, is_dir: bool, expand: bool) -> dict[str, Any]:
        if is_dir:
            out: dict[str, Any] = {"type": "directory", "oid": self._tree_oid(commit, path), "size": 0, "path": path}
        else:
            out = commit.tree[path].to_json(path)
            if expand:
                out["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        if expand:
            out["lastCommit"] = self._last_commit(repo, commit, path, is_dir)
        return out

    def _tree(
        self,
        h: _HubHandler,
        user: str | None,
        repo_type: str,
        repo_id: str,
        revision: str,
        path: str,
        query: dict,
    ) -> None:
        repo = self._get_repo(user, repo_type, repo_id)
        commit = self._get_commit(repo, revision)
        recursive = _truthy(query.get("recursive"))
        expand = _truthy(query.get("expand"))
        dirs = self._dirs(commit)
        if path in commit.tree:
            # listing a file path returns the file itself
            return h.send_json(200, [self._path_json(repo, commit, path, False, expand)])
        if path and path not in dirs:
            raise _HubError(
                404,
                f"{path} does not exist on {revision}",
                code="EntryNotFound",
                headers={"X-Repo-Commit": commit.oid},
            )
        prefix = path + "/" if path else ""
        entries = []
        for candidate, is_dir in [(d, True) for d in dirs] + [(f, False) for f in commit.tree]:
            if not candidate.startswith(prefix):
                continue
            if not recursive and "/" in candidate[len(prefix) :]:
                continue
            entries.append(self._path_json(repo, commit, candidate, is_dir, expand))
        # Hub order: directories first, then files, each sorted by path
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        h.send_json(200, entries)

    def _paths_info(
        self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, revision: str, body: bytes
    ) -> None:
        repo = self._get_repo(user, repo_type, repo_id)
        commit = self._get_commit(repo, revision)
        content_type = h.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy(form.get("expand"))
        dirs = self._dirs(commit)
        out = []
        for raw in paths:
            path = raw.strip("/")
            if path in commit.tree:
                out.append(self._path_json(repo, commit, path, False, expand))
            elif path in dirs:
                out.append(self._path_json(repo, commit, path, True, expand))
        h.send_json(200, out)

    def _list_refs(self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, query: dict) -> None:
        repo = self._get_repo(user, repo_type, repo_id)

        def ref(name: str, full: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": repo.refs[name]}

        branches = [ref(n, f"refs/heads/{n}") for n in sorted(repo.refs) if not n.startswith("refs/")]
        prs = [ref(n, n) for n in sorted(repo.refs) if n.startswith("refs/pr/")]
        out: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if _truthy(query.get("include_prs")):
            out["pullRequests"] = prs
        h.send_json(200, out)

    def _list_commits(self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(user, repo_type, repo_id)
        commit: _Commit | None = self._get_commit(repo, revision)
        out = []
        while commit is not None:
            out.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                }
            )
            commit = repo.commits[commit.parent] if commit.parent else None
        h.send_json(200, out)

    # -- endpoints: downloads -------------------------------------------------------------

    def _resolve(
        self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, revision: str, path: str
    ) -> None:
        repo = self._get_repo(user, repo_type, repo_id)
        commit = self._get_commit(repo, revision)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        entry = commit.tree.get(path)
        if entry is None:
            # X-Repo-Commit on the 404 lets hf_hub_download cache the file's absence
            raise _HubError(404, "Entry not found", code="EntryNotFound", headers=headers, header_message=True)
        data = self._blobs[entry.sha256]
        if entry.lfs:
            # The Hub redirects LFS files to a CDN; the metadata of the *content* travels in
            # these headers. Serving the content directly keeps everything on one host.
            headers["ETag"] = f'"{entry.sha256}"'
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        else:
            headers["ETag"] = f'"{entry.git_oid}"'
        try:
            rng = parse_range(h.headers.get("Range"), len(data))
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{len(data)}"
            return h.send_bytes(416, b"", headers)
        if rng is None:
            return h.send_bytes(200, data, headers)
        headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{len(data)}"
        h.send_bytes(206, memoryview(data)[rng[0] : rng[1] + 1], headers)  # no copy of a big file per range

    # -- endpoints: uploads ---------------------------------------------------------------

    def _writable_branch(self, repo: _Repo, revision: str) -> _Commit:
        """Head commit of a branch / PR ref that may receive commits."""
        name = revision.removeprefix("refs/heads/")
        if name in repo.refs:
            return repo.commits[repo.refs[name]]
        if self._commit_for(repo, name) is not None:
            raise _HubError(400, f"Cannot commit to a commit sha ({revision}): use a branch")
        raise _HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound", header_message=True)

    def _preupload(
        self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, revision: str, body: bytes
    ) -> None:
        user = user or self._require_user(h)
        repo = self._get_repo(user, repo_type, repo_id)
        head = self._get_commit(repo, revision)
        payload = json.loads(body or b"{}")
        patterns = self._gitattributes(head)
        files = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self._should_use_lfs(path, int(item.get("size", 0)), sample, patterns)
            existing = head.tree.get(path)
            # "oid" lets the client drop unchanged files: sha256 for LFS, git oid otherwise
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        h.send_json(200, {"files": files, "commitOid": head.oid})

    def _lfs_batch(self, h: _HubHandler, user: str | None, repo_type: str, repo_id: str, body: bytes) -> None:
        user = user or self._require_user(h)
        repo = self._get_repo(user, repo_type, repo_id)
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise _HubError(400, "Only the upload operation is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if oid in repo.lfs_objects:
                objects.append({"oid": oid, "size": size})  # no "actions": already stored
                continue
            self._pending_lfs[(repo_type, repo_id, oid)] = size
            base = f"{self.url}/__lfs__/{repo.url_path}"
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{base}/{oid}"},
                        "verify": {"href": f"{self.url}/__lfs__/verify/{repo.url_path}"},
                    },
                }
            )
        h.send_json(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_transfer(self, h: _HubHandler, method: str, segs: list[str], body: bytes) -> None:
        """Basic-transfer upload (PUT, unauthenticated like a signed S3 URL) and verify."""
        verify = segs[:1] == ["verify"]
        if verify:
            segs = segs[1:]
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, segs = _API_TYPES[segs[0]], segs[1:]
        if len(segs) < 2:
            raise _HubError(404, "Not found")
        repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "Repository not found", code="RepoNotFound")
        if verify and method == "POST":
            payload = json.loads(body or b"{}")
            if payload.get("oid") not in repo.lfs_objects:
                raise _HubError(404, f"LFS object {payload.get('oid')} not found")
            return h.send_json(200, {})
        if method != "PUT" or len(segs) != 3:
            raise _HubError(404, "Not found")
        oid = segs[2]
        size = self._pending_lfs.get((repo_type, repo_id, oid))
        if size is None:
            raise _HubError(403, "No pending upload for this object: call the LFS batch API first")
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise _HubError(400, "Uploaded content does not match the announced oid/size")
        self._blobs.setdefault(oid, body)
        repo.lfs_objects.add(oid)
        del self._pending_lfs[(repo_type, repo_id, oid)]
        self.lfs_uploads.append((repo_id, oid, size))
        h.send_bytes(200, b"", {"ETag": f'"{oid}"'})

    def _commit(
        self,
        h: _HubHandler,
        user: str | None,
        repo_type: str,
        repo_id: str,
        revision: str,
        query: dict,
        body: bytes,
    ) -> None:
        user = user or self._require_user(h)
        repo = self._get_repo(user, repo_type, repo_id)
        create_pr = _truthy(query.get("create_pr"))
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item.get("key") == "header"), {})
        parent_commit = header.get("parentCommit")

        if create_pr:
            base = self._get_commit(repo, parent_commit or revision)
        else:
            base = self._writable_branch(repo, revision)
            if parent_commit and not base.oid.startswith(parent_commit):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")

        tree = dict(base.tree)
        for item in lines:
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                continue
            path = value.get("path", "").strip("/")
            if key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                tree[path] = self._entry(data, self._store_blob(data), lfs=False)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in repo.lfs_objects:
                    raise _HubError(422, f"LFS object {oid} for {path} was not uploaded")
                data = self._blobs[oid]
                tree[path] = self._entry(data, oid, lfs=True)
            elif key == "deletedFile":
                if path not in tree:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del tree[path]
            elif key == "deletedFolder":
                doomed = [p for p in tree if p.startswith(path + "/")]
                if not doomed:
                    raise _HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in doomed:
                    del tree[p]
            else:
                raise _HubError(400, f"Unsupported commit operation: {key}")

        commit = self._new_commit(
            repo, base.oid, tree, header.get("summary") or "Commit", header.get("description") or "", user
        )
        repo_url = f"{self.url}/{repo.url_path}"
        response: dict[str, Any] = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{repo_url}/commit/{commit.oid}",
        }
        if create_pr:
            number = repo.next_pr
            repo.next_pr += 1
            repo.refs[f"refs/pr/{number}"] = commit.oid
            response["pullRequestUrl"] = f"{repo_url}/discussions/{number}"
        else:
            name = revision.removeprefix("refs/heads/")
            repo.refs[name] = commit.oid
        h.send_json(200, response)

    def _branch(
        self,
        h: _HubHandler,
        user: str | None,
        repo_type: str,
        repo_id: str,
        branch: str,
        method: str,
        body: bytes,
    ) -> None:
        user = user or self._require_user(h)
        repo = self._get_repo(user, repo_type, repo_id)
        if not branch or branch.startswith("refs/"):
            raise _HubError(400, f"Invalid branch name: {branch!r}")
        if method == "DELETE":
            if branch not in repo.refs or branch == "main":
                raise _HubError(404, f"Branch {branch} not found", code="RevisionNotFound")
            del repo.refs[branch]
            return h.send_json(200, {})
        if branch in repo.refs:
            raise _HubError(409, "Reference already exists")
        payload = json.loads(body or b"{}")
        start = self._get_commit(repo, payload.get("startingPoint") or "main")
        repo.refs[branch] = start.oid
        h.send_json(200, {})


# --------------------------------------------------------------------------------------
# use_hub: point huggingface_hub and datasets at a HubServer
# --------------------------------------------------------------------------------------

_MISSING = object()


@contextlib.contextmanager
def use_hub(
    hub: HubServer,
    *,
    token: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Iterator[HubServer]:
    """Point ``huggingface_hub`` and ``datasets`` at ``hub`` and isolate their caches.

    Both libraries read ``HF_ENDPOINT``, ``HF_HOME`` & co. once, at import, into module
    constants; setting environment variables later has no effect. This context manager
    patches every cached copy (and the environment, for subprocesses and late imports)
    and restores all of it on exit:

    * ``huggingface_hub.constants``: ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` (used
      by ``hf_hub_url``), ``HF_URL_HOSTS``, ``HF_HUB_DISABLE_XET=True`` (regular LFS
      uploads/downloads instead of Xet), ``HF_HUB_OFFLINE=False`` and every path derived
      from ``HF_HOME`` (hub/assets/xet caches, token files, agent-registry cache, ...).
    * ``huggingface_hub.utils._http._HUB_ORIGINS`` (auth-forwarding allow list).
    * ``huggingface_hub.hf_api.api.endpoint`` (the instance behind top-level functions
      such as ``huggingface_hub.create_repo``) and ``huggingface_hub.hf_file_system.hffs``.
    * ``HfFileSystem`` instance cache is cleared and the shared httpx client closed on
      entry and exit (instances keep a directory cache of whatever hub they talked to;
      pooled connections may point at a stopped server's recycled port).
    * ``huggingface_hub.utils._detect_agent._registry`` is pinned to the empty registry
      (otherwise the first request of the process fetches it and writes it to disk).
    * ``datasets.config``: ``HF_ENDPOINT``, ``HUB_DATASETS_URL``, offline flags, the
      cache paths, ``HF_UPDATE_DOWNLOAD_COUNTS=False`` (``load_dataset`` otherwise sends a
      HEAD to s3.amazonaws.com) and ``USE_PARQUET_EXPORT=False`` (the dataset-viewer URL
      is derived as ``http://datasets-server.<endpoint host>``, which does not exist here).

    Args:
        hub: a started :class:`HubServer`.
        token: exported as ``HF_TOKEN`` (the default token of both clients). ``None``
            removes ``HF_TOKEN`` so calls are anonymous unless a token is passed explicitly.
        home: directory used as ``HF_HOME`` (caches under it). Default: a temporary
            directory removed on exit.
    """
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_file_system as hf_fs
    import huggingface_hub.utils._detect_agent as hf_detect_agent
    import huggingface_hub.utils._http as hf_http
    from huggingface_hub import hf_api

    try:
        import datasets.config as ds_config
    except ImportError:  # datasets is optional for pure huggingface_hub tests
        ds_config = None

    endpoint = hub.url
    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    saved_env: dict[str, str | None] = {}

    def setenv(name: str, value: str | None) -> None:
        saved_env.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    with contextlib.ExitStack() as stack:
        if home is None:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="hubserver-home-"))
        home = os.fspath(home)
        hub_cache = os.path.join(home, "hub")
        assets_cache = os.path.join(home, "assets")
        xet_cache = os.path.join(home, "xet")
        token_path = os.path.join(home, "token")
        datasets_cache = os.path.join(home, "datasets")

        try:
            # -- environment (subprocesses, and modules imported later) -----------------
            setenv("HF_ENDPOINT", endpoint)
            setenv("HF_HUB_DISABLE_XET", "1")
            setenv("HF_HOME", home)
            setenv("HF_HUB_CACHE", hub_cache)
            setenv("HF_DATASETS_CACHE", datasets_cache)
            setenv("HF_UPDATE_DOWNLOAD_COUNTS", "0")
            setenv("HF_TOKEN", token)
            for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN",
                         "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE", "HF_ASSETS_CACHE"):
                setenv(name, None)

            # -- huggingface_hub ----------------------------------------------------------
            c = hf_constants
            patch(c, "ENDPOINT", endpoint)
            patch(c, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
            patch(c, "HF_URL_HOSTS", frozenset(c.HF_URL_HOSTS | {"127.0.0.1"}))
            patch(c, "HF_HUB_DISABLE_XET", True)
            patch(c, "HF_HUB_OFFLINE", False)
            patch(c, "HF_HUB_DISABLE_TELEMETRY", True)
            patch(c, "HF_HOME", home)
            for name in ("default_cache_path", "HUGGINGFACE_HUB_CACHE", "HF_HUB_CACHE"):
                patch(c, name, hub_cache)
            for name in ("default_assets_cache_path", "HUGGINGFACE_ASSETS_CACHE", "HF_ASSETS_CACHE"):
                patch(c, name, assets_cache)
            for name in ("default_xet_cache_path", "HF_XET_CACHE"):
                patch(c, name, xet_cache)
            patch(c, "HF_TOKEN_PATH", token_path)
            patch(c, "HF_STORED_TOKENS_PATH", os.path.join(home, "stored_tokens"))
            patch(c, "CHECK_FOR_UPDATE_DONE_PATH", os.path.join(home, ".check_for_update_done"))
            patch(c, "CHECK_FOR_SKILL_UPDATE_DONE_PATH", os.path.join(home, ".check_for_skill_update_done"))
            patch(c, "AGENT_HARNESSES_PATH", os.path.join(home, ".agent_harnesses.json"))

            patch(hf_http, "_HUB_ORIGINS", frozenset(hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)}))
            patch(hf_api.api, "endpoint", endpoint)
            patch(hf_fs.hffs, "endpoint", endpoint)
            patch(hf_fs.hffs._api, "endpoint", endpoint)
            if hf_detect_agent._registry is None:
                patch(hf_detect_agent, "_registry", hf_detect_agent._EMPTY_REGISTRY)
            hf_fs.HfFileSystem.clear_instance_cache()
            hf_fs.hffs.invalidate_cache()
            # fresh pooled connections: an earlier server may have used the same port
            hf_http.close_session()

            # -- datasets -------------------------------------------------------------------
            if ds_config is not None:
                d = ds_config
                patch(d, "HF_ENDPOINT", endpoint)
                patch(d, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
                patch(d, "HF_HUB_OFFLINE", False)
                patch(d, "HF_DATASETS_OFFLINE", False)
                patch(d, "HF_UPDATE_DOWNLOAD_COUNTS", False)
                patch(d, "USE_PARQUET_EXPORT", False)
                patch(d, "HF_CACHE_HOME", home)
                patch(d, "HF_DATASETS_CACHE", Path(datasets_cache))
                patch(d, "HF_MODULES_CACHE", Path(home) / "modules")
                patch(d, "DOWNLOADED_DATASETS_PATH", Path(datasets_cache) / d.DOWNLOADED_DATASETS_DIR)
                patch(
                    d,
                    "EXTRACTED_DATASETS_PATH",
                    Path(datasets_cache) / d.DOWNLOADED_DATASETS_DIR / d.EXTRACTED_DATASETS_DIR,
                )

            yield hub
        finally:
            for obj, name, old in reversed(saved):
                if old is _MISSING:
                    with contextlib.suppress(AttributeError):
                        delattr(obj, name)
                else:
                    setattr(obj, name, old)
            for name, old_value in saved_env.items():
                if old_value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old_value
            hf_fs.HfFileSystem.clear_instance_cache()
            hf_fs.hffs.invalidate_cache()
            hf_http.close_session()
