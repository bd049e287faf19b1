"""The GeoParquet index and the filters it serves, checked against what xarray reads from every file.

The reference here is independent of the package: a pandas table computed from the files with xarray (centres,
times, cloud fractions of the documented cloud classes 3-5), and the examples of ``reference.expected_examples``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import arrow_rows, assert_identical, open_with_xarray
from reference import SPLIT_FOLDERS, assert_example_equal, expected_examples, split_files

import ssl4eos12
from ssl4eos12.index import Filters, build_index, from_webdataset_metadata, index_features, select, wkb_ring
from ssl4eos12.publish import plan
from ssl4eos12.synth import synthesize

MODALITIES = ["S2L1C", "S2L2A", "S2RGB", "S1GRD"]
CLOUDY = (3, 4, 5)  # the authors' classes thin cloud, thick cloud, cloud shadow


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory):
    """2 files x 6 locations per split at real places (two of them in New Zealand) and times, indexed."""
    root = synthesize(tmp_path_factory.mktemp("indexed"), files=2, samples=6, size=16, seed=3)
    build_index(root, workers=1)
    return root


def reference_rows(data_dir: Path, split: str) -> pd.DataFrame:
    """One row per (location, timestamp), from xarray alone."""
    rows = []
    for name in split_files(data_dir, split):
        files = {m: open_with_xarray(Path(data_dir) / SPLIT_FOLDERS[split] / m / name) for m in MODALITIES}
        first = files[MODALITIES[0]]
        for i, sample in enumerate(first["sample"].values):
            for t in range(first.sizes["time"]):
                row = {"sample": str(sample), "file": name, "split": split, "time_index": t,
                       "center_lon": first["center_lon"].values[i], "center_lat": first["center_lat"].values[i],
                       "crs": first["crs"].values[i]}
                for m, ds in files.items():
                    row[f"{m}_time"] = ds["time_"].sel(sample=sample).values[t]
                    if "cloud_mask" in ds:
                        mask = ds["cloud_mask"].sel(sample=sample).values[t]
                        row[f"{m}_cloud_fraction"] = np.float32(np.isin(mask, CLOUDY).sum() / mask.size)
                rows.append(row)
    return pd.DataFrame(rows)


def test_index_matches_what_xarray_reads(indexed_dir):
    for split in ("train", "validation"):
        path = Path(indexed_dir) / "splits" / f"ssl4eos12_{SPLIT_FOLDERS[split]}_index.parquet"
        table = pq.read_table(path)
        expected = reference_rows(indexed_dir, split)
        assert table.num_rows == len(expected) == 2 * 6 * 4
        assert_columns_equal(table, expected, split)
        assert expected[[c for c in expected if c.endswith("_cloud_fraction")]].to_numpy().max() > 0  # some clouds
        check_footprints(table, indexed_dir, split)


def assert_columns_equal(table: pa.Table, expected: pd.DataFrame, where: str) -> None:
    """Every column of ``expected`` equals ``table``'s, value for value, in the index's dtypes."""
    for column in expected.columns:
            actual = table.column(column).to_numpy(zero_copy_only=False)
            wanted = expected[column].to_numpy()
            if column.endswith("_time"):
                # as integers: NaT (a modality with fewer timestamps) equals NaT
                actual, wanted = (v.astype("datetime64[ns]").view(np.int64) for v in (actual, wanted))
            elif column.endswith("_cloud_fraction"):
                wanted = wanted.astype(np.float32)
            elif column in ("center_lon", "center_lat"):
                wanted = wanted.astype(np.float64)
            elif column in ("crs", "time_index"):
                wanted = wanted.astype(np.int64)
            else:
                actual, wanted = actual.astype(str), wanted.astype(str)
            assert_identical(actual, wanted, f"{where}.{column}")


def test_converted_copy_carries_the_index_as_a_config(converted_dir, data_dir, tmp_path):
    """The ``index`` config: the index file's columns and values (checked against xarray), geo metadata, and
    ``datasets`` loads it with the index's types."""
    written = build_index(data_dir, tmp_path / "index", workers=1)  # elsewhere: data_dir has no index
    for split in ("train", "validation"):
        shards = sorted((Path(converted_dir) / "index").glob(f"{split}-*.arrow"))
        batches = [batch for shard in shards for batch in pa.ipc.open_stream(pa.memory_map(str(shard)))]
        table = pa.Table.from_batches(batches)
        assert_columns_equal(table, reference_rows(data_dir, split), f"index config {split}")
        check_footprints(table, data_dir, split)
        index_file = pq.read_table(written[split])
        assert table.column_names == index_file.column_names
        assert table.cast(index_file.schema).equals(index_file.replace_schema_metadata(None))  # geometry included
        geo = json.loads(pa.ipc.open_stream(pa.memory_map(str(shards[0]))).schema.metadata[b"geo"])
        assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
        assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}
        loaded = datasets.load_dataset(str(converted_dir), "index", split=split)
        assert loaded.features == index_features(plan(data_dir, ["index"])[0].layouts)
        assert loaded.data.table.cast(index_file.schema).equals(index_file.replace_schema_metadata(None))


