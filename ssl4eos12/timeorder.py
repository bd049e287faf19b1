"""The order of a location's timestamps: the files' own (by date), or by season (month of year).

Both releases store each location's timestamps sorted by date, so the first one may fall in any season. The
authors' loader can reorder them by month of year (their ``reindex_seasonal``); ``time_order="season"`` does
the same here, for every time-indexed variable of every modality at once, so bands, cloud masks, times and
product ids stay together.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import SSL4EOS12DataError
from .sources.base import Block, ModalityFile

#: Values of the ``time_order`` keyword.
TIME_ORDERS = ("file", "season")
#: Variables with a time axis (axis 1, after the sample axis), in both releases.
TIME_VARIABLES = ("bands", "cloud_mask", "time_", "file_id", "sample_id")


def season_order(times: np.ndarray) -> np.ndarray:
    """Per location, the timestamp indices sorted by month of year (by date within a month: stable sort)."""
    months = times.astype("datetime64[M]").astype(np.int64) % 12
    return np.argsort(months, axis=-1, kind="stable")


def by_season(block: Block) -> Block:
    """The block with every modality's timestamps in month-of-year order."""
    return dataclasses.replace(block, parts={m: _by_season(m, part) for m, part in block.parts.items()})


def season_selection(block: Block, selection: dict) -> dict:
    """A file's selection (``{sample: file time indices or None}``, :func:`ssl4eos12.index.select`) in the season
    order of ``block`` (the block as read, before :func:`by_season`), for its locations only.

    Selections judge timestamps in the files' own order. After reordering, position ``t`` of modality ``m`` holds
    its file timestamp ``season_order(times_m)[t]``, and modalities need not share one order (their dates
    differ); a position is kept when every file timestamp it is made of was kept.
    """
    orders = {}
    for modality, part in block.parts.items():
        if part.layout.num_times < 2:
            continue  # one timestamp (DEM): position 0 is file timestamp 0
        rows = block.orders[modality]
        orders[modality] = season_order(part.variables["time_"][rows]) if "time_" in part.variables else None
    mapped = {}
    for i, sample in enumerate(block.reference.samples):
        key = str(sample)
        if key not in selection:
            continue
        times = selection[key]
        if times is None or not orders:
            mapped[key] = times
            continue
        num_times = len(next(order for order in orders.values() if order is not None)[i])
        mapped[key] = frozenset(t for t in range(num_times)
                                if all(int(order[i][t]) in times for order in orders.values() if order is not None))
    return mapped


def _by_season(modality: str, part: ModalityFile) -> ModalityFile:
    if part.layout.num_times < 2:
        return part  # one timestamp (DEM): nothing to order
    if "time_" not in part.variables:
        raise SSL4EOS12DataError(f"{modality} has no timestamps in its files: its time steps cannot be ordered by "
                                 f"season; use time_order='file'")
    order = season_order(part.variables["time_"])
    variables = dict(part.variables)
    for name in TIME_VARIABLES:
        if name in variables:
            values = variables[name]
            variables[name] = np.take_along_axis(values, order.reshape(order.shape + (1,) * (values.ndim - 2)), axis=1)
    return ModalityFile(part.layout, variables)
