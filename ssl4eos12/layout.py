"""The folder layout of SSL4EO-S12 v1.1: which files make up a split.

A split's files are, in order of preference: the names in ``splits/ssl4eos12_{train,val}.txt`` (no
directory listing needed, so plain HTTP mirrors work), the ``file`` column of the authors' GeoParquet
index ``splits/{train,val}_metadata.parquet``, or a listing of ``{train,val}/{MODALITY}/*.zarr.zip``.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow.parquet as pq

from .constants import ZARR_ZIP_SUFFIX, split_list_path, split_metadata_path
from .remote import is_remote, url_to_fs


class SSL4EOS12DataError(FileNotFoundError):
    """The data root holds no SSL4EO-S12 data for what was asked (or is not a data root at all)."""


def normalize_root(root: str | os.PathLike) -> str:
    """A data root as this package uses it: local paths absolute, no trailing slash."""
    root = os.fspath(root)
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    return root.rstrip("/")


def list_split_files(root: str, split_folder: str, modality: str, download_config=None) -> list[str]:
    """File names of one split, or ``[]`` when the root has no such split."""
    fs, root_path = url_to_fs(root, download_config)
    if not is_remote(root) and not fs.isdir(root_path):
        raise SSL4EOS12DataError(f"{root}: data directory does not exist")
    split_dir = posixpath.join(root_path, split_folder)
    # A local copy often holds only some splits while the lists name all of them.
    if not is_remote(root) and not fs.isdir(split_dir):
        return []
    list_file = posixpath.join(root_path, split_list_path(split_folder))
    if fs.exists(list_file):
        with fs.open(list_file, "rt") as f:
            return [line.strip() for line in f if line.strip()]
    metadata_file = posixpath.join(root_path, split_metadata_path(split_folder))
    if fs.exists(metadata_file):
        with fs.open(metadata_file, "rb") as f:
            names = pq.read_table(f, columns=["file"]).column("file").to_pylist()
        return list(dict.fromkeys(names))  # unique, in order of first appearance
    modality_dir = posixpath.join(split_dir, modality)
    if not fs.exists(modality_dir):
        return []
    return sorted(posixpath.basename(p) for p in fs.ls(modality_dir, detail=False) if p.endswith(ZARR_ZIP_SUFFIX))
