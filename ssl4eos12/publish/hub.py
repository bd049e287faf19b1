"""Publish a converted folder (see :mod:`.shards`) to the Hugging Face Hub with ``huggingface_hub``.

``push`` creates the dataset repository if needed, renders the card for it (so its examples name the
repository) and uploads ``README.md``, the Arrow shards and the manifest with ``HfApi.upload_folder`` in
one call. Why ``upload_folder``: it supports ``revision`` and ``create_pr``, and it resumes. With ``hf_xet``
installed it uploads through Xet, in several commits for large folders, and a rerun skips committed files and
deduplicates uploaded data; without Xet it makes a single commit whose LFS objects the Hub's batch API
skips when they were already uploaded by an interrupted run. Either way, rerunning the same push after an
interruption uploads only what is missing. Shards on the Hub that the folder no longer has (an older shard
plan) are deleted in the same commit, so the ``data_files`` patterns never mix two conversions.

The token comes from ``HF_TOKEN`` or the ``hf auth login`` cache (``huggingface_hub.get_token``). It is never
printed or logged: errors are re-raised as :class:`HubPushError` with a message of their own, without the
original exception (whose request carries the ``Authorization`` header) attached.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id

from .formats import EXTENSION, OLD_EXTENSIONS
from .manifest import MANIFEST_FILE

logger = logging.getLogger(__name__)

#: What a converted folder publishes: the card, the shards and the manifest (not the per-shard records).
UPLOAD_PATTERNS = ["README.md", f"*{EXTENSION}", MANIFEST_FILE]
#: Shards on the Hub that the folder does not have are deleted: those of an older shard plan, and the Parquet
#: shards of older versions of this package (``datasets`` loads one format per repository).
SHARD_PATTERNS = [f"*{ext}" for ext in (EXTENSION, *OLD_EXTENSIONS)]


class HubPushError(RuntimeError):
    """A push that cannot go ahead: no token, a rejected token, a bad repository id or revision, ..."""


def push(out_dir, repo_id: str, private: bool = False, revision: str | None = None, create_pr: bool = False,
         token: str | None = None) -> CommitInfo:
    """Upload the converted folder ``out_dir`` to the dataset repository ``repo_id``.

    Args:
        out_dir: a folder written by ``ssl4eos12 convert``.
        repo_id: ``ORG/NAME`` (or ``NAME`` for the token's own namespace); created if missing.
        private: create the repository private (an existing repository keeps its visibility).
        revision: branch to commit to (created from ``main`` if missing), or ``refs/pr/N`` to add to an
            open pull request, e.g. to resume an interrupted ``create_pr`` push.
        create_pr: open a pull request against ``main`` instead of committing to it.
        token: defaults to ``HF_TOKEN`` or the login cache.

    Returns:
        The ``CommitInfo`` of the (last) commit; ``pr_url`` is set with ``create_pr``.
    """
    from .card import write_card

    out = Path(out_dir)
    if not (out / MANIFEST_FILE).is_file():
        raise HubPushError(f"{out}: not a converted folder (no {MANIFEST_FILE}); run `ssl4eos12 convert` first")
    token = check_push(repo_id, token, revision, create_pr)
    api = HfApi(token=token)
    with _clear_errors(repo_id, revision, token):
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision and revision != "main" and not revision.startswith("refs/"):
            api.create_branch(url.repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        write_card(out, repo_id=repo_id)  # only now: a push refused above leaves the folder as it was
        commit = api.upload_folder(
            repo_id=url.repo_id, repo_type="dataset", folder_path=out, allow_patterns=UPLOAD_PATTERNS,
            delete_patterns=SHARD_PATTERNS, revision=revision, create_pr=create_pr,
            commit_message="Upload SSL4EO-S12 v1.1 shards and dataset card",
        )
    logger.info(f"pushed {out} to {commit.pr_url or commit.commit_url}")
    return commit


def check_push(repo_id: str, token: str | None = None, revision: str | None = None,
               create_pr: bool = False) -> str:
    """Check everything a push needs before anything is converted, written or uploaded; return the token.

    The repository id must be valid, ``revision`` and ``create_pr`` compatible, and the token present and
    accepted by the Hub (``whoami`` against ``HF_ENDPOINT``). Raises :class:`HubPushError` saying what to do.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubPushError(f"invalid repository id {repo_id!r}: {err}") from None
    if create_pr and revision not in (None, "main"):
        raise HubPushError("--create-pr opens a pull request against main and cannot be combined with --revision; "
                           "to add to an open pull request, pass --revision refs/pr/N without --create-pr")
    token = token or get_token()
    if not token:
        raise HubPushError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    with _clear_errors(repo_id, revision, token):
        try:
            HfApi(token=token).whoami()
        except HfHubHTTPError:
            raise  # the Hub answered: a rejected token, explained by _clear_errors
        except Exception as err:  # noqa: BLE001 - no answer: httpx's connection errors, DNS
            raise HubPushError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to check the token "
                               f"({type(err).__name__}); check the network connection and retry") from None
    return token


@contextlib.contextmanager
def _clear_errors(repo_id: str, revision: str | None, token: str):
    """Turn Hub errors into :class:`HubPushError` messages that say what to do and never hold the token."""
    try:
        yield
    except HFValidationError as err:
        raise HubPushError(_scrub(f"invalid repository id or revision for {repo_id!r}: {err}", token)) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        detail = _scrub(err.server_message or "", token)
        if isinstance(err, RevisionNotFoundError):
            message = f"revision {revision!r} of {repo_id} not found"
        elif status == 401 and not isinstance(err, RepositoryNotFoundError):
            message = ("the Hugging Face Hub rejected the token (401 Unauthorized): check HF_TOKEN or log in again "
                       "with `hf auth login`")
        elif status == 403:
            message = f"the token may not write to {repo_id} (403 Forbidden): use a token with write access to it"
        elif isinstance(err, RepositoryNotFoundError):
            message = f"repository {repo_id} not found, or the token may not see it"
        else:
            message = f"pushing to {repo_id} failed (HTTP {status})"
        if detail:
            message += f"; the Hub says: {detail}"
        raise HubPushError(message) from None


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
