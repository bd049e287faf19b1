"""Streaming from http(s):// and hf://: same examples as local, each byte fetched once, faults and stalls
survived, and nothing (thread, connection, buffer) left behind by a cancelled iteration or a killed worker."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import traced_peak
from datasets import load_dataset
from datasets.distributed import split_dataset_by_node
from nginx import NginxServer, nginx_binary
from reference import assert_example_equal, expected_examples, split_files
from servers import HubServer, PlainHTTPServer, RangeHTTPServer, use_hub

import ssl4eos12
from ssl4eos12.sources import fastzip, remote

MODALITIES = ["S2L1C", "S2L2A", "S2RGB", "S1GRD"]


def comparable(example: dict) -> dict:
    return {k: (np.asarray(v) if isinstance(v, list) and v and not isinstance(v[0], str) else v)
            for k, v in example.items()}


def assert_same_examples(remote, local) -> int:
    remote, local = list(remote), list(local)
    assert len(remote) == len(local) > 0
    for i, (r, l) in enumerate(zip(remote, local)):
        assert_example_equal(comparable(r), comparable(l), f"example {i}")
    return len(remote)


def local_stream(data_dir, config="all", split="train", **kwargs):
    return load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split, streaming=True, **kwargs)


@pytest.fixture
def fast_retries(monkeypatch):
    """datasets' own retry policy, with short waits so the tests stay quick."""
    monkeypatch.setattr(datasets.config, "STREAMING_READ_RETRY_INTERVAL", 0.05)
    monkeypatch.setattr(datasets.config, "STREAMING_READ_MAX_RETRIES", 5)


def zip_bytes(data_dir: Path, split_folder: str) -> dict[str, int]:
    return {f"/{p.relative_to(data_dir).as_posix()}": p.stat().st_size
            for p in (data_dir / split_folder).rglob("*.zarr.zip")}


def test_http_streaming_equals_local_and_fetches_each_byte_once(tmp_path):
    # files of ~0.5-3 MB: the ~10 kB of metadata read once to learn the features is then < 2 %, as it is
    # (< 0.01 %) on the real 70-460 MB files
    data_dir = ssl4eos12.synth.synthesize(tmp_path / "d", splits=("train",), files=2, samples=8, size=64)
    with RangeHTTPServer(data_dir) as srv:
        remote = load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True)
        assert_same_examples(remote, local_stream(data_dir))
        files = zip_bytes(Path(data_dir), "train")
        served = {path: srv.bytes_served.get(path, 0) for path in files}
    for path, size in files.items():
        assert size <= served[path] <= 1.05 * size, (path, served[path], size)
    assert sum(served.values()) <= 1.02 * sum(files.values())


def test_http_single_timestamp_and_validation_split(data_dir):
    with RangeHTTPServer(data_dir) as srv:
        remote = load_dataset("ssl4eos12", "S1GRD", root=srv.url + "/", split="validation", streaming=True,
                              single_timestamp=True)
        n = assert_same_examples(remote, local_stream(data_dir, "S1GRD", "validation", single_timestamp=True))
    assert n == 2 * 3 * 4


def test_hf_root_and_the_default_hosted_root(data_dir, tmp_path, monkeypatch):
    with HubServer(tokens={"hf_reader": "reader"}) as hub, use_hub(hub, home=tmp_path / "hf"):
        hub.seed("someone/mirror", data_dir)
        remote = load_dataset("ssl4eos12", "S2L2A", root="hf://datasets/someone/mirror", split="train",
                              streaming=True)
        assert_same_examples(remote, local_stream(data_dir, "S2L2A"))

        # a revision: only the branch "v1" holds the data
        hub.seed("someone/versioned", files={"README.md": b"empty main"})
        hub.seed("someone/versioned", data_dir, revision="v1")
        versioned = load_dataset("ssl4eos12", "S1GRD", root="hf://datasets/someone/versioned@v1", split="train",
                                 streaming=True)
        assert_same_examples(versioned, local_stream(data_dir, "S1GRD"))

        # no data_dir, no root: the hosted copy, here served by the local Hub
        hub.seed("embed2scale/SSL4EO-S12-v1.1-Zarr", data_dir, private=True)
        hosted = load_dataset("ssl4eos12", "S2RGB", split="validation", streaming=True, token="hf_reader")
        assert_same_examples(hosted, local_stream(data_dir, "S2RGB", "validation"))
        assert any("embed2scale/SSL4EO-S12-v1.1-Zarr" in r.path for r in hub.requests)


def test_http_transient_errors_are_retried(data_dir, fast_retries):
    with RangeHTTPServer(data_dir) as srv:
        remote = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        srv.fail_next(2, status=500)
        expected = list(local_stream(data_dir, "S2L2A"))
        rows = []
        for i, row in enumerate(remote):
            rows.append(row)
            if i == 2:  # in the middle of the run: drop the next connection half-way through its body
                srv.drop_next(1)
        assert_same_examples(rows, expected)
        statuses = [r for r in srv.requests if r[0] == "GET"]
    assert len(statuses) > len(split_files(data_dir, "train"))


def test_http_server_that_never_recovers_gets_a_clear_error(data_dir, fast_retries):
    with RangeHTTPServer(data_dir) as srv:
        remote = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        srv.fail_next(1000, status=503)
        with pytest.raises(ssl4eos12.SSL4EOS12FileError, match="retries exhausted") as info:
            list(remote)
        assert f"{srv.url}/train/S2L2A/{split_files(data_dir, 'train')[0]}" in str(info.value)


