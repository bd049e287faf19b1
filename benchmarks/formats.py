#!/usr/bin/env python
"""The measurement behind the published copy's format (``ssl4eos12/publish/formats.py``).

    python benchmarks/formats.py            # needs benchmarks/data (run.py generates it); ~4 min on 2 cores
    python benchmarks/formats.py Arrow      # only the layouts whose name starts with "Arrow" (~1 min)

One full-size generated S2L2A file (64 locations, every field of the builder's examples) is written in each
layout, then read back the way a user of plain ``datasets`` does: ``load_dataset(folder, split=...,
streaming=True).with_format("arrow").iter(batch_size=8)``, each batch turned into native-dtype numpy by
``ssl4eos12.torch.arrow_to_numpy``. Reported: file size, write and read MB/s of the Arrow bytes (best of 3), and
both as ratios to the Blosc-decode ceiling of the same file measured between the layouts (best pass).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAYOUTS = {
    # name: (extension, record batch / row group rows, writer)
    "Arrow IPC stream, uncompressed, 4 rows per batch (published)": (".arrow", 4, "none"),
    "Arrow IPC stream, uncompressed, 8 rows per batch": (".arrow", 8, "none"),
    "Arrow IPC stream, LZ4, 4 rows per batch": (".arrow", 4, "lz4"),
    "Arrow IPC stream, zstd level 1, 4 rows per batch": (".arrow", 4, "zstd"),
    "Parquet as convert wrote it before (zstd 3, dictionary, CDC, 7 rows per group)": (".parquet", 7, "old"),
    "Parquet zstd 1, no dictionary, BYTE_STREAM_SPLIT bands, 7 rows per group": (".parquet", 7, "bss"),
}


def ceiling(path: Path) -> tuple[int, float]:
    from numcodecs import blosc

    with zipfile.ZipFile(path) as zf:
        chunks = [zf.read(i) for i in zf.infolist() if i.filename.rsplit("/", 1)[-1][:1].isdigit()]
    start = time.perf_counter()
    total = sum(len(blosc.decompress(chunk)) for chunk in chunks)
    return total, time.perf_counter() - start


def tables(data: Path, rows: int):
    import pyarrow as pa

    from ssl4eos12.publish.plan import plan
    from ssl4eos12.publish.shards import arrow_column, modality_batches

    task = plan(str(data), ["S2L2A"], ["validation"])[0]
    schema = task.features.arrow_schema
    block = next(task.source().blocks(task.split_folder, task.files[0], task.layouts))
    return task.features, [pa.Table.from_arrays([arrow_column(b[f.name], f.type) for f in schema], schema=schema)
                           for b in modality_batches(block.file, block.reference, rows)]


def write(path: Path, features, batches, how: str) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.arrow_writer import get_parquet_column_options

    schema = features.arrow_schema
    if path.suffix == ".arrow":
        codec = {"none": None, "lz4": "lz4", "zstd": pa.Codec("zstd", 1)}[how]
        with pa.OSFile(str(path), "wb") as sink, \
                pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
            for table in batches:
                writer.write_table(table)
        return
    if how == "old":
        options = get_parquet_column_options(features, schema)
        compression = {k: "zstd" if v == "snappy" else v for k, v in options["compression"].items()}
        options = dict(options, compression=compression, compression_level=3, write_page_index=True,
                       use_content_defined_chunking=datasets.config.DEFAULT_CDC_OPTIONS)
    else:
        leaf = "S2L2A.list.element.list.element.list.element.list.element"
        options = {"compression": "zstd", "compression_level": 1, "use_dictionary": False,
                   "column_encoding": {leaf: "BYTE_STREAM_SPLIT"}, "write_page_index": True}
    with pq.ParquetWriter(path, schema, **options) as writer:
        for table in batches:
            writer.write_table(table)


def read(folder: Path) -> float:
    from datasets import load_dataset

    from ssl4eos12.torch import arrow_to_numpy

    dataset = load_dataset(str(folder), split="validation", streaming=True).with_format("arrow")
    best = float("inf")
    for _ in range(3):
        start, rows = time.perf_counter(), 0
        for table in dataset.iter(batch_size=8):
            arrays = arrow_to_numpy(table)
            rows += table.num_rows
        best = min(best, time.perf_counter() - start)
    assert rows == 64 and str(arrays["S2L2A"].dtype) == "int16", (rows, arrays["S2L2A"].dtype)
    return best


def main() -> int:
    data = HERE / "data"
    source = sorted((data / "val" / "S2L2A").glob("*.zarr.zip"))
    if not source:
        sys.exit(f"error: no generated data in {data}: run `python benchmarks/run.py --only blosc:S2L2A` first")
    work = Path(tempfile.mkdtemp(prefix="ssl4eos12-formats-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "cache"))
    results, ceilings = [], []
    try:
        wanted = sys.argv[1] if len(sys.argv) > 1 else ""
        for name, (extension, rows, how) in LAYOUTS.items():
            if not name.startswith(wanted):
                continue
            ceilings.append(ceiling(source[0]))
            features, batches = tables(data, rows)
            nbytes = sum(t.nbytes for t in batches)
            folder = work / "layout"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            path = folder / f"validation-00000-of-00001{extension}"
            writes = []
            for _ in range(3):
                start = time.perf_counter()
                write(path, features, batches, how)
                writes.append(time.perf_counter() - start)
            del batches
            results.append((name, path.stat().st_size, nbytes, min(writes), read(folder)))
            print(f"{name}: done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    decoded, seconds = max(ceilings, key=lambda c: c[0] / c[1])
    reference = decoded / seconds
    print(f"Blosc-decode ceiling of the file: {reference / 1e6:,.0f} MB/s (best of {len(ceilings)} passes)\n")
    print("| layout | file MB | write MB/s | read MB/s (plain `datasets`) | read × ceiling | write × ceiling |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, size, nbytes, write_s, read_s in results:
        print(f"| {name} | {size / 1e6:,.0f} | {nbytes / 1e6 / write_s:,.0f} | {nbytes / 1e6 / read_s:,.0f} | "
              f"{nbytes / read_s / reference:.2f} | {nbytes / write_s / reference:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
