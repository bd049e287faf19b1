"""Conversion: the shards (Arrow IPC streams, every config) load with plain ``datasets`` and equal the builder's
examples; the conversion resumes after a kill with byte-identical output, runs the same in a process pool and on
Dask, and ``verify`` catches tampering."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import xxhash
from conftest import SMALL_SHARD_SIZE, arrow_rows, builder_rows
from datasets import load_dataset
from PIL import Image
from reference import assert_example_equal, split_files

from ssl4eos12 import cli
from ssl4eos12.constants import MODALITIES
from ssl4eos12.publish import MANIFEST_FILE, RECORDS_DIR, convert, plan, read_manifest, shard_sizes, verify
from ssl4eos12.publish.formats import RECORD_BATCH_BYTES, iter_tables
from ssl4eos12.synth import synthesize

SPLITS = ("train", "validation")
CONFIGS = ("S1GRD", "S2L1C", "S2L2A", "S2RGB", "default", "index")
#: Rows per location: the index config has one per (location, timestamp), the fixture 4 timestamps.
ROWS_PER_LOCATION = {"index": 4}
MiB = 1024 * 1024


def shard_paths(root: Path) -> list[Path]:
    """Every shard: Arrow IPC streams, and (none expected) Parquet files."""
    return sorted([*root.glob("*/*.arrow"), *root.glob("*/*.parquet")])


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (shards, card, manifest, records) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shard_plan_keeps_whole_files_in_split_order(data_dir):
    tasks = plan(data_dir, max_shard_size=SMALL_SHARD_SIZE)
    assert {t.config for t in tasks} == set(CONFIGS)
    for config in CONFIGS:
        for split in SPLITS:
            shards = [t for t in tasks if (t.config, t.split) == (config, split)]
            assert [t.index for t in shards] == list(range(len(shards)))
            assert all(t.num_shards == len(shards) for t in shards)
            assert [f for t in shards for f in t.files] == split_files(data_dir, split)
            assert shards[0].path == f"{config}/{split}-00000-of-{len(shards):05d}.arrow"
    # S2L1C files (~84 kB here) fill a 100 kB shard alone; S2RGB's seven times smaller ones share one
    assert len([t for t in tasks if (t.config, t.split) == ("S2L1C", "train")]) == 2
    assert len([t for t in tasks if (t.config, t.split) == ("S2RGB", "train")]) == 1


def test_full_size_plan_and_batches():
    """At 64 samples x 264 px: one file per S2L1C shard, 7 per S1GRD shard; record batches of <= 32 MB."""
    s2l1c_example = 4 * 13 * 264 * 264 * 2 + 4 * 264 * 264
    assert shard_sizes(s2l1c_example, 64) == (1, 4)
    assert shard_sizes(4 * 2 * 264 * 264 * 2, 64) == (7, 28)


def test_full_size_s2l1c_record_batches_stay_small(tmp_path):
    data = synthesize(tmp_path / "data", splits=("validation",), files=1, samples=10, size=264,
                      modalities=("S2L1C",))
    convert(data, tmp_path / "out", workers=1)
    path = tmp_path / "out" / "S2L1C" / "validation-00000-of-00001.arrow"
    with pa.memory_map(str(path)) as source:
        batches = list(pa.ipc.open_stream(source))
    assert [b.num_rows for b in batches] == [4, 4, 2]
    assert max(b.nbytes for b in batches) <= RECORD_BATCH_BYTES < 32 * MiB
    assert path.stat().st_size >= sum(b.nbytes for b in batches)  # buffers stored uncompressed


@pytest.mark.parametrize("config", ["S1GRD", "S2L1C", "S2L2A", "S2RGB"])
def test_modality_configs_equal_the_builder(converted_dir, data_dir, config):
    for split in SPLITS:
        expected = builder_rows(data_dir, config, split)
        prepared = load_dataset(str(converted_dir), config, split=split)
        assert prepared.features == load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split,
                                                 streaming=True).features
        streamed = load_dataset(str(converted_dir), config, split=split, streaming=True)
        for mode, rows in (("prepared", arrow_rows(prepared)), ("streamed", arrow_rows(streamed))):
            assert len(rows) == len(expected) == 6
            for i, (actual, example) in enumerate(zip(rows, expected)):
                assert_example_equal(actual, example, f"{config}/{split}/{mode}[{i}]")


def test_default_config_thumbnails_and_metadata(converted_dir, data_dir):
    for split in SPLITS:
        expected = builder_rows(data_dir, "all", split)
        rows = arrow_rows(load_dataset(str(converted_dir), split=split))  # the default config, as the viewer
        assert len(rows) == len(expected)
        streamed = arrow_rows(load_dataset(str(converted_dir), "default", split=split, streaming=True))
        for i, (row, streamed_row) in enumerate(zip(rows, streamed, strict=True)):
            assert_example_equal(streamed_row, row, f"default/{split}/streamed[{i}]")
        for row, example in zip(rows, expected):
            for name in ("sample", "file", "center_lat", "center_lon", "crs"):
                assert_example_equal({name: row[name]}, {name: example[name]}, name)
            for m in MODALITIES:
                assert_example_equal({"t": row[f"{m}_time"]}, {"t": example[f"{m}_time"]}, f"{m}_time")
                if m != "S1GRD":
                    # the documented classes 3 thin cloud, 4 thick cloud, 5 cloud shadow (not water or snow)
                    cloudy = np.isin(example[f"{m}_cloud_mask"], (3, 4, 5))
                    fraction = (np.count_nonzero(cloudy, axis=(1, 2)) / 256).astype(np.float32)
                    assert_example_equal({"f": row[f"{m}_cloud_fraction"]}, {"f": fraction}, f"{m}_cloud_fraction")
            assert "S1GRD_cloud_fraction" not in row
            t = int(np.argmin(row["S2RGB_cloud_fraction"]))  # least cloudy, first of equals
            assert row["thumbnail_time_index"] == t
            image = Image.open(io.BytesIO(row["thumbnail"]["bytes"]))
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (8, 8))  # half the 16 px patch
            rgb = example["S2RGB"][t].astype(np.float64)  # bands B04, B03, B02
            low, high = np.percentile(rgb, [2, 98])
            stretched = np.clip((rgb - low) * 255 / (high - low), 0, 255).round()
            reduced = stretched.reshape(3, 8, 2, 8, 2).mean(axis=(2, 4))  # each pixel the mean of 2 x 2
            assert np.abs(np.asarray(image).astype(np.float64) - np.moveaxis(reduced, 0, -1)).max() <= 1
    streamed = next(iter(load_dataset(str(converted_dir), "default", split="train", streaming=True)))
    assert isinstance(streamed["thumbnail"], Image.Image) and streamed["thumbnail"].size == (8, 8)


def test_configs_are_row_aligned(converted_dir):
    for split in SPLITS:
        samples = {c: load_dataset(str(converted_dir), c, split=split)["sample"] for c in CONFIGS}
        for config, values in samples.items():
            repeat = ROWS_PER_LOCATION.get(config, 1)
            assert values == [s for s in samples["S2L1C"] for _ in range(repeat)], config


def test_shards_carry_the_features(converted_dir):
    with pa.memory_map(str(converted_dir / "S2L2A" / "train-00000-of-00002.arrow")) as source:
        schema = pa.ipc.open_stream(source).schema  # an IPC stream, as datasets' "arrow" module reads first
    features = datasets.Features.from_arrow_schema(schema)
    assert features["S2L2A"] == datasets.Array4D(shape=(4, 12, 16, 16), dtype="int16")
    assert features["S2L2A_time"] == datasets.List(datasets.Value("timestamp[ns]"), length=4)
    assert b"huggingface" in schema.metadata
    with pa.memory_map(str(converted_dir / "default" / "train-00000-of-00001.arrow")) as source:
        assert datasets.Features.from_arrow_schema(pa.ipc.open_stream(source).schema)["thumbnail"] == datasets.Image()


def test_manifest_records_every_shard(converted_dir, data_dir):
    manifest = read_manifest(converted_dir)
    shards = {record["path"]: record for record in manifest["shards"]}
    assert set(shards) == {p.relative_to(converted_dir).as_posix() for p in shard_paths(converted_dir)}
    for path, record in shards.items():
        rows = sum(table.num_rows for table in iter_tables(converted_dir / path))
        assert record["rows"] == rows == 3 * len(record["files"]) * ROWS_PER_LOCATION.get(record["config"], 1)
        assert record["size"] == (converted_dir / path).stat().st_size
        assert record["xxh3_128"] == xxhash.xxh3_128((converted_dir / path).read_bytes()).hexdigest()
    for config, info in manifest["configs"].items():
        rows = 6 * ROWS_PER_LOCATION.get(config, 1)
        assert {s: v["num_rows"] for s, v in info["splits"].items()} == {"train": rows, "validation": rows}


def test_rerun_skips_finished_shards(converted_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted_dir, out)
    before = {p: p.stat().st_mtime_ns for p in shard_paths(out)}
    convert(data_dir, out, workers=1, max_shard_size=SMALL_SHARD_SIZE)
    assert {p: p.stat().st_mtime_ns for p in shard_paths(out)} == before
    assert tree_bytes(out) == tree_bytes(converted_dir)
    # a Parquet shard of an older version: removed, so datasets never sees two formats in one repository
    (out / "S2L2A" / "train-00000-of-00002.parquet").write_bytes(b"PAR1 old")
    convert(data_dir, out, workers=1, max_shard_size=SMALL_SHARD_SIZE)
    assert tree_bytes(out) == tree_bytes(converted_dir)


KILLED_CONVERSION = """
import os, signal, sys
import pyarrow as pa
from ssl4eos12.publish import convert