def test_http_missing_file_is_named(data_dir, tmp_path):
    import shutil

    root = Path(shutil.copytree(data_dir, tmp_path / "copy"))
    missing = split_files(root, "train")[1]
    (root / "train" / "S1GRD" / missing).unlink()
    with RangeHTTPServer(root) as srv:
        with pytest.raises(ssl4eos12.SSL4EOS12FileError, match="file not found") as info:
            list(load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True))
        assert f"{srv.url}/train/S1GRD/{missing}" in str(info.value)


def test_workers_see_every_example_exactly_once(data_dir):
    torch = pytest.importorskip("torch")
    ds = local_stream(data_dir, "S2RGB")
    assert ds.num_shards == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=ssl4eos12.collate)
    seen = [s for batch in loader for s in batch["sample"]]
    expected = [row["sample"] for row in local_stream(data_dir, "S2RGB")]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen)) == 6


def test_nodes_and_resharding_see_every_example_exactly_once(data_dir):
    ds = local_stream(data_dir, "S2L2A")
    expected = sorted(row["sample"] for row in ds)
    per_node = [[row["sample"] for row in split_dataset_by_node(ds, rank=r, world_size=2)] for r in range(2)]
    assert sorted(per_node[0] + per_node[1]) == expected and set(per_node[0]).isdisjoint(per_node[1])

    resharded = ds.reshard()
    assert resharded.num_shards > ds.num_shards  # 2 files, more shards than files
    parts = [[row["sample"] for row in resharded.shard(num_shards=resharded.num_shards, index=i)]
             for i in range(resharded.num_shards)]
    assert sorted(s for part in parts for s in part) == expected
    per_worker = [[row["sample"] for row in split_dataset_by_node(resharded, rank=r, world_size=4)] for r in range(4)]
    assert sorted(s for w in per_worker for s in w) == expected


def test_shuffle_reorders_files_and_examples(data_dir):
    ds = local_stream(data_dir, "S1GRD")
    plain = [row["sample"] for row in ds]
    orders = {tuple(row["sample"] for row in ds.shuffle(seed=seed, buffer_size=4)) for seed in range(6)}
    assert all(sorted(order) == sorted(plain) for order in orders)
    assert len(orders) > 1


def test_cancelled_iterations_leave_no_threads_or_connections(data_dir):
    psutil = pytest.importorskip("psutil")
    with RangeHTTPServer(data_dir) as srv:
        port = int(srv.url.rsplit(":", 1)[1])

        def open_connections():
            return [c for c in psutil.Process().net_connections("tcp")
                    if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"]

        def cancelled_run():
            iterator = iter(load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True))
            next(iterator)
            iterator.close()
            del iterator
            gc.collect()

        def live_threads() -> int:
            # an event loop's default executor (aiohttp resolves host names there) grows lazily up to a fixed
            # number of idle threads, shared by every iteration: those are not an iteration's threads
            return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))

        cancelled_run()
        threads, connections = live_threads(), len(open_connections())
        for _ in range(3):
            cancelled_run()
        # the server's handler threads end when their connection closes: give them a moment on a busy machine
        deadline = time.monotonic() + 10
        while live_threads() > threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_threads() <= threads
        assert len(open_connections()) <= max(connections, 1)


def test_peak_memory_is_flat_in_the_number_of_files(tmp_path):
    """Streaming 6 files peaks no higher than streaming 2: memory holds about one file per modality."""

    root = ssl4eos12.synth.synthesize(tmp_path / "many", splits=("train",), files=6, samples=4, size=48)
    one_file = sum(p.stat().st_size for p in root.rglob("*_000001.zarr.zip"))

    def peak(files: int) -> int:
        return traced_peak(local_stream(root, "all").take(files * 4))

    two, six = peak(2), peak(6)
    assert six <= 1.15 * two, (two, six)
    assert six > one_file / 4  # the measurement does see the decoded arrays
    print(f"peak traced memory: 2 files {two / 1e6:.1f} MB, 6 files {six / 1e6:.1f} MB")


# ------------------------------------------------------------------------------------------------------------
# The fetch: parallel ranges, stalls, and nothing left behind by a cancelled or abandoned iteration
# ------------------------------------------------------------------------------------------------------------


if nginx_binary() is None and os.environ.get("SSL4EOS12_REQUIRE_NGINX"):  # CI (.ci/run) installs it
    raise RuntimeError("SSL4EOS12_REQUIRE_NGINX is set but nginx is not installed (apt-get install nginx-light)")
needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")


@pytest.fixture
def small_pieces(monkeypatch):
    """Split files of a few hundred kB into byte ranges as 8 MB pieces split the real files."""
    monkeypatch.setattr(remote, "MIN_PIECE", 16 << 10)


@pytest.mark.parametrize("connections", [1, 3])
def test_fetch_reads_every_byte_once_over_one_or_several_connections(tmp_path, small_pieces, connections):
    payload = np.random.default_rng(0).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    with RangeHTTPServer(tmp_path) as srv:
        fetched = remote.fetch(srv.url + "/f.bin", options=remote.FetchOptions(connections=connections))
        with fetched:
            assert fetched.read() == payload
            fetched.seek(100)
            assert fetched.read(5) == payload[100:105]
        gets = [r for r in srv.requests if r[0] == "GET"]
        assert srv.bytes_served["/f.bin"] == len(payload)
    assert len(gets) == connections
    assert all(r[2] is not None for r in gets) == (connections > 1)  # byte ranges only when split


