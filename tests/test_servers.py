"""Tests of the local test servers in ``tests/servers.py``.

The Range server is exercised with fsspec's ``HTTPFileSystem`` (aiohttp), ``http.client``
and huggingface_hub's retrying ``http_backoff``; the fake Hub with the real
``huggingface_hub`` and ``datasets`` clients. Nothing leaves 127.0.0.1 and every cache
lives under ``tmp_path``.
"""

from __future__ import annotations

import http.client
import sys
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import HubServer, PlainHTTPServer, RangeHTTPServer, parse_range, use_hub

TOKEN = "hf_valid"
USER = "user"
DATA = bytes(range(256)) * 40  # 10_240 deterministic bytes


@pytest.fixture(autouse=True)
def _online_env(monkeypatch):
    # A developer's shell may run in offline mode: these tests only talk to 127.0.0.1.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


# --------------------------------------------------------------------------------------
# RangeHTTPServer
# --------------------------------------------------------------------------------------


@pytest.fixture
def range_server(tmp_path):
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "blob.bin").write_bytes(DATA)
    with RangeHTTPServer(root) as srv:
        yield srv


@pytest.fixture
def http_fs():
    from fsspec.implementations.http import HTTPFileSystem

    return HTTPFileSystem(skip_instance_cache=True)


@pytest.fixture
def retrying_get(monkeypatch):
    """huggingface_hub's retrying GET (``http_backoff``) with millisecond back-off."""
    import huggingface_hub.constants
    from huggingface_hub.utils import http_backoff

    # the offline flag is cached at import; its request hook would refuse every call
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def get(url: str):
        return http_backoff("GET", url, base_wait_time=0.01, max_wait_time=0.02, max_retries=3)

    return get


def _range_bytes(srv: RangeHTTPServer, path: str) -> int:
    """Bytes the server should have sent for ``path``, recomputed from its request log."""
    total = 0
    for method, logged_path, header in srv.requests:
        if method == "GET" and logged_path == path:
            rng = parse_range(header, len(DATA))
            total += len(DATA) if rng is None else rng[1] - rng[0] + 1
    return total


def test_range_server_fsspec_reads_byte_ranges(range_server, http_fs):
    url = range_server.url_for("sub/blob.bin")
    assert url.startswith("http://127.0.0.1:")

    assert http_fs.cat_file(url, start=1000, end=1500) == DATA[1000:1500]
    assert ("GET", "/sub/blob.bin", "bytes=1000-1499") in range_server.requests
    assert range_server.bytes_served == {"/sub/blob.bin": 500}

    # buffered random access through fsspec's file object (HEAD for the size, then ranges)
    assert http_fs.size(url) == len(DATA)
    with http_fs.open(url, "rb", block_size=2048) as f:
        f.seek(4096)
        assert f.read(100) == DATA[4096:4196]
        f.seek(len(DATA) - 10)
        assert f.read() == DATA[-10:]
    assert any(m == "HEAD" for m, _, _ in range_server.requests)
    assert range_server.bytes_served["/sub/blob.bin"] == _range_bytes(range_server, "/sub/blob.bin")
    assert range_server.bytes_served["/sub/blob.bin"] < 3 * len(DATA)  # ranges, not whole-file reads


