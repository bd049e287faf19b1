"""The direct decoding of tar members (``sources.zipmember``) against xarray, and its fallback to xarray.

Every member of every modality is read both ways, field for field and dtype for dtype, and against what
``xarray.open_zarr`` reads from it; members that are not the simple case (a filter, a fill value) must be
left to xarray and still read the same.
"""

from __future__ import annotations

import io
import tarfile
import zipfile

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import assert_identical, open_with_xarray

from ssl4eos12.sources import fastzip, zipmember
from ssl4eos12.sources.webdataset import _read_member, _read_member_xarray, member_layout
from ssl4eos12.synth.webdataset import synthesize_webdataset, zarr_zip_bytes

SEVEN = ["S2L1C", "S2L2A", "S2RGB", "S1GRD", "NDVI", "LULC", "DEM"]
#: zarr 3's default, which synth overrides: a chunk equal to the fill value everywhere is not stored.
SKIP_EMPTY_CHUNKS = {"write_empty_chunks": False}


@pytest.fixture(scope="module")
def wds_root(tmp_path_factory):
    return synthesize_webdataset(tmp_path_factory.mktemp("wds-members"), splits=("validation",), files=1,
                                 samples=3, size=16)


def tar_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name.split(".", 1)[0], tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def xarray_values(data: bytes, names, tmp_path) -> dict[str, np.ndarray]:
    """The reference: each variable as xarray reads it from the member (``time_``: the time coordinate)."""
    path = tmp_path / "member.zarr.zip"
    path.write_bytes(data)
    ds = open_with_xarray(path)
    values = {name: ds["time" if name == "time_" and "time_" not in ds else name].values for name in names}
    values["sample"] = np.asarray(ds["sample"].values).astype(str)
    return values


def assert_same(actual: dict, expected: dict, where: str) -> None:
    assert set(actual) == set(expected), f"{where}: {sorted(set(actual) ^ set(expected))}"
    for name, value in expected.items():
        assert_identical(actual[name], value, f"{where}.{name}")
        assert np.shape(actual[name]) == np.shape(value), f"{where}.{name}: shape"


def read_both(where: str, modality: str, data: bytes, tmp_path):
    """The member read directly and through xarray (the layout from xarray's view); both must agree with xarray."""
    with zarr.storage.ZipStore(_write(tmp_path, data), mode="r") as store:
        ds = xr.open_zarr(store, consolidated=True)
        layout = member_layout(where, modality, ds.variables, set(ds.coords))
    fast, slow = _read_member(where, layout, data), _read_member_xarray(where, layout, data)
    assert_same(fast, slow, where)
    assert_same(fast, xarray_values(data, [n for n in fast if n != "sample"], tmp_path), where)
    return layout, fast


def _write(tmp_path, data: bytes):
    path = tmp_path / "layout.zarr.zip"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("modality", SEVEN)
def test_direct_decoding_equals_xarray(wds_root, modality, tmp_path):
    members = tar_members(next((wds_root / "val" / modality).glob("*.tar")))
    for key, data in members:
        member = zipmember.open_member(data)
        assert member is not None, f"{modality}:{key} should take the direct path"
        layout, values = read_both(f"{modality}:{key}", modality, data, tmp_path)
        # the member's own view gives the same layout as xarray's
        assert member_layout(key, modality, member.variables, member.coords) == layout
        assert values["time_"].dtype == np.dtype("datetime64[ns]")
    if modality == "NDVI":  # the generator puts no-data (NaN) pixels in the first location
        assert np.isnan(_read_member("NDVI", layout, members[0][1])["bands"]).any()


