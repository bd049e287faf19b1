"""A picture of one example: ``ssl4eos12.plot(example)`` -> a matplotlib ``Figure``.

One row per modality (two for Sentinel-1: VV and VH), one column per timestamp, each panel titled with its
modality and date:

- Sentinel-2 as true colour: S2RGB as stored; S2L2A/S2L1C from B04, B03, B02, the +1000 offset of the Zarr
  release removed, stretched so the 2nd-98th percentiles of the modality's clear pixels (all timestamps
  together, so seasons compare) span black to white;
- Sentinel-1 VV and VH in dB on a fixed grey scale;
- the cloud mask's cloud classes (3-5) drawn as an outline (default) or a translucent overlay;
- any other modality (NDVI, ...) as its first band in a colour map.

Bands in other units than the files' (standardized floats from ``Loader(normalize=True)``, or any float S2RGB,
or Sentinel-1 in another dtype than the files' float16 dB) are stretched the same way, by percentiles: S2RGB
like S2L2A, each Sentinel-1 channel between its own 2nd and 98th percentiles.

Works for examples of every config, time series or single-timestamp, as the builder yields them or as
loaded from the Parquet copy (nested lists), and for one example of a batch (``index=``) as
:func:`ssl4eos12.collate` or :class:`ssl4eos12.Loader` gives it (torch tensors or numpy arrays, timestamps as int64
nanoseconds). matplotlib is an optional extra: ``pip install ssl4eos12[plot]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .constants import BANDS, CLOUD_CLASSES, S2_OFFSET, ZARR_ZIP_SUFFIX
from .errors import require_extra

#: Percentiles of the clear pixels mapped to black and white in Sentinel-2 true colour.
STRETCH = (2.0, 98.0)
#: Fixed dB ranges of the Sentinel-1 panels (black to white).
S1_RANGES = {"vv": (-25.0, 0.0), "vh": (-32.0, -5.0)}
TRUE_COLOUR = ("B04", "B03", "B02")
CLOUD_MASK_STYLES = ("outline", "overlay", None)
PANEL_INCHES = 2.3


def _matplotlib():
    return require_extra("matplotlib.figure", "plot", "ssl4eos12.plot").Figure


def example_modalities(example: dict) -> list[str]:
    """The modalities of an example, in its field order (every modality ``M`` has an ``M_time`` field)."""
    return [name for name in example if f"{name}_time" in example and name != "sample"]


def plot(example: Mapping, *, index: int = 0, modalities: Sequence[str] | None = None,
         cloud_mask: str | None = "outline", stretch: tuple[float, float] = STRETCH, title: str | None = None):
    """A ``Figure`` of one example of any config, or of one example of a batch.

    Args:
        example: one example as the builder (or the Parquet copy) yields it, or a batch of them as
            :func:`ssl4eos12.collate` or :class:`ssl4eos12.Loader` gives it (torch tensors or numpy arrays).
        index: the example of a batch to draw (default: the first); a single example has only index 0.
        modalities: which to draw (default: every one in the example).
        cloud_mask: ``"outline"`` (default), ``"overlay"`` or ``None``: how to show the cloud classes 3-5.
        stretch: percentiles mapped to black and white where bands are stretched (S2L2A/S2L1C true colour, from
            its clear pixels; standardized bands).
        title: the figure's title (default: the location id, file and centre).

    A batch is told from an example by its list of ``sample`` ids (else its ``time_index`` vector, else its
    timestamps ``(B, T)``): its arrays have one more leading axis, ``(B, T, C, H, W)`` or, single-timestamp,
    ``(B, C, H, W)``.
    """
    Figure = _matplotlib()
    if cloud_mask not in CLOUD_MASK_STYLES:
        raise ValueError(f"cloud_mask must be one of {CLOUD_MASK_STYLES}, got {cloud_mask!r}")
    example = one_example(example, index)
    available = example_modalities(example)
    modalities = list(modalities or available)
    unknown = [m for m in modalities if m not in available]
    if unknown:
        raise ValueError(f"the example has no modality {unknown}: it has {available}")
    if not modalities:
        raise ValueError("the example has no modality to plot (no field M with a field M_time)")
    rows = [(m, channel) for m in modalities for channel in _channels(m)]
    columns = max(len(_times(example, m)) for m in modalities)
    figure = Figure(figsize=(max(PANEL_INCHES * columns, 3.5), PANEL_INCHES * len(rows) + 0.6), layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (modality, channel) in enumerate(rows):
        images = _images(example, modality, channel, stretch)
        masks = _cloud_masks(example, modality)
        times = _times(example, modality)
        for c in range(columns):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(images):
                continue
            image, kwargs = images[c]
            ax.imshow(image, interpolation="nearest", **kwargs)
            if masks is not None and cloud_mask is not None:
                _draw_clouds(ax, masks[c], cloud_mask)
            name = modality if channel is None else f"{modality} {channel.upper()}"
            ax.set_title(f"{name}  {_date(times[c])}", fontsize=8)
    figure.suptitle(title if title is not None else _describe(example, "  ·  " if columns > 2 else "\n"), fontsize=9)
    return figure


def is_batch(data: Mapping) -> bool:
    """Whether ``data`` is a batch of examples (see :func:`plot`) rather than one example."""
    if "sample" in data:
        return np.ndim(data["sample"]) >= 1  # a batch's ids are a list; an example's one string
    if "time_index" in data:  # single-timestamp: one index per example
        return np.ndim(_numpy(data["time_index"])) >= 1
    modalities = example_modalities(data)
    # a time series has timestamps (T,), a batch of them (B, T)
    return bool(modalities) and np.ndim(_numpy(data[f"{modalities[0]}_time"])) >= 2


def one_example(data: Mapping, index: int = 0) -> dict:
    """Example ``index`` of a batch, or ``data`` itself (``index`` 0), as numpy values with ``datetime64[ns]``
    timestamps (a batch holds them as int64 nanoseconds since the epoch, see :mod:`ssl4eos12.torch`)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index={index!r}: need an integer, the position of the example in the batch")
    batch = is_batch(data)
    size = _batch_size(data) if batch else 1
    if not -size <= index < size:
        raise ValueError(f"index={index}: the batch holds {size} example(s)" if batch else
                         f"index={index}: a single example (not a batch) has only index 0")
    times = {f"{m}_time" for m in example_modalities(data)}
    example = {}
    for name, value in data.items():
        value = _numpy(value)
        if batch:
            value = value[index]
        if name in times and isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "iu":
            value = value.astype(np.int64).astype("datetime64[ns]")
        example[name] = value
    return example