def check_footprints(table: pa.Table, data_dir: Path, split: str) -> None:
    """Each footprint: the patch's pixel extent in its UTM zone, projected (independently, here) to lon/lat."""
    from pyproj import Transformer

    index = table.to_pandas()
    for name in split_files(data_dir, split):
        ds = open_with_xarray(Path(data_dir) / SPLIT_FOLDERS[split] / "S2L2A" / name)
        for i, sample in enumerate(ds["sample"].values):
            x, y, crs = ds["x_"].values[i], ds["y_"].values[i], int(ds["crs"].values[i])
            corners_x = [x.max() + 5, x.max() + 5, x.min() - 5, x.min() - 5, x.max() + 5]  # 10 m pixels
            corners_y = [y.min() - 5, y.max() + 5, y.max() + 5, y.min() - 5, y.min() - 5]
            lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(corners_x, corners_y)
            for wkb in index.loc[(index["file"] == name) & (index["sample"] == str(sample)), "geometry"]:
                ring = wkb_ring(wkb)
                np.testing.assert_allclose(ring, np.stack([lon, lat], axis=1), rtol=0, atol=1e-9)
                # the centre the file states lies inside
                assert ring[:, 0].min() < ds["center_lon"].values[i] < ring[:, 0].max()
                assert ring[:, 1].min() < ds["center_lat"].values[i] < ring[:, 1].max()


def test_index_is_valid_geoparquet(indexed_dir):
    path = Path(indexed_dir) / "splits" / "ssl4eos12_train_index.parquet"
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["version"] == "1.1.0"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    rings = np.concatenate([wkb_ring(g) for g in pq.read_table(path).column("geometry").to_pylist()])
    assert column["bbox"] == [*rings.min(axis=0).tolist(), *rings.max(axis=0).tolist()]
    geopandas = pytest.importorskip("geopandas")
    frame = geopandas.read_parquet(path)
    assert frame.crs.to_epsg() == 4326
    assert frame.geometry.is_valid.all()
    centres = geopandas.points_from_xy(frame["center_lon"], frame["center_lat"], crs=4326)
    assert frame.geometry.contains(geopandas.GeoSeries(centres, index=frame.index)).all()
    # ~2.64 km squares, as 16 pixels of 10 m here: the area in a metric CRS
    for crs, rows in frame.groupby("crs"):  # in each location's own UTM zone
        assert np.allclose(rows.geometry.to_crs(int(crs)).area, 160.0 ** 2, rtol=1e-6)


# --- filters: the examples yielded are exactly those a pandas computation over the files selects -----------

