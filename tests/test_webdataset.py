"""The webdataset release (tars of per-location Zarr zips): every field equals what xarray reads from the member.

The reference here reads the tars with ``tarfile`` and each member with zarr and xarray, nothing of the
package's reading code; the fixtures come from ``ssl4eos12.synth.webdataset``.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import arrow_rows, open_with_xarray, traced_peak
from datasets import load_dataset
from datasets.distributed import split_dataset_by_node
from reference import assert_example_equal
from servers import HubServer, PlainHTTPServer, RangeHTTPServer, use_hub

import ssl4eos12
from ssl4eos12.synth.webdataset import synthesize_webdataset, write_tar

CLASSIC = ["S2L1C", "S2L2A", "S2RGB", "S1GRD"]
SEVEN = CLASSIC + ["NDVI", "LULC", "DEM"]
CONFIGS = {"all": CLASSIC, "NDVI": ["NDVI"], "LULC": ["LULC"], "DEM": ["DEM"]}
SPLIT_FOLDERS = {"train": "train", "validation": "val"}


@pytest.fixture(scope="session")
def wds_dir(tmp_path_factory):
    """Both splits, all seven modalities, 2 tars x 3 locations x 16 px per split, with metadata parquets."""
    return synthesize_webdataset(tmp_path_factory.mktemp("ssl4eo-s12-wds"), files=2, samples=3, size=16)


# -- the reference: tarfile + xarray ------------------------------------------------------------------------

def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name.split(".", 1)[0], tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def open_member(data: bytes, tmp: Path):
    path = tmp / "member.zarr.zip"
    path.write_bytes(data)
    return open_with_xarray(path)


def month_order(times: np.ndarray) -> np.ndarray:
    return np.argsort(pd.DatetimeIndex(times).month.to_numpy(), kind="stable")


def reference_order(files: dict) -> np.ndarray | None:
    """The authors' season order: the months of the first modality with more than one timestamp (DEM has one)."""
    return next((month_order(ds["time"].values) for ds in files.values() if ds.sizes["time"] > 1), None)


def expected_examples(root: Path, split: str, modalities, tmp: Path, single_timestamp=False, season=False):
    """With ``season``, every modality with the reference's number of timestamps in the reference's order."""
    folder = Path(root) / SPLIT_FOLDERS[split]
    for tar in sorted(p.name for p in (folder / modalities[0]).glob("*.tar")):
        members = {m: tar_members(folder / m / tar) for m in modalities}
        for i, (key, _) in enumerate(members[modalities[0]]):
            files = {m: open_member(members[m][i][1], tmp) for m in modalities}
            first = files[modalities[0]]
            shared = reference_order(files) if season else None
            base = {"sample": str(first["sample"].values), "file": tar, "key": key,
                    "center_lat": first["center_lat"].values, "center_lon": first["center_lon"].values,
                    "crs": first["crs"].values}
            times = range(first.sizes["time"]) if single_timestamp else [slice(None)]
            for t in times:
                example = dict(base, time_index=np.int64(t)) if single_timestamp else dict(base)
                for m, ds in files.items():
                    order = shared if shared is not None and len(shared) == ds.sizes["time"] else \
                        np.arange(ds.sizes["time"])
                    example[m] = ds["bands"].values[order][t]
                    if "cloud_mask" in ds:
                        example[f"{m}_cloud_mask"] = ds["cloud_mask"].values[order][t]
                    example[f"{m}_time"] = ds["time"].values[order][t]
                    if "file_id" in ds:
                        file_id = ds["file_id"].values[order][t]
                        example[f"{m}_file_id"] = file_id.tolist() if file_id.ndim else str(file_id)
                    example[f"{m}_x"] = ds["x_"].values
                    example[f"{m}_y"] = ds["y_"].values
                    if "esri_original" in ds:
                        example[f"{m}_esri_original"] = ds["esri_original"].values
                yield example


def streamed(dataset):
    """The examples as they come: streamed and prepared ones alike hold numpy arrays and scalars (no lists of
    numbers to convert first), so every field is compared in the type and dtype the user gets."""
    yield from dataset


def check(rows, root, split, modalities, tmp, **kwargs) -> int:
    expected = list(expected_examples(root, split, modalities, tmp, **kwargs))
    actual = list(rows)
    assert len(actual) == len(expected) > 0
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"{split}[{i}]")
    return len(actual)


