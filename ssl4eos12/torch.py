"""Arrays in their native dtypes, for numpy and PyTorch.

``datasets``' numpy and torch formatters upcast int16/uint8 to int64 and float16 (even float64) to
float32: 4x the memory of an S2 time series and a copy per batch. This module keeps the files' dtypes:

- Streaming with no format yields numpy arrays in the file's dtype; a prepared ``Dataset`` of the builder
  comes formatted as :data:`NATIVE_FORMAT` (numpy arrays in the file's dtype, strings as ``str``), so both
  give the same values. ``ds.with_format(None)`` goes back to ``datasets``' Python objects.
- :func:`collate` batches streamed examples, rows of a prepared ``Dataset``, or Arrow batches
  (``with_format("arrow")``, converted Parquet) into tensors without casting::

      loader = DataLoader(ds, batch_size=8, collate_fn=ssl4eos12.collate)         # streaming or prepared
      # Arrow batches of a prepared Dataset or the Parquet: let it slice whole batches, one per list of indices
      sampler = BatchSampler(RandomSampler(ds), batch_size=8, drop_last=False)
      loader = DataLoader(ds.with_format("arrow"), sampler=sampler, batch_size=None, collate_fn=ssl4eos12.collate)
      # streamed Arrow rows (the converted Parquet with streaming=True)
      loader = DataLoader(ds.with_format("arrow"), batch_size=8, collate_fn=ssl4eos12.collate)

Timestamps (the ``M_time`` fields): PyTorch has no datetime dtype, so every tensor this package makes
holds them as **int64 nanoseconds since 1970-01-01 UTC** (``NaT`` as the int64 minimum), the values of
``numpy.datetime64[ns]``: ``collate`` does so, and so does ``ds.with_format("torch")`` once
``ssl4eos12`` is imported (without it, ``datasets`` raises on timestamp columns). Back to dates:
``tensor.numpy().astype("datetime64[ns]")``. This is the one place that convention is defined.

DataLoader workers started with ``spawn`` (the default on macOS and Windows) import ``ssl4eos12`` for a
prepared dataset, or with ``collate_fn=ssl4eos12.collate``; with ``with_format("torch")`` and torch's own
collate, pass ``worker_init_fn=ssl4eos12.install_formats`` so the workers know the timestamp convention too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from .errors import require_extra

#: The format type of the builder's prepared datasets: numpy arrays of the files' dtypes, strings as ``str``.
NATIVE_FORMAT = "ssl4eos12-numpy"


class _Registrar(str):
    """Kept in a prepared dataset's format options: unpickling it (a spawned DataLoader worker) imports this
    package, which registers :data:`NATIVE_FORMAT` there before the dataset is read. A ``str``, so that
    ``save_to_disk`` can write it to its JSON state (as the string ``"ssl4eos12"``)."""


def native_format(dataset):
    """``dataset`` in :data:`NATIVE_FORMAT`, readable in spawned processes and savable with ``save_to_disk``.

    ``datasets.load_from_disk`` restores the format in a process that has imported ``ssl4eos12`` (which registers
    it); elsewhere ``datasets`` does not know the format: import ``ssl4eos12`` first.
    """
    return dataset.with_format(NATIVE_FORMAT, registered_by=_Registrar("ssl4eos12"))


def arrow_column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray | list:
    """One column as a numpy array of its native dtype, shaped ``(rows, *cell_shape)``.

    Fixed-shape arrays (``ArrayND`` extension types, fixed-length lists) become one n-d array without a
    copy where Arrow allows; strings stay a list of ``str``.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    shape = [len(array)]
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        if pa.types.is_fixed_size_list(array.type):
            shape.append(array.type.list_size)
        else:
            lengths = set(array.value_lengths().to_pylist())
            if len(lengths) > 1:
                return array.to_pylist()  # ragged: no n-d array to make
            shape.append(lengths.pop() if lengths else 0)
        array = array.flatten()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        values = np.array(array.to_pylist(), dtype=object)
        return values.reshape(shape).tolist() if len(shape) > 1 else array.to_pylist()
    return array.to_numpy(zero_copy_only=False).reshape(shape)


def arrow_to_numpy(table: pa.Table) -> dict[str, np.ndarray | list]:
    """Every column of ``table`` as native-dtype numpy arrays (strings as lists)."""
    return {name: arrow_column_to_numpy(table.column(name)) for name in table.column_names}


def timestamps_to_int64(values: np.ndarray) -> np.ndarray:
    """``datetime64`` values as int64 nanoseconds since the epoch (the module docstring's convention)."""
    return np.asarray(values).astype("datetime64[ns]").view(np.int64)


