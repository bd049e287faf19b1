"""The example schema: ``datasets`` features built from the layouts read from the files, and the examples.

One example is one location (or, with ``single_timestamp``, one location at one timestamp). Shared fields
come first, then per modality ``M``: ``M`` (bands), ``M_cloud_mask``, ``M_time``, ``M_file_id``, ``M_x``,
``M_y``. Array features keep the file's own dtype (int16, float16, uint8, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from .sources.base import Block, Layout, ModalityFile

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
    if layout.has("time_"):
        features[f"{m}_time"] = TIMESTAMP if single_timestamp else datasets.List(TIMESTAMP, length=layout.num_times)
    if layout.has("file_id"):
        string = datasets.Value("string")
        features[f"{m}_file_id"] = string if single_timestamp else datasets.List(string, length=layout.num_times)
    if layout.has("x_"):
        features[f"{m}_x"] = datasets.List(datasets.Value("float64"), length=layout.width)
    if layout.has("y_"):
        features[f"{m}_y"] = datasets.List(datasets.Value("float64"), length=layout.height)
    for name, shape, dtype in layout.statics:
        features[f"{m}_{name}"] = array_feature(shape, dtype)
    return features


def example_features(layouts: Sequence[Layout], single_timestamp: bool = False, keyed: bool = False) -> datasets.Features:
    """The features of the examples; ``keyed``: the layout names locations by member key (``key`` field)."""
    features = {name: feature for name, feature in SHARED_FEATURES.items() if name != "crs" or layouts[0].has("crs")}
    if keyed:
        features = {**dict(list(features.items())[:2]), "key": datasets.Value("string"), **dict(list(features.items())[2:])}
    if single_timestamp:
        features["time_index"] = datasets.Value("int64")
    for layout in layouts:
        features.update(modality_features(layout, single_timestamp))
    return datasets.Features(features)


def location_examples(block: Block, single_timestamp: bool, sample_range: tuple[int, int] | None = None,
                      selection: dict | None = None, copy: bool = True):
    """``(key, example)`` of a block: one per location, or per (location, timestamp).

    Keys are positions in the shard (the block's ``offset`` added), so they stay unique across its blocks;
    ``sample_range`` selects locations by their position in the shard. ``selection``: only these locations
    (``{sample: None or time indices}``, see :func:`ssl4eos12.index.select`); keys stay those of the
    unfiltered examples. ``copy=False``: arrays are views of the block's (see :func:`modality_fields`).
    """
    name, parts, orders = block.file, block.parts, block.orders
    reference = block.reference
    shared = reference.variables
    num_times = reference.layout.num_times
    start, stop = sample_range or (0, None)
    for i in range(len(reference.samples)):
        position = block.offset + i
        if position < start or (stop is not None and position >= stop):
            continue
        sample = reference.samples[i]
        if selection is not None and str(sample) not in selection:
            continue
        times = None if selection is None else selection[str(sample)]
        base = {"sample": str(sample), "file": name}
        if block.keys is not None:
            base["key"] = str(block.keys[i])
        # numpy scalars, as a prepared split's rows give them
        base["center_lat"] = np.float64(shared["center_lat"][i])
        base["center_lon"] = np.float64(shared["center_lon"][i])
        if reference.layout.has("crs"):
            base["crs"] = np.int64(shared["crs"][i])
        if not single_timestamp:
            example = dict(base)
            for modality, part in parts.items():
                example.update(modality_fields(modality, part, orders[modality][i], slice(None), copy))
            yield position, example
            continue
        for t in range(num_times):
            if times is not None and t not in times:
                continue
            example = dict(base, time_index=np.int64(t))
            for modality, part in parts.items():
                example.update(modality_fields(modality, part, orders[modality][i], t, copy))
            yield position * num_times + t, example


def _big(array, row: int, time, copy: bool) -> np.ndarray:
    """One location's values of a big array; a copy where asked, unless the array gives values of their own (a tar
    member's, ``sources.webdataset.Encoded``: no block is kept alive by them)."""
    value = array[row, time]
    return value.copy() if copy and not getattr(array, "owned", False) else value


def modality_fields(modality: str, part: ModalityFile, row: int, time, copy: bool = True) -> dict:
    """One location's fields of one modality; ``time`` is a timestamp index or ``slice(None)`` for all.

    Arrays are copies, not views: a view would keep the whole decoded file alive for as long as the
    consumer (or a shuffle buffer) holds one example of it; but a tar member's arrays are its own
    (``sources.webdataset.Encoded``), so they are given as they are (a single timestamp: a view of its
    member's). ``copy=False`` gives the big arrays (bands, cloud mask) as views, for a consumer that copies them
    at once (a DataLoader worker's collate) or is done with them before the file is freed (the converter).
    """
    v = part.variables
    layout = part.layout
    fields = {modality: _big(v["bands"], row, time, copy)}
    if layout.has_cloud_mask:
        fields[f"{modality}_cloud_mask"] = _big(v["cloud_mask"], row, time, copy)
    if layout.has("time_"):
        fields[f"{modality}_time"] = v["time_"][row, time].copy()
    if layout.has("file_id"):
        fields[f"{modality}_file_id"] = v["file_id"][row, time].tolist()
    if layout.has("x_"):
        fields[f"{modality}_x"] = v["x_"][row].copy()
    if layout.has("y_"):
        fields[f"{modality}_y"] = v["y_"][row].copy()
    for name, _, _ in layout.statics:
        fields[f"{modality}_{name}"] = v[name][row].copy()
    return fields
