"""The training fast path: ``ssl4eos12.Loader``, batches decoded by threads into reusable buffers.

A ``torch.utils.data.DataLoader`` over the streaming builder decodes in worker processes and sends every batch
to the training process through shared memory, where one thread pins it: on a 16-core machine with one GPU
that trip, not the decoding, kept the GPU waiting. ``Loader`` decodes in a pool of threads of the training
process itself (Blosc and :mod:`~ssl4eos12.sources.fastzip` release the GIL), each source file once, and gathers
each batch once, straight from the decoded arrays into its batch buffers (page-locked where CUDA is available),
ready for a non-blocking copy to the device. No worker processes, no per-example Python dicts.

One epoch runs as a pipeline. Its order is computed before anything is decoded, from ``(seed, epoch)`` and each
shard's number of examples alone (:mod:`ssl4eos12.sampling`), so the same seed and epoch give the same batches
whatever the thread timing, every rank knows its number of batches up front, and a position is a few integers:

- **plan**: the builder resolves the split as ``load_dataset`` would (config, modalities, ``single_timestamp``,
  root, and any builder keyword that selects files or rows) into a :class:`~ssl4eos12.catalog.Catalog`, one
  entry per shard with its number of examples; the epoch's shard order is seeded, and every rank takes a
  contiguous, equally long stretch of it (:func:`~ssl4eos12.sampling.partition`), shuffled across
  ``shuffle_window`` consecutive shards at a time (:func:`~ssl4eos12.sampling.rank_order`);
- **decode**: the shards of the current window, and up to ``prefetch`` shards of the next ones, by
  ``num_threads`` threads (``Source.blocks``); once an epoch has nothing left to read, they decode the next
  epoch's first window (epoch + 1 from its start), which that epoch's ``iter()`` takes as it is, so that its first
  batch does not wait for a whole window to be read (measured on 2 cores, authors'-stack S2L2A tars: 108 ms ->
  28-43 ms, 5% of a 1,024-example epoch); what it does not need is dropped, a bad shard is decoded again (and
  skipped or raised) in its own epoch, and the epoch's end waits for those decodes (begun about a window's
  consumption earlier, so mostly done by then). From a local root only: from a remote one that would download a
  window for an epoch that may not come;
- **gather**: each batch is copied (cropped, and standardized when asked) into its buffers by gather threads;
  on the tar release, a member's bands and cloud mask are not decoded ahead but here, by ``num_threads`` gather
  threads, straight into the example's batch slot (only the timestamp a ``single_timestamp`` example needs):
  one write of the decoded bytes instead of a decode and a copy (``sources.webdataset.Encoded``; with
  ``on_bad_file="skip"`` they are decoded ahead as before, so that a bad member skips its tar);
- **hand-over**: batches in order; with ``device=``, copied to the device one batch ahead (CUDA: on a side
  stream, non-blocking, from pinned memory).

Memory, stated: at most ``prefetch + 2 * shuffle_window`` decoded shards (the window being read, the next one
and those decoded ahead beyond it; at an epoch's end, its last window, and the next epoch's first, kept between
epochs), plus the shards that batches still being gathered draw from (none once their
gather ends), plus ``batches_ahead + 3`` batch buffers and the batches the consumer keeps. One S2L2A file of
64 locations is 446 MB decoded, one file of all four modalities 1.07 GB: with 16 threads and the defaults,
streaming ``S2L2A`` holds at most about (16 + 8) x 446 MB ~ 10.7 GB. On the tar release a "decoded" shard holds
its members' compressed bytes and small arrays (a local tar's pages mapped from the page cache, ~1/1.6 of the
decoded size for S2L2A) until its examples are gathered. Lower ``prefetch`` to bound it further
(decoding then runs on at most ``prefetch`` threads beyond the window). The decoded files' big arrays are decoded
into again once nothing refers to them (a fresh file-sized array costs the kernel more than decoding it: see
:class:`~ssl4eos12.sources.fastzip.ArrayPool`); they are kept across epochs within that bound, and dropped by a
``break`` or an exception.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import os
import queue
import sys
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .builder import SSL4EOS12
from .catalog import Catalog, Entry, resolve
from .constants import standardization
from .errors import SSL4EOS12BadFileWarning, SSL4EOS12DataError, SSL4EOS12FileError, require_extra
from .index import selected_times
from .sampling import (
    EVEN_CHOICES,
    Segment,
    batch_count,
    epoch_order,
    group_seed,
    partition,
    per_rank,
    rank_order,
    remaining,
)
from .sources import Block, Layout, fastzip, webdataset
from .sources.remote import is_remote
from .sources.webdataset import Encoded
from .timeorder import by_season, season_selection
from .torch import timestamps_to_int64

#: How often waiting threads look at the stop event (seconds): the longest a ``break`` waits for a wait.
_POLL = 0.05
CROP_MODES = ("random", "center")


# ----------------------------------------------------------------------------------------------------------------
# Ranks
# ----------------------------------------------------------------------------------------------------------------


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else ``torch.distributed`` when initialized, else the environment's
    ``RANK``/``WORLD_SIZE``, else ``(0, 1)``. Arguments given while ``torch.distributed`` is initialized must be its
    own (``ValueError`` otherwise): a loader planned for another world size leaves examples out or reads them
    twice, and one planned for another rank repeats a neighbour's batches."""
    job = _torch_distributed_rank()
    if job is not None:
        wrong = [f"{name}={given!r}" for name, given, actual in (("rank", rank, job[0]), ("world_size", world_size, job[1]))
                 if given is not None and given != actual]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} given, but torch.distributed runs this process as rank {job[0]} of "
                             f"world_size {job[1]}: leave rank= and world_size= out (they default to torch.distributed's)")
    if rank is None or world_size is None:
        found = job or _environment_rank()
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank={rank!r}, world_size={world_size!r}: need integers with 0 <= rank < world_size")
    return rank, world_size


def _torch_distributed_rank() -> tuple[int, int] | None:
    torch = sys.modules.get("torch")  # a torch.distributed job has imported torch; do not import it for numpy users
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None


def _environment_rank() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            raise ValueError(f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r} in the "
                             "environment: need integers (or pass rank= and world_size=)") from None
    return 0, 1


# ----------------------------------------------------------------------------------------------------------------
# The fields of a batch, and how each is filled from a decoded block
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """One key of a batch: where its values come from and the shape of one example's value."""

    name: str
    modality: str | None  # None: a shared field, read from the block's first modality
    variable: str  # the source variable ("sample", "file", "time_index" are not variables)
    strings: bool
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    timed: bool = False  # the variable has a time axis after the sample axis
    crop: str = ""  # "yx": the last two axes; "x" / "y": a coordinate vector
    standardize: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) applied in the gather


