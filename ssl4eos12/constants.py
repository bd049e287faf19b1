"""Facts about SSL4EO-S12 v1.1: modalities, bands, layout, standardization values, credits.

Everything here is taken from the dataset's own README (``SSL4EO-S12-v1.1-README.md``, shipped with the
hosted copy) and from the files themselves; nothing here is a guess about sizes, which are always read
from the files.
"""

from __future__ import annotations

#: The four modalities of SSL4EO-S12 v1.1, in the order of the ``all`` config.
MODALITIES: tuple[str, ...] = ("S2L1C", "S2L2A", "S2RGB", "S1GRD")

#: Modalities only the webdataset release has (joined through ``modalities=[...]`` or their own configs).
#: Their features are read from the files: nothing about them is assumed here.
WEBDATASET_ONLY_MODALITIES: tuple[str, ...] = ("NDVI", "LULC", "DEM")
#: Every modality of the webdataset release, in its order.
WEBDATASET_MODALITIES: tuple[str, ...] = MODALITIES + WEBDATASET_ONLY_MODALITIES
#: Static modalities: one timestamp with no date (time 0, 1970-01-01). The time filter exempts them (see
#: :func:`ssl4eos12.index.select`).
UNDATED_MODALITIES: tuple[str, ...] = ("DEM",)

#: The two on-disk releases, by the name the ``layout=`` keyword and ``standardization()`` take.
RELEASES: tuple[str, ...] = ("zarr", "webdataset")

#: Band names as stored in the ``band`` coordinate of each modality's files.
BANDS: dict[str, tuple[str, ...]] = {
    "S2L1C": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
    "S2L2A": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
    "S2RGB": ("B04", "B03", "B02"),
    "S1GRD": ("vv", "vh"),
}

#: Storage dtype of the ``bands`` variable. S2 L1C/L2A reflectances carry a +1000 offset; S1 is dB.
BANDS_DTYPE: dict[str, str] = {"S2L1C": "int16", "S2L2A": "int16", "S2RGB": "uint8", "S1GRD": "float16"}

#: Modalities whose files carry a ``cloud_mask`` variable.
CLOUD_MASKED: frozenset[str] = frozenset({"S2L1C", "S2L2A", "S2RGB"})

#: The cloud mask's classes, as the authors document them (both releases).
CLOUD_MASK_CLASSES: dict[int, str] = {
    0: "land", 1: "water", 2: "snow", 3: "thin cloud", 4: "thick cloud", 5: "cloud shadow", 6: "no data",
}
#: The classes that count as cloud in a cloud fraction (the index, the filters, the ``default`` config):
#: thin cloud, thick cloud and cloud shadow. Water and snow are not clouds; no data is not either.
CLOUD_CLASSES: tuple[int, ...] = (3, 4, 5)

#: Offset added to S2 L1C/L2A digital numbers in the files (subtract it to get reflectance * 10,000).
S2_OFFSET = 1000

#: Standardization values (mean/std per band) published with the dataset.
MEAN: dict[str, tuple[float, ...]] = {
    "S2L1C": (2607.345, 2393.068, 2320.225, 2373.963, 2562.536, 3110.071, 3392.832, 3321.154, 3583.77, 1838.712,
              1021.753, 3205.112, 2545.798),
    "S2L2A": (1793.243, 1924.863, 2184.553, 2340.936, 2671.402, 3240.082, 3468.412, 3563.244, 3627.704, 3711.071,
              3416.714, 2849.625),
    "S2RGB": (100.708, 87.489, 61.932),
    "S1GRD": (-12.577, -20.265),
}
STD: dict[str, tuple[float, ...]] = {
    "S2L1C": (786.523, 849.702, 875.318, 1143.578, 1126.248, 1161.98, 1273.505, 1246.79, 1342.755, 576.795, 45.626,
              1340.347, 1145.036),
    "S2L2A": (1160.144, 1201.092, 1219.943, 1397.225, 1400.035, 1373.136, 1429.17, 1485.025, 1447.836, 1652.703,
              1471.002, 1365.307),
    "S2RGB": (68.550, 47.647, 40.592),
    "S1GRD": (5.179, 5.872),
}

#: Standardization values of the webdataset release (the authors' loader of that release): the +1000 offset
#: is gone from S2L1C/S2L2A, so their means are the Zarr release's minus 1000; NDVI and DEM have their own;
#: LULC is categorical and has none.
WEBDATASET_MEAN: dict[str, tuple[float, ...]] = {
    **{m: tuple(round(v - S2_OFFSET, 3) for v in MEAN[m]) for m in ("S2L1C", "S2L2A")},
    "S2RGB": MEAN["S2RGB"], "S1GRD": MEAN["S1GRD"], "NDVI": (0.327,), "DEM": (435.726,),
}
WEBDATASET_STD: dict[str, tuple[float, ...]] = {**STD, "NDVI": (0.322,), "DEM": (560.326,)}


