"""The training fast path: ``ssl4eos12.Loader``, batches decoded by threads into reusable buffers.

A ``torch.utils.data.DataLoader`` over the streaming builder decodes in worker processes and sends every batch
to the training process through shared memory, where one thread pins it: on a 16-core machine with one GPU
that trip, not the decoding, kept the GPU waiting. ``Loader`` decodes in a pool of threads of the training
process itself (Blosc and :mod:`~ssl4eos12.sources.fastzip` release the GIL), each source file once, and gathers
each batch once, straight from the decoded arrays into its batch buffers (page-locked where CUDA is available),
ready for a non-blocking copy to the device. No worker processes, no per-example Python dicts.

One epoch runs as a pipeline (all of it seeded by ``(seed, epoch)``, so the same seed and epoch give the same
batches whatever the thread timing):

- **plan**: the builder resolves the split as ``load_dataset`` would (config, modalities, ``single_timestamp``,
  root, and any builder keyword that selects files or rows) into one :class:`ShardRead` per shard
  (:func:`shard_reads` is the seam); shards are shuffled per epoch and dealt to the ranks, so every example
  is read by exactly one rank once per epoch;
- **decode**: up to ``prefetch`` shards at a time, by ``num_threads`` threads (``Source.blocks``);
- **shuffle**: a window of ``shuffle_window`` decoded shards (a source file of the Zarr release, a tar of the
  webdataset release); each example is drawn uniformly from the examples left in the window; a drained shard
  leaves it, the next decoded one enters (so examples mix across ``shuffle_window`` files; without shuffling
  they come in order);
- **gather**: each batch is copied (cropped, and standardized when asked) into its buffers by gather threads;
- **hand-over**: batches in order; with ``device=``, copied to the device one batch ahead (CUDA: on a side
  stream, non-blocking, from pinned memory).

Memory, stated: at most ``prefetch + shuffle_window + 1`` decoded shards, plus the shards that batches still
being gathered draw from (none once their gather ends; a few at most, as a batch is gathered within
milliseconds), plus ``batches_ahead + 2`` batch buffers and the batches the consumer keeps. One S2L2A file of
64 locations is 446 MB decoded, one file of all four modalities 1.07 GB: with 16 threads and the defaults,
streaming ``S2L2A`` holds at most about (16 + 4 + 1) x 446 MB ~ 9.4 GB. Lower ``prefetch`` to bound it further
(decoding then runs on at most ``prefetch`` threads). The decoded files' big arrays are decoded into again once
nothing refers to them (a fresh file-sized array costs the kernel more than decoding it: see
:class:`~ssl4eos12.sources.fastzip.ArrayPool`); they are kept across epochs within that bound, and dropped by a
``break`` or an exception.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import queue
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .builder import SSL4EOS12
from .constants import standardization
from .errors import SSL4EOS12BadFileWarning, SSL4EOS12FileError, require_extra
from .index import selected_times
from .sources import Block, Layout, Source, fastzip
from .timeorder import by_season, season_selection
from .torch import timestamps_to_int64

#: How often waiting threads look at the stop event (seconds): the longest a ``break`` waits for a wait.
_POLL = 0.05
CROP_MODES = ("random", "center")


# ----------------------------------------------------------------------------------------------------------------
# The plan: what to read, from the builder's own resolution of the split
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShardRead:
    """One shard to read, and which of its examples.

    ``rows``: locations by index in the shard's own order; ``selection``: locations by sample id, each with
    the time indices kept (``None``: all), as the builder's filters give them
    (:func:`ssl4eos12.index.select`). ``None``: no restriction.
    """

    shard: str
    rows: Optional[np.ndarray] = None
    selection: Optional[Mapping[str, Optional[frozenset]]] = None


@dataclass(frozen=True)
class SplitPlan:
    """A split as the builder resolves it: where to read, the layouts, the shards and their rows."""

    source: Source
    split_folder: str
    layouts: tuple[Layout, ...]
    reads: tuple[ShardRead, ...]
    features: Any  # datasets.Features: the fields and their order
    single_timestamp: bool
    on_bad_file: str
    time_order: str = "file"


def shard_reads(gen_kwargs: Mapping) -> list[ShardRead]:
    """The (shard, rows) the builder's split generator asks for: the one place that reads its ``gen_kwargs``.

    Builder keywords that select locations arrive here: sample ranges as rows of each shard, the filters
    (``bbox``, ``time_range``, ``max_cloud_fraction``, ``samples``) as each shard's selection.
    """
    files = gen_kwargs["files"]
    ranges = gen_kwargs.get("sample_ranges") or [None] * len(files)
    selections = gen_kwargs.get("selections") or [None] * len(files)
    return [ShardRead(name, None if sample_range is None else np.arange(*sample_range), selection)
            for name, sample_range, selection in zip(files, ranges, selections)]


def plan_split(builder: SSL4EOS12, split: str) -> SplitPlan:
    """Resolve ``split`` through the builder's ``_split_generators``, as ``as_streaming_dataset`` does."""
    from datasets import DownloadConfig
    from datasets.download.streaming_download_manager import StreamingDownloadManager

    download_config = DownloadConfig(token=builder.token, storage_options=builder.storage_options)
    dl_manager = StreamingDownloadManager(base_path=builder.base_path, download_config=download_config,
                                          dataset_name=builder.dataset_name, data_dir=builder.config.data_dir)
    generators = {str(g.name): g for g in builder._split_generators(dl_manager)}
    if split not in generators:
        raise ValueError(f"split={split!r}: not in this data; available: {', '.join(sorted(generators))}")
    kwargs = generators[split].gen_kwargs
    return SplitPlan(
        source=builder._source(download_config), split_folder=kwargs["split_folder"],
        layouts=tuple(kwargs["layouts"]), reads=tuple(shard_reads(kwargs)), features=builder.info.features,
        single_timestamp=bool(builder.config.single_timestamp), on_bad_file=builder.config.on_bad_file,
        time_order=builder.config.time_order,
    )


