"""The 64-sample release: Zarr v2 zips of 64 locations each, one folder per modality, joined on the file.

    ROOT/splits/ssl4eos12_{train,val}.txt          optional lists of file names
    ROOT/{train,val}/{MODALITY}/ssl4eos12_{train,val}_seasonal_data_NNNNNN.zarr.zip

One shard is one file name: the same name in every modality folder holds the same locations.

A split's files are, in order of preference: the names in ``splits/ssl4eos12_{train,val}.txt`` (no
directory listing needed, so plain HTTP mirrors work), the ``file`` column of the authors' GeoParquet
index ``splits/{train,val}_metadata.parquet``, or a listing of ``{train,val}/{MODALITY}/*.zarr.zip``.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from ..constants import ZARR_ZIP_SUFFIX, split_list_path, split_metadata_path
from ..errors import SSL4EOS12DataError, SSL4EOS12FileError
from .base import Block, Layout, ModalityFile, Source
from .remote import is_remote, open_random_access, serves_ranges, url_to_fs
from .zarrzip import fetch_zip, probe_layout_and_size, read_modality_file, read_modality_times, wants_whole_file


def list_split_files(root: str, split_folder: str, modality: str, download_config=None) -> list[str]:
    """File names of one split, or ``[]`` when the root has no such split."""
    fs, root_path = url_to_fs(root, download_config)
    if not is_remote(root) and not fs.isdir(root_path):
        raise SSL4EOS12DataError(f"{root}: data directory does not exist")
    split_dir = posixpath.join(root_path, split_folder)
    # A local copy often holds only some splits while the lists name all of them.
    if not is_remote(root) and not fs.isdir(split_dir):
        return []
    list_file = posixpath.join(root_path, split_list_path(split_folder))
    if fs.exists(list_file):
        with fs.open(list_file, "rt") as f:
            return [line.strip() for line in f if line.strip()]
    metadata_file = posixpath.join(root_path, split_metadata_path(split_folder))
    if fs.exists(metadata_file):
        with open_random_access(posixpath.join(root, split_metadata_path(split_folder)), download_config) as f:
            names = pq.read_table(f, columns=["file"]).column("file").to_pylist()
        return list(dict.fromkeys(names))  # unique, in order of first appearance
    modality_dir = posixpath.join(split_dir, modality)
    if not fs.exists(modality_dir):
        return []
    return sorted(posixpath.basename(p) for p in fs.ls(modality_dir, detail=False) if p.endswith(ZARR_ZIP_SUFFIX))


class ChunkedSource(Source):
    """The 64-sample Zarr zips: one shard per file name, every modality's file of that name joined on ``sample``."""

    name = "zarr"

    def shards(self, split_folder: str) -> list[str]:
        return list_split_files(self.root, split_folder, self.modalities[0], self.download_config)

    def url(self, split_folder: str, modality: str, shard: str) -> str:
        return posixpath.join(self.root, split_folder, modality, shard)

    def probe(self, split_folder: str, shard: str, modality: str) -> tuple[Layout, int]:
        return probe_layout_and_size(self.url(split_folder, modality, shard), modality, self.download_config)

    def blocks(
        self, split_folder: str, shard: str, layouts: Sequence[Layout],
        variables: dict[str, Sequence[str]] | None = None,
    ) -> Iterator[Block]:
        return self.fetch(split_folder, shard, layouts, variables)()

    def fetch(
        self, split_folder: str, shard: str, layouts: Sequence[Layout],
        variables: dict[str, Sequence[str]] | None = None,
    ) -> Callable[[], Iterator[Block]]:
        """Fetch a remote shard's files whole (one per modality; local files are read in place)."""
        fetched = {}
        if is_remote(self.root):
            try:
                for layout in layouts:
                    if wants_whole_file(None if variables is None else variables.get(layout.modality)):
                        url = self.url(split_folder, layout.modality, shard)
                        fetched[layout.modality] = fetch_zip(url, self.download_config, self.fetch_options)
            except BaseException:
                for file in fetched.values():  # a failure or a cancellation keeps no buffer
                    file.close()
                raise
        return functools.partial(self._decode, split_folder, shard, layouts, variables, fetched)

    def _decode(self, split_folder, shard, layouts, variables, fetched: dict) -> Iterator[Block]:
        try:
            parts = {}
            for layout in layouts:
                parts[layout.modality] = read_modality_file(
                    self.url(split_folder, layout.modality, shard), layout.modality, self.download_config, layout,
                    variables=None if variables is None else variables.get(layout.modality),
                    # handed over: read_modality_file closes it, so its memory goes as soon as it is decoded
                    fetched=fetched.pop(layout.modality, None), options=self.fetch_options,
                )
        finally:
            for file in fetched.values():  # not reached: an earlier modality failed
                file.close()
            fetched.clear()
        yield Block(shard, parts, join_on_sample(self.url(split_folder, "*", shard), parts))

    def blocks_at(self, split_folder: str, shard: str, layouts: Sequence[Layout], times: Sequence[int]) -> Iterator[Block]:
        """Remote files: only the chunks of ``times`` (one per timestamp and big variable) are fetched, by range
        reads; local files are read as :meth:`blocks` reads them (decoding from the page cache is cheap)."""
        times = sorted({int(t) for t in times})
        # a server that ignores Range sends whole files anyway: fetched as such, once each (logged by remote)
        if (not is_remote(self.root) or len(times) >= min(layout.num_times for layout in layouts)
                or not serves_ranges(self.root)):
            yield from self.blocks(split_folder, shard, layouts)
            return
        parts = {
            layout.modality: read_modality_times(self.url(split_folder, layout.modality, shard), layout.modality, times,
                                                 self.download_config, layout)
            for layout in layouts
        }
        yield Block(shard, parts, join_on_sample(self.url(split_folder, "*", shard), parts))


def join_on_sample(file: str, parts: dict[str, ModalityFile]) -> dict[str, np.ndarray]:
    """Row order of each modality that lines its samples up with the first modality's.

    The same file name holds the same locations in every modality; a file where the modalities disagree
    on the samples, or on the centre or CRS of a location, is broken and raises.
    """
    (first, reference), *others = parts.items()
    samples = reference.samples
    orders = {first: np.arange(len(samples))}
    for modality, part in others:
        if np.array_equal(part.samples, samples):
            order = orders[first]
        elif len(part.samples) == len(samples) and set(part.samples) == set(samples):
            sorter = np.argsort(part.samples)
            order = sorter[np.searchsorted(part.samples, samples, sorter=sorter)]
        else:
            only_first = sorted(set(samples) - set(part.samples))
            only_other = sorted(set(part.samples) - set(samples))
            raise SSL4EOS12FileError(
                file, f"modalities {first} and {modality} disagree on the samples: only in {first}: "
                      f"{_ids(only_first)}; only in {modality}: {_ids(only_other)}"
            )
        orders[modality] = order
        for name in ("center_lat", "center_lon", "crs"):
            if name not in reference.variables or name not in part.variables:
                continue  # a partial read without them
            differ = reference.variables[name] != part.variables[name][order]
            if differ.any():
                raise SSL4EOS12FileError(
                    file, f"modalities {first} and {modality} disagree on {name} of sample(s) {_ids(samples[differ])}"
                )
    return orders


def _ids(samples, limit: int = 5) -> str:
    samples = [str(s) for s in samples]
    more = f" and {len(samples) - limit} more" if len(samples) > limit else ""
    return (", ".join(samples[:limit]) or "none") + more
