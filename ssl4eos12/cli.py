"""The ssl4eos12 command: generate sample data, index it, plot a location, convert to Arrow shards, verify, push.

Every mistake (a missing folder, an unknown name, a bad file, a rejected token) ends with one line,
``error: <file or argument>: <problem>; <what to do>``, and exit status 1 (2 for a malformed command line);
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from .constants import MODALITIES, SPLIT_FOLDERS, WEBDATASET_MODALITIES
from .errors import SSL4EOS12DataError, SSL4EOS12FileError

DESCRIPTION = """\
SSL4EO-S12 v1.1: generate sample data in the real format, convert the Zarr zips to Arrow shards
and a dataset card, verify a converted folder against its sources, and push it to the Hugging Face Hub.

  ssl4eos12 synth DATA_DIR                     sample data (real format, small)
  ssl4eos12 index DATA_DIR                     GeoParquet index: place, time, cloud cover (filters use it);
                                               on the tar release also each member's offset (range reads)
  ssl4eos12 show DATA_DIR --sample ID          plot one location to a PNG
  ssl4eos12 convert DATA_DIR OUT_DIR           Arrow shards + manifest + dataset card in OUT_DIR
  ssl4eos12 verify DATA_DIR OUT_DIR            every shard and value against the source files
  ssl4eos12 push OUT_DIR --repo-id ORG/NAME    upload OUT_DIR to a dataset repository

