"""Random access to single locations: ``ssl4eos12.Locations``, a map-style dataset over a split.

``Locations(config, data_dir=... or root=..., split=..., **builder_keywords)[i]`` is the ``i``-th example the
builder yields (same fields, values, dtypes and ``time_order``, the same filters), read on its own:

- the webdataset release (tars): only that location's members, one range request per modality (their offsets
  from the member index that ``ssl4eos12 index`` writes, :mod:`ssl4eos12.members`). Without an index that
  records them, a tar's headers are walked the first time one of its locations is asked for (512 bytes per
  member, kept for the object's life), and :meth:`Locations.by_sample` needs the index;
- the Zarr release: a file holds 64 locations in chunks of all of them, so a location costs its whole file: the
  decoded files are kept in a small LRU (``cache_files``, default 2: up to ~2 x 1.1 GB for ``all`` at full size,
  ~2 x 0.3 GB for one S2 modality), so neighbouring indices are cheap and random ones are not.

It is a map-style ``torch.utils.data`` dataset by duck typing (``__getitem__`` and ``__len__``; torch is not
imported), so ``DataLoader(Locations(...), shuffle=True, num_workers=W, collate_fn=ssl4eos12.collate)`` samples
uniformly from the whole release. It pickles without its caches and connections: each worker reads on its own.
"""

from __future__ import annotations

import collections
import logging
import threading

import numpy as np

from .catalog import Catalog, resolve
from .errors import SSL4EOS12DataError
from .members import ShardMembers, TarMember, members_of, walk_tar
from .schema import location_examples
from .timeorder import by_season, season_selection

logger = logging.getLogger(__name__)

#: Decoded Zarr files kept (each up to ~1.1 GB for ``all`` at full size).
CACHE_FILES = 2