def expected_selection(rows: pd.DataFrame, modalities, *, bbox=None, time_range=None, max_cloud=None, samples=None,
                       single_timestamp=False) -> list[tuple[str, str, int | None]]:
    """(file, sample, time index or None) kept, in file order, computed with pandas from the reference rows."""
    ok = pd.Series(True, index=rows.index)
    if bbox is not None:
        w, s, e, n = bbox
        lon = rows["center_lon"]
        ok &= (lon >= w) & (lon <= e) if w <= e else (lon >= w) | (lon <= e)
        ok &= (rows["center_lat"] >= s) & (rows["center_lat"] <= n)
    if time_range is not None:
        start, end = (pd.Timestamp(v).tz_convert("UTC").tz_localize(None) if pd.Timestamp(v).tzinfo
                      else pd.Timestamp(v) for v in time_range)
        for m in modalities:
            ok &= (rows[f"{m}_time"] >= start) & (rows[f"{m}_time"] < end)
    if max_cloud is not None:
        clouds = [f"{m}_cloud_fraction" for m in modalities if m != "S1GRD"]
        ok &= rows[clouds].max(axis=1) <= np.float32(max_cloud)
    if samples is not None:
        ok &= rows["sample"].isin(samples)
    rows = rows.assign(ok=ok)
    if single_timestamp:
        return [(r.file, r.sample, r.time_index) for r in rows[rows.ok].itertuples()]
    whole = rows.groupby(["file", "sample"], sort=False)["ok"].all()
    return [(file, sample, None) for (file, sample), keep in whole.items() if keep]


def comparable(example: dict) -> dict:
    return {k: (np.asarray(v) if isinstance(v, list) and v and not isinstance(v[0], str) else v)
            for k, v in example.items()}


def check_filter(data_dir, config, modalities, split="train", single_timestamp=False, streaming=True, **filters):
    reference = reference_rows(data_dir, split)
    wanted = expected_selection(reference, modalities, bbox=filters.get("bbox"),
                                time_range=filters.get("time_range"), max_cloud=filters.get("max_cloud_fraction"),
                                samples=filters.get("samples"), single_timestamp=single_timestamp)
    expected = [e for e in expected_examples(data_dir, split, modalities, single_timestamp)
                if (e["file"], e["sample"], int(e["time_index"]) if single_timestamp else None) in wanted]
    kwargs = dict(name=config, split=split, data_dir=str(data_dir), single_timestamp=single_timestamp, **filters)
    if config == "custom":  # any joint set of modalities
        kwargs.update(name="all", modalities=modalities)
    if streaming:
        actual = [comparable(e) for e in datasets.load_dataset("ssl4eos12", **kwargs, streaming=True)]
    else:
        actual = arrow_rows(datasets.load_dataset("ssl4eos12", **kwargs, cache_dir=str(Path(data_dir).parent / "c")))
        for example in actual:
            for m in modalities:
                example[f"{m}_file_id"] = example[f"{m}_file_id"] if single_timestamp else \
                    [str(v) for v in example[f"{m}_file_id"]]
    assert len(actual) == len(expected), f"{filters}: {len(actual)} examples, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"{config}{filters}[{i}]")
    return len(actual)


NZ_AND_AMERICAS = (170.0, -60.0, -30.0, 60.0)  # across the antimeridian: New Zealand to the Atlantic


@pytest.mark.parametrize("config,modalities,filters", [
    ("all", MODALITIES, {"bbox": NZ_AND_AMERICAS}),
    ("S2L2A", ["S2L2A"], {"bbox": (-10.0, 30.0, 60.0, 60.0)}),
    ("all", MODALITIES, {"time_range": ("2020-01-01", "2021-01-01")}),
    ("S1GRD", ["S1GRD"], {"time_range": ("2019-12-01T00:00:00+00:00", "2020-12-15T12:00:00+00:00")}),
    ("S2RGB", ["S2RGB"], {"max_cloud_fraction": 0.25}),
    ("all", MODALITIES, {"samples": ["0000001", "0000006", "0000011", "9999999"]}),
    ("all", MODALITIES, {"bbox": NZ_AND_AMERICAS, "max_cloud_fraction": 0.4, "time_range": ("2019-06-01", "2021-06-01")}),
])
def test_filters_yield_what_pandas_selects(indexed_dir, config, modalities, filters):
    assert check_filter(indexed_dir, config, modalities, **filters) > 0


def test_filters_single_timestamp_and_prepared(indexed_dir):
    # each (location, timestamp) alone; a modality pair of the config only
    kept = check_filter(indexed_dir, "custom", ["S2L1C", "S1GRD"], single_timestamp=True,
                        max_cloud_fraction=0.1, time_range=("2020-03-01", "2020-10-01"))
    assert 0 < kept < 12 * 4
    assert check_filter(indexed_dir, "S2L2A", ["S2L2A"], split="validation", streaming=False,
                        bbox=NZ_AND_AMERICAS, max_cloud_fraction=0.3) > 0


