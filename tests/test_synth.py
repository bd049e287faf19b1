"""Sample data is reproducible: the same arguments write the same bytes, in both releases' layouts."""

from __future__ import annotations

import hashlib

from ssl4eos12.synth import synthesize
from ssl4eos12.synth.webdataset import synthesize_webdataset


def digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_same_bytes(tmp_path):
    for name, write in (("zarr", synthesize), ("webdataset", synthesize_webdataset)):
        first, second = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        for root in (first, second):
            write(root, splits=("val",), files=1, samples=2, size=8)
        assert digests(first) == digests(second) != {}, name