def stream(root, config="all", split="train", **kwargs):
    return load_dataset("ssl4eos12", config, data_dir=str(root), split=split, streaming=True, **kwargs)


# -- local, every config, streaming and prepared -------------------------------------------------------------

@pytest.mark.parametrize("config", list(CONFIGS))
def test_streaming_equals_xarray(wds_dir, config, tmp_path):
    for split in ("train", "validation"):
        assert check(streamed(stream(wds_dir, config, split)), wds_dir, split, CONFIGS[config], tmp_path) == 6


def test_members_decoded_on_threads_equal_xarray(wds_dir, tmp_path, monkeypatch):
    """A block's members (and each member's chunks) decoded several at once, as on a machine with 3 cores."""
    from concurrent.futures import ThreadPoolExecutor

    from ssl4eos12.sources import fastzip, webdataset

    pools = []

    class CountedPool(ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(fastzip, "usable_cores", lambda: 3)
    monkeypatch.setattr(fastzip, "PARALLEL_BYTES", 1)
    monkeypatch.setattr(webdataset, "ThreadPoolExecutor", CountedPool)
    modalities = ["S2L2A", "S1GRD", "LULC"]
    assert check(streamed(stream(wds_dir, "all", "train", modalities=modalities)), wds_dir, "train", modalities,
                 tmp_path) == 6
    assert pools and set(pools) == {3}  # the members of each block, three at a time


def test_all_seven_modalities_streaming_and_prepared(wds_dir, tmp_path):
    ds = stream(wds_dir, modalities=SEVEN)
    f = ds.features
    assert f["DEM"] == datasets.Array4D(shape=(1, 1, 16, 16), dtype="float32")
    assert f["NDVI"] == datasets.Array4D(shape=(4, 1, 16, 16), dtype="float32")
    assert f["LULC"] == datasets.Array4D(shape=(4, 1, 16, 16), dtype="uint8")
    assert f["LULC_esri_original"] == datasets.Array2D(shape=(16, 16), dtype="uint8")
    assert f["S2L2A"] == datasets.Array4D(shape=(4, 12, 16, 16), dtype="int16")
    # read from the files: the derived modalities have no product ids, nothing is invented
    assert {"NDVI_file_id", "LULC_file_id", "DEM_file_id", "DEM_cloud_mask", "NDVI_cloud_mask"}.isdisjoint(f)
    assert list(f)[:3] == ["sample", "file", "key"]
    check(streamed(ds), wds_dir, "train", SEVEN, tmp_path)
    prepared = load_dataset("ssl4eos12", modalities=SEVEN, data_dir=str(wds_dir), cache_dir=str(tmp_path / "c"))
    for split in ("train", "validation"):
        assert check(arrow_rows(prepared[split]), wds_dir, split, SEVEN, tmp_path) == 6
    # DEM's one timestamp is what the file stores: 0, the epoch; no date is made up
    dem_times = np.concatenate([row["DEM_time"] for row in arrow_rows(prepared["train"])])
    assert dem_times.dtype == np.dtype("datetime64[ns]") and (dem_times.astype(np.int64) == 0).all()


@pytest.mark.parametrize("config", ["NDVI", "LULC", "DEM"])
def test_prepared_new_modalities(wds_dir, config, tmp_path):
    ds = load_dataset("ssl4eos12", config, data_dir=str(wds_dir), split="validation", cache_dir=str(tmp_path))
    assert check(arrow_rows(ds), wds_dir, "validation", CONFIGS[config], tmp_path) == 6


def test_s2_offset_is_removed_and_standardization_is_per_release(wds_dir, data_dir):
    wds = next(iter(stream(wds_dir, "S2L2A").with_format("numpy")))
    zarr_release = next(iter(stream(data_dir, "S2L2A").with_format("numpy")))
    assert wds["S2L2A"].min() < 1000 <= zarr_release["S2L2A"].min()  # the generators' ranges: 0..5000 +1000
    zarr_mean, zarr_std = ssl4eos12.standardization("S2L1C", "zarr")
    wds_mean, wds_std = ssl4eos12.standardization("S2L1C", "webdataset")
    np.testing.assert_allclose(np.subtract(zarr_mean, wds_mean), 1000)
    assert wds_std == zarr_std and wds_mean[0] == 1607.345
    assert ssl4eos12.standardization("DEM", "webdataset") == ((435.726,), (560.326,))
    assert ssl4eos12.standardization("S1GRD", "webdataset") == ssl4eos12.standardization("S1GRD", "zarr")
    with pytest.raises(ValueError, match="LULC is categorical"):
        ssl4eos12.standardization("LULC", "webdataset")
    with pytest.raises(ValueError, match="no standardization values for NDVI in the zarr release"):
        ssl4eos12.standardization("NDVI", "zarr")
    with pytest.raises(ValueError, match="release must be one of"):
        ssl4eos12.standardization("S2L2A", "tars")


# -- time order, single timestamps ----------------------------------------------------------------------------

def test_time_order_season_on_both_releases(wds_dir, data_dir, tmp_path):
    rows = list(streamed(stream(wds_dir, modalities=SEVEN, time_order="season")))
    check(rows, wds_dir, "train", SEVEN, tmp_path, season=True)
    reordered = [r for r in rows if not np.array_equal(r["S2L2A_time"], np.sort(r["S2L2A_time"]))]
    assert reordered, "the fixture has no location whose dates run across new year"
    for row in rows:  # the first modality's months give the order (tests/test_season.py: the others follow it)
        assert (np.diff(pd.DatetimeIndex(row[f"{SEVEN[0]}_time"]).month) >= 0).all()

    from reference import expected_examples as zarr_examples

    zarr_rows = list(streamed(stream(data_dir, "all", time_order="season")))
    expected = list(zarr_examples(data_dir, "train", CLASSIC))
    assert len(zarr_rows) == len(expected)
    for row, plain in zip(zarr_rows, expected):
        order = month_order(plain[f"{CLASSIC[0]}_time"])  # one order for every modality: the first one's months
        for m in CLASSIC:
            for field in (m, f"{m}_cloud_mask", f"{m}_time"):
                if field in plain:
                    np.testing.assert_array_equal(row[field], plain[field][order])
            assert row[f"{m}_file_id"] == [plain[f"{m}_file_id"][j] for j in order]
    with pytest.raises(ValueError, match="time_order must be one of"):
        stream(wds_dir, time_order="month")


def test_single_timestamp_where_it_makes_sense(wds_dir, tmp_path):
    for config, modalities in (("DEM", ["DEM"]), ("LULC", ["LULC"])):
        ds = stream(wds_dir, config, "validation", single_timestamp=True)
        n = check(streamed(ds), wds_dir, "validation", modalities, tmp_path, single_timestamp=True)
        assert n == 6 * (1 if config == "DEM" else 4)
    with pytest.raises(ValueError, match=r"single_timestamp=True needs one number of timestamps.*'DEM': 1"):
        stream(wds_dir, modalities=["S2L2A", "DEM"], single_timestamp=True)


# -- layouts and roots ------------------------------------------------------------------------------------------

def test_layout_is_recognised_and_can_be_forced(wds_dir, data_dir, tmp_path):
    root = Path(shutil.copytree(wds_dir, tmp_path / "both"))
    shutil.copytree(data_dir / "val", root / "val", dirs_exist_ok=True)
    (root / "splits").mkdir()
    shutil.copy(data_dir / "splits" / "ssl4eos12_val.txt", root / "splits")
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="both Zarr zips .* pass layout="):
        stream(root, "S2RGB", "validation")
    tars = stream(root, "S2RGB", "validation", layout="webdataset")
    zips = stream(root, "S2RGB", "validation", layout="zarr")
    assert "key" in tars.features and "key" not in zips.features
    assert next(r["file"] for r in tars) == "ssl4eos12_shard_000001.tar"
    assert next(r["file"] for r in zips).endswith(".zarr.zip")
    with pytest.raises(ValueError, match="layout must be one of"):
        stream(root, layout="tar")
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=r"no SSL4EO-S12 files for S2RGB.*\*\.tar"):
        stream(wds_dir, "S2RGB", layout="zarr")