def test_files_without_a_match_are_never_opened(indexed_dir, tmp_path, monkeypatch, caplog):
    root = Path(shutil.copytree(indexed_dir, tmp_path / "copy"))
    names = split_files(root, "train")
    # one location of the second train file, and nothing else: every other train file is removed, and any read
    # of one would fail with "file not found" (validation keeps its files: with no match there, its layout is
    # probed from its first file's metadata, but no file of it is fetched)
    sample = str(open_with_xarray(root / "train" / "S2L2A" / names[1])["sample"].values[2])
    for path in (root / "train").rglob("*.zarr.zip"):
        if path.name != names[1]:
            path.unlink()
    reads = []
    original = ssl4eos12.sources.ChunkedSource.fetch  # where the builder starts reading a file (then decodes it)

    def counting_fetch(self, split_folder, shard, *args, **kwargs):
        reads.append(shard)
        return original(self, split_folder, shard, *args, **kwargs)

    monkeypatch.setattr(ssl4eos12.sources.ChunkedSource, "fetch", counting_fetch)
    with caplog.at_level(logging.INFO, logger="ssl4eos12.builder"):
        streamed = list(datasets.load_dataset("ssl4eos12", "all", data_dir=str(root), split="train", streaming=True,
                                              samples=[int(sample)]))  # an integer id is the same location
    assert [e["sample"] for e in streamed] == [sample]
    assert reads == [names[1]]  # the one file with a match, read once
    assert f"train: samples=['{sample}'] selects 1 of 2 file(s), 1 example(s)" in caplog.text
    with pytest.warns(ssl4eos12.SSL4EOS12EmptySelectionWarning, match="keeps no example of split 'validation'"):
        empty = list(datasets.load_dataset("ssl4eos12", "all", data_dir=str(root), split="validation",
                                           streaming=True, samples=[sample]))
    assert empty == [] and reads == [names[1]]


# --- where the index comes from -------------------------------------------------------------------------------

def authors_metadata(data_dir: Path, split: str) -> pa.Table:
    """The Zarr release's ``splits/{split}_metadata.parquet`` as the authors write it (from our own index)."""
    index = pq.read_table(Path(data_dir) / "splits" / f"ssl4eos12_{SPLIT_FOLDERS[split]}_index.parquet")
    return pa.table({
        "sample_id": index["sample"], "time_id": index["time_index"], "time": index["S2L2A_time"],
        "tile_id": pa.array(["T33SWC"] * index.num_rows), "geometry": index["geometry"], "tile_crs": index["crs"],
        "file": index["file"],
    })


def test_authors_metadata_serves_what_it_can(indexed_dir, tmp_path):
    root = Path(shutil.copytree(indexed_dir, tmp_path / "authors", ignore=shutil.ignore_patterns("*_index.parquet")))
    for split in ("train", "validation"):
        pq.write_table(authors_metadata(indexed_dir, split), root / "splits" / f"{SPLIT_FOLDERS[split]}_metadata.parquet")
    # the footprint's centre stands in for the file's: a bbox well clear of the locations' edges
    assert check_filter(root, "S2L2A", ["S2L2A"], bbox=NZ_AND_AMERICAS, time_range=("2020-01-01", "2021-01-01"),
                        samples=[f"{i:07d}" for i in range(0, 12, 2)]) > 0
    for config, keywords, missing in [("S2L2A", {"max_cloud_fraction": 0.5}, "S2L2A_cloud_fraction"),
                                      ("S1GRD", {"time_range": ("2020-01-01", "2021-01-01")}, "S1GRD_time")]:
        with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=f"{missing}.*run `ssl4eos12 index"):
            list(datasets.load_dataset("ssl4eos12", config, data_dir=str(root), split="train", streaming=True,
                                       **keywords))


