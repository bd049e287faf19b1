#!/usr/bin/env python
"""Measure ssl4eos12 against its physical ceilings and against the authors' loader, in one run.

    python benchmarks/run.py                # generate data if missing, run every row, print the table,
                                            # rewrite README.md's benchmark section, write benchmarks/results.json
    python benchmarks/run.py --only stream:S2L2A,blosc:S2L2A --no-readme

Full-size generated files (``ssl4eos12.synth``: 64 samples x 4 times x 264 x 264, every modality) go to
``benchmarks/data/`` (gitignored) when missing. Every row runs in a fresh subprocess (``--row NAME``) so its
peak RSS is its own; the page cache is warmed first, so rows compare decoding, not the disk. Each row makes
one warm-up pass over the files and then ``--repeat`` timed passes; the table shows the best pass and every
figure as a ratio to the Blosc-decode ceiling of the same files measured in the same run. See
``benchmarks/README.md`` for what each row measures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
README = REPO / "README.md"
RESULTS = HERE / "results.json"
START, END = "<!-- BENCHMARK:START -->", "<!-- BENCHMARK:END -->"
SPLIT_FOLDER = "val"
MODALITIES = ("S1GRD", "S2L1C", "S2L2A", "S2RGB")
GROUPS = {"S2L2A": ("S2L2A",), "all": MODALITIES}
MB = 1e6


def _cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: Decode threads of the training-loader rows: 1, 2, 4, ... and the machine's cores.
LOADER_THREADS = sorted({2 ** k for k in range(8) if 2 ** k < _cores()} | {_cores()})

# ----------------------------------------------------------------------------------------------------------------
# Rows: (name, data group, label, target)   -- run in order; "published" rows need "convert"'s output
# ----------------------------------------------------------------------------------------------------------------

ROWS = [
    ("zipread:S2L2A", "S2L2A", "ceiling: read every zip member (zipfile)", None),
    ("blosc:S2L2A", "S2L2A", "**ceiling: Blosc-decode every chunk** (reference)", None),
    ("blosc-procs:S2L2A", "S2L2A", (f"ceiling: the same in {_cores()} processes (one per core) x 1 Blosc thread: "
                                    "the machine's aggregate decode ceiling"), None),
    ("zarr:S2L2A", "S2L2A", "ceiling: zarr, every array into numpy", None),
    ("authors:S2L2A", "S2L2A", "authors' loader: xr.open_zarr + .bands.values (dask)", None),
    ("stream:S2L2A", "S2L2A", "ours: builder streaming, no format", "≥ 0.6× ceiling, ≥ 1.2× authors"),
    *((f"loader-t{n}:S2L2A", "S2L2A", f"ours: ssl4eos12.Loader(batch 8, shuffled), {n} decode thread{'s' * (n > 1)}",
       "best ≥ 0.7× aggregate ceiling" if n == LOADER_THREADS[-1] else None) for n in LOADER_THREADS),
    ("resume:S2L2A", "S2L2A", (f"ours: ssl4eos12.Loader({LOADER_THREADS[-1]} threads) resumed mid-epoch by "
                               "load_state_dict, the rest of the epoch"), None),
    ("torch:S2L2A", "S2L2A", "ours: streaming → DataLoader(batch 8, ssl4eos12.collate), 0 workers", None),
    ("torch1:S2L2A", "S2L2A", "ours: same, 1 worker", None),
    ("torch2:S2L2A", "S2L2A", "ours: same, 2 workers", "≥ 1.3× 0 workers"),
    ("prepare:S2L2A", "S2L2A", "ours: download_and_prepare (load_dataset, not streaming, into Arrow)", None),
    ("published-arrow:S2L2A", "S2L2A", "ours: stream the published copy (plain datasets), with_format('arrow') + arrow_to_numpy", "≥ 0.5× ceiling"),
    ("published-rows:S2L2A", "S2L2A", "ours: stream the published copy (plain datasets), no format (Python rows)", None),
    ("curl:S2L2A", "S2L2A", "wire ceiling: `curl` of every file from nginx on 127.0.0.1 (file MB/s)", None),
    ("fetch:S2L2A", "S2L2A", "ours: `remote.fetch` of every file from nginx (file MB/s)", "≥ 0.8× curl"),
    ("http:S2L2A", "S2L2A", "ours: builder streaming over HTTP from nginx on 127.0.0.1", "≥ 0.8× local streaming"),
    ("hf:S2L2A", "S2L2A", "ours: builder streaming `hf://` from the local Hub server (tests/servers.py)", None),
    ("zipread:all", "all", "ceiling: read every zip member (zipfile)", None),
    ("blosc:all", "all", "**ceiling: Blosc-decode every chunk** (reference)", None),
    ("zarr:all", "all", "ceiling: zarr, every array into numpy", None),
    ("authors:all", "all", "authors' loader: xr.open_zarr + .bands.values (dask), each modality", None),
    ("stream:all", "all", "ours: builder streaming, no format", "≥ 0.6× ceiling, ≥ 1.2× authors; RSS ≤ 1.5× a file"),
    ("torch:all", "all", "ours: streaming → DataLoader(batch 8, ssl4eos12.collate), 0 workers", None),
    ("convert:all", "all", "ours: `ssl4eos12 convert` (every config), 1 worker", "≥ 0.3× ceiling per worker"),
    ("wds:S2L2A", "S2L2A", "ours: builder streaming the webdataset tars (same sizes), no format", "≥ 0.6× ceiling"),
    ("wdshttp:S2L2A", "S2L2A", "ours: webdataset tars over HTTP from nginx on 127.0.0.1", "≥ 0.8× local tars"),
    ("wds:all", "all", "ours: builder streaming the webdataset tars (same sizes), no format", "≥ 0.6× ceiling"),
    ("wdsrandom:S2L2A", "S2L2A", ("ours: random `ssl4eos12.Locations[i]` over HTTP from nginx (indexed tars): "
                                  "locations/s; bytes sent per member byte in the note"), None),
    ("wdsselect:S2L2A", "S2L2A", ("ours: a 1% `samples=` selection streamed from nginx (indexed tars): bytes sent "
                                  "against the members' and against streaming the selected tars whole, in the note"),
     None),
    ("wdsloader:S2L2A", "S2L2A", "ours: ssl4eos12.Loader(batch 8, shuffled) on the webdataset tars, 2 threads",
     "≥ 0.6× aggregate ceiling"),
    ("wdsauthors-procs:S2L2A", "S2L2A", ("ceiling: the aggregate decode ceiling of the tars written by the authors' "
                                         "stack (zarr 2.18; benchmarks/tars.py)"), None),
    ("wdsauthors:S2L2A", "S2L2A", "ours: builder streaming the authors'-stack tars, no format", "≥ 0.5× their aggregate ceiling"),
    ("wdsauthorsloader:S2L2A", "S2L2A", "ours: ssl4eos12.Loader on the authors'-stack tars, 2 threads",
     "≥ 0.6× their aggregate ceiling"),
    ("wdsgil:S2L2A", "S2L2A", "ours: GIL held per member, Loader on the authors'-stack tars (py-spy --gil)", "≤ 0.5 ms"),
    ("zarrauthors-procs:S2L2A", "S2L2A", ("ceiling: the aggregate decode ceiling of the Zarr files rewritten by the "
                                          "authors' stack (zarr 2.18)"), None),
    ("zarrauthorsloader:S2L2A", "S2L2A", ("ours: ssl4eos12.Loader(batch 8, shuffled) on the authors'-stack Zarr files, "
                                         "2 threads"), "≥ 0.7× their aggregate ceiling"),
]
#: Run order: as shown, except that conversion runs before the rows that stream its output.
RUN_ORDER = sorted((name for name, *_ in ROWS), key=lambda n: (not n.startswith("convert"), [r[0] for r in ROWS].index(n)))


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by rows
# ----------------------------------------------------------------------------------------------------------------


def file_names(data: Path) -> list[str]:
    return [line.strip() for line in (data / "splits" / "ssl4eos12_val.txt").read_text().splitlines() if line.strip()]


def files_of(data: Path, group: str) -> list[tuple[str, Path]]:
    """(modality, path) of every file of a group, file by file."""
    return [(m, data / SPLIT_FOLDER / m / name) for name in file_names(data) for m in GROUPS[group]]


def is_chunk(member: str) -> bool:
    return not member.rsplit("/", 1)[-1].startswith(".")


def nbytes(value) -> int:
    """Bytes of what a path delivers: arrays by nbytes, strings by UTF-8 length, scalars 8."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.nbytes if value.dtype.kind not in "OUS" else sum(nbytes(v) for v in value.ravel().tolist())
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes):
        return len(value)
    if hasattr(value, "element_size") and hasattr(value, "numel"):  # torch.Tensor
        return value.element_size() * value.numel()
    if hasattr(value, "nbytes"):  # numpy scalars, pyarrow
        return int(value.nbytes)
    return 8