@pytest.mark.parametrize("modality", ["S2L2A", "S1GRD", "NDVI"])
def test_chunks_decoded_natively_through_ctypes_or_numcodecs_alike(wds_root, modality, tmp_path, monkeypatch):
    """A member's chunks go to the compiled helper (one call for a member's chunks, no GIL), else to c-blosc
    through ctypes chunk by chunk where numcodecs exports it, else through numcodecs: the same values every way,
    all equal to xarray's."""
    from ssl4eos12.sources import fastzip

    assert fastzip.decodes_natively(), "the compiled chunk helper (ssl4eos12/sources/_chunks.c) was not built"
    assert fastzip._blosc_decompress is not None  # numcodecs' wheels export it: the ctypes path is the one tested
    members = tar_members(next((wds_root / "val" / modality).glob("*.tar")))
    calls, real_native = [], fastzip._chunks.decode
    monkeypatch.setattr(fastzip._chunks, "decode", lambda *args: calls.append(len(args[1])) or real_native(*args))
    natively = [read_both(f"{modality}:{key}", modality, data, tmp_path)[1] for key, data in members]
    assert calls, "the chunks went through the compiled helper"
    monkeypatch.setattr(fastzip, "_NATIVE", None)
    calls.clear()
    real = fastzip._blosc_decompress
    monkeypatch.setattr(fastzip, "_blosc_decompress", lambda *args: calls.append(args[3]) or real(*args))
    through_ctypes = [read_both(f"{modality}:{key}", modality, data, tmp_path)[1] for key, data in members]
    assert calls, "the big arrays' chunks went through c-blosc"
    monkeypatch.setattr(fastzip, "_blosc_decompress", None)
    through_numcodecs = [read_both(f"{modality}:{key}", modality, data, tmp_path)[1] for key, data in members]
    for (key, _), native, ctypes_, numcodecs_ in zip(members, natively, through_ctypes, through_numcodecs):
        assert_same(native, ctypes_, key)
        assert_same(native, numcodecs_, key)


@pytest.mark.parametrize("chunk", ["bands/1.0.0.0", "time/2", "center_lat/0", "x_/0"])
@pytest.mark.parametrize("damage", ["crc", "blosc-size"])
def test_a_damaged_chunk_is_named_on_every_path(wds_root, tmp_path, monkeypatch, chunk, damage):
    """A chunk whose bytes do not match its CRC-32, or whose Blosc header claims more bytes than it has: the
    compiled helper stops there and the Python path names it, as zipfile or Blosc would, natively or not."""
    from ssl4eos12.sources import fastzip

    key, data = tar_members(next((wds_root / "val" / "S2L2A").glob("*.tar")))[1]
    with zarr.storage.ZipStore(_write(tmp_path, data), mode="r") as store:
        ds = xr.open_zarr(store, consolidated=True)
        layout = member_layout(key, "S2L2A", ds.variables, set(ds.coords))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(chunk)
        compressed = json_compressor(zf, chunk.split("/")[0]) is not None
    if damage == "blosc-size" and not compressed:
        pytest.skip("an uncompressed chunk has no Blosc header")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged = bytearray(data)
    if damage == "crc":
        damaged[start + info.compress_size - 1] ^= 0xFF
        expected = (zipfile.BadZipFile, f"Bad CRC-32 for file '{chunk}'")
    else:  # the header's compressed size, and the CRC-32 in both directories made to match the damaged bytes
        damaged[start + 12:start + 16] = (info.compress_size + 8).to_bytes(4, "little")
        damaged = _with_crc(damaged, info, zlib_crc(damaged[start:start + info.compress_size]))
        expected = (ValueError, "whose header says")
    template = zipmember.template(data)[0]  # a member of the same layout before: the damaged one reads by skeleton
    for native in (True, False):
        if not native:
            monkeypatch.setattr(fastzip, "_NATIVE", None)
        found = zipmember.entries(bytes(damaged))
        assert isinstance(found, zipmember._Listed)
        with pytest.raises(expected[0], match=expected[1]):
            zipmember.read_values(template, bytes(damaged), found, ["bands", "cloud_mask", *template.small])
    if damage == "crc":  # the member as a whole: the direct path falls back to xarray, which names member and problem
        with pytest.raises(Exception, match=key):
            _read_member(f"S2L2A:{key}", layout, bytes(damaged))


def json_compressor(zf: zipfile.ZipFile, array: str):
    import json

    return json.loads(zf.read(".zmetadata"))["metadata"][f"{array}/.zarray"].get("compressor")


def zlib_crc(data) -> int:
    import zlib

    return zlib.crc32(bytes(data))