def test_a_stalled_read_is_retried_from_where_it_stopped(data_dir, fast_retries, small_pieces):
    with RangeHTTPServer(data_dir) as srv:
        remote_ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True,
                                 remote_timeout=1, remote_connections=2)
        srv.reset_log()  # the metadata read to learn the features is not part of the fetch
        srv.stall_next(1, after_bytes=1000)
        assert_same_examples(remote_ds, local_stream(data_dir, "S2L2A"))
        gets = [r for r in srv.requests if r[0] == "GET"]
        stalled_at = int((gets[0][2] or "bytes=0-").split("=")[1].split("-")[0]) + 1000  # the first GET stalled
        resumed = [r for r in gets[1:] if r[1] == gets[0][1] and (r[2] or "").startswith(f"bytes={stalled_at}-")]
        files = zip_bytes(Path(data_dir), "train")
        served = {path: srv.bytes_served.get(path, 0) for path in files if "/S2L2A/" in path}
    assert resumed, "the stalled range was not asked for again from where it stopped"
    for path, size in served.items():
        assert files[path] <= size <= 1.05 * files[path], (path, size)


@pytest.mark.parametrize("ranges", [True, False])
def test_a_server_that_stalls_for_good_gets_a_clear_error(data_dir, fast_retries, monkeypatch, ranges):
    monkeypatch.setattr(datasets.config, "STREAMING_READ_MAX_RETRIES", 2)
    with RangeHTTPServer(data_dir, ranges=ranges) as srv:
        remote_ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True,
                                 remote_timeout=0.2)
        srv.stall_next(100, after_bytes=0)  # headers, then nothing: no attempt makes progress
        with pytest.raises(ssl4eos12.SSL4EOS12FileError, match=r"retries exhausted \(no data for 0.2 s") as info:
            list(remote_ds)
        assert f"{srv.url}/train/S2L2A/{split_files(data_dir, 'train')[0]}" in str(info.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("ssl4eos12-")]


def test_bad_remote_settings_are_refused(data_dir):
    for kwargs, message in [({"remote_connections": 0}, "remote_connections must be an integer >= 1"),
                            ({"remote_prefetch": -1}, "remote_prefetch must be an integer >= 0"),
                            ({"remote_timeout": 0}, "remote_timeout must be a number of seconds > 0")]:
        with pytest.raises(ValueError, match=message):
            local_stream(data_dir, "S2L2A", **kwargs)


def client_connections(port: int, pid: int | None = None) -> list:
    """ESTABLISHED connections to 127.0.0.1:port from this process, or from process ``pid``."""
    psutil = pytest.importorskip("psutil")
    conns = psutil.Process().net_connections("tcp") if pid is None else psutil.net_connections("tcp")
    return [c for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            and (pid is None or c.pid == pid)]

def stop_while_prefetching(ds, srv, second: str, how: str, port: int, before: set, track_buffers: list) -> None:
    """Iterate ``ds`` until its prefetch asks ``srv`` for ``second``, stop as ``how`` says (break, exception,
    close, or abandon the iterator), and check that no thread, connection or fetched buffer is left."""

    def consume():
        iterator = iter(ds)
        next(iterator)
        deadline = threading.Event()
        while not any(r[1] == second for r in srv.requests) and not deadline.wait(0.01):
            pass  # until the prefetch asks for the second file (or tar)
        if how == "break":
            for _ in iterator:
                break
            iterator.close()
        elif how == "exception":
            with pytest.raises(KeyError):
                for example in iterator:
                    raise KeyError(example["sample"])
        elif how == "close":
            iterator.close()
        return iterator

    iterator = consume()
    if how == "abandon":
        assert ssl4eos12_threads()  # the prefetch is still running
    del iterator
    gc.collect()
    assert any(r[1] == second for r in srv.requests)
    assert not ssl4eos12_threads()
    assert {c.laddr for c in client_connections(port)} <= before
    assert track_buffers and all(buffer.closed for buffer in track_buffers)



def ssl4eos12_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ssl4eos12-")]


@pytest.fixture
def track_buffers(monkeypatch):
    """Every buffer a fetch maps, to check that each one is unmapped again."""
    made = []
    allocate = remote._allocate

    def recording(size):
        made.append(allocate(size))
        return made[-1]

    monkeypatch.setattr(remote, "_allocate", recording)
    return made


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["break", "exception", "close", "abandon"])
def test_a_cancelled_iteration_stops_its_fetch_and_leaves_nothing_behind(data_dir, track_buffers, how):
    """The next file's fetch is in flight (its server stalls mid-body) when the consumer stops: the fetch is
    interrupted at once (else the test would wait for the stall), and no thread, connection or buffer stays."""
    files = split_files(data_dir, "train")
    with RangeHTTPServer(data_dir) as srv:
        port = srv.port
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        # fsspec's pooled connection of the metadata read that load_dataset made (not the iteration's)
        before = {c.laddr for c in client_connections(port)}
        second = f"/train/S2L2A/{files[1]}"
        srv.stall_next(1, after_bytes=500, path=second)

        stop_while_prefetching(ds, srv, second, how, port, before, track_buffers)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("layout", ["zarr", "webdataset"])
