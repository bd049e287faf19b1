"""Generated files read the same through the authors' stack (zarr 2.18, xarray on it, their webdataset loader's
raw reads) as through ``ssl4eos12`` and through xarray on zarr 3.

The authors' stack runs in its own virtual environment (``.venv-zarr2/`` at the repository root, made once with
pip from PyPI): zarr 2 and zarr 3 cannot share one. ``authors_reader.py`` reads there what ``ssl4eos12.synth``
wrote here; this file compares every array, value for value and dtype for dtype. Without PyPI the tests skip,
except under ``CI``, where they fail.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import arrow_rows, assert_identical, open_with_xarray
from datasets import load_dataset
from reference import assert_example_equal, expected_examples, split_files

import ssl4eos12  # registers the builder
from ssl4eos12.constants import MODALITIES, WEBDATASET_MODALITIES
from ssl4eos12.synth import synthesize
from ssl4eos12.synth.webdataset import synthesize_webdataset

VENV = Path(__file__).resolve().parents[1] / ".venv-zarr2"
#: The authors' pin, zarr 2.18 (their README), with numcodecs, xarray and pandas releases of its time: pinned
#: so that the environment, once made, stays what the files were checked against.
REQUIREMENTS = ("zarr>=2.18,<3", "numcodecs<0.16", "xarray>=2024.10,<2025.7", "pandas<3", "fsspec", "numpy")
READER = Path(__file__).with_name("authors_reader.py")
#: Rewrites tars member by member as the authors' stack writes them (zarr 2's defaults): the benchmark's generator.
WRITER = Path(__file__).resolve().parents[1] / "benchmarks" / "authors_tars.py"
#: What the release stores in a member's ``time`` (and the Zarr zips in ``time_``), per the authors' loader.
NANOSECONDS = "nanoseconds since 1970-01-01"
ZARR_MODALITIES = (*MODALITIES, "NDVI")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must test with the authors' stack: {reason}")
    pytest.skip(f"no zarr 2 environment (PyPI needed once): {reason}")


def _build_venv(target: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True, text=True)
    subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--retries", "1", "--timeout", "20", *REQUIREMENTS], check=True, capture_output=True, text=True)
    (target / "requirements.txt").write_text("\n".join(REQUIREMENTS))


@pytest.fixture(scope="session")
def zarr2_python() -> Path:
    """The zarr 2 environment's Python, made once (and again when REQUIREMENTS change)."""
    python = VENV / "bin" / "python"
    stamp = VENV / "requirements.txt"
    if stamp.exists() and stamp.read_text() == "\n".join(REQUIREMENTS):
        return python
    partial = VENV.with_name(f"{VENV.name}.partial-{os.getpid()}")
    try:
        _build_venv(partial)
    except (subprocess.CalledProcessError, OSError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        detail = getattr(error, "stderr", None) or str(error)
        _unavailable(detail.strip().splitlines()[-1] if detail.strip() else repr(error))
    # built aside and moved in whole, so an interrupted build never passes for a finished one
    shutil.rmtree(VENV, ignore_errors=True)
    try:
        os.replace(partial, VENV)
    except OSError:  # another test session moved its own in first
        shutil.rmtree(partial, ignore_errors=True)
    return python


@pytest.fixture(scope="module")
def zarr_root(tmp_path_factory) -> Path:
    """One location per file, so a clear timestamp is a cloud-mask chunk of zeros (the case zarr 2 got wrong)."""
    return synthesize(tmp_path_factory.mktemp("authors-zarr"), splits=("validation",), files=3, samples=1,
                      size=16, modalities=ZARR_MODALITIES)


@pytest.fixture(scope="module")
def tar_root(tmp_path_factory) -> Path:
    return synthesize_webdataset(tmp_path_factory.mktemp("authors-wds"), splits=("validation",), files=1,
                                 samples=3, size=16)


def zips(root: Path) -> list[Path]:
    return [root / "val" / m / name for m in ZARR_MODALITIES for name in split_files(root, "validation")]


def tars(root: Path) -> list[Path]:
    return sorted((root / "val").glob("*/*.tar"))


@pytest.fixture(scope="module")
def authors_reads(zarr2_python, zarr_root, tar_root, tmp_path_factory) -> Path:
    """Everything the authors' stack reads from both roots, under a folder that mirrors their paths."""
    out = tmp_path_factory.mktemp("authors-reads")
    jobs = [{"kind": "zip", "path": str(p), "out": str(out / "zarr" / p.relative_to(zarr_root).parent / p.name.split(".")[0])}
            for p in zips(zarr_root)]
    jobs += [{"kind": "tar", "path": str(p), "out": str(out / "wds" / p.relative_to(tar_root).with_suffix(""))}
             for p in tars(tar_root)]
    for job in jobs:
        Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
    (out / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([str(zarr2_python), str(READER), str(out / "jobs.json")], check=True, timeout=120)
    return out


class Read:
    """One file's reads by the authors' stack: ``raw`` (zarr 2 arrays) and ``xr`` (xarray on zarr 2), each twice."""

    def __init__(self, stem: Path):
        self.stem = stem
        with np.load(stem.with_suffix(".npz")) as npz:
            self.arrays = {key: npz[key] for key in npz.files}
        info = json.loads(stem.with_suffix(".json").read_text())
        self.attrs, self.errors = info["attrs"], info["errors"]

    def reads(self, kind: str) -> list[dict[str, np.ndarray]]:
        return [{key.split(":", 1)[1]: v for key, v in self.arrays.items() if key.startswith(f"{kind}{k}:")}
                for k in range(2)]

    @property
    def xr(self) -> dict[str, np.ndarray]:
        assert self.errors == [], f"{self.stem.name}: the authors' stack cannot read it: {self.errors}"
        return self.reads("xr")[0]


def assert_all_identical(actual: dict, expected: dict, where: str) -> None:
    assert set(actual) == set(expected), f"{where}: {sorted(set(actual) ^ set(expected))}"
    for name, value in expected.items():
        assert_identical(actual[name], value, f"{where}:{name}")


def zarr3_reads(data: bytes | Path, tmp_path: Path) -> tuple[dict, dict]:
    """The same file read here: raw arrays through zarr 3, variables through xarray on zarr 3."""
    path = data if isinstance(data, Path) else tmp_path / "member.zarr.zip"
    if not isinstance(data, Path):
        path.write_bytes(data)
    with zarr.storage.ZipStore(path, mode="r") as store:
        group = zarr.open_group(store, mode="r")
        raw = {name: np.asarray(array[...]) for name, array in group.arrays()}
    ds = open_with_xarray(path)
    return raw, {name: np.asarray(variable.values) for name, variable in ds.variables.items()}


def assert_reads_agree(read: Read, data: bytes | Path, where: str, tmp_path: Path) -> None:
    assert read.errors == [], f"{where}: the authors' stack cannot read it: {read.errors}"
    raw, variables = zarr3_reads(data, tmp_path)
    for k, (authors_raw, authors_xr) in enumerate(zip(read.reads("raw"), read.reads("xr"))):
        assert_all_identical(authors_raw, raw, f"{where} raw read {k + 1} (zarr 2 vs zarr 3)")
        assert_all_identical(authors_xr, variables, f"{where} xarray read {k + 1} (zarr 2 vs zarr 3)")


def assert_nanosecond_times(read: Read, name: str, where: str) -> None:
    """The stored times are int64 nanoseconds since the epoch: the raw values ARE the datetime64[ns] values."""
    raw = read.reads("raw")[0][name]
    assert raw.dtype == np.int64, f"{where}:{name} stored as {raw.dtype}"
    assert read.attrs[name].get("units") == NANOSECONDS, f"{where}:{name} units {read.attrs[name].get('units')!r}"
    assert_identical(raw.view("datetime64[ns]"), read.xr[name], f"{where}:{name} raw vs decoded")


# -- the Zarr zips: xarray's open_zarr on zarr 2.18 -------------------------------------------------------------

def test_zarr_zips_read_the_same_with_zarr2(zarr_root, authors_reads, tmp_path):
    for path in zips(zarr_root):
        where = str(path.relative_to(zarr_root))
        read = Read(authors_reads / "zarr" / path.relative_to(zarr_root).parent / path.name.split(".")[0])
        assert_reads_agree(read, path, where, tmp_path)
        assert_nanosecond_times(read, "time_", where)


def zarr_expected(root: Path, reads: Path):
    """The builder's examples of ``root``'s validation split, built from the authors' xarray reads."""
    for name in split_files(root, "validation"):
        files = {m: Read(reads / "zarr" / "val" / m / name.split(".")[0]).xr for m in ZARR_MODALITIES}
        first = files[ZARR_MODALITIES[0]]
        for i, sample in enumerate(first["sample"]):
            example = {"sample": str(sample), "file": name, "center_lat": first["center_lat"][i],
                       "center_lon": first["center_lon"][i], "crs": first["crs"][i]}
            for m, a in files.items():
                assert a["sample"][i] == sample, f"{name}: {m} holds other locations"
                example[m] = a["bands"][i]
                if "cloud_mask" in a:
                    example[f"{m}_cloud_mask"] = a["cloud_mask"][i]
                example[f"{m}_time"] = a["time_"][i]
                example[f"{m}_file_id"] = a["file_id"][i].tolist()
                example[f"{m}_x"], example[f"{m}_y"] = a["x_"][i], a["y_"][i]
            yield example


def test_builder_yields_what_zarr2_reads_from_zarr_zips(zarr_root, authors_reads):
    streamed = load_dataset("ssl4eos12", modalities=list(ZARR_MODALITIES), data_dir=str(zarr_root),
                            split="validation", streaming=True)
    assert_examples(arrow_rows(streamed), list(zarr_expected(zarr_root, authors_reads)))


def assert_examples(actual, expected) -> None:
    actual = list(actual)
    assert len(actual) == len(expected) > 0
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"example {i}")


# -- the tars: the authors' webdataset loader (raw zarr.open_consolidated over fsspec's zip filesystem) ----------

def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name.split(".", 1)[0], tar.extractfile(m).read()) for m in tar.getmembers()]


