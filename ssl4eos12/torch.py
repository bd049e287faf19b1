"""Arrays in their native dtypes, for numpy and PyTorch.

``datasets``' numpy and torch formatters upcast int16/uint8 to int64 and float16 (even float64) to
float32: 4x the memory of an S2 time series and a copy per batch. Streaming with no format already yields
numpy arrays in the file's dtype; for Arrow data (``Dataset.with_format("arrow")``, Parquet) and for
batching, this module converts without casting:

    loader = DataLoader(streaming_ds, batch_size=8, collate_fn=ssl4eos12.collate)
    # a prepared Dataset: let it slice whole Arrow batches, one per sampled list of indices
    sampler = BatchSampler(RandomSampler(ds), batch_size=8, drop_last=False)
    loader = DataLoader(ds.with_format("arrow"), sampler=sampler, batch_size=None, collate_fn=ssl4eos12.collate)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa


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


def stack_examples(examples: Sequence[Mapping]) -> dict[str, np.ndarray | list]:
    """Stack streamed examples (dicts of numpy arrays, lists and scalars) along a new first axis."""
    batch = {}
    for name in examples[0]:
        values = [example[name] for example in examples]
        first = values[0]
        if isinstance(first, str) or (isinstance(first, list) and first and isinstance(first[0], str)):
            batch[name] = values
        else:
            batch[name] = np.stack([np.asarray(value) for value in values])
    return batch


def collate(batch: Sequence | pa.Table) -> dict:
    """``collate_fn`` for a PyTorch ``DataLoader``: native-dtype tensors, strings as lists.

    Accepts a list of streamed examples (dicts), a list of Arrow rows, or one Arrow batch
    (``with_format("arrow")``). Timestamps become int64 tensors of nanoseconds since the epoch (PyTorch
    has no datetime dtype).
    """
    import torch

    if isinstance(batch, pa.Table):
        arrays = arrow_to_numpy(batch)
    elif isinstance(batch[0], pa.Table):
        arrays = arrow_to_numpy(pa.concat_tables(batch))
    else:
        arrays = stack_examples(batch)
    out = {}
    for name, value in arrays.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "M":
            value = value.astype("datetime64[ns]").view(np.int64)
        if isinstance(value, np.ndarray):
            # Arrow buffers are read-only; torch wants memory it may write to
            value = np.ascontiguousarray(value) if value.flags.writeable else value.copy()
            value = torch.from_numpy(value)
        out[name] = value
    return out