def _fields(plan: Catalog, crop: int | None, gather_norms: Mapping[str, tuple]) -> list[_Field]:
    """The batch's keys, in the order of the builder's features (so, of ``collate``'s batches)."""
    single = plan.single_timestamp
    by_modality = {layout.modality: layout for layout in plan.layouts}
    known: dict[str, _Field] = {
        "sample": _Field("sample", None, "sample", True),
        "file": _Field("file", None, "file", True),
        "key": _Field("key", None, "key", True),  # the member key of a location (the tar release)
        "center_lat": _Field("center_lat", None, "center_lat", False, (), np.dtype("float64")),
        "center_lon": _Field("center_lon", None, "center_lon", False, (), np.dtype("float64")),
        "crs": _Field("crs", None, "crs", False, (), np.dtype("int64")),
        "time_index": _Field("time_index", None, "time_index", False, (), np.dtype("int64")),
    }
    for m, layout in by_modality.items():
        times = () if single else (layout.num_times,)
        height, width = (crop, crop) if crop else (layout.height, layout.width)
        bands_shape = layout.bands_shape[:-2] + (height, width) if crop else layout.bands_shape
        known[m] = _Field(m, m, "bands", False, times + bands_shape,
                          np.dtype("float32") if m in gather_norms else np.dtype(layout.bands_dtype),
                          True, "yx" if crop else "", gather_norms.get(m))
        known[f"{m}_cloud_mask"] = _Field(f"{m}_cloud_mask", m, "cloud_mask", False, times + (height, width),
                                          np.dtype("uint8"), True, "yx" if crop else "")
        known[f"{m}_time"] = _Field(f"{m}_time", m, "time_", False, times, np.dtype("int64"), True)
        known[f"{m}_file_id"] = _Field(f"{m}_file_id", m, "file_id", True, timed=True)
        known[f"{m}_x"] = _Field(f"{m}_x", m, "x_", False, (width,), np.dtype("float64"), crop="x" if crop else "")
        known[f"{m}_y"] = _Field(f"{m}_y", m, "y_", False, (height,), np.dtype("float64"), crop="y" if crop else "")
    fields, unknown = [], []
    for name in plan.features:
        (fields if name in known else unknown).append(known.get(name, name))
    if unknown:
        warnings.warn(f"Loader leaves out field(s) it cannot gather: {', '.join(unknown)}", stacklevel=3)
    return fields


# ----------------------------------------------------------------------------------------------------------------
# Batch buffers
# ----------------------------------------------------------------------------------------------------------------


class _Buffers:
    """The arrays one batch is gathered into (``host``: numpy, written by the gather threads)."""

    def __init__(self, host: dict[str, np.ndarray], tensors: dict | None = None):
        self.host = host
        self.tensors = tensors  # pinned torch tensors sharing host's memory, or None
        self.idle = _refcounts(self.host)


def _refcounts(arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
    # every view and every tensor made from a view holds a reference to its base array
    return tuple(sys.getrefcount(array) for array in arrays.values())


class _BatchMemory:
    """Batch buffers, reused.

    Pinned (CUDA): a fresh ``torch.empty(..., pin_memory=True)`` per batch; torch's caching host allocator
    recycles the page-locked blocks, and only once the non-blocking copies that read a block have finished.
    Otherwise: numpy arrays, reused once nothing outside the loader refers to them any more (every view and
    every tensor made from one holds a reference to its base array), so a batch the consumer keeps is never
    overwritten; a kept batch is replaced by a new allocation instead.
    """

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], np.dtype]], pin: bool, keep: int):
        self.specs = specs
        self.pin = pin
        self.retired: collections.deque[_Buffers] = collections.deque(maxlen=keep)
        # free threading makes sys.getrefcount approximate: no reuse there
        self.reuse = not pin and getattr(sys, "_is_gil_enabled", lambda: True)()

    def acquire(self) -> _Buffers:
        if self.pin:
            import torch

            tensors = {name: torch.empty(shape, dtype=_torch_dtype(dtype), pin_memory=True)
                       for name, (shape, dtype) in self.specs.items()}
            return _Buffers({name: tensor.numpy() for name, tensor in tensors.items()}, tensors)
        if self.reuse:
            for _ in range(len(self.retired)):
                buffers = self.retired.popleft()
                if _refcounts(buffers.host) == buffers.idle:
                    return buffers
                self.retired.append(buffers)
        return _Buffers({name: np.empty(shape, dtype) for name, (shape, dtype) in self.specs.items()})

    def retire(self, buffers: _Buffers) -> None:
        """``buffers`` went to the consumer: reusable once it lets go of them (the oldest are forgotten)."""
        if self.reuse:
            self.retired.append(buffers)


def _torch_dtype(dtype: np.dtype):
    import torch

    return torch.from_numpy(np.empty(0, dtype)).dtype


# ----------------------------------------------------------------------------------------------------------------
# One decoded shard: its blocks, and where each of its examples lies in them
# ----------------------------------------------------------------------------------------------------------------


class _Unit:
    """A decoded block and its arrays resolved per field. An example is ``row * num_times + t`` (``num_times`` 1
    unless single_timestamp)."""

    def __init__(self, block: Block, num_times: int, fields: Sequence[_Field]):
        self.block = block
        self.num_times = num_times
        self.samples = block.samples.tolist()
        self.keys = None if block.keys is None else block.keys.tolist()
        self.sources = [self._source(field) for field in fields]

    def _source(self, field: _Field):
        """(array, row order) a field's values come from; (None, None) for fields not read from a variable."""
        if field.variable in ("sample", "file", "key", "time_index"):
            return None, None
        modality = field.modality or next(iter(self.block.parts))
        array = self.block.parts[modality].variables[field.variable]
        if array.dtype.kind == "M":
            array = timestamps_to_int64(array)  # what collate gives for timestamps
        order = None if field.modality is None else self.block.orders[field.modality]
        return array, order


class _Shard:
    """A decoded shard: its ``j``-th example (in the shard's order, as the builder yields them) lies in unit
    ``units[unit_of[j]]`` as its example ``example_of[j]``."""

    def __init__(self, units: list[_Unit], examples: list[np.ndarray]):
        self.units = units
        self.unit_of = np.repeat(np.arange(len(units)), [len(e) for e in examples])
        self.example_of = np.concatenate(examples) if examples else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.example_of)