def test_a_killed_dataloader_worker_leaves_no_connection_or_thread(data_dir, wds_dir, layout):
    torch = pytest.importorskip("torch")
    import signal

    root = data_dir if layout == "zarr" else wds_dir
    second = sorted(p.name for p in (Path(root) / "train" / "S2L2A").iterdir())[1]
    threads_before = {t.ident for t in threading.enumerate()}
    with RangeHTTPServer(root) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        before = {c.laddr for c in client_connections(srv.port)}  # load_dataset's metadata read (fsspec's pool)
        srv.stall_next(1, after_bytes=500, path=f"/train/S2L2A/{second}")  # the worker's prefetch hangs there
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=ssl4eos12.collate)
        iterator = iter(loader)
        next(iterator)
        worker = iterator._workers[0]
        deadline = threading.Event()
        while not client_connections(srv.port, pid=worker.pid) and not deadline.wait(0.05):
            pass
        assert client_connections(srv.port, pid=worker.pid)  # the worker is fetching
        os.kill(worker.pid, signal.SIGKILL)
        # torch reports the death from its SIGCHLD handler or from the broken pipe, whichever comes first
        with pytest.raises((RuntimeError, ConnectionError)):
            worker.join(30)
            next(iterator)
        iterator._shutdown_workers()
        del iterator
        gc.collect()
        for _ in range(100):  # the kernel closes a killed process's sockets; give it a moment
            if not client_connections(srv.port, pid=worker.pid):
                break
            deadline.wait(0.05)
        assert not client_connections(srv.port, pid=worker.pid)
        assert {c.laddr for c in client_connections(srv.port)} <= before
    assert not ssl4eos12_threads()
    left = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert all("process_request_thread" in name for name in left), left  # only the server's, ending


@needs_nginx
@pytest.mark.parametrize("connections", [1, 3])
def test_nginx_streaming_equals_local_and_serves_each_byte_once(tmp_path, small_pieces, small_tail, connections,
                                                               decode_threads):
    # one connection: each file handed over with its tail, its body arriving while it is decoded
    data_dir = ssl4eos12.synth.synthesize(tmp_path / "d", splits=("train",), files=2, samples=8, size=64)
    with NginxServer(data_dir) as srv:
        ds = load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True,
                          remote_connections=connections)
        assert_same_examples(ds, local_stream(data_dir))
        served = srv.bytes_served()
        gets = [r for r in srv.requests() if r[0] == "GET"]
    files = zip_bytes(Path(data_dir), "train")
    for path, size in files.items():
        assert size <= served[path] <= 1.05 * size, (path, served[path], size)
    assert all(status in (200, 206) for _, path, status in gets if path.endswith(".zarr.zip")), gets


def test_hf_fetch_sends_the_token_and_reads_every_byte_once_in_ranges(data_dir, tmp_path, small_pieces):
    with HubServer(tokens={"hf_reader": "reader"}) as hub, use_hub(hub, home=tmp_path / "hf"):
        hub.seed("someone/private", data_dir, private=True)  # hidden from a request without the token
        ds = load_dataset("ssl4eos12", "S2L2A", root="hf://datasets/someone/private", split="train", streaming=True,
                          token="hf_reader", remote_connections=3)
        first = len(hub.requests)  # after load_dataset's listing and metadata read
        assert_same_examples(ds, local_stream(data_dir, "S2L2A"))
        fetched = [r for r in hub.requests[first:] if r.method == "GET" and r.path.endswith(".zarr.zip")]
    files = {p: size for p, size in zip_bytes(Path(data_dir), "train").items() if "/S2L2A/" in p}
    for path, size in files.items():
        gets = [r for r in fetched if r.path.endswith(path)]
        assert all("/resolve/" in r.path and r.status == 206 for r in gets), gets
        assert len(gets) == 3 and sum(r.bytes for r in gets) == size, (path, gets)


def test_http_access_denied_is_named_and_not_retried(data_dir, fast_retries):
    with RangeHTTPServer(data_dir) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        srv.reset_log()
        srv.fail_next(1000, status=403)
        denied = "HTTP 403 Forbidden: no read access; use a token"
        with pytest.raises(ssl4eos12.SSL4EOS12FileError, match=denied) as info:
            next(iter(ds))
        assert f"{srv.url}/train/S2L2A/{split_files(data_dir, 'train')[0]}" in str(info.value)
        assert len([r for r in srv.requests if r[0] == "GET" and r[1].endswith(".zarr.zip")]) == 1


# -- a server without Range support (python -m http.server): each file whole, with one GET -----------------------

def range_notes(caplog, url: str) -> list[logging.LogRecord]:
    """The package's log records that say the server at ``url`` does not support Range requests."""
    return [r for r in caplog.records if r.name.startswith("ssl4eos12") and r.levelno >= logging.INFO
            and url in r.getMessage() and "Range" in r.getMessage()]


def test_a_server_without_range_support_streams_each_file_whole_with_one_get(data_dir, caplog):
    """Python's own http.server ignores Range: each file comes whole, with one plain GET, values as xarray reads
    them; the reader says once (not per file) that the server reads whole files only."""
    caplog.set_level(logging.INFO, logger="ssl4eos12")
    with PlainHTTPServer(data_dir) as srv:
        ds = load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True)
        srv.reset_log()  # the features' probe (the first file of each modality)
        assert_same_examples(ds, list(expected_examples(data_dir, "train", MODALITIES)))
        gets = srv.gets(".zarr.zip")
        assert len(range_notes(caplog, srv.url)) == 1
    files = [f"/train/{m}/{name}" for m in MODALITIES for name in split_files(data_dir, "train")]
    assert sorted(path for path, _ in gets) == sorted(files)  # one GET per file
    assert all(byte_range is None for _, byte_range in gets)


