"""The fast path's parallel decoding and its reused memory: values equal to xarray's whatever the threads, errors
in file order, no thread left behind, and memory never handed out while in use."""

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_identical, open_with_xarray

from ssl4eos12.sources import fastzip

#: Arrays chunked one timestamp per chunk (decoded time-major) and a small one in a single chunk.
NAMES = ["bands", "cloud_mask", "center_lat"]


@pytest.fixture(autouse=True)
def parallel_small_arrays(monkeypatch):
    """The fixtures' arrays are a few kB: decoded on threads all the same."""
    monkeypatch.setattr(fastzip, "PARALLEL_BYTES", 1)


def read(path: Path, threads: int, pool=None) -> dict:
    def blocks():
        yield fastzip.read_arrays(path, NAMES)

    [arrays] = fastzip.decoding(blocks(), pool, threads)
    return arrays


def decode_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ssl4eos12-decode")]


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_chunks_decoded_on_threads_are_xarrays_values(data_dir, threads):
    for modality in ("S2L2A", "S1GRD"):
        path = next((data_dir / "train" / modality).glob("*.zarr.zip"))
        arrays, expected = read(path, threads), open_with_xarray(path)
        assert set(arrays) == set(NAMES) & set(expected.variables)
        for name, values in arrays.items():
            assert_identical(values, expected[name].values, f"{modality} {name}, {threads} threads")
    assert not decode_threads()


@pytest.mark.parametrize("member", [0, 2, 3])
def test_a_corrupt_chunk_raises_naming_it_and_leaves_no_thread(data_dir, tmp_path, member):
    source = next((data_dir / "train" / "S2L2A").glob("*.zarr.zip"))
    path = tmp_path / source.name
    data = bytearray(source.read_bytes())
    name = f"bands/0.{member}.0.0.0"  # one chunk per timestamp
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo(name)
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    for threads in (1, 2, 4):
        with pytest.raises(zipfile.BadZipFile, match=f"Bad CRC-32 for file '{name}'"):
            read(path, threads)
        assert not decode_threads()


def test_threads_are_set_only_while_a_block_is_decoded(data_dir):
    seen = []

    def blocks():
        seen.append(fastzip._THREADS.get())
        yield 1
        seen.append(fastzip._THREADS.get())

    for _ in fastzip.decoding(blocks(), threads=3):
        seen.append(fastzip._THREADS.get())  # the consumer's own reads keep the default
    assert seen == [3, 1, 3]


def test_a_pool_hands_out_a_buffer_again_only_when_nothing_refers_to_it(monkeypatch):
    monkeypatch.setattr(fastzip.ArrayPool, "MIN_BYTES", 0)
    pool = fastzip.ArrayPool(2)
    first = pool.empty((4, 10), np.int16)
    first[...] = 7
    view = first[1:]  # a view keeps the buffer in use
    del first
    second = pool.empty((4, 10), np.int16)
    assert second.base is not view.base and np.all(view == 7)
    del view
    # idle now: taken for an array of up to its size, of any dtype and shape (S2L2A's bands in S2L1C's)
    smaller = pool.empty((3, 3, 2), np.float32)
    assert smaller.flags.c_contiguous and smaller.shape == (3, 3, 2) and smaller.dtype == np.float32
    assert len(pool.buffers) == 2 and smaller.base is not second.base and smaller.base.nbytes == 80
    # a buffer more than twice the size asked for is not tied up: a fresh array, and the pool is full
    tiny = pool.empty((2,), np.int16)
    assert tiny.base is None or all(tiny.base is not b for b in pool.buffers)
    del smaller
    bigger = pool.empty((50,), np.int16)  # nothing fits: an idle buffer makes room for a new one
    assert len(pool.buffers) == 2 and any(bigger.base is b for b in pool.buffers)


def test_reused_memory_gives_each_file_its_own_values(data_dir, monkeypatch):
    """Files of two modalities decoded in turn into one pool: every array holds its own file's values."""
    monkeypatch.setattr(fastzip.ArrayPool, "MIN_BYTES", 0)
    pool = fastzip.ArrayPool(3)
    paths = [p for m in ("S2L1C", "S2L2A", "S2L1C") for p in sorted((data_dir / "train" / m).glob("*.zarr.zip"))]
    for path in paths:
        arrays = read(path, 2, pool)
        expected = open_with_xarray(path)
        for name, values in arrays.items():
            assert_identical(values, expected[name].values, f"{path.parent.name}/{path.name} {name}")
        del arrays
    assert len(pool.buffers) == 3


@pytest.mark.parametrize("cname", ["lz4", "zstd", "blosclz"])
@pytest.mark.parametrize("shuffle", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "int64"])
def test_blosc_decode_into_equals_numcodecs(cname, shuffle, dtype):
    """The chunks decoded by blosc_decode_into are the codec's values, for every shuffle and type size."""
    import numcodecs

    values = (np.random.default_rng(3).normal(size=(3, 50, 70)) * 100).astype(dtype)
    chunk = numcodecs.Blosc(cname=cname, clevel=5, shuffle=shuffle).encode(values)
    out = np.empty_like(values)
    assert fastzip.blosc_decoded_size(chunk) == out.nbytes
    fastzip.blosc_decode_into(memoryview(chunk), out)
    assert_identical(out, np.frombuffer(numcodecs.Blosc().decode(chunk), dtype).reshape(values.shape), "decoded")
    assert_identical(out, values, "round trip")


def test_blosc_decode_into_refuses_a_truncated_chunk():
    import numcodecs

    chunk = numcodecs.Blosc().encode(np.arange(10_000, dtype=np.int16))
    out = np.empty(10_000, np.int16)
    with pytest.raises(ValueError, match="header"):
        fastzip.blosc_decode_into(memoryview(chunk)[:-10], out)  # the header claims bytes the chunk has not
    with pytest.raises(ValueError):
        fastzip.blosc_decode_into(memoryview(chunk)[:8], out)