class Locations:
    """The examples of a split by index (``[i]``, ``len()``) or by location id (:meth:`by_sample`).

    Args:
        config: the builder config (``"S2L2A"``, ``"all"``, ...; default ``"all"``).
        data_dir, root: the data root, as for the builder (local, ``http(s)://``, ``hf://``).
        split: ``"train"`` or ``"validation"``.
        modalities, index, **builder_keywords: as the builder's (``bbox``, ``time_range``, ``max_cloud_fraction``,
            ``samples``, ``single_timestamp``, ``time_order``, ``remote_*``, ...).
        cache_files: decoded files kept (Zarr release only).

    On a tar root the filters need an index that records the members (``ssl4eos12 index``): an index of the
    authors' metadata names locations, not where they are, and raises :class:`SSL4EOS12DataError` saying so.
    """

    def __init__(self, config: str | None = None, *, data_dir: str | None = None, root: str | None = None,
                 split: str = "train", modalities=None, index: str | None = None, cache_files: int = CACHE_FILES,
                 **builder_keywords):
        from .builder import SSL4EOS12

        if modalities is not None:
            builder_keywords["modalities"] = list(modalities) if not isinstance(modalities, str) else modalities
        if index is not None:
            builder_keywords["index"] = index
        if not isinstance(cache_files, int) or cache_files < 1:
            raise ValueError(f"cache_files must be an integer >= 1, got {cache_files!r}")
        builder = SSL4EOS12(config_name=config, data_dir=data_dir, root=root, **builder_keywords)
        self.catalog: Catalog = resolve(builder, split)
        self.split = split
        self.cache_files = cache_files
        self.keyed = self.catalog.source.keyed
        self._members: dict[int, ShardMembers] = {}
        if self.keyed:
            self._plan_tars(builder.config.filters())
        else:
            self._plan_files()
        self._local()

    # --- planning: which entry, location and pick each index is ------------------------------------------------

    def _plan_tars(self, filters) -> None:
        catalog = self.catalog
        entries = catalog.entries
        if filters:
            for e, entry in enumerate(entries):
                members = members_of(entry.selection)
                if members is None:
                    raise SSL4EOS12DataError(
                        f"{catalog.source.root}: the filters ({filters.describe()}) came from an index that does not "
                        f"record where the members are: run `ssl4eos12 index {catalog.source.root}` (--out PATH and "
                        f"index=PATH for a root you cannot write to) for random access to a selection")
                self._members[e] = members
        else:
            from .index import check_coverage, load_index, member_positions

            positions = None
            try:  # no index to be found: the headers are walked instead
                rows = load_index(catalog.source.root, catalog.split_folder, catalog.index,
                                  catalog.source.download_config)
            except SSL4EOS12DataError:
                rows = None
            if rows is not None:
                positions = member_positions(rows, catalog.source.modalities)
            if positions is not None:
                check_coverage(rows, [entry.shard for entry in entries])  # a stale index raises, naming the tars
                self._members = {e: positions[entry.shard] for e, entry in enumerate(entries)}
            else:
                logger.info(f"{catalog.source.root}: no index records where the members are: each tar's headers "
                            f"are read when one of its locations is first asked for (`ssl4eos12 index` records them)")
        counts = catalog.counts() if len(self._members) < len(entries) else None
        per_entry, picks_per = [], []
        for e, entry in enumerate(entries):
            if e in self._members:
                members = self._members[e]
                picks = np.array([self._picks(entry.selection, sample) for sample in
                                  (members.samples if members.samples is not None else [None] * len(members))],
                                 dtype=np.int64)
                per_entry.append(len(members))
            else:
                locations = counts[e] // catalog.times_per_example
                picks = np.full(locations, catalog.times_per_example, dtype=np.int64)
                per_entry.append(locations)
            picks_per.append(picks)
        self._index(per_entry, picks_per)

    def _picks(self, selection, sample) -> int:
        """Examples one location gives: 1 for a time series, else its timestamps kept."""
        if not self.catalog.single_timestamp:
            return 1
        times = None if selection is None or sample is None else selection.get(str(sample))
        return self.catalog.times_per_example if times is None else len(times)

    def _plan_files(self) -> None:
        counts = self.catalog.counts()
        # a Zarr file is read whole: an index addresses the k-th example of its entry
        self._index([1] * len(counts), [np.array([c], dtype=np.int64) for c in counts])

    def _index(self, per_entry: list[int], picks_per: list[np.ndarray]) -> None:
        picks = np.concatenate(picks_per) if picks_per else np.zeros(0, np.int64)
        self._entry = np.repeat(np.arange(len(per_entry)), per_entry)
        self._row = np.concatenate([np.arange(n) for n in per_entry]) if per_entry else np.zeros(0, np.int64)
        # item i -> (location ordinal, pick within it)
        self._location = np.repeat(np.arange(len(picks)), picks)
        starts = np.cumsum(picks) - picks
        self._pick = np.arange(int(picks.sum())) - np.repeat(starts, picks)

    def _local(self) -> None:
        """What each process keeps for itself (made again after unpickling)."""
        self._lock = threading.Lock()
        self._files: collections.OrderedDict = collections.OrderedDict()
        self._readers: dict = {}
        self._samples: dict[str, int] | None = None

    def __getstate__(self):
        return {name: value for name, value in self.__dict__.items()
                if name not in ("_lock", "_files", "_readers", "_samples")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local()

    # --- access --------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._location)

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise TypeError(f"Locations indices are integers, got {type(i).__name__}") from None
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} example(s)")
        i %= n
        location, pick = int(self._location[i]), int(self._pick[i])
        entry, row = int(self._entry[location]), int(self._row[location])
        if not self.keyed:
            return _copy(self._file_examples(entry)[pick])
        return self._location_examples(entry, row)[pick]

    def by_sample(self, sample_id) -> dict:
        """The example of location ``sample_id`` (e.g. ``"0000173"``; with ``single_timestamp``, the list of its
        examples). A location that the split (or the filters) does not hold raises ``KeyError``."""
        sample = f"{sample_id:07d}" if isinstance(sample_id, (int, np.integer)) else str(sample_id)
        where = self._sample_map().get(sample)
        if where is None:
            raise KeyError(f"location {sample!r} is not among the {len(self)} example(s) of {self.catalog.source.root}"
                           f" ({self.split}{', as filtered' if self._filtered() else ''})")
        entry, row = where
        if self.keyed:
            examples = self._location_examples(entry, row)
        else:
            examples = [_copy(example) for example in self._file_examples(entry) if example["sample"] == sample]
        return examples if self.catalog.single_timestamp else examples[0]

    def _filtered(self) -> bool:
        return any(entry.selection is not None for entry in self.catalog.entries)

    def _sample_map(self) -> dict[str, tuple[int, int]]:
        if self._samples is not None:
            return self._samples
        samples: dict[str, tuple[int, int]] = {}
        if self.keyed:
            for e in range(len(self.catalog.entries)):
                members = self._members.get(e)
                if members is None or members.samples is None:
                    raise SSL4EOS12DataError(
                        f"{self.catalog.source.root}: by_sample needs an index that names the locations and records "
                        f"their members: run `ssl4eos12 index {self.catalog.source.root}` (--out PATH and index=PATH "
                        f"for a root you cannot write to)")
                samples.update((str(s), (e, row)) for row, s in enumerate(members.samples))
        else:
            from .index import load_index

            catalog = self.catalog
            rows = load_index(catalog.source.root, catalog.split_folder, catalog.index, catalog.source.download_config)
            entry_of = {entry.shard: e for e, entry in enumerate(catalog.entries)}
            for file, sample in zip(rows["file"].astype(str), rows["sample"].astype(str)):
                if file in entry_of and (catalog.entries[entry_of[file]].selection is None
                                         or sample in catalog.entries[entry_of[file]].selection):
                    samples.setdefault(sample, (entry_of[file], 0))
        self._samples = samples
        return samples

    # --- reading -------------------------------------------------------------------------------------------------

    def _tar_members(self, e: int) -> ShardMembers:
        """Where the members of entry ``e`` are: from the index, else from its tars' headers (walked once)."""
        members = self._members.get(e)
        if members is not None:
            return members
        catalog = self.catalog
        source, shard = catalog.source, catalog.entries[e].shard
        walked: dict[str, tuple[list[TarMember], int]] = {
            m: walk_tar(source.url(catalog.split_folder, m, shard), source.download_config, source.fetch_options)
            for m in source.modalities}
        first = walked[source.modalities[0]][0]
        members = ShardMembers(tuple(m.key for m in first), np.arange(len(first), dtype=np.int64),
                               {m: np.array([x.offset for x in w[0]], np.int64) for m, w in walked.items()},
                               {m: np.array([x.size for x in w[0]], np.int64) for m, w in walked.items()},
                               {m: w[1] for m, w in walked.items()})
        with self._lock:
            self._members[e] = members
        return members

    def _location_examples(self, e: int, row: int) -> list[dict]:
        catalog = self.catalog
        entry = catalog.entries[e]
        members = self._tar_members(e)
        if not 0 <= row < len(members):
            raise SSL4EOS12DataError(f"{catalog.source.root}: {entry.shard} has {len(members)} member(s), the "
                                     f"index counted more: rerun `ssl4eos12 index`")
        blocks = list(catalog.source.member_blocks(catalog.split_folder, entry.shard, catalog.layouts,
                                                   members.take([row]), readers=self._readers))
        examples = []
        for block in blocks:
            selection = entry.selection
            if selection is not None:
                selection = {str(s): selection[str(s)] for s in block.samples if str(s) in selection}
            examples += self._examples(block, selection)
        if not examples:
            raise SSL4EOS12DataError(f"{catalog.source.root}: member {members.keys[row]} of {entry.shard} is not the "
                                     f"location the index names: the index is stale; rerun `ssl4eos12 index`")
        return examples

    def _examples(self, block, selection) -> list[dict]:
        if self.catalog.time_order == "season":
            if selection is not None and any(times is not None for times in selection.values()):
                selection = season_selection(block, selection)
            block = by_season(block)
        return [example for _, example in location_examples(block, self.catalog.single_timestamp, None, selection)]

    def _file_examples(self, e: int) -> list[dict]:
        """The examples of a Zarr file (views of its decoded arrays), through the LRU of decoded files."""
        with self._lock:
            if e in self._files:
                self._files.move_to_end(e)
                return self._files[e]
        catalog = self.catalog
        entry = catalog.entries[e]
        examples = []
        for block in catalog.source.blocks_for(catalog.split_folder, entry.shard, catalog.layouts, entry.selection):
            selection = entry.selection
            if catalog.time_order == "season":
                if selection is not None and any(times is not None for times in selection.values()):
                    selection = season_selection(block, selection)
                block = by_season(block)
            examples += [example for _, example in location_examples(block, catalog.single_timestamp, None,
                                                                      selection, copy=False)]
        with self._lock:
            self._files[e] = examples
            while len(self._files) > self.cache_files:
                self._files.popitem(last=False)
        return examples

    def __repr__(self) -> str:
        return (f"Locations({self.catalog.source.root!r}, split={self.split!r}, "
                f"modalities={list(self.catalog.source.modalities)}, {len(self)} example(s))")


def _copy(example: dict) -> dict:
    """An example whose arrays are its own (the cached file's stay untouched)."""
    return {name: value.copy() if isinstance(value, np.ndarray) else value for name, value in example.items()}


__all__ = ["CACHE_FILES", "Locations"]
