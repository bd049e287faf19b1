"""fsspec file systems for local and remote roots, with ``datasets``' authentication and retries.

``datasets`` keeps per-protocol storage options in ``DownloadConfig.storage_options`` and the Hub token in
``DownloadConfig.token``; the same conventions apply here, so ``load_dataset(..., token=...,
storage_options=...)`` reaches every file this package opens.
"""

from __future__ import annotations

import io
import os

import fsspec


def url_to_fs(url: str, download_config=None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and path for ``url`` (a local path or any fsspec URL)."""
    from datasets import config as datasets_config

    protocol = url.split("://", 1)[0] if "://" in url else "file"
    storage_options = dict((download_config.storage_options or {}).get(protocol, {})) if download_config else {}
    if protocol == "hf":
        token = download_config.token if download_config else None
        storage_options = {"endpoint": datasets_config.HF_ENDPOINT, "token": token, **storage_options}
    elif protocol in ("http", "https"):
        storage_options.setdefault("client_kwargs", {"trust_env": True})  # honour proxy settings, as datasets does
    return fsspec.url_to_fs(url, **storage_options)


def open_remote(url: str, download_config=None, whole: bool = True):
    """Open a remote file for random access, with ``datasets``' read retries.

    ``whole=True`` fetches the whole file in one request into memory: a location's example needs every
    chunk of the file, and zipfile's many small header reads would otherwise each cost a round trip.
    ``whole=False`` reads exactly what is asked (no read-ahead, which would fetch bytes twice), for
    looking at metadata only.
    """
    from datasets.utils import file_utils

    fs, path = url_to_fs(url, download_config)
    remote_file = fs.open(path, "rb", cache_type="none")
    # datasets' own policy for streamed files: config.STREAMING_READ_MAX_RETRIES / STREAMING_READ_RETRY_INTERVAL
    remote_file = file_utils._add_retries_to_file_obj_read_method(remote_file)
    if not whole:
        return remote_file
    with remote_file:
        return io.BytesIO(remote_file.read())


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def normalize_root(root: str | os.PathLike) -> str:
    """A data root as this package uses it: local paths absolute, no trailing slash."""
    root = os.fspath(root)
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    return root.rstrip("/")
