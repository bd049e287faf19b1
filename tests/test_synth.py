"""Sample data is reproducible (the same arguments write the same bytes, in both releases' layouts) and looks like
what it stands for."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import xarray as xr
from conftest import open_with_xarray

from ssl4eos12.synth import synthesize
from ssl4eos12.synth.webdataset import synthesize_webdataset

#: LULC's water class (Esri's, renumbered: see ssl4eos12.synth.webdataset).
WATER = 1


def digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_same_bytes(tmp_path):
    for name, write in (("zarr", synthesize), ("webdataset", synthesize_webdataset)):
        first, second = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        for root in (first, second):
            write(root, splits=("val",), files=1, samples=2, size=8)
        assert digests(first) == digests(second) != {}, name


def members(tar_path) -> list[xr.Dataset]:
    with tarfile.open(tar_path) as tar:
        data = [tar.extractfile(m).read() for m in tar.getmembers()]
    out = []
    for i, member in enumerate(data):
        path = tar_path.with_name(f"member-{i}.zarr.zip")
        path.write_bytes(member)
        out.append(open_with_xarray(path))
    return out


def test_lulc_is_the_land_cover_of_the_scene(tmp_path):
    """LULC is land cover: patches of classes 0..9, one map for every timestamp, the same ground the Sentinel-2
    modalities show (water where their cloud mask says water, and nowhere it says land), and its classes follow
    ``esri_original``'s one for one."""
    root = synthesize_webdataset(tmp_path, splits=("val",), files=1, samples=6, size=32, modalities=("S2L2A", "LULC"))
    tar = "ssl4eos12_shard_000001.tar"
    classes, esri_of_class, water_masked = set(), {}, 0
    for s2, lulc in zip(members(root / "val" / "S2L2A" / tar), members(root / "val" / "LULC" / tar)):
        maps, esri, mask = lulc["bands"].values[:, 0], lulc["esri_original"].values, s2["cloud_mask"].values
        same_as_neighbour = np.mean(np.concatenate([(maps[:, 1:] == maps[:, :-1]).ravel(),
                                                    (maps[:, :, 1:] == maps[:, :, :-1]).ravel()]))
        # per-pixel noise of 10 classes shares a class with 1 neighbour in 10; patches at 32 px, with 3 in 4 or more
        assert same_as_neighbour > 0.6, f"not patches: {same_as_neighbour:.2f} of neighbours share a class"
        assert maps.dtype == np.uint8 and maps.max() <= 9 and (maps == maps[0]).all()
        assert (maps[mask == 1] == WATER).all() and (maps[mask == 0] != WATER).all()
        for c, e in zip(maps[0].ravel(), esri.ravel()):
            assert esri_of_class.setdefault(c, e) == e, f"class {c} stands for Esri {esri_of_class[c]} and {e}"
        classes |= set(np.unique(maps).tolist())
        water_masked += int((mask == 1).sum())
    assert water_masked and len(classes) >= 4, f"too little to test: classes {sorted(classes)}, {water_masked} water"
