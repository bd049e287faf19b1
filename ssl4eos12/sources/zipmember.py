"""One small Zarr v2 zip held in memory (a tar member: one location), decoded without zarr.

Opening a member with ``xarray.open_zarr`` costs ~30 ms of fixed overhead (zarr's store, group and array
objects, its event loop), and reading its dozen tiny variables through zarr's synchronous calls another
~25 ms; the member's data decodes in a few. Here the zip's ``.zmetadata`` is parsed once, the big arrays
(``bands``, ``cloud_mask``) are Blosc-decoded by :mod:`.fastzip` straight from the member's bytes, and the
small ones are decoded chunk by chunk with numcodecs. Their CF decoding (fill-value masking, times) is
xarray's own: the raw arrays go through :func:`xarray.conventions.decode_cf_variables` with the attributes
and the ``_FillValue`` that xarray's zarr backend gives them (all but those it would leave as they are), so
the values and dtypes are what xarray reads from the member.

Only the simple case is read here: consolidated Zarr v2, no filters, a native ``b/i/u/f/U`` dtype, a fill
value that is null (or NaN for floats), the big arrays as :mod:`.fastzip` takes them. For anything else
:func:`open_member` returns ``None`` and the caller reads the member through xarray.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from typing import Optional

import numcodecs
import numpy as np
import xarray as xr

from . import fastzip

#: Arrays decoded by :mod:`.fastzip` (straight into their output, CRC-32 checked ahead in a thread).
BIG_ARRAYS = ("bands", "cloud_mask")


@dataclass(frozen=True)
class ArraySpec:
    """What a big array will decode to, before it is decoded: enough to check a layout."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class Member:
    """A member's variables as xarray would open them: decoded small ones, the big ones' specs.

    ``variables`` maps every array to an ``xarray.Variable`` (already CF-decoded, lazily as xarray does) or,
    for :data:`BIG_ARRAYS`, an :class:`ArraySpec`; ``coords`` are the names xarray makes coordinates.
    """

    variables: dict
    coords: frozenset
    _zip: zipfile.ZipFile
    _data: bytes
    _metadata: dict

    def read_big(self, names, out=None) -> dict[str, np.ndarray]:
        """Decode the big arrays ``names`` (:func:`open_member` made sure that :mod:`.fastzip` takes each), into
        the arrays of ``out`` where it has them."""
        return fastzip.decode_arrays(self._zip, self._data, self._metadata, names, crc_thread=False, out=out)


def open_member(data: bytes) -> Optional[Member]:
    """The member's variables, or ``None`` when it is not the simple case (read it through xarray).

    Raises whatever a corrupt member raises (``zipfile.BadZipFile``, a codec's error); the caller then also
    reads it through xarray, which names the problem.
    """
    zf = zipfile.ZipFile(io.BytesIO(data))
    metadata = json.loads(zf.read(".zmetadata"))["metadata"]
    if not isinstance(metadata, dict) or metadata.get(".zgroup", {}).get("zarr_format") != 2:
        return None
    names = sorted({key.rsplit("/", 1)[0] for key in metadata if key.endswith("/.zarray")})
    if any("/" in name for name in names):  # nested groups: xarray's business
        return None
    raw: dict[str, xr.Variable] = {}
    big: dict[str, ArraySpec] = {}
    for name in names:
        zarray, zattrs = metadata[f"{name}/.zarray"], metadata.get(f"{name}/.zattrs", {})
        if not isinstance(zattrs, dict) or not isinstance(zattrs.get("_ARRAY_DIMENSIONS"), list):
            return None
        dims = tuple(zattrs["_ARRAY_DIMENSIONS"])
        attrs = {k: v for k, v in zattrs.items() if k != "_ARRAY_DIMENSIONS"}
        spec = _simple(zarray, dims)
        if spec is None:
            return None
        dtype, shape, chunks, fill_value = spec
        if name in BIG_ARRAYS:
            if not fastzip.plannable(zf, name, metadata):
                return None
            big[name] = ArraySpec(dims, shape, dtype)
            continue
        values = _read_small(zf, data, name, zarray, dtype, shape, chunks, fill_value)
        if fill_value is not None:  # as xarray's zarr backend does: Zarr's fill value means _FillValue
            attrs["_FillValue"] = fill_value
        raw[name] = xr.Variable(dims, values, attrs)
    # xarray's own decoding, with open_zarr's defaults (masking, CF times), of the variables it would change:
    # ~0.1 ms a variable, and most of a member's dozen decode to themselves
    unchanged = {} if _has_bounds(raw) else {name: v for name, v in raw.items() if _decodes_to_itself(v)}
    decoded, _, coord_names = xr.conventions.decode_cf_variables(
        {name: v for name, v in raw.items() if name not in unchanged}, _group_attrs(metadata))
    decoded.update(unchanged)
    # the "coordinates" attribute as xarray reads it: names among the small variables
    coord_names |= {c for v in raw.values() for c in str(v.attrs.get("coordinates", "")).split() if c in raw}
    coords = set(coord_names) | {name for name, v in decoded.items() if v.dims == (name,)}
    coords |= {name for name, spec in big.items() if spec.dims == (name,)}
    for name, spec in big.items():
        coords |= set(str(metadata[f"{name}/.zattrs"].get("coordinates", "")).split())
    variables = {**decoded, **big}
    return Member(variables, frozenset(coords & set(variables)), zf, data, metadata)


