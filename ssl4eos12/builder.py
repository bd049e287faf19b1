"""SSL4EO-S12 v1.1 as a Hugging Face ``datasets`` builder.

SSL4EO-S12 v1.1 (Blumenstiel et al., 2025, https://arxiv.org/abs/2503.00168) is a multimodal,
multiseasonal Earth-observation pre-training dataset: 246,144 locations, four seasonal timestamps each,
seen by Sentinel-2 L1C, Sentinel-2 L2A, a Sentinel-2 RGB product and Sentinel-1 GRD, as 264 x 264 pixel
patches. The authors publish it as 3,846 Zarr v2 zip files per modality on the Hugging Face Hub
(``embed2scale/SSL4EO-S12-v1.1-Zarr``) and at https://datapub.fz-juelich.de/ssl4eo-s12/, laid out as::

    ROOT/splits/ssl4eos12_{train,val}.txt          optional lists of file names
    ROOT/{train,val}/{S1GRD,S2L1C,S2L2A,S2RGB}/ssl4eos12_{train,val}_seasonal_data_NNNNNN.zarr.zip

This builder reads those files as they are, from a local folder, an ``http(s)://`` mirror or ``hf://``,
and yields one example per location (or per location and timestamp) with every modality, timestamp,
coordinate and metadata field, bit-identical to what xarray reads. One shard is one source file, so
streaming spreads files over DataLoader workers and nodes.

Usage::

    import ssl4eos12
    from datasets import load_dataset
    ds = load_dataset("ssl4eos12", "S2L2A", data_dir="data/ssl4eo-s12", split="validation")

Cite: see :data:`ssl4eos12.constants.CITATION`.
"""

from __future__ import annotations

import posixpath
import warnings
from dataclasses import dataclass
from typing import Optional

import datasets
import numpy as np
from datasets.builder import Key

from .constants import CITATION, DESCRIPTION, HOMEPAGE, HOSTED_ROOT, LICENSE, MODALITIES, SPLIT_FOLDERS
from .layout import SSL4EOS12DataError, list_split_files, normalize_root
from .schema import example_features
from .zarrzip import (
    Layout, ModalityFile, SSL4EOS12BadFileWarning, SSL4EOS12FileError, probe_layout, probe_num_samples,
    read_modality_file,
)


ON_BAD_FILE_CHOICES = ("error", "skip")
#: reshard() splits each source file into this many sample ranges.
RESHARD_PARTS_PER_FILE = 4


@dataclass
class SSL4EOS12Config(datasets.BuilderConfig):
    """BuilderConfig for SSL4EO-S12 v1.1.

    Args:
        modalities: modality folders to join on file and sample (default: the config's own).
        single_timestamp: one example per (location, timestamp) instead of one per location.
        root: root of the data (local path, ``http(s)://`` or ``hf://`` URL); ``data_dir`` works too.
            Without either, the hosted copy on the Hub is read.
        on_bad_file: ``"error"`` (default) raises on a bad source file; ``"skip"`` skips it with a
            :class:`SSL4EOS12BadFileWarning` per skipped file.
    """

    modalities: Optional[list[str]] = None
    single_timestamp: bool = False
    root: Optional[str] = None
    on_bad_file: str = "error"


