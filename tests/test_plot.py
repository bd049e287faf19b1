"""``ssl4eos12.plot``: a figure of any config's example, single-timestamp too; ``ssl4eos12 show``."""

from __future__ import annotations

import sys

import datasets
import numpy as np
import pytest

import ssl4eos12
from ssl4eos12.cli import main

pytest.importorskip("matplotlib")

CONFIGS = ["S2L1C", "S2L2A", "S2RGB", "S1GRD", "all"]


def first_example(data_dir, config, split="train", **kwargs) -> dict:
    stream = datasets.load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=split, streaming=True, **kwargs)
    return next(iter(stream))


def panels(figure) -> dict[str, np.ndarray]:
    """Title -> the data of the first image drawn in that panel."""
    return {ax.get_title(): np.asarray(ax.get_images()[0].get_array()) for ax in figure.axes if ax.get_images()}


def dates(example, modality) -> list[str]:
    return [str(t) for t in np.atleast_1d(example[f"{modality}_time"]).astype("datetime64[D]")]


@pytest.mark.parametrize("config", CONFIGS)
def test_plot_every_config(data_dir, config, tmp_path):
    example = first_example(data_dir, config)
    figure = ssl4eos12.plot(example)
    drawn = panels(figure)
    modalities = ssl4eos12.constants.MODALITIES if config == "all" else [config]
    for m in modalities:
        bands = np.asarray(example[m])
        for t, date in enumerate(dates(example, m)):
            if m == "S1GRD":  # VV and VH in dB, as stored
                for b, name in enumerate(("VV", "VH")):
                    image = drawn[f"S1GRD {name}  {date}"]
                    np.testing.assert_array_equal(image, bands[t, b].astype(np.float32))
            elif m == "S2RGB":  # the true-colour product as stored
                np.testing.assert_array_equal(drawn[f"S2RGB  {date}"], np.moveaxis(bands[t], 0, -1))
            else:
                assert drawn[f"{m}  {date}"].shape == bands.shape[2:] + (3,)
    if config in ("S2L2A", "S2L1C"):
        check_true_colour(example, config, drawn)
    figure.savefig(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 1000


def check_true_colour(example, modality, drawn) -> None:
    """B04, B03, B02 less the +1000 offset, the 2nd-98th percentiles of the clear pixels spanning 0 to 1."""
    band_names = ssl4eos12.BANDS[modality]
    bands = np.asarray(example[modality])[:, [band_names.index(b) for b in ("B04", "B03", "B02")]]
    rgb = bands.astype(np.float32) - 1000
    clear = ~np.isin(np.asarray(example[f"{modality}_cloud_mask"]), (3, 4, 5))
    low, high = np.percentile(np.moveaxis(rgb, 1, -1)[clear], (2, 98))
    for t, date in enumerate(dates(example, modality)):
        expected = np.clip((np.moveaxis(rgb[t], 0, -1) - low) / (high - low), 0, 1)
        np.testing.assert_allclose(drawn[f"{modality}  {date}"], expected, rtol=1e-5, atol=1e-6)


def test_plot_single_timestamp_extra_modality_and_options(data_dir, odd_data_dir):
    example = first_example(data_dir, "all", single_timestamp=True)
    figure = ssl4eos12.plot(example, cloud_mask="overlay", modalities=["S2RGB", "S1GRD"])
    drawn = panels(figure)
    assert set(drawn) == {f"S2RGB  {dates(example, 'S2RGB')[0]}", f"S1GRD VV  {dates(example, 'S1GRD')[0]}",
                          f"S1GRD VH  {dates(example, 'S1GRD')[0]}"}
    ndvi = first_example(odd_data_dir, "all", "validation", modalities=["NDVI", "S2L2A"])
    drawn = panels(ssl4eos12.plot(ndvi))
    assert len(drawn) == 2 * 3  # two modalities x three timestamps
    with pytest.raises(ValueError, match="no modality"):
        ssl4eos12.plot(example, modalities=["S2L1C", "NDVI"])
    with pytest.raises(ValueError, match="cloud_mask must be one of"):
        ssl4eos12.plot(example, cloud_mask="shaded")


def test_plot_without_matplotlib_says_how_to_install(data_dir, monkeypatch):
    example = first_example(data_dir, "S2RGB")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'ssl4eos12\[plot\]'"):
        ssl4eos12.plot(example)


def test_show_cli(data_dir, tmp_path, capsys):
    out = tmp_path / "one.png"
    main(["show", str(data_dir), "--sample", "0000004", "--out", str(out), "--time-index", "2"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="error: .*no location '9999999'"):
        main(["show", str(data_dir), "--sample", "9999999", "--out", str(out)])


def test_plot_an_example_of_the_parquet_copy(converted_dir, data_dir):
    """Rows of the converted copy (nested lists, pandas timestamps) give the same picture as the builder's."""
    row = datasets.load_dataset(str(converted_dir), "S2L2A", split="train", streaming=True)
    from_parquet = panels(ssl4eos12.plot(next(iter(row))))
    from_builder = panels(ssl4eos12.plot(first_example(data_dir, "S2L2A")))
    assert from_parquet.keys() == from_builder.keys() and len(from_parquet) == 4
    for title, image in from_builder.items():
        np.testing.assert_array_equal(from_parquet[title], image)
