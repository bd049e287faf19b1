"""The example schema: ``datasets`` features built from the layouts read from the files.

One example is one location (or, with ``single_timestamp``, one location at one timestamp). Shared fields
come first, then per modality ``M``: ``M`` (bands), ``M_cloud_mask``, ``M_time``, ``M_file_id``, ``M_x``,
``M_y``. Array features keep the file's own dtype (int16, float16, uint8, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from .zarrzip import Layout

SHARED_FEATURES = {
    "sample": datasets.Value("string"),
    "file": datasets.Value("string"),
    "center_lat": datasets.Value("float64"),
    "center_lon": datasets.Value("float64"),
    "crs": datasets.Value("int64"),
}
TIMESTAMP = datasets.Value("timestamp[ns]")
_ARRAY_TYPES = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}


def array_feature(shape: Sequence[int], dtype: str) -> datasets.features.features.FeatureType:
    """``ArrayND`` for 2 to 5 dims, a fixed-length list for 1 (``datasets`` has no ``Array1D``)."""
    if len(shape) == 1:
        return datasets.List(datasets.Value(dtype), length=shape[0])
    if len(shape) not in _ARRAY_TYPES:
        raise ValueError(f"arrays of {len(shape)} dimensions do not fit a datasets feature (2 to 5 supported)")
    return _ARRAY_TYPES[len(shape)](shape=tuple(shape), dtype=dtype)


def modality_features(layout: Layout, single_timestamp: bool = False) -> dict:
    m = layout.modality
    time_axis = () if single_timestamp else (layout.num_times,)
    features = {m: array_feature(time_axis + layout.bands_shape, layout.bands_dtype)}
    if layout.has_cloud_mask:
        features[f"{m}_cloud_mask"] = array_feature(time_axis + (layout.height, layout.width), "uint8")
    if single_timestamp:
        features[f"{m}_time"] = TIMESTAMP
        features[f"{m}_file_id"] = datasets.Value("string")
    else:
        features[f"{m}_time"] = datasets.List(TIMESTAMP, length=layout.num_times)
        features[f"{m}_file_id"] = datasets.List(datasets.Value("string"), length=layout.num_times)
    features[f"{m}_x"] = datasets.List(datasets.Value("float64"), length=layout.width)
    features[f"{m}_y"] = datasets.List(datasets.Value("float64"), length=layout.height)
    return features


def example_features(layouts: Sequence[Layout], single_timestamp: bool = False) -> datasets.Features:
    features = dict(SHARED_FEATURES)
    if single_timestamp:
        features["time_index"] = datasets.Value("int64")
    for layout in layouts:
        features.update(modality_features(layout, single_timestamp))
    return datasets.Features(features)
