"""Rewrite webdataset tars member by member, and Zarr zip files whole, with the authors' stack (zarr 2.18); run in a
zarr 2 environment.

    python authors_tars.py IN_ROOT OUT_ROOT

Every ``<key>.zarr.zip`` member of every tar under ``IN_ROOT``, and every ``*.zarr.zip`` file there (the Zarr
release: one chunk per timestamp holding all of the file's samples), is opened with xarray, its encodings dropped
(so zarr 2's defaults apply: Blosc-LZ4 level 5 with byte shuffle, zarr 2's fill values, xarray's CF attributes),
then written as the release's were: ``to_zarr`` into a directory store (Zarr v2, consolidated), one chunk per
timestamp, the timestamps as int64 nanoseconds since the epoch, and the directory zipped with stored entries in
the order ``os.walk`` finds them. The values stay those of the input; the bytes are what zarr 2 writes. The split
lists (``splits/*.txt``) and the metadata (``*.parquet``) are copied. Nothing of ``ssl4eos12`` is imported: that
environment does not have it.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import xarray as xr
import zarr  # noqa: F401 - zarr 2 must be what xarray writes with

NANOSECONDS = {"units": "nanoseconds since 1970-01-01", "dtype": "int64"}


def rewrite(data: bytes, work: Path) -> bytes:
    source = work / "in.zarr.zip"
    source.write_bytes(data)
    with xr.open_zarr(str(source), consolidated=True) as ds:
        ds = ds.load()
    for variable in ds.variables.values():
        variable.encoding = {}
    encoding = {}
    for name, variable in ds.variables.items():
        settings = {}
        if "time" in variable.dims:
            settings["chunks"] = tuple(1 if d == "time" else n for d, n in zip(variable.dims, variable.shape))
        if variable.dtype.kind == "M":
            settings.update(NANOSECONDS)
        if settings:
            encoding[name] = settings
    target = work / "out.zarr"
    if target.exists():
        for root, dirs, files in os.walk(target, topdown=False):
            for f in files:
                os.remove(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
    ds.to_zarr(str(target), mode="w", consolidated=True, encoding=encoding)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for root, _, files in os.walk(target):
            for f in files:
                path = Path(root) / f
                zf.write(path, path.relative_to(target).as_posix())
    return buffer.getvalue()


def rewrite_tar(path: Path, out: Path, work: Path) -> None:
    with tarfile.open(path) as src, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src:
            data = rewrite(src.extractfile(info).read(), work)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def rewrite_zip(path: Path, out: Path, work: Path) -> None:
    out.write_bytes(rewrite(path.read_bytes(), work))


def main(in_root: str, out_root: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for pattern, write in (("*.tar", rewrite_tar), ("*.zarr.zip", rewrite_zip)):
            for path in sorted(Path(in_root).rglob(pattern)):
                out = Path(out_root) / path.relative_to(in_root)
                if out.exists():
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                partial = out.with_suffix(".partial")
                write(path, partial, Path(tmp))
                os.replace(partial, out)
        for copied in [*Path(in_root).glob("*.parquet"), *Path(in_root).glob("splits/*.txt")]:
            out = Path(out_root) / copied.relative_to(in_root)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(copied.read_bytes())


if __name__ == "__main__":
    main(*sys.argv[1:3])
