"""The dataset card: its YAML parses with huggingface_hub and datasets, names every config and split with counts
and sizes that match the files, and its body carries the statistics, standardization values and citations."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import open_with_xarray
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard
from reference import SPLIT_FOLDERS, split_files

from ssl4eos12.constants import MEAN, STD
from ssl4eos12.publish import read_manifest
from ssl4eos12.publish.card import render_card, size_category, template_path, write_card
from ssl4eos12.publish.formats import iter_tables, read_schema

CONFIGS = {"S1GRD", "S2L1C", "S2L2A", "S2RGB", "default", "index"}


@pytest.fixture(scope="module")
def card(converted_dir) -> DatasetCard:
    return DatasetCard.load(converted_dir / "README.md")


def test_yaml_names_every_config_and_split(card, converted_dir):
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert set(configs) == CONFIGS
    assert configs.get_default_config_name() == "default" and configs["default"]["default"] is True
    for name, config in configs.items():
        assert config["data_files"] == [{"split": s, "path": f"{name}/{s}-*"} for s in ("train", "validation")]
        for entry in config["data_files"]:
            assert sorted(converted_dir.glob(entry["path"])), f"{entry} matches no file"


def test_dataset_info_matches_the_files(card, converted_dir):
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert set(infos) == CONFIGS
    for name, info in infos.items():
        shards = sorted((converted_dir / name).glob("*.arrow"))
        assert info.features == datasets.Features.from_arrow_schema(read_schema(shards[0]))
        assert info.download_size == sum(p.stat().st_size for p in shards)
        for split, split_info in info.splits.items():
            rows = sum(t.num_rows for p in shards if p.name.startswith(f"{split}-") for t in iter_tables(p))
            assert split_info.num_examples == rows == 6 * (4 if name == "index" else 1)  # index: per timestamp
            assert split_info.num_bytes > 0
        assert info.dataset_size == sum(s.num_bytes for s in info.splits.values())


def test_metadata_fields(card):
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0"
    assert data["pretty_name"] == "SSL4EO-S12 v1.1"
    assert data["task_categories"] == ["image-feature-extraction"]
    assert {"sentinel-1", "sentinel-2", "earth-observation"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"]


def test_body(card):
    text = card.text
    for key in ("@article{blumenstiel2025ssl4eos12", "@article{wang2022ssl4eo", "arXiv:2503.00168"):
        assert key in text
    assert '"mean": [2607.345, 2393.068' in text  # standardization values, as published
    assert 'load_dataset("ORG/NAME", "S2L2A", split="validation", streaming=True)' in text
    assert "DataLoader(" in text and 'with_format("torch")' in text
    assert "| `default` |" in text and "| `thumbnail` | image (PNG) |" in text
    assert "## File format" in text and "Arrow IPC stream" in text and "DuckDB" in text  # which format, why


def test_statistics_are_measured_from_the_data(card, converted_dir, data_dir):
    """Per-band mean and std in manifest and card equal numpy's over every value of both splits."""
    stats = read_manifest(converted_dir)["configs"]
    for modality in ("S2L2A", "S1GRD"):
        values = np.concatenate([
            open_with_xarray(Path(data_dir) / SPLIT_FOLDERS[split] / modality / name)["bands"].values
            for split in ("train", "validation") for name in split_files(data_dir, split)
        ]).astype(np.float64)
        for b, band in enumerate(stats[modality]["statistics"]["bands"]):
            v = values[:, :, b]
            assert band["count"] == np.count_nonzero(~np.isnan(v))
            assert band["mean"] == pytest.approx(np.nanmean(v), rel=1e-12)
            assert band["std"] == pytest.approx(np.nanstd(v), rel=1e-9)
            row = f"| {band['band']} | {np.nanmean(v):.3f} | {np.nanstd(v):.3f} | {MEAN[modality][b]:.3f} | " \
                  f"{STD[modality][b]:.3f} |"
            assert row in card.text
    assert stats["S1GRD"]["statistics"]["bands"][0]["nan_fraction"] > 0  # synth puts no-data pixels in S1
    cloud = np.concatenate([
        open_with_xarray(Path(data_dir) / SPLIT_FOLDERS[split] / "S2L2A" / name)["cloud_mask"].values
        for split in ("train", "validation") for name in split_files(data_dir, split)
    ])
    assert stats["S2L2A"]["statistics"]["cloud_fraction"] == pytest.approx(np.isin(cloud, (3, 4, 5)).mean())


def test_rendering_is_deterministic_and_names_the_repo(converted_dir, tmp_path):
    manifest = read_manifest(converted_dir)
    assert str(render_card(manifest)) == (converted_dir / "README.md").read_text(encoding="utf-8")
    rendered = str(render_card(manifest, repo_id="org/ssl4eo"))
    assert 'load_dataset("org/ssl4eo", "S2L2A"' in rendered and "ORG/NAME" not in rendered
    (tmp_path / ".ssl4eos12").mkdir()
    shutil.copy(converted_dir / ".ssl4eos12" / "manifest.json", tmp_path / ".ssl4eos12" / "manifest.json")
    path = write_card(tmp_path, repo_id="org/ssl4eo")
    assert path.read_text(encoding="utf-8") == rendered
    assert DatasetCard.load(path).data.to_dict()["configs"]


def test_template_is_the_top_level_file():
    assert template_path().name == "dataset_card.md"
    assert "{{ card_data }}" in template_path().read_text(encoding="utf-8")


@pytest.mark.parametrize("n, label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (246_144, "100K<n<1M"),
                                      (10**12, "n>1T")])
def test_size_category(n, label):
    assert size_category(n) == label