def _with_crc(data: bytearray, info: zipfile.ZipInfo, crc: int) -> bytearray:
    """``data`` with the CRC-32 of member ``info`` set to ``crc`` in its local header and the central directory."""
    data[info.header_offset + 14:info.header_offset + 18] = crc.to_bytes(4, "little")
    old = info.CRC.to_bytes(4, "little")
    position = data.index(b"PK\x01\x02")
    while position >= 0:
        name_length = int.from_bytes(data[position + 28:position + 30], "little")
        name = bytes(data[position + 46:position + 46 + name_length]).decode()
        if name == info.filename:
            assert bytes(data[position + 16:position + 20]) == old
            data[position + 16:position + 20] = crc.to_bytes(4, "little")
            return data
        position = data.find(b"PK\x01\x02", position + 46)
    raise AssertionError(f"{info.filename} not in the central directory")


def location(bands_dtype="float16") -> xr.Dataset:
    """A small location with NaN in float16 and float32 arrays, strings, and CF-encoded times."""
    rng = np.random.default_rng(7)
    bands = rng.normal(size=(3, 2, 4, 5)).astype(bands_dtype)
    if bands.dtype.kind == "f":
        bands[0, 0, 0, :2] = np.nan
    half = rng.normal(size=(4, 5)).astype("float16")
    half[1, 1] = np.nan
    single = rng.normal(size=(4, 5)).astype("float32")
    single[2, 3] = np.nan
    times = np.array(["2020-04-08T06:31:20", "2020-07-01T10:00:05", "2021-01-02T00:00:00"], "datetime64[ns]")
    return xr.Dataset(
        {
            "bands": (("time", "band", "y", "x"), bands),
            "cloud_mask": (("time", "y", "x"), rng.integers(0, 5, (3, 4, 5), dtype=np.uint8)),
            "center_lat": ((), 48.1), "center_lon": ((), 11.5), "crs": ((), np.int64(32632)),
            "file_id": (("time",), np.array(["S2A_1", "S2B_22", "S2A_333"])),
            "x_": (("x",), np.arange(5.0)), "y_": (("y",), np.arange(4.0)),
            "half": (("y", "x"), half), "single": (("y", "x"), single),
        },
        coords={"time": times, "band": ["B1", "B2"], "sample": "0001234"},
    )


@pytest.mark.parametrize("bands_dtype", ["float16", "float32", "int16"])
def test_direct_decoding_of_nan_floats_and_times(bands_dtype, tmp_path):
    data = zarr_zip_bytes(location(bands_dtype))
    assert zipmember.open_member(data) is not None
    layout, values = read_both("member", "TEST", data, tmp_path)
    assert {"half", "single"} <= {name for name, _, _ in layout.statics}
    assert values["half"].dtype == np.float16 and np.isnan(values["half"]).sum() == 1
    assert values["single"].dtype == np.float32 and np.isnan(values["single"]).sum() == 1
    assert values["bands"].dtype == np.dtype(bands_dtype)
    assert values["time_"].dtype == np.dtype("datetime64[ns]") and values["file_id"].dtype.kind == "U"


@pytest.mark.parametrize("encoding", [
    {"bands": {"filters": [numcodecs.Delta(dtype="<i2")]}},  # a filter on a big array
    {"crs": {"filters": [numcodecs.Delta(dtype="<i8")]}},  # a filter on a small one
    {"bands": {"_FillValue": -9999}},  # a fill value: xarray masks it (and the dtype becomes float)
    {"center_lat": {"_FillValue": 0.0}},
], ids=["bands-filter", "crs-filter", "bands-fill", "center_lat-fill"])
def test_other_members_fall_back_to_xarray(encoding, tmp_path):
    ds = location("int16")
    ds["bands"][0, 0, 0, 0] = -9999  # read as NaN where -9999 is the fill value
    data = zarr_zip_bytes(ds, encoding)
    assert zipmember.open_member(data) is None
    _, values = read_both("member", "TEST", data, tmp_path)
    if "_FillValue" in encoding.get("bands", {}):
        assert values["bands"].dtype == np.float32 and np.isnan(values["bands"][0, 0, 0, 0])


