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

The members of a tar share one layout, byte for byte: :func:`template` keys what a member's decoding needs on
its ``.zmetadata`` bytes (and its ``band`` coordinate's, the one value a layout holds), so the JSON, the
checks and xarray's view of the variables are made once per layout (:class:`Template`, from the first member,
through :func:`open_member`), and each member after it is read by :func:`read_values`: its central directory
parsed with ``struct`` (no ``zipfile`` objects), its small arrays decoded chunk by chunk, their CF decoding
done as xarray does it only where it changes the values (int64 nanoseconds since the epoch are viewed as
``datetime64[ns]``, which is what xarray computes from them).
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from typing import NamedTuple

import numcodecs
import numpy as np
import xarray as xr

from . import fastzip

#: Arrays decoded by :mod:`.fastzip` (straight into their output, CRC-32 checked ahead in a thread).
BIG_ARRAYS = ("bands", "cloud_mask")
#: Coordinates whose values a layout holds (``Layout.band_names``): their chunks' bytes key a template too.
LAYOUT_VALUES = ("band",)
#: Templates kept (one per modality and layout is what a reader needs; a few more for readers of several roots).
TEMPLATES_KEPT = 64
#: CF time units whose decoding is the int64 values themselves, as ``datetime64[ns]``.
_NANOSECOND_UNITS = ("nanoseconds since 1970-01-01", "nanoseconds since 1970-01-01 00:00:00",
                     "nanoseconds since 1970-01-01T00:00:00")
_STANDARD_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")


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


class Entry(NamedTuple):
    """A zip member as its central directory records it: the fields of ``zipfile.ZipInfo`` that :mod:`.fastzip`
    reads."""

    filename: str
    header_offset: int
    compress_size: int
    CRC: int
    compress_type: int
    flag_bits: int


class _Entries(dict):
    """Name -> :class:`Entry`, with ``zipfile.ZipFile.getinfo``'s signature for :mod:`.fastzip`."""

    getinfo = dict.__getitem__


_END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory file header, 46 bytes


def entries(data: bytes) -> _Entries | _Listed | None:
    """The members of the zip ``data``, from its central directory; ``None`` for one this does not parse the way
    ``zipfile`` would (ZIP64, a comment, bytes before the zip, several disks) or with a member that is not
    stored as it is (deflated, encrypted): read those with ``zipfile``.

    The members of a tar share their zips' layout: a central directory with the names, flags and lengths of one
    parsed before (:class:`_Skeleton`) is read with a few numpy gathers instead of a Python loop over its
    entries (~10 instead of ~65 us for a member's 55, measured; every byte but the CRC-32s, sizes, offsets and
    times is checked equal to the skeleton's)."""
    end = len(data) - _END.size
    if end < 0 or data[end:end + 4] != b"PK\x05\x06":
        return None
    _, disk, cd_disk, disk_count, count, size, offset, comment = _END.unpack_from(data, end)
    if disk or cd_disk or disk_count != count or comment or offset + size != end or 0xFFFF in (count, disk_count):
        return None
    directory = bytes(data[offset:end])  # one copy of a few kB: slices of bytes cost less than a view's
    for skeleton in _SKELETONS.get((count, size), ()):
        listed = skeleton.read(directory)
        if listed is not None:
            return listed
    found = _parse_directory(directory, count)
    if found is not None:
        skeleton = _Skeleton.of(directory, found)
        with _TEMPLATES_LOCK:
            if (count, size) not in _SKELETONS and len(_SKELETONS) >= TEMPLATES_KEPT:
                _SKELETONS.clear()  # bounded as the templates are: a reader meets a few layouts
            kept = _SKELETONS.setdefault((count, size), [])
            if len(kept) < SKELETONS_KEPT:
                kept.append(skeleton)
    return found


def _parse_directory(directory: bytes, count: int) -> _Entries | None:
    found = _Entries()
    position = 0
    unpack = _CENTRAL.unpack_from
    for _ in range(count):
        (signature, _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length, comment_length,
         _, _, _, header_offset) = unpack(directory, position)
        if (signature != b"PK\x01\x02" or 0xFFFFFFFF in (compressed, size, header_offset)
                or method != zipfile.ZIP_STORED or flags & 0x1 or compressed != size):
            return None
        start = position + _CENTRAL.size
        name = directory[start:start + name_length].decode("utf-8" if flags & 0x800 else "cp437")
        found[name] = Entry(name, header_offset, compressed, crc, method, flags)
        position = start + name_length + extra_length + comment_length
    return found if position == len(directory) else None