def _decodes_to_itself(variable: xr.Variable) -> bool:
    """Whether xarray's CF decoding leaves ``variable``'s values and dtype as they are: no attribute but
    ``coordinates`` (which names coordinates only) and a NaN ``_FillValue`` on float32/64 (masked to NaN)."""
    attrs = variable.attrs
    if not set(attrs) <= {"coordinates", "_FillValue"}:
        return False
    return "_FillValue" not in attrs or (variable.dtype in (np.float32, np.float64) and np.isnan(attrs["_FillValue"]))


def _has_bounds(variables: dict) -> bool:
    # xarray gives a time variable's units to the variable its "bounds" names, which then decodes as times
    return any("bounds" in v.attrs for v in variables.values())


def _group_attrs(metadata: dict) -> dict:
    attrs = metadata.get(".zattrs", {})
    return attrs if isinstance(attrs, dict) else {}


def _simple(zarray, dims: tuple[str, ...]):
    """``(dtype, shape, chunks, fill_value)`` of an array in the simple case, else ``None``."""
    spec = fastzip.array_spec(zarray)
    if spec is None:
        return None
    dtype, shape, chunks = spec
    fill_value = zarray.get("fill_value")
    if (
        zarray.get("zarr_format") != 2
        or zarray.get("filters")
        or zarray.get("order", "C") not in ("C", "F")
        or dtype.kind not in "biufU"
        or not dtype.isnative
        or len(shape) != len(chunks) or len(dims) != len(shape)
        or 0 in chunks
        or not (fill_value is None or (dtype.kind == "f" and fill_value == "NaN"))
    ):
        return None
    # zarr hands xarray the fill value as a scalar of the array's dtype
    return dtype, shape, chunks, None if fill_value is None else dtype.type(np.nan)


def _read_small(zf: zipfile.ZipFile, data: bytes, name: str, zarray: dict, dtype: np.dtype, shape, chunks,
                fill_value) -> np.ndarray:
    """A small array assembled from its decoded chunks.

    A chunk that is not stored (a writer skips chunks that hold only the fill value: a time offset of 0)
    reads as zarr reads it: the fill value, or for a null one the dtype's default (0, ``""``).
    """
    compressor = zarray.get("compressor")
    codec = numcodecs.get_codec(compressor) if compressor else None
    order = zarray.get("order", "C")
    separator = zarray.get("dimension_separator", ".")
    out = np.zeros(shape, dtype) if fill_value is None else np.full(shape, fill_value, dtype)
    for index in np.ndindex(*(math.ceil(s / c) for s, c in zip(shape, chunks))):
        try:
            stored = fastzip.member_bytes(zf, data, f"{name}/{separator.join(map(str, index)) or '0'}")
        except KeyError:
            continue
        decoded = codec.decode(stored) if codec is not None else stored
        chunk = np.frombuffer(decoded, dtype)
        if chunk.size != math.prod(chunks):
            raise ValueError(f"chunk {name}/{index} decodes to {chunk.size} items, expected {math.prod(chunks)}")
        chunk = chunk.reshape(chunks, order=order)
        target = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
        out[target] = chunk[tuple(slice(0, t.stop - t.start) for t in target)]
    return out
