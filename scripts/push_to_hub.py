"""Convert SSL4EO-S12 v1.1 to Parquet, write the dataset card and push it to the Hugging Face Hub, in one go.

    python scripts/push_to_hub.py DATA_DIR --repo-id ORG/NAME                      # convert, card, upload
    python scripts/push_to_hub.py DATA_DIR --repo-id ORG/NAME --local-dir OUT_DIR  # convert and card only

Without ``--local-dir`` the Parquet folder is ``--work-dir`` (default ``./NAME-parquet``), kept after the upload:
rerunning the same command after an interruption resumes the conversion and then the upload. The token comes
from ``HF_TOKEN`` or ``hf auth login``. Same as ``ssl4eos12 convert`` followed by ``ssl4eos12 push``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ssl4eos12.publish.card import write_card
from ssl4eos12.constants import SPLIT_FOLDERS
from ssl4eos12.publish import convert
from ssl4eos12.publish.hub import HubPushError, push
from ssl4eos12.errors import SSL4EOS12DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="root of the SSL4EO-S12 v1.1 Zarr files (local path or URL)")
    parser.add_argument("--repo-id", required=True, help="dataset repository, ORG/NAME")
    parser.add_argument("--local-dir", help="convert into this folder and stop before uploading")
    parser.add_argument("--work-dir", help="folder to convert into before uploading (default: ./NAME-parquet)")
    parser.add_argument("--configs", nargs="+", help="default: every modality config plus the default config")
    parser.add_argument("--splits", nargs="+", choices=list(SPLIT_FOLDERS), help="default: every split present")
    parser.add_argument("--workers", type=int, help="local worker processes (default: CPU count)")
    parser.add_argument("--scheduler", help="address of a Dask distributed scheduler to convert on")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created if needed), or refs/pr/N")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = args.local_dir or args.work_dir or f"{args.repo_id.rsplit('/', 1)[-1]}-parquet"
    try:
        convert(args.data_dir, out_dir, configs=args.configs, splits=args.splits, workers=args.workers,
                scheduler=args.scheduler)
        if args.local_dir:
            write_card(out_dir, repo_id=args.repo_id)
            print(f"converted to {out_dir}; upload it with: ssl4eos12 push {out_dir} --repo-id {args.repo_id}")
            return
        commit = push(out_dir, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr)
    except (HubPushError, SSL4EOS12DataError) as err:
        sys.exit(f"error: {err}")
    print(f"pushed to {commit.pr_url or commit.commit_url}")


if __name__ == "__main__":
    main()