def test_http_one_sequential_read_per_tar(wds_dir, tmp_path):
    with RangeHTTPServer(wds_dir) as srv:
        remote = load_dataset("ssl4eos12", "all", modalities=SEVEN, root=srv.url, split="train", streaming=True)
        srv.reset_log()
        check(streamed(remote), wds_dir, "train", SEVEN, tmp_path)
        gets = [(path, rng) for method, path, rng in srv.requests if method == "GET" and path.endswith(".tar")]
    tars = {f"/{p.relative_to(wds_dir).as_posix()}" for p in (Path(wds_dir) / "train").rglob("*.tar")}
    assert all(rng is None for _, rng in gets), gets  # no Range: no seeks, no re-reads
    assert sorted(path for path, _ in gets) == sorted(tars)  # one request per tar


def test_http_features_probe_reads_only_the_first_tars(wds_dir):
    with RangeHTTPServer(wds_dir) as srv:
        load_dataset("ssl4eos12", "all", modalities=SEVEN, root=srv.url + "/", split="validation", streaming=True)
        gets = [path for method, path, _ in srv.requests if method == "GET" and path.endswith(".tar")]
    # the split asked for is the one probed: its first tars (each by two range requests: the first header, then
    # the first member)
    assert sorted(set(gets)) == sorted(f"/val/{m}/ssl4eos12_shard_000001.tar" for m in SEVEN)
    assert len(gets) <= 2 * len(SEVEN)