#: Central-directory skeletons kept per (entries, size): one per layout is what a reader needs.
SKELETONS_KEPT = 8
#: Sets of rows a skeleton keeps (:meth:`_Skeleton.rows`): an array's chunks, in the orders a reader asks for.
_ROWS_KEPT = 256
#: Byte ranges of a central directory record that every member of a layout shares: signature, versions, flags,
#: method (4-12), the name, extra field and comment lengths, disk, attributes (28-42); then the name.
_SHARED_FIELDS = ((0, 12), (28, 42))


class _Skeleton:
    """What the central directories of one zip layout share, and where the per-member fields are."""

    def __init__(self, names: list[str], shared: np.ndarray, expected: np.ndarray, fields: np.ndarray,
                 flags: list[int]):
        self.index = {name: i for i, name in enumerate(names)}
        self.names = names
        self.shared = shared  # positions of the shared bytes
        self.expected = expected  # their values
        self.fields = fields  # (entries, 16) positions of CRC-32, compressed and uncompressed size, header offset
        self.flags = flags
        self._rows: dict[tuple[str, ...], np.ndarray | None] = {}

    def rows(self, keys: tuple[str, ...]) -> np.ndarray | None:
        """The entries named ``keys``, as rows of a directory of this skeleton (``None`` if one is not in it)."""
        rows = self._rows.get(keys, False)
        if rows is False:
            rows = np.array([self.index[key] for key in keys], np.intp) if all(k in self.index for k in keys) else None
            with _TEMPLATES_LOCK:
                if len(self._rows) >= _ROWS_KEPT:
                    self._rows.clear()
                self._rows[keys] = rows
        return rows

    @classmethod
    def of(cls, directory: bytes, found: _Entries) -> _Skeleton:
        shared, fields, position = [], [], 0
        for entry in found.values():
            name_length, extra_length, comment_length = struct.unpack_from("<3H", directory, position + 28)
            for start, stop in _SHARED_FIELDS:
                shared.append(np.arange(position + start, position + stop))
            shared.append(np.arange(position + _CENTRAL.size, position + _CENTRAL.size + name_length))
            fields.append(np.r_[position + 16:position + 28, position + 42:position + 46])
            position += _CENTRAL.size + name_length + extra_length + comment_length
        positions = np.concatenate(shared)
        expected = np.frombuffer(directory, np.uint8)[positions]
        return cls(list(found), positions, expected, np.array(fields), [e.flag_bits for e in found.values()])

    def read(self, directory: bytes) -> _Listed | None:
        """This directory's entries, if it has this skeleton (else ``None``)."""
        raw = np.frombuffer(directory, np.uint8)
        if not np.array_equal(raw[self.shared], self.expected):
            return None
        crc, compressed, size, offset = raw[self.fields].view("<u4").T
        if not np.array_equal(compressed, size) or (offset == 0xFFFFFFFF).any() or (size == 0xFFFFFFFF).any():
            return None
        return _Listed(self, offset.tolist(), size.tolist(), crc.tolist(), (offset, size, crc))