def test_a_selection_of_timestamps_from_a_server_without_range_support_reads_whole_files(tmp_path, caplog):
    """single_timestamp with a time filter reads only the kept timestamps' chunks by range; a server that ignores
    Range sends whole files instead: one GET per file with a match, a note said once, the same values."""
    import pandas as pd
    import pyarrow.parquet as pq

    from ssl4eos12.index import build_index

    caplog.set_level(logging.INFO, logger="ssl4eos12")
    root = ssl4eos12.synth.synthesize(tmp_path / "d", splits=("train",), files=3, samples=6, size=16, seed=5)
    build_index(root, workers=1)
    index = pq.read_table(root / "splits" / "ssl4eos12_train_index.parquet").to_pandas()
    start = index[[f"{m}_time" for m in MODALITIES]].min().min()
    end = start + pd.Timedelta(days=60)
    expected = [e for e in expected_examples(root, "train", MODALITIES, single_timestamp=True)
                if all(start <= e[f"{m}_time"] < end for m in MODALITIES)]
    assert expected and len({int(e["time_index"]) for e in expected}) < 4  # some timestamps only
    with PlainHTTPServer(root) as srv:
        ds = load_dataset("ssl4eos12", "all", root=srv.url, split="train", streaming=True, single_timestamp=True,
                          time_range=(start.isoformat(), end.isoformat()))
        srv.reset_log()
        assert_same_examples(ds, expected)
        gets = srv.gets(".zarr.zip")
        assert len(range_notes(caplog, srv.url)) == 1
    kept = {e["file"] for e in expected}
    assert sorted(path for path, _ in gets) == sorted(f"/train/{m}/{name}" for m in MODALITIES for name in kept)


def test_a_stall_on_a_server_without_range_support_restarts_the_file(data_dir, fast_retries):
    """No byte ranges, so neither parallel connections nor a resumed read: one GET, and after a stall the file
    again from its first byte (the Range asked for is ignored), values exact."""
    first = f"/train/S2L2A/{split_files(data_dir, 'train')[0]}"
    size = (Path(data_dir) / first.lstrip("/")).stat().st_size
    with RangeHTTPServer(data_dir, ranges=False) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True, remote_timeout=0.5,
                          remote_connections=3)
        srv.reset_log()
        srv.stall_next(1, after_bytes=1000, path=first)
        assert_same_examples(ds, list(expected_examples(data_dir, "train", ["S2L2A"])))
        gets = [r[2] for r in srv.requests if r[0] == "GET" and r[1] == first]
        served = srv.bytes_served[first]
    assert gets == [None, f"bytes=1000-{size - 1}"]  # the rest asked for; the server sent all of it again
    assert served == 1000 + size


