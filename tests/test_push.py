"""Publishing to a local server that speaks the Hub's HTTP API, with the real huggingface_hub client: every file
lands, ``load_dataset("org/name", ...)`` streams the builder's examples back, errors are clear and never hold
the token, branches and pull requests work, and an interrupted push resumes with only the missing uploads."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from conftest import arrow_rows, builder_rows
from datasets import load_dataset
from huggingface_hub import DatasetCard, HfApi
from reference import assert_example_equal
from servers import HubServer, use_hub

from ssl4eos12 import cli
from ssl4eos12.publish.hub import HubPushError, push

TOKEN = "hf_valid_secret_token"
REPO = "org/ssl4eo-s12"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"


@pytest.fixture
def hub(tmp_path):
    with HubServer(tokens={TOKEN: "user"}) as server, use_hub(server, token=TOKEN, home=tmp_path / "hf_home"):
        yield server


@pytest.fixture
def folder(converted_dir, tmp_path):
    """A copy of the converted folder (push renders the card for the repository into it)."""
    out = tmp_path / "published"
    shutil.copytree(converted_dir, out)
    return out


def published(folder: Path) -> dict[str, bytes]:
    shards = [p.relative_to(folder).as_posix() for p in folder.glob("*/*.arrow")]
    paths = ["README.md", ".ssl4eos12/manifest.json", *shards]
    return {path: (folder / path).read_bytes() for path in paths}


def lfs_puts(hub: HubServer) -> list[str]:
    return [r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "PUT" and r.path.startswith("/__lfs__/")]


def test_push_lands_every_file_and_streams_back(hub, folder, data_dir):
    commit = push(folder, REPO)
    assert commit.commit_url.startswith(hub.url)
    files = hub.files(REPO)
    expected = published(folder)
    assert {path: files[path] for path in expected} == expected
    assert set(files) == set(expected) | {".gitattributes"}  # not the local per-shard records
    assert hub.lfs_files(REPO) == {p for p in expected if p.endswith(".arrow")}
    assert f'load_dataset("{REPO}", "S2L2A"' in files["README.md"].decode()
    DatasetCard(files["README.md"].decode()).validate(repo_type="dataset")

    for config, split in itertools.product(("S1GRD", "S2L1C", "S2L2A", "S2RGB"), ("train", "validation")):
        streamed = load_dataset(REPO, config, split=split, streaming=True)  # plain datasets: its "arrow" module
        assert streamed.features == load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split,
                                                 streaming=True).features  # ArrayXD types and dtypes
        expected_rows = builder_rows(data_dir, config, split)
        rows = arrow_rows(streamed)
        assert len(rows) == len(expected_rows) == 6
        for i, (actual, example) in enumerate(zip(rows, expected_rows)):
            assert_example_equal(actual, example, f"hub {config}/{split}[{i}]")
    for split in ("train", "validation"):  # the index config, as pushed, equals the local shards
        local = load_dataset(str(folder), "index", split=split)
        pushed = load_dataset(REPO, "index", split=split, streaming=True)
        assert pushed.features == local.features
        assert list(pushed) == list(local) and len(local) == 6 * 4
    first = next(iter(load_dataset(REPO, split="validation", streaming=True)))  # the default config
    assert first["thumbnail"].size == (8, 8) and first["sample"] == expected_rows[0]["sample"]


def test_bad_token_missing_token_and_bad_repo_id(folder, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with HubServer(tokens={TOKEN: "user"}) as server:
        with use_hub(server, token="hf_wrong_secret", home=tmp_path / "bad"):
            with pytest.raises(HubPushError, match="rejected the token") as err:
                push(folder, REPO)
            assert "hf_wrong_secret" not in str(err.value) and err.value.__cause__ is None
            with pytest.raises(SystemExit) as exit_:
                cli.main(["push", str(folder), "--repo-id", REPO])
            assert "401" in str(exit_.value) and "hf_wrong_secret" not in str(exit_.value)
        with use_hub(server, token=None, home=tmp_path / "none"), \
                pytest.raises(HubPushError, match="no Hugging Face token: set HF_TOKEN"):
            push(folder, REPO)
        requests = len(server.requests)
        with use_hub(server, token=TOKEN, home=tmp_path / "good"):
            for bad in ("org/bad name!", "a/b/c", "org/" + "x" * 100):
                with pytest.raises(HubPushError, match="invalid repository id"):
                    push(folder, bad)
        assert len(server.requests) == requests, "an invalid id is refused before any request"
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err):
        assert "hf_wrong_secret" not in text and TOKEN not in text


def test_not_a_converted_folder(hub, tmp_path):
    with pytest.raises(HubPushError, match="ssl4eos12 convert"):
        push(tmp_path, REPO)


def test_private_repo(hub, folder):
    push(folder, "org/private", private=True)
    assert HfApi().repo_info("org/private", repo_type="dataset").private is True
    assert "S2L2A/train-00000-of-00002.arrow" in hub.files("org/private")


def test_revision_creates_a_branch(hub, folder):
    push(folder, REPO, revision="arrow-v2")
    assert set(hub.refs(REPO)) == {"main", "arrow-v2"}
    assert "S2L2A/train-00000-of-00002.arrow" in hub.files(REPO, revision="arrow-v2")
    assert set(hub.files(REPO)) == {".gitattributes"}
    push(folder, REPO, revision="arrow-v2")  # the branch exists now: pushed to again
    rows = load_dataset(REPO, "S2RGB", split="train", streaming=True, revision="arrow-v2")
    assert len(list(rows)) == 6


def test_create_pr(hub, folder):
    commit = push(folder, REPO, create_pr=True)
    assert commit.pr_url and "refs/pr/1" in hub.refs(REPO)
    assert "README.md" in hub.files(REPO, revision="refs/pr/1")
    assert set(hub.files(REPO)) == {".gitattributes"}
    with pytest.raises(HubPushError, match="cannot be combined with --revision"):
        push(folder, REPO, create_pr=True, revision="dev")
    push(folder, REPO, revision="refs/pr/1")  # continuing the pull request


class Interrupted(Exception):
    pass


def test_interrupted_push_uploads_only_what_is_missing(hub, folder, monkeypatch):
    upload = huggingface_hub._commit_api.lfs_upload
    done = []

    def upload_one_then_fail(*args, **kwargs):
        if done:
            raise Interrupted("connection lost")
        upload(*args, **kwargs)
        done.append(kwargs["operation"].path_in_repo)

    monkeypatch.setattr(huggingface_hub._commit_api, "lfs_upload", upload_one_then_fail)
    with pytest.raises(RuntimeError, match="Error while uploading") as err:
        push(folder, REPO)
    assert isinstance(err.value.__cause__, Interrupted)
    assert set(hub.files(REPO)) == {".gitattributes"}  # nothing committed
    first_run = lfs_puts(hub)
    assert 1 <= len(first_run) < len(list(folder.glob("*/*.arrow")))

    monkeypatch.setattr(huggingface_hub._commit_api, "lfs_upload", upload)
    push(folder, REPO)
    second_run = lfs_puts(hub)[len(first_run):]
    assert not set(first_run) & set(second_run), "objects uploaded before the interruption were uploaded again"
    assert sorted(first_run + second_run) == sorted(set(first_run + second_run))
    assert len(first_run + second_run) == len(list(folder.glob("*/*.arrow")))
    expected = published(folder)
    assert {path: hub.files(REPO)[path] for path in expected} == expected


def test_push_removes_shards_of_an_older_plan(hub, folder, data_dir):
    stale = {"S2L2A/train-00000-of-00009.arrow": b"stale", "S2L2A/train-00000-of-00002.parquet": b"PAR1 old format"}
    hub.seed(REPO, files={**stale, "notes.txt": b"keep me"})
    push(folder, REPO)
    files = hub.files(REPO)
    assert not set(stale) & set(files) and files["notes.txt"] == b"keep me"


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_local_dir_then_push(hub, data_dir, tmp_path, capsys):
    script = load_script()
    local = tmp_path / "local"
    script.main([str(data_dir), "--repo-id", REPO, "--local-dir", str(local), "--workers", "1",
                 "--configs", "S2RGB", "default"])
    assert (local / "S2RGB" / "train-00000-of-00001.arrow").is_file()
    assert f'load_dataset("{REPO}"' in (local / "README.md").read_text()
    assert not [r for r in hub.requests if r.path.startswith("/api/")], "--local-dir must not upload"
    assert "ssl4eos12 push" in capsys.readouterr().out

    script.main([str(data_dir), "--repo-id", REPO, "--work-dir", str(tmp_path / "work"), "--workers", "1",
                 "--configs", "S2RGB", "default"])
    files = hub.files(REPO)
    assert {"README.md", "S2RGB/validation-00000-of-00001.arrow", "default/train-00000-of-00001.arrow"} <= set(
        files)
    assert "pushed to" in capsys.readouterr().out
