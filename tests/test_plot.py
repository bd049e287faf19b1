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


# -- one example of a batch: collate's, the Loader's (torch or numpy, standardized or not) ------------------------

def image_axes(figure) -> list:
    return [ax for ax in figure.axes if ax.images]


def expected_panels(example, modalities) -> int:
    """Rows (two for Sentinel-1: VV and VH) times the timestamps of the longest series."""
    rows = sum(2 if m == "S1GRD" else 1 for m in modalities)
    return rows * max(len(dates(example, m)) for m in modalities)


def assert_same_picture(figure, expected) -> None:
    """The same panels (titles, in order) holding the same image data, drawn on the same colour scale."""
    drawn, wanted = image_axes(figure), image_axes(expected)
    assert [ax.get_title() for ax in drawn] == [ax.get_title() for ax in wanted]
    for ax, reference in zip(drawn, wanted):
        image, reference_image = ax.images[0], reference.images[0]
        np.testing.assert_array_equal(np.asarray(image.get_array()), np.asarray(reference_image.get_array()))
        assert np.asarray(image.get_array()).dtype == np.asarray(reference_image.get_array()).dtype, ax.get_title()
        assert image.get_clim() == reference_image.get_clim(), ax.get_title()


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """The webdataset release's own modalities: NDVI, LULC (categorical) and DEM (one undated timestamp)."""
    from ssl4eos12.synth.webdataset import synthesize_webdataset

    return synthesize_webdataset(tmp_path_factory.mktemp("tars"), splits=("train",), files=1, samples=3, size=8,
                                 modalities=("NDVI", "LULC", "DEM"))


BATCH_CASES = [*((c, {}) for c in CONFIGS), ("all", {"single_timestamp": True}), ("S1GRD", {"single_timestamp": True}),
               *((c, {"tars": True}) for c in ("NDVI", "LULC", "DEM"))]


@pytest.mark.parametrize("config,kwargs", BATCH_CASES, ids=[f"{c}{'-' + '-'.join(k) if k else ''}" for c, k in BATCH_CASES])
def test_plot_of_a_collated_batch_is_the_plot_of_its_example(data_dir, tars, config, kwargs):
    torch = pytest.importorskip("torch")
    kwargs = dict(kwargs)
    root = tars if kwargs.pop("tars", False) else data_dir
    examples = list(datasets.load_dataset("ssl4eos12", config, data_dir=str(root), split="train", streaming=True,
                                          **kwargs))[:3]
    batch = ssl4eos12.collate(examples)
    assert torch.is_tensor(batch[config if config != "all" else "S2L2A"])
    modalities = ssl4eos12.constants.MODALITIES if config == "all" else [config]
    as_numpy = {k: v.numpy() if torch.is_tensor(v) else v for k, v in batch.items()}  # timestamps stay int64
    for index in (0, 2):
        expected = ssl4eos12.plot(examples[index])
        assert len(image_axes(expected)) == expected_panels(examples[index], modalities)
        assert_same_picture(ssl4eos12.plot(batch, index=index), expected)
        assert_same_picture(ssl4eos12.plot(as_numpy, index=index), expected)
    assert_same_picture(ssl4eos12.plot(batch), ssl4eos12.plot(examples[0]))  # index=0 by default


@pytest.mark.parametrize("kwargs", [{}, {"numpy": True}, {"single_timestamp": True}, {"crop": 10}])
def test_plot_of_a_loader_batch_is_the_plot_of_its_example(data_dir, kwargs):
    pytest.importorskip("torch")
    single = kwargs.get("single_timestamp", False)
    loader = ssl4eos12.Loader("all", data_dir=str(data_dir), split="validation", batch_size=4, shuffle=False,
                              num_threads=1, **kwargs)
    batch = next(iter(loader))
    streamed = datasets.load_dataset("ssl4eos12", "all", data_dir=str(data_dir), split="validation", streaming=True,
                                     single_timestamp=single)
    examples = {(e["sample"], int(e["time_index"]) if single else 0): e for e in streamed}
    for index in range(4):
        key = (batch["sample"][index], int(batch["time_index"][index]) if single else 0)
        example = examples[key]
        if "crop" in kwargs:  # the Loader's centre crop, cut from the example the builder yields
            example = dict(example)
            for m in ssl4eos12.constants.MODALITIES:
                for name in (m, f"{m}_cloud_mask"):
                    if name in example:
                        example[name] = np.asarray(example[name])[..., 3:13, 3:13]
        figure = ssl4eos12.plot(batch, index=index)
        assert len(image_axes(figure)) == expected_panels(example, ssl4eos12.constants.MODALITIES)
        assert_same_picture(figure, ssl4eos12.plot(example))