def test_tars_and_metadata_from_a_server_without_range_support(wds_dir, tmp_path):
    """Python's own http.server ignores Range: the metadata parquet is read whole, the features' probe reads the
    first tars' start from one plain GET each (never a tar whole), and each tar streams with one GET."""
    with PlainHTTPServer(wds_dir) as srv:
        remote = load_dataset("ssl4eos12", "all", modalities=SEVEN, root=srv.url, split="validation", streaming=True)
        probed = srv.gets(".tar")
        assert any(path == "/val_metadata.parquet" for path, _ in srv.gets())
        srv.reset_log()
        check(streamed(remote), wds_dir, "validation", SEVEN, tmp_path)
        gets = srv.gets(".tar")
    assert sorted(probed) == sorted((f"/val/{m}/ssl4eos12_shard_000001.tar", None) for m in SEVEN)
    tars = {f"/{p.relative_to(wds_dir).as_posix()}" for p in (Path(wds_dir) / "val").rglob("*.tar")}
    assert all(rng is None for _, rng in gets), gets
    assert sorted(path for path, _ in gets) == sorted(tars)  # one request per tar


def test_hub_root_streaming_and_prepared_and_default_root(wds_dir, tmp_path):
    with HubServer(tokens={"hf_reader": "reader"}) as hub, use_hub(hub, home=tmp_path / "hf"):
        hub.seed("someone/tars", wds_dir)
        remote = load_dataset("ssl4eos12", "all", modalities=SEVEN, root="hf://datasets/someone/tars", split="train",
                              streaming=True)
        hub.reset_log()  # after the features' probe of the first tars
        check(streamed(remote), wds_dir, "train", SEVEN, tmp_path)
        tar_reads = [r for r in hub.requests if r.method == "GET" and r.path.split("?")[0].endswith(".tar")]
        sizes = {p.relative_to(wds_dir).as_posix(): p.stat().st_size for p in (Path(wds_dir) / "train").rglob("*.tar")}
        # one request per tar, the whole tar front to back: no seek, no re-read
        assert sorted(r.path.split("/resolve/main/")[1] for r in tar_reads) == sorted(sizes), tar_reads
        assert all(r.bytes == sizes[r.path.split("/resolve/main/")[1]] for r in tar_reads), tar_reads
        prepared = load_dataset("ssl4eos12", "LULC", root="hf://datasets/someone/tars", split="validation",
                                cache_dir=str(tmp_path / "c"))
        check(arrow_rows(prepared), wds_dir, "validation", ["LULC"], tmp_path)

        # no root: the DEM config reads the authors' webdataset repository (only it has DEM)
        hub.seed("embed2scale/SSL4EO-S12-v1.1", wds_dir, private=True)
        hosted = load_dataset("ssl4eos12", "DEM", split="validation", streaming=True, token="hf_reader")
        check(streamed(hosted), wds_dir, "validation", ["DEM"], tmp_path)


# -- workers and nodes --------------------------------------------------------------------------------------------