def bands_dtype(example: dict, group: str) -> str:
    value = example.get(GROUPS[group][-1] if group == "S2L2A" else "S2L2A")
    if value is None:
        return "?"
    return str(getattr(value, "dtype", type(value).__name__)).replace("torch.", "")


def current_rss() -> int:
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS:"))) * 1024
    return 0


def passes(fn, repeat: int) -> dict:
    """One warm-up pass (it also counts the bytes), then ``repeat`` timed passes."""
    rss_start = current_rss()  # after imports and load_dataset: the interpreter's baseline
    first = time.perf_counter()
    examples, decoded, extra = fn(True)
    times = [time.perf_counter() - first]
    cpu_times = []  # this process's CPU seconds (every thread) per pass: the machine is shared and noisy
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        count, _, _ = fn(False)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
        if count != examples:
            raise RuntimeError(f"pass delivered {count} examples, the first {examples}")
    return {"examples": examples, "bytes": decoded, "warmup": times[0], "times": times[1:] or times[:1],
            "cpu_times": cpu_times, "rss_start": rss_start, **extra}


def peak_rss() -> dict:
    """This process's peak RSS: VmHWM, else ``ru_maxrss`` (which Linux carries over from the parent across exec)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as f:
        peak = int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"peak_rss": peak, "peak_rss_children": children}


def hf_environment(work: Path) -> None:
    os.environ["HF_HOME"] = str(work / "hf")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf" / "datasets")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
    os.environ["TQDM_DISABLE"] = "1"


# ----------------------------------------------------------------------------------------------------------------
# The rows (each runs in its own subprocess)
# ----------------------------------------------------------------------------------------------------------------


def row_zipread(data: Path, group: str, repeat: int) -> dict:
    def one(count_bytes):
        total = 0
        for _, path in files_of(data, group):
            with zipfile.ZipFile(path) as zf:
                members = {info.filename: zf.read(info) for info in zf.infolist()}
            total += sum(len(v) for v in members.values())
            del members
        return locations(data), total, {}

    return passes(one, repeat)


def row_blosc(data: Path, group: str, repeat: int) -> dict:
    """Decode time only: each file's chunk members are read (untimed), then every chunk is decoded."""
    from numcodecs import blosc

    decode_times: list[float] = []

    def one(count_bytes):
        total, spent = 0, 0.0
        for _, path in files_of(data, group):
            with zipfile.ZipFile(path) as zf:
                chunks = [zf.read(info) for info in zf.infolist() if is_chunk(info.filename)]
            start = time.perf_counter()
            decoded = [blosc.decompress(chunk) for chunk in chunks]
            spent += time.perf_counter() - start
            total += sum(len(d) for d in decoded)
            del decoded, chunks
        decode_times.append(spent)
        return locations(data), total, {}

    result = passes(one, repeat)
    result["wall_times"] = [result["warmup"], *result["times"]]
    result["warmup"], result["times"] = decode_times[0], decode_times[1:] or decode_times[:1]
    result["blosc_threads"] = blosc.get_nthreads()
    return result