def standardization(modality: str, release: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per band of ``modality`` for the files of ``release`` (``"zarr"`` or ``"webdataset"``).

    The release must be named: the two differ by 1000 on S2L1C/S2L2A, and using one's values on the other's
    data is a silent error. ``MEAN``/``STD`` are the Zarr release's.
    """
    tables = {"zarr": (MEAN, STD), "webdataset": (WEBDATASET_MEAN, WEBDATASET_STD)}
    if release not in tables:
        raise ValueError(f"release must be one of {RELEASES}, got {release!r}")
    mean, std = tables[release]
    if modality not in mean:
        raise ValueError(f"no standardization values for {modality} in the {release} release "
                         f"(they exist for {', '.join(mean)}; LULC is categorical)")
    return mean[modality], std[modality]


#: Split names as ``datasets`` knows them, and the folder / file-name word the dataset uses for each.
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "validation": "val"}

#: Where ``load_dataset("ssl4eos12", ...)`` reads from when neither ``data_dir`` nor ``root`` is given: the
#: 64-sample Zarr copy (3,846 small shards split finely over workers and nodes; every file readable alone).
HOSTED_ROOT = "hf://datasets/embed2scale/SSL4EO-S12-v1.1-Zarr"
#: The authors' main Hub repository since February 2026: webdataset tars, with NDVI, LULC and DEM. The
#: default root of configs that need one of those modalities.
WEBDATASET_HOSTED_ROOT = "hf://datasets/embed2scale/SSL4EO-S12-v1.1"
AUTHORS_MIRROR = "https://datapub.fz-juelich.de/ssl4eo-s12"

ZARR_ZIP_SUFFIX = ".zarr.zip"
TAR_SUFFIX = ".tar"


def webdataset_metadata_path(split_folder: str) -> str:
    """Relative path of the webdataset release's metadata parquet of a split (it has a ``tar`` column)."""
    return f"{split_folder}_metadata.parquet"


def shard_name(index: int) -> str:
    """Name of the ``index``-th (1-based) tar of a split of the webdataset release."""
    return f"ssl4eos12_shard_{index:06d}{TAR_SUFFIX}"


def split_list_path(split_folder: str) -> str:
    """Relative path of the optional list of a split's file names (one per line)."""
    return f"splits/ssl4eos12_{split_folder}.txt"


def split_metadata_path(split_folder: str) -> str:
    """Relative path of the authors' GeoParquet index of a split (it has a ``file`` column)."""
    return f"splits/{split_folder}_metadata.parquet"


def index_path(split_folder: str) -> str:
    """Relative path of this package's GeoParquet index of a split (written by ``ssl4eos12 index``)."""
    return f"splits/ssl4eos12_{split_folder}_index.parquet"


def file_name(split_folder: str, index: int) -> str:
    """Name of the ``index``-th (1-based) file of a split, as the dataset names them."""
    return f"ssl4eos12_{split_folder}_seasonal_data_{index:06d}{ZARR_ZIP_SUFFIX}"


HOMEPAGE = "https://huggingface.co/datasets/embed2scale/SSL4EO-S12-v1.1"
LICENSE = "cc-by-4.0"

DESCRIPTION = """\
SSL4EO-S12 v1.1 is a multimodal, multiseasonal Earth-observation pre-training dataset: 246,144 locations, each
seen at four timestamps (one per season) by Sentinel-2 L1C (13 bands), Sentinel-2 L2A (12 bands), a Sentinel-2
true-colour RGB product and Sentinel-1 GRD (VV, VH), as 264 x 264 pixel patches at 10 m, with cloud masks,
timestamps, UTM coordinates and product ids. It is an updated version of SSL4EO-S12 (Wang et al., 2022)."""

CITATION = """\
@article{blumenstiel2025ssl4eos12,
  title={{SSL4EOS12 v1.1 -- A Multimodal, Multiseasonal Dataset for Pretraining}},
  author={Blumenstiel, Benedikt and Braham, Nassim Ait Ali and Albrecht, Conrad M and Maurogiovanni, Stefano and Fraccaro, Paolo},
  journal={arXiv preprint arXiv:2503.00168},
  year={2025}
}

@article{wang2022ssl4eo,
  title={{SSL4EO-S12: A Large-Scale Multi-Modal, Multi-Temporal Dataset for Self-Supervised Learning in Earth Observation}},
  author={Wang, Yi and Braham, Nassim Ait Ali and Xiong, Zhitong and Liu, Chenying and Albrecht, Conrad M and Zhu, Xiao Xiang},
  journal={arXiv preprint arXiv:2211.07044},
  year={2022}
}
"""
