"""A push is checked (token present and accepted by the Hub, repository id) before anything is converted,
written or uploaded; a refused push leaves the folder's card as it was."""

from __future__ import annotations

import importlib.util
import shutil
import socket
from pathlib import Path

import pytest
from servers import HubServer, use_hub

from ssl4eos12 import cli
from ssl4eos12.publish.hub import HubPushError, push

TOKEN = "hf_valid_secret_token"
REPO = "org/ssl4eo-s12"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rejected_token_leaves_the_card_and_creates_nothing(converted_dir, tmp_path, capsys):
    folder = Path(shutil.copytree(converted_dir, tmp_path / "parquet"))
    card = (folder / "README.md").read_bytes()
    with HubServer(tokens={TOKEN: "user"}) as hub, use_hub(hub, token="hf_wrong_secret", home=tmp_path / "home"):
        with pytest.raises(HubPushError, match="rejected the token"):
            push(folder, REPO)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["push", str(folder), "--repo-id", REPO])
        assert str(exit_.value).startswith("error: ") and "rejected the token" in str(exit_.value)
        assert [r.path for r in hub.requests] == ["/api/whoami-v2"] * 2, "only the token check"
    assert (folder / "README.md").read_bytes() == card, "the card is rewritten only when the push goes ahead"


@pytest.mark.parametrize("problem", ["rejected token", "no token", "bad repo id", "hub unreachable"])
def test_script_checks_before_converting(problem, data_dir, tmp_path, monkeypatch):
    script = load_script()
    work = tmp_path / "work"
    repo = "org/bad name!" if problem == "bad repo id" else REPO
    token = {"rejected token": "hf_wrong_secret", "no token": None}.get(problem, TOKEN)
    with HubServer(tokens={TOKEN: "user"}) as hub, use_hub(hub, token=token, home=tmp_path / "home"):
        if problem == "hub unreachable":
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
            closed.close()
            import huggingface_hub.constants

            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        with pytest.raises(SystemExit) as exit_:
            script.main([str(data_dir), "--repo-id", repo, "--work-dir", str(work), "--workers", "1"])
    message = str(exit_.value)
    expected = {"rejected token": "rejected the token", "no token": "no Hugging Face token",
                "bad repo id": "invalid repository id", "hub unreachable": "cannot reach the Hugging Face Hub"}
    assert message.startswith("error: ") and expected[problem] in message and "\n" not in message
    assert not work.exists(), "nothing converted before the checks pass"
