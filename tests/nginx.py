"""A real nginx on 127.0.0.1 serving a directory, for the tests and the benchmark that need a fast server.

::

    with NginxServer(root_dir) as srv:      # raises NginxUnavailable when there is no nginx binary
        srv.url                             # "http://127.0.0.1:PORT"
        srv.bytes_served()                  # {url_path: body bytes sent}, from nginx's access log

nginx runs in the foreground as one process (``master_process off``) under the calling user, so it reads
whatever that user can (pytest's temporary folders are private), with ``sendfile`` as in production. Its
access log records every request's body bytes, which is how "each byte served once" is checked.
``limit_rate`` (bytes/s per connection) stands in for a link where one connection is slower than the link.
On Debian/Ubuntu: ``apt-get install nginx-light``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

__all__ = ["NginxServer", "NginxUnavailable", "nginx_binary"]

_LOG_FORMAT = "$request_method $uri $status $body_bytes_sent"


class NginxUnavailable(RuntimeError):
    """No nginx binary on this machine."""


def nginx_binary() -> str | None:
    candidates = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")  # sbin is not on every user's PATH
    return shutil.which("nginx") or next((p for p in candidates if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxServer:
    def __init__(self, root_dir: str | os.PathLike, limit_rate: int | None = None):
        self.root = Path(root_dir).resolve()
        self.limit_rate = limit_rate
        self._work: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return Path(self._work.name) / "access.log"

    def start(self) -> NginxServer:
        binary = nginx_binary()
        if binary is None:
            raise NginxUnavailable("nginx is not installed (apt-get install nginx-light)")
        self._work = tempfile.TemporaryDirectory(prefix="ssl4eos12-nginx-")
        work = Path(self._work.name)
        for attempt in range(5):
            self.port = _free_port()
            (work / "nginx.conf").write_text(self._config(work))
            self._process = subprocess.Popen([binary, "-p", str(work), "-c", str(work / "nginx.conf")],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_listening():
                return self
            self._process.kill()
            self._process.wait()
        error = (work / "error.log").read_text() if (work / "error.log").exists() else ""
        self.stop()
        raise RuntimeError(f"nginx did not start: {error[-500:]}")

    def _config(self, work: Path) -> str:
        limit = f"limit_rate {self.limit_rate};" if self.limit_rate else ""
        temp = " ".join(f"{name}_temp_path {work / name};" for name in ("client_body", "proxy", "fastcgi",
                                                                       "uwsgi", "scgi"))
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format bytes '{_LOG_FORMAT}';
    access_log {work / "access.log"} bytes;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    {temp}
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        {limit}
    }}
}}
"""

    def _wait_listening(self, seconds: float = 10) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def bytes_served(self) -> dict[str, int]:
        """Body bytes sent per URL path (GET requests), from the access log."""
        served: dict[str, int] = {}
        if not self.access_log.exists():
            return served
        for line in self.access_log.read_text().splitlines():
            method, uri, _status, sent = line.split(" ")
            if method == "GET":
                path = unquote(uri)
                served[path] = served.get(path, 0) + int(sent)
        return served

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far."""
        out = []
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                method, uri, status, _sent = line.split(" ")
                out.append((method, unquote(uri), int(status)))
        return out

    def reset_log(self) -> None:
        if self.access_log.exists():
            self.access_log.write_text("")  # nginx appends (O_APPEND), so truncating in place is safe

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None
        if self._work is not None:
            self._work.cleanup()
            self._work = None

    def __enter__(self) -> NginxServer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