def test_webdataset_metadata_rows():
    frame = pd.DataFrame({"sample": ["0000001", "0000002"], "tar": ["ssl4eos12_shard_000001.tar"] * 2,
                          "center_lat": [10.0, 20.0], "center_lon": [5.0, 6.0],
                          **{f"cloud_cover_{t}": [0.1 * t, 0.05] for t in range(4)}})
    rows = from_webdataset_metadata(frame, "val_metadata.parquet")
    assert list(rows["time_index"]) == [0, 1, 2, 3] * 2 and list(rows["sample"]) == ["0000001"] * 4 + ["0000002"] * 4
    kept = select(rows, ["S2L2A"], Filters.from_keywords(max_cloud_fraction=0.15))
    assert kept == {"ssl4eos12_shard_000001.tar": {"0000002": None}}
    kept = select(rows, ["S2L2A"], Filters.from_keywords(max_cloud_fraction=0.15), single_timestamp=True)
    assert kept["ssl4eos12_shard_000001.tar"]["0000001"] == frozenset({0, 1})


def test_cloud_filter_needs_a_cloud_mask(indexed_dir):
    with pytest.raises(ValueError, match=r"max_cloud_fraction needs a Sentinel-2 modality .*\['S1GRD'\]"):
        list(datasets.load_dataset("ssl4eos12", "S1GRD", data_dir=str(indexed_dir), split="train", streaming=True,
                                   max_cloud_fraction=0.5))


def test_no_index_is_a_clear_error(data_dir):
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="run `ssl4eos12 index"):
        list(datasets.load_dataset("ssl4eos12", "S2L2A", data_dir=str(data_dir), split="train", streaming=True,
                                   bbox=(0, 0, 10, 10)))


@pytest.mark.parametrize("keywords,message", [
    ({"bbox": (0, 0, 10)}, "bbox must be four numbers"),
    ({"bbox": (0, 50, 10, 40)}, "min_lat <= max_lat"),
    ({"time_range": ("2021-01-01", "2020-01-01")}, "start must come before"),
    ({"time_range": ("spring", "2020-01-01")}, "not an ISO date"),
    ({"max_cloud_fraction": 1.5}, "between 0 and 1"),
    ({"samples": "0000001"}, "list of location ids"),
])
def test_bad_filter_keywords(data_dir, keywords, message):
    with pytest.raises(ValueError, match=message):
        ssl4eos12.SSL4EOS12(config_name="S2L2A", data_dir=str(data_dir), **keywords)


def test_index_elsewhere_and_remote(indexed_dir, tmp_path):
    from servers import HubServer, RangeHTTPServer, use_hub

    root = Path(shutil.copytree(indexed_dir, tmp_path / "plain", ignore=shutil.ignore_patterns("*_index.parquet")))
    single = tmp_path / "kept-elsewhere" / "index.parquet"
    from ssl4eos12.cli import main

    main(["index", str(root), "--out", str(single), "--workers", "1"])
    assert set(pq.read_table(single, columns=["split"]).column("split").to_pylist()) == {"train", "validation"}
    filters = {"bbox": NZ_AND_AMERICAS, "max_cloud_fraction": 0.5}
    local = [comparable(e) for e in datasets.load_dataset("ssl4eos12", "all", data_dir=str(indexed_dir), split="train",
                                                          streaming=True, **filters)]
    assert local
    elsewhere = datasets.load_dataset("ssl4eos12", "all", data_dir=str(root), split="train", streaming=True,
                                      index=str(single), **filters)
    for a, b in zip([comparable(e) for e in elsewhere], local, strict=True):
        assert_example_equal(a, b, "index=")
    selected = {e["file"] for e in local}
    with RangeHTTPServer(indexed_dir) as srv:  # the root's own index, read over HTTP
        remote = datasets.load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True, **filters)
        for a, b in zip([comparable(e) for e in remote], local, strict=True):
            assert_example_equal(a, b, "http")
        zips = {path.rsplit("/", 1)[1] for _, path, _ in srv.requests if path.endswith(".zarr.zip")}
        assert zips == selected
        assert any(path.endswith("ssl4eos12_train_index.parquet") for _, path, _ in srv.requests)
    with HubServer() as hub, use_hub(hub, home=tmp_path / "hf"):
        hub.seed("someone/mirror", root)  # no index in the repo: passed as a URL of another repo
        hub.seed("someone/index", files={"index.parquet": single.read_bytes()})
        remote = datasets.load_dataset("ssl4eos12", "all", root="hf://datasets/someone/mirror", split="train",
                                       streaming=True, index="hf://datasets/someone/index/index.parquet", **filters)
        for a, b in zip([comparable(e) for e in remote], local, strict=True):
            assert_example_equal(a, b, "hf index=")
        hub.seed("someone/indexed", indexed_dir)  # the repo's own splits/ssl4eos12_train_index.parquet
        remote = datasets.load_dataset("ssl4eos12", "all", root="hf://datasets/someone/indexed", split="train",
                                       streaming=True, **filters)
        for a, b in zip([comparable(e) for e in remote], local, strict=True):
            assert_example_equal(a, b, "hf")