def collate(batch: Sequence | pa.Table | Mapping) -> dict:
    """``collate_fn`` for a PyTorch ``DataLoader``: native-dtype tensors, strings as lists.

    Accepts a list of examples (streamed, or rows of a prepared ``Dataset``: numpy arrays, or Python lists
    after ``with_format(None)``), a list of one-row Arrow tables, or one Arrow batch (``with_format("arrow")``).
    Each tensor is allocated once, in shared memory inside a DataLoader worker (as torch's own
    ``default_collate`` does, so the batch is not copied again on its way to the main process).
    Timestamps become int64 nanoseconds since the epoch (see the module docstring).
    """
    require_extra("torch", "torch", "ssl4eos12.collate (torch tensors)",
                  "without torch, ssl4eos12.arrow_to_numpy gives an Arrow batch as numpy arrays in the files' dtypes")
    if isinstance(batch, pa.Table):
        return {name: _column_tensor(values) for name, values in arrow_to_numpy(batch).items()}
    if isinstance(batch, Mapping):  # a batch already, as the dataset's own __getitems__ may give
        return {name: _column_tensor(values) for name, values in batch.items()}
    if not len(batch):
        raise ValueError("collate: empty batch")
    if isinstance(batch[0], pa.Table):
        return collate(pa.concat_tables(batch))
    return {name: _stack([example[name] for example in batch]) for name in batch[0]}


def _is_text(value) -> bool:
    return isinstance(value, (str, bytes)) or (isinstance(value, (list, tuple)) and bool(value)
                                                 and isinstance(value[0], (str, bytes)))


def _as_array(value) -> np.ndarray:
    """One example's value as numpy; Python dates (a ``Dataset`` without format) as ``datetime64[ns]``."""
    array = np.asarray(value)
    if array.dtype == object:
        array = np.asarray(value, dtype="datetime64[ns]")
    return array


def _stack(values: list):
    """Examples' values of one field, stacked along a new first axis into one tensor (strings: a list)."""
    if _is_text(values[0]) or values[0] is None:
        return values
    first = _as_array(values[0])
    out = _empty((len(values), *first.shape), first.dtype)
    target = out.numpy()
    for i, value in enumerate(values):
        array = first if i == 0 else _as_array(value)
        target[i] = timestamps_to_int64(array) if array.dtype.kind == "M" else array
    return out


def _column_tensor(values):
    """A ``(rows, ...)`` column as a tensor, copied once into memory torch may write to (and share)."""
    if not isinstance(values, np.ndarray) or values.dtype == object:
        return values  # strings, ragged lists
    out = _empty(values.shape, values.dtype)
    out.numpy()[...] = timestamps_to_int64(values) if values.dtype.kind == "M" else values
    return out


def _empty(shape: tuple[int, ...], dtype: np.dtype):
    """An uninitialised tensor; in a DataLoader worker, in shared memory, as ``default_collate`` allocates."""
    import torch

    dtype = np.dtype(np.int64) if dtype.kind == "M" else dtype
    torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch_dtype)
    like = torch.empty(0, dtype=torch_dtype)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(*shape)


def _native_formatter_class():
    """A ``datasets`` formatter giving numpy arrays of the Arrow data's own dtypes (see :data:`NATIVE_FORMAT`)."""
    from datasets.formatting.formatting import Formatter

    class NativeNumpyFormatter(Formatter):
        """Rows and batches as native-dtype numpy arrays (strings as ``str``, string lists as lists)."""

        def __init__(self, features=None, token_per_repo_id=None, registered_by=None):
            super().__init__(features=features, token_per_repo_id=token_per_repo_id)

        def format_row(self, pa_table: pa.Table) -> dict:
            return {name: values[0] for name, values in self.format_batch(pa_table).items()}

        def format_column(self, pa_table: pa.Table):
            return arrow_column_to_numpy(pa_table.column(0))

        def format_batch(self, pa_table: pa.Table) -> dict:
            return self._decode(arrow_to_numpy(pa_table))

        def _decode(self, batch: dict) -> dict:
            # features that need decoding (images of the converted default config) go through datasets
            if self.features is None or not any(getattr(f, "decode", False) for f in self.features.values()):
                return batch
            return self.python_features_decoder.decode_batch(batch)

    return NativeNumpyFormatter


def install_formats(*_worker_id) -> None:
    """Register :data:`NATIVE_FORMAT`, and teach ``with_format("torch")`` the timestamp convention (idempotent).

    ``datasets``' ``TorchFormatter`` hands ``datetime64`` arrays to ``torch.tensor``, which raises; wrapped, such
    values become int64 nanoseconds first. Every other value goes to ``datasets`` unchanged. Also a
    DataLoader ``worker_init_fn`` (which passes the worker id, ignored).
    """
    from datasets.formatting import _FORMAT_TYPES, _register_formatter

    if NATIVE_FORMAT not in _FORMAT_TYPES:
        _register_formatter(_native_formatter_class(), NATIVE_FORMAT)
    try:
        from datasets.formatting.torch_formatter import TorchFormatter
    except ImportError:  # torch not installed: nothing to teach
        return
    original = TorchFormatter._tensorize
    if getattr(original, "_ssl4eos12", False):
        return

    def _tensorize(self, value):
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind == "M":
            value = timestamps_to_int64(value)
        return original(self, value)

    _tensorize._ssl4eos12 = True
    TorchFormatter._tensorize = _tensorize