def test_members_decode_side_by_side_into_one_array(tmp_path):
    """A block's members (one the simple case, one read through xarray) decode into one (members, ...) array
    per big variable, equal to xarray's values of each member, stacked."""
    from ssl4eos12.sources.webdataset import _read_members

    simple = zarr_zip_bytes(location("int16"))
    other = zarr_zip_bytes(location("int16"), {"crs": {"filters": [numcodecs.Delta(dtype="<i8")]}})
    assert zipmember.open_member(simple) is not None and zipmember.open_member(other) is None
    layout, _ = read_both("member", "TEST", simple, tmp_path)
    part = _read_members(["a", "b"], layout, [simple, other])
    names = [n for n in part.variables if n != "sample"]
    expected = [xarray_values(data, names, tmp_path) for data in (simple, other)]
    for name in names:
        assert_identical(part.variables[name], np.stack([e[name] for e in expected]), name)
    assert part.variables["bands"].flags.c_contiguous and part.variables["bands"].dtype == np.int16


@pytest.mark.parametrize("bands_dtype", ["int16", "float32"])
def test_chunks_not_stored_read_as_xarray_reads_them(bands_dtype, tmp_path):
    """A writer may skip chunks that hold only the fill value (a clear cloud mask, a blank time step; zarr 3 does,
    synth does not): such a member still takes the direct path, and the missing chunks read as xarray reads them
    (0, or NaN for floats)."""
    ds = location(bands_dtype)
    ds["cloud_mask"][1] = 0
    ds["bands"][2] = np.nan if bands_dtype == "float32" else 0
    encoding = {name: dict(SKIP_EMPTY_CHUNKS) for name in ("bands", "cloud_mask")}
    if bands_dtype == "float32":
        encoding["bands"]["_FillValue"] = np.nan
    data = zarr_zip_bytes(ds, encoding)
    stored = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert "cloud_mask/1.0.0" not in stored and "cloud_mask/0.0.0" in stored  # the writer skipped it
    assert zipmember.open_member(data) is not None
    _, values = read_both("member", "TEST", data, tmp_path)
    assert (values["cloud_mask"][1] == 0).all() and values["cloud_mask"].dtype == np.uint8
    if bands_dtype == "float32":
        assert "bands/2.0.0.0" not in stored and np.isnan(values["bands"][2]).all()


def test_an_array_with_no_chunk_stored_reads_as_xarray_reads_it(tmp_path):
    """A location clear at every timestamp: its cloud mask has no chunk stored at all (3 of the 64 members of a
    generated S2L2A tar, while synth let zarr 3 skip chunks of zeros). The member still takes the direct path,
    the mask all zeros as xarray reads it."""
    ds = location("int16")
    ds["cloud_mask"][...] = 0
    data = zarr_zip_bytes(ds, {"cloud_mask": SKIP_EMPTY_CHUNKS})
    assert not [n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.startswith("cloud_mask/") and "/." not in n]
    member = zipmember.open_member(data)
    assert member is not None and member.variables["cloud_mask"].shape == (3, 4, 5)
    _, values = read_both("member", "TEST", data, tmp_path)
    assert values["cloud_mask"].dtype == np.uint8 and not values["cloud_mask"].any()


def test_a_small_chunk_with_a_bad_crc_is_caught_and_named(tmp_path):
    """The small arrays' chunks are read straight from the member's bytes: a flipped byte in one still fails its
    CRC-32 on the direct path, and the member's reading names the member and the chunk (through xarray)."""
    from ssl4eos12.errors import SSL4EOS12FileError

    data = zarr_zip_bytes(location("int16"))
    layout, _ = read_both("member", "TEST", data, tmp_path)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        _, stop = fastzip._member_span(data, zf.getinfo("center_lat/0"))  # where its bytes are, from its header
    broken = bytearray(data)
    broken[stop - 1] ^= 0xFF  # the last stored byte of the chunk
    with pytest.raises(zipfile.BadZipFile, match="center_lat/0"):
        zipmember.open_member(bytes(broken))
    with pytest.raises(SSL4EOS12FileError, match=r"member: cannot read data .*center_lat/0"):
        _read_member("member", layout, bytes(broken))