def test_tar_members_read_the_same_with_zarr2(tar_root, authors_reads, tmp_path):
    for path in tars(tar_root):
        for key, data in tar_members(path):
            where = f"{path.relative_to(tar_root)}:{key}"
            read = Read(authors_reads / "wds" / path.relative_to(tar_root).with_suffix("") / key)
            assert_reads_agree(read, data, where, tmp_path)
            assert_nanosecond_times(read, "time", where)
            if path.parent.name == "DEM":  # one timestamp, 0: no date
                assert read.reads("raw")[0]["time"].tolist() == [0]


def tar_expected(root: Path, reads: Path):
    """The builder's examples of ``root``'s validation split, built from the authors' xarray reads."""
    for name in sorted(p.name for p in (root / "val" / WEBDATASET_MODALITIES[0]).glob("*.tar")):
        keys = [key for key, _ in tar_members(root / "val" / WEBDATASET_MODALITIES[0] / name)]
        for key in keys:
            files = {m: Read(reads / "wds" / "val" / m / name.split(".")[0] / key).xr for m in WEBDATASET_MODALITIES}
            first = files[WEBDATASET_MODALITIES[0]]
            example = {"sample": str(first["sample"]), "file": name, "key": key, "center_lat": first["center_lat"],
                       "center_lon": first["center_lon"], "crs": first["crs"]}
            for m, a in files.items():
                example[m] = a["bands"]
                example[f"{m}_time"] = a["time"]
                example[f"{m}_x"], example[f"{m}_y"] = a["x_"], a["y_"]
                for field in ("cloud_mask", "esri_original"):
                    if field in a:
                        example[f"{m}_{field}"] = a[field]
                if "file_id" in a:
                    example[f"{m}_file_id"] = a["file_id"].tolist()
            yield example