def _decoded_shard(block_list: list[Block], entry: Entry, num_times: int, fields, time_order: str) -> _Shard:
    """The blocks of a shard as the examples ``entry`` asks for (its rows index the shard's locations across its
    blocks; its selection names samples and their time indices), timestamps in ``time_order``."""
    units, examples, offset = [], [], 0
    for block in block_list:
        selection = entry.selection
        if time_order == "season":  # as the builder does: the selection's time indices follow the new order
            if selection is not None and selected_times(selection) is not None:
                selection = season_selection(block, selection)
            block = by_season(block)
        size = len(block)
        rows = np.arange(size)
        if entry.rows is not None:
            rows = entry.rows[(entry.rows >= offset) & (entry.rows < offset + size)] - offset
        offset += size
        kept = _examples(block.samples, rows, selection, num_times)
        if len(kept):
            units.append(_Unit(block, num_times, fields))
            examples.append(kept)
    return _Shard(units, examples)


def _examples(samples: np.ndarray, rows: np.ndarray, selection, num_times: int) -> np.ndarray:
    """``row * num_times + t`` of the examples kept, in the block's order (as the builder yields them)."""
    if selection is None:
        return (rows[:, None] * num_times + np.arange(num_times)).ravel()
    kept = []
    for row in rows.tolist():
        sample = str(samples[row])
        if sample in selection:
            times = selection[sample]
            # a time series is kept whole; one timestamp at a time, only the selected ones
            kept += [row * num_times + t for t in range(num_times) if num_times == 1 or times is None or t in times]
    return np.asarray(kept, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# A batch's picks, and the crop corners
# ----------------------------------------------------------------------------------------------------------------


class _Picks:
    """The examples of one batch: unit, location row in the block, timestamp and crop corner of each."""

    def __init__(self):
        self.units, self.rows, self.times, self.tops, self.lefts = [], [], [], [], []

    def add(self, unit: _Unit, row: int, time: int | None, top: int, left: int) -> None:
        self.units.append(unit)
        self.rows.append(row)
        self.times.append(time)
        self.tops.append(top)
        self.lefts.append(left)

    def __len__(self) -> int:
        return len(self.units)


def _corners(layout: Layout, crop: int | None, mode: str, count: int, seed) -> np.ndarray:
    """``(count, 2)`` crop corners (top, left) of a group's examples: random from ``seed`` (a function of the
    group's place in the epoch, so a resumed epoch crops the same), or centred; zeros without cropping."""
    if not crop:
        return np.zeros((count, 2), np.int64)
    if mode != "random":
        return np.tile([(layout.height - crop) // 2, (layout.width - crop) // 2], (count, 1))
    spans = np.array([layout.height - crop + 1, layout.width - crop + 1])
    return (np.random.default_rng(seed).random((count, 2)) * spans).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# The gather: a batch's examples into its buffers
# ----------------------------------------------------------------------------------------------------------------


def _gather(fields: Sequence[_Field], crop: int | None, picks: _Picks, buffers: _Buffers,
            strings: dict[str, list], start: int, stop: int) -> None:
    """Fill examples ``start:stop`` of a batch (one gather task); numpy's copies release the GIL."""
    host = buffers.host
    for j in range(start, stop):
        unit, row, t = picks.units[j], picks.rows[j], picks.times[j]
        top, left = picks.tops[j], picks.lefts[j]
        for field, (array, order) in zip(fields, unit.sources):
            if field.variable == "sample":
                strings["sample"][j] = unit.samples[row]
                continue
            if field.variable == "file":
                strings["file"][j] = unit.block.file
                continue
            if field.variable == "key":
                strings["key"][j] = str(unit.keys[row])
                continue
            if field.variable == "time_index":
                host["time_index"][j] = t
                continue
            r = row if order is None else order[row]
            if isinstance(array, Encoded) and not field.crop and field.standardize is None:
                array.decode_into(r, host[field.name][j], t if field.timed else None)  # straight into its slot
                continue
            value = array[r, t] if (t is not None and field.timed) else array[r]
            if field.strings:
                strings[field.name][j] = value.tolist() if isinstance(value, np.ndarray) else str(value)
                continue
            if field.crop == "yx":
                value = value[..., top:top + crop, left:left + crop]
            elif field.crop == "x":
                value = value[left:left + crop]
            elif field.crop == "y":
                value = value[top:top + crop]
            out = host[field.name]
            if field.standardize is None:
                out[j] = value
            else:  # the same float32 operations as (x.astype(float32) - mean) / std
                mean, std = field.standardize
                np.subtract(value, mean, out=out[j])
                np.divide(out[j], std, out=out[j])


# ----------------------------------------------------------------------------------------------------------------
# The public loader
# ----------------------------------------------------------------------------------------------------------------

#: The version of :meth:`Loader.state_dict`'s layout.
STATE_VERSION = 1


@dataclass(frozen=True, eq=False)
class _RankPlan:
    """One rank's part of an epoch (:meth:`Loader._plan`): ``order`` rows are ``(entry, example)`` in reading order,
    ``groups`` its spans read together (the shuffle window), ``skip`` the examples already done (a resumed epoch)."""

    epoch: int
    segments: list[Segment]
    order: np.ndarray
    groups: list[slice]
    counts: tuple[int, ...]
    segment: int
    skip: int


class Loader:
    """Batches of SSL4EO-S12 for training, decoded by threads into reusable (pinned) buffers.

    Args:
        config: a config name (``"all"``, ``"S2L2A"``, ...), as for ``load_dataset("ssl4eos12", config)``.
        data_dir, root: the data root (local path, ``http(s)://``, ``hf://``); neither: the hosted copy.
        split: ``"train"`` or ``"validation"``.
        batch_size: examples per batch.
        shuffle: shuffle shards per epoch and examples within a window of ``shuffle_window`` decoded shards.
        seed: with the epoch, fixes the order, the crops and the rank's shards: same seed and epoch, same batches.
        num_threads: decoding threads (default: the CPUs this process may use); ``max(1, num_threads // 4)``
            more threads gather the batches (``num_threads`` on the tar release, whose gather decodes the bands).
        rank, world_size: this process's part of a distributed job (default: ``torch.distributed`` when
            initialized, else ``RANK``/``WORLD_SIZE``, else 0 and 1). Every rank yields the same number of
            batches, ``len(loader)``, in every epoch (a rank that stops early hangs the others in their next
            collective): the epoch's examples are balanced over the ranks by example, each rank reading a
            contiguous stretch of the epoch's shard order (so few shards, some shared with a neighbour rank).
        even: the examples that do not divide over the ranks: ``"drop"`` (default) leaves out at most
            ``world_size - 1`` per epoch, different ones each epoch when shuffling; ``"pad"`` repeats that many
            from the start of the epoch's order instead, so that every example is read at least once.
        drop_last: drop the last, smaller batch of each rank's epoch (then at most
            ``world_size * batch_size - 1`` examples are left out); it is equally small on every rank.
        crop: crop bands, cloud masks and the ``x``/``y`` coordinates to ``crop`` x ``crop`` pixels (the same
            window for every modality and timestamp of an example).
        crop_mode: ``"random"`` (default when shuffling) or ``"center"`` (default otherwise).
        normalize: standardize the bands with the release's published mean and std per band
            (:func:`ssl4eos12.constants.standardization`), or with ``{modality: (mean, std)}``; bands become
            float32. Done in the gather, or on the device when ``device`` is given (only the native dtype
            crosses to the device).
        device: copy each batch to this torch device (CUDA: non-blocking, from pinned memory, on a side
            stream, one batch ahead); default: batches stay in host memory.
        numpy: give numpy arrays instead of torch tensors (torch is not needed then); timestamps stay
            ``datetime64[ns]``.
        pin_memory: page-locked batch buffers (default: when CUDA is available and ``numpy`` is off).
        prefetch: shards decoded ahead (default ``num_threads``); the main term of the memory bound.
        shuffle_window: decoded shards (source files, or tars) whose examples are mixed (default 4).
        batches_ahead: batches gathered ahead of the consumer (default 4).
        **builder_keywords: any ``SSL4EOS12Config`` keyword (``modalities``, ``single_timestamp``,
            ``time_order``, ``on_bad_file``, the filters, ...) and the builder's ``token`` / ``storage_options``.
            ``time_order="season"`` orders as the builder does (:mod:`ssl4eos12.timeorder`): every modality by the
            months of the first of ``modalities`` with more than one dated timestamp, so slot t of each modality
            is one acquisition round; DEM (one timestamp) stays; another number of timestamps raises
            ``SSL4EOS12DataError`` when its shard is decoded.

    Each batch is a dict like :func:`ssl4eos12.collate`'s: arrays ``(B, ...)`` in the files' dtypes (int16,
    uint8, float16; float32 where standardized), timestamps as int64 nanoseconds since the epoch, strings as
    lists. ``len()`` counts the batches of an epoch on this rank, the same on every rank (from each shard's
    number of examples: the filters' selection, the index or metadata, else a probe of each shard's metadata,
    once). Iterating runs the next epoch, which begins with its first batch (an iterator dropped unused moves
    nothing on); ``set_epoch(n)`` chooses it. A ``break``, an exception or dropping the iterator stops and joins
    every thread (after the decodes in progress, at most one file's decoding time).

    Resuming: :meth:`state_dict` is the position after the last batch handed out (a small JSON-serialisable
    dict); :meth:`load_state_dict` on a new ``Loader`` with the same arguments continues with exactly the
    batches the uninterrupted run would have given, and the epochs after. All ranks step in lockstep, so one
    rank's state (rank 0's, saved in the checkpoint) serves every rank. Loaded on another ``world_size`` (or
    ``batch_size``), the rest of that epoch is shared out anew: no example of it is lost or read twice (beyond
    the ``even`` rule); the epochs after run as a fresh run on the new world size. The order of an epoch depends
    on ``(seed, epoch)`` only (and, within a resumed epoch, on the world sizes it ran on).

    Memory: at most ``prefetch + 2 * shuffle_window`` decoded shards plus ``batches_ahead + 3`` batches and what
    the consumer keeps (see the module docstring for figures).
    """

    def __init__(
        self, config: str = "all", *, data_dir: str | None = None, root: str | None = None,
        split: str = "train", batch_size: int = 8, shuffle: bool = True, seed: int = 0,
        num_threads: int | None = None, rank: int | None = None, world_size: int | None = None,
        drop_last: bool = False, crop: int | None = None, crop_mode: str | None = None,
        normalize: bool | Mapping[str, tuple[Sequence[float], Sequence[float]]] = False,
        device=None, numpy: bool = False, pin_memory: bool | None = None, prefetch: int | None = None,
        shuffle_window: int = 4, batches_ahead: int = 4, even: str = "drop", **builder_keywords,
    ):
        for name, value, low in (("batch_size", batch_size, 1), ("seed", seed, 0), ("shuffle_window", shuffle_window, 1),
                                 ("batches_ahead", batches_ahead, 1)):
            _check_int(name, value, low)
        for name, value in (("num_threads", num_threads), ("prefetch", prefetch), ("crop", crop)):
            if value is not None:
                _check_int(name, value, 1)
        if crop_mode is not None and crop_mode not in (*CROP_MODES, "centre"):
            raise ValueError(f"crop_mode={crop_mode!r}: use one of {', '.join(CROP_MODES)}")
        if crop_mode is not None and crop is None:
            raise ValueError(f"crop_mode={crop_mode!r} without crop=: give the crop size too")
        if even not in EVEN_CHOICES:
            raise ValueError(f"even={even!r}: choose from {', '.join(EVEN_CHOICES)}")
        if numpy and device is not None:
            raise ValueError(f"device={device!r} with numpy=True: numpy arrays stay in host memory; drop one")
        if not numpy:
            _require_torch()
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.even = even
        self.numpy = bool(numpy)
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self.num_threads = num_threads or fastzip.usable_cores()
        self.prefetch = prefetch or self.num_threads
        self.shuffle_window = shuffle_window if self.shuffle else 1
        self.batches_ahead = batches_ahead
        self.crop = crop
        self.crop_mode = ("center" if crop_mode == "centre" else crop_mode) or ("random" if self.shuffle else "center")
        self.device = device
        self.pin_memory = (not self.numpy and _cuda_available()) if pin_memory is None else bool(pin_memory)
        if self.pin_memory and self.numpy:
            raise ValueError("pin_memory=True with numpy=True: pinned buffers are torch tensors; drop one")
        if self.pin_memory and not _cuda_available():
            raise ValueError("pin_memory=True: CUDA is not available, and page-locked memory needs it; drop it")

        self.builder = SSL4EOS12(config_name=config, data_dir=data_dir, root=root, **builder_keywords)
        self.split = split
        self.catalog = resolve(self.builder, split)
        # a tar member's big arrays are decoded where each example goes, in the gather (one write of 6.7 MB per
        # S2L2A location instead of a decode and a copy); a bad member then fails its batch, so not with "skip"
        self._defer = self.catalog.source.name == "webdataset" and self.catalog.on_bad_file != "skip"
        self.gather_threads = self.num_threads if self._defer else max(1, self.num_threads // 4)
        self._check_crop()
        norms = self._standardization(normalize)
        self._device_norms = norms if device is not None else {}
        self.fields = _fields(self.catalog, crop, {} if device is not None else norms)
        self._memory_specs = {f.name: ((batch_size, *f.shape), f.dtype) for f in self.fields if not f.strings}
        self._epoch = 0
        self._segments: list[Segment] = []  # where the next iter() resumes its epoch (empty: from the start)
        self._position = (0, [])  # (epoch, segments) after the last batch handed out: what state_dict() gives
        # kept across epochs: the next epoch gathers into the buffers the last one handed out and got back
        # in use at once: batches_ahead queued, one being gathered, one staged and the consumer's (kept fewer, an
        # epoch made a fresh batch-sized array, whose first touch costs the kernel its zeroed pages)
        self._memory = _BatchMemory(self._memory_specs, self.pin_memory, keep=batches_ahead + 3)
        # the arrays of every shard that may be in memory at once (the prefetched, the window's, one draining):
        # a big array per modality for the bands and one for the cloud masks, per block (a tar decodes in blocks
        # of a few locations: sized once its shards' sizes are known, in __iter__)
        self._decode_memory = fastzip.ArrayPool((self.prefetch + 2 * self.shuffle_window + 1) * 2 * len(self.catalog.layouts))
        self._decode_arrays_per_block = self._decode_memory.keep
        # the next epoch's first window, decoded by the last one once it had nothing left to read: {shard: future}
        self._early: dict[int, concurrent.futures.Future] = {}

    # -- epochs and sizes --------------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` runs."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch`` next, from its start (its order and crops follow from ``(seed, epoch)``)."""
        _check_int("epoch", epoch, 0)
        self._epoch = epoch
        self._segments = []
        self._position = (epoch, [])

    def _counts(self) -> tuple[int, ...]:
        return self.catalog.counts(self.num_threads)

    @property
    def num_examples(self) -> int:
        """Examples each rank reads in an epoch (the same on every rank)."""
        return per_rank(sum(self._counts()), self.world_size, self.even)

    def __len__(self) -> int:
        """Batches of an epoch on this rank: the same on every rank."""
        return batch_count(self.num_examples, self.batch_size, self.drop_last)

    def _plan(self, epoch: int | None = None, *, fresh: bool = False) -> _RankPlan:
        """This rank's part of an epoch (default: the next iter()'s), computed from the counts, the seed and the
        epoch alone (:mod:`ssl4eos12.sampling`): what it reads, in which order, and where it resumes (``fresh``:
        from its start)."""
        resuming = not fresh and (epoch is None or epoch == self._epoch)
        epoch = self._epoch if epoch is None else epoch
        segments = list(self._segments) if resuming and self._segments else [Segment(self.world_size, self.batch_size)]
        counts = self._counts()
        order = epoch_order(counts, self.seed, epoch, self.shuffle)
        window = self.shuffle_window
        left = remaining(order, segments[:-1], self.seed, epoch, window, self.shuffle, self.even)
        if per_rank(len(left), self.world_size, self.even) == 0:
            raise SSL4EOS12DataError(self._nothing_to_read(len(left), len(order)))
        slice_, _ = partition(left, self.rank, self.world_size, self.even)
        reordered, groups = rank_order(slice_, self.seed, epoch, self.rank, window, self.shuffle, len(segments) - 1)
        limit = batch_count(len(reordered), self.batch_size, self.drop_last) * self.batch_size
        return _RankPlan(epoch, segments, reordered[:limit], groups, counts, len(segments) - 1,
                         segments[-1].batches * self.batch_size)

    def shards(self, epoch: int | None = None) -> list[Entry]:
        """The entries of the shards this rank reads in an epoch (default: the next), in reading order."""
        shards = self._plan(epoch).order[:, 0]
        return [self.catalog.entries[i] for i in dict.fromkeys(shards.tolist())]

    def _nothing_to_read(self, left: int, total: int) -> str:
        where = f"{self.catalog.source.root} split {self.split!r}"
        if total == 0:
            return f"{where}: the selection keeps no example, so no rank has a batch; widen the selection"
        return (f"{where}: {left} example(s) left for world_size={self.world_size} ranks: rank {self.rank} would get "
                f"none (even='drop' leaves out the {left} that do not divide); use even='pad', or fewer ranks")

    # -- resuming -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position after the last batch handed out, as a small JSON-serialisable dict (no data)."""
        epoch, segments = self._position
        return {
            "version": STATE_VERSION, "seed": self.seed, "epoch": epoch,
            "segments": [dataclasses.asdict(segment) for segment in segments],
            "shuffle": self.shuffle, "shuffle_window": self.shuffle_window, "even": self.even,
            "drop_last": self.drop_last, "split": self.split, "examples": sum(self._counts()),
            "fingerprint": self.catalog.fingerprint(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state`` (:meth:`state_dict` of a ``Loader`` with the same arguments, any rank's): the
        next ``iter()`` runs the rest of its epoch. On another ``world_size`` or ``batch_size``, the rest of that
        epoch is shared out anew over this loader's ranks."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"load_state_dict: not a state of this Loader version (expected version {STATE_VERSION} "
                             f"from Loader.state_dict(), got {type(state).__name__})")
        mine = self.state_dict()
        for key in ("seed", "shuffle", "shuffle_window", "even", "drop_last", "split"):
            if state.get(key) != mine[key]:
                raise ValueError(f"load_state_dict: the state was saved with {key}={state.get(key)!r}, this Loader "
                                 f"has {key}={mine[key]!r}: create it with the same arguments")
        if state.get("fingerprint") != mine["fingerprint"] or state.get("examples") != mine["examples"]:
            raise SSL4EOS12DataError(
                f"load_state_dict: the data under {self.catalog.source.root} changed since the state was saved "
                f"({state.get('examples')} example(s) then, {mine['examples']} now, or files replaced): the saved "
                f"position does not apply; start the epoch afresh with set_epoch({state.get('epoch')})")
        segments = [Segment(**segment) for segment in state["segments"]]
        if not segments or (segments[-1].world_size, segments[-1].batch_size) != (self.world_size, self.batch_size):
            segments.append(Segment(self.world_size, self.batch_size))  # the rest of the epoch on this world size
        self._epoch = int(state["epoch"])
        self._segments = segments
        self._position = (self._epoch, segments)

    # -- iteration ----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        plan = self._plan()  # errors (nothing to read on this rank) here, before the epoch's threads start
        # a shard read in blocks (a tar, BLOCK_LOCATIONS locations each) has that many blocks' arrays alive: a pool
        # sized for one block per shard let every other block's bands (27 MB for S2L2A) come fresh from the kernel,
        # which zeroed their huge pages (measured: ~36% of the Loader's CPU on S2L2A tars)
        if getattr(self.catalog.source, "keyed", False):
            largest = max(self._counts(), default=1) // max(1, self.catalog.times_per_example)
            self._decode_memory.keep = self._decode_arrays_per_block * max(1, -(-largest // webdataset.BLOCK_LOCATIONS))
        return self._batches(plan)

    def _batches(self, plan: _RankPlan) -> Iterator[dict]:
        # the epoch moves on when its first batch is asked for, not at iter(): an iterator made and dropped unused
        # (Lightning makes one to check that a loader is iterable) neither skips an epoch nor loses a resumed position
        self._epoch = plan.epoch + 1
        self._segments = []
        run = _EpochRun(self, plan)
        stage = _DeviceStage(self.device, self._device_norms) if self.device is not None else None
        segments = [*plan.segments[:-1], dataclasses.replace(plan.segments[-1])]
        self._position = (plan.epoch, segments)
        finished = False
        left = -(-(len(plan.order) - plan.skip) // self.batch_size)  # the batches this run hands out

        def handed_out():
            nonlocal left
            left -= 1
            segments[-1] = dataclasses.replace(segments[-1], batches=segments[-1].batches + 1)
            # the last batch out ends the epoch: a loop that stops after len(loader) batches without exhausting the
            # iterator (Lightning's does) saves the next epoch's start, not an epoch with nothing left to read
            self._position = (plan.epoch + 1, []) if left == 0 else (plan.epoch, list(segments))

        try:
            if stage is None:
                while (batch := run.next()) is not None:
                    handed_out()
                    yield batch
            else:
                staged = None
                while (batch := run.next()) is not None:
                    ahead = stage.put(batch)  # the next batch's copy starts before this one is handed over
                    del batch
                    if staged is not None:
                        handed_out()
                        yield stage.take(staged)
                    staged = ahead
                if staged is not None:
                    handed_out()
                    yield stage.take(staged)
            finished = True
            self._position = (plan.epoch + 1, [])
        finally:
            run.close(keep_ahead=finished)
            if finished:
                self._early = run.ahead
            else:  # a break or an exception: keep no buffer for an epoch that may never come
                self._memory.retired.clear()
                self._decode_memory.clear()

    def __repr__(self) -> str:
        return (f"Loader(config={self.builder.config.name!r}, split={self.split!r}, batch_size={self.batch_size}, "
                f"shards={len(self.catalog.entries)}, rank={self.rank}/{self.world_size}, threads={self.num_threads})")

    # -- checks made once --------------------------------------------------------------------------------------

    def _check_crop(self) -> None:
        if self.crop is None:
            return
        for layout in self.catalog.layouts:
            if layout.bands_shape[-2:] != (layout.height, layout.width):
                raise ValueError(f"crop={self.crop}: {layout.modality} bands {layout.bands_shape} do not end in (y, x)")
            if self.crop > min(layout.height, layout.width):
                raise ValueError(f"crop={self.crop}: larger than the {layout.modality} patches "
                                 f"({layout.height} x {layout.width}); use at most {min(layout.height, layout.width)}")
        sizes = {(layout.height, layout.width) for layout in self.catalog.layouts}
        if len(sizes) > 1:
            raise ValueError(f"crop={self.crop}: the modalities have different patch sizes {sorted(sizes)}; "
                             "crop one modality at a time")

    def _standardization(self, normalize) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(mean, std) per modality as float32 arrays shaped (C, 1, 1), or {} when not standardizing."""
        if normalize is False or normalize is None:
            return {}
        release = self.catalog.source.name
        out = {}
        for layout in self.catalog.layouts:
            m = layout.modality
            if isinstance(normalize, Mapping):
                if m not in normalize:
                    continue
                mean, std = normalize[m]
            elif normalize is True:
                try:
                    mean, std = standardization(m, release)
                except ValueError as err:
                    raise ValueError(f"normalize=True: {err}; pass normalize={{modality: (mean, std)}}") from None
            else:
                raise ValueError(f"normalize={normalize!r}: use True, False or {{modality: (mean, std)}}")
            channels = layout.bands_shape[0] if len(layout.bands_shape) == 3 else None
            if channels is None or len(mean) != channels or len(std) != channels:
                raise ValueError(f"normalize: {m} bands {layout.bands_shape} need one mean and std per band "
                                 f"(got {len(mean)} and {len(std)})")
            out[m] = (np.asarray(mean, np.float32).reshape(-1, 1, 1), np.asarray(std, np.float32).reshape(-1, 1, 1))
        return out


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r}: need an integer >= {low}")


def _require_torch() -> None:
    require_extra("torch", "torch", "ssl4eos12.Loader (torch tensors)", "pass numpy=True for numpy arrays without torch")


def _cuda_available() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


# ----------------------------------------------------------------------------------------------------------------
# One epoch: the scheduler thread, the decode and gather pools, the hand-over
# ----------------------------------------------------------------------------------------------------------------


class _Stopped(Exception):
    """The epoch was stopped (consumer gone): threads leave quietly."""


_END = object()


@dataclass
class _Failure:
    error: BaseException


class _Job:
    """One batch: its picks, its buffers, its string lists, and the gather tasks filling them."""

    def __init__(self, picks: _Picks, buffers: _Buffers, strings: dict[str, list]):
        self.size = len(picks)
        self.picks = picks
        self.buffers = buffers
        self.strings = strings
        self.parts: list[concurrent.futures.Future] = []
        self._left = 0
        self._lock = threading.Lock()

    def gather(self, fields, crop, start: int, stop: int) -> None:
        """One part of the batch (a gather thread); the last part to finish lets go of the decoded blocks."""
        try:
            _gather(fields, crop, self.picks, self.buffers, self.strings, start, stop)
        finally:
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.picks = None  # a queued batch must not keep drained files alive


#: The epochs whose threads may still run: closed at exit (an iterator left unfinished, e.g. after one ``next()``),
#: while the modules they use are still there; Python would otherwise finalize the generator after their teardown.
_RUNNING: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_running() -> None:
    for run in list(_RUNNING):
        run.close()


class _EpochRun:
    """The threads of one epoch. Threads hold this object, never the consumer's generator, so dropping the
    generator closes it, which stops and joins them."""

    def __init__(self, loader: Loader, plan: _RankPlan):
        self.loader = loader
        self.plan = plan
        self.catalog = loader.catalog
        self.fields = loader.fields
        self.stop = threading.Event()
        self.jobs: queue.Queue = queue.Queue(maxsize=loader.batches_ahead)
        self.memory = loader._memory
        self.decoders = concurrent.futures.ThreadPoolExecutor(loader.num_threads, thread_name_prefix="ssl4eos12-decode")
        self.gatherers = concurrent.futures.ThreadPoolExecutor(loader.gather_threads, thread_name_prefix="ssl4eos12-gather")
        self.scheduler = threading.Thread(target=self._schedule, name="ssl4eos12-loader", daemon=True)
        self.started = False
        self.closed = False
        self.lock = threading.Lock()
        _RUNNING.add(self)
        self.skipped = 0  # shards skipped as bad (decode threads count them under the lock)
        self.padded = 0  # their examples replaced by repeats
        self.last_good: tuple[_Unit, int, int] | None = None  # what pads a group with no readable shard
        self.early, loader._early = loader._early, {}  # what the last epoch decoded for this one
        self.ahead: dict[int, concurrent.futures.Future] = {}  # what this one decodes for the next

    # -- the consumer's side -------------------------------------------------------------------------------------

    def next(self) -> dict | None:
        if not self.started:
            self.started = True
            self.scheduler.start()
        while True:
            try:
                item = self.jobs.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self.scheduler.is_alive() and self.jobs.empty():
                    raise RuntimeError("ssl4eos12.Loader: the scheduler thread ended without a result") from None
        if item is _END:
            return None
        if isinstance(item, _Failure):
            raise item.error
        for part in item.parts:
            _wait(part, self.stop)
        batch = self._output(item)
        self.memory.retire(item.buffers)
        return batch

    def _output(self, job: _Job) -> dict:
        n = job.size
        out = {}
        for field in self.fields:
            if field.strings:
                out[field.name] = job.strings[field.name]
                continue
            host = job.buffers.host[field.name]
            if self.loader.numpy:
                out[field.name] = host[:n].view("datetime64[ns]") if field.variable == "time_" else host[:n]
            elif job.buffers.tensors is not None:
                tensor = job.buffers.tensors[field.name]
                out[field.name] = tensor if n == len(tensor) else tensor[:n]
            else:
                import torch

                out[field.name] = torch.from_numpy(host[:n])
        return out

    def close(self, keep_ahead: bool = False) -> None:
        """Stop every thread and wait for it; drop every buffer and decoded block, but for the next epoch's first
        window where ``keep_ahead`` (its decodes are waited for then). Once: a later call does nothing."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        if self.started:
            while self.scheduler.is_alive():
                self._drain()
                self.scheduler.join(timeout=_POLL)
        self._drain()
        self.decoders.shutdown(wait=True, cancel_futures=not keep_ahead)
        if not keep_ahead:
            self.ahead = {}
        self.gatherers.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.jobs.get_nowait()

    # -- the scheduler thread: decode ahead, shuffle, cut batches, start their gathers ---------------------------

    def _schedule(self) -> None:
        try:
            self._run()
            self._put(_END)
        except _Stopped:
            pass
        except BaseException as err:  # noqa: BLE001  (handed to the consumer, who raises it)
            with contextlib.suppress(_Stopped):
                self._put(_Failure(err))

    def _run(self) -> None:
        loader, plan = self.loader, self.plan
        order, end = plan.order, len(plan.order)
        # the groups (spans of the order) this run still has to read: resuming skips what was done
        spans = [(g, slice(max(span.start, plan.skip), min(span.stop, end))) for g, span in enumerate(plan.groups)]
        spans = [(g, span) for g, span in spans if span.start < span.stop]
        needs = [list(dict.fromkeys(order[span, 0].tolist())) for _, span in spans]
        single = self.catalog.single_timestamp
        picks = _Picks()
        for (g, span), decoded in zip(spans, self._decoded_groups(needs)):
            whole = plan.groups[g]
            corners = _corners(self.catalog.layouts[0], loader.crop, loader.crop_mode, whole.stop - whole.start,
                               (*group_seed(loader.seed, plan.epoch, plan.segment, loader.rank, g), 1))
            substitutes = None  # for the examples of skipped shards: the group's readable ones, in turn
            if any(shard is None for shard in decoded.values()):
                substitutes = itertools.cycle([p for p in range(span.start, span.stop)
                                               if decoded[order[p, 0]] is not None])
            for p in range(span.start, span.stop):
                shard, j = order[p, 0], order[p, 1]
                if decoded[shard] is None:  # skipped: the batch keeps its size with another example of the group
                    q = next(substitutes, None)
                    if q is None and self.last_good is None:
                        raise SSL4EOS12DataError(f"{self.catalog.source.root}: no readable shard yet to pad the "
                                                 f"skipped ones' examples with (on_bad_file='skip')")
                    unit, row, t = self._locate(decoded, order[q]) if q is not None else self.last_good
                    self.padded += 1
                else:
                    unit, row, t = self._locate(decoded, (shard, j))
                    self.last_good = (unit, row, t)
                picks.add(unit, row, t if single else None, *corners[p - whole.start])
                if len(picks) == loader.batch_size:
                    self._emit(picks)
                    picks = _Picks()
            del decoded, substitutes
        if len(picks):
            self._emit(picks)
        if self.padded:
            warnings.warn(f"ssl4eos12.Loader: {self.padded} example(s) of skipped shards were replaced by repeats of "
                          f"other examples, so that rank {loader.rank} still yields len(loader) = {len(loader)} "
                          f"batches", SSL4EOS12BadFileWarning, stacklevel=2)

    def _locate(self, decoded: dict, pick) -> tuple[_Unit, int, int]:
        """The unit, row and timestamp of example ``j`` of ``shard`` (a pick ``(shard, j)``)."""
        shard = decoded[int(pick[0])]
        j = int(pick[1])
        unit = shard.units[shard.unit_of[j]]
        row, t = divmod(int(shard.example_of[j]), unit.num_times)
        return unit, row, t

    def _decoded_groups(self, needs: list[list[int]]) -> Iterator[dict[int, _Shard | None]]:
        """Each group's shards decoded (``None``: skipped as bad), group by group; while one group is used, the
        decode threads work on up to ``prefetch`` shards of the groups after it."""
        flat = [(g, shard) for g, shards in enumerate(needs) for shard in shards]
        early = {shard: future for shard, future in self.early.items() if _early_result(future) is not None}
        self.early = {}
        pending: collections.deque = collections.deque()
        submitted, ahead = 0, False
        for g in range(len(needs)):
            while submitted < len(flat) and (flat[submitted][0] <= g or
                                             sum(1 for h, _, _ in pending if h > g) < self.loader.prefetch):
                h, shard = flat[submitted]
                future = early.pop(shard, None) or self.decoders.submit(self._decode, shard)
                pending.append((h, shard, future))
                submitted += 1
            if submitted == len(flat) and not ahead:  # in memory from now: this window, the pending, the next's first
                early, ahead = {}, True
                self._decode_ahead()
            decoded = {}
            while pending and pending[0][0] == g:
                _, shard, future = pending.popleft()
                decoded[shard] = _wait(future, self.stop)
            yield decoded

    def _decode_ahead(self) -> None:
        """Start decoding the next epoch's first window (``iter()`` runs epoch + 1 from its start unless told
        otherwise), so that its first batch does not wait for a whole window to be read while the cores idle: this
        epoch has nothing left to read, and its last window's gathers keep the cores busy meanwhile. Not from a
        remote root: that would download a window for an epoch that may not come, and end this one waiting for it."""
        if is_remote(self.catalog.source.root):
            return
        try:
            plan = self.loader._plan(self.plan.epoch + 1, fresh=True)
        except SSL4EOS12DataError:  # nothing to read on this rank then: its iter() says so
            return
        first = plan.groups[0] if plan.groups else slice(0, 0)
        for shard in dict.fromkeys(plan.order[first, 0].tolist()):
            self.ahead[shard] = self.decoders.submit(self._decode_early, shard)

    def _decode_early(self, shard: int) -> _Shard | None:
        """:meth:`_decode` for the next epoch: whatever is wrong with the shard is left to that epoch's run, which
        decodes it again and skips it or raises as it would have (``None`` here)."""
        try:
            return self._decoded(shard, self._blocks(shard))
        except Exception:  # noqa: BLE001  (said again, in its epoch, by the run that decodes it again)
            return None

    def _decode(self, shard: int) -> _Shard | None:
        """Decode one shard (a decode thread): its blocks, as the examples its entry asks for; ``None`` when it is
        skipped as bad."""
        if self.stop.is_set():
            return None
        try:
            blocks = self._blocks(shard)
        except SSL4EOS12FileError as err:
            if self.catalog.on_bad_file != "skip":
                raise
            with self.lock:  # decode threads skip at once
                self.skipped += 1
                skipped = self.skipped
            warnings.warn(f"skipping {err} ({skipped} file(s) skipped in this epoch so far; its examples are "
                          f"replaced by repeats so that every rank keeps its number of batches)",
                          SSL4EOS12BadFileWarning, stacklevel=2)
            return None
        return self._decoded(shard, blocks)

    def _blocks(self, shard: int) -> list[Block]:
        """The blocks of one shard, read and decoded (a tar's bands left encoded for the gather)."""
        catalog, entry = self.catalog, self.catalog.entries[shard]
        selection = entry.selection
        if entry.rows is not None and selection is not None:  # rows count the shard's locations, block by block
            selection = dict(selection)
        # only the selected members of a tar, by range, where the index records them; a remote Zarr file sends
        # only the selected timestamps' chunks
        blocks = catalog.source.blocks_for(catalog.split_folder, entry.shard, catalog.layouts, selection)
        members = "encoded" if self.loader._defer else "stacked"
        return list(fastzip.decoding(blocks, self.loader._decode_memory, members=members))

    def _decoded(self, shard: int, blocks: list[Block]) -> _Shard:
        """One shard's blocks as the examples its entry asks for, checked against the example count."""
        catalog, entry = self.catalog, self.catalog.entries[shard]
        decoded = _decoded_shard(blocks, entry, catalog.times_per_example, self.fields, catalog.time_order)
        if len(decoded) != self.plan.counts[shard]:
            raise SSL4EOS12DataError(
                f"{catalog.source.root}/{catalog.split_folder}: {entry.shard} holds {len(decoded)} example(s) of the "
                f"selection, but its index or metadata counted {self.plan.counts[shard]}: they are stale; rerun "
                f"`ssl4eos12 index` (or recreate the Loader if the files changed while it ran)")
        return decoded

    def _emit(self, picks: _Picks) -> None:
        """Start gathering a batch (in parts, so that one batch spreads over the gather threads) and queue it."""
        n = len(picks)
        job = _Job(picks, self.memory.acquire(), {f.name: [None] * n for f in self.fields if f.strings})
        step = max(4, -(-n // self.loader.gather_threads))
        bounds = [(a, min(a + step, n)) for a in range(0, n, step)]
        job._left = len(bounds)
        job.parts = [self.gatherers.submit(job.gather, self.fields, self.loader.crop, a, b) for a, b in bounds]
        self._put(job)

    def _put(self, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.jobs.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue


def _early_result(future: concurrent.futures.Future) -> _Shard | None:
    """What a decode started by the last epoch gave (``None``: cancelled, or left to decode again)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def _wait(future: concurrent.futures.Future, stop: threading.Event):
    """A future's result, giving up when the epoch is stopped."""
    while True:
        try:
            return future.result(timeout=_POLL)
        except concurrent.futures.TimeoutError:
            if stop.is_set():
                raise _Stopped from None


# ----------------------------------------------------------------------------------------------------------------
# The device stage
# ----------------------------------------------------------------------------------------------------------------


class _DeviceStage:
    """Copies batches to a torch device, standardizing the bands there; on CUDA on a side stream, non-blocking."""

    def __init__(self, device, norms: Mapping[str, tuple[np.ndarray, np.ndarray]]):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.norms = {m: (torch.from_numpy(mean).to(self.device), torch.from_numpy(std).to(self.device))
                      for m, (mean, std) in norms.items()}

    def put(self, batch: dict):
        """Start the copy of ``batch``; returns what :meth:`take` hands over."""
        torch = self.torch
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with context:
            out = {name: value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                   for name, value in batch.items()}
            for m, (mean, std) in self.norms.items():
                out[m] = torch.sub(out[m].float(), mean).div_(std)  # a new tensor: never the host buffer
            event = self.stream.record_event() if self.stream is not None else None
        return out, event

    def take(self, staged) -> dict:
        out, event = staged
        if event is not None:
            current = self.torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for value in out.values():  # memory made on the side stream, used on the consumer's
                if isinstance(value, self.torch.Tensor):
                    value.record_stream(current)
        return out