def test_a_bounds_variable_decodes_as_xarray_decodes_it(tmp_path):
    """Variables whose CF decoding changes nothing skip it; a time's "bounds" variable has no attribute of its own
    yet xarray decodes it with the time's units, and so does the direct path."""
    ds = location("int16")
    ds["t0"] = ((), np.int64(60), {"units": "seconds since 2020-01-01", "bounds": "t0_bnds"})
    ds["t0_bnds"] = (("nv",), np.array([0, 120], np.int64))
    data = zarr_zip_bytes(ds)
    member = zipmember.open_member(data)
    assert member is not None and member.variables["t0_bnds"].dtype == np.dtype("datetime64[ns]")
    assert_identical(member.variables["t0_bnds"].values, open_with_xarray(_write(tmp_path, data))["t0_bnds"].values,
                     "t0_bnds")
    read_both("member", "TEST", data, tmp_path)  # the same layout (datetimes are no static) and values


# -- members of one layout: the template (parsed once per layout) and the central directory without zipfile ------

def test_the_central_directory_is_what_zipfile_reads(wds_root):
    for path in sorted((wds_root / "val").glob("*/*.tar")):
        for key, data in tar_members(path):
            found = zipmember.entries(data)
            infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
            assert found is not None and list(found) == [i.filename for i in infos], f"{path.parent.name}:{key}"
            for info in infos:
                entry = found[info.filename]
                assert (entry.header_offset, entry.compress_size, entry.CRC, entry.compress_type, entry.flag_bits) == \
                    (info.header_offset, info.compress_size, info.CRC, info.compress_type, info.flag_bits)


def test_directories_of_one_layout_are_read_by_its_skeleton_as_zipfile_reads_them(wds_root, monkeypatch):
    """After a tar's first member, a directory with the same names and lengths is read by numpy gathers: the
    same entries as the Python parse; one whose names or stored-ness differ is parsed, never misread."""
    monkeypatch.setattr(zipmember, "_SKELETONS", {})
    path = next((wds_root / "val" / "S2L2A").glob("*.tar"))
    members = tar_members(path)
    first = zipmember.entries(members[0][1])
    assert isinstance(first, zipmember._Entries) and zipmember._SKELETONS
    for key, data in members[1:]:
        found = zipmember.entries(data)
        assert isinstance(found, zipmember._Listed), key
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
        assert [found.getinfo(i.filename) for i in infos] == [
            zipmember.Entry(i.filename, i.header_offset, i.compress_size, i.CRC, i.compress_type, i.flag_bits)
            for i in infos], key
        with pytest.raises(KeyError):
            found.getinfo("bands/9.0.0.0")
    # the same directory size, one name changed: parsed, the new name read
    key, data = members[1]
    renamed = data.replace(b"bands/0.0.0.0", b"bandz/0.0.0.0")
    found = zipmember.entries(renamed)
    assert isinstance(found, zipmember._Entries) and "bandz/0.0.0.0" in found and "bands/0.0.0.0" not in found
    # a member's CRC-32 in the directory is read from it (a corrupt one is then caught when its chunk is checked)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("bands/0.0.0.0")
    directory_crc = info.CRC.to_bytes(4, "little")
    changed = bytearray(data)
    at = data.rindex(b"PK\x01\x02", 0, data.rindex(b"bands/0.0.0.0"))
    assert changed[at + 16:at + 20] == directory_crc
    changed[at + 16:at + 20] = (info.CRC ^ 1).to_bytes(4, "little")
    found = zipmember.entries(bytes(changed))
    assert isinstance(found, zipmember._Listed) and found.getinfo("bands/0.0.0.0").CRC == info.CRC ^ 1


def _rezipped(data: bytes, **options) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), options.get("compression", zipfile.ZIP_STORED))
        dst.comment = options.get("comment", b"")
    return options.get("before", b"") + buffer.getvalue()


@pytest.mark.parametrize("options", [{"comment": b"a comment"}, {"compression": zipfile.ZIP_DEFLATED},
                                     {"before": b"\0" * 100}], ids=["comment", "deflated", "bytes-before"])
def test_zips_the_central_directory_parser_leaves_to_zipfile_read_as_xarray_reads_them(options, tmp_path):
    data = _rezipped(zarr_zip_bytes(location("int16")), **options)
    assert zipmember.entries(data) is None and zipmember.template(data) is None
    read_both("member", "TEST", data, tmp_path)  # through zipfile (open_member) or xarray: the same values


