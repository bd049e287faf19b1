"""The file format of the published shards: Arrow IPC streams, uncompressed, in record batches of <= 32 MB.

Chosen by measurement (``benchmarks/formats.py``; figures in ``benchmarks/README.md``):

- ``datasets`` reads Parquet ``ArrayXD`` columns at ~0.1x the Blosc-decode ceiling whatever the encoding (every
  value carries Parquet's repetition/definition levels). An Arrow IPC stream holds the very buffers ``datasets``
  works with: ``load_dataset(..., streaming=True)`` reads it at memory speed with no custom code (``datasets``
  infers its packaged ``arrow`` module from the ``.arrow`` extension), the ``ArrayXD`` features kept (they travel
  in the schema's ``huggingface`` metadata, as in Parquet).
- Every config of the repository is Arrow, the light ``default`` one too: ``datasets`` (5.2) picks ONE packaged
  module per repository, from the data files of the card's first config, so a Parquet config next to Arrow ones
  fails to load (measured: "Not an Arrow file").
- Uncompressed: on the generated full-size data, LZ4 buffers saved 3% of the bytes, read at about the same speed
  (0.8-1.2x, three runs) and wrote 2-3.5x slower; zstd (level 1) saved 16% and read 3.5x slower. The Hub's Xet
  storage compresses every chunk of a file itself (LZ4, byte-grouped for numbers).
- Record batches of at most :data:`RECORD_BATCH_BYTES`: a reader holds one at a time, and below glibc's largest
  ``mmap`` threshold (32 MiB) the buffer of the next batch reuses the memory the previous one freed. Measured on
  S2L2A: batches of 4 examples (28 MB) stream at 1.2-1.7x the speed of batches of 8 (56 MB), whose buffers are
  mapped and page-faulted afresh each time.

Fixed settings and nothing that depends on time or paths: the same tables always give the same bytes.

Gathered columns: the big arrays of a source file are decoded time-major, while a record batch holds each
example's time series contiguously, so a batch would need a copy of them in example order. Instead a column is
given to pyarrow as a placeholder (an untouched buffer of zeros of the right size, :meth:`ShardWriter.gather`) and
the writer writes the source's own contiguous blocks in its place when pyarrow hands it that buffer: the same
bytes, with no copy, no page faults for a fresh batch and half the memory traffic (measured on the generated
full-size files: the per-batch copy took ~20% of the conversion's time).
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from .manifest import new_checksum

FORMAT = "arrow"
#: File name extension of the shards (what the Hub and ``datasets`` infer the format from).
EXTENSION = ".arrow"
#: Extensions of shards an older version of the package wrote (Parquet): removed when a (config, split) is
#: converted again, and from the Hub when pushing, so the two formats never mix in one repository.
OLD_EXTENSIONS = (".parquet",)
#: Uncompressed bytes per record batch (see the module's docstring).
RECORD_BATCH_BYTES = 32_000_000
#: Bytes handed to the writer's helper thread and not yet written: about two record batches.
_MAX_PENDING = 2 * RECORD_BATCH_BYTES
#: Bytes written between two starts of their writeback (see ``ShardWriter._hash_and_write``; where there is no
#: ``posix_fadvise`` the ``fsync`` at the end writes everything).
_WRITEBACK_STEP = 1 << 24
_START_WRITEBACK = hasattr(os, "posix_fadvise")
#: Smallest average contiguous block a column is gathered from (smaller ones are copied: fewer, larger writes).
GATHER_MIN_BLOCK = 1 << 16


class ShardWriter:
    """Writes a shard's record batches to ``path``, hashing the bytes on the way (no second read).

    pyarrow hands the stream's buffers (the tables' own memory, not copies) to :meth:`write`; a helper thread
    hashes and writes them in order while the caller decodes the next batch, at most :data:`_MAX_PENDING` bytes
    behind. Use as a context manager; :attr:`checksum` is the file's digest (:data:`~.manifest.CHECKSUM`) once it
    is closed, after an ``fsync``.
    """

    def __init__(self, path: Path, features: datasets.Features, metadata: dict | None = None):
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close() / __exit__
        self._digest = new_checksum()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ssl4eos12-shard-writer")
        self._pending: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._size = 0
        self._gathered: dict[tuple[int, int], list[np.ndarray]] = {}
        self._written = self._flushed = 0  # bytes written, and handed to the disk's writeback (helper thread)
        self._arena = np.zeros(0, np.uint8)
        self._arena_used = 0
        options = pa.ipc.IpcWriteOptions(compression=None)
        # the schema carries the features as ``huggingface`` metadata (and ``metadata``, if given)
        schema = features.arrow_schema
        if metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        self._stream = pa.ipc.new_stream(pa.PythonFile(self, mode="w"), schema, options=options)

    def write_table(self, table: pa.Table) -> None:
        """Append ``table`` as one record batch (its gathered columns written from their sources' blocks)."""
        try:
            self._stream.write_table(table)
            if self._gathered:  # pyarrow did not hand a placeholder over whole: its zeros would be in the file
                raise RuntimeError("a gathered column was not written as one buffer")
        finally:
            self._gathered.clear()
            self._arena_used = 0

    def gather(self, array: np.ndarray) -> np.ndarray:
        """A placeholder for ``array`` (same shape and dtype, C order) to build the next table's column from.

        When the table is written, ``array``'s bytes go to the file in its place, block by contiguous block,
        in C order: what ``np.ascontiguousarray(array)`` would hold. ``array`` must stay unchanged until the
        writer is closed or :meth:`drain`-ed.
        """
        blocks = contiguous_blocks(array)
        start = -(-self._arena_used // 64) * 64  # aligned as numpy and Arrow align buffers
        if start + array.nbytes > self._arena.nbytes:  # a new arena; placeholders in use keep the old one alive
            self._arena = np.zeros(max(2 * self._arena.nbytes, start + array.nbytes), np.uint8)  # never touched
        placeholder = self._arena[start:start + array.nbytes]
        self._arena_used = start + array.nbytes
        self._gathered[(placeholder.ctypes.data, array.nbytes)] = blocks
        return placeholder.view(array.dtype).reshape(array.shape)

    def drain(self) -> None:
        """Wait until everything handed to the writer is written (and so no longer referenced)."""
        while self._pending:
            self._wait_oldest()

    # the file-like side pyarrow writes to
    closed = False

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        blocks = self._gathered.pop((data.address, size), None) if isinstance(data, pa.Buffer) else None
        self._pending.append((self._thread.submit(self._hash_and_write, [data] if blocks is None else blocks), size))
        self._pending_bytes += size
        while self._pending_bytes > _MAX_PENDING:
            self._wait_oldest()
        self._size += size
        return size

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def _hash_and_write(self, blocks) -> None:
        for block in blocks:
            self._digest.update(block)  # both release the GIL for large buffers
            view = memoryview(block).cast("B")
            while view:  # a raw file may write less than asked
                written = self._file.write(view)
                view = view[written:]
                self._written += written
        if self._written - self._flushed >= _WRITEBACK_STEP and _START_WRITEBACK:
            # start writing the bytes so far to disk now, while the next batches are made, rather than all at once
            # in the fsync at the end: on Linux this advice on dirty pages queues their writeback and returns
            os.posix_fadvise(self._file.fileno(), self._flushed, self._written - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    def _wait_oldest(self) -> None:
        future, size = self._pending.popleft()
        self._pending_bytes -= size
        future.result()  # raises the helper's error (a full disk, ...) here

    def close(self) -> None:
        """Finish the stream, write and hash what is pending, ``fsync``; also after an error (then it re-raises)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._stream.close()
            self.drain()
            os.fsync(self._file.fileno())  # on disk before the caller renames it into place
        finally:
            for future, _ in self._pending:
                future.cancel()
            self._thread.shutdown(wait=True)
            self._file.close()

    @property
    def checksum(self) -> str:
        return self._digest.hexdigest()

    def __enter__(self) -> ShardWriter:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def contiguous_blocks(array: np.ndarray) -> list[np.ndarray]:
    """``array``'s values in C order as few contiguous pieces (views) as its strides allow."""
    outer = _outer_axes(array)
    return [array[index] for index in np.ndindex(*array.shape[:outer])] if outer else [array]


def gatherable(array: np.ndarray) -> bool:
    """Whether writing ``array`` block by block beats copying it first (not contiguous, and large blocks)."""
    if array.flags.c_contiguous or not array.size:
        return False
    return array.nbytes >= GATHER_MIN_BLOCK * math.prod(array.shape[:_outer_axes(array)])


def _outer_axes(array: np.ndarray) -> int:
    """How many leading axes are left once the trailing axes that are contiguous together are taken off."""
    outer, expected = array.ndim, array.itemsize
    while outer > 0 and (array.shape[outer - 1] == 1 or array.strides[outer - 1] == expected):
        expected *= array.shape[outer - 1]
        outer -= 1
    return outer


def read_schema(path: Path) -> pa.Schema:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).schema


def iter_tables(path: Path) -> Iterator[pa.Table]:
    """The record batches of a shard, one table each, validated as ``datasets`` validates them."""
    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            batch.validate(full=True)  # offsets and strings of a damaged file
            yield pa.Table.from_batches([batch])