def authors_metadata(path: Path, files: int = 34, samples: int = 64) -> list[str]:
    """A Parquet file laid out as the authors' ``splits/val_metadata.parquet`` (one row per location and timestamp,
    a WKB footprint each), of their validation split's size (~0.3 MB: far more than the few kB a reader gets from
    a Parquet footer's first read); returns its file names in order."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssl4eos12.index import polygon_wkb

    rng = np.random.default_rng(8)
    names = [f"ssl4eos12_val_seasonal_data_{i + 1:06d}.zarr.zip" for i in range(files)]
    n = files * samples * 4
    lon, lat = rng.uniform(-180, 180, n // 4).repeat(4), rng.uniform(-60, 70, n // 4).repeat(4)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]]) * 0.012
    pq.write_table(pa.table({
        "sample_id": [f"{i // 4:07d}" for i in range(n)], "time_id": np.tile(np.arange(4), n // 4),
        "time": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 365 * 86400, n), unit="s"),
        "tile_id": [f"T{i % 60:02d}ABC" for i in range(n)],
        "geometry": [polygon_wkb(corners + (x, y)) for x, y in zip(lon, lat)],
        "tile_crs": np.full(n, 32632), "file": np.repeat(names, samples * 4),
    }), path)
    return names


def test_the_authors_metadata_from_a_server_without_range_support(tmp_path, monkeypatch):
    """A Parquet file is read by ranges from its end (its footer): from a server that ignores Range, whole; as the
    split's file list and as its index (the authors' metadata of the Zarr release), equal to a local read."""
    from ssl4eos12.index import load_index
    from ssl4eos12.sources.chunked import list_split_files

    (tmp_path / "splits").mkdir()
    files = authors_metadata(tmp_path / "splits" / "val_metadata.parquet")
    assert (tmp_path / "splits" / "val_metadata.parquet").stat().st_size > 200_000
    with PlainHTTPServer(tmp_path) as srv:
        assert list_split_files(srv.url, "val", "S2L2A") == files
        # (after fsspec's GET for exists()) the first read asks for a range, gets the whole file, fetches it whole;
        # from then on, one GET each
        (_, asked), whole = srv.gets(".parquet")[-2:]
        assert asked.startswith("bytes=") and whole == ("/splits/val_metadata.parquet", None)
        srv.reset_log()
        remote_index = load_index(srv.url, "val")
        assert srv.gets("val_metadata.parquet") == [("/splits/val_metadata.parquet", None)]
        # remembered for a while only: then a range is tried again
        monkeypatch.setattr(remote, "RANGES_MEMORY", 0.0)
        assert remote.serves_ranges(srv.url)
    local_index = load_index(str(tmp_path), "val")
    assert len(remote_index) == len(local_index) == len(files) * 64 * 4
    pytest.importorskip("pandas.testing").assert_frame_equal(remote_index, local_index)


@pytest.mark.parametrize("streamed", [True, False])
def test_a_file_read_front_to_back_from_a_server_without_range_support(tmp_path, monkeypatch, streamed):
    """One GET, read window by window (never the whole file in memory), also where windows would be ranges."""
    payload = np.random.default_rng(6).integers(0, 256, 100_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    sizes = []
    allocate = remote._allocate
    monkeypatch.setattr(remote, "_allocate", lambda size: sizes.append(size) or allocate(size))
    with PlainHTTPServer(tmp_path) as srv:
        with remote.open_sequential(srv.url + "/f.bin", window=7_000, ahead=2, streamed=streamed) as f:
            assert f.read(1) == payload[:1]
            assert f.read() == payload[1:]
        assert srv.gets() == [("/f.bin", None)]
    assert sizes and max(sizes) <= 7_000
    assert not ssl4eos12_threads()


def test_a_file_read_front_to_back_that_stalls_without_range_support_restarts(tmp_path, fast_retries, monkeypatch):
    """A stall mid-file: the file again from its start (the Range asked for is ignored), the bytes already read
    skipped, so the reader sees each byte once, in order, and memory holds a few windows, never the file."""
    payload = np.random.default_rng(7).integers(0, 256, 100_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    sizes = []
    allocate = remote._allocate
    monkeypatch.setattr(remote, "_allocate", lambda size: sizes.append(size) or allocate(size))
    with RangeHTTPServer(tmp_path, ranges=False) as srv:
        srv.stall_next(1, after_bytes=20_000, path="/f.bin")
        options = remote.FetchOptions(timeout=0.5)
        with remote.open_sequential(srv.url + "/f.bin", options=options, window=7_000, ahead=2) as f:
            assert f.read() == payload
        gets = [r[2] for r in srv.requests if r[0] == "GET"]
        assert srv.bytes_served["/f.bin"] == 20_000 + len(payload)
    assert gets == [None, f"bytes=20000-{len(payload) - 1}"]
    assert sizes and max(sizes) <= 7_000
    assert not ssl4eos12_threads()


def test_a_file_read_front_to_back_through_fsspec_from_a_server_without_range_support(tmp_path, monkeypatch):
    """Through fsspec (a proxy set for the host): windows by range; from a server that ignores ranges, the file as
    one stream from there on, the bytes already read skipped."""
    payload = np.random.default_rng(9).integers(0, 256, 50_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    monkeypatch.setattr(remote, "_proxy_for", lambda url: "http://proxy.invalid:3128")  # fsspec reads it then
    for server in (RangeHTTPServer(tmp_path), PlainHTTPServer(tmp_path)):
        with server as srv:
            with remote.open_sequential(srv.url + "/f.bin", window=7_000, ahead=2) as f:
                assert f.read(10) == payload[:10]
                assert f.read() == payload[10:]
            gets = [r[2] for r in srv.requests if r[0] == "GET"]
        windows = [f"bytes={a}-{min(a + 7_000, len(payload)) - 1}" for a in range(0, len(payload), 7_000)]
        if isinstance(srv, RangeHTTPServer):
            assert gets == windows
        else:  # the first window's range came whole (fsspec kept its start), the second's too: a stream from there
            assert gets == [*windows[:2], None]
    assert not ssl4eos12_threads()


def test_a_range_ignored_where_a_file_is_split_over_connections_is_named(tmp_path, small_pieces):
    """A server that says it serves ranges (Accept-Ranges) but sends the whole file to each: one clear line."""
    import servers

    class Pretending(servers._RangeHandler):
        def end_headers(self) -> None:
            if self.command == "HEAD":
                self.send_header("Accept-Ranges", "bytes")
            super().end_headers()

    class PretendingServer(RangeHTTPServer):
        _handler_class = Pretending

    (tmp_path / "f.bin").write_bytes(bytes(200_003))
    with PretendingServer(tmp_path, ranges=False) as srv, \
            pytest.raises(remote.RemoteFileError, match=r"f\.bin: the server ignores byte ranges \(HTTP 200 to bytes="):
        remote.fetch(srv.url + "/f.bin", options=remote.FetchOptions(connections=3))


# -- files read front to back (the webdataset tars) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def wds_dir(tmp_path_factory):
    """Tars of the webdataset release: 2 per split and modality, 3 locations of 16 px each (~0.1 MB per tar)."""
    from ssl4eos12.synth.webdataset import synthesize_webdataset

    return synthesize_webdataset(tmp_path_factory.mktemp("wds"), splits=("train",), files=2, samples=3, size=16,
                                 modalities=("S2L2A", "S1GRD"))


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of a few kB, so the ~0.1 MB tars take many, as 16 MB windows split the real ones."""
    monkeypatch.setattr(remote, "WINDOW", 8 << 10)


def tar_sizes(wds_dir: Path) -> dict[str, int]:
    return {f"/{p.relative_to(wds_dir).as_posix()}": p.stat().st_size for p in Path(wds_dir).rglob("*.tar")}