def test_range_server_suffix_open_ended_and_unsatisfiable_ranges(range_server, http_fs):
    url = range_server.url_for("sub/blob.bin")
    assert http_fs.cat_file(url, start=-100) == DATA[-100:]  # fsspec sends "bytes=-100"
    assert ("GET", "/sub/blob.bin", "bytes=-100") in range_server.requests

    conn = http.client.HTTPConnection("127.0.0.1", range_server.port, timeout=5)
    try:
        conn.request("GET", "/sub/blob.bin", headers={"Range": "bytes=-100"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes {len(DATA) - 100}-{len(DATA) - 1}/{len(DATA)}"
        assert resp.getheader("Accept-Ranges") == "bytes"
        assert resp.getheader("Content-Length") == "100"
        assert resp.read() == DATA[-100:]

        conn.request("GET", "/sub/blob.bin", headers={"Range": "bytes=10000-"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.read() == DATA[10000:]

        conn.request("GET", "/sub/blob.bin", headers={"Range": f"bytes={len(DATA)}-"})
        resp = conn.getresponse()
        assert resp.status == 416
        assert resp.getheader("Content-Range") == f"bytes */{len(DATA)}"
        resp.read()

        conn.request("HEAD", "/sub/blob.bin")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(len(DATA))
        assert resp.read() == b""
    finally:
        conn.close()
    assert range_server.bytes_served["/sub/blob.bin"] == 100 + 100 + len(DATA) - 10000


def test_range_server_404(range_server, http_fs):
    with pytest.raises(FileNotFoundError):
        http_fs.cat_file(range_server.url_for("missing.bin"))
    conn = http.client.HTTPConnection("127.0.0.1", range_server.port, timeout=5)
    try:
        for path in ("/missing.bin", "/sub", "/../../etc/passwd"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 404, path
    finally:
        conn.close()
    assert "/missing.bin" not in range_server.bytes_served


def test_range_server_fail_next_then_retry_succeeds(range_server, http_fs, retrying_get):
    url = range_server.url_for("sub/blob.bin")

    range_server.fail_next(1, status=503)
    with pytest.raises((aiohttp.ClientError, OSError)):  # a non-retrying client sees the injected failure
        http_fs.cat_file(url)

    range_server.fail_next(2, status=500)
    response = retrying_get(url)
    assert response.status_code == 200
    assert response.content == DATA
    gets = [r for r in range_server.requests if r[0] == "GET"]
    assert len(gets) == 4  # 1 failed fsspec GET + 2 failed and 1 successful retried GETs
    assert range_server.bytes_served == {"/sub/blob.bin": len(DATA)}


def test_range_server_drop_next_truncates_body(range_server, http_fs, retrying_get):
    url = range_server.url_for("sub/blob.bin")

    range_server.drop_next(1)  # half the body, then the connection is closed
    with pytest.raises((aiohttp.ClientError, OSError)):
        http_fs.cat_file(url)
    assert range_server.bytes_served["/sub/blob.bin"] == len(DATA) // 2

    range_server.drop_next(2, after_bytes=0)  # headers only
    response = retrying_get(url)
    assert response.content == DATA
    assert range_server.bytes_served["/sub/blob.bin"] == len(DATA) // 2 + len(DATA)
    assert len([r for r in range_server.requests if r[0] == "GET"]) == 4


@pytest.mark.parametrize("server", ["plain", "ranges=False"])
def test_servers_without_range_support_send_the_whole_file(tmp_path, server):
    """Python's own server, and the Range server told to act like it: a Range header is ignored (200, the whole
    file), no Accept-Ranges is sent, and the log holds what the client asked for and what it was sent."""
    (tmp_path / "blob.bin").write_bytes(DATA)
    with (PlainHTTPServer(tmp_path) if server == "plain" else RangeHTTPServer(tmp_path, ranges=False)) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        try:
            conn.request("HEAD", "/blob.bin")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and resp.getheader("Content-Length") == str(len(DATA))
            assert resp.getheader("Accept-Ranges") is None
            conn.close()
            conn.request("GET", "/blob.bin", headers={"Range": "bytes=100-199"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Range") is None
            assert resp.read() == DATA
        finally:
            conn.close()
        assert [r for r in srv.requests if r[0] == "GET"] == [("GET", "/blob.bin", "bytes=100-199")]
        assert srv.bytes_served == {"/blob.bin": len(DATA)}


# --------------------------------------------------------------------------------------
# HubServer with the real huggingface_hub client
# --------------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path):
    with HubServer(tokens={TOKEN: USER}) as server, use_hub(server, token=TOKEN, home=tmp_path / "hf_home"):
        yield server


@pytest.fixture
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(token=TOKEN)


@pytest.fixture
def folder(tmp_path):
    """A dataset folder: a small parquet file (LFS) and a README with YAML (regular)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "folder"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.table({"x": list(range(50)), "y": [str(i) for i in range(50)]}), root / "data" / "train.parquet")
    (root / "README.md").write_text("---\nlicense: mit\npretty_name: Demo\n---\n# Demo dataset\n")
    return root


def _puts(hub: HubServer) -> list:
    return [r for r in hub.requests if r.method == "PUT"]


def test_use_hub_patches_and_restores_endpoint(tmp_path):
    import huggingface_hub.constants as c

    before = (c.ENDPOINT, c.HF_HUB_CACHE, c.HF_HUB_DISABLE_XET)
    with HubServer() as server, use_hub(server, home=tmp_path / "home"):
        import datasets.config

        assert c.ENDPOINT == server.url
        assert datasets.config.HF_ENDPOINT == server.url
        assert c.HF_HUB_CACHE.startswith(str(tmp_path))
        assert c.HF_HUB_DISABLE_XET is True
    assert (c.ENDPOINT, c.HF_HUB_CACHE, c.HF_HUB_DISABLE_XET) == before


def test_whoami_and_create_repo_private(hub, api):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    assert api.whoami()["name"] == USER

    url = api.create_repo("org/private-ds", repo_type="dataset", private=True)
    assert url.repo_id == "org/private-ds" and url.repo_type == "dataset"
    assert api.dataset_info("org/private-ds").private is True
    assert api.repo_exists("org/private-ds", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):  # invisible to anonymous callers
        HfApi(token=False).dataset_info("org/private-ds")

    api.create_repo("org/public-ds", repo_type="dataset")
    assert HfApi(token=False).dataset_info("org/public-ds").private is False

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/private-ds", repo_type="dataset")
    assert err.value.response.status_code == 409
    api.create_repo("org/private-ds", repo_type="dataset", exist_ok=True)


def test_bad_token_is_rejected_with_401(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    bad = HfApi(token="hf_bad")
    with pytest.raises(HfHubHTTPError) as err:
        bad.whoami()
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        bad.create_repo("org/nope", repo_type="dataset")
    assert err.value.response.status_code == 401
    assert not isinstance(err.value, RepositoryNotFoundError)
    assert "Invalid credentials" in str(err.value)


def test_unknown_repo_revision_and_file(hub, api):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "README.md", repo_type="dataset")
    assert not api.repo_exists("org/missing", repo_type="dataset")

    hub.seed("org/present", files={"a.txt": b"hello"})
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("org/present", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/present", "b.txt", repo_type="dataset")
    response = next(r for r in hub.requests if r.path.endswith("/resolve/main/b.txt"))
    assert response.status == 404


def test_upload_folder_lfs_download_and_reupload(hub, api, folder):
    from huggingface_hub import hf_hub_download

    repo = "org/demo"
    api.create_repo(repo, repo_type="dataset")
    first = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset", commit_message="add data")

    parquet = (folder / "data" / "train.parquet").read_bytes()
    files = hub.files(repo)
    assert files["data/train.parquet"] == parquet
    assert files["README.md"] == (folder / "README.md").read_bytes()
    assert hub.refs(repo)["main"] == first.oid

    # the parquet file went through the LFS batch API + a basic-transfer PUT, README inline
    assert hub.lfs_files(repo) == {"data/train.parquet"}
    assert [size for _, _, size in hub.lfs_uploads] == [len(parquet)]
    assert any(r.path.endswith("/org/demo.git/info/lfs/objects/batch") for r in hub.requests)
    assert len(_puts(hub)) == 1

    assert sorted(api.list_repo_files(repo, repo_type="dataset")) == [".gitattributes", "README.md", "data/train.parquet"]
    tree = {f.path: f for f in api.list_repo_tree(repo, repo_type="dataset", recursive=True)}
    assert tree["data/train.parquet"].lfs.sha256 == first_sha256(parquet)
    assert tree["README.md"].lfs is None
    info = api.dataset_info(repo)
    assert info.sha == first.oid and info.card_data["pretty_name"] == "Demo"
    assert {p.path for p in api.get_paths_info(repo, ["README.md", "data", "nope"], repo_type="dataset")} == {
        "README.md",
        "data",
    }

    local = hf_hub_download(repo, "data/train.parquet", repo_type="dataset")
    assert Path(local).read_bytes() == parquet
    assert first.oid in local  # cached under snapshots/<commit sha>/ (X-Repo-Commit header)
    readme = hf_hub_download(repo, "README.md", repo_type="dataset", revision=first.oid)
    assert Path(readme).read_bytes() == (folder / "README.md").read_bytes()

    # Same folder again: the LFS batch API reports the object as present, nothing is PUT,
    # and the client skips the now-empty commit.
    lfs_bytes = hub.lfs_bytes_uploaded
    second = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset")
    assert second.oid == first.oid
    assert hub.lfs_bytes_uploaded == lfs_bytes
    assert len(_puts(hub)) == 1

    # Same content at a new path: committed as an LFS pointer, still no bytes uploaded.
    third = api.upload_file(
        path_or_fileobj=folder / "data" / "train.parquet",
        path_in_repo="copy/train.parquet",
        repo_id=repo,
        repo_type="dataset",
    )
    assert third.oid != first.oid
    assert hub.files(repo)["copy/train.parquet"] == parquet
    assert hub.lfs_bytes_uploaded == lfs_bytes


def first_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_hf_file_system_listing_and_range_read(hub, tmp_path):
    from huggingface_hub import HfFileSystem

    blob = bytes(range(256)) * 64  # 16 KiB binary file -> LFS
    hub.seed("org/fs", files={"blobs/blob.bin": blob, "notes.txt": b"hello\n"})
    fs = HfFileSystem(token=TOKEN, skip_instance_cache=True)

    assert sorted(fs.ls("datasets/org/fs", detail=False)) == [
        "datasets/org/fs/.gitattributes",
        "datasets/org/fs/blobs",
        "datasets/org/fs/notes.txt",
    ]
    assert fs.info("hf://datasets/org/fs/blobs/blob.bin")["size"] == len(blob)
    assert fs.isdir("datasets/org/fs/blobs")
    assert fs.glob("hf://datasets/org/fs/**/*.bin") == ["datasets/org/fs/blobs/blob.bin"]
    assert fs.find("datasets/org/fs/blobs") == ["datasets/org/fs/blobs/blob.bin"]
    assert fs.cat_file("hf://datasets/org/fs/notes.txt") == b"hello\n"

    sent_before = sum(r.bytes for r in hub.requests if "/resolve/" in r.path)
    with fs.open("hf://datasets/org/fs/blobs/blob.bin", "rb", block_size=1024) as f:
        f.seek(5000)
        assert f.read(100) == blob[5000:5100]
    range_reads = [r for r in hub.requests if r.path.endswith("/resolve/main/blobs/blob.bin")]
    assert range_reads and all(r.status == 206 for r in range_reads)
    sent = sum(r.bytes for r in hub.requests if "/resolve/" in r.path) - sent_before
    assert 100 <= sent <= 2 * 1024 + 100  # a block or two, not the 16 KiB file

    # streaming reads (block_size=0) and files of another revision
    with fs.open("hf://datasets/org/fs/blobs/blob.bin", "rb", block_size=0) as f:
        assert f.read() == blob
    sha = hub.refs("org/fs")["main"]
    assert fs.cat_file(f"hf://datasets/org/fs@{sha}/notes.txt") == b"hello\n"


def test_create_pr_and_branch_uploads(hub, api, folder):
    from huggingface_hub import hf_hub_download

    repo = "org/prs"
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset")
    main_files = hub.files(repo)

    (folder / "extra.txt").write_text("proposed change\n")
    pr = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert hub.refs(repo)["refs/pr/1"] == pr.oid
    assert hub.files(repo, "refs/pr/1")["extra.txt"] == b"proposed change\n"
    assert hub.files(repo) == main_files  # main untouched
    assert "extra.txt" in api.list_repo_files(repo, repo_type="dataset", revision="refs/pr/1")
    path = hf_hub_download(repo, "extra.txt", repo_type="dataset", revision="refs/pr/1")
    assert Path(path).read_text() == "proposed change\n"

    api.create_branch(repo, branch="dev", repo_type="dataset")
    api.create_branch(repo, branch="dev", repo_type="dataset", exist_ok=True)
    (folder / "dev.txt").write_text("dev only\n")
    dev = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset", revision="dev")
    assert hub.refs(repo)["dev"] == dev.oid
    assert hub.files(repo, "dev")["dev.txt"] == b"dev only\n"
    assert "dev.txt" not in hub.files(repo)
    refs = api.list_repo_refs(repo, repo_type="dataset", include_pull_requests=True)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1"]


# --------------------------------------------------------------------------------------
# HubServer with datasets.load_dataset
# --------------------------------------------------------------------------------------

ROWS = {"id": [1, 2, 3], "text": ["a", "b", "c"]}


@pytest.fixture
def parquet_folder(tmp_path):
    import datasets

    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(ROWS).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def test_load_dataset_streaming_and_download(hub, parquet_folder, tmp_path):
    import datasets

    hub.seed("org/rows", parquet_folder)

    streamed = datasets.load_dataset("org/rows", streaming=True)
    assert list(streamed) == ["train"]
    assert list(streamed["train"]) == [dict(zip(ROWS, values)) for values in zip(*ROWS.values())]

    loaded = datasets.load_dataset("org/rows", split="train", cache_dir=str(tmp_path / "datasets_cache"))
    assert loaded.to_dict() == ROWS
    assert any((tmp_path / "datasets_cache").iterdir())
    # the parquet file was fetched from this server's /resolve/ endpoint
    assert any(r.path.endswith("/data/train-00000-of-00001.parquet") and r.status in (200, 206) for r in hub.requests)


def test_load_dataset_named_config_from_private_repo(hub, parquet_folder):
    import datasets
    from huggingface_hub import HfApi

    readme = (
        "---\n"
        "configs:\n"
        "- config_name: small\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: data/*.parquet\n"
        "- config_name: other\n"
        "  data_files: other/*.parquet\n"
        "---\n"
    )
    (parquet_folder / "README.md").write_text(readme)
    (parquet_folder / "other").mkdir()
    datasets.Dataset.from_dict({"id": [9]}).to_parquet(str(parquet_folder / "other" / "x.parquet"))
    hub.seed("org/configs", parquet_folder, private=True)

    ds = datasets.load_dataset("org/configs", "small", split="train", streaming=True, token=TOKEN)
    assert [row["id"] for row in ds] == ROWS["id"]
    other = datasets.load_dataset("org/configs", "other", split="train", streaming=True, token=TOKEN)
    assert list(other) == [{"id": 9}]
    assert HfApi(token=TOKEN).dataset_info("org/configs").card_data["configs"][0]["config_name"] == "small"