def test_builder_yields_what_zarr2_reads_from_tars(tar_root, authors_reads):
    streamed = load_dataset("ssl4eos12", modalities=list(WEBDATASET_MODALITIES), data_dir=str(tar_root),
                            split="validation", streaming=True)
    assert_examples(arrow_rows(streamed), list(tar_expected(tar_root, authors_reads)))


# -- the cause, independent of what uninitialised memory happens to hold ----------------------------------------

def stored_chunks_missing(data: bytes | Path) -> list[str]:
    """Chunks that the consolidated metadata's arrays have and the zip does not store."""
    with zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        metadata = json.loads(zf.read(".zmetadata"))["metadata"]
    missing = []
    for key, zarray in metadata.items():
        if not key.endswith("/.zarray"):
            continue
        grid = [-(-n // c) for n, c in zip(zarray["shape"], zarray["chunks"])]
        sep = zarray.get("dimension_separator", ".")
        for index in np.ndindex(*grid):
            chunk = f"{key[:-len('/.zarray')]}/{sep.join(map(str, index)) if index else '0'}"
            if chunk not in names:
                missing.append(chunk)
    return missing


def zero_time_steps(path: Path) -> int:
    """Timestamps at which a file's cloud mask is all 0 (clear land): a chunk of zeros, which zarr 3 skips."""
    masks = open_with_xarray(path)["cloud_mask"].values
    return int((masks.max(axis=(0, 2, 3)) == 0).sum())


def test_every_chunk_is_stored(zarr_root, tar_root):
    """zarr 2 reads a chunk that is not stored as the fill value, and with the null fill value of the real files'
    integer arrays as uninitialised memory: so every chunk is written, as zarr 2's writers did."""
    assert sum(zero_time_steps(p) for p in zips(zarr_root) if p.parent.name == "S2L2A"), "no chunk of zeros to test"
    for path in zips(zarr_root):
        assert stored_chunks_missing(path) == [], path
    for path in tars(tar_root):
        for key, data in tar_members(path):
            assert stored_chunks_missing(data) == [], f"{path}:{key}"


# -- members written by the authors' stack (zarr 2.18's defaults, a zipped directory store) ---------------------

@pytest.fixture(scope="module")
def zarr2_written_root(zarr2_python, tar_root, tmp_path_factory) -> Path:
    """``tar_root``'s tars with every member rewritten by zarr 2.18 (``benchmarks/authors_tars.py``): its Blosc
    settings, fill values and attributes, the entries in a directory walk's order."""
    out = tmp_path_factory.mktemp("zarr2-written") / "wds"
    subprocess.run([str(zarr2_python), str(WRITER), str(tar_root), str(out)], check=True, timeout=300)
    return out


def test_members_written_by_zarr2_take_the_direct_path_and_read_as_xarray(zarr2_written_root, tar_root, tmp_path):
    from test_zipmember import read_both

    from ssl4eos12.sources import webdataset, zipmember

    before = webdataset.fallbacks()
    for path in tars(zarr2_written_root):
        members = tar_members(path)
        originals = dict(tar_members(tar_root / path.relative_to(zarr2_written_root)))
        assert len({id(zipmember.template(data)[0]) for _, data in members}) == 1, f"{path}: one layout, one template"
        for key, data in members:
            assert data != originals[key], f"{path}:{key}: not rewritten"
            with zipfile.ZipFile(io.BytesIO(data)) as zf:  # zarr 2's defaults, not synth's settings
                metadata = json.loads(zf.read(".zmetadata"))["metadata"]
            assert metadata["bands/.zarray"]["compressor"]["clevel"] == 5
            _, values = read_both(f"{path.relative_to(zarr2_written_root)}:{key}", path.parent.name, data, tmp_path)
            assert values["time_"].dtype == np.dtype("datetime64[ns]")
    assert webdataset.fallbacks() == before, "a member written by zarr 2 fell back to xarray"


def test_builder_yields_the_same_from_tars_written_by_zarr2(zarr2_written_root, tar_root):
    def examples(root):
        return list(arrow_rows(load_dataset("ssl4eos12", modalities=list(WEBDATASET_MODALITIES), data_dir=str(root),
                                            split="validation", streaming=True)))

    assert_examples(examples(zarr2_written_root), examples(tar_root))


@pytest.fixture(scope="module")
def zarr2_written_zips(zarr2_python, zarr_root, tmp_path_factory) -> Path:
    """``zarr_root``'s Zarr zip files rewritten whole by zarr 2.18 (``benchmarks/authors_tars.py``, the benchmark's
    authors'-stack Zarr files): one chunk per timestamp, zarr 2's Blosc settings, a directory walk's entry order."""
    out = tmp_path_factory.mktemp("zarr2-written") / "zarr"
    subprocess.run([str(zarr2_python), str(WRITER), str(zarr_root), str(out)], check=True, timeout=300)
    return out


def test_loader_gives_what_xarray_reads_from_zarr_files_written_by_zarr2(zarr2_written_zips, zarr_root):
    from test_loader import examples_of

    for path in zips(zarr2_written_zips):
        original = zarr_root / path.relative_to(zarr2_written_zips)
        assert path.read_bytes() != original.read_bytes(), f"{path}: not rewritten"
        with zipfile.ZipFile(path) as zf:  # zarr 2's defaults and its directory walk, not synth's settings
            consolidated = json.loads(zf.read(".zmetadata"))
            assert zf.namelist()[:3] == [".zgroup", ".zattrs", ".zmetadata"], path
        assert consolidated["zarr_consolidated_format"] == 1
        assert consolidated["metadata"]["bands/.zarray"]["compressor"]["clevel"] == 5
    modalities = list(MODALITIES)
    loader = ssl4eos12.Loader("all", data_dir=str(zarr2_written_zips), split="validation", modalities=modalities,
                              batch_size=2, shuffle=False, numpy=True, num_threads=2)
    actual = examples_of(loader)
    expected = list(expected_examples(zarr2_written_zips, "validation", modalities))
    assert len(actual) == len(expected) == len(split_files(zarr_root, "validation"))
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"example {i}")
    originals = list(expected_examples(zarr_root, "validation", modalities))  # the values are the synth's
    for i, (e, o) in enumerate(zip(expected, originals)):
        assert_example_equal(e, o, f"example {i}, against the original file")