def test_plot_of_a_standardized_batch_is_stretched_not_read_as_reflectance(data_dir):
    """Loader(normalize=True) gives float32 standardized bands: S2RGB and S2L2A true colour stretched from them
    (the clear pixels' 2nd-98th percentiles, no +1000 offset), each Sentinel-1 channel on its own range, not the
    dB scale."""
    torch = pytest.importorskip("torch")
    loader = ssl4eos12.Loader("all", data_dir=str(data_dir), split="validation", batch_size=3, shuffle=False,
                              num_threads=1, normalize=True)
    batch = next(iter(loader))
    assert batch["S2RGB"].dtype == batch["S1GRD"].dtype == batch["S2L2A"].dtype == torch.float32
    figure = ssl4eos12.plot(batch, index=1)
    drawn = panels(figure)
    assert len(image_axes(figure)) == (3 + 2) * 4  # S2L1C, S2L2A, S2RGB, S1GRD VV and VH x four timestamps
    dates_of = {m: [str(t.astype("datetime64[D]")) for t in batch[f"{m}_time"][1].numpy().astype("datetime64[ns]")]
                for m in ssl4eos12.constants.MODALITIES}
    for m in ("S2RGB", "S2L2A"):
        bands = batch[m][1].numpy()[:, [ssl4eos12.BANDS[m].index(b) for b in ("B04", "B03", "B02")]]
        clear = ~np.isin(batch[f"{m}_cloud_mask"][1].numpy(), (3, 4, 5))
        low, high = np.percentile(np.moveaxis(bands, 1, -1)[clear], (2, 98))
        for t, date in enumerate(dates_of[m]):
            image = drawn[f"{m}  {date}"]
            np.testing.assert_allclose(image, np.clip((np.moveaxis(bands[t], 0, -1) - low) / (high - low), 0, 1),
                                       rtol=1e-5, atol=1e-6)
            assert 0.1 < image.mean() < 0.9 and image.std() > 0.05  # a picture, neither black nor white
    s1 = batch["S1GRD"][1].numpy()
    by_title = {ax.get_title(): ax.images[0] for ax in image_axes(figure)}
    for b, name in enumerate(("VV", "VH")):
        low, high = np.percentile(s1[:, b], (2, 98))
        for t, date in enumerate(dates_of["S1GRD"]):
            image = by_title[f"S1GRD {name}  {date}"]
            np.testing.assert_array_equal(np.asarray(image.get_array()), s1[t, b])
            np.testing.assert_allclose(image.get_clim(), (low, high), rtol=1e-6)


def test_plot_index_out_of_the_batch_is_an_error(data_dir):
    pytest.importorskip("torch")
    examples = list(datasets.load_dataset("ssl4eos12", "S2RGB", data_dir=str(data_dir), split="train",
                                          streaming=True))[:3]
    with pytest.raises(ValueError, match=r"index=3: the batch holds 3 example\(s\)"):
        ssl4eos12.plot(ssl4eos12.collate(examples), index=3)
    with pytest.raises(ValueError, match=r"index=1: a single example \(not a batch\) has only index 0"):
        ssl4eos12.plot(examples[0], index=1)
    with pytest.raises(TypeError, match="index='0': need an integer"):
        ssl4eos12.plot(examples[0], index="0")
