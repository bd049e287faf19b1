"""``time_order="season"`` as the authors' ``reindex_seasonal`` defines it: every modality reordered by the months of
the first requested modality that has dates, so slot t of every modality is the same acquisition round.

The fixtures' Sentinel-1 and Sentinel-2 dates straddle New Year (S2 on 5 January, S1 on 31 December of the same
round), where sorting each modality by its own months would put January's S2 beside another round's S1. The
expected examples are xarray's reads of the files (``reference``, ``test_webdataset``), reindexed by a permutation
computed here with pandas from the reference modality's dates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import arrow_rows, open_with_xarray
from reference import assert_example_equal
from reference import expected_examples as zarr_examples
from test_loader import as_loader_gives, examples_of
from test_webdataset import expected_examples as tar_examples
from test_webdataset import open_member, streamed, tar_members

import ssl4eos12
from ssl4eos12.index import build_index
from ssl4eos12.synth import synthesize, write_zarr_zip
from ssl4eos12.synth.webdataset import synthesize_webdataset, write_tar, zarr_zip_bytes

S2, S1 = "S2L2A", "S1GRD"

#: (S2 dates, S1 dates) of a location, by date as the files store them; locations take them in turn.
DATES = [
    # S2 in January, S1 on New Year's Eve: S2's months move its last round first, S1's own months would not
    (["2020-03-10", "2020-06-15", "2020-09-20", "2021-01-05"],
     ["2020-03-08", "2020-06-17", "2020-09-18", "2020-12-31"]),
    # the other way round
    (["2020-03-10", "2020-06-15", "2020-09-20", "2020-12-28"],
     ["2020-03-12", "2020-06-13", "2020-09-22", "2021-01-02"]),
    # no straddle: already in season order
    (["2020-01-20", "2020-04-15", "2020-07-20", "2020-10-05"],
     ["2020-01-18", "2020-04-17", "2020-07-22", "2020-10-03"]),
    # summer to spring, one S1 date on the other side of New Year
    (["2020-07-01", "2020-10-01", "2021-01-03", "2021-04-10"],
     ["2020-06-28", "2020-09-28", "2020-12-30", "2021-04-12"]),
]
#: The season order of each row of DATES, by S2's months and by S1's (what the fixture is built to show).
S2_ORDERS = [[3, 0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3], [2, 3, 0, 1]]
S1_ORDERS = [[0, 1, 2, 3], [3, 0, 1, 2], [0, 1, 2, 3], [3, 0, 1, 2]]


def dates(modality: str, location: int) -> np.ndarray:
    s2, s1 = DATES[location % len(DATES)]
    days, hour = (s1, "T18:04:31") if modality == S1 else (s2, "T10:27:09")
    return np.array([d + hour for d in days], dtype="datetime64[ns]")


@pytest.fixture(scope="module")
def zarr_root(tmp_path_factory):
    """The Zarr release: 2 files x 3 locations of S2L2A, S2RGB (S2's dates) and S1GRD, with an index."""
    root = synthesize(tmp_path_factory.mktemp("season-zarr"), splits=("train",), files=2, samples=3, size=8,
                      modalities=(S2, "S2RGB", S1))
    for modality in (S2, "S2RGB", S1):
        location = 0
        for path in sorted((root / "train" / modality).glob("*.zarr.zip")):
            ds = open_with_xarray(path)
            times = np.stack([dates(modality, location + i) for i in range(ds.sizes["sample"])])
            location += ds.sizes["sample"]
            write_zarr_zip(ds.assign(time_=ds["time_"].copy(data=times)).drop_encoding(), path)
    build_index(root, workers=1)
    return root


@pytest.fixture(scope="module")
def tar_root(tmp_path_factory):
    """The webdataset release: 2 tars x 3 locations of S2L2A, S1GRD and DEM (one timestamp, time 0), with an index."""
    root = synthesize_webdataset(tmp_path_factory.mktemp("season-tars"), splits=("train",), files=2, samples=3,
                                 size=8, modalities=(S2, S1, "DEM"))
    scratch = tmp_path_factory.mktemp("members")
    for modality in (S2, S1):
        location = 0
        for tar in sorted((root / "train" / modality).glob("*.tar")):
            members = []
            for key, data in tar_members(tar):
                ds = open_member(data, scratch).assign_coords(time=dates(modality, location)).drop_encoding()
                members.append((f"{key}.zarr.zip", zarr_zip_bytes(ds)))
                location += 1
            write_tar(tar, members)
    build_index(root, workers=1)
    return root


# -- the expected examples: xarray's, reindexed here ----------------------------------------------------------------

def season_order(example: dict, modalities) -> np.ndarray | None:
    """The authors' rule: argsort (stable) of the month of year of the first modality with more than one date."""
    for m in modalities:
        times = np.atleast_1d(example[f"{m}_time"])
        if times.size > 1:
            return np.argsort(pd.DatetimeIndex(times).month.to_numpy(), kind="stable")
    return None


def time_fields(example: dict, m: str) -> list[str]:
    return [f for f in (m, f"{m}_cloud_mask", f"{m}_time", f"{m}_file_id") if f in example]


def by_season(example: dict, modalities) -> dict:
    """A time series (files' order) with every modality as long as the reference in the reference's season order."""
    order = season_order(example, modalities)
    out = dict(example)
    for m in modalities:
        if order is None or len(example[f"{m}_time"]) != len(order):
            continue  # one timestamp (DEM): as it is
        for field in time_fields(example, m):
            value = example[field]
            out[field] = [value[j] for j in order] if isinstance(value, list) else value[order]
    return out


def per_timestamp(example: dict, modalities) -> list[dict]:
    """A time series as ``single_timestamp=True`` gives it: one example per position, ``time_index`` the position."""
    out = []
    for t in range(len(example[f"{modalities[0]}_time"])):
        single = dict(example, time_index=np.int64(t))
        for m in modalities:
            for field in time_fields(example, m):
                single[field] = example[field][t]
        out.append(single)
    return out


def expected(root: Path, modalities, single_timestamp=False, time_range=None) -> list[dict]:
    """The season-ordered examples; ``time_range``: only the positions (series: the locations) whose file
    timestamps of every modality lie in ``[start, end)``, judged before reordering."""
    if any((Path(root) / "train" / modalities[0]).glob("*.tar")):
        with tempfile.TemporaryDirectory() as scratch:
            plain = list(tar_examples(root, "train", modalities, Path(scratch)))
    else:
        plain = list(zarr_examples(root, "train", modalities))
    out = []
    for example in plain:
        order = season_order(example, modalities)
        inside = np.ones(len(order), dtype=bool)
        if time_range is not None:
            start, end = (np.datetime64(x, "ns") for x in time_range)
            for m in modalities:
                times = np.atleast_1d(example[f"{m}_time"])
                if len(times) == len(order):  # DEM (one timestamp, no date) is exempt from time filters
                    inside &= (times >= start) & (times < end)
        reordered = by_season(example, modalities)
        if not single_timestamp:
            if inside.all():
                out.append(reordered)
            continue
        out += [e for t, e in enumerate(per_timestamp(reordered, modalities)) if inside[order[t]]]
    return out


def stream(root, **kwargs) -> list[dict]:
    return list(streamed(datasets.load_dataset("ssl4eos12", "all", data_dir=str(root), split="train",
                                               streaming=True, time_order="season", **kwargs)))


def prepared(root, cache: Path, **kwargs) -> list[dict]:
    return arrow_rows(datasets.load_dataset("ssl4eos12", "all", data_dir=str(root), split="train",
                                            cache_dir=str(cache), time_order="season", **kwargs))


def loaded(root, numpy: bool, **kwargs) -> list[dict]:
    loader = ssl4eos12.Loader("all", data_dir=str(root), batch_size=4, shuffle=False, num_threads=2, numpy=numpy,
                              time_order="season", **kwargs)
    return examples_of(loader)


def assert_examples(actual, wanted, where: str) -> None:
    assert len(actual) == len(wanted) > 0, f"{where}: {len(actual)} examples, expected {len(wanted)}"
    for i, (a, e) in enumerate(zip(actual, wanted)):
        assert_example_equal(a, e, f"{where}[{i}]")


# -- the fixture is what it claims ----------------------------------------------------------------------------------

def test_the_fixture_dates_straddle_new_year(zarr_root):
    plain = list(zarr_examples(zarr_root, "train", [S2, S1]))
    for i, example in enumerate(plain):
        s2_order = np.argsort(pd.DatetimeIndex(example[f"{S2}_time"]).month.to_numpy(), kind="stable")
        s1_order = np.argsort(pd.DatetimeIndex(example[f"{S1}_time"]).month.to_numpy(), kind="stable")
        assert s2_order.tolist() == S2_ORDERS[i % 4] and s1_order.tolist() == S1_ORDERS[i % 4]
        assert season_order(example, [S2, S1]).tolist() == S2_ORDERS[i % 4]
        assert season_order(example, [S1, S2]).tolist() == S1_ORDERS[i % 4]
    # S2 of 5 January and S1 of 31 December are one round, file position 3 of both
    assert str(plain[0][f"{S2}_time"][3])[:10] == "2021-01-05" and str(plain[0][f"{S1}_time"][3])[:10] == "2020-12-31"


# -- the Zarr release -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modalities", [[S2, S1], [S1, S2], [S2, "S2RGB", S1]], ids=["S2-first", "S1-first", "three"])
def test_every_modality_follows_the_first_ones_months(zarr_root, modalities):
    wanted = expected(zarr_root, modalities)
    actual = stream(zarr_root, modalities=modalities)
    assert_examples(actual, wanted, f"streaming {modalities}")
    # slot t is one round: S2 and S1 never more than a week apart (sorting each by its own months would)
    for row in actual:
        gap = np.abs(row[f"{S2}_time"] - row[f"{S1}_time"])
        assert (gap < np.timedelta64(7, "D")).all(), (row["sample"], row[f"{S2}_time"], row[f"{S1}_time"])
    first = modalities[0]
    assert all((np.diff(pd.DatetimeIndex(row[f"{first}_time"]).month) >= 0).all() for row in actual)
    # the other modality's own months are not in order where its dates fall on the other side of New Year
    other = S1 if first == S2 else S2
    assert any((np.diff(pd.DatetimeIndex(row[f"{other}_time"]).month) < 0).any() for row in actual)


def test_prepared_single_timestamp_and_loader(zarr_root, tmp_path):
    modalities = [S2, S1]
    assert_examples(prepared(zarr_root, tmp_path / "c", modalities=modalities), expected(zarr_root, modalities),
                    "prepared")
    singles = expected(zarr_root, modalities, single_timestamp=True)
    assert_examples(stream(zarr_root, modalities=modalities, single_timestamp=True), singles, "single_timestamp")
    assert_examples(loaded(zarr_root, True, modalities=modalities), expected(zarr_root, modalities), "Loader numpy")
    assert_examples(loaded(zarr_root, False, modalities=[S1, S2], single_timestamp=True),
                    [as_loader_gives(e, False) for e in expected(zarr_root, [S1, S2], single_timestamp=True)],
                    "Loader torch, S1 first, single_timestamp")


def assert_single_timestamps_filtered(root, modalities) -> None:
    """Builder and Loader, ``single_timestamp`` with a time range that leaves out S2's 5 January and keeps S1's
    31 December: the examples xarray's reading gives in the shared season order."""
    time_range = ("2020-03-01", "2021-01-01")
    singles = expected(root, modalities, single_timestamp=True, time_range=time_range)
    assert 0 < len(singles) < 6 * 4
    assert_examples(stream(root, modalities=modalities, single_timestamp=True, time_range=time_range), singles,
                    "builder, single_timestamp + time_range")
    assert_examples(loaded(root, True, modalities=modalities, single_timestamp=True, time_range=time_range),
                    singles, "Loader, single_timestamp + time_range")


@pytest.mark.parametrize("modalities", [[S2, S1], [S1, S2]], ids=["S2-first", "S1-first"])
def test_time_filter_judges_the_file_timestamps_of_the_shared_order(zarr_root, modalities):
    assert_single_timestamps_filtered(zarr_root, modalities)
    series_range = ("2020-03-01", "2021-01-04")
    series = expected(zarr_root, modalities, time_range=series_range)
    assert 0 < len(series) < 6
    assert_examples(stream(zarr_root, modalities=modalities, time_range=series_range), series, "builder, series")


def test_a_modality_with_another_number_of_timestamps_is_an_error(tmp_path):
    root = synthesize(tmp_path / "mixed", splits=("train",), files=1, samples=2, size=8, modalities=(S2,), times=4)
    synthesize(root, splits=("train",), files=1, samples=2, size=8, modalities=(S1,), times=3)  # same locations
    for modalities, (ref, n, other, m) in (([S2, S1], (S2, 4, S1, 3)), ([S1, S2], (S1, 3, S2, 4))):
        message = (rf"{other} has {m} timestamps per location, but {ref}, whose months give the season order, has "
                   rf"{n}.*time_order='file'")
        with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=message):
            stream(root, modalities=modalities)
        with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=message):
            loaded(root, True, modalities=modalities)
    assert len(stream(root, modalities=[S1])) == 2  # alone, each has its own


