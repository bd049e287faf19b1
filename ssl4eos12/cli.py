"""The ``ssl4eos12`` command: generate sample data, convert to Parquet, verify, push to the Hub."""

from __future__ import annotations

import argparse
import sys

from .constants import MODALITIES, SPLIT_FOLDERS


def _synth(args: argparse.Namespace) -> None:
    from .synth import EXTRA_MODALITIES, synthesize

    modalities = tuple(args.modalities or MODALITIES)
    unknown = [m for m in modalities if m not in MODALITIES and m not in EXTRA_MODALITIES]
    if unknown:
        raise SystemExit(f"unknown modalities {unknown}: choose from {list(MODALITIES) + list(EXTRA_MODALITIES)}")
    out = synthesize(args.out_dir, splits=tuple(args.splits), files=args.files, samples=args.samples,
                     size=args.size, times=args.times, modalities=modalities, seed=args.seed)
    print(f"wrote {args.files} file(s) x {len(modalities)} modalities x {len(args.splits)} split(s) to {out}")


def _convert(args: argparse.Namespace) -> None:
    from .publish import convert

    convert(args.data_dir, args.out_dir, configs=args.configs, splits=args.splits, workers=args.workers,
            scheduler=args.scheduler)


def _verify(args: argparse.Namespace) -> None:
    from .publish import verify

    problems = verify(args.out_dir, args.data_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        raise SystemExit(f"{len(problems)} problem(s) found")
    print("all shards match their sources")


def _push(args: argparse.Namespace) -> None:
    from .publish.hub import HubPushError, push

    try:
        commit = push(args.out_dir, args.repo_id, private=args.private, revision=args.revision,
                      create_pr=args.create_pr)
    except HubPushError as err:  # its message says what to do, and never holds the token
        raise SystemExit(f"error: {err}") from None
    print(f"pushed to {commit.pr_url or commit.commit_url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl4eos12", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write sample data in the real SSL4EO-S12 v1.1 format")
    synth.add_argument("out_dir")
    synth.add_argument("--splits", nargs="+", default=list(SPLIT_FOLDERS), choices=list(SPLIT_FOLDERS))
    synth.add_argument("--files", type=int, default=2, help="files per split (default: 2)")
    synth.add_argument("--samples", type=int, default=8, help="locations per file (real data: 64)")
    synth.add_argument("--size", type=int, default=32, help="pixels per side (real data: 264)")
    synth.add_argument("--times", type=int, default=4, help="timestamps per location (real data: 4)")
    synth.add_argument("--modalities", nargs="+", help=f"default: {' '.join(MODALITIES)}")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    convert = commands.add_parser("convert", help="convert the Zarr zips to Parquet shards and a dataset card")
    convert.add_argument("data_dir")
    convert.add_argument("out_dir")
    convert.add_argument("--configs", nargs="+", help="default: every modality config plus the default config")
    convert.add_argument("--splits", nargs="+", choices=list(SPLIT_FOLDERS), help="default: every split present")
    convert.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    convert.add_argument("--scheduler", help="address of a Dask distributed scheduler to run the tasks on")
    convert.set_defaults(func=_convert)

    verify = commands.add_parser("verify", help="check every Parquet shard against its source files")
    verify.add_argument("out_dir")
    verify.add_argument("data_dir")
    verify.set_defaults(func=_verify)

    push = commands.add_parser("push", help="upload a converted folder to the Hugging Face Hub")
    push.add_argument("out_dir")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to push to (created if needed)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
