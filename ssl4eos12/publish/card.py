"""The dataset card (``README.md``) of a converted folder, rendered from the top-level ``dataset_card.md``.

The YAML header is built with the libraries that read it: ``datasets``' :class:`MetadataConfigs` writes the
``configs`` (``data_files`` per split, ``default: true`` on the viewer's config) and
:class:`DatasetInfosDict` the ``dataset_info`` (features, splits, example counts, sizes), both into a
``huggingface_hub.DatasetCardData``; :meth:`DatasetCard.from_template` renders the Jinja template around it.
Everything comes from the conversion's manifest, so the card always describes the files next to it, and the
same manifest always gives the same card.
"""

from __future__ import annotations

import json
import os
import uuid
from importlib import resources
from pathlib import Path

import datasets
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from ..constants import AUTHORS_MIRROR, CITATION, DESCRIPTION, HOMEPAGE, HOSTED_ROOT, LICENSE, MEAN, SPLIT_FOLDERS, STD
from .manifest import read_manifest, skipped_files
from .plan import DEFAULT_CONFIG, INDEX_CONFIG, OVERVIEW_CONFIGS

PRETTY_NAME = "SSL4EO-S12 v1.1"
TASK_CATEGORIES = ["image-feature-extraction"]
TAGS = [
    "earth-observation", "remote-sensing", "satellite-imagery", "geospatial", "sentinel-1", "sentinel-2",
    "multispectral", "sar", "time-series", "self-supervised-learning",
]
PAPER = "https://arxiv.org/abs/2503.00168"
#: Shown in the loading examples until the card is rendered for a repository (``ssl4eos12 push`` does).
PLACEHOLDER_REPO_ID = "ORG/NAME"
TEMPLATE_NAME = "dataset_card.md"
LICENSE_NAMES = {"cc-by-4.0": "CC BY 4.0"}

