"""The member index of the tar release, selective reads by range and random access (``ssl4eos12.Locations``).

Remote reads go to nginx on 127.0.0.1 (range-capable, ``sendfile``); its access log is the witness of the bytes
each tar sent. Values are checked against the examples built from tarfile + xarray (``expected_examples``) or
against the builder's examples of a local root (themselves checked against xarray in test_webdataset.py).
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from nginx import NginxServer, nginx_binary
from reference import assert_example_equal
from test_webdataset import expected_examples

import ssl4eos12
from ssl4eos12.errors import SSL4EOS12DataError
from ssl4eos12.index import build_index
from ssl4eos12.members import BLOCK, coalesce, walk_tar
from ssl4eos12.synth.webdataset import synthesize_webdataset

needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")

MODALITIES = ["S2L2A", "S1GRD"]
TARS = 3
PER_TAR = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """3 tars x 6 locations of S2L2A and S1GRD, indexed into ``splits/`` (served with the root)."""
    out = synthesize_webdataset(tmp_path_factory.mktemp("members"), splits=("train",), files=TARS, samples=PER_TAR,
                                size=16, modalities=tuple(MODALITIES), seed=11)
    build_index(out, workers=1)
    return out


@pytest.fixture(scope="module")
def expected(root, tmp_path_factory):
    """Every example of the split, from tarfile and xarray, in the builder's order."""
    return list(expected_examples(root, "train", MODALITIES, tmp_path_factory.mktemp("xr")))


@pytest.fixture(scope="module")
def index(root) -> pd.DataFrame:
    return pq.read_table(Path(root) / "splits" / "ssl4eos12_train_index.parquet").to_pandas()


def tarfile_members(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(info.name.split(".")[0], info.offset_data, info.size) for info in tar if info.isfile()]


def tar_bytes(server: NginxServer) -> dict[str, int]:
    return {path: sent for path, sent in server.bytes_served().items() if path.endswith(".tar")}


def member_bytes(index: pd.DataFrame, samples) -> dict[str, int]:
    """Bytes of the chosen locations' members per tar path (``/train/M/shard.tar``)."""
    chosen = index[index["sample"].isin(samples)].drop_duplicates("sample")
    out: dict[str, int] = {}
    for modality in MODALITIES:
        for file, size in chosen.groupby("file")[f"{modality}_size"].sum().items():
            out[f"/train/{modality}/{file}"] = int(size)
    return out


def assert_within(served: dict[str, int], chosen: dict[str, int], probe: dict[str, int], where: str) -> None:
    """Every tar sent at most 1.1x its chosen members' bytes plus its probe (first header + first member), and a
    tar without a chosen member sent nothing but its probe."""
    assert set(served) <= set(chosen) | set(probe), f"{where}: tars read that hold no chosen member: {served}"
    for path, sent in served.items():
        allowed = 1.1 * chosen.get(path, 0) + probe.get(path, 0)
        assert sent <= allowed, f"{where}: {path} sent {sent} bytes, allowed {allowed:.0f} ({chosen.get(path, 0)} chosen)"
    for path, size in chosen.items():
        assert served.get(path, 0) >= size, f"{where}: {path} sent {served.get(path, 0)} < its members' {size} bytes"


def probes(index: pd.DataFrame, file: str) -> dict[str, int]:
    """The layout probe of a tar: its first header and first member."""
    first = index[(index["file"] == file) & (index["position"] == 0)].iloc[0]
    return {f"/train/{m}/{file}": BLOCK + int(first[f"{m}_size"]) for m in MODALITIES}


def by_sample(examples) -> dict[str, dict]:
    return {example["sample"]: example for example in examples}


# --- the index ----------------------------------------------------------------------------------------------------

def test_index_offsets_match_tarfile(root, index):
    for file in sorted(index["file"].unique()):
        rows = index[index["file"] == file].drop_duplicates("position").sort_values("position")
        for modality in MODALITIES:
            path = Path(root) / "train" / modality / file
            members = tarfile_members(path)
            assert list(zip(rows["key"], rows[f"{modality}_offset"], rows[f"{modality}_size"])) == members
            assert (rows[f"{modality}_tar_size"] == path.stat().st_size).all()
            assert list(rows["position"]) == list(range(len(members)))
    # the member at the recorded offset is the one the row's sample names (read back with tarfile and xarray)
    assert len(index.drop_duplicates("sample")) == TARS * PER_TAR