# -- the webdataset release -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("modalities", [[S2, S1, "DEM"], ["DEM", S1, S2]], ids=["S2-first", "DEM-first"])
def test_tars_undated_dem_is_no_reference_and_stays(tar_root, modalities, tmp_path):
    wanted = expected(tar_root, modalities)
    reference = next(m for m in modalities if m != "DEM")  # the first with dates
    assert all((np.diff(pd.DatetimeIndex(e[f"{reference}_time"]).month) >= 0).all() for e in wanted)
    assert_examples(stream(tar_root, modalities=modalities), wanted, f"streaming {modalities}")
    assert_examples(prepared(tar_root, tmp_path / "c", modalities=modalities), wanted, f"prepared {modalities}")
    assert_examples(loaded(tar_root, False, modalities=modalities), [as_loader_gives(e, False) for e in wanted],
                    f"Loader torch {modalities}")


@pytest.mark.parametrize("modalities", [[S2, S1], [S1, S2]], ids=["S2-first", "S1-first"])
def test_tars_single_timestamp_with_time_filter(tar_root, modalities):
    assert_single_timestamps_filtered(tar_root, modalities)


def test_timestamps_without_dates_cannot_be_ordered(tmp_path):
    root = synthesize_webdataset(tmp_path / "undated", splits=("train",), files=1, samples=2, size=8, modalities=(S2,))
    tar = root / "train" / S2 / "ssl4eos12_shard_000001.tar"
    members = [(f"{key}.zarr.zip", zarr_zip_bytes(open_member(data, tmp_path).assign_coords(time=[0, 1, 2, 3])
                                                  .drop_encoding())) for key, data in tar_members(tar)]
    write_tar(tar, members)
    assert len(list(datasets.load_dataset("ssl4eos12", S2, data_dir=str(root), split="train", streaming=True))) == 2
    with pytest.raises(ssl4eos12.SSL4EOS12DataError, match=r"S2L2A has 4 timestamps per location but no dates.*"
                                                           r"time_order='file'"):
        stream(root, modalities=[S2])
