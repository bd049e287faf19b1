"""Expected examples, computed with xarray alone, to check the builder and the converted copy against.

Nothing here uses the package's reading code: it is the independent reference that every value the
package delivers is compared with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import assert_identical, open_with_xarray

SPLIT_FOLDERS = {"train": "train", "validation": "val"}


def split_files(data_dir: Path, split: str) -> list[str]:
    folder = SPLIT_FOLDERS[split]
    return (Path(data_dir) / "splits" / f"ssl4eos12_{folder}.txt").read_text().split()


def expected_examples(data_dir: Path, split: str, modalities, single_timestamp: bool = False):
    """One dict per location (or location and timestamp), in file order, as xarray reads the files."""
    folder = SPLIT_FOLDERS[split]
    for name in split_files(data_dir, split):
        files = {m: open_with_xarray(Path(data_dir) / folder / m / name) for m in modalities}
        first = files[modalities[0]]
        for i, sample in enumerate(first["sample"].values):
            base = {
                "sample": str(sample), "file": name,
                "center_lat": first["center_lat"].values[i], "center_lon": first["center_lon"].values[i],
                "crs": first["crs"].values[i],
            }
            times = range(first.sizes["time"]) if single_timestamp else [slice(None)]
            for t in times:
                example = dict(base)
                if single_timestamp:
                    example["time_index"] = np.int64(t)
                for m, ds in files.items():
                    row = ds.sel(sample=sample)
                    example[m] = row["bands"].values[t]
                    if "cloud_mask" in ds:
                        example[f"{m}_cloud_mask"] = row["cloud_mask"].values[t]
                    example[f"{m}_time"] = row["time_"].values[t]
                    file_id = row["file_id"].values[t]
                    example[f"{m}_file_id"] = file_id.tolist() if file_id.ndim else str(file_id)
                    example[f"{m}_x"] = row["x_"].values
                    example[f"{m}_y"] = row["y_"].values
                yield example


def assert_example_equal(actual: dict, expected: dict, where: str) -> None:
    """Every field present, equal in value and dtype (strings compared as strings)."""
    assert set(actual) == set(expected), f"{where}: fields {sorted(set(actual) ^ set(expected))} differ"
    for name, value in expected.items():
        if isinstance(value, (str, list)):
            assert actual[name] == value, f"{where}.{name}: {actual[name]!r} != {value!r}"
        else:
            assert_identical(actual[name], value, f"{where}.{name}")