calls = 0
write_table = pa.ipc.RecordBatchStreamWriter.write_table

def write_table_then_die(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == 3:  # the third record batch: two shards are finished, the third one half-written
        os.kill(os.getpid(), signal.SIGKILL)
    return write_table(self, *args, **kwargs)

pa.ipc.RecordBatchStreamWriter.write_table = write_table_then_die
convert(sys.argv[1], sys.argv[2], workers=1, max_shard_size=int(sys.argv[3]))
"""


def test_killed_conversion_resumes_byte_identical(converted_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILLED_CONVERSION, str(data_dir), str(out), str(SMALL_SHARD_SIZE)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    finished = shard_paths(out)
    assert [p.relative_to(out).as_posix() for p in finished] == [
        "S2L1C/train-00000-of-00002.arrow", "S2L1C/train-00001-of-00002.arrow"]
    assert list(out.glob("*/.*.partial")), "the shard being written is left under a hidden temporary name"
    assert not (out / "README.md").exists()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    convert(data_dir, out, workers=1, max_shard_size=SMALL_SHARD_SIZE)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before, "finished shards were redone"
    assert not list(out.rglob("*.partial"))
    assert tree_bytes(out) == tree_bytes(converted_dir)


@pytest.mark.parametrize("runner", ["process pool", "dask"])
def test_parallel_runs_are_byte_identical(converted_dir, data_dir, tmp_path, runner):
    out = tmp_path / "out"
    if runner == "dask":
        from distributed import LocalCluster

        # a real scheduler and worker process on 127.0.0.1, talking TCP
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            convert(data_dir, out, scheduler=cluster.scheduler_address, max_shard_size=SMALL_SHARD_SIZE)
    else:
        convert(data_dir, out, workers=2, max_shard_size=SMALL_SHARD_SIZE)
    assert tree_bytes(out) == tree_bytes(converted_dir)


def test_verify_passes_then_catches_tampering(converted_dir, data_dir, tmp_path):
    from ssl4eos12.publish.manifest import file_checksum

    out = tmp_path / "out"
    shutil.copytree(converted_dir, out)
    assert verify(out, data_dir, workers=1) == []
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    records = {record["path"]: record for record in manifest["shards"]}

    # a flipped byte: the checksum no longer matches
    flipped = out / "S2L2A" / "train-00001-of-00002.arrow"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    # a flipped byte in the bands of an Arrow stream whose manifest entry is updated: the values tell
    bands = out / "S2L1C" / "validation-00000-of-00002.arrow"
    data = bytearray(bands.read_bytes())
    data[len(data) // 2] ^= 0x01
    bands.write_bytes(bytes(data))
    records["S2L1C/validation-00000-of-00002.arrow"].update(xxh3_128=file_checksum(bands))
    # a consistent forgery: a valid shard, its manifest entry updated, one value changed
    forged = out / "S1GRD" / "validation-00000-of-00001.arrow"
    table = pa.Table.from_batches(list(pa.ipc.open_stream(forged.read_bytes())))
    lat = table.column("center_lat").to_pylist()
    table = table.set_column(table.schema.get_field_index("center_lat"), "center_lat",
                             [[lat[0] + 1.0, *lat[1:]]])
    with pa.ipc.new_stream(str(forged), table.schema) as writer:
        writer.write_table(table)
    records["S1GRD/validation-00000-of-00001.arrow"].update(xxh3_128=file_checksum(forged), size=forged.stat().st_size)
    # the same in the index config: one cloud fraction
    index_shard = "index/validation-00000-of-00001.arrow"
    table = pa.Table.from_batches(list(pa.ipc.open_stream((out / index_shard).read_bytes())))
    column = table.schema.get_field_index("S2L2A_cloud_fraction")
    fractions = table.column(column).to_pylist()
    table = table.set_column(column, table.field(column), pa.array([fractions[0] + 0.5, *fractions[1:]], pa.float32()))
    with pa.ipc.new_stream(str(out / index_shard), table.schema) as writer:
        writer.write_table(table)
    records[index_shard].update(xxh3_128=file_checksum(out / index_shard), size=(out / index_shard).stat().st_size)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    # a missing shard and a stray one
    (out / "S2RGB" / "train-00000-of-00001.arrow").rename(out / "S2RGB" / "train-00000-of-00009.arrow")

    problems = verify(out, data_dir, workers=1)
    text = "\n".join(problems)
    assert "S2L2A/train-00001-of-00002.arrow: checksum (xxh3_128) differs from the manifest" in text
    assert "S2L1C/validation-00000-of-00002.arrow: checksum" not in text
    assert [p for p in problems if p.startswith("S2L1C/")] and \
        all("S2L1C differs from the source" in p for p in problems if p.startswith("S2L1C/")), problems
    assert "S1GRD/validation-00000-of-00001.arrow: row 0 (0000006), center_lat differs from the source" in text
    assert "S1GRD/validation-00000-of-00001.arrow: checksum" not in text
    assert "index/validation-00000-of-00001.arrow: row 0 (0000006), S2L2A_cloud_fraction differs from the source" in text
    assert "S2RGB/train-00000-of-00001.arrow: missing" in text
    assert "S2RGB/train-00000-of-00009.arrow: not in the manifest" in text
    assert all(p.split(":")[0].count("/") == 1 for p in problems), problems  # every problem names its shard


def test_cli_convert_and_verify(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cli.main(["convert", str(data_dir), str(out), "--configs", "S2RGB", "default", "--splits", "validation",
              "--workers", "1"])
    assert sorted(p.relative_to(out).as_posix() for p in shard_paths(out)) == [
        "S2RGB/validation-00000-of-00001.arrow", "default/validation-00000-of-00001.arrow"]
    assert sorted(p.name for p in (out / RECORDS_DIR).rglob("*.json")) == ["validation-00000-of-00001.json"] * 2
    cli.main(["verify", str(out), str(data_dir)])
    assert "all shards match their sources" in capsys.readouterr().out
    (out / "S2RGB" / "validation-00000-of-00001.arrow").write_bytes(b"\xff\xff\xff\xff broken")
    with pytest.raises(SystemExit, match="problem"):
        cli.main(["verify", str(out), str(data_dir)])
    assert "S2RGB/validation-00000-of-00001.arrow: not a readable arrow file" in capsys.readouterr().err


def test_missing_modality_is_a_clear_error(tmp_path):
    data = synthesize(tmp_path / "data", splits=("validation",), files=1, samples=2, size=8, modalities=("S1GRD",))
    with pytest.raises(FileNotFoundError, match="no files of modality S2L2A"):
        convert(data, tmp_path / "out", configs=["S2L2A"], workers=1)
    # only S1: no Sentinel-2 image to make thumbnails of, the default config still lists the metadata
    convert(data, tmp_path / "out", workers=1)
    assert "thumbnail" not in load_dataset(str(tmp_path / "out"), "default", split="validation").features
    assert os.path.exists(tmp_path / "out" / "README.md")


def test_odd_sizes_extra_modality_and_s2l2a_thumbnails(odd_data_dir, tmp_path):
    """5 samples per file, 12 px, 3 timestamps, validation only, NDVI asked for, thumbnails from S2L2A."""
    out = tmp_path / "out"
    convert(odd_data_dir, out, configs=["NDVI", "S1GRD", "default"], workers=1)
    streamed = load_dataset("ssl4eos12", modalities=["NDVI"], data_dir=str(odd_data_dir), split="validation",
                            streaming=True)
    rows = arrow_rows(load_dataset(str(out), "NDVI", split="validation"))
    assert len(rows) == 15
    for i, (row, example) in enumerate(zip(rows, streamed, strict=True)):
        example = {k: np.asarray(v) if isinstance(v, list) and not isinstance(v[0], str) else v
                   for k, v in example.items()}
        assert_example_equal(row, example, f"NDVI[{i}]")
    default = load_dataset(str(out), "default", split="validation")
    assert default.features["S2L2A_time"] == datasets.List(datasets.Value("timestamp[ns]"), length=3)
    assert set(default.features) >= {"S2L2A_cloud_fraction", "S1GRD_time", "thumbnail"}
    assert default[0]["thumbnail"].size == (6, 6)
    assert verify(out, odd_data_dir, workers=1) == []
    ndvi = read_manifest(out)["configs"]["NDVI"]["statistics"]["bands"]
    assert [band["band"] for band in ndvi] == ["NDVI"] and -1 <= ndvi[0]["mean"] <= 1


def test_shard_writer_hashes_what_it_writes_and_leaves_no_thread(tmp_path):
    import threading

    from ssl4eos12.publish.formats import ShardWriter
    features = datasets.Features({"x": datasets.Array2D(shape=(3, 4), dtype="int16"), "s": datasets.Value("string")})
    values = np.arange(10 * 12, dtype=np.int16).reshape(10, 3, 4)
    tables = [datasets.Dataset.from_dict({"x": values[i:i + 5], "s": [str(j) for j in range(i, i + 5)]},
                                         features=features).data.table for i in (0, 5)]
    with ShardWriter(tmp_path / "a.arrow", features) as writer:
        for table in tables:
            writer.write_table(table)
    assert writer.checksum == xxhash.xxh3_128((tmp_path / "a.arrow").read_bytes()).hexdigest()
    assert [t.num_rows for t in iter_tables(tmp_path / "a.arrow")] == [5, 5]
    read = load_dataset(str(tmp_path), split="train").with_format("numpy")
    assert read.features == features and np.array_equal(read["x"], values)
    # an error while writing (a table of another schema): raised, and the helper thread is gone
    with pytest.raises(pa.ArrowInvalid), ShardWriter(tmp_path / "b.arrow", features) as writer:
        writer.write_table(pa.table({"y": [1]}))
    assert not [t for t in threading.enumerate() if t.name.startswith("ssl4eos12-")]  # its helper thread


def test_gathered_columns_write_the_bytes_of_a_copy(converted_dir, data_dir, tmp_path, monkeypatch):
    """The big arrays written block by block from the decoded (time-major) file, with no per-batch copy, give the
    bytes the copying path gives (the small fixture's blocks are below the size that is gathered by default)."""
    from ssl4eos12.publish import formats

    monkeypatch.setattr(formats, "GATHER_MIN_BLOCK", 1)
    gathered = []
    gather = formats.ShardWriter.gather
    monkeypatch.setattr(formats.ShardWriter, "gather", lambda self, array: gathered.append(array.shape) or gather(self, array))
    out = tmp_path / "out"
    convert(data_dir, out, configs=["S2L2A", "S1GRD"], workers=1, max_shard_size=SMALL_SHARD_SIZE)
    assert (3, 4, 12, 16, 16) in gathered and (3, 4, 16, 16) in gathered  # bands and cloud masks of 3 rows
    written = shard_paths(out)
    assert {p.parent.name for p in written} == {"S2L2A", "S1GRD"}
    for path in written:
        assert path.read_bytes() == (converted_dir / path.relative_to(out)).read_bytes(), path


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int8, np.uint8])
def test_integer_band_statistics_are_exact(dtype):
    from ssl4eos12.publish.shards import _integer_sums

    info = np.iinfo(dtype)
    # decoded time-major, handed out as (sample, time, band, y, x), as the sources do
    time_major = np.random.default_rng(0).integers(info.min, info.max, (3, 5, 4, 7, 6), dtype=dtype, endpoint=True)
    time_major[0, 0], time_major[1, 1] = info.min, info.max  # the largest squares
    bands = np.moveaxis(time_major, 0, 1)
    sums, squares = _integer_sums(bands)
    per_band = [[int(v) for v in bands[:, :, b].reshape(-1)] for b in range(bands.shape[2])]
    assert sums.tolist() == [sum(values) for values in per_band]
    assert squares.tolist() == [sum(v * v for v in values) for values in per_band]