def test_members_of_one_layout_share_a_template_and_read_as_xarray(wds_root, tmp_path):
    """Every member after a tar's first is read through the first one's template: one template per tar, and each
    member's own values (not the first one's) equal to xarray's."""
    for path in sorted((wds_root / "val").glob("*/*.tar")):
        members = tar_members(path)
        templates = {id(zipmember.template(data)[0]) for _, data in members}
        assert len(templates) == 1, path
        made = zipmember.template(members[0][1])[0]
        # no small array left to xarray's decoding: the release's times are int64 nanoseconds since the epoch
        assert {name: e.rule for name, e in made.small.items() if e.rule != "raw"} == {"time": "ns"}, path
        values = [read_both(f"{path.parent.name}:{key}", path.parent.name, data, tmp_path)[1] for key, data in members]
        assert len({str(v["sample"]) for v in values}) == len(members)  # each its own location


def test_a_member_with_other_band_names_is_not_read_with_the_templates_layout(tmp_path):
    """The template is keyed on the band coordinate's bytes too (a layout holds the band names): a member whose
    metadata is the same bytes but whose bands are others fails the layout check, as through xarray."""
    from ssl4eos12.errors import SSL4EOS12FileError

    first = zarr_zip_bytes(location("int16"))
    other = zarr_zip_bytes(location("int16").assign_coords(band=["B8", "B9"]))
    with zipfile.ZipFile(io.BytesIO(first)) as a, zipfile.ZipFile(io.BytesIO(other)) as b:
        assert a.read(".zmetadata") == b.read(".zmetadata")
    layout, _ = read_both("first", "TEST", first, tmp_path)
    assert zipmember.template(first)[0] is not zipmember.template(other)[0]
    with pytest.raises(SSL4EOS12FileError, match="differs"):
        _read_member("other", layout, other)
    with pytest.raises(SSL4EOS12FileError, match="differs"):
        _read_member_xarray("other", layout, other)


@pytest.mark.parametrize("units", ["seconds since 2000-01-01", "microseconds since 1970-01-01", "nanoseconds since 2020-01-01"])
def test_times_in_other_units_decode_as_xarray_decodes_them(units, tmp_path):
    """Only int64 nanoseconds since the epoch are viewed as datetime64[ns]; other units go through xarray's decoding."""
    ds = location("int16")
    data = zarr_zip_bytes(ds, {"time": {"units": units, "dtype": "int64"}})
    made, _ = zipmember.template(data)
    assert made.small["time"].rule == "cf" and made.small["time"].attrs["units"] == units
    _, values = read_both("member", "TEST", data, tmp_path)
    assert_identical(values["time_"], ds["time"].values, "time")


def test_fallbacks_are_counted_and_logged_once_per_tar(tmp_path, caplog):
    from ssl4eos12.sources import webdataset

    ds = location("int16")
    data = zarr_zip_bytes(ds, {"crs": {"filters": [numcodecs.Delta(dtype="<i8")]}})
    layout, _ = read_both("tar1:member", "TEST", data, tmp_path)
    before = webdataset.fallbacks()["not the simple case"]
    with caplog.at_level("WARNING", logger=webdataset.__name__):
        for where in ("tar2:a", "tar2:b", "tar3:a"):
            _read_member(where, layout, data)
    assert webdataset.fallbacks()["not the simple case"] == before + 3
    logged = [r.getMessage().split(":")[0] for r in caplog.records if "through xarray" in r.getMessage()]
    assert [tar for tar in logged if tar != "tar1"] == ["tar2", "tar3"]


def test_a_member_handed_over_as_a_memoryview_reads_the_same(wds_root, tmp_path):
    """A reader may hand members over as views of a larger buffer (a mapped tar): the same entries and values."""
    key, data = tar_members(next((wds_root / "val" / "S2L2A").glob("*.tar")))[0]
    view = memoryview(b"\0" * 7 + data)[7:]
    assert zipmember.entries(view) == zipmember.entries(data)
    layout, values = read_both(key, "S2L2A", data, tmp_path)
    assert_same(_read_member(key, layout, view), values, key)
