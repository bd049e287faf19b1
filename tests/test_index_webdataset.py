"""The index and the filters on the webdataset release (tars), a static modality (DEM) under a time filter, and
filters with ``time_order="season"``: checked against a pandas computation over xarray reads of the tar members.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from reference import assert_example_equal
from test_index import CLOUDY, assert_columns_equal, expected_selection
from test_webdataset import expected_examples, open_member, streamed, tar_members

from ssl4eos12.index import Filters, build_index, select, wkb_ring
from ssl4eos12.synth.webdataset import synthesize_webdataset

FOUR = ["S2L1C", "S2L2A", "S2RGB", "S1GRD"]


@pytest.fixture(scope="module")
def wds_root(tmp_path_factory):
    """One split, 2 tars x 4 locations, S2L2A, S1GRD and DEM; the default index (no DEM) in ``splits/`` and one
    with DEM beside it."""
    root = synthesize_webdataset(tmp_path_factory.mktemp("wds-index"), splits=("train",), files=2, samples=4,
                                 size=16, modalities=("S2L2A", "S1GRD", "DEM"), seed=5)
    # the CLI, as a user runs it (into ROOT/splits/); in a process of its own, its logging set up there
    subprocess.run([sys.executable, "-m", "ssl4eos12.cli", "index", str(root), "--workers", "1"], check=True,
                   capture_output=True)
    build_index(root, Path(root).parent / "with-dem.parquet", modalities=["S2L2A", "S1GRD", "DEM"], workers=1)
    return root


def reference_rows(root: Path, modalities, tmp: Path) -> pd.DataFrame:
    """One row per (location, timestamp) of the train split, from tarfile and xarray alone."""
    rows = []
    folder = Path(root) / "train"
    for tar in sorted(p.name for p in (folder / modalities[0]).glob("*.tar")):
        members = {m: tar_members(folder / m / tar) for m in modalities}
        for i in range(len(members[modalities[0]])):
            files = {m: open_member(members[m][i][1], tmp) for m in modalities}
            first = files[modalities[0]]
            for t in range(first.sizes["time"]):
                row = {"sample": str(first["sample"].values), "file": tar, "split": "train", "time_index": t,
                       "center_lon": first["center_lon"].values, "center_lat": first["center_lat"].values,
                       "crs": first["crs"].values}
                for m, ds in files.items():
                    row[f"{m}_time"] = ds["time"].values[min(t, ds.sizes["time"] - 1)] \
                        if t < ds.sizes["time"] else np.datetime64("NaT", "ns")
                    if "cloud_mask" in ds:
                        mask = ds["cloud_mask"].values[t]
                        row[f"{m}_cloud_fraction"] = np.float32(np.isin(mask, CLOUDY).sum() / mask.size)
                rows.append(row)
    return pd.DataFrame(rows)


def load(root, config="all", **kwargs):
    return list(streamed(datasets.load_dataset("ssl4eos12", config, data_dir=str(root), split="train",
                                               streaming=True, layout="webdataset", **kwargs)))


def assert_examples(actual, expected, where):
    assert len(actual) == len(expected), f"{where}: {len(actual)} examples, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_example_equal(a, e, f"{where}[{i}]")


def test_index_of_the_tars_matches_xarray(wds_root, tmp_path):
    table = pq.read_table(Path(wds_root) / "splits" / "ssl4eos12_train_index.parquet")
    expected = reference_rows(wds_root, ["S2L2A", "S1GRD"], tmp_path)
    assert table.num_rows == len(expected) == 2 * 4 * 4
    assert_columns_equal(table, expected, "tars")
    for wkb, lon, lat in zip(table.column("geometry").to_pylist(), expected["center_lon"], expected["center_lat"]):
        ring = wkb_ring(wkb)
        assert ring[:, 0].min() < lon < ring[:, 0].max() and ring[:, 1].min() < lat < ring[:, 1].max()
    with_dem = pq.read_table(Path(wds_root).parent / "with-dem.parquet")
    dem = reference_rows(wds_root, ["S2L2A", "S1GRD", "DEM"], tmp_path)
    assert_columns_equal(with_dem, dem, "tars with DEM")
    assert (dem.loc[dem["time_index"] == 0, "DEM_time"] == np.datetime64(0, "ns")).all()  # time 0: no date


@pytest.mark.parametrize("filters", [
    {"bbox": (100.0, -40.0, -80.0, 40.0)},  # across the antimeridian
    {"max_cloud_fraction": 0.2, "time_range": ("2020-03-01", "2021-09-01")},
    {"samples": ["1000001", "1000006"]},
])
def test_filters_on_the_tars_yield_what_pandas_selects(wds_root, tmp_path, filters):
    modalities = ["S2L2A", "S1GRD"]
    wanted = expected_selection(reference_rows(wds_root, modalities, tmp_path), modalities,
                                bbox=filters.get("bbox"), time_range=filters.get("time_range"),
                                max_cloud=filters.get("max_cloud_fraction"), samples=filters.get("samples"))
    expected = [e for e in expected_examples(wds_root, "train", modalities, tmp_path)
                if (e["file"], e["sample"], None) in wanted]
    assert 0 < len(expected) < 8, "the filter keeps some locations, not all"
    assert_examples(load(wds_root, modalities=modalities, **filters), expected, f"tars {filters}")


def test_static_modality_is_exempt_from_the_time_filter(wds_root, tmp_path):
    years_ago = ("2000-01-01", "2001-01-01")  # no dated timestamp lies inside
    every = list(expected_examples(wds_root, "train", ["DEM"], tmp_path))
    for index in (None, str(Path(wds_root).parent / "with-dem.parquet")):  # without and with a DEM_time column
        assert_examples(load(wds_root, "DEM", time_range=years_ago, index=index), every, f"DEM index={index}")
        assert_examples(load(wds_root, "DEM", time_range=years_ago, single_timestamp=True, index=index),
                        list(expected_examples(wds_root, "train", ["DEM"], tmp_path, single_timestamp=True)),
                        f"DEM single index={index}")
    # joined with a dated modality: only that one's times count
    time_range = ("2020-01-01", "2021-04-01")
    rows = reference_rows(wds_root, ["S2L2A", "DEM"], tmp_path)
    wanted = expected_selection(rows, ["S2L2A"], time_range=time_range)
    expected = [e for e in expected_examples(wds_root, "train", ["S2L2A", "DEM"], tmp_path)
                if (e["file"], e["sample"], None) in wanted]
    assert 0 < len(expected) < 8
    assert_examples(load(wds_root, modalities=["S2L2A", "DEM"], time_range=time_range,
                         index=str(Path(wds_root).parent / "with-dem.parquet")), expected, "S2L2A+DEM")
    # the rule in select itself: a missing time (NaT) or time 0 is no date
    frame = pd.DataFrame({"sample": ["a", "a", "b"], "file": "f", "time_index": [0, 1, 0],
                          "X_time": np.array([0, "NaT", "2020-05-01"], dtype="datetime64[ns]")})
    assert select(frame, ["X"], Filters.from_keywords(time_range=("2021-01-01", "2022-01-01"))) == {"f": {"a": None}}


def test_season_order_with_filters_keeps_the_selected_file_timestamps(wds_root, tmp_path):
    modalities = ["S2L2A", "S1GRD"]
    filters = {"max_cloud_fraction": 0.3, "time_range": ("2020-01-01", "2021-06-01")}
    rows = reference_rows(wds_root, modalities, tmp_path)
    passing = set(expected_selection(rows, modalities, time_range=filters["time_range"],
                                     max_cloud=filters["max_cloud_fraction"], single_timestamp=True))
    kept, moved = [], 0
    for example in expected_examples(wds_root, "train", modalities, tmp_path, single_timestamp=True, season=True):
        location = rows[(rows["file"] == example["file"]) & (rows["sample"] == example["sample"])]
        # the file timestamp each modality's season position t comes from: one for all, by S2L2A's months
        file_times = {m: int(location.loc[location[f"{m}_time"] == example[f"{m}_time"], "time_index"].iloc[0])
                      for m in modalities}
        assert len(set(file_times.values())) == 1, file_times
        if (example["file"], example["sample"], file_times["S2L2A"]) in passing:
            kept.append(example)
            moved += file_times["S2L2A"] != example["time_index"]
    assert 0 < len(kept) < 8 * 4 and moved, "some kept timestamps change position"
    actual = load(wds_root, modalities=modalities, single_timestamp=True, time_order="season", **filters)
    assert_examples(actual, kept, "season + filters")
    # the time series: kept locations are those of the files' order, reordered whole
    whole = expected_selection(rows, modalities, time_range=filters["time_range"], max_cloud=0.6)
    expected = [e for e in expected_examples(wds_root, "train", modalities, tmp_path, season=True)
                if (e["file"], e["sample"], None) in whole]
    assert expected
    assert_examples(load(wds_root, modalities=modalities, time_order="season", time_range=filters["time_range"],
                         max_cloud_fraction=0.6), expected, "season series + filters")
