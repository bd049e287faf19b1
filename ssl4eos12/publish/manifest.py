"""The manifest of a converted folder: what every shard holds, written atomically, with statistics.

    OUT_DIR/.ssl4eos12/manifest.json                    rows, samples, checksum and statistics of every shard
    OUT_DIR/.ssl4eos12/shards/{config}/{split}-NNNNN-of-MMMMM.json   one record per finished shard (local only)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path

import xxhash

from ..constants import SPLIT_FOLDERS

MANIFEST_DIR = ".ssl4eos12"
MANIFEST_FILE = f"{MANIFEST_DIR}/manifest.json"
RECORDS_DIR = f"{MANIFEST_DIR}/shards"
#: Bumped whenever the bytes written for the same input change: finished shards of older versions are redone.
FORMAT_VERSION = 3
#: The shards' checksum in the manifest (``CHECKSUM`` of every record): XXH3, 128 bits, ~7 GB/s on one core against
#: SHA-256's ~1.1 GB/s, which took a quarter of the conversion's time. It is there to find a modified or corrupt
#: shard (``ssl4eos12 verify``), not to authenticate one: the Hub keeps each file's SHA-256 (its LFS object id).
CHECKSUM = "xxh3_128"


def samples_digest(samples: list[str]) -> str:
    return hashlib.sha256("\n".join(samples).encode()).hexdigest()


def new_checksum():
    """A running :data:`CHECKSUM` (``update(bytes)``, ``hexdigest()``)."""
    return xxhash.xxh3_128()


def file_checksum(path) -> str:
    """:data:`CHECKSUM` of a file's bytes (hex)."""
    digest = new_checksum()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def write_manifest(out_dir) -> dict:
    """Gather the records of every shard present into ``.ssl4eos12/manifest.json``, with per-config totals."""
    out = Path(out_dir)
    split_order = {split: i for i, split in enumerate(SPLIT_FOLDERS)}
    records = []
    for path in (out / RECORDS_DIR).glob("*/*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        if (out / record["path"]).is_file():
            records.append(record)
    records.sort(key=lambda r: (r["config"], split_order.get(r["split"], len(split_order)), r["split"], r["index"]))
    configs: dict[str, dict] = {}
    shards = []
    for record in records:
        record = dict(record)
        features, statistics = record.pop("features"), record.pop("statistics")
        info = configs.setdefault(record["config"], {
            "features": features, "modalities": record["modalities"], "band_names": record["band_names"],
            "thumbnail": record["thumbnail"], "splits": {}, "statistics": {},
        })
        if info["features"] != features:
            raise ValueError(f"{record['path']}: features differ from the other shards of {record['config']}; "
                             f"convert the config again")
        split = info["splits"].setdefault(record["split"], {"num_shards": 0, "num_rows": 0, "num_bytes": 0, "size": 0})
        split["num_shards"] += 1
        split["num_rows"] += record["rows"]
        split["num_bytes"] += record["num_bytes"]
        split["size"] += record["size"]
        merge_statistics(info["statistics"], statistics)
        for key in ("modalities", "band_names", "thumbnail"):
            del record[key]
        shards.append(record)
    for info in configs.values():
        info["statistics"] = summarize_statistics(info["statistics"], info["band_names"])
    from .. import __version__

    manifest = {"format_version": FORMAT_VERSION, "generator": f"ssl4eos12 {__version__}", "configs": configs,
                "shards": shards}
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest


def merge_statistics(total: dict, stats: dict) -> None:
    """Add the sums and counts of ``stats`` to ``total`` (both as :func:`~.shards.piece_statistics` gives them)."""
    for key, value in stats.items():
        if key == "bands":
            bands = total.setdefault("bands", [{} for _ in value])
            for entry, add in zip(bands, value):
                for name, number in add.items():
                    entry[name] = entry.get(name, 0) + number
        else:
            total[key] = total.get(key, 0) + value


def summarize_statistics(totals: dict, band_names: list[str]) -> dict:
    """Per-band mean and (population) standard deviation, cloud and no-data fractions, from the sums."""
    summary = {}
    if "bands" in totals:
        summary["bands"] = []
        names = band_names or [str(i) for i in range(len(totals["bands"]))]  # a file without band names
        for name, entry in zip(names, totals["bands"]):
            count, total, total_sq = entry["count"], entry["sum"], entry["sum_sq"]
            if not count:  # every value missing
                summary["bands"].append({"band": name, "count": 0, "mean": None, "std": None})
                continue
            # exact until the division for integer bands: Python ints do not overflow
            variance = (count * total_sq - total * total) / (count * count)
            band = {"band": name, "count": count, "mean": total / count, "std": math.sqrt(max(variance, 0.0))}
            if "nan" in entry:
                band["nan_fraction"] = entry["nan"] / (count + entry["nan"])
            summary["bands"].append(band)
    if totals.get("pixels"):
        summary["cloud_fraction"] = totals["cloud_pixels"] / totals["pixels"]
    return summary


def read_manifest(out_dir) -> dict:
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))


def skipped_files(manifest: dict) -> list[tuple[str, str, str]]:
    """``(shard path, source file, problem)`` of every source file left out with ``on_bad_file="skip"``."""
    return [(record["path"], entry["name"], entry["problem"])
            for record in manifest["shards"] for entry in record.get("skipped", ())]


def alignment_problems(manifest: dict) -> list[str]:
    """Source files whose samples come in a different order in different configs (configs not row-aligned)."""
    orders: dict[tuple[str, str], dict[str, str]] = {}
    for record in manifest["shards"]:
        for source in record["files"]:
            orders.setdefault((record["split"], source["name"]), {})[record["config"]] = source["samples_sha256"]
    return [
        f"{split}/{name}: the configs {sorted(digests)} do not list its samples in the same order"
        for (split, name), digests in orders.items() if len(set(digests.values())) > 1
    ]



#: Mismatching values reported per shard before moving on.