def loader_repeat(data: Path) -> int:
    """How many times the training-loader rows read each file per pass: a training epoch reads thousands of
    files, so a pass must measure the pipeline full rather than its start and drain. The loader draws its first
    batch once its shuffle window (4 files) is decoded and drains the last 4 files with its decoders idle: with
    8 files a pass, that start and drain were most of it (8 times, and at least four files per core)."""
    return max(8, -(-4 * _cores() // len(file_names(data))))


#: How many times the DataLoader rows read each file per pass: enough for every worker to read several files in
#: a pass (with the 2 files themselves, each of 2 workers read one and started afresh every pass).
DATALOADER_REPEAT = 4


def repeated_split(data: Path, repeat: int) -> str:
    """A ``train`` split of ``data`` whose list names every validation file ``repeat`` times (symlinks).

    Every modality of the data gets its folder: the builder probes the first split it finds for all the
    modalities of a config, so the other rows' configs must find theirs here too.
    """
    for m in (m for m in MODALITIES if (data / SPLIT_FOLDER / m).is_dir()):
        (data / "train" / m).mkdir(parents=True, exist_ok=True)
        for name in file_names(data):
            link = data / "train" / m / name
            if not link.is_symlink():
                link.symlink_to(Path("..") / ".." / SPLIT_FOLDER / m / name)
    (data / "splits" / "ssl4eos12_train.txt").write_text("".join(f"{n}\n" for _ in range(repeat) for n in file_names(data)))
    return "train"


def _decode_share(names: list[str], data: Path, group: str, conn) -> None:
    """A process of the aggregate ceiling: read its files' chunks (untimed), then decode them all on each "go"."""
    from numcodecs import blosc

    blosc.use_threads = False  # one Blosc thread in this process, whatever numcodecs' default
    chunks = {}
    for name in dict.fromkeys(names):
        chunks[name] = []
        for m in GROUPS[group]:
            with zipfile.ZipFile(data / SPLIT_FOLDER / m / name) as zf:
                chunks[name] += [zf.read(info) for info in zf.infolist() if is_chunk(info.filename)]
    conn.send("ready")
    while conn.recv() == "go":
        start = time.process_time()
        decoded = sum(len(blosc.decompress(chunk)) for name in names for chunk in chunks[name])
        conn.send((decoded, time.process_time() - start))


def row_blosc_procs(data: Path, group: str, repeat: int) -> dict:
    """The machine's aggregate decode ceiling: one process per core, each decoding with one Blosc thread.

    A pass decodes every file loader_repeat() times, as the training-loader rows' passes read them; the files are
    dealt to the processes (more often when there are fewer than cores, so that every core decodes), and a pass
    ends when the last process has decoded its share.
    """
    import multiprocessing

    cores, names = _cores(), file_names(data)
    dealt = [names[i % len(names)] for i in range(max(cores, len(names) * loader_repeat(data)))]
    context = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for p in range(cores):
        parent, child = context.Pipe()
        proc = context.Process(target=_decode_share, args=(dealt[p::cores], data, group, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for conn in pipes:
            conn.recv()  # every process has read its chunks

        cpu_times = []

        def one(count_bytes):
            for conn in pipes:
                conn.send("go")
            decoded, cpu = zip(*(conn.recv() for conn in pipes))
            cpu_times.append(sum(cpu))
            return len(dealt) * locations(data) // len(names), sum(decoded), {}

        result = passes(one, repeat)
        result["cpu_times"] = cpu_times[1:]  # the processes' CPU seconds, not this (waiting) one's
    finally:
        for conn in pipes:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for proc in procs:
            proc.join(timeout=30)
    result.update(processes=cores, blosc_threads=1)
    return result


def batch_pass(loader, group: str, info: dict):
    """One pass over a loader of batches (dicts with a ``sample`` list): examples, and bytes when asked."""

    def one(count_bytes):
        count, total = 0, 0
        for batch in loader:
            count += len(batch["sample"])
            if count_bytes:
                total += nbytes(batch)
                info.setdefault("dtype", bands_dtype(batch, group))
        return count, total, info

    return one


def row_loader(data: Path, group: str, repeat: int, threads: int) -> dict:
    """``ssl4eos12.Loader``: one epoch per pass (every file loader_repeat() times, shuffled), batches of 8."""
    import ssl4eos12

    split = repeated_split(data, loader_repeat(data))
    loader = ssl4eos12.Loader(group, data_dir=str(data), split=split, batch_size=8, num_threads=threads)
    info = {"threads": threads, "pinned": loader.pin_memory, "note": f"files read {loader_repeat(data)}x per pass"}

    return passes(batch_pass(loader, group, info), repeat)


def row_resume(data: Path, group: str, repeat: int) -> dict:
    """What resuming costs: ``state_dict()`` (the first call fingerprints the data: one listing of the root; later
    calls reuse it), and the time to the first batch of a new ``Loader`` after ``load_state_dict`` against a fresh
    one's; each pass then reads the rest of the epoch (half of it) from the saved position."""
    import ssl4eos12

    split = repeated_split(data, loader_repeat(data))
    threads = LOADER_THREADS[-1]

    def make():
        return ssl4eos12.Loader(group, data_dir=str(data), split=split, batch_size=8, num_threads=threads)

    first = make()
    batches = iter(first)
    for _ in range(len(first) // 2):
        next(batches)
    start = time.perf_counter()
    state = first.state_dict()
    state_first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(100):
        first.state_dict()
    state_again = (time.perf_counter() - start) / 100
    batches.close()
    to_first = {"fresh": [], "resumed": []}
    for _ in range(3):
        for kind, times in to_first.items():
            start = time.perf_counter()
            loader = make()
            if kind == "resumed":
                loader.load_state_dict(state)
            it = iter(loader)
            next(it)
            times.append(time.perf_counter() - start)
            it.close()
    info = {"state_dict_first_s": state_first, "state_dict_s": state_again, "state_bytes": len(json.dumps(state)),
            "first_batch_fresh_s": min(to_first["fresh"]), "first_batch_resumed_s": min(to_first["resumed"]),
            "note": f"state_dict() {state_first * 1e3:.1f} ms the first time (the data's fingerprint), "
                    f"{state_again * 1e6:.0f} µs after, {len(json.dumps(state))} bytes of JSON; first batch "
                    f"{min(to_first['resumed']):.2f} s after load_state_dict vs {min(to_first['fresh']):.2f} s fresh "
                    f"(new Loader included)"}

    def one(count_bytes):
        loader = make()
        loader.load_state_dict(state)
        return batch_pass(loader, group, info)(count_bytes)

    return passes(one, repeat)


def row_zarr(data: Path, group: str, repeat: int) -> dict:
    import zarr

    def one(count_bytes):
        total = 0
        for _, path in files_of(data, group):
            store = zarr.storage.ZipStore(path, mode="r")
            root = zarr.open_consolidated(store, zarr_format=2, mode="r")
            arrays = [array[...] for _, array in root.arrays()]
            total += sum(a.nbytes for a in arrays)
            del arrays
            store.close()
        return locations(data), total, {}

    result = passes(one, repeat)
    result["zarr_config"] = {k: zarr.config.get(k) for k in ("async.concurrency", "threading.max_workers")}
    return result


def row_authors(data: Path, group: str, repeat: int) -> dict:
    """The authors' PyTorch dataset: ``xr.open_zarr(file)`` then ``.bands.values`` (dask chunks, default scheduler).

    Their ``xr.open_zarr(path)`` needs zarr 2; with zarr 3 the zip is opened through ``zarr.storage.ZipStore``.
    """
    import xarray as xr
    import zarr

    dtypes = set()

    def one(count_bytes):
        total, examples = 0, 0
        for name in file_names(data):
            for m in GROUPS[group]:
                store = zarr.storage.ZipStore(data / SPLIT_FOLDER / m / name, mode="r")
                ds = xr.open_zarr(store)
                bands = ds.bands.values
                dtypes.add(str(bands.dtype))
                total += bands.nbytes
                n = bands.shape[0]
                del bands
                ds.close()
                store.close()
            examples += n
        return examples, total, {}

    result = passes(one, repeat)
    result["dtype"] = "/".join(sorted(dtypes))
    return result


def locations(data: Path) -> int:
    """Locations (examples) in the files: samples per file, read from the metadata, times files."""
    modality = next(m for m in MODALITIES if (data / SPLIT_FOLDER / m).is_dir())
    with zipfile.ZipFile(data / SPLIT_FOLDER / modality / file_names(data)[0]) as zf:
        meta = json.loads(zf.read(".zmetadata"))["metadata"]
    return meta["sample/.zarray"]["shape"][0] * len(file_names(data))


def _load(config: str, **kwargs):
    from datasets import load_dataset

    import ssl4eos12  # noqa: F401  (registers the builder)

    kwargs.setdefault("split", "validation")
    return load_dataset("ssl4eos12", config, streaming=True, **kwargs)


def _iterate(dataset, group: str) -> callable:
    info = {}

    def one(count_bytes):
        count, total = 0, 0
        for example in dataset:
            count += 1
            if count_bytes:
                total += nbytes(example)
                info.setdefault("dtype", bands_dtype(example, group))
        return count, total, info

    return one


def row_stream(data: Path, group: str, repeat: int) -> dict:
    return passes(_iterate(_load(group, data_dir=str(data)), group), repeat)


def row_torch(data: Path, group: str, repeat: int, workers: int = 0) -> dict:
    from torch.utils.data import DataLoader

    import ssl4eos12

    split = repeated_split(data, DATALOADER_REPEAT)
    loader = DataLoader(_load(group, data_dir=str(data), split=split), batch_size=8, collate_fn=ssl4eos12.collate,
                        num_workers=workers)
    info = {"note": f"files read {DATALOADER_REPEAT}x per pass"}

    return passes(batch_pass(loader, group, info), repeat)


def row_torch1(data: Path, group: str, repeat: int) -> dict:
    return row_torch(data, group, repeat, workers=1)


def row_torch2(data: Path, group: str, repeat: int) -> dict:
    return row_torch(data, group, repeat, workers=2)


def row_prepare(data: Path, group: str, repeat: int) -> dict:
    """``load_dataset`` without streaming into a fresh cache_dir: read, decode, write Arrow, memory-map it."""
    from datasets import load_dataset

    import ssl4eos12  # noqa: F401

    work = Path(os.environ["BENCH_WORK"])
    info = {}
    streamed_bytes = {}

    def one(count_bytes):
        cache = Path(tempfile.mkdtemp(prefix="prepare-", dir=work))
        try:
            ds = load_dataset("ssl4eos12", group, data_dir=str(data), split="validation", cache_dir=str(cache))
            count = ds.num_rows
            info["arrow_bytes"] = ds.data.nbytes
            del ds
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if count_bytes:  # what it delivers: the streamed examples' bytes (same fields, same values)
            streamed_bytes["n"] = sum(nbytes(example) for example in _load(group, data_dir=str(data)))
        return count, streamed_bytes["n"], info

    result = passes(one, min(repeat, 2))
    result["dtype"] = "int16 (Arrow)"
    return result


def row_convert(data: Path, group: str, repeat: int) -> dict:
    """``ssl4eos12.publish.convert(data_dir, out_dir, splits=["validation"], workers=1)``: every config; kept for the
    "published" rows. The validation split only: the training-loader rows add a ``train`` split of the same files.

    A conversion of 4 TB runs for hours in the same processes: its rate is that of a running worker, so a first,
    untimed pass takes the process's one-time costs (imports, the kernel finding free huge pages for the first
    file-sized arrays: ~1 s of system time per S2 file on this VM, 0.1 s afterwards), as the ceiling's warm-up
    does; its time is kept as ``warmup``. Then the best of two passes, each into an empty folder."""
    from ssl4eos12.publish import convert

    out = Path(os.environ["BENCH_WORK"]) / "published"
    times, cpu_times = [], []
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        start, cpu = time.perf_counter(), time.process_time()
        manifest = convert(str(data), str(out), splits=["validation"], workers=1)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    shards = manifest["shards"]  # what it delivers: the Arrow bytes of every table written, every config
    modality_bytes = sum(s["num_bytes"] for s in shards if s["config"] in MODALITIES)
    total_bytes = sum(s["num_bytes"] for s in shards)
    rows = {}
    for shard in shards:
        rows[shard["config"]] = rows.get(shard["config"], 0) + shard["rows"]
    shard_bytes = sum(s["size"] for s in shards)
    return {"examples": locations(data), "bytes": total_bytes, "times": times[1:], "cpu_times": cpu_times[1:],
            "warmup": times[0], "workers": 1, "modality_bytes": modality_bytes, "rows": rows,
            "shard_bytes": shard_bytes, "dtype": "int16 (Arrow)"}


def _published_dataset():
    from datasets import load_dataset

    out = Path(os.environ["BENCH_WORK"]) / "published"
    if not (out / "S2L2A").is_dir():
        raise RuntimeError("no published copy (the convert row failed or did not run)")
    return load_dataset(str(out), "S2L2A", split="validation", streaming=True)


def row_published_arrow(data: Path, group: str, repeat: int) -> dict:
    from ssl4eos12.torch import arrow_to_numpy

    dataset = _published_dataset().with_format("arrow")
    info = {}

    def one(count_bytes):
        count, total = 0, 0
        for table in dataset.iter(batch_size=8):
            arrays = arrow_to_numpy(table)
            count += table.num_rows
            if count_bytes:
                total += nbytes(arrays)
                info.setdefault("dtype", str(arrays["S2L2A"].dtype))
        return count, total, info

    return passes(one, repeat)


#: Python rows cost ~0.2 s per example (ArrayXD cells become nested lists): the first ones only.
PYTHON_ROWS_EXAMPLES = 16


def row_published_rows(data: Path, group: str, repeat: int) -> dict:
    """Python rows: arrays arrive as nested lists of Python numbers; their bytes are counted in the native dtype."""
    import numpy as np

    dataset = _published_dataset()
    dtypes = {name: getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
              for name, feature in dataset.features.items()}
    dataset = dataset.take(PYTHON_ROWS_EXAMPLES)
    info = {}

    def one(count_bytes):
        count, total = 0, 0
        for example in dataset:
            count += 1
            if count_bytes:
                for name, value in example.items():
                    dtype = dtypes.get(name) or ""
                    if isinstance(value, list) and dtype.startswith("timestamp"):
                        total += 8 * len(value)
                    elif isinstance(value, list) and dtype not in ("", "string"):
                        total += np.asarray(value, dtype=dtype).nbytes
                    else:
                        total += nbytes(value)
                info.setdefault("dtype", type(example["S2L2A"]).__name__ + " (nested)")
        return count, total, info

    result = passes(one, 1)
    result["note"] = f"first {PYTHON_ROWS_EXAMPLES} examples only"
    return result


def _servers_module(name: str):
    """A module of tests/ (servers.py, nginx.py), imported by path: the benchmark uses the tests' servers."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _file_urls(url: str, data: Path, group: str) -> list[tuple[str, int]]:
    return [(f"{url}/{path.relative_to(data).as_posix()}", path.stat().st_size) for _, path in files_of(data, group)]


def _wire_row(data: Path, group: str, repeat: int, get_all) -> dict:
    """``get_all(urls)`` fetches every file of the group from nginx; bytes are the files' bytes (not decoded)."""
    with _servers_module("nginx").NginxServer(data) as srv:
        urls = _file_urls(srv.url, data, group)

        def one(count_bytes):
            get_all([url for url, _ in urls])
            return locations(data), sum(size for _, size in urls), {}

        result = passes(one, repeat)
        result["bytes_served_per_file_byte"] = _served_ratio(srv, data, group, len(result["times"]) + 1)
    result.update(dtype="bytes (file)", wire=True)
    return result


def _served_ratio(srv, data: Path, group: str, passes_made: int) -> float:
    file_bytes = sum(path.stat().st_size for _, path in files_of(data, group))
    served = sum(v for k, v in srv.bytes_served().items() if k.endswith(".zarr.zip"))
    return served / (file_bytes * passes_made)


def row_curl(data: Path, group: str, repeat: int) -> dict:
    """The wire ceiling: one ``curl -o /dev/null`` of every file (one connection, kept alive; nothing kept)."""
    if shutil.which("curl") is None:
        raise RuntimeError("curl is not installed")
    return _wire_row(data, group, repeat, lambda urls: subprocess.run(
        ["curl", "-sS", "--fail", *(x for url in urls for x in ("-o", "/dev/null", url))], check=True))


def row_fetch(data: Path, group: str, repeat: int) -> dict:
    """``ssl4eos12.sources.remote.fetch`` of every file into memory (default options), one after the other in a
    ``prefetch(ahead=0)`` as streaming runs it (so a buffer is reused from the second file on), each then freed."""
    import functools

    from ssl4eos12.prefetch import prefetch
    from ssl4eos12.sources.remote import fetch

    def get_all(urls):
        with prefetch((functools.partial(fetch, url) for url in urls), ahead=0) as fetched:
            for file in fetched:
                file.close()

    return _wire_row(data, group, repeat, get_all)


def row_http(data: Path, group: str, repeat: int) -> dict:
    """Stream from nginx on 127.0.0.1 (a separate process, ``sendfile``); bytes served from its access log."""
    with _servers_module("nginx").NginxServer(data) as srv:
        result = passes(_iterate(_load(group, root=srv.url), group), repeat)
        result["bytes_served_per_file_byte"] = _served_ratio(srv, data, group, len(result["times"]) + 1)
    return result


def row_hf(data: Path, group: str, repeat: int) -> dict:
    """Stream ``hf://datasets/bench/ssl4eo-s12`` from tests/servers.py's HubServer, run in its own process."""
    server = subprocess.Popen([sys.executable, __file__, "--serve-hub", str(data), "--only", group],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"Hub server did not start: {url!r}")
        hub = _servers_module("servers")
        with hub.use_hub(argparse.Namespace(url=url), token=HUB_TOKEN, home=Path(os.environ["BENCH_WORK"]) / "hub"):
            result = passes(_iterate(_load(group, root=f"hf://datasets/{HUB_REPO}"), group), repeat)
    finally:
        with contextlib.suppress(Exception):
            server.stdin.close()
        server.wait(timeout=30)
    return result


HUB_REPO, HUB_TOKEN = "bench/ssl4eo-s12", "hf_bench"


def serve_hub(data: str, group: str) -> None:
    """``--serve-hub DIR``: a HubServer holding the group's files until stdin closes."""
    hub = _servers_module("servers").HubServer(tokens={HUB_TOKEN: "bench"})
    root = Path(data)
    files = {path.relative_to(root).as_posix(): path.read_bytes()
             for path in [root / "splits" / "ssl4eos12_val.txt", *(p for _, p in files_of(root, group))]}
    with hub:
        hub.seed(HUB_REPO, files=files, private=True)
        del files
        print(hub.url, flush=True)
        sys.stdin.read()


def wds_root(data: Path) -> Path:
    """The webdataset-release look-alike of the benchmark's data: as many locations, in tars of 64."""
    return data / "webdataset"


def row_wds(data: Path, group: str, repeat: int) -> dict:
    return passes(_iterate(_load(group, data_dir=str(wds_root(data))), group), repeat)


def row_wdshttp(data: Path, group: str, repeat: int) -> dict:
    """The webdataset tars streamed from nginx on 127.0.0.1 (as ``http:``); bytes served from its access log."""
    root = wds_root(data)
    with _servers_module("nginx").NginxServer(root) as srv:
        result = passes(_iterate(_load(group, root=srv.url), group), repeat)
        served = sum(v for k, v in srv.bytes_served().items() if k.endswith(".tar"))
    tar_bytes = sum(p.stat().st_size for m in GROUPS[group] for p in (root / SPLIT_FOLDER / m).glob("*.tar"))
    result["bytes_served_per_file_byte"] = served / (tar_bytes * (len(result["times"]) + 1))
    return result


def _index_wds(root: Path, group: str) -> None:
    """The member index of the look-alike (headers and the metadata only: no member decoded), into its splits/."""
    from ssl4eos12.index import build_index

    build_index(str(root), modalities=list(GROUPS[group]), splits=["validation"], workers=1, headers_only=True)


def _tars_served(srv) -> int:
    return sum(v for k, v in srv.bytes_served().items() if k.endswith(".tar"))


def row_wdsrandom(data: Path, group: str, repeat: int) -> dict:
    """32 random locations by ``Locations[i]`` over HTTP; the tars' bytes sent against the members' bytes."""
    import numpy as np

    import ssl4eos12

    root = wds_root(data)
    _index_wds(root, group)
    with _servers_module("nginx").NginxServer(root) as srv:
        chosen = ssl4eos12.Locations(group, root=srv.url, split="validation", modalities=list(GROUPS[group]))
        picks = np.random.default_rng(0).choice(len(chosen), min(32, len(chosen)), replace=False).tolist()
        members = 0
        for i in picks:  # the member bytes of each pick, from the index
            location = int(chosen._location[i])
            entry, row = int(chosen._entry[location]), int(chosen._row[location])
            members += sum(int(sizes[row]) for sizes in chosen._members[entry].sizes.values())
        before = _tars_served(srv)

        def one(count_bytes):
            total = 0
            for i in picks:
                example = chosen[i]
                if count_bytes:
                    total += nbytes(example)
            return len(picks), total, {"dtype": "native"}

        result = passes(one, repeat)
        served = _tars_served(srv) - before
    rounds = len(result["times"]) + 1
    result["wire"] = True
    result["note"] = (f"{served / (members * rounds):.3f}x the members' bytes sent; {members / len(picks) / MB:.2f} MB "
                      f"of members per location")
    return result


def row_wdsselect(data: Path, group: str, repeat: int) -> dict:
    """A 1% selection (``samples=``) streamed from nginx with the member index, against its tars streamed whole."""
    import math

    import numpy as np
    import pyarrow.parquet as pq

    root = wds_root(data)
    _index_wds(root, group)
    rows = pq.read_table(root / "splits" / "ssl4eos12_val_index.parquet").to_pandas().drop_duplicates("sample")
    picked = rows.iloc[np.random.default_rng(0).choice(len(rows), max(1, math.ceil(len(rows) / 100)), replace=False)]
    members = int(sum(picked[f"{m}_size"].sum() for m in GROUPS[group]))
    whole = int(sum(picked.drop_duplicates("file")[f"{m}_tar_size"].sum() for m in GROUPS[group]))
    with _servers_module("nginx").NginxServer(root) as srv:
        dataset = _load(group, root=srv.url, samples=picked["sample"].tolist())
        probe = _tars_served(srv)  # the features' probe: the first selected tar's first header and member, once
        result = passes(_iterate(dataset, group), repeat)
        served = _tars_served(srv) - probe
    rounds = len(result["times"]) + 1
    result["wire"] = True
    result["note"] = (f"{len(picked)} of {len(rows)} locations: {served / rounds / MB:.1f} MB sent per pass, "
                      f"{served / rounds / members:.3f}x the members' {members / MB:.1f} MB, "
                      f"{served / rounds / whole:.3f}x streaming their tars whole ({whole / MB:.0f} MB); "
                      f"probe {probe / MB:.1f} MB once")
    return result


def _tars_module():
    sys.path.insert(0, str(Path(__file__).parent))
    import tars

    return tars


def authors_wds_root(data: Path) -> Path:
    """The webdataset look-alike's tars rewritten by the authors' stack (zarr 2.18 in ``.venv-zarr2``)."""
    return data / "webdataset-authors"


def _wds_loader_pass(root: Path, group: str, repeat: int) -> dict:
    import ssl4eos12

    files = len(list((root / SPLIT_FOLDER / GROUPS[group][0]).glob("*.tar")))
    split = _tars_module().link_train_split(root, files)
    loader = ssl4eos12.Loader(group, data_dir=str(root), split=split, batch_size=8, num_threads=2)
    info = {"threads": 2, "note": f"tars read {_tars_module().LOADER_REPEAT}x per pass"}
    return passes(batch_pass(loader, group, info), repeat)


def row_wdsloader(data: Path, group: str, repeat: int) -> dict:
    return _wds_loader_pass(wds_root(data), group, repeat)


def row_wdsauthors_procs(data: Path, group: str, repeat: int) -> dict:
    root = authors_wds_root(data)
    files = len(list((root / SPLIT_FOLDER / GROUPS[group][0]).glob("*.tar")))
    result = _tars_module().row_ceiling(root, group, files, repeat)
    result.update(bytes=0, warmup=0.0, wire=True)  # compared by examples/s only
    return result


def row_wdsauthors(data: Path, group: str, repeat: int) -> dict:
    return passes(_iterate(_load(group, data_dir=str(authors_wds_root(data))), group), repeat)


def row_wdsauthorsloader(data: Path, group: str, repeat: int) -> dict:
    return _wds_loader_pass(authors_wds_root(data), group, repeat)


def row_wdsgil(data: Path, group: str, repeat: int) -> dict:
    root = authors_wds_root(data)
    files = len(list((root / SPLIT_FOLDER / GROUPS[group][0]).glob("*.tar")))
    _tars_module().link_train_split(root, files)
    result = _tars_module().row_gil(root, group, files, repeat)
    result.update(bytes=0, warmup=0.0, wire=True)
    return result


def authors_zarr_root(data: Path) -> Path:
    """The S2L2A Zarr files rewritten by the authors' stack (zarr 2.18 in ``.venv-zarr2``)."""
    return data / "zarr-authors"


def row_zarrauthors_procs(data: Path, group: str, repeat: int) -> dict:
    return row_blosc_procs(authors_zarr_root(data), group, repeat)


def row_zarrauthorsloader(data: Path, group: str, repeat: int) -> dict:
    return row_loader(authors_zarr_root(data), group, repeat, threads=2)


ROW_FUNCTIONS = {
    "zipread": row_zipread, "blosc": row_blosc, "blosc-procs": row_blosc_procs, "zarr": row_zarr,
    "authors": row_authors, "stream": row_stream, "torch": row_torch, "torch1": row_torch1, "torch2": row_torch2,
    "prepare": row_prepare,
    "convert": row_convert, "published-arrow": row_published_arrow, "published-rows": row_published_rows,
    "resume": row_resume, "curl": row_curl, "fetch": row_fetch, "http": row_http, "hf": row_hf, "wds": row_wds,
    "wdshttp": row_wdshttp, "wdsrandom": row_wdsrandom, "wdsselect": row_wdsselect,
    "wdsloader": row_wdsloader, "wdsauthors-procs": row_wdsauthors_procs, "wdsauthors": row_wdsauthors,
    "wdsauthorsloader": row_wdsauthorsloader, "wdsgil": row_wdsgil, "zarrauthors-procs": row_zarrauthors_procs,
    "zarrauthorsloader": row_zarrauthorsloader,
}


def run_row(name: str, data: Path, repeat: int) -> dict:
    kind, group = name.split(":")
    if kind.startswith("loader-t"):
        result = row_loader(data, group, repeat, threads=int(kind.removeprefix("loader-t")))
    else:
        result = ROW_FUNCTIONS[kind](data, group, repeat)
    if kind.startswith("wds"):  # members read through xarray instead of directly (the same values, ~20x the time)
        from ssl4eos12.sources import webdataset

        result["fallbacks"] = dict(webdataset.fallbacks())
    result.update(peak_rss())
    return result


# ----------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------


def ensure_data(data: Path, files: int) -> float:
    expected = [data / SPLIT_FOLDER / m / f"ssl4eos12_val_seasonal_data_{i + 1:06d}.zarr.zip"
                for m in MODALITIES for i in range(files)]
    listed = data / "splits" / "ssl4eos12_val.txt"
    if all(p.is_file() for p in expected) and listed.is_file() and len(file_names(data)) == files:
        return 0.0
    print(f"generating {files} full-size files per modality in {data} ...", flush=True)
    start = time.perf_counter()
    # in a subprocess: this process forks every row, and should stay small
    code = ("import sys; from ssl4eos12.synth import synthesize; "
            "synthesize(sys.argv[1], splits=('validation',), files=int(sys.argv[2]), samples=64, size=264)")
    subprocess.run([sys.executable, "-c", code, str(data), str(files)], check=True)
    return time.perf_counter() - start


def ensure_wds_data(data: Path, files: int) -> float:
    """The webdataset look-alike (``files`` tars of 64 locations per modality), generated when missing."""
    root = wds_root(data)
    expected = [root / SPLIT_FOLDER / m / f"ssl4eos12_shard_{i + 1:06d}.tar" for m in MODALITIES for i in range(files)]
    if all(p.is_file() for p in expected):
        return 0.0
    print(f"generating {files} full-size tars per modality in {root} ...", flush=True)
    start = time.perf_counter()
    code = ("import sys; from ssl4eos12.synth.webdataset import synthesize_webdataset; "
            "synthesize_webdataset(sys.argv[1], splits=('validation',), files=int(sys.argv[2]), samples=64, "
            f"size=264, modalities={MODALITIES!r})")
    subprocess.run([sys.executable, "-c", code, str(root), str(files)], check=True)
    return time.perf_counter() - start


def ensure_authors_wds_data(data: Path) -> float:
    """The S2L2A look-alike tars rewritten by the authors' stack (``benchmarks/authors_tars.py`` in the zarr 2
    environment that ``tests/test_authors_stack.py`` makes), when missing; skipped without that environment."""
    tars = _tars_module()
    source = wds_root(data) / SPLIT_FOLDER / "S2L2A"
    target = authors_wds_root(data)
    if tars.ZARR2 is None or all((target / SPLIT_FOLDER / "S2L2A" / p.name).is_file() for p in source.glob("*.tar")):
        return 0.0
    start = time.perf_counter()
    staging = data / "webdataset-s2l2a" / SPLIT_FOLDER / "S2L2A"
    if staging.is_symlink():  # an earlier run's link to the folder: rglob does not follow folder links
        staging.unlink()
    staging.mkdir(parents=True, exist_ok=True)
    for tar in source.glob("*.tar"):  # links to the S2L2A tars alone (the other modalities are not rewritten)
        if not (staging / tar.name).exists():
            (staging / tar.name).symlink_to(tar.resolve())
    staging = staging.parent.parent
    subprocess.run([str(tars.ZARR2), str(Path(__file__).with_name("authors_tars.py")), str(staging), str(target)],
                   check=True)
    return time.perf_counter() - start


def ensure_authors_zarr_data(data: Path) -> float:
    """The S2L2A Zarr files rewritten by the authors' stack (``benchmarks/authors_tars.py`` in the zarr 2
    environment that ``tests/test_authors_stack.py`` makes), when missing; skipped without that environment."""
    tars = _tars_module()
    names, target = file_names(data), authors_zarr_root(data)
    if tars.ZARR2 is None or all((target / SPLIT_FOLDER / "S2L2A" / name).is_file() for name in names):
        return 0.0
    start = time.perf_counter()
    staging = data / "zarr-s2l2a"  # links to the S2L2A files alone (the other modalities are not rewritten)
    (staging / SPLIT_FOLDER / "S2L2A").mkdir(parents=True, exist_ok=True)
    (staging / "splits").mkdir(exist_ok=True)
    (staging / "splits" / "ssl4eos12_val.txt").write_text("".join(f"{name}\n" for name in names))
    for name in names:
        link = staging / SPLIT_FOLDER / "S2L2A" / name
        if not link.exists():
            link.symlink_to((data / SPLIT_FOLDER / "S2L2A" / name).resolve())
    subprocess.run([str(tars.ZARR2), str(Path(__file__).with_name("authors_tars.py")), str(staging), str(target)],
                   check=True)
    return time.perf_counter() - start


def warm_page_cache(data: Path) -> int:
    total = 0
    for path in sorted([*(data / SPLIT_FOLDER).rglob("*.zarr.zip"), *wds_root(data).rglob("*.tar"),
                        *authors_wds_root(data).rglob("*.tar"),
                        *(authors_zarr_root(data) / SPLIT_FOLDER).rglob("*.zarr.zip")]):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


def one_file_decoded_bytes(data: Path) -> dict[str, int]:
    """Decoded bytes of every array of one file, per modality (from the metadata)."""
    import numpy as np

    out = {}
    name = file_names(data)[0]
    for m in MODALITIES:
        with zipfile.ZipFile(data / SPLIT_FOLDER / m / name) as zf:
            meta = json.loads(zf.read(".zmetadata"))["metadata"]
        out[m] = sum(math.prod(v["shape"]) * np.dtype(v["dtype"]).itemsize
                     for k, v in meta.items() if k.endswith(".zarray"))
    return out


def machine() -> dict:
    import datasets
    import numcodecs
    import numpy
    import pyarrow
    import xarray
    import zarr
    from numcodecs import blosc

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    mem = "?"
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem = f"{kb / 2**20:.0f} GiB"
    versions = {m.__name__: m.__version__ for m in (datasets, zarr, numcodecs, xarray, numpy, pyarrow)}
    with contextlib.suppress(ImportError):
        import torch

        versions["torch"] = torch.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "blosc_threads": blosc.get_nthreads()}


def run_in_subprocess(name: str, data: Path, repeat: int, work: Path, timeout: float) -> dict:
    env = dict(os.environ, BENCH_WORK=str(work))
    start = time.perf_counter()
    command = [sys.executable, __file__, "--row", name, "--data", str(data), "--repeat", str(repeat)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            return {"error": f"timed out after {timeout:.0f} s"}
        proc = subprocess.CompletedProcess(command, 0, out, "")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-400:]}
    result = json.loads(lines[-1])
    result["subprocess_seconds"] = time.perf_counter() - start
    return result


def summarize(results: dict[str, dict], one_file: dict[str, int]) -> tuple[list[dict], list[dict]]:
    """Table rows (with best-pass throughput and ratios) and the target checks."""
    table = []
    for name, group, label, target in ROWS:
        r = results.get(name)
        if r is None:
            continue
        row = {"name": name, "group": group, "label": label, "target": target}
        if "error" in r:
            row["error"] = r["error"]
            table.append(row)
            continue
        best = min(r["times"])
        per_worker = r.get("workers", 1)
        row.update(seconds=best, median=statistics.median(r["times"]), examples_per_s=r["examples"] / best,
                   mb_per_s=r["bytes"] / MB / best, peak_rss_mb=r["peak_rss"] / MB, dtype=r.get("dtype", ""),
                   note=r.get("note", ""))
        ceiling = results.get(f"blosc:{group}", {})
        if "times" in ceiling and not r.get("wire"):  # file bytes over the wire are not decoded bytes
            ceiling_mb_s = ceiling["bytes"] / MB / min(ceiling["times"])
            row["ratio"] = row["mb_per_s"] / per_worker / ceiling_mb_s
        table.append(row)
    by_name = {row["name"]: row for row in table if "error" not in row}

    checks = []

    def check(what, value, limit, higher_is_better=True, detail="", unit="×"):
        if value is None:
            checks.append({"what": what, "ok": None, "detail": detail or "not measured"})
            return
        ok = value >= limit if higher_is_better else value <= limit
        checks.append({"what": what, "ok": ok, "value": value, "limit": limit, "detail": detail,
                       "sign": "≥" if higher_is_better else "≤", "unit": unit})

    def ratio(a, b, key="examples_per_s"):
        return by_name[a][key] / by_name[b][key] if a in by_name and b in by_name else None

    for group in ("S2L2A", "all"):
        s = by_name.get(f"stream:{group}")
        check(f"streaming `{group}` vs Blosc-decode ceiling", s and s.get("ratio"), 0.6,
              detail=s and f"{s['mb_per_s']:.0f} MB/s")
        check(f"streaming `{group}` vs authors' loader (examples/s)", ratio(f"stream:{group}", f"authors:{group}"), 1.2)
    loaders = [by_name[f"loader-t{n}:S2L2A"] for n in LOADER_THREADS if f"loader-t{n}:S2L2A" in by_name]
    best = max(loaders, key=lambda row: row["examples_per_s"]) if loaders else None
    check("training loader (`ssl4eos12.Loader`, best of threads) vs the aggregate decode ceiling (examples/s)",
          best and ratio(best["name"], "blosc-procs:S2L2A"), 0.7,
          detail=best and f"{best['examples_per_s']:.0f} examples/s with {best['name'].split(':')[0][8:]} thread(s)"
                          + cpu_per_example(results, best["name"], "blosc-procs:S2L2A"))
    r = results.get("resume:S2L2A", {})
    checks.append({"what": "resuming the `Loader` mid-epoch (`S2L2A`)", "ok": None,
                   "detail": r.get("note", "not measured") + (f"; a new Loader resumed halfway and read to the end "
                   f"of the epoch, start-up included, at {ratio('resume:S2L2A', best['name']):.2f}× an uninterrupted "
                   f"epoch's examples/s" if best and "resume:S2L2A" in by_name else "")})
    check("DataLoader 2 workers vs 0 workers (`S2L2A`, examples/s)", ratio("torch2:S2L2A", "torch:S2L2A"), 1.3)
    p = by_name.get("published-arrow:S2L2A")
    check("streaming the published copy with plain `datasets` (`S2L2A`, arrow) vs ceiling", p and p.get("ratio"), 0.5,
          detail=p and f"{p['mb_per_s']:.0f} MB/s")
    c = by_name.get("convert:all")
    check("conversion vs ceiling, per worker", c and c.get("ratio"), 0.3,
          detail=c and f"{c['mb_per_s']:.0f} MB/s" + cpu_per_example(results, "convert:all", "blosc:all"))
    s = results.get("stream:all", {})
    one = sum(one_file.values())
    check("peak RSS streaming `all` vs one file of every modality decoded",
          s["peak_rss"] / one if "peak_rss" in s else None, 1.5, higher_is_better=False,
          detail=f"{s['peak_rss'] / MB:.0f} MB vs {one / MB:.0f} MB; of which {s.get('rss_start', 0) / MB:.0f} MB "
                 f"before the first example (Python, datasets, zarr, xarray and torch, which datasets imports)"
          if "peak_rss" in s else "")
    for group in ("S2L2A", "all"):
        w = by_name.get(f"wds:{group}")
        check(f"streaming the webdataset tars `{group}` vs Blosc-decode ceiling", w and w.get("ratio"), 0.6,
              detail=w and f"{w['mb_per_s']:.0f} MB/s; {ratio(f'wds:{group}', f'stream:{group}') or 0:.2f}× the Zarr files")
    check("`ssl4eos12.Loader` on the webdataset tars (2 threads) vs the aggregate decode ceiling (examples/s)",
          ratio("wdsloader:S2L2A", "blosc-procs:S2L2A"), 0.6)
    check("streaming the authors'-stack tars vs their aggregate decode ceiling (examples/s)",
          ratio("wdsauthors:S2L2A", "wdsauthors-procs:S2L2A"), 0.5)
    check("`ssl4eos12.Loader` on the authors'-stack tars vs their aggregate decode ceiling (examples/s)",
          ratio("wdsauthorsloader:S2L2A", "wdsauthors-procs:S2L2A"), 0.6)
    check("`ssl4eos12.Loader` (2 threads) on the authors'-stack Zarr files vs their aggregate decode ceiling "
          "(examples/s)", ratio("zarrauthorsloader:S2L2A", "zarrauthors-procs:S2L2A"), 0.7)
    g = results.get("wdsgil:S2L2A", {})
    check("GIL held per member, Loader on the authors'-stack tars (py-spy --gil)", g.get("gil_ms_per_member"), 0.5,
          higher_is_better=False, detail=f"fallbacks to xarray: {sum((g.get('fallbacks') or {}).values())}" if g else "",
          unit=" ms")
    wh = results.get("wdshttp:S2L2A", {})
    check("webdataset tars over HTTP vs local tars (`S2L2A`)", ratio("wdshttp:S2L2A", "wds:S2L2A"), 0.8,
          detail=f"{wh['bytes_served_per_file_byte']:.2f} bytes served per tar byte"
          if "bytes_served_per_file_byte" in wh else "")
    h = results.get("http:S2L2A", {})
    check("HTTP streaming from nginx vs local streaming (`S2L2A`)", ratio("http:S2L2A", "stream:S2L2A"), 0.8)
    check("HTTP streaming: bytes served per byte of the files", h.get("bytes_served_per_file_byte"), 1.05,
          higher_is_better=False, detail="from nginx's access log, every pass")
    check("one file's fetch (`remote.fetch`) vs curl from the same nginx",
          ratio("fetch:S2L2A", "curl:S2L2A", "mb_per_s"), 0.8)
    hf = ratio("hf:S2L2A", "stream:S2L2A")
    checks.append({"what": "`hf://` streaming from the local Hub server vs local streaming (`S2L2A`)", "ok": None,
                   "detail": f"{hf:.2f}× (no target: the Hub server is a Python test server)" if hf
                   else "not measured"})
    native = [row for row in table if "dtype" in row and (row["name"].split(":")[0] in (
              "stream", "torch", "torch1", "torch2", "http", "hf", "published-arrow") or row["name"].startswith("loader-t"))]
    native_ok = bool(native) and all(row["dtype"].startswith("int16") for row in native)
    checks.append({"what": "native dtypes: S2L2A bands reach the user as int16 on every path (no int64 upcast)",
                   "ok": native_ok, "detail": ", ".join(f"{row['name']}: {row['dtype']}" for row in native)})
    return table, checks


def cpu_per_example(results: dict[str, dict], name: str, reference: str) -> str:
    """The CPU each row spends per example (best pass), and their ratio: what a busy machine does not change."""
    row, ref = results.get(name, {}), results.get(reference, {})
    if not row.get("cpu_times") or not ref.get("cpu_times"):
        return ""
    mine, theirs = (min(r["cpu_times"]) / r["examples"] * 1e3 for r in (row, ref))
    return f"; CPU per example {mine:.1f} ms vs the ceiling's {theirs:.1f} ms ({theirs / mine:.2f}×)"


def render(table: list[dict], checks: list[dict], meta: dict) -> str:
    lines = [
        (f"Run `{meta['command']}` on {meta['date']}: {meta['cpu']} ({meta['cores']} cores, {meta['memory']}), "
        f"Python {meta['python']}, {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}; "
        f"numcodecs Blosc threads: {meta['blosc_threads']}. Data: {meta['files']} generated full-size files per "
        f"modality (64 samples × 4 times × 264 × 264), page cache warm; best of {meta['repeat']} passes after a "
        f"warm-up pass; each row in a fresh process. Whole run: {meta['total_seconds'] / 60:.1f} min. "
         f"Method, and the profiles behind every missed target: [benchmarks/README.md](benchmarks/README.md)."
         + (f" Rows {meta['rerun']} (`--only`), the others from the full run." if meta.get("rerun") else "")),
        "",
        "| files | row | examples/s | decoded MB/s | × Blosc ceiling | target | peak RSS MB | bands dtype |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for row in table:
        if "error" in row:
            lines.append(f"| {row['group']} | {row['label']} | – | – | – | {row['target'] or ''} | – | "
                         f"failed: {row['error'][:120].replace('|', '/')} |")
            continue
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        if row["name"].startswith("convert"):
            ratio += " per worker"
        lines.append(f"| {row['group']} | {row['label']} | {row['examples_per_s']:.0f} | {row['mb_per_s']:.0f} | "
                     f"{ratio} | {row['target'] or ''} | {row['peak_rss_mb']:.0f} | {row['dtype']} |")
    lines += ["", "Targets:", ""]
    for c in checks:
        mark = "✅" if c["ok"] else ("❌" if c["ok"] is not None else "–")
        unit = c.get("unit", "×")
        value = (f"{c['value']:.2f}{unit} (target {c['sign']} {c['limit']}{unit})" if c.get("value") is not None
                 else "")
        detail = "; ".join(x for x in (value, c.get("detail")) if x)
        lines.append(f"- {mark} {c['what']}: {detail}")
    notes = [f"`{row['name']}`: {row['note']}" for row in table if row.get("note")]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    """Replace the text between the markers; the first time, put the markers at the end of '## Benchmark'."""
    text = README.read_text()
    block = f"{START}\n{section}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, count=1, flags=re.DOTALL)
    else:
        heading = re.search(r"^## Benchmark[^\n]*\n", text, flags=re.MULTILINE)
        if heading is None:
            raise RuntimeError("README.md has no '## Benchmark' section")
        following = text.find("\n## ", heading.end())
        following = len(text) if following < 0 else following + 1
        body = text[heading.end():following].rstrip("\n")
        text = f"{text[:heading.end()]}{body}\n\n{block}\n\n{text[following:]}"
    README.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2, help="full-size files per modality (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per row after the warm-up (default 5)")
    parser.add_argument("--only", help="comma-separated row names (default: all rows); their results replace those "
                                       "rows of the last full run in the README's table")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md / results.json")
    parser.add_argument("--data", type=Path, default=DATA, help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="ROW", help="run one row in this process under pyinstrument (pip install "
                        "pyinstrument, or the [bench] extra) and print where its time goes")
    parser.add_argument("--serve-hub", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_hub:
        serve_hub(args.serve_hub, args.only)
        return 0
    if args.row:
        hf_environment(Path(os.environ["BENCH_WORK"]))
        print(json.dumps(run_row(args.row, args.data, args.repeat)), flush=True)
        sys.stderr.flush()
        # skip interpreter teardown: after streaming Parquet with take(), pyarrow's reader threads can hang or
        # abort it ("terminate called without an active exception"), and the result is already out
        os._exit(0)
    if args.profile:
        from pyinstrument import Profiler

        # before anything imports datasets (it reads its cache paths at import); convert's output stays here
        work = Path(os.environ.setdefault("BENCH_WORK", str(args.data / ".work")))
        work.mkdir(parents=True, exist_ok=True)
        hf_environment(work)
        ensure_data(args.data, args.files)
        warm_page_cache(args.data)
        profiler = Profiler(interval=0.001)
        with profiler:
            result = run_row(args.profile, args.data, args.repeat)
        print(profiler.output_text(unicode=True, color=False))
        print(json.dumps({k: v for k, v in result.items() if k in ("examples", "bytes", "warmup", "times")}))
        return 0

    started = time.perf_counter()
    generated = ensure_data(args.data, args.files)
    warmed = warm_page_cache(args.data)
    one_file = one_file_decoded_bytes(args.data)
    names = list(RUN_ORDER)
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(names)
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; rows: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    if any(n.startswith("wds") for n in names):
        generated += ensure_wds_data(args.data, args.files)
        generated += ensure_authors_wds_data(args.data)
        warmed = warm_page_cache(args.data)  # again, with the tars
    if any(n.startswith("zarrauthors") for n in names):
        generated += ensure_authors_zarr_data(args.data)
        warmed = warm_page_cache(args.data)  # again, with those files
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ssl4eos12-bench-") as work:
        for name in names:
            print(f"  {name} ...", end=" ", flush=True)
            result = run_in_subprocess(name, args.data, args.repeat, Path(work), timeout=300)
            results[name] = result
            if "error" in result:
                print("FAILED:", result["error"], flush=True)
            else:
                best = min(result["times"])
                cpu = result.get("cpu_times") or []
                print(f"{result['examples'] / best:.0f} ex/s, {result['bytes'] / MB / best:.0f} MB/s "
                      f"(passes: {', '.join(f'{t:.2f}' for t in result['times'])} s; "
                      f"CPU: {', '.join(f'{t:.2f}' for t in cpu)} s; "
                      f"peak RSS {result['peak_rss'] / MB:.0f} MB)", flush=True)
    meta = machine()
    meta.update(command="python benchmarks/run.py" + (f" --files {args.files}" if args.files != 2 else ""),
                date=datetime.date.today().isoformat(), files=args.files, repeat=args.repeat,
                total_seconds=time.perf_counter() - started, generated_seconds=generated, warmed_bytes=warmed,
                one_file_decoded_bytes=one_file)
    if args.only and not args.no_readme and RESULTS.exists():
        # some rows run again: the table is the last full run's with these rows replaced (and said so)
        previous = json.loads(RESULTS.read_text())
        results = {**previous["rows"], **results}
        meta = {**previous["meta"], "rerun": f"{', '.join(names)} rerun on {meta['date']}"}
    table, checks = summarize(results, one_file)
    section = render(table, checks, meta)
    print()
    print(section)
    if not args.no_readme and (not args.only or RESULTS.exists()):
        write_readme(section)
        RESULTS.write_text(json.dumps({"meta": meta, "rows": results, "table": table, "checks": checks},
                                      indent=1, default=str) + "\n")
        print(f"\nwrote {README.relative_to(REPO)} and {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
