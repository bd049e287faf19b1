"""The webdataset tars against the machine's all-core decode ceiling: ours and the authors' stack's (zarr 2.18).

    python benchmarks/tars.py [--files 2] [--repeat 3] [--only ROW,ROW] [--data benchmarks/data/tars]

Data (generated when missing, ~0.5 GB per 2 S2L2A tars of 64 full-size locations):
- ``ours``: ``ssl4eos12.synth.webdataset.synthesize_webdataset`` (zarr 3 writing Zarr v2, our settings);
- ``authors``: the same members rewritten by ``authors_tars.py`` in the zarr 2 environment (``.venv-zarr2``, as
  ``tests/test_authors_stack.py`` makes it): zarr 2's default Blosc settings, fill values and CF attributes, the
  directory store zipped with stored entries, as the release's members were written.

Rows (each in a fresh subprocess, ``--row STACK:KIND:GROUP``; best of ``--repeat`` passes after a warm-up):
- ``ceiling``: one process per core, one Blosc thread each, decodes every Blosc chunk of every member (read
  first, untimed): the aggregate decode ceiling. A pass decodes every tar ``LOADER_REPEAT`` times (the
  Loader's pass), so examples/s compare with every row;
- ``stream``: ``load_dataset(..., streaming=True)`` iterated, no format (every field of every example);
- ``loader``: ``ssl4eos12.Loader(group, split="train", batch_size=8, num_threads=2)``, one epoch a pass; the
  ``train`` split names every tar ``LOADER_REPEAT`` times (symlinks);
- ``gil``: the loader row again with py-spy attached (``record --gil --nonblocking``): the share of samples at
  which a thread held the GIL, times the pass's duration, per member decoded;
every row also counts the members that fell back to xarray (:func:`ssl4eos12.sources.webdataset.fallbacks`).
Ratios are examples/s against the ceiling row of the same stack in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

GROUPS = {"S2L2A": ("S2L2A",), "all": ("S1GRD", "S2L1C", "S2L2A", "S2RGB")}
STACKS = ("ours", "authors")
KINDS = ("ceiling", "stream", "loader", "gil")
#: How often a Loader pass reads every tar: the pipeline full, not only its start and drain.
LOADER_REPEAT = 8
LOCATIONS = 64
ZARR2 = next((p for p in (REPO / ".venv-zarr2/bin/python", REPO.parent.parent / "main/.venv-zarr2/bin/python",
                          Path("/work/main/.venv-zarr2/bin/python")) if p.exists()), None)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def ensure_data(data: Path, files: int, group: str) -> None:
    modalities = GROUPS[group]
    ours = data / "ours"
    if not all((ours / "val" / m / f"ssl4eos12_shard_{i + 1:06d}.tar").is_file() for m in modalities
               for i in range(files)):
        print(f"generating {files} tars of {modalities} in {ours} ...", flush=True)
        code = ("import sys; from ssl4eos12.synth.webdataset import synthesize_webdataset; "
                "synthesize_webdataset(sys.argv[1], splits=('validation',), files=int(sys.argv[2]), samples=64, "
                f"size=264, modalities={tuple(GROUPS['all'])!r} if sys.argv[3] == 'all' else ('S2L2A',))")
        subprocess.run([sys.executable, "-c", code, str(ours), str(files), group], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if ZARR2 is None:
        raise SystemExit("no zarr 2 environment: run tests/test_authors_stack.py once to make .venv-zarr2")
    if not all((data / "authors" / "val" / m / f"ssl4eos12_shard_{i + 1:06d}.tar").is_file() for m in modalities
               for i in range(files)):
        print(f"rewriting them with the authors' stack ({ZARR2}) ...", flush=True)
        subprocess.run([str(ZARR2), str(HERE / "authors_tars.py"), str(ours), str(data / "authors")], check=True)
    for stack in STACKS:
        link_train_split(data / stack, files)


def link_train_split(root: Path, files: int) -> str:
    """A ``train`` split of ``root`` naming each of the first ``files`` validation tars ``LOADER_REPEAT`` times
    (symlinks), for every modality folder there is: the Loader rows' epoch."""
    for m in GROUPS["all"]:
        if not (root / "val" / m).is_dir():
            continue
        (root / "train" / m).mkdir(parents=True, exist_ok=True)
        tars = sorted((root / "val" / m).glob("*.tar"))[:files]
        for k in range(files * LOADER_REPEAT):
            link = root / "train" / m / f"ssl4eos12_shard_{k + 1:06d}.tar"
            if not link.is_symlink():
                link.symlink_to(Path("..") / ".." / "val" / m / tars[k % len(tars)].name)
        for f in (root / "train" / m).glob("*.tar"):
            if int(f.name[16:22]) > files * LOADER_REPEAT:
                f.unlink()
    return "train"


def chunks_of(root: Path, group: str, files: int) -> list[bytes]:
    """Every Blosc-compressed chunk of every member of the group's tars."""
    out = []
    for m in GROUPS[group]:
        for path in sorted((root / "val" / m).glob("*.tar"))[:files]:
            with tarfile.open(path) as tar:
                for info in tar:
                    with zipfile.ZipFile(tar.extractfile(info)) as zf:
                        metadata = json.loads(zf.read(".zmetadata"))["metadata"]
                        for name in zf.namelist():
                            array, _, leaf = name.rpartition("/")
                            zarray = metadata.get(f"{array}/.zarray", {})
                            if array and not leaf.startswith(".") and (zarray.get("compressor") or {}).get("id") == "blosc":
                                out.append(zf.read(name))
    return out