class SSL4EOS12(datasets.GeneratorBasedBuilder):
    """SSL4EO-S12 v1.1: Sentinel-1/2 time series of 246,144 locations, read from the original Zarr zips."""

    BUILDER_CONFIG_CLASS = SSL4EOS12Config
    BUILDER_CONFIGS = [
        *(SSL4EOS12Config(name=m, modalities=[m], description=f"{m} time series") for m in MODALITIES),
        SSL4EOS12Config(name="all", modalities=list(MODALITIES), description="all four modalities, joined"),
    ]
    DEFAULT_CONFIG_NAME = "all"
    # One location of all modalities is ~17 MB at full size: keep the Arrow writer's buffer small.
    DEFAULT_WRITER_BATCH_SIZE = 8

    def _info(self):
        return datasets.DatasetInfo(
            description=DESCRIPTION, citation=CITATION, homepage=HOMEPAGE, license=LICENSE, features=None
        )

    def _split_generators(self, dl_manager):
        if self.config.on_bad_file not in ON_BAD_FILE_CHOICES:
            raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE_CHOICES}, got {self.config.on_bad_file!r}")
        root = data_root(self.config)
        modalities = tuple(self.config.modalities or MODALITIES)
        download_config = dl_manager.download_config
        splits = []
        for split, folder in SPLIT_FOLDERS.items():
            files = list_split_files(root, folder, modalities[0], download_config)
            if files:
                split_dir = posixpath.join(root, folder)
                splits.append(datasets.SplitGenerator(name=split, gen_kwargs={"files": files, "split_dir": split_dir}))
        if not splits:
            raise SSL4EOS12DataError(
                f"{root}: no SSL4EO-S12 files for {modalities[0]}: expected train/ or val/ folders "
                f"({', '.join(f'{f}/{modalities[0]}/*.zarr.zip' for f in SPLIT_FOLDERS.values())}) or splits/ lists"
            )
        layouts = self._probe_layouts(splits[0].gen_kwargs, modalities, download_config)
        features = example_features(layouts, self.config.single_timestamp)
        if self.info.features is None:
            self.info.features = features
        for split_generator in splits:
            # a tuple, not a list: datasets shards list-valued gen_kwargs
            split_generator.gen_kwargs["layouts"] = layouts
            # parallel to files: the samples of each file a shard yields (None: all); see reshard()
            split_generator.gen_kwargs["sample_ranges"] = [None] * len(split_generator.gen_kwargs["files"])
        return splits

    def _probe_layouts(self, gen_kwargs: dict, modalities: tuple[str, ...], download_config) -> tuple[Layout, ...]:
        """Layouts of the first readable file (any bad file is the reader's to report or skip)."""
        for name in gen_kwargs["files"]:
            try:
                return tuple(
                    probe_layout(posixpath.join(gen_kwargs["split_dir"], m, name), m, download_config)
                    for m in modalities
                )
            except SSL4EOS12FileError:
                if self.config.on_bad_file != "skip":
                    raise
        raise SSL4EOS12DataError(f"{gen_kwargs['split_dir']}: no readable file among {len(gen_kwargs['files'])}")

    def _download_config(self) -> datasets.DownloadConfig:
        """The token and storage options the builder was given, as the reading side expects them."""
        return datasets.DownloadConfig(token=self.token, storage_options=self.storage_options)

    def _generate_shards(self, files, split_dir, layouts, sample_ranges):
        yield from files

    def _generate_more_gen_kwargs(self, files, split_dir, layouts, sample_ranges):
        """Split each file into sample ranges, for ``IterableDataset.reshard()`` when files < workers.

        A chunk holds all samples of its timestamp, so every part still reads its whole file: resharding
        trades I/O for parallelism.
        """
        download_config = self._download_config()
        for name, sample_range in zip(files, sample_ranges):
            start, stop = sample_range or (0, None)
            if stop is None:
                first = layouts[0].modality
                stop = probe_num_samples(posixpath.join(split_dir, first, name), first, download_config)
            step = max(1, -(-(stop - start) // RESHARD_PARTS_PER_FILE))
            parts = [(a, min(a + step, stop)) for a in range(start, stop, step)]
            yield {"files": [name] * len(parts), "split_dir": split_dir, "layouts": layouts, "sample_ranges": parts}

    def _generate_examples(self, files, split_dir, layouts, sample_ranges):
        download_config = self._download_config()
        skipped = 0
        for file_index, (name, sample_range) in enumerate(zip(files, sample_ranges)):
            try:
                parts = {
                    layout.modality: read_modality_file(
                        posixpath.join(split_dir, layout.modality, name), layout.modality, download_config, layout
                    )
                    for layout in layouts
                }
                orders = join_on_sample(posixpath.join(split_dir, "*", name), parts)
            except SSL4EOS12FileError as err:
                if self.config.on_bad_file != "skip":
                    raise
                skipped += 1
                warnings.warn(f"skipping {err} ({skipped} file(s) skipped in this shard so far)",
                              SSL4EOS12BadFileWarning, stacklevel=2)
                continue
            examples = location_examples(name, parts, orders, self.config.single_timestamp, sample_range)
            for key, example in examples:
                yield Key(file_index, key), example
            del parts  # before the next file is read: memory holds one decoded file per modality


def data_root(config: SSL4EOS12Config) -> str:
    """``root``, else ``data_dir``, else the hosted copy; local paths absolute, without a trailing slash."""
    return normalize_root(config.root or config.data_dir or HOSTED_ROOT)


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


def location_examples(
    name: str, parts: dict[str, ModalityFile], orders: dict[str, np.ndarray], single_timestamp: bool,
    sample_range: tuple[int, int] | None = None,
):
    """The examples of one file (of a range of its samples): one per location, or per (location, timestamp)."""
    reference = next(iter(parts.values()))
    shared = reference.variables
    num_times = reference.layout.num_times
    start, stop = sample_range or (0, len(reference.samples))
    for i in range(start, stop):
        sample = reference.samples[i]
        base = {
            "sample": str(sample),
            "file": name,
            "center_lat": float(shared["center_lat"][i]),
            "center_lon": float(shared["center_lon"][i]),
            "crs": int(shared["crs"][i]),
        }
        if not single_timestamp:
            example = dict(base)
            for modality, part in parts.items():
                example.update(modality_fields(modality, part, orders[modality][i], slice(None)))
            yield i, example
            continue
        for t in range(num_times):
            example = dict(base, time_index=t)
            for modality, part in parts.items():
                example.update(modality_fields(modality, part, orders[modality][i], t))
            yield i * num_times + t, example


def modality_fields(modality: str, part: ModalityFile, row: int, time) -> dict:
    """One location's fields of one modality; ``time`` is a timestamp index or ``slice(None)`` for all.

    Arrays are copies, not views: a view would keep the whole decoded file alive for as long as the
    consumer (or a shuffle buffer) holds one example of it.
    """
    v = part.variables
    fields = {modality: v["bands"][row, time].copy()}
    if part.layout.has_cloud_mask:
        fields[f"{modality}_cloud_mask"] = v["cloud_mask"][row, time].copy()
    fields[f"{modality}_time"] = v["time_"][row, time].copy()
    fields[f"{modality}_file_id"] = v["file_id"][row, time].tolist()
    fields[f"{modality}_x"] = v["x_"][row].copy()
    fields[f"{modality}_y"] = v["y_"][row].copy()
    return fields