def _batch_size(batch: Mapping) -> int:
    if "sample" in batch:
        return len(batch["sample"])
    return len(_numpy(next(iter(batch.values()))))


def _numpy(value):
    """A torch tensor (on any device) as numpy, without importing torch; anything else as it is."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return value


def _channels(modality: str) -> list[str | None]:
    return list(BANDS["S1GRD"]) if modality == "S1GRD" else [None]


def _times(example: dict, modality: str) -> list:
    times = example[f"{modality}_time"]
    if isinstance(times, (list, tuple)) or (isinstance(times, np.ndarray) and times.ndim == 1):
        return list(times)
    return [times]  # single timestamp


def _stack(example: dict, field: str, per_time_ndim: int) -> np.ndarray:
    """A field as ``(T, ...)``: single-timestamp examples get a time axis of one."""
    values = np.asarray(example[field])
    return values[None] if values.ndim == per_time_ndim else values


def _band_index(modality: str, band: str) -> int:
    return BANDS[modality].index(band)


def _images(example: dict, modality: str, channel: str | None, stretch) -> list[tuple[np.ndarray, dict]]:
    bands = _stack(example, modality, 3)  # (T, C, H, W)
    counts = bands.dtype.kind in "iu"  # the files' integer values; floats are standardized (or rescaled)
    if modality == "S2RGB" and counts:
        return [(np.moveaxis(b, 0, -1).astype(np.uint8), {}) for b in bands]
    if modality in ("S2L2A", "S2L1C", "S2RGB"):
        rgb = bands[:, [_band_index(modality, b) for b in TRUE_COLOUR]].astype(np.float32)
        if counts:
            rgb -= _offset(example)
        masks = _cloud_masks(example, modality)
        clear = rgb if masks is None else np.moveaxis(rgb, 1, -1)[~np.isin(masks, CLOUD_CLASSES)]
        if clear.size == 0:
            clear = rgb
        low, high = np.nanpercentile(clear, stretch)
        scaled = np.clip((rgb - low) / max(float(high - low), 1e-6), 0, 1)
        return [(np.moveaxis(np.nan_to_num(s), 0, -1), {}) for s in scaled]
    if modality == "S1GRD":
        values = bands[:, _band_index(modality, channel)].astype(np.float32)
        # dB as the files hold them (float16): fixed scales, so locations compare; other units: their own range
        low, high = S1_RANGES[channel] if bands.dtype == np.float16 else _percentiles(values, stretch)
        return [(v, {"cmap": "gray", "vmin": low, "vmax": high}) for v in values]
    values = bands[:, 0].astype(np.float32)
    low, high = _percentiles(values, stretch)
    return [(v, {"cmap": "viridis", "vmin": low, "vmax": high}) for v in values]


def _percentiles(values: np.ndarray, stretch) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return tuple(np.percentile(finite, stretch)) if finite.size else (0.0, 1.0)


def _offset(example: dict) -> float:
    """The +1000 of the Zarr release's S2L1C/S2L2A values (the webdataset release removed it)."""
    return float(S2_OFFSET) if str(example.get("file", "")).endswith(ZARR_ZIP_SUFFIX) else 0.0