def test_cloud_classes_and_thumbnail_percentiles():
    from ssl4eos12.index import is_cloudy
    from ssl4eos12.publish.shards import THUMBNAIL_STRETCH, _percentile_of_counts

    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(is_cloudy(every), np.isin(every, (3, 4, 5)))
    for dtype in (np.uint16, np.int16):
        values = np.arange(-300, 300).astype(dtype)
        assert np.array_equal(is_cloudy(values), np.isin(values, (3, 4, 5)))
    rng = np.random.default_rng(1)
    for size in (1, 2, 3, 101, 5000):
        values = rng.integers(0, 40, size)
        ranks = np.cumsum(np.bincount(values))
        for q in THUMBNAIL_STRETCH:
            assert _percentile_of_counts(ranks, q) == pytest.approx(np.percentile(values, q), abs=1e-9)


def test_threads_change_neither_bytes_nor_statistics(data_dir, tmp_path, monkeypatch):
    """Decoding, statistics (in pieces of one location here) and thumbnails on 1 or 5 threads: the same shards, byte
    for byte, and the same statistics, float sums included."""
    import importlib

    plan_module = importlib.import_module("ssl4eos12.publish.plan")  # the package's ``plan`` is the function
    shards_module = importlib.import_module("ssl4eos12.publish.shards")

    monkeypatch.setattr(shards_module, "STATISTICS_PIECE", 1)
    manifests = []
    for threads in (1, 5):
        monkeypatch.setattr(plan_module, "usable_cores", lambda threads=threads: threads)
        out = tmp_path / f"threads{threads}"
        manifests.append(convert(data_dir, out, configs=["S1GRD", "S2L2A", "default"], workers=1,
                                 max_shard_size=SMALL_SHARD_SIZE))
    one, five = (tmp_path / "threads1"), (tmp_path / "threads5")
    assert [p.relative_to(one) for p in shard_paths(one)] == [p.relative_to(five) for p in shard_paths(five)]
    for path in shard_paths(one):
        assert path.read_bytes() == (five / path.relative_to(one)).read_bytes(), path
    assert manifests[0]["configs"] == manifests[1]["configs"]
    assert manifests[0]["configs"]["S1GRD"]["statistics"]["bands"][0]["nan_fraction"] > 0  # float sums, NaNs
