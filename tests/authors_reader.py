"""Read files the way the dataset's authors do; run by ``test_authors_stack.py`` in its zarr 2.18 environment.

Nothing of ``ssl4eos12`` is imported here (that environment does not have it). Two readers, as the authors':
- raw: ``zarr.open_consolidated`` and each array read as it is stored (their webdataset loader reads a tar
  member so, over ``fsspec``'s zip filesystem, and takes ``time`` as datetime64[ns] values);
- xarray: ``xr.open_zarr`` (their README for the Zarr zips, with zarr 2.18 pinned).
Every array is read twice: zarr 2 hands out uninitialised memory for a chunk that is not stored when the fill
value is null, which a second read shows as different bytes.

Usage: ``python authors_reader.py JOBS.json``, a list of ``{"kind": "zip" | "tar", "path": ..., "out": ...}``.
A zip's arrays go to ``OUT.npz``, its arrays' attributes and the reads that failed to ``OUT.json``
(``{"attrs": {NAME: {...}}, "errors": [...]}``); a tar's members to ``OUT/KEY.npz`` and ``.json``.
npz keys: ``raw0:NAME``, ``raw1:NAME``, ``xr0:NAME``, ``xr1:NAME``.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import xarray as xr
import zarr


def read_twice(store) -> tuple[dict[str, np.ndarray], dict]:
    """Every array, raw and through xarray, twice; what fails to read is reported rather than ending the run."""
    arrays, info = {}, {"attrs": {}, "errors": []}
    for k in range(2):
        for kind, read in (("raw", read_raw), ("xr", read_xarray)):
            try:
                arrays.update({f"{kind}{k}:{name}": values for name, values in read(store, info["attrs"]).items()})
            except Exception as error:  # noqa: BLE001 - the test shows it, for every file that fails
                info["errors"].append(f"{kind} read {k + 1}: {type(error).__name__}: {error}")
    return arrays, info


def read_raw(store, attrs: dict) -> dict[str, np.ndarray]:
    group = zarr.open_consolidated(store, mode="r")
    attrs.update({name: dict(array.attrs) for name, array in group.arrays()})
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def read_xarray(store, attrs: dict) -> dict[str, np.ndarray]:
    with xr.open_zarr(store, consolidated=True) as ds:
        return {name: np.asarray(variable.values) for name, variable in ds.variables.items()}


def save(out: Path, arrays: dict, info: dict) -> None:
    np.savez(out.with_suffix(".npz"), **arrays)
    out.with_suffix(".json").write_text(json.dumps(info))


def read_tar(path: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            store = fsspec.filesystem("zip", fo=io.BytesIO(data)).get_mapper("")
            save(out / member.name.split(".", 1)[0], *read_twice(store))


def main(jobs_path: str) -> None:
    for job in json.loads(Path(jobs_path).read_text()):
        if job["kind"] == "zip":  # zarr 2 opens a path ending in .zip as a ZipStore
            save(Path(job["out"]), *read_twice(job["path"]))
        else:
            read_tar(job["path"], Path(job["out"]))


if __name__ == "__main__":
    main(sys.argv[1])
