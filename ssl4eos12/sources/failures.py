"""Why a remote root or file could not be read, in one line that says what to do.

fsspec, aiohttp, httpx and huggingface_hub each report an unreachable host, a missing repository, a refused
token or a server without Range support differently, often many frames deep; :func:`remote_cause` finds the
cause in the exception chain and :func:`remote_failure_message` turns it into ``URL: cause; hint``.
"""

from __future__ import annotations

import socket

from ..constants import HOSTED_ROOT

_DNS = ("name or service not known", "temporary failure in name resolution", "nodename nor servname",
        "getaddrinfo failed", "no address associated with hostname", "name resolution")
_CONNECT = ("connection refused", "cannot connect to host", "network is unreachable", "connecterror",
            "connection reset", "timed out", "max retries exceeded")
_NO_RANGE = ("support range requests", "range requests", "accept-ranges")
#: What to do, by cause.
_HINTS = {
    "offline": "check the network connection, or pass data_dir= (or root=) a local copy",
    "missing": "check the URL or repository id, or pass data_dir= (or root=) a local copy",
    "no-range": "serve the files from a server that supports HTTP Range requests, or download them and pass "
                "data_dir= the local copy",
    "401": "pass a token (token= or HF_TOKEN, `hf auth login`) or credentials in storage_options=",
    "403": "use a token that may read it (token= or HF_TOKEN), or pass data_dir= a local copy",
}


def _chain(err: BaseException):
    """``err`` and every exception it was raised from or during (each once)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _status(err: BaseException) -> int | None:
    status = getattr(err, "status", None)  # aiohttp.ClientResponseError
    if not isinstance(status, int):
        response = getattr(err, "response", None)  # requests / httpx errors, HfHubHTTPError
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def remote_cause(err: BaseException) -> tuple[str, str] | None:
    """``(kind, description)`` of a remote failure, or ``None`` when ``err`` is not one.

    kinds: ``offline`` (DNS, refused connection), ``missing`` (no such repository or path, HTTP 404),
    ``no-range`` (the server ignores Range requests), ``401``, ``403``.
    """
    chain = list(_chain(err))
    for e in chain:  # what the server answered says most
        status = _status(e)
        if status in (401, 403):
            reason = "Unauthorized: the server wants a token" if status == 401 else "Forbidden: no read access"
            return str(status), f"HTTP {status} {reason}"
        if status == 404 or type(e).__name__ in ("RepositoryNotFoundError", "EntryNotFoundError"):
            return "missing", "no such repository or file (HTTP 404)"
    texts = [(e, f"{type(e).__name__}: {e}".lower()) for e in chain]
    for e, text in texts:
        if any(marker in text for marker in _NO_RANGE):
            return "no-range", "the server does not support HTTP Range requests (it sent the whole file)"
    for e, text in texts:  # a name that does not resolve, anywhere in the chain, before "cannot connect"
        if isinstance(e, socket.gaierror) or any(marker in text for marker in _DNS):
            return "offline", f"cannot resolve the host, offline or DNS failure ({e})"
    for e, text in texts:
        if isinstance(e, (ConnectionRefusedError, TimeoutError)) or any(marker in text for marker in _CONNECT):
            return "offline", f"cannot connect to the server, offline or the server is down ({e})"
    return None


def remote_failure_message(url: str, err: BaseException) -> str | None:
    """``URL: cause; what to do`` for a remote failure, or ``None`` when ``err`` is not one."""
    cause = remote_cause(err)
    if cause is None:
        return None
    kind, description = cause
    where = f"{url} (the hosted copy, read when no data_dir= is given)" if url.startswith(HOSTED_ROOT) else url
    return f"{where}: {description}; {_HINTS[kind]}"


def diagnose_root(root: str, probe_path: str, download_config=None) -> str | None:
    """Why a remote root shows no files: ask for ``probe_path`` under it and explain the failure (if any)."""
    from .remote import url_to_fs

    try:
        fs, path = url_to_fs(root, download_config)
        fs.info(f"{path.rstrip('/')}/{probe_path}")
    except Exception as err:  # noqa: BLE001 - any client library's error: explained when recognised (not a 404)
        return remote_failure_message(root, err)
    return None
