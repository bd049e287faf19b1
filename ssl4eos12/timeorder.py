"""The order of a location's timestamps: the files' own (by date), or by season (month of year).

Both releases store each location's timestamps sorted by date, so the first one may fall in any season. The
authors' loader can reorder them by month of year (their ``reindex_seasonal``); ``time_order="season"`` follows
their rule, for every time-indexed variable (bands, cloud masks, times, product ids) of every modality at once:

- The *reference* is the first modality of the config (in its ``modalities`` order) that has dates: a ``time_``
  variable and more than one timestamp per location. DEM (one timestamp, time 0: no date) never is; neither is a
  modality without timestamps in its files. The authors pick the first modality whose times are not 0, which
  in both releases is the same one; a dated modality with a single timestamp (none in the releases) would give
  them an order of one and leave every other modality as it is, where here it is passed over.
- Per location, the season order is the argsort of the month of year of the reference's times (January
  first), stable: two timestamps of one month keep their date order (the authors leave such ties to numpy's
  default sort).
- Every modality with the reference's number of timestamps is permuted by that one order, so position ``t`` of
  every modality is the same acquisition round: where Sentinel-2's dates straddle New Year and Sentinel-1's do
  not (S2 on 5 January, S1 on 31 December of the same round), S1 follows S2's months, not its own.
- A modality with one timestamp (DEM) stays as it is. A modality with any other number of timestamps than the
  reference's has no place in the reference's order: :class:`~ssl4eos12.errors.SSL4EOS12DataError` (the authors'
  loader silently leaves it in date order, misaligned). The same error where a modality has several
  timestamps and no modality of the config has dates to order them by.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import SSL4EOS12DataError
from .sources.base import Block

#: Values of the ``time_order`` keyword.
TIME_ORDERS = ("file", "season")
#: Variables with a time axis (axis 1, after the sample axis), in both releases.
TIME_VARIABLES = ("bands", "cloud_mask", "time_", "file_id", "sample_id")


def season_order(times: np.ndarray) -> np.ndarray:
    """Per location, the timestamp indices sorted by month of year (by date within a month: stable sort)."""
    months = times.astype("datetime64[M]").astype(np.int64) % 12
    return np.argsort(months, axis=-1, kind="stable")


def season_reference(block: Block) -> str | None:
    """The modality whose months give the season order of ``block`` (see the module docstring), or ``None``."""
    return next((modality for modality, part in block.parts.items()
                 if part.layout.num_times > 1 and part.layout.has("time_")), None)


def block_season_order(block: Block) -> np.ndarray | None:
    """``(locations, times)``: per row of the block (its first modality's order), the file timestamp that each
    season position holds, shared by every modality; ``None`` where no modality has more than one timestamp.

    Raises :class:`SSL4EOS12DataError` when a modality cannot follow the order (module docstring).
    """
    reference = season_reference(block)
    if reference is None:
        several = next((m for m, part in block.parts.items() if part.layout.num_times > 1), None)
        if several is None:
            return None
        raise SSL4EOS12DataError(
            f"{several} has {block.parts[several].layout.num_times} timestamps per location but no dates in its "
            f"files, and no modality of {list(block.parts)} has dates to order them by season; use "
            f"time_order='file'")
    num_times = block.parts[reference].layout.num_times
    for modality, part in block.parts.items():
        if part.layout.num_times not in (1, num_times):
            raise SSL4EOS12DataError(
                f"{modality} has {part.layout.num_times} timestamps per location, but {reference}, whose months "
                f"give the season order, has {num_times}: one order cannot serve both; use time_order='file', or "
                f"load {modality} separately")
    return season_order(block.parts[reference].variables["time_"][block.orders[reference]])


def by_season(block: Block) -> Block:
    """The block with every modality's timestamps in the season order of its reference modality."""
    order = block_season_order(block)
    if order is None:
        return block
    parts = {}
    for modality, part in block.parts.items():
        if part.layout.num_times == 1:
            parts[modality] = part  # a static layer (DEM): nothing to order
            continue
        # the order is per block row; the modality's own row of block row i is orders[modality][i]
        rows = np.broadcast_to(np.arange(order.shape[1]), (len(part.samples), order.shape[1])).copy()
        rows[block.orders[modality]] = order
        variables = dict(part.variables)
        for name in TIME_VARIABLES:
            if name in variables:
                values = variables[name]
                if hasattr(values, "take_times"):  # left encoded (sources.webdataset.Encoded): reordered when decoded
                    variables[name] = values.take_times(rows)
                    continue
                variables[name] = np.take_along_axis(values, rows.reshape(rows.shape + (1,) * (values.ndim - 2)),
                                                     axis=1)
        parts[modality] = dataclasses.replace(part, variables=variables)
    return dataclasses.replace(block, parts=parts)


def season_selection(block: Block, selection: dict) -> dict:
    """A file's selection (``{sample: file time indices or None}``, :func:`ssl4eos12.index.select`) in the season
    order of ``block`` (the block as read, before :func:`by_season`), for its locations only.

    Selections judge timestamps in the files' own order, every modality's file timestamp ``t`` together. After
    reordering, position ``t`` of every modality holds file timestamp ``block_season_order(block)[i, t]`` (one
    order for all), so a position is kept when that file timestamp was kept.
    """
    order = block_season_order(block)
    mapped = {}
    for i, sample in enumerate(block.samples):
        key = str(sample)
        if key not in selection:
            continue
        times = selection[key]
        if times is None or order is None:
            mapped[key] = times
            continue
        mapped[key] = frozenset(t for t in range(order.shape[1]) if int(order[i, t]) in times)
    return mapped