def test_filters_survive_resharding_and_workers(indexed_dir):
    DataLoader = pytest.importorskip("torch.utils.data").DataLoader

    stream = datasets.load_dataset("ssl4eos12", "S2RGB", data_dir=str(indexed_dir), split="train", streaming=True,
                                   single_timestamp=True, max_cloud_fraction=0.3)
    kept = sorted((e["sample"], e["time_index"]) for e in stream)
    assert 0 < len(kept) < 12 * 4
    assert sorted((e["sample"], e["time_index"]) for e in stream.reshard()) == kept
    loader = DataLoader(stream, batch_size=None, num_workers=2, collate_fn=lambda example: example)
    assert sorted((e["sample"], e["time_index"]) for e in loader) == kept


def test_stale_or_partial_index_is_an_error(indexed_dir, tmp_path):
    root = Path(shutil.copytree(indexed_dir, tmp_path / "grown"))
    names = split_files(root, "train")
    new_name = names[-1].replace("000002", "000003")
    for m in MODALITIES:  # a file that came after the index was written
        shutil.copy(root / "train" / m / names[0], root / "train" / m / new_name)
    (root / "splits" / "ssl4eos12_train.txt").write_text("\n".join([*names, new_name]) + "\n")
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=f"does not list 1 of the 3 file.*{new_name}.*rerun"):
        list(datasets.load_dataset("ssl4eos12", "S2RGB", data_dir=str(root), split="train", streaming=True,
                                   max_cloud_fraction=0.5))
    train_only = tmp_path / "train-only.parquet"
    build_index(indexed_dir, str(train_only), splits=["train"], workers=1)
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="no rows of split validation.*--splits validation"):
        list(datasets.load_dataset("ssl4eos12", "S2RGB", data_dir=str(indexed_dir), split="validation",
                                   streaming=True, max_cloud_fraction=0.5, index=str(train_only)))