class _Listed:
    """:class:`_Entries` of a directory read by its :class:`_Skeleton`: each :class:`Entry` made when asked for."""

    __slots__ = ("columns", "crcs", "offsets", "sizes", "skeleton")

    def __init__(self, skeleton: _Skeleton, offsets: list[int], sizes: list[int], crcs: list[int],
                 columns: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.skeleton, self.offsets, self.sizes, self.crcs = skeleton, offsets, sizes, crcs
        self.columns = columns  # the same as arrays (header offsets, sizes, CRC-32s), for gathers

    def __contains__(self, name) -> bool:
        return name in self.skeleton.index

    def __iter__(self):
        return iter(self.skeleton.names)

    def __len__(self) -> int:
        return len(self.skeleton.names)

    def rows(self, keys: tuple[str, ...]) -> np.ndarray | None:
        """Where the members ``keys`` are in :attr:`columns`; ``None`` if one is not in the zip."""
        return self.skeleton.rows(keys)

    def getinfo(self, name: str) -> Entry:
        i = self.skeleton.index[name]  # KeyError for a missing member, as zipfile's getinfo
        return Entry(name, self.offsets[i], self.sizes[i], self.crcs[i], zipfile.ZIP_STORED, self.skeleton.flags[i])

    __getitem__ = getinfo

    def values(self) -> list[Entry]:
        return [self.getinfo(name) for name in self.skeleton.names]

    def __eq__(self, other) -> bool:
        mine = dict(zip(self.skeleton.names, self.values()))
        return mine == (dict(zip(other.skeleton.names, other.values())) if isinstance(other, _Listed) else other)

    __hash__ = None


_SKELETONS: dict[tuple[int, int], list[_Skeleton]] = {}


@dataclass(eq=False)
class _Small:
    """How to read one small array of a template's members."""

    name: str
    dims: tuple[str, ...]
    attrs: dict
    zarray: dict
    spec: tuple  # (dtype, shape, chunks, fill_value)
    rule: str  # "raw": xarray leaves the values as stored; "ns": viewed as datetime64[ns]; "cf": xarray decodes
    blosc: bool = False


@dataclass(eq=False)
class Template:
    """What the members of one layout share (:func:`template`): ``member``, the first one as :func:`open_member`
    opened it (its ``variables`` and ``coords`` are every member's, as far as a layout goes), and how each
    small array is read. ``checked``: the reader's own results per template (its layout check)."""

    member: Member
    metadata: dict
    small: dict[str, _Small]
    group_attrs: dict
    checked: dict = field(default_factory=dict)
    #: the big arrays' :func:`.fastzip.array_layout` (``None``: not the fast path's), shared by every member
    big: dict = field(default_factory=dict)
    #: the small arrays whose chunks decode in one call (:class:`_SmallChunks`), if any
    chunks: _SmallChunks | None = None


class _SmallChunks:
    """The small arrays of a template that are each one run of whole chunks (one chunk, or chunks along the first
    axis), Blosc or uncompressed: all their chunks checked and decoded by one call (:func:`.fastzip.decode_stored`)
    into one buffer, each array a view of its part of it."""

    def __init__(self, smalls: list[_Small]):
        keys, starts, nbytes, blosc = [], [], [], []
        self.arrays: dict[str, tuple[int, int, np.dtype, tuple[int, ...]]] = {}
        size = 0
        for entry in smalls:
            dtype, shape = entry.spec[:2]
            for key, _, span in _run_plan(entry):
                keys.append(key)
                starts.append(size + span.start)
                nbytes.append(span.stop - span.start)
                blosc.append(entry.blosc)
            self.arrays[entry.name] = (size, dtype.itemsize * math.prod(shape), dtype, tuple(shape))
            size += dtype.itemsize * math.prod(shape)
        self.keys = tuple(keys)
        self.size = size
        self.starts = np.array(starts, np.int64)
        self.nbytes = np.array(nbytes, np.int64)
        self.blosc = np.array(blosc, np.uint8)

    @staticmethod
    def takes(entry: _Small) -> bool:
        """Whether the small array ``entry`` is one run of whole chunks, each stored as is or Blosc-encoded."""
        compressor = entry.zarray.get("compressor")
        if compressor and not entry.blosc or entry.spec[0].kind not in "biufU" or entry.zarray.get("order", "C") != "C":
            return False
        return all(span is not None for _, _, span in _run_plan(entry))

    def read(self, found: _Listed, data) -> dict[str, np.ndarray] | None:
        """The arrays of the member ``data`` (its entries ``found``), or ``None`` where this cannot read them (a chunk
        not stored, a problem with one: the Python path then reads them, and names the problem)."""
        rows = found.rows(self.keys)
        if rows is None:
            return None
        offsets, sizes, crcs = found.columns
        flat = np.empty(self.size, np.uint8)
        done = fastzip.decode_stored(data, offsets[rows], sizes[rows], crcs[rows], flat, self.starts, self.nbytes,
                                     self.blosc)
        if done != len(self.keys):
            return None
        return {name: flat[start:start + length].view(dtype).reshape(shape)
                for name, (start, length, dtype, shape) in self.arrays.items()}


def _run_plan(entry: _Small):
    """:func:`_chunk_plan` of a small array in C order (what :meth:`_SmallChunks.takes` lets in)."""
    dtype, shape, chunks = entry.spec[:3]
    return _chunk_plan(entry.name, tuple(shape), tuple(chunks), entry.zarray.get("dimension_separator", "."), "C",
                       dtype.itemsize)


_TEMPLATES: dict[bytes, Template] = {}
_TEMPLATES_LOCK = threading.Lock()


def template(data: bytes) -> tuple[Template, _Entries | _Listed] | None:
    """The member's template and its entries; ``None`` when the member is not the simple case, or is a zip that
    :func:`entries` leaves to ``zipfile`` (read it with :func:`open_member`). Raises what a corrupt member raises
    (``zipfile.BadZipFile`` on a CRC-32 mismatch)."""
    found = entries(data)
    if found is None or ".zmetadata" not in found:
        return None
    key = [bytes(fastzip.member_bytes(found, data, ".zmetadata"))]
    for name in found:
        if name.partition("/")[0] in LAYOUT_VALUES and "/." not in name:
            key += [name.encode(), bytes(fastzip.member_bytes(found, data, name))]
    key = b"\0".join(key)
    with _TEMPLATES_LOCK:
        known = _TEMPLATES.get(key)
    if known is not None:
        return known, found
    member = open_member(data)
    if member is None:
        return None
    made = _make_template(member)
    with _TEMPLATES_LOCK:
        if len(_TEMPLATES) >= TEMPLATES_KEPT:
            _TEMPLATES.clear()
        made = _TEMPLATES.setdefault(key, made)
    return made, found


def _make_template(member: Member) -> Template:
    metadata = member._metadata
    small: dict[str, _Small] = {}
    raw = {}
    for name in member.variables:
        if name in BIG_ARRAYS:
            continue
        zarray, zattrs = metadata[f"{name}/.zarray"], metadata.get(f"{name}/.zattrs", {})
        dims = tuple(zattrs["_ARRAY_DIMENSIONS"])
        attrs = {k: v for k, v in zattrs.items() if k != "_ARRAY_DIMENSIONS"}
        spec = _simple(zarray, dims)
        if spec[3] is not None:
            attrs["_FillValue"] = spec[3]
        raw[name] = xr.Variable(dims, np.zeros(spec[1], spec[0]), attrs)
        compressor = zarray.get("compressor") or {}
        small[name] = _Small(name, dims, attrs, zarray, spec, "cf", compressor.get("id") == "blosc")
    if not _has_bounds(raw):  # else xarray lends a time's units to other variables: leave it all to xarray
        for name, entry in small.items():
            if _decodes_to_itself(raw[name]):
                entry.rule = "raw"
            elif _nanoseconds(raw[name]) and member.variables[name].dtype == np.dtype("datetime64[ns]"):
                entry.rule = "ns"
    # the member's variables and coords only: a template kept must not keep the member's bytes (~4 MB) alive
    bare = Member(member.variables, member.coords, None, b"", metadata)
    big = {name: fastzip.array_layout(name, metadata) for name in BIG_ARRAYS if name in member.variables}
    runs = [entry for entry in small.values() if _SmallChunks.takes(entry)]
    return Template(bare, metadata, small, _group_attrs(metadata), big=big,
                    chunks=_SmallChunks(runs) if runs and fastzip.decodes_natively() else None)


def _nanoseconds(variable: xr.Variable) -> bool:
    """Whether xarray decodes ``variable`` to its int64 values as datetime64[ns]: nanoseconds since the epoch, a
    standard calendar, no fill value, scale or offset (the release's ``time``)."""
    attrs = {k: v for k, v in variable.attrs.items() if k != "coordinates"}
    return (variable.dtype == np.int64 and attrs.get("units") in _NANOSECOND_UNITS
            and attrs.get("calendar", "standard") in _STANDARD_CALENDARS and set(attrs) <= {"units", "calendar"})


def read_values(made: Template, data: bytes, found: _Entries | _Listed, names, out=None) -> dict[str, np.ndarray]:
    """The values of the variables ``names`` of a member of template ``made`` (``found``: its entries), as xarray
    reads them; the big ones decoded straight into the arrays of ``out`` where it has them."""
    values = fastzip.decode_arrays(found, data, made.metadata, [n for n in names if n in BIG_ARRAYS],
                                   crc_thread=False, out=out, layouts=made.big)
    undecoded = {}
    address = functools.cache(lambda: fastzip.buffer_address(data))  # where data is, for the arrays read one by one
    runs = made.chunks.read(found, data) if made.chunks is not None and isinstance(found, _Listed) else None
    for name in names:
        if name in BIG_ARRAYS:
            continue
        entry = made.small[name]
        dtype, shape, chunks, fill_value = entry.spec
        array = runs.get(name) if runs is not None else None
        if array is None:
            array = _read_small(found, data, name, entry.zarray, dtype, shape, chunks, fill_value, address())
        if entry.rule == "raw":
            values[name] = array
        elif entry.rule == "ns":
            values[name] = array.view("datetime64[ns]")
        else:
            undecoded[name] = xr.Variable(entry.dims, array, entry.attrs)
    if undecoded:  # with every variable xarray decodes: a bounds variable takes its time's attributes
        for name, entry in made.small.items():
            if entry.rule == "cf" and name not in undecoded:
                dtype, shape, chunks, fill_value = entry.spec
                array = _read_small(found, data, name, entry.zarray, dtype, shape, chunks, fill_value, address())
                undecoded[name] = xr.Variable(entry.dims, array, entry.attrs)
        decoded, _, _ = xr.conventions.decode_cf_variables(undecoded, made.group_attrs)
        values.update({name: np.asarray(decoded[name].values) for name in names if name in undecoded})
    return values


def open_member(data: bytes) -> Member | None:
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
                fill_value, base: int | None = None) -> np.ndarray:
    """A small array assembled from its decoded chunks (``base``: where ``data`` is in memory, if known).

    A chunk that is not stored (a writer skips chunks that hold only the fill value: a time offset of 0)
    reads as zarr reads it: the fill value, or for a null one the dtype's default (0, ``""``).
    """
    compressor = zarray.get("compressor")
    blosc = bool(compressor) and compressor.get("id") == "blosc"
    codec = numcodecs.get_codec(compressor) if compressor and not blosc else None
    order = zarray.get("order", "C")
    out = np.zeros(shape, dtype) if fill_value is None else np.full(shape, fill_value, dtype)
    flat = out.reshape(-1).view(np.uint8)  # a view: C order, as np.zeros makes it
    for key, target, span in _chunk_plan(name, tuple(shape), tuple(chunks), zarray.get("dimension_separator", "."),
                                         order, dtype.itemsize):
        try:
            stored, start = fastzip.stored_member(zf, data, key)
        except KeyError:
            continue
        address = None if base is None or start is None else base + start
        if blosc and span is not None:  # a whole chunk that is a run of the array: decoded where it goes
            size = fastzip.blosc_decoded_size(stored)
            if size != span.stop - span.start:
                raise ValueError(f"chunk {key} decodes to {size} bytes, expected {span.stop - span.start}")
            fastzip.blosc_decode_into(stored, flat[span], address)
            continue
        if blosc:  # straight through c-blosc (fastzip.blosc_decode_into): no codec object, no GIL while decoding
            decoded = np.empty(max(0, fastzip.blosc_decoded_size(stored)), np.uint8)
            fastzip.blosc_decode_into(stored, decoded, address)
        else:
            decoded = codec.decode(stored) if codec is not None else stored
        chunk = np.frombuffer(decoded, dtype)
        if chunk.size != math.prod(chunks):
            raise ValueError(f"chunk {key} decodes to {chunk.size} items, expected {math.prod(chunks)}")
        chunk = chunk.reshape(chunks, order=order)
        out[target] = chunk[tuple(slice(0, t.stop - t.start) for t in target)]
    return out


@functools.lru_cache(maxsize=256)
def _chunk_plan(name: str, shape: tuple[int, ...], chunks: tuple[int, ...], separator: str, order: str,
                itemsize: int) -> tuple[tuple[str, tuple[slice, ...], slice | None], ...]:
    """Each chunk of an array: its key, where it goes in the array, and the bytes of the C-order array it fills
    where it is a whole chunk that is one run of them (``None`` otherwise: copied in through its target)."""
    plan = []
    for index in np.ndindex(*(math.ceil(s / c) for s, c in zip(shape, chunks))):
        target = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
        # a run: the chunk splits the first axis at most (C order, full extent along the others, not cut short)
        run = order == "C" and all(c == s for c, s in zip(chunks[1:], shape[1:])) and \
            (not shape or target[0].stop - target[0].start == chunks[0])
        row = math.prod(shape[1:]) * itemsize
        span = slice(target[0].start * row, target[0].stop * row) if run and shape else slice(0, itemsize) if run \
            else None
        plan.append((f"{name}/{separator.join(map(str, index)) or '0'}", target, span))
    return tuple(plan)