@pytest.mark.parametrize("streamed", [True, False])
def test_open_sequential_reads_every_byte_once_in_order(tmp_path, streamed):
    payload = np.random.default_rng(1).integers(0, 256, 100_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    with RangeHTTPServer(tmp_path) as srv:
        with remote.open_sequential(srv.url + "/f.bin", window=7_000, ahead=2, streamed=streamed) as f:
            parts = [f.read(n) for n in (1, 6_998, 7_002, 30_000, 1)]  # within, to the end of, across windows
            parts.append(f.read())
            assert f.read(10) == b"" and f.tell() == len(payload)
        assert b"".join(parts) == payload
        gets = [r for r in srv.requests if r[0] == "GET"]
        assert srv.bytes_served["/f.bin"] == len(payload)
    if streamed:  # one request, no Range
        assert [r[2] for r in gets] == [None]
    else:  # one range request per window
        assert [r[2] for r in gets] == [f"bytes={a}-{min(a + 7_000, len(payload)) - 1}"
                                        for a in range(0, len(payload), 7_000)]
    assert not ssl4eos12_threads()


@pytest.mark.parametrize("streamed", [True, False])
def test_views_of_windows_keep_their_bytes_while_the_windows_are_reused(tmp_path, monkeypatch, streamed):
    """read_view hands out bytes within one window as a view of it (no copy); a window read past goes back to the
    pool, which reuses its buffer only once no view refers to it: every view kept to the end still holds its bytes,
    and the buffers made are those in use at once, not one per window."""
    payload = np.random.default_rng(11).integers(0, 256, 200_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    made = []
    allocate = remote._allocate
    monkeypatch.setattr(remote, "_allocate", lambda size: made.append(size) or allocate(size))
    kept, dropped = [], 0
    with RangeHTTPServer(tmp_path) as srv, \
            remote.open_sequential(srv.url + "/f.bin", window=7_000, ahead=2, streamed=streamed) as f:
        position = 0
        for n in itertools.cycle((3_000, 2_500, 1_499, 9_000)):  # within windows, and across them (copies)
            part = f.read_view(n)
            if not part:
                break
            assert bytes(part) == payload[position:position + len(part)]
            if len(kept) < 8 and position // 7_000 % 4 == 0:
                kept.append((position, part))  # held past the reuse of its window's buffer
            else:
                dropped += 1
                del part
            position += n
    assert position >= len(payload) and dropped > 20
    assert any(isinstance(part, memoryview) for _, part in kept), "bytes within a window came as a view"
    for start, part in kept:
        assert bytes(part) == payload[start:start + len(part)], f"the view at {start} was overwritten"
    windows = -(-len(payload) // 7_000)
    assert len(made) < windows // 2, f"{len(made)} buffers made for {windows} windows: the pool was not used"
    assert not ssl4eos12_threads()


@needs_nginx
def test_tars_over_nginx_equal_local_tars_and_serve_each_byte_once(wds_dir, small_windows):
    with NginxServer(wds_dir) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", modalities=["S2L2A", "S1GRD"], root=srv.url, split="train",
                          streaming=True)
        before, probed = srv.bytes_served(), len(srv.requests())  # the features' probe: the first tars' start
        local = load_dataset("ssl4eos12", "S2L2A", modalities=["S2L2A", "S1GRD"], data_dir=str(wds_dir),
                             split="train", streaming=True)
        assert_same_examples(ds, local)
        served = srv.bytes_served()
        gets = [r for r in srv.requests()[probed:] if r[0] == "GET"]
    for path, size in tar_sizes(wds_dir).items():
        assert served.get(path, 0) - before.get(path, 0) == size, (path, served.get(path), before.get(path), size)
    assert sorted((path, status) for _, path, status in gets) == sorted((p, 200) for p in tar_sizes(wds_dir))


def test_a_tar_that_stalls_mid_file_is_resumed_where_it_stopped(wds_dir, small_windows, fast_retries):
    with RangeHTTPServer(wds_dir) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True, remote_timeout=0.5)
        srv.reset_log()
        tar = "/train/S2L2A/" + sorted(p.name for p in (Path(wds_dir) / "train" / "S2L2A").glob("*.tar"))[1]
        srv.stall_next(1, after_bytes=20_000, path=tar)  # the second tar, while the first one is decoded
        local = load_dataset("ssl4eos12", "S2L2A", data_dir=str(wds_dir), split="train", streaming=True)
        assert_same_examples(ds, local)
        gets = [r for r in srv.requests if r[0] == "GET" and r[1] == tar]
        served = srv.bytes_served[tar]
    # the whole tar, then the rest from where it stalled
    assert [r[2] for r in gets] == [None, f"bytes=20000-{tar_sizes(wds_dir)[tar] - 1}"]
    assert served == tar_sizes(wds_dir)[tar]
    assert not ssl4eos12_threads()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["break", "exception", "close", "abandon"])
def test_a_cancelled_tar_iteration_stops_its_fetches_and_leaves_nothing_behind(wds_dir, small_windows,
                                                                                track_buffers, how):
    """The next tar's stream is open and stalled mid-body when the consumer stops: no thread, connection or
    buffer stays (the stall would hold the test otherwise)."""
    with RangeHTTPServer(wds_dir) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        before = {c.laddr for c in client_connections(srv.port)}  # fsspec's pool, from reading the metadata
        second = "/train/S2L2A/" + sorted(p.name for p in (Path(wds_dir) / "train" / "S2L2A").glob("*.tar"))[1]
        srv.stall_next(1, after_bytes=20_000, path=second)

        stop_while_prefetching(ds, srv, second, how, srv.port, before, track_buffers)


# -- a file handed over before its body is in (inside a prefetch) ---------------------------------------------------

@pytest.fixture
def small_tail(monkeypatch):
    """A tail of 16 kB, so files of a few hundred kB are handed over before their body arrives, as 8 MB tails
    do with the real files."""
    monkeypatch.setattr(remote, "TAIL", 16 << 10)


@pytest.fixture(params=["one thread", "chunks on threads"])
def decode_threads(request, monkeypatch):
    """Each file decoded on one thread, or its chunks on three (the fixtures' chunks are small: all of them)."""
    if request.param == "chunks on threads":
        monkeypatch.setattr(fastzip, "usable_cores", lambda: 3)
        monkeypatch.setattr(fastzip, "PARALLEL_BYTES", 1)
    return request.param


def test_a_file_is_handed_over_with_its_tail_and_its_body_follows(tmp_path, small_tail):
    payload = np.random.default_rng(2).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    missing = len(payload) - remote.TAIL
    with RangeHTTPServer(tmp_path) as srv:
        srv.stall_next(2, after_bytes=50_000, seconds=0.5, path="/f.bin")  # the tail whole, the body stalls
        with ssl4eos12.prefetch.prefetch([lambda: remote.fetch(srv.url + "/f.bin")], ahead=1) as files:
            fetched = next(files)
            assert fetched.wait(missing, len(payload), block=False)  # the tail is in
            assert not fetched.wait(0, missing, block=False)  # the body is still on its way (stalled)
            fetched.seek(missing)
            assert fetched.read() == payload[missing:]
            fetched.seek(0)
            assert fetched.read() == payload  # waits for the body (resumed after the stall)
            with fetched.getbuffer() as view:
                assert bytes(view) == payload
            fetched.close()
        gets = [r[2] for r in srv.requests if r[0] == "GET"]
        assert srv.bytes_served["/f.bin"] == len(payload)
    assert gets[:2] == [f"bytes={missing}-{len(payload) - 1}", f"bytes=0-{missing - 1}"]
    assert gets[2:] == [f"bytes=50000-{missing - 1}"]  # resumed where it stalled
    assert not ssl4eos12_threads()