def distributed_rank(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else ``torch.distributed`` when initialized, else the environment's
    ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if rank is None or world_size is None:
        found = _environment_rank()
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank={rank!r}, world_size={world_size!r}: need integers with 0 <= rank < world_size")
    return rank, world_size


def _environment_rank() -> tuple[int, int]:
    torch = sys.modules.get("torch")  # a torch.distributed job has imported torch; do not import it for numpy users
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
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
    modality: Optional[str]  # None: a shared field, read from the block's first modality
    variable: str  # the source variable ("sample", "file", "time_index" are not variables)
    strings: bool
    shape: tuple[int, ...] = ()
    dtype: Optional[np.dtype] = None
    timed: bool = False  # the variable has a time axis after the sample axis
    crop: str = ""  # "yx": the last two axes; "x" / "y": a coordinate vector
    standardize: Optional[tuple[np.ndarray, np.ndarray]] = None  # (mean, std) applied in the gather


def _fields(plan: SplitPlan, crop: Optional[int], gather_norms: Mapping[str, tuple]) -> list[_Field]:
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

    def __init__(self, host: dict[str, np.ndarray], tensors: Optional[dict] = None):
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
# One decoded block in the shuffle window
# ----------------------------------------------------------------------------------------------------------------


class _Unit:
    """A decoded block, the examples of it to read, which of them the window still holds, and its arrays
    resolved per field. An example is ``row * num_times + t`` (``num_times`` 1 unless single_timestamp)."""

    def __init__(self, block: Block, examples: np.ndarray, num_times: int, fields: Sequence[_Field], shard: int):
        self.block = block
        self.shard = shard  # the shard's place in the epoch's reading order
        self.examples = examples
        self.num_times = num_times
        self.count = len(examples)
        self.order: Optional[np.ndarray] = None  # drawing order (indices into examples), set on entering the window
        self.taken = 0
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

    @property
    def left(self) -> int:
        return self.count - self.taken


def _units(block_list: list[Block], read: ShardRead, num_times: int, fields, time_order: str,
           shard: int) -> list[_Unit]:
    """The blocks of a shard as units of the examples ``read`` asks for (its rows index the shard's locations
    across its blocks; its selection names samples and their time indices), timestamps in ``time_order``."""
    units, offset = [], 0
    for block in block_list:
        selection = read.selection
        if time_order == "season":  # as the builder does: the selection's time indices follow the new order
            if selection is not None and selected_times(selection) is not None:
                selection = season_selection(block, selection)
            block = by_season(block)
        size = len(block)
        rows = np.arange(size)
        if read.rows is not None:
            rows = read.rows[(read.rows >= offset) & (read.rows < offset + size)] - offset
        offset += size
        examples = _examples(block.samples, rows, selection, num_times)
        if len(examples):
            units.append(_Unit(block, examples, num_times, fields, shard))
    return units


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
# Drawing the examples: the shuffle window, the crop corners, a batch's picks
# ----------------------------------------------------------------------------------------------------------------


class _Uniforms:
    """Uniform draws in [0, 1) from the epoch's generator, drawn in blocks (one Python call per example is slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 4096):
        self.rng, self.block = rng, block
        self.values, self.i = rng.random(block), 0

    def next(self) -> float:
        if self.i == self.block:
            self.values, self.i = self.rng.random(self.block), 0
        self.i += 1
        return float(self.values[self.i - 1])


class _Picks:
    """The examples of one batch: unit, location row in the block, timestamp and crop corner of each."""

    def __init__(self):
        self.units, self.rows, self.times, self.tops, self.lefts = [], [], [], [], []

    def add(self, unit: _Unit, row: int, time: Optional[int], top: int, left: int) -> None:
        self.units.append(unit)
        self.rows.append(row)
        self.times.append(time)
        self.tops.append(top)
        self.lefts.append(left)

    def __len__(self) -> int:
        return len(self.units)


class _Window:
    """The shuffle window: the units of up to ``size`` shards; each example is drawn uniformly from those left.

    A shard (a source file, or a tar of the webdataset release, whose blocks are a few locations each) enters
    whole and leaves once drained, and the next decoded one enters: examples mix across ``size`` shards whatever
    the release. ``rng=None``: no shuffling, one shard, in order. Iterating gives ``(unit, example)`` until
    every unit is drained.
    """

    def __init__(self, shards: Iterator[list[_Unit]], size: int, rng: Optional[np.random.Generator],
                 draws: _Uniforms):
        self.shards, self.size, self.rng, self.draws = shards, size, rng, draws
        self.open: list[_Unit] = []
        self.left: dict[int, int] = {}  # units left in the window per shard (by the shard's place in the epoch)

    def __iter__(self):
        while True:
            self._fill()
            if not self.open:
                return
            k = self._pick()
            unit = self.open[k]
            example = int(unit.examples[unit.order[unit.taken]])
            unit.taken += 1
            if unit.taken == unit.count:
                self.open.pop(k)
                self.left[unit.shard] -= 1
                if not self.left[unit.shard]:
                    del self.left[unit.shard]
            yield unit, example

    def _fill(self) -> None:
        while len(self.left) < self.size and (units := next(self.shards, None)) is not None:
            for unit in units:
                unit.order = self.rng.permutation(unit.count) if self.rng is not None else np.arange(unit.count)
                self.open.append(unit)
                self.left[unit.shard] = self.left.get(unit.shard, 0) + 1

    def _pick(self) -> int:
        if len(self.open) == 1 or self.rng is None:
            return 0
        x = int(self.draws.next() * sum(u.left for u in self.open))
        k = 0
        while x >= self.open[k].left:
            x -= self.open[k].left
            k += 1
        return k


class _Corners:
    """The crop corner of each example: random or centred (``(0, 0)`` without cropping)."""

    def __init__(self, layout: Layout, crop: Optional[int], mode: str, draws: _Uniforms):
        self.crop, self.random, self.draws = crop, mode == "random", draws
        self.height, self.width = layout.height, layout.width

    def __call__(self) -> tuple[int, int]:
        if not self.crop:
            return 0, 0
        if self.random:
            return (int(self.draws.next() * (self.height - self.crop + 1)),
                    int(self.draws.next() * (self.width - self.crop + 1)))
        return (self.height - self.crop) // 2, (self.width - self.crop) // 2


# ----------------------------------------------------------------------------------------------------------------
# The gather: a batch's examples into its buffers
# ----------------------------------------------------------------------------------------------------------------


def _gather(fields: Sequence[_Field], crop: Optional[int], picks: _Picks, buffers: _Buffers,
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
            more threads gather the batches.
        rank, world_size: this process's part of a distributed job (default: ``torch.distributed`` when
            initialized, else ``RANK``/``WORLD_SIZE``, else 0 and 1). Shards are dealt to ranks, so each
            example goes to one rank once per epoch; ranks get different counts when the shard count is not
            a multiple of ``world_size`` or shards differ in size.
        drop_last: drop the last, smaller batch of an epoch.
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

    Each batch is a dict like :func:`ssl4eos12.collate`'s: arrays ``(B, ...)`` in the files' dtypes (int16,
    uint8, float16; float32 where standardized), timestamps as int64 nanoseconds since the epoch, strings as
    lists. ``len()`` counts batches of the next epoch on this rank (reading each shard's metadata once when
    the builder did not say how many locations it has). ``iter()`` starts the next epoch; ``set_epoch(n)``
    chooses it. A ``break``, an exception or dropping the iterator stops and joins every thread (after the
    decodes in progress, at most one file's decoding time).

    Memory: at most ``prefetch + shuffle_window + 1`` decoded shards plus ``batches_ahead + 2`` batches and what
    the consumer keeps (see the module docstring for figures).
    """

    def __init__(
        self, config: str = "all", *, data_dir: Optional[str] = None, root: Optional[str] = None,
        split: str = "train", batch_size: int = 8, shuffle: bool = True, seed: int = 0,
        num_threads: Optional[int] = None, rank: Optional[int] = None, world_size: Optional[int] = None,
        drop_last: bool = False, crop: Optional[int] = None, crop_mode: Optional[str] = None,
        normalize: bool | Mapping[str, tuple[Sequence[float], Sequence[float]]] = False,
        device=None, numpy: bool = False, pin_memory: Optional[bool] = None, prefetch: Optional[int] = None,
        shuffle_window: int = 4, batches_ahead: int = 4, **builder_keywords,
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
        if numpy and device is not None:
            raise ValueError(f"device={device!r} with numpy=True: numpy arrays stay in host memory; drop one")
        if not numpy:
            _require_torch()
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.numpy = bool(numpy)
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self.num_threads = num_threads or fastzip.usable_cores()
        self.gather_threads = max(1, self.num_threads // 4)
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
        self.plan = plan_split(self.builder, split)
        self._check_crop()
        norms = self._standardization(normalize)
        self._device_norms = norms if device is not None else {}
        self.fields = _fields(self.plan, crop, {} if device is not None else norms)
        self._memory_specs = {f.name: ((batch_size, *f.shape), f.dtype) for f in self.fields if not f.strings}
        self._counts: dict[int, int] = {}
        self._epoch = 0
        # kept across epochs: the next epoch gathers into the buffers the last one handed out and got back
        self._memory = _BatchMemory(self._memory_specs, self.pin_memory, keep=batches_ahead + 2)
        # the arrays of every shard that may be in memory at once (the prefetched, the window's, one draining):
        # a big array per modality for the bands and one for the cloud masks
        self._decode_memory = fastzip.ArrayPool((self.prefetch + self.shuffle_window + 2) * 2 * len(self.plan.layouts))

    # -- epochs and sizes --------------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` runs."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch`` next (its shard order, example order and crops follow from ``(seed, epoch)``)."""
        _check_int("epoch", epoch, 0)
        self._epoch = epoch

    def shards(self, epoch: Optional[int] = None) -> list[ShardRead]:
        """This rank's shards of an epoch (default: the next), in reading order."""
        return [self.plan.reads[i] for i in self._shard_indices(epoch)]

    def _shard_indices(self, epoch: Optional[int] = None) -> list[int]:
        epoch = self._epoch if epoch is None else epoch
        order = np.arange(len(self.plan.reads))
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(len(order))  # the same on every rank
        return [int(i) for i in order[self.rank::self.world_size]]

    @property
    def num_examples(self) -> int:
        """Examples this rank reads in the next epoch."""
        return sum(self._examples(i) for i in self._shard_indices())

    def __len__(self) -> int:
        n = self.num_examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _examples(self, index: int) -> int:
        read = self.plan.reads[index]
        times = self.plan.layouts[0].num_times if self.plan.single_timestamp else 1
        if read.selection is not None and read.rows is None:  # the filters name every example
            return sum(times if (kept is None or times == 1) else len(kept) for kept in read.selection.values())
        if read.rows is not None and read.selection is None:
            return len(read.rows) * times
        if index not in self._counts:  # neither (or, after a reshard, both: then counted whole)
            self._probe_counts()
        return self._counts[index] * times

    def _probe_counts(self) -> None:
        """Locations of every shard whose count the plan does not give, from its metadata, in parallel."""
        plan = self.plan
        missing = [i for i, read in enumerate(plan.reads)
                   if (read.rows is None) == (read.selection is None) and i not in self._counts]
        modality = plan.layouts[0].modality

        def count(i: int) -> int:
            try:
                return plan.source.probe(plan.split_folder, plan.reads[i].shard, modality)[1]
            except SSL4EOS12FileError:
                if plan.on_bad_file != "skip":
                    raise
                return 0

        with concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="ssl4eos12-count") as pool:
            self._counts.update(zip(missing, pool.map(count, missing)))

    # -- iteration ----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[dict]:
        run = _EpochRun(self, epoch)
        stage = _DeviceStage(self.device, self._device_norms) if self.device is not None else None
        finished = False
        try:
            if stage is None:
                while (batch := run.next()) is not None:
                    yield batch
            else:
                staged = None
                while (batch := run.next()) is not None:
                    ahead = stage.put(batch)  # the next batch's copy starts before this one is handed over
                    del batch
                    if staged is not None:
                        yield stage.take(staged)
                    staged = ahead
                if staged is not None:
                    yield stage.take(staged)
            finished = True
        finally:
            run.close()
            if not finished:  # a break or an exception: keep no buffer for an epoch that may never come
                self._memory.retired.clear()
                self._decode_memory.clear()

    def __repr__(self) -> str:
        return (f"Loader(config={self.builder.config.name!r}, split={self.split!r}, batch_size={self.batch_size}, "
                f"shards={len(self.plan.reads)}, rank={self.rank}/{self.world_size}, threads={self.num_threads})")

    # -- checks made once --------------------------------------------------------------------------------------

    def _check_crop(self) -> None:
        if self.crop is None:
            return
        for layout in self.plan.layouts:
            if layout.bands_shape[-2:] != (layout.height, layout.width):
                raise ValueError(f"crop={self.crop}: {layout.modality} bands {layout.bands_shape} do not end in (y, x)")
            if self.crop > min(layout.height, layout.width):
                raise ValueError(f"crop={self.crop}: larger than the {layout.modality} patches "
                                 f"({layout.height} x {layout.width}); use at most {min(layout.height, layout.width)}")
        sizes = {(layout.height, layout.width) for layout in self.plan.layouts}
        if len(sizes) > 1:
            raise ValueError(f"crop={self.crop}: the modalities have different patch sizes {sorted(sizes)}; "
                             "crop one modality at a time")

    def _standardization(self, normalize) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(mean, std) per modality as float32 arrays shaped (C, 1, 1), or {} when not standardizing."""
        if normalize is False or normalize is None:
            return {}
        release = self.plan.source.name
        out = {}
        for layout in self.plan.layouts:
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


class _EpochRun:
    """The threads of one epoch. Threads hold this object, never the consumer's generator, so dropping the
    generator closes it, which stops and joins them."""

    def __init__(self, loader: Loader, epoch: int):
        self.loader = loader
        self.plan = loader.plan
        self.fields = loader.fields
        self.reads = loader.shards(epoch)
        self.rng = np.random.default_rng((loader.seed, epoch, loader.rank, 1))
        self.stop = threading.Event()
        self.jobs: queue.Queue = queue.Queue(maxsize=loader.batches_ahead)
        self.memory = loader._memory
        self.decoders = concurrent.futures.ThreadPoolExecutor(loader.num_threads, thread_name_prefix="ssl4eos12-decode")
        self.gatherers = concurrent.futures.ThreadPoolExecutor(loader.gather_threads, thread_name_prefix="ssl4eos12-gather")
        self.scheduler = threading.Thread(target=self._schedule, name="ssl4eos12-loader", daemon=True)
        self.started = False
        self.skipped = 0

    # -- the consumer's side -------------------------------------------------------------------------------------

    def next(self) -> Optional[dict]:
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

    def close(self) -> None:
        """Stop every thread and wait for it; drop every buffer and decoded block."""
        self.stop.set()
        if self.started:
            while self.scheduler.is_alive():
                self._drain()
                self.scheduler.join(timeout=_POLL)
        self._drain()
        self.decoders.shutdown(wait=True, cancel_futures=True)
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
        loader = self.loader
        draws = _Uniforms(self.rng)
        window = _Window(self._decoded_shards(), loader.shuffle_window, self.rng if loader.shuffle else None, draws)
        corner = _Corners(self.plan.layouts[0], loader.crop, loader.crop_mode, draws)
        picks = _Picks()
        for unit, example in window:
            row, t = divmod(example, unit.num_times)
            picks.add(unit, row, t if self.plan.single_timestamp else None, *corner())
            if len(picks) == loader.batch_size:
                self._emit(picks)
                picks = _Picks()
        if len(picks) and not loader.drop_last:
            self._emit(picks)

    def _decoded_shards(self) -> Iterator[list[_Unit]]:
        """This rank's shards in reading order, each as its units, with ``prefetch`` more being decoded meanwhile."""
        reads = enumerate(self.reads)
        decodes: collections.deque = collections.deque()

        def top_up():
            while len(decodes) < self.loader.prefetch and (read := next(reads, None)) is not None:
                decodes.append(self.decoders.submit(self._decode, *read))

        top_up()
        while decodes:
            done = decodes.popleft()
            top_up()  # before this shard's units wait for room in the window
            yield _wait(done, self.stop)

    def _decode(self, place: int, read: ShardRead) -> list[_Unit]:
        """Decode one shard (a decode thread): its blocks, as units of the examples asked for."""
        if self.stop.is_set():
            return []
        plan = self.plan
        try:
            times = selected_times(read.selection)  # a remote file then sends only those timestamps' chunks
            blocks = (plan.source.blocks(plan.split_folder, read.shard, plan.layouts) if times is None
                      else plan.source.blocks_at(plan.split_folder, read.shard, plan.layouts, times))
            blocks = list(fastzip.decoding(blocks, self.loader._decode_memory))
        except SSL4EOS12FileError as err:
            if plan.on_bad_file != "skip":
                raise
            self.skipped += 1
            warnings.warn(f"skipping {err} ({self.skipped} file(s) skipped in this epoch so far)",
                          SSL4EOS12BadFileWarning, stacklevel=2)
            return []
        return _units(blocks, read, plan.layouts[0].num_times if plan.single_timestamp else 1, self.fields,
                      plan.time_order, place)

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