#: The Hub's size categories: (upper bound, label).
_SIZE_CATEGORIES = [
    (10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"), (10**7, "1M<n<10M"),
    (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"), (10**11, "10B<n<100B"),
    (10**12, "100B<n<1T"),
]

MODALITY_SUMMARIES = {
    "S1GRD": "Sentinel-1 GRD backscatter (VV, VH), float16 dB",
    "S2L1C": "Sentinel-2 L1C top-of-atmosphere reflectance, 13 bands, int16",
    "S2L2A": "Sentinel-2 L2A surface reflectance, 12 bands, int16",
    "S2RGB": "Sentinel-2 true-colour RGB, uint8",
}


def size_category(num_examples: int) -> str:
    return next((label for bound, label in _SIZE_CATEGORIES if num_examples < bound), "n>1T")


def template_path() -> Path:
    """The card template: shipped in the package when installed, else the repository's top-level file."""
    packaged = resources.files("ssl4eos12") / TEMPLATE_NAME
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / TEMPLATE_NAME


def card_data(manifest: dict) -> DatasetCardData:
    """The YAML header: configs with their data files, dataset_info, license, tags and size category."""
    data = DatasetCardData(
        pretty_name=PRETTY_NAME, license=LICENSE, task_categories=TASK_CATEGORIES, tags=TAGS,
        size_categories=[size_category(max(_total_rows(info) for info in manifest["configs"].values()))],
    )
    configs, infos = {}, {}
    for name, info in manifest["configs"].items():
        splits = _ordered_splits(info["splits"])
        configs[name] = {"data_files": [{"split": split, "path": f"{name}/{split}-*"} for split in splits]}
        if name == DEFAULT_CONFIG:
            configs[name]["default"] = True
        split_dict = datasets.SplitDict()
        for split in splits:
            totals = info["splits"][split]
            split_dict.add(datasets.SplitInfo(name=split, num_bytes=totals["num_bytes"],
                                              num_examples=totals["num_rows"]))
        infos[name] = datasets.DatasetInfo(
            features=datasets.Features.from_dict(info["features"]), splits=split_dict,
            download_size=sum(t["size"] for t in info["splits"].values()),
            dataset_size=sum(t["num_bytes"] for t in info["splits"].values()),
        )
    DatasetInfosDict(infos).to_dataset_card_data(data)
    MetadataConfigs(configs).to_dataset_card_data(data)
    return data


def render_card(manifest: dict, repo_id: str | None = None) -> DatasetCard:
    """The dataset card of a converted folder, from its manifest."""
    configs = manifest["configs"]
    splits = [split for split in SPLIT_FOLDERS if any(split in info["splits"] for info in configs.values())]
    modality_configs = [name for name in configs if name not in OVERVIEW_CONFIGS]
    example_config = "S2L2A" if "S2L2A" in configs else (modality_configs or list(configs))[0]
    example_split = "validation" if "validation" in configs[example_config]["splits"] else \
        next(iter(configs[example_config]["splits"]))
    thumbnail = configs.get(DEFAULT_CONFIG, {}).get("thumbnail")
    ordered = [*modality_configs, *(name for name in OVERVIEW_CONFIGS if name in configs)]
    index = configs.get(INDEX_CONFIG)
    index_split = None if index is None else \
        ("validation" if "validation" in index["splits"] else next(iter(index["splits"])))
    # the recipe filters on the example config's cloud fraction, else on any there is, else on place only
    index_cloud = None if index is None else next(
        (name for name in [f"{example_config}_cloud_fraction", *index["features"]]
         if name.endswith("_cloud_fraction") and name in index["features"]), None)
    return DatasetCard.from_template(
        card_data(manifest),
        template_path=str(template_path()),
        pretty_name=PRETTY_NAME,
        description=DESCRIPTION,
        repo_id=repo_id or PLACEHOLDER_REPO_ID,
        zarr_repo=HOSTED_ROOT.removeprefix("hf://datasets/"),
        mirror=AUTHORS_MIRROR,
        homepage=HOMEPAGE,
        paper=PAPER,
        license=LICENSE_NAMES.get(LICENSE, LICENSE),
        splits=splits,
        configs=[_config_summary(name, configs[name]) for name in ordered],
        thumbnail=thumbnail,
        example_config=example_config,
        example_split=example_split,
        statistics=[_statistics_table(name, configs[name]) for name in modality_configs
                    if configs[name]["statistics"].get("bands")],
        standardization=_standardization_json(),
        citation=CITATION.strip(),
        index_split=index_split if index_split in configs[example_config]["splits"] else None,
        index_cloud=index_cloud,
        skipped=[{"shard": shard, "file": name, "problem": problem} for shard, name, problem in skipped_files(manifest)],
    )


def write_card(out_dir, manifest: dict | None = None, repo_id: str | None = None) -> Path:
    """Render the card of ``out_dir`` (from its manifest unless given) to ``out_dir/README.md``, atomically."""
    out = Path(out_dir)
    card = render_card(manifest if manifest is not None else read_manifest(out), repo_id)
    path = out / "README.md"
    partial = out / f".README.md.{uuid.uuid4().hex}.partial"
    partial.write_text(str(card), encoding="utf-8")
    os.replace(partial, path)
    return path


def _ordered_splits(splits: dict) -> list[str]:
    return sorted(splits, key=lambda s: list(SPLIT_FOLDERS).index(s) if s in SPLIT_FOLDERS else len(SPLIT_FOLDERS))


def _total_rows(info: dict) -> int:
    return sum(split["num_rows"] for split in info["splits"].values())


def _config_summary(name: str, info: dict) -> dict:
    if name == INDEX_CONFIG:
        summary = "the GeoParquet index: one row per (location, timestamp) with its footprint, times and cloud " \
            "fractions, to filter before fetching"
    elif name == DEFAULT_CONFIG:
        summary = "overview for the viewer: " + (f"{info['thumbnail']} thumbnail, " if info["thumbnail"] else "") + \
            "location, timestamps and cloud cover of every modality"
    else:
        summary = MODALITY_SUMMARIES.get(name, f"{name} time series") + ", with " + \
            ("cloud mask, " if f"{name}_cloud_mask" in info["features"] else "") + \
            "timestamps, product ids and UTM coordinates"
    features = datasets.Features.from_dict(info["features"])
    return {
        "name": name, "summary": summary,
        "rows": {split: totals["num_rows"] for split, totals in info["splits"].items()},
        "size": human_size(sum(t["size"] for t in info["splits"].values())),
        "fields": [{"name": field, "type": _describe_feature(feature), "description": _describe_field(field)}
                   for field, feature in features.items()],
    }


def _describe_feature(feature) -> str:
    if isinstance(feature, datasets.Image):
        return "image (PNG)"
    if isinstance(feature, datasets.features.features._ArrayXD):
        return f"{feature.dtype} {' × '.join(str(d) for d in feature.shape)}"
    if isinstance(feature, datasets.List):
        return f"{_describe_feature(feature.feature)} × {feature.length}" if feature.length > 0 else \
            f"list of {_describe_feature(feature.feature)}"
    return feature.dtype


_SHARED_FIELD_DOCS = {
    "sample": "location id",
    "file": "source Zarr file (or webdataset tar) of the location",
    "key": "member key of the location in its tar (webdataset release)",
    "center_lat": "latitude of the patch centre (degrees)",
    "center_lon": "longitude of the patch centre (degrees)",
    "crs": "EPSG code of the patch's UTM zone",
    "time_index": "timestamp of this example (0-3)",
    "thumbnail": "true-colour preview of the least cloudy timestamp",
    "thumbnail_time_index": "timestamp the thumbnail shows",
    "split": "split of the location",
    "geometry": "patch footprint: WKB polygon, lon/lat (EPSG:4326)",
}
_MODALITY_FIELD_DOCS = {
    "": "bands (time, band, y, x)",
    "_cloud_mask": "cloud mask (time, y, x)",
    "_time": "acquisition time of each timestamp",
    "_file_id": "product id of each timestamp",
    "_x": "UTM easting of the pixel centres (m)",
    "_y": "UTM northing of the pixel centres (m)",
    "_cloud_fraction": "share of the pixels in the cloud classes 3-5 (thin, thick cloud, shadow), per timestamp",
}


def _describe_field(field: str) -> str:
    if field in _SHARED_FIELD_DOCS:
        return _SHARED_FIELD_DOCS[field]
    modality, _, suffix = field.partition("_")
    doc = _MODALITY_FIELD_DOCS.get(f"_{suffix}" if suffix else "")
    return f"{modality} {doc}" if doc else ""


def _statistics_table(name: str, info: dict) -> dict:
    stats = info["statistics"]
    published_mean, published_std = MEAN.get(name, ()), STD.get(name, ())
    bands = []
    for i, band in enumerate(stats["bands"]):
        bands.append({
            "band": band["band"], "mean": _number(band["mean"]), "std": _number(band["std"]),
            "published_mean": f"{published_mean[i]:.3f}" if i < len(published_mean) else "–",
            "published_std": f"{published_std[i]:.3f}" if i < len(published_std) else "–",
            "nan_fraction": f"{band.get('nan_fraction', 0.0):.4%}",
        })
    rows = ", ".join(f"{totals['num_rows']:,} in {split}" for split, totals in info["splits"].items())
    cloud = stats.get("cloud_fraction")
    return {
        "name": name, "bands": bands, "has_nan": any("nan_fraction" in band for band in stats["bands"]),
        "locations": f"Locations: {rows}.", "cloud_fraction": None if cloud is None else f"{cloud:.2%}",
    }


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _standardization_json() -> str:
    """The published values laid out like the dataset's own README: one line per list."""
    modalities = [
        f'  "{m}": {{\n    "mean": {json.dumps(list(MEAN[m]))},\n    "std": {json.dumps(list(STD[m]))}\n  }}'
        for m in MEAN
    ]
    return "{\n" + ",\n".join(modalities) + "\n}"


def human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{num_bytes} B"