def test_workers_and_nodes_see_every_example_once(wds_dir):
    torch = pytest.importorskip("torch")
    ds = stream(wds_dir, "S2RGB")
    assert ds.num_shards == 2  # one shard per tar name
    expected = sorted((r["file"], r["key"]) for r in ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=ssl4eos12.collate)
    seen = sorted((f, k) for batch in loader for f, k in zip(batch["file"], batch["key"]))
    assert seen == expected and len(set(seen)) == 6
    per_node = [[(r["file"], r["key"]) for r in split_dataset_by_node(ds, rank=r, world_size=2)] for r in range(2)]
    assert sorted(per_node[0] + per_node[1]) == expected and set(per_node[0]).isdisjoint(per_node[1])


def test_example_keys_stay_unique_across_blocks(tmp_path, monkeypatch):
    from ssl4eos12.sources import webdataset

    monkeypatch.setattr(webdataset, "BLOCK_LOCATIONS", 2)  # 5 locations per tar: blocks of 2, 2 and 1
    root = synthesize_webdataset(tmp_path / "d", splits=("train",), files=1, samples=5, size=8,
                                 modalities=("S2RGB", "DEM"))
    prepared = load_dataset("ssl4eos12", modalities=["S2RGB", "DEM"], data_dir=str(root), split="train",
                            cache_dir=str(tmp_path / "c"))
    assert check(arrow_rows(prepared), root, "train", ["S2RGB", "DEM"], tmp_path) == 5
    resharded = stream(root, modalities=["S2RGB", "DEM"]).reshard()
    assert resharded.num_shards > 1
    keys = [r["key"] for i in range(resharded.num_shards) for r in resharded.shard(resharded.num_shards, i)]
    assert sorted(keys) == sorted(prepared["key"])


# -- bad tars -------------------------------------------------------------------------------------------------------

def broken_copy(wds_dir, tmp_path, damage) -> tuple[Path, Path]:
    """A copy of the validation split where ``damage`` changed the S1GRD tar of the first shard."""
    root = tmp_path / "broken"
    shutil.copytree(wds_dir, root, ignore=shutil.ignore_patterns("train", "train_metadata.parquet"))
    tar = root / "val" / "S1GRD" / "ssl4eos12_shard_000001.tar"
    damage(tar)
    return root, tar


def _truncate(tar: Path):
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])


def _emptied(tar: Path):
    tar.write_bytes(b"")


def _garbled(tar: Path):
    tar.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _rewrite(change):
    def damage(tar: Path):
        members = change(tar_members(tar))
        write_tar(tar, ((f"{key}.zarr.zip", data) for key, data in members))
    return damage


def _not_zarr(members):
    return [(key, b"PK\x05\x06" + bytes(18) if i == 1 else data) for i, (key, data) in enumerate(members)]


def _missing(members):
    return members[:1] + members[2:]