def test_index_cli_errors(tmp_path, capsys):
    from ssl4eos12.cli import main

    with pytest.raises(SystemExit, match="error: DATA_DIR .*nowhere: no such folder"):
        main(["index", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="error: DATA_DIR .*remote root cannot be written to; pass --out"):
        main(["index", "https://127.0.0.1:9/ssl4eo-s12"])
    with pytest.raises(SystemExit, match="error: --workers: must be at least 1"):
        (tmp_path / "train").mkdir()
        main(["index", str(tmp_path), "--workers", "0"])


def test_index_is_resumable(tmp_path, monkeypatch):
    from ssl4eos12 import index as index_module

    root = synthesize(tmp_path / "d", splits=("validation",), files=3, samples=2, size=8)
    ran = []
    original = index_module.IndexTask.run

    def failing_run(self):
        ran.append(self.shard)
        if len(ran) == 2:
            raise RuntimeError("worker lost")
        return original(self)

    monkeypatch.setattr(index_module.IndexTask, "run", failing_run)
    with pytest.raises(RuntimeError, match="worker lost"):
        build_index(root, workers=1)
    assert not (root / "splits" / "ssl4eos12_val_index.parquet").exists()  # never half an index
    ran.clear()
    monkeypatch.setattr(index_module.IndexTask, "run", lambda self: ran.append(self.shard) or original(self))
    build_index(root, workers=1)
    names = split_files(root, "validation")
    assert ran == names[1:]  # the first shard's rows were kept
    table = pq.read_table(root / "splits" / "ssl4eos12_val_index.parquet")
    assert table.column("file").to_pylist() == [n for n in names for _ in range(2 * 4)]
    assert not list((root / "splits").glob(".ssl4eos12-index-parts-*"))  # cleaned up


def test_footprint_without_coordinate_vectors(indexed_dir):
    """A release whose members lack x_/y_ (and crs): the patch's size around its centre, in its UTM zone."""
    from ssl4eos12.index import block_rows
    from ssl4eos12.sources import open_source

    source = open_source(str(indexed_dir), ["S2L2A"])
    name = split_files(indexed_dir, "train")[0]
    layouts = source.layouts("train", name)
    block = next(source.blocks("train", name, layouts))
    full = block_rows(block, "train")
    for drop in (("x_", "y_"), ("x_", "y_", "crs")):
        for variable in drop:
            block.reference.variables.pop(variable, None)
        rows = block_rows(block, "train")
        for a, b in zip(rows.column("geometry").to_pylist(), full.column("geometry").to_pylist()):
            # synth centres its pixel grid on the centre rounded to the 10 m grid: within 5 m, ~5e-5 degrees
            np.testing.assert_allclose(wkb_ring(a), wkb_ring(b), rtol=0, atol=1e-4)
    assert rows.column("crs").null_count == rows.num_rows


def test_remote_reads_only_the_selected_timestamps(tmp_path):
    """single_timestamp with a time filter: a remote file sends only the chunks of the timestamps kept."""
    from servers import RangeHTTPServer

    root = synthesize(tmp_path / "d", splits=("train",), files=2, samples=6, size=64, seed=5)
    build_index(root, workers=1)
    index = pq.read_table(root / "splits" / "ssl4eos12_train_index.parquet").to_pandas()
    start = index[[f"{m}_time" for m in MODALITIES]].min().min()
    window = (start.isoformat(), (start + pd.Timedelta(days=60)).isoformat())
    keywords = {"split": "train", "streaming": True, "single_timestamp": True, "time_range": window}
    local = [comparable(e) for e in datasets.load_dataset("ssl4eos12", "all", data_dir=str(root), **keywords)]
    times = {int(e["time_index"]) for e in local}
    assert local and len(times) < 4  # the window keeps some timestamps only
    check_filter(root, "all", MODALITIES, single_timestamp=True, time_range=window)
    with RangeHTTPServer(root) as srv:
        remote = [comparable(e) for e in datasets.load_dataset("ssl4eos12", "all", root=srv.url, **keywords)]
        served = {path: n for path, n in srv.bytes_served.items() if path.endswith(".zarr.zip")}
    for i, (a, b) in enumerate(zip(remote, local, strict=True)):
        assert_example_equal(a, b, f"remote[{i}]")
    sizes = {f"/{p.relative_to(root).as_posix()}": p.stat().st_size for p in root.rglob("*.zarr.zip")}
    files = {e["file"] for e in local}
    for path, size in sizes.items():
        fetched = served.get(path, 0)
        if path.rsplit("/", 1)[1] not in files:
            assert fetched == 0, path
        else:  # the chunks of the kept timestamps, plus the small variables and zip directory
            assert 0 < fetched < size * (len(times) / 4 + 0.1), (path, fetched, size)


@pytest.mark.parametrize("runner", ["dask", "http root"])  # the process pool is convert's, tested there
def test_parallel_and_remote_index_equal_the_local_one(indexed_dir, tmp_path, runner):
    expected = {split: pq.read_table(Path(indexed_dir) / "splits" / f"ssl4eos12_{SPLIT_FOLDERS[split]}_index.parquet")
                for split in ("train", "validation")}
    out = tmp_path / "index"
    if runner == "dask":
        from distributed import LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
            written = build_index(indexed_dir, str(out), scheduler=cluster.scheduler_address)
    else:
        from servers import RangeHTTPServer

        with RangeHTTPServer(indexed_dir) as srv:
            written = build_index(srv.url, str(out), workers=1)
            fetched = sum(n for path, n in srv.bytes_served.items() if path.endswith(".zarr.zip"))
        total = sum(p.stat().st_size for p in Path(indexed_dir).rglob("*.zarr.zip"))
        assert fetched < 0.5 * total  # the small variables and cloud masks, never the bands
    for split, table in expected.items():
        actual = pq.read_table(written[split])
        assert actual.equals(table), split
        assert actual.schema.metadata[b"geo"] == table.schema.metadata[b"geo"]
