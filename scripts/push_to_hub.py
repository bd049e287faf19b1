"""Convert SSL4EO-S12 v1.1 to Arrow shards, write the dataset card and push it to the Hugging Face Hub, in one go.

    python scripts/push_to_hub.py DATA_DIR --repo-id ORG/NAME                      # convert, card, upload
    python scripts/push_to_hub.py DATA_DIR --repo-id ORG/NAME --local-dir OUT_DIR  # convert and card only

Without ``--local-dir`` the converted folder is ``--work-dir`` (default ``./NAME-arrow``), kept after the upload:
rerunning the same command after an interruption resumes the conversion and then the upload. The token comes
from ``HF_TOKEN`` or ``hf auth login``; it and the repository id are checked with the Hub before anything is
converted. Same as ``ssl4eos12 convert`` followed by ``ssl4eos12 push``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ssl4eos12.cli import error_line
from ssl4eos12.constants import SPLIT_FOLDERS
from ssl4eos12.publish import convert
from ssl4eos12.publish.card import write_card
from ssl4eos12.publish.hub import HubPushError, check_push, push


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="root of the SSL4EO-S12 v1.1 Zarr files (local path or URL)")
    parser.add_argument("--repo-id", required=True, help="dataset repository, ORG/NAME")
    parser.add_argument("--local-dir", help="convert into this folder and stop before uploading")
    parser.add_argument("--work-dir", help="folder to convert into before uploading (default: ./NAME-arrow)")
    parser.add_argument("--configs", nargs="+", help="default: every modality config plus the default config")
    parser.add_argument("--splits", nargs="+", choices=list(SPLIT_FOLDERS), help="default: every split present")
    parser.add_argument("--workers", type=int, help="local worker processes (default: CPU count)")
    parser.add_argument("--scheduler", help="address of a Dask distributed scheduler to convert on")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created if needed), or refs/pr/N")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--on-bad-file", choices=["error", "skip"], default="error",
                        help="'skip' leaves unreadable source files out (listed in the manifest and the card)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = args.local_dir or args.work_dir or f"{args.repo_id.rsplit('/', 1)[-1]}-arrow"
    try:
        if args.local_dir:
            check_repo_id(args.repo_id)
        else:  # token, repository id and options, before hours of conversion
            token = check_push(args.repo_id, revision=args.revision, create_pr=args.create_pr)
        convert(args.data_dir, out_dir, configs=args.configs, splits=args.splits, workers=args.workers,
                scheduler=args.scheduler, on_bad_file=args.on_bad_file)
        if args.local_dir:
            write_card(out_dir, repo_id=args.repo_id)
            print(f"converted to {out_dir}; upload it with: ssl4eos12 push {out_dir} --repo-id {args.repo_id}")
            return
        commit = push(out_dir, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
                      token=token)
    except Exception as err:
        if args.debug:
            raise
        sys.exit(f"error: {error_line(err, 'convert')}")
    print(f"pushed to {commit.pr_url or commit.commit_url}")


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubPushError(f"--repo-id: invalid repository id {repo_id!r}: {err}") from None


if __name__ == "__main__":
    main()