def _reordered(members):
    return [members[0], members[2], members[1]]


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"S1GRD/ssl4eos12_shard_000001\.tar: not a readable tar file, truncated or corrupt"),
    (_emptied, r"S1GRD/ssl4eos12_shard_000001\.tar: not a readable tar file, truncated or corrupt \(empty file\)"),
    (_garbled, r"S1GRD/ssl4eos12_shard_000001\.tar: not a readable tar file, truncated or corrupt"),
    (_rewrite(_not_zarr), (r"S1GRD/ssl4eos12_shard_000001\.tar:ssl4eos12_val_seasonal_data_\d+\.zarr\.zip: not a "
                           r"(consolidated Zarr v2 store|readable zip)")),
    (_rewrite(_missing), (r"S2L2A/ssl4eos12_shard_000001\.tar: the tars of S2L2A and S1GRD \(.*S1GRD/ssl4eos12_shard_"
                          r"000001\.tar\) diverge at member 1: 'ssl4eos12_val_seasonal_data_0000008' in S2L2A, "
                          r"'ssl4eos12_val_seasonal_data_0000009' in S1GRD")),
    (_rewrite(_reordered), (r"diverge at member 1: 'ssl4eos12_val_seasonal_data_0000008' in S2L2A, "
                            r"'ssl4eos12_val_seasonal_data_0000009' in S1GRD")),
], ids=["truncated", "empty", "garbled", "not-zarr", "missing-key", "reordered-key"])
def test_bad_tars_raise_or_are_skipped_and_counted(wds_dir, tmp_path, damage, message):
    root, _ = broken_copy(wds_dir, tmp_path, damage)
    with pytest.raises(ssl4eos12.SSL4EOS12FileError, match=message):
        list(stream(root, modalities=["S2L2A", "S1GRD"], split="validation"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = list(stream(root, modalities=["S2L2A", "S1GRD"], split="validation", on_bad_file="skip"))
    skipped = [w for w in caught if issubclass(w.category, ssl4eos12.SSL4EOS12BadFileWarning)]
    assert len(skipped) == 1 and "1 file(s) skipped" in str(skipped[0].message)
    good = [r for r in rows if r["file"] == "ssl4eos12_shard_000002.tar"]
    assert len(good) == 3  # the other shard is read whole
    # nothing misaligned: whatever came before the damage is what xarray reads
    expected = {e["key"]: e for e in expected_examples(wds_dir, "validation", ["S2L2A", "S1GRD"], tmp_path)}
    for row in streamed(rows):
        assert_example_equal(row, expected[row["key"]], row["key"])


# -- command line: synth, convert, verify ----------------------------------------------------------------------

def test_cli_synth_convert_verify(tmp_path, capsys):
    from ssl4eos12.cli import main as cli

    root = tmp_path / "wds"
    cli(["synth", str(root), "--layout", "webdataset", "--files", "1", "--samples", "2", "--size", "8",
         "--splits", "validation"])
    assert sorted(p.name for p in (root / "val").iterdir()) == sorted(SEVEN)
    assert (root / "val_metadata.parquet").exists()
    out = tmp_path / "parquet"
    cli(["convert", str(root), str(out), "--configs", "S2L2A", "DEM", "default", "--workers", "1"])
    cli(["verify", str(root), str(out), "--workers", "1"])  # raises SystemExit on any problem
    assert "all shards match their sources" in capsys.readouterr().out
    converted = load_dataset(str(out), "DEM", split="validation")
    assert converted["key"] == [r["key"] for r in stream(root, "DEM", "validation")]
    overview = load_dataset(str(out), "default", split="validation")
    assert overview["file"] == ["ssl4eos12_shard_000001.tar"] * 2 and overview[0]["thumbnail"].size == (4, 4)


def test_peak_memory_is_flat_in_the_number_of_shards(tmp_path):
    """Streaming 6 tars peaks no higher than streaming 2: memory holds a few locations per modality."""

    root = synthesize_webdataset(tmp_path / "many", splits=("train",), files=6, samples=4, size=32,
                                 modalities=("S2L1C", "S1GRD"), metadata=False)

    def peak(shards: int) -> int:
        return traced_peak(stream(root, modalities=["S2L1C", "S1GRD"]).take(shards * 4))

    two, six = peak(2), peak(6)
    one_tar = sum(p.stat().st_size for p in root.rglob("ssl4eos12_shard_000001.tar"))
    assert six <= 1.15 * two, (two, six)
    print(f"peak traced memory: 2 tars {two / 1e6:.1f} MB, 6 tars {six / 1e6:.1f} MB (one tar per modality: "
          f"{one_tar / 1e6:.1f} MB)")


def test_source_reads_only_the_variables_asked(wds_dir, tmp_path):
    """What an index needs (centres, times, cloud masks) without decoding the bands."""
    from ssl4eos12.sources import WebDatasetSource, open_source

    source = open_source(str(wds_dir), ["S2L2A", "DEM"])
    assert isinstance(source, WebDatasetSource) and source.shards("val") == ["ssl4eos12_shard_000001.tar",
                                                                           "ssl4eos12_shard_000002.tar"]
    layouts = source.layouts("val", "ssl4eos12_shard_000002.tar")
    asked = {"S2L2A": ["center_lat", "center_lon", "time_", "cloud_mask"], "DEM": ["time_"]}
    blocks = list(source.blocks("val", "ssl4eos12_shard_000002.tar", layouts, asked))
    expected = list(expected_examples(wds_dir, "validation", ["S2L2A", "DEM"], tmp_path))[3:]
    rows = [(block, i) for block in blocks for i in range(len(block))]
    assert len(rows) == len(expected) == 3
    for (block, i), example in zip(rows, expected):
        s2, dem = block.parts["S2L2A"].variables, block.parts["DEM"].variables
        assert set(s2) == {"center_lat", "center_lon", "time_", "cloud_mask", "sample"} and set(dem) == {"time_", "sample"}
        assert block.keys[i] == example["key"] and s2["sample"][i] == example["sample"]
        np.testing.assert_array_equal(s2["cloud_mask"][i], example["S2L2A_cloud_mask"])
        np.testing.assert_array_equal(s2["time_"][i], example["S2L2A_time"])
        assert s2["center_lat"][i] == example["center_lat"] and dem["time_"][i] == example["DEM_time"]
    assert source.probe("val", "ssl4eos12_shard_000002.tar", "DEM")[1] == 3  # from the metadata parquet


class _Trickle:
    """A network-like stream: at most 1000 bytes per read, no seeks."""

    def __init__(self, data: bytes):
        self._data, self._position = data, 0

    def read(self, size=-1):
        size = len(self._data) if size < 0 else min(size, 1000)
        chunk = self._data[self._position:self._position + size]
        self._position += len(chunk)
        return chunk


def test_tars_are_read_front_to_back_from_short_reads(wds_dir):
    from ssl4eos12.sources.webdataset import _ForwardReader

    path = wds_dir / "val" / "S2L2A" / "ssl4eos12_shard_000001.tar"
    reader = _ForwardReader(_Trickle(path.read_bytes()))
    with tarfile.open(fileobj=reader, mode="r:") as tar:
        read = [(m.name.split(".", 1)[0], tar.extractfile(m).read()) for m in tar if m.isfile()]
    assert read == tar_members(path)
    with pytest.raises(io.UnsupportedOperation, match="front to back"):
        reader.seek(0)


def test_blocks_decoded_ahead_equal_xarray_and_a_break_leaves_no_thread(wds_dir, tmp_path, monkeypatch):
    """Where decoding uses several threads, a local tar's next blocks are read and decoded in a background
    thread: the same examples, and a ``break`` or an error in the consumer leaves no thread behind."""
    import gc
    import threading

    from ssl4eos12.sources import fastzip, webdataset

    monkeypatch.setattr(fastzip, "usable_cores", lambda: 2)
    monkeypatch.setattr(webdataset, "BLOCK_LOCATIONS", 1)  # several blocks per tar of the small fixture
    started = []
    original = webdataset.produced_ahead
    monkeypatch.setattr(webdataset, "produced_ahead", lambda *a, **k: started.append(a[1]) or original(*a, **k))
    modalities = ["S2L2A", "S1GRD"]
    assert check(streamed(stream(wds_dir, "all", "train", modalities=modalities)), wds_dir, "train", modalities,
                 tmp_path) > 2
    assert started and set(started) == {webdataset.BLOCKS_AHEAD}

    def ahead_threads():
        gc.collect()
        return [t.name for t in threading.enumerate() if t.name == "ssl4eos12-blocks"]

    for example in stream(wds_dir, "all", "train", modalities=modalities):
        break
    assert not ahead_threads()
    with pytest.raises(RuntimeError, match="consumer failed"):
        for example in stream(wds_dir, "all", "train", modalities=modalities):
            raise RuntimeError("consumer failed")
    assert not ahead_threads()


def test_streamed_examples_hold_their_own_members_memory(wds_dir, tmp_path):
    """Each tar member is decoded into arrays of its own, given to its example as they are (no copy out of a
    block): an example keeps no other location's memory alive; single timestamps are views of their member's."""
    rows = list(stream(wds_dir, config="all", split="validation"))
    assert check(iter(rows), wds_dir, "validation", CONFIGS["all"], tmp_path) == 6
    for name in ("S2L2A", "S2L2A_cloud_mask", "S1GRD"):
        arrays = [row[name] for row in rows]
        for i, array in enumerate(arrays):
            owner = array if array.base is None else array.base
            assert owner.nbytes == array.nbytes, f"{name} of example {i} keeps a larger block alive"
            assert not any(np.shares_memory(array, other) for other in arrays[i + 1:]), name
    singles = list(stream(wds_dir, config="S2L2A", split="validation", single_timestamp=True))
    by_key: dict = {}
    for row in singles:
        by_key.setdefault(row["key"], []).append(row["S2L2A"])
    for key, arrays in by_key.items():
        owner = arrays[0].base
        assert owner is not None and owner.nbytes == sum(a.nbytes for a in arrays), key  # its member's, no more
        assert all(a.base is owner for a in arrays), key