Run `ssl4eos12 COMMAND --help` for the options of each command; add --debug to any command to see the
full traceback of an error."""


class UsageError(Exception):
    """A mistake in the command line; its message names the argument, the problem and what to do."""


def _check_data_dir(data_dir: str) -> str:
    """DATA_DIR exists (local) and holds split folders; returns it normalised."""
    from .sources import normalize_root
    from .sources.remote import is_remote

    root = normalize_root(data_dir)
    if not is_remote(root):
        if not os.path.isdir(root):
            raise UsageError(f"DATA_DIR {data_dir}: no such folder; pass the folder that holds train/ and val/ "
                             f"(or generate one with `ssl4eos12 synth DATA_DIR`)")
        if not any(os.path.isdir(os.path.join(root, f)) for f in SPLIT_FOLDERS.values()):
            raise UsageError(f"DATA_DIR {data_dir}: no {' or '.join(f + '/' for f in SPLIT_FOLDERS.values())} folder; "
                             f"pass the root of the SSL4EO-S12 v1.1 files")
    return root


def _check_names(root: str, configs: list[str] | None, splits: list[str] | None) -> None:
    """``--configs`` and ``--splits`` against what DATA_DIR holds (a local root), before any file is read."""
    from .checks import present_modalities, present_splits
    from .publish.plan import OVERVIEW_CONFIGS

    modalities = present_modalities(root)
    if configs and modalities is not None:
        valid = [*modalities, *OVERVIEW_CONFIGS]
        unknown = [c for c in configs if c not in valid]
        if unknown:
            raise UsageError(f"--configs: no config {', '.join(unknown)} in {root}; choose from {', '.join(valid)}")
    present = present_splits(root)
    if splits and present is not None:
        missing = [s for s in splits if s not in present]
        if missing:
            raise UsageError(f"--splits: no {', '.join(missing)} split in {root} (no "
                             f"{', '.join(SPLIT_FOLDERS[s] + '/' for s in missing)} folder); choose from "
                             f"{', '.join(present) or 'none: the folder holds no split'}")


def _synth(args: argparse.Namespace) -> None:
    from datasets.utils.tqdm import tqdm

    from .synth import EXTRA_MODALITIES, synthesize

    for name in ("files", "samples", "size", "times"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: must be at least 1, got {getattr(args, name)}; pass a positive number")
    if args.layout == "webdataset":
        return _synth_webdataset(args)
    valid = list(MODALITIES) + list(EXTRA_MODALITIES)
    modalities = tuple(args.modalities or MODALITIES)
    unknown = [m for m in modalities if m not in valid]
    if unknown:
        raise UsageError(f"--modalities: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    total = args.files * len(modalities) * len(args.splits)
    start = time.perf_counter()
    with tqdm(total=total, desc="Writing", unit="file") as progress:
        out = synthesize(args.out_dir, splits=tuple(args.splits), files=args.files, samples=args.samples,
                         size=args.size, times=args.times, modalities=modalities, seed=args.seed,
                         progress=lambda path: progress.update(1))
    print(f"wrote {args.files} file(s) x {len(modalities)} modalities x {len(args.splits)} split(s) "
          f"({total} files, {_size(out)}) to {out} in {time.perf_counter() - start:.1f} s")


def _synth_webdataset(args: argparse.Namespace) -> None:
    from .synth.webdataset import synthesize_webdataset

    modalities = tuple(args.modalities or WEBDATASET_MODALITIES)
    unknown = [m for m in modalities if m not in WEBDATASET_MODALITIES]
    if unknown:
        raise UsageError(f"--modalities: unknown {', '.join(unknown)}; choose from {', '.join(WEBDATASET_MODALITIES)}")
    out = synthesize_webdataset(args.out_dir, splits=tuple(args.splits), files=args.files, samples=args.samples,
                                size=args.size, times=args.times, modalities=modalities, seed=args.seed)
    print(f"wrote {args.files} tar(s) x {len(modalities)} modalities x {len(args.splits)} split(s) to {out}")


def _convert(args: argparse.Namespace) -> None:
    from .publish import convert
    from .publish.card import human_size
    from .publish.manifest import skipped_files

    root = _check_data_dir(args.data_dir)
    _check_names(root, args.configs, args.splits)
    _check_workers(args.workers)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT_DIR {out}: exists and is not a folder; pass a folder to write the shards to")
    start = time.perf_counter()
    stats: dict = {}
    manifest = convert(root, out, configs=args.configs, splits=args.splits, workers=args.workers,
                       scheduler=args.scheduler, on_bad_file=args.on_bad_file, stats=stats)
    shards = manifest["shards"]
    rows = sum(split["num_rows"] for info in manifest["configs"].values() for split in info["splits"].values())
    size = sum(shard["size"] for shard in shards)
    skipped = skipped_files(manifest)
    print(f"converted {root} to {out}: {stats.get('written', 0)} shard(s) written, {stats.get('done', 0)} "
          f"already done; {len(shards)} shard(s), {rows:,} rows, {human_size(size)} in all; "
          f"{time.perf_counter() - start:.1f} s")
    if skipped:
        print(f"left out {len(skipped)} unreadable source file(s) (--on-bad-file skip; listed in the manifest and "
              f"the card): {', '.join(sorted({name for _, name, _ in skipped}))}", file=sys.stderr)


def _verify(args: argparse.Namespace) -> None:
    from .publish import verify
    from .publish.manifest import MANIFEST_FILE, read_manifest, skipped_files

    data_dir, out_dir = args.data_dir, args.out_dir
    if (Path(data_dir) / MANIFEST_FILE).is_file() and not (Path(out_dir) / MANIFEST_FILE).is_file():
        print(f"warning: `ssl4eos12 verify OUT_DIR DATA_DIR` is deprecated; write `ssl4eos12 verify {out_dir} "
              f"{data_dir}` (DATA_DIR first, as for convert)", file=sys.stderr)
        data_dir, out_dir = out_dir, data_dir
    if not (Path(out_dir) / MANIFEST_FILE).is_file():
        raise UsageError(f"OUT_DIR {out_dir}: not a converted folder (no {MANIFEST_FILE}); run "
                         f"`ssl4eos12 convert DATA_DIR OUT_DIR` first")
    root = _check_data_dir(data_dir)
    _check_workers(args.workers)
    start = time.perf_counter()
    problems = verify(out_dir, root, workers=args.workers)
    for problem in problems:
        print(problem, file=sys.stderr)
    manifest = read_manifest(out_dir)
    rows = sum(shard["rows"] for shard in manifest["shards"])
    skipped = skipped_files(manifest)
    left_out = f"; {len(skipped)} source file(s) were left out at conversion (see the manifest)" if skipped else ""
    if problems:
        raise UsageError(f"OUT_DIR {out_dir}: {len(problems)} problem(s) found (listed above){left_out}; "
                         f"convert again to rewrite the shards concerned")
    print(f"verified {len(manifest['shards'])} shard(s), {rows:,} rows of {out_dir} against {root}: all shards "
          f"match their sources{left_out}; {time.perf_counter() - start:.1f} s")


def _push(args: argparse.Namespace) -> None:
    from .publish.hub import push

    commit = push(args.out_dir, args.repo_id, private=args.private, revision=args.revision,
                  create_pr=args.create_pr)
    print(f"pushed to {commit.pr_url or commit.commit_url}")


def _index(args: argparse.Namespace) -> None:
    from .index import build_index
    from .sources.remote import is_remote

    root = args.data_dir if is_remote(args.data_dir) else _check_data_dir(args.data_dir)
    _check_workers(args.workers)
    if args.out is None and is_remote(root):
        raise UsageError(f"DATA_DIR {root}: a remote root cannot be written to; pass --out FILE.parquet (then "
                         f"load with index=FILE.parquet)")
    start = time.perf_counter()
    written = build_index(root, args.out, splits=args.splits, modalities=args.modalities, workers=args.workers,
                          scheduler=args.scheduler, headers_only=args.headers_only)
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"indexed {root} in {time.perf_counter() - start:.1f} s")


def _show(args: argparse.Namespace) -> None:
    from .plot import show

    try:
        out = show(args.data_dir, args.sample, out=args.out, config=args.config, split=args.split,
                   single_timestamp=args.time_index, index=args.index)
    except ImportError as err:  # matplotlib is an optional extra; the message says how to install it
        raise UsageError(str(err)) from None
    print(f"wrote {out}")


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {workers}; leave it out for one per CPU")


def _size(path: Path) -> str:
    from .publish.card import human_size

    return human_size(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="ssl4eos12", description=DESCRIPTION, parents=[debug],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    splits = list(SPLIT_FOLDERS)

    synth = commands.add_parser("synth", parents=[debug], help="write sample data in the real SSL4EO-S12 v1.1 format",
                                description="Write small sample data in the real format (Zarr v2 zips, split lists).")
    synth.add_argument("out_dir", metavar="DATA_DIR", help="folder to write the sample data root to")
    synth.add_argument("--splits", nargs="+", default=splits, choices=splits, help="splits to write (default: all)")
    synth.add_argument("--layout", choices=["zarr", "webdataset"], default="zarr",
                       help="the 64-sample Zarr zips (default) or the webdataset release's tars of all 7 modalities")
    synth.add_argument("--files", type=int, default=2, help="files (or tars) per split (default: 2)")
    synth.add_argument("--samples", type=int, default=8,
                       help="locations per file (default: 8; real data: 64 per zip, 512 per tar)")
    synth.add_argument("--size", type=int, default=32, help="pixels per side (default: 32; real data: 264)")
    synth.add_argument("--times", type=int, default=4, help="timestamps per location (default: 4; real data: 4)")
    synth.add_argument("--modalities", nargs="+", metavar="MODALITY",
                       help=f"modality folders to write (default: {' '.join(MODALITIES)}; NDVI also exists; "
                            f"webdataset: {' '.join(WEBDATASET_MODALITIES)})")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files")
    synth.set_defaults(func=_synth)

    convert = commands.add_parser(
        "convert", parents=[debug], help="convert the Zarr zips to Arrow shards and a dataset card",
        description="Convert to Arrow shards, a manifest and a dataset card; a rerun resumes where it stopped.")
    convert.add_argument("data_dir", metavar="DATA_DIR", help="root of the Zarr files (local folder or URL)")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the shards, manifest and card to")
    convert.add_argument("--configs", nargs="+", metavar="CONFIG",
                         help="configs to convert: modality folders of DATA_DIR, 'default' and 'index' (default: "
                              "those of S1GRD, S2L1C, S2L2A and S2RGB that DATA_DIR has, 'default' and 'index'; "
                              "name other folders, such as the tar release's NDVI, LULC and DEM, to convert them)")
    convert.add_argument("--splits", nargs="+", choices=splits, help="splits to convert (default: every split present)")
    convert.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    convert.add_argument("--scheduler", metavar="ADDRESS",
                         help="address of a Dask distributed scheduler to run the tasks on instead")
    convert.add_argument("--on-bad-file", choices=["error", "skip"], default="error",
                         help="'error' (default) stops at an unreadable source file; 'skip' leaves it out with a "
                              "warning and lists it in the manifest and the card")
    convert.set_defaults(func=_convert)

    verify = commands.add_parser(
        "verify", parents=[debug], help="check every shard against its source files",
        description="Check every shard against the manifest and every value against the source files. "
                    "Arguments in the order of convert; the older order OUT_DIR DATA_DIR still works "
                    "(with a deprecation warning).")
    verify.add_argument("data_dir", metavar="DATA_DIR", help="root of the Zarr files the folder was converted from")
    verify.add_argument("out_dir", metavar="OUT_DIR", help="the converted folder")
    verify.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    verify.set_defaults(func=_verify)

    index = commands.add_parser(
        "index", parents=[debug], help="write the GeoParquet index (location, time, footprint, cloud cover)",
        description="Write one GeoParquet file per split, one row per (location, timestamp), from the small "
                    "variables and the cloud masks only; resumable and parallel like convert. The builder's "
                    "filters (bbox, time_range, max_cloud_fraction, samples) read it.")
    index.add_argument("data_dir", metavar="DATA_DIR", help="root of the Zarr files (local folder or URL)")
    index.add_argument("--out", metavar="PATH", help="a .parquet file (all splits) or a folder (default: "
                                                     "DATA_DIR/splits/, where the builder looks)")
    index.add_argument("--splits", nargs="+", choices=splits, help="splits to index (default: every split present)")
    index.add_argument("--modalities", nargs="+", metavar="MODALITY",
                       help="modalities to index (default: those of the four the root has)")
    index.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    index.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a Dask distributed scheduler to run the tasks on instead")
    index.add_argument("--headers-only", action="store_true",
                       help="tar release: read only the tars' headers (512 bytes per member: a remote root's tars are "
                            "never downloaded) and take locations, centres and cloud cover from the authors' metadata; "
                            "serves samples, bbox, max_cloud_fraction and the range reads, not time_range")
    index.set_defaults(func=_index)

    show = commands.add_parser(
        "show", parents=[debug], help="plot one location to a PNG (needs: pip install 'ssl4eos12[plot]')",
        description="Plot every modality and timestamp of one location: true colour, S1 VV/VH in dB, clouds.")
    show.add_argument("data_dir", metavar="DATA_DIR", help="root of the Zarr files (local folder or URL)")
    show.add_argument("--sample", required=True, metavar="ID", help="location id, e.g. 0000173")
    show.add_argument("--out", metavar="FILE.png", help="PNG to write (default: ID.png)")
    show.add_argument("--config", default="all", help="config to plot (default: all)")
    show.add_argument("--split", choices=splits, help="split the location is in (default: looked up)")
    show.add_argument("--time-index", type=int, default=None, help="plot this timestamp only")
    show.add_argument("--index", metavar="PATH", help="the index, when not in DATA_DIR/splits/ (e.g. a remote root's, "
                                                      "written with `ssl4eos12 index ROOT --out PATH`)")
    show.set_defaults(func=_show)

    push = commands.add_parser("push", parents=[debug], help="upload a converted folder to the Hugging Face Hub",
                               description="Upload a converted folder; the token comes from HF_TOKEN or "
                                           "`hf auth login`, and is checked before anything changes.")
    push.add_argument("out_dir", metavar="OUT_DIR", help="folder written by `ssl4eos12 convert`")
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="dataset repository (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="branch to push to (created if needed), or refs/pr/N")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.set_defaults(func=_push)
    return parser


def error_line(err: BaseException, command: str = "") -> str:
    """One line for an error: ``<file or argument>: <problem>; <what to do>``."""
    from .publish.hub import HubPushError

    if isinstance(err, SSL4EOS12FileError):
        hint = "; replace or remove the file, or rerun with --on-bad-file skip to leave it out" \
            if command == "convert" else "; replace or remove the file"
        message = f"{err}{hint}"
    elif isinstance(err, (SSL4EOS12DataError, UsageError, HubPushError)):
        message = str(err)
    elif isinstance(err, (ValueError, OSError)):
        message = f"{err}; rerun with --debug for the full traceback"
    else:
        message = f"{type(err).__name__}: {err}; rerun with --debug for the full traceback"
    return " ".join(message.split())  # one line


def _show_progress_messages(debug: bool) -> None:
    """This package's log messages as plain lines on stderr."""
    logger = logging.getLogger("ssl4eos12")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    _show_progress_messages(debug)
    original_format = warnings.formatwarning
    if not debug:  # warnings as one plain line each
        warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.exit("error: interrupted; rerun the same command to resume")
    except Exception as err:
        if debug:
            raise
        sys.exit(f"error: {error_line(err, args.command)}")
    finally:
        warnings.formatwarning = original_format


if __name__ == "__main__":
    main()