def _decode_share(chunks: list[bytes], conn) -> None:
    from numcodecs import blosc

    blosc.use_threads = False
    conn.send("ready")
    while conn.recv() == "go":
        start = time.perf_counter()
        for _ in range(LOADER_REPEAT):
            for chunk in chunks:
                blosc.decompress(chunk)
        conn.send(time.perf_counter() - start)


def row_ceiling(root: Path, group: str, files: int, repeat: int) -> dict:
    import multiprocessing

    chunks = chunks_of(root, group, files)
    n = cores()
    context = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for p in range(n):
        parent, child = context.Pipe()
        proc = context.Process(target=_decode_share, args=(chunks[p::n], child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for conn in pipes:
        conn.recv()
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        for conn in pipes:
            conn.send("go")
        for conn in pipes:
            conn.recv()
        times.append(time.perf_counter() - start)
    for conn in pipes:
        conn.send("stop")
    for proc in procs:
        proc.join()
    return {"examples": files * LOCATIONS * LOADER_REPEAT, "times": times[1:], "processes": n}


def row_stream(root: Path, group: str, files: int, repeat: int) -> dict:
    from datasets import load_dataset

    import ssl4eos12  # noqa: F401

    ds = load_dataset("ssl4eos12", group, data_dir=str(root), split="validation", streaming=True)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        count = sum(1 for _ in ds)
        times.append(time.perf_counter() - start)
    return {"examples": count, "times": times[1:]}


def _loader(root: Path, group: str):
    import ssl4eos12

    return ssl4eos12.Loader(group, data_dir=str(root), split="train", batch_size=8, num_threads=2)


def row_loader(root: Path, group: str, files: int, repeat: int) -> dict:
    loader = _loader(root, group)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        count = sum(len(batch["sample"]) for batch in loader)
        times.append(time.perf_counter() - start)
    return {"examples": count, "times": times[1:]}


def row_gil(root: Path, group: str, files: int, repeat: int) -> dict:
    """The loader's passes with py-spy attached after the warm-up: GIL held per member."""
    loader = _loader(root, group)
    sum(len(batch["sample"]) for batch in loader)  # warm-up, unsampled
    rate = 250
    raw = Path(tempfile.mkdtemp()) / "gil.txt"
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--nonblocking",
                            "-r", str(rate), "-f", "raw", "-o", str(raw), "-p", str(os.getpid())],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # py-spy attached
    start = time.perf_counter()
    count = 0
    for _ in range(repeat):
        count += sum(len(batch["sample"]) for batch in loader)
    elapsed = time.perf_counter() - start
    time.sleep(0.2)
    spy.send_signal(2)
    err, _ = spy.communicate()
    held = sum(int(line.rsplit(" ", 1)[1]) for line in raw.read_text().splitlines() if line.strip())
    # with --gil py-spy records a sample only when some thread holds the GIL: samples / rate = seconds held
    # (outside the passes, in the 1.2 s around them, the process is idle)
    seconds = held / rate
    members = count * len(GROUPS[group])
    return {"examples": count, "times": [elapsed], "gil_fraction": seconds / elapsed, "gil_seconds": seconds,
            "gil_ms_per_member": 1000 * seconds / members, "py_spy": err.strip().splitlines()[-1:], "raw": str(raw)}


ROWS = {"ceiling": row_ceiling, "stream": row_stream, "loader": row_loader, "gil": row_gil}


def run_row(name: str, data: Path, files: int, repeat: int) -> dict:
    from ssl4eos12.sources import webdataset

    stack, kind, group = name.split(":")
    result = ROWS[kind](data / stack, group, files, repeat)
    counts = getattr(webdataset, "fallbacks", None)
    result["fallbacks"] = dict(counts()) if counts else None
    result["cpu_seconds"] = time.process_time()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=HERE / "data" / "tars")
    parser.add_argument("--group", default="S2L2A")
    parser.add_argument("--only", default="")
    parser.add_argument("--row")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args.data, args.files, args.repeat)), flush=True)
        return
    ensure_data(args.data, args.files, args.group)
    names = [f"{s}:{k}:{args.group}" for s in STACKS for k in KINDS]
    if args.only:
        names = [n for n in names if any(n.startswith(o) or o in n for o in args.only.split(","))]
    results = {}
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--row", name, "--data", str(args.data), "--files",
                               str(args.files), "--repeat", str(args.repeat)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            print(f"{name}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[name] = json.loads(lines[-1])
        r = results[name]
        best = min(r["times"])
        r["examples_per_s"] = r["examples"] / best
        stack, kind, group = name.split(":")
        ceiling = results.get(f"{stack}:ceiling:{group}")
        ratio = r["examples_per_s"] / ceiling["examples_per_s"] if ceiling else float("nan")
        extra = f"  GIL {r['gil_ms_per_member']:.2f} ms/member ({r['gil_fraction']:.0%} of the time)" if kind == "gil" else ""
        print(f"{name:26s} {r['examples_per_s']:8.1f} ex/s  {ratio:5.2f}x ceiling  passes "
              f"{', '.join(f'{t:.2f}' for t in r['times'])} s  fallbacks {r['fallbacks']}{extra}", flush=True)
    out = args.data / "results.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