@pytest.mark.timeout(60)
def test_closing_a_file_whose_body_is_arriving_stops_its_fetch(tmp_path, small_tail, track_buffers):
    payload = np.random.default_rng(3).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    with RangeHTTPServer(tmp_path) as srv:
        before = {c.laddr for c in client_connections(srv.port)}
        srv.stall_next(2, after_bytes=50_000, path="/f.bin")  # the body stalls for good
        with ssl4eos12.prefetch.prefetch([lambda: remote.fetch(srv.url + "/f.bin")], ahead=1) as files:
            fetched = next(files)
            deadline = threading.Event()
            while not fetched.wait(0, 40_000, block=False) and not deadline.wait(0.01):
                pass  # until the body has started to arrive
            fetched.close()  # at once: the stalled read is interrupted, not waited for
            with pytest.raises(ValueError, match="closed"):
                fetched.read()
        assert {c.laddr for c in client_connections(srv.port)} <= before
    assert not ssl4eos12_threads()
    assert track_buffers and all(buffer.closed for buffer in track_buffers)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["break", "abandon"])
def test_an_iteration_cancelled_while_a_body_arrives_leaves_nothing_behind(data_dir, track_buffers, monkeypatch,
                                                                            how, decode_threads):
    """The second file was handed over with its tail; its body stalls mid-way when the consumer stops."""
    monkeypatch.setattr(remote, "TAIL", 1 << 10)  # these files are ~10-20 kB
    files = split_files(data_dir, "train")
    with RangeHTTPServer(data_dir) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True)
        before = {c.laddr for c in client_connections(srv.port)}
        second = f"/train/S2L2A/{files[1]}"
        srv.stall_next(2, after_bytes=remote.TAIL + 100, path=second)  # the tail whole, the body stalls for good
        iterator = iter(ds)
        next(iterator)
        deadline = threading.Event()
        while len([r for r in srv.requests if r[1] == second and r[0] == "GET"]) < 2 and not deadline.wait(0.01):
            pass  # until the body is asked for
        if how == "break":
            for _ in iterator:
                break
            iterator.close()
        del iterator
        gc.collect()
        assert not ssl4eos12_threads()
        assert {c.laddr for c in client_connections(srv.port)} <= before
    assert track_buffers and all(buffer.closed for buffer in track_buffers)


def test_a_body_that_stalls_for_good_gets_a_clear_error(data_dir, fast_retries, monkeypatch, decode_threads):
    monkeypatch.setattr(datasets.config, "STREAMING_READ_MAX_RETRIES", 2)
    monkeypatch.setattr(remote, "TAIL", 1 << 10)
    first = f"/train/S2L2A/{split_files(data_dir, 'train')[0]}"
    with RangeHTTPServer(data_dir) as srv:
        ds = load_dataset("ssl4eos12", "S2L2A", root=srv.url, split="train", streaming=True, remote_timeout=0.2)
        srv.reset_log()  # the metadata read to learn the features
        srv.stall_next(1, after_bytes=remote.TAIL + 100, path=first)  # the tail, whole
        srv.stall_next(100, after_bytes=0, path=first)  # the body: headers, then nothing
        with pytest.raises(ssl4eos12.SSL4EOS12FileError, match=r"retries exhausted \(no data for 0.2 s") as info:
            list(ds)
        assert srv.url + first in str(info.value)
        assert len([r for r in srv.requests if r[0] == "GET" and r[1] == first]) == 1 + 3  # the tail; the body 3x
    assert not ssl4eos12_threads()


def test_a_thunk_that_reads_the_file_it_fetched_gets_it_whole(tmp_path, small_tail):
    """The body is fetched after the thunk returns; a thunk that reads it first gets it fetched there and then."""
    payload = np.random.default_rng(4).integers(0, 256, 100_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)

    def fetch_and_read(url):
        with remote.fetch(url) as fetched:
            return fetched.read()

    with RangeHTTPServer(tmp_path) as srv:
        for ahead in (0, 1):
            with ssl4eos12.prefetch.prefetch([lambda: fetch_and_read(srv.url + "/f.bin")], ahead=ahead) as results:
                assert next(results) == payload
    assert not ssl4eos12_threads()


@pytest.mark.parametrize("connections", [1, 3])
def test_a_server_that_refuses_head_requests_still_serves_the_file(tmp_path, small_tail, small_pieces, connections):
    """A URL signed for GET only answers HEAD with 403: the size is not known, so the file comes in one GET."""
    import servers

    class NoHead(servers._RangeHandler):
        def do_HEAD(self) -> None:
            self._send_simple(403, b"signed for GET only", head=True)

    class NoHeadServer(RangeHTTPServer):
        _handler_class = NoHead

    payload = np.random.default_rng(5).integers(0, 256, 100_001, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(payload)
    options = remote.FetchOptions(connections=connections)
    with NoHeadServer(tmp_path) as srv:
        with ssl4eos12.prefetch.prefetch([lambda: remote.fetch(srv.url + "/f.bin", options=options)]) as files, \
                next(files) as fetched:
            assert fetched.read() == payload
        assert [r[2] for r in srv.requests if r[0] == "GET"] == [None]
