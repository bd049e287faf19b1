"""Builder keywords checked when the builder is created, and remote failures explained in one line
(URL or repository, likely cause, what to do). Servers are local; causes that need the outside world
(DNS) are checked on the exception chains the client libraries raise."""

from __future__ import annotations

import http.server
import socket
import threading

import datasets
import pytest
from datasets import load_dataset
from servers import HubServer, PlainHTTPServer, use_hub

import ssl4eos12
from ssl4eos12.constants import HOSTED_ROOT
from ssl4eos12.sources.failures import remote_cause, remote_failure_message


def builder(data_dir, config, **kwargs):
    return ssl4eos12.SSL4EOS12(config_name=config, data_dir=str(data_dir), **kwargs)


def test_modalities_string_is_an_error(data_dir):
    with pytest.raises(ValueError, match=r"modalities='S2RGB': a string, not a list.*modalities=\['S2RGB'\]"):
        builder(data_dir, "all", modalities="S2RGB")
    with pytest.raises(ValueError, match="a string, not a list"):
        load_dataset("ssl4eos12", "S2RGB", modalities="S2RGB", data_dir=str(data_dir), split="train", streaming=True)


def test_missing_modality_lists_those_present(data_dir):
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match="no folder NDVI .*present: S1GRD, S2L1C, S2L2A, S2RGB"):
        builder(data_dir, "all", modalities=["NDVI"])


def test_config_name_and_contradicting_modalities(data_dir):
    with pytest.raises(ValueError, match="config 'S2L2A' reads S2L2A, but modalities=\\['S1GRD'\\] leaves it out"):
        builder(data_dir, "S2L2A", modalities=["S1GRD"])
    # what still works: the config's own modality first, or any set with the 'all' config
    assert builder(data_dir, "S2L2A", modalities=["S2L2A", "S1GRD"]).config.modalities == ["S2L2A", "S1GRD"]
    assert builder(data_dir, "all", modalities=["S1GRD"]).config.modalities == ["S1GRD"]


def test_bad_keyword_values(data_dir):
    with pytest.raises(ValueError, match="listed twice"):
        builder(data_dir, "all", modalities=["S1GRD", "S1GRD"])
    with pytest.raises(ValueError, match="on_bad_file='ignore': choose from"):
        builder(data_dir, "all", on_bad_file="ignore")


def stream_error(**kwargs) -> str:
    with pytest.raises(ssl4eos12.SSL4EOS12DataError) as info:
        list(load_dataset("ssl4eos12", "S2L2A", split="train", streaming=True, **kwargs))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_hosted_copy_unreachable_names_it_and_data_dir(monkeypatch):
    """No data_dir and no connection: the hosted repository, the cause and data_dir= in one line."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused, as offline
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{port}")
    message = stream_error()
    assert message.startswith(HOSTED_ROOT) and "cannot connect" in message and "data_dir=" in message


def test_no_such_repository(tmp_path):
    with HubServer(tokens={"hf_token": "user"}) as hub, use_hub(hub, token="hf_token", home=tmp_path / "home"):
        message = stream_error(root="hf://datasets/org/missing")
    assert message.startswith("hf://datasets/org/missing: no such repository") and "data_dir=" in message


@pytest.fixture
def answering(request):
    """A server answering every request with the status in ``request.param``."""
    status = request.param

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_port}/ssl4eo-s12", status
        server.shutdown()


@pytest.mark.parametrize("answering", [401, 403], indirect=True)
def test_unauthorized_and_forbidden(answering):
    url, status = answering
    message = stream_error(root=url)
    assert message.startswith(f"{url}: HTTP {status}") and "token" in message


def test_fsspecs_error_for_a_server_without_range_support_is_recognised(tmp_path):
    """Python's own file server ignores Range. The readers fetch whole files from such a server (test_remote) when
    fsspec raises this error; it is recognised from fsspec's words, and said in one line where it surfaces."""
    from fsspec.implementations.http import HTTPFileSystem

    (tmp_path / "f.bin").write_bytes(bytes(100_000))
    with PlainHTTPServer(tmp_path) as srv:
        url = srv.url + "/f.bin"
        with HTTPFileSystem(skip_instance_cache=True).open(url, "rb", cache_type="none") as f:
            f.seek(50_000)
            with pytest.raises(ValueError) as info:
                f.read(10)
    assert remote_cause(info.value)[0] == "no-range"
    message = remote_failure_message(url, info.value)
    assert message.startswith(f"{url}: the server does not support HTTP Range requests") and "data_dir=" in message


def test_dns_failure_is_called_offline():
    """What aiohttp and httpx raise when a name does not resolve, classified without asking a DNS server."""
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as cause:
            raise OSError("Cannot connect to host example.org:443") from cause
    except OSError as err:
        assert remote_cause(err)[0] == "offline"
        message = remote_failure_message(f"{HOSTED_ROOT}/train", err)
    assert "hosted copy" in message and "offline or DNS" in message and "data_dir=" in message
    assert remote_cause(ValueError("not a remote problem")) is None