@needs_nginx
@pytest.mark.parametrize("headers_only", [False, True])
def test_remote_index_written_elsewhere(root, index, tmp_path, headers_only):
    out = tmp_path / "out.parquet"
    with NginxServer(root) as srv:
        if headers_only:  # as a user runs it
            from ssl4eos12.cli import main

            main(["index", srv.url, "--out", str(out), "--headers-only", "--workers", "1"])
        else:
            build_index(srv.url, out, workers=1)
        served = tar_bytes(srv)
    remote = pq.read_table(out).to_pandas()
    columns = ["sample", "file", "key", "position", *(f"{m}_{w}" for m in MODALITIES
                                                        for w in ("offset", "size", "tar_size"))]
    local = index[columns].drop_duplicates(["file", "position"]).reset_index(drop=True)
    got = remote[columns].drop_duplicates(["file", "position"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, local)
    if headers_only:  # the tars' headers only (512 bytes per member and the end-of-archive block), and the probe of
        # which modalities the root has (the first tar's first member)
        probe = probes(index, "ssl4eos12_shard_000001.tar")
        served = {p: n for p, n in served.items() if p.split("/")[2] in MODALITIES}
        assert len(served) == TARS * len(MODALITIES)
        for path, sent in served.items():
            assert sent <= BLOCK * (PER_TAR + 2) + probe.get(path, 0), (path, sent)
        centres = index.drop_duplicates("sample").set_index("sample")[["center_lon", "center_lat"]]
        mine = remote.drop_duplicates("sample").set_index("sample")[["center_lon", "center_lat"]]
        pd.testing.assert_frame_equal(mine.loc[centres.index], centres)


def test_walk_tar_reads_pax_and_long_names(tmp_path):
    path = tmp_path / "pax.tar"
    long_key = "k" * 120
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, data in (("a", b"x" * 700), (long_key, b"y" * 5), ("b", b"")):
            info = tarfile.TarInfo(f"{key}.zarr.zip")
            info.size = len(data)
            info.pax_headers = {"comment": "é"}  # a pax header before every member
            import io
            tar.addfile(info, io.BytesIO(data))
    members, size = walk_tar(str(path))
    assert [(m.key, m.offset, m.size) for m in members] == tarfile_members(path)
    assert size == path.stat().st_size


def test_coalesce_joins_small_gaps_only():
    spans = [(0, 1000), (1050, 2000), (50_000, 51_000), (51_000, 52_000)]
    assert coalesce(spans) == [(0, 2000, [0, 1]), (50_000, 52_000, [2, 3])]  # 50 of 1,950 bytes: joined
    assert coalesce(spans, max_gap=40) == [(0, 1000, [0]), (1050, 2000, [1]), (50_000, 52_000, [2, 3])]
    assert coalesce([(0, 1000), (1100, 2000)]) == [(0, 1000, [0]), (1100, 2000, [1])]  # 100 of 1,900: > 5%
    assert coalesce(spans, max_range=1500)[:2] == [(0, 1000, [0]), (1050, 2000, [1])]


# --- selective reads ----------------------------------------------------------------------------------------------

def stream(root, **kwargs):
    return list(datasets.load_dataset("ssl4eos12", "all", modalities=MODALITIES, split="train", streaming=True,
                                      **kwargs, **({"data_dir": str(root)} if "root" not in kwargs else {})))


@needs_nginx
def test_samples_on_an_indexed_remote_root_fetch_only_their_members(root, index, expected):
    reference = by_sample(expected)
    chosen = [expected[1]["sample"], expected[PER_TAR + 4]["sample"], expected[PER_TAR + 5]["sample"]]
    with NginxServer(root) as srv:
        got = stream(root=srv.url, samples=chosen)
        served = tar_bytes(srv)
    assert [e["sample"] for e in got] == chosen
    for example in got:
        assert_example_equal(example, reference[example["sample"]], example["sample"])
    first = index[index["sample"] == chosen[0]]["file"].iloc[0]
    assert_within(served, member_bytes(index, chosen), probes(index, first), "samples=")
    wanted, probe = sum(member_bytes(index, chosen).values()), sum(probes(index, first).values())
    print(f"samples=: {sum(served.values())} bytes sent for {wanted} bytes of members: "
          f"x{(sum(served.values()) - probe) / wanted:.3f} besides the probe ({probe} bytes)")


@needs_nginx
def test_bbox_on_an_indexed_remote_root_fetches_only_its_members(root, index, expected):
    lon = np.array([e["center_lon"] for e in expected])
    lat = np.array([e["center_lat"] for e in expected])
    bbox = (float(np.median(lon)), -90.0, 180.0, 90.0)
    inside = [e for e, x, y in zip(expected, lon, lat) if bbox[0] <= x <= bbox[2]]
    assert 0 < len(inside) < len(expected)
    with NginxServer(root) as srv:
        got = stream(root=srv.url, bbox=bbox)
        served = tar_bytes(srv)
        loader = ssl4eos12.Loader("all", root=srv.url, modalities=MODALITIES, bbox=bbox, batch_size=1,
                                  shuffle=False, num_threads=1, numpy=True)
        batches = list(loader)
        after = tar_bytes(srv)
    by_loader = {p: after[p] - served.get(p, 0) for p in after if after[p] != served.get(p, 0)}
    assert len(got) == len(inside)
    for a, e in zip(got, inside):
        assert_example_equal(a, e, a["sample"])
    first = index[index["sample"] == inside[0]["sample"]]["file"].iloc[0]
    assert_within(served, member_bytes(index, [e["sample"] for e in inside]), probes(index, first), "bbox=")
    assert_within(by_loader, member_bytes(index, [e["sample"] for e in inside]), probes(index, first), "Loader")
    # the Loader reads through the same source: the same locations, the same values
    reference = by_sample(inside)
    assert sorted(b["sample"][0] for b in batches) == sorted(reference)
    for batch in batches:
        example = reference[batch["sample"][0]]
        for modality in MODALITIES:
            np.testing.assert_array_equal(np.asarray(batch[modality][0]), example[modality])


@needs_nginx
def test_without_member_columns_the_tars_are_streamed_whole_and_logged(root, tmp_path, expected, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(root, bare)
    (bare / "splits" / "ssl4eos12_train_index.parquet").unlink()
    shutil.rmtree(bare / "splits")
    chosen = [expected[0]["sample"]]
    with NginxServer(bare) as srv, caplog.at_level("WARNING", logger="ssl4eos12.builder"):
        got = stream(root=srv.url, samples=chosen)
    assert [e["sample"] for e in got] == chosen
    assert "streamed whole" in caplog.text and "ssl4eos12 index" in caplog.text


# --- random access ------------------------------------------------------------------------------------------------

@needs_nginx
def test_locations_over_http_fetch_one_location(root, index, expected):
    rng = np.random.default_rng(3)
    with NginxServer(root) as srv:
        locations = ssl4eos12.Locations("all", root=srv.url, modalities=MODALITIES)
        assert len(locations) == len(expected)
        before = tar_bytes(srv)
        for i in rng.choice(len(expected), 5, replace=False).tolist():
            start = tar_bytes(srv)
            example = locations[i]
            assert_example_equal(example, expected[i], f"Locations[{i}]")
            after = tar_bytes(srv)
            sent = {p: after.get(p, 0) - start.get(p, 0) for p in after if after.get(p, 0) != start.get(p, 0)}
            chosen = member_bytes(index, [expected[i]["sample"]])
            assert_within(sent, chosen, {}, f"Locations[{i}]")
        assert sum(before.values()) <= sum(sum(probes(index, f).values()) for f in index["file"].unique())
        sample = expected[-1]["sample"]
        assert_example_equal(locations.by_sample(sample), expected[-1], "by_sample")
        with pytest.raises(KeyError, match="0000000"):
            locations.by_sample("0000000")
        with pytest.raises(IndexError):
            locations[len(expected)]


@needs_nginx
def test_locations_with_filters_and_single_timestamp(root, expected, tmp_path):
    chosen = [expected[2]["sample"], expected[PER_TAR * 2]["sample"]]
    reference = list(expected_examples(root, "train", MODALITIES, tmp_path, single_timestamp=True))
    want = [e for e in reference if e["sample"] in chosen]
    with NginxServer(root) as srv:
        locations = ssl4eos12.Locations("all", root=srv.url, modalities=MODALITIES, samples=chosen,
                                        single_timestamp=True)
        assert len(locations) == len(want)
        for i, example in enumerate(want):
            assert_example_equal(locations[i], example, f"[{i}]")
        assert len(locations.by_sample(chosen[1])) == len([e for e in want if e["sample"] == chosen[1]])


@needs_nginx
def test_shuffled_dataloader_over_locations(root, expected):
    torch = pytest.importorskip("torch")
    with NginxServer(root) as srv:
        locations = ssl4eos12.Locations("all", root=srv.url, modalities=MODALITIES)
        copy = pickle.loads(pickle.dumps(locations))  # what a worker gets under spawn
        assert_example_equal(copy[4], expected[4], "unpickled")
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(locations, batch_size=4, shuffle=True, num_workers=2,
                                             collate_fn=ssl4eos12.collate, multiprocessing_context="spawn")
        batches = list(loader)
    reference = by_sample(expected)
    seen = [s for batch in batches for s in batch["sample"]]
    assert sorted(seen) == sorted(reference) and seen != [e["sample"] for e in expected]
    for batch in batches:
        want = ssl4eos12.collate([reference[s] for s in batch["sample"]])
        assert set(batch) == set(want)
        for name, value in want.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == batch[name].dtype, name
                np.testing.assert_array_equal(batch[name].numpy(), value.numpy(), err_msg=name)  # NaN == NaN
            else:
                assert value == batch[name], name


def test_locations_on_a_local_tar_root_equal_the_builder(root):
    builder = stream(root)
    locations = ssl4eos12.Locations("all", data_dir=str(root), modalities=MODALITIES)
    assert len(locations) == len(builder)
    for i in range(len(builder)):
        assert_example_equal(locations[i], builder[i], f"[{i}]")
    season = stream(root, time_order="season")
    locations = ssl4eos12.Locations("all", data_dir=str(root), modalities=MODALITIES, time_order="season")
    assert_example_equal(locations[7], season[7], "season")


def test_locations_on_a_tar_root_without_an_index_walk_the_headers(root, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(root, bare)
    shutil.rmtree(bare / "splits")
    builder = stream(root)
    locations = ssl4eos12.Locations("all", data_dir=str(bare), modalities=MODALITIES)
    assert len(locations) == len(builder)
    for i in (0, PER_TAR + 3, len(builder) - 1):
        assert_example_equal(locations[i], builder[i], f"[{i}]")
    with pytest.raises(SSL4EOS12DataError, match="ssl4eos12 index"):
        locations.by_sample(builder[0]["sample"])


@pytest.mark.parametrize("single_timestamp", [False, True])
def test_locations_on_a_local_zarr_root_equal_the_builder(data_dir, single_timestamp):
    builder = list(datasets.load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="validation",
                                         streaming=True, single_timestamp=single_timestamp))
    locations = ssl4eos12.Locations("all", data_dir=str(data_dir), split="validation", cache_files=1,
                                    single_timestamp=single_timestamp)
    assert len(locations) == len(builder)
    for i in [*range(len(builder)), 0]:  # forwards, then back to a file the cache let go
        assert_example_equal(locations[i], builder[i], f"[{i}]")
    locations[0]["S2L2A"][...] = 0  # a copy: the cached file stays as it was
    assert_example_equal(locations[0], builder[0], "[0] again")


# --- a stale index ------------------------------------------------------------------------------------------------

def rewrite_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    import io

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read_all(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar if info.isfile()]


@needs_nginx
@pytest.mark.parametrize("change", ["size", "order"])
def test_a_stale_index_is_named_never_read(root, expected, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    path = copy / "train" / "S1GRD" / "ssl4eos12_shard_000002.tar"
    members = read_all(path)
    size = path.stat().st_size
    if change == "size":  # a member grew: the tar is longer
        members[0] = (members[0][0], members[0][1] + b"\0" * 20_000)
        rewrite_tar(path, members)
        assert path.stat().st_size != size
    else:  # the same members in another order: the same size, other offsets
        rewrite_tar(path, members[::-1])
        assert path.stat().st_size == size
    chosen = expected[PER_TAR + 2]["sample"]
    with NginxServer(copy) as srv:
        with pytest.raises(SSL4EOS12DataError, match=r"ssl4eos12_shard_000002\.tar.*stale.*ssl4eos12 index"):
            stream(root=srv.url, samples=[chosen])
        locations = ssl4eos12.Locations("all", root=srv.url, modalities=MODALITIES)
        with pytest.raises(SSL4EOS12DataError, match=r"S1GRD/ssl4eos12_shard_000002\.tar.*rerun `ssl4eos12 index"):
            locations[PER_TAR + 2]
    # a local root says the same
    locations = ssl4eos12.Locations("all", data_dir=str(copy), modalities=MODALITIES)
    with pytest.raises(SSL4EOS12DataError, match=r"S1GRD/ssl4eos12_shard_000002\.tar.*stale"):
        locations[PER_TAR + 2]


# --- show ---------------------------------------------------------------------------------------------------------

@needs_nginx
def test_show_on_a_remote_tar_root_fetches_only_that_location(root, index, expected, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from ssl4eos12.cli import main
    from ssl4eos12.plot import find_example

    example = expected[PER_TAR + 3]
    sample, file = example["sample"], example["file"]
    out = tmp_path / "show.png"
    with NginxServer(root) as srv:
        main(["show", srv.url, "--sample", sample, "--config", "S2L2A", "--split", "train", "--out", str(out)])
        served = tar_bytes(srv)
        found = find_example(srv.url, sample, config="S1GRD",
                             index=str(Path(root) / "splits" / "ssl4eos12_train_index.parquet"))
    assert out.stat().st_size > 0 and str(out) in capsys.readouterr().out
    chosen = {p: n for p, n in member_bytes(index, [sample]).items() if "/S2L2A/" in p}
    probe = {p: n for p, n in probes(index, file).items() if "/S2L2A/" in p}
    assert_within(served, chosen, probe, "show")
    local = next(e for e in datasets.load_dataset("ssl4eos12", "S1GRD", data_dir=str(root), split="train",
                                                  streaming=True) if e["sample"] == sample)
    assert_example_equal(found, local, "find_example")
