"""Verify a converted folder: every shard against the manifest, and every value against its source files."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np

from ..torch import arrow_to_numpy
from .formats import EXTENSION, FORMAT, OLD_EXTENSIONS, iter_tables, read_schema
from .manifest import (
    CHECKSUM,
    MANIFEST_FILE,
    alignment_problems,
    file_checksum,
    read_manifest,
    samples_digest,
    skipped_files,
)
from .plan import ShardTask, plan, run_tasks
from .shards import task_examples

_MAX_VALUE_PROBLEMS = 5


def verify(out_dir, data_dir, workers=None, scheduler=None) -> list[str]:
    """Check every shard against the manifest (checksum, rows, samples) and every value against its source files.

    Returns human-readable problems, each naming the shard (or file) concerned; ``[]`` means all is well.
    """
    out = Path(out_dir).absolute()
    try:
        manifest = read_manifest(out)
    except FileNotFoundError:
        return [f"{out}: no {MANIFEST_FILE}; convert first"]
    records = {record["path"]: record for record in manifest["shards"]}
    shards = sorted(p.relative_to(out).as_posix() for ext in (EXTENSION, *OLD_EXTENSIONS) for p in out.glob(f"*/*{ext}"))
    problems = [f"{path}: not in the manifest" for path in shards if path not in records]
    problems += alignment_problems(manifest)
    by_split: dict[tuple[str, str], list[dict]] = {}
    for record in records.values():
        by_split.setdefault((record["config"], record["split"]), []).append(record)
    # the plan gives what the source files say about each config; the shard boundaries are the records'
    tasks = plan(data_dir, list(manifest["configs"]), list(dict.fromkeys(split for _, split in by_split)),
                 on_bad_file="skip" if skipped_files(manifest) else "error")
    templates, planned_files = {}, {}
    for task in tasks:
        templates.setdefault((task.config, task.split), task)
        planned_files.setdefault((task.config, task.split), []).extend(task.files)
    checks = []
    for key, split_records in by_split.items():
        split_records.sort(key=lambda r: r["index"])
        # files left out at conversion (on_bad_file="skip") count as planned: the manifest lists them
        shard_files = [name for record in split_records for name in _planned_names(record)]
        if shard_files != planned_files.get(key, []):
            problems.append(f"{key[0]}/{key[1]}: the shards hold {len(shard_files)} source file(s), {data_dir} lists "
                            f"{len(planned_files.get(key, []))} (or in another order)")
        if key not in templates:
            continue
        for record in split_records:
            task = dataclasses.replace(templates[key], index=record["index"], num_shards=record["num_shards"],
                                       files=_planned_names(record))
            if record["fingerprint"] != task.fingerprint:
                problems.append(f"{task.path}: converted with other features or settings than {data_dir} gives")
            # the values are compared for the files written
            task = dataclasses.replace(task, files=tuple(source["name"] for source in record["files"]))
            checks.append((task, record))
    check = functools.partial(verify_shard, out_dir=str(out))
    for shard_problems in run_tasks(check, checks, workers, scheduler, desc="Verifying"):
        problems.extend(shard_problems)
    return sorted(problems)


def _planned_names(record: dict) -> tuple[str, ...]:
    """The source files a shard was planned with: those written and those left out, in plan order."""
    written = [source["name"] for source in record["files"]]
    left_out = [entry["name"] for entry in record.get("skipped", ())]
    order = record.get("planned")
    return tuple(order) if order else tuple(written + left_out)


def verify_shard(check: tuple[ShardTask, dict], out_dir: str) -> list[str]:
    """Problems of one shard: checksum, size, schema, rows, samples and every value against the source."""
    task, record = check
    path = Path(out_dir) / task.path
    if not path.is_file():
        return [f"{task.path}: missing"]
    problems = []
    if path.stat().st_size != record["size"] or file_checksum(path) != record.get(CHECKSUM):
        problems.append(f"{task.path}: checksum ({CHECKSUM}) differs from the manifest (modified or corrupt)")
    try:
        features = datasets.Features.from_arrow_schema(read_schema(path))
    except Exception as err:  # noqa: BLE001 - whatever makes the schema unreadable is the problem reported
        return problems + [f"{task.path}: not a readable {FORMAT} file ({type(err).__name__}: {err})"]
    if features != task.features:
        return problems + [f"{task.path}: features differ from those of the source files"]
    expected = _expected_rows(task, record, problems)
    mismatches, rows = 0, 0
    try:
        for table in iter_tables(path):
            rows += table.num_rows
            columns = arrow_to_numpy(table)
            for i in range(table.num_rows):
                row_index, example = next(expected, (None, None))
                if example is None:
                    problems.append(f"{task.path}: more rows than its source files have")
                    return problems
                for name, value in example.items():
                    if not same_value(columns[name][i], value):
                        mismatches += 1
                        problems.append(f"{task.path}: row {row_index} ({example.get('sample')}), "
                                        f"{name} differs from the source")
                        if mismatches >= _MAX_VALUE_PROBLEMS:
                            return problems
    except Exception as err:  # noqa: BLE001 - a corrupt page or batch, a source file that cannot be read
        return problems + [f"{task.path}: cannot compare with the source ({type(err).__name__}: {err})"]
    if next(expected, None) is not None:
        problems.append(f"{task.path}: fewer rows than its source files have")
    if rows != record["rows"]:
        problems.append(f"{task.path}: {rows} rows, the manifest says {record['rows']}")
    return problems


def _expected_rows(task: ShardTask, record: dict, problems: list[str]) -> Iterator[tuple[int, dict]]:
    """The source's examples of a shard, in order; notes files whose samples differ from the record's."""
    recorded = {source["name"]: source["samples_sha256"] for source in record["files"]}
    index = 0
    for name in task.files:
        samples, examples = task_examples(task, name)
        if recorded.get(name) != samples_digest(samples):
            problems.append(f"{task.path}: samples of {name} differ from the manifest")
        for example in examples:
            yield index, example
            index += 1


def same_value(actual, expected) -> bool:
    """Equal in value and dtype; NaN equals NaN; strings, lists of strings and images compared as such."""
    if isinstance(expected, (str, bytes, list, dict)):
        return actual == expected
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    return bool(np.array_equal(actual, expected, equal_nan=actual.dtype.kind in "fc"))