def _cloud_masks(example: dict, modality: str) -> np.ndarray | None:
    field = f"{modality}_cloud_mask"
    return _stack(example, field, 2) if field in example else None


def _draw_clouds(ax, mask: np.ndarray, style: str) -> None:
    cloudy = np.isin(mask, CLOUD_CLASSES)
    if not cloudy.any():
        return
    if style == "outline":
        ax.contour(cloudy.astype(np.float32), levels=[0.5], colors="yellow", linewidths=0.8)
    else:
        overlay = np.zeros(mask.shape + (4,), dtype=np.float32)
        overlay[cloudy] = (1.0, 0.9, 0.0, 0.45)
        ax.imshow(overlay, interpolation="nearest")


def _date(value) -> str:
    stamp = np.datetime64(value, "s") if not isinstance(value, np.datetime64) else value.astype("datetime64[s]")
    if np.isnat(stamp) or stamp == np.datetime64(0, "s"):
        return "no date"  # DEM: time 0
    return str(stamp.astype("datetime64[D]"))


def _describe(example: dict, separator: str) -> str:
    parts = []
    if "sample" in example:
        parts.append(f"location {example['sample']}")
    if "center_lat" in example and "center_lon" in example:
        parts.append(f"{float(example['center_lat']):.4f}°, {float(example['center_lon']):.4f}°")
    if "file" in example:
        parts.append(str(example["file"]))
    return separator.join(parts)


def show(data_dir: str, sample: str, out: str | None = None, *, config: str = "all",
         split: str | None = None, single_timestamp: int | None = None, index: str | None = None,
         **plot_kwargs) -> str:
    """Plot location ``sample`` of ``data_dir`` to a PNG (default ``SAMPLE.png``); return its path.

    The location is found through the index (``samples=[sample]``) where there is one: on the tar release only its
    members are fetched (:meth:`ssl4eos12.Locations.by_sample`), on the Zarr release its file is read; else the
    splits are read in turn. ``single_timestamp``: plot that time index only. ``index``: the index, when it is not
    in ``DATA_DIR/splits/`` (a remote root's, written elsewhere with ``ssl4eos12 index ROOT --out PATH``).
    """
    _matplotlib()
    example = find_example(data_dir, sample, config=config, split=split, index=index)
    if single_timestamp is not None:
        example = one_timestamp(example, single_timestamp)
    out = out or f"{sample}.png"
    figure = plot(example, **plot_kwargs)
    figure.savefig(out, dpi=110)
    return os.fspath(out)


def find_example(data_dir: str, sample: str, *, config: str = "all", split: str | None = None,
                 index: str | None = None) -> dict:
    """The example of location ``sample``: through the index where there is one (:class:`ssl4eos12.Locations`,
    ``samples=[sample]``: on the tar release only that location's members are fetched), else streamed until it
    turns up."""
    import warnings

    import datasets

    from .constants import SPLIT_FOLDERS
    from .errors import SSL4EOS12DataError, SSL4EOS12EmptySelectionWarning
    from .locations import Locations

    splits = [split] if split else list(SPLIT_FOLDERS)
    for name in splits:
        try:
            with warnings.catch_warnings():  # a split without the location: the next one is tried
                warnings.simplefilter("ignore", SSL4EOS12EmptySelectionWarning)
                locations = Locations(config, data_dir=str(data_dir), split=name, samples=[sample], index=index)
            try:
                found = locations.by_sample(sample)
            except KeyError:
                found = None
        except SSL4EOS12DataError:  # an index without member offsets: its tar streamed; no index: the split
            kwargs = {} if index is None else {"index": index}
            try:
                stream = datasets.load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=name,
                                               streaming=True, samples=[sample], **kwargs)
                found = next(iter(stream), None)
            except SSL4EOS12DataError:
                stream = datasets.load_dataset("ssl4eos12", config, data_dir=str(data_dir), split=name,
                                               streaming=True)
                found = next((e for e in stream if e["sample"] == sample), None)
        except ValueError as err:  # datasets: no such split in this root
            if "split" not in str(err).lower():
                raise
            continue
        if found is not None:
            return found
    raise SSL4EOS12DataError(f"{data_dir}: no location {sample!r} in split(s) {splits}")


def one_timestamp(example: dict, t: int) -> dict:
    """A time-series example cut to its time index ``t`` (the single-timestamp example's fields)."""
    modalities = example_modalities(example)
    cut = dict(example, time_index=t)
    for m in modalities:
        times = _times(example, m)
        if not 0 <= t < len(times):
            raise ValueError(f"time index {t} out of range: {m} has {len(times)} timestamps")
        cut[m] = np.asarray(example[m])[t]
        cut[f"{m}_time"] = times[t]
        if f"{m}_cloud_mask" in example:
            cut[f"{m}_cloud_mask"] = np.asarray(example[f"{m}_cloud_mask"])[t]
        if f"{m}_file_id" in example:
            cut[f"{m}_file_id"] = list(example[f"{m}_file_id"])[t]
    return cut
