"""Streaming glue: ``datasets``' examples iterable, fetching the shards ahead of the one being decoded.

``datasets`` calls ``_generate_examples`` once per shard (one source file), so a prefetch inside it never
sees the next shard. :class:`PrefetchingExamplesIterable` is ``datasets``' own ``ExamplesIterable`` (same
sharding, shuffling, resharding, worker split and resumable state) whose iteration runs the builder's
fetch thunks for every remaining file through one :func:`ssl4eos12.prefetch.prefetch`, and hands that
iterator to each ``_generate_examples(..., fetched=...)`` call, which takes one item per file. Closing the
iteration (a ``break``, an exception, a closed or collected generator) closes the prefetch: its thread,
connections and buffers go with it.
"""

from __future__ import annotations

from itertools import islice

from datasets.iterable_dataset import ExamplesIterable
from datasets.utils.sharding import _split_gen_kwargs

from .prefetch import prefetch


class PrefetchingExamplesIterable(ExamplesIterable):
    """``ExamplesIterable`` that fetches ``ahead`` files early with ``fetch_fn(**gen_kwargs) -> [thunk per file]``.

    ``generate_examples_fn`` must accept ``fetched=`` (an iterator) and take exactly one item from it per file
    of its ``gen_kwargs`` (an item whose thunk raised raises from ``next()`` and counts as taken).
    """

    def __init__(self, generate_examples_fn, kwargs, generate_more_kwargs_fn=None, sleep_on_threads_shutdown=False,
                 *, fetch_fn, ahead: int = 1, features=None):
        super().__init__(generate_examples_fn, kwargs, generate_more_kwargs_fn, sleep_on_threads_shutdown)
        self.fetch_fn = fetch_fn
        self.ahead = ahead
        self._features = features

    @property
    def is_typed(self) -> bool:
        # The examples are already of the features' types (numpy arrays in the files' dtypes): datasets' encode and
        # decode would turn the 1-d arrays (times, coordinates) into lists, unlike a prepared split's rows.
        return self._features is not None

    @property
    def features(self):
        return self._features

    def _like_self(self, other: ExamplesIterable) -> PrefetchingExamplesIterable:
        return PrefetchingExamplesIterable(
            other.generate_examples_fn, other.kwargs, other.generate_more_kwargs_fn,
            other.sleep_on_threads_shutdown, fetch_fn=self.fetch_fn, ahead=self.ahead, features=self._features,
        )

    def shuffle_data_sources(self, generator) -> PrefetchingExamplesIterable:
        return self._like_self(super().shuffle_data_sources(generator))

    def shard_data_sources(self, num_shards: int, index: int, contiguous=True) -> PrefetchingExamplesIterable:
        return self._like_self(super().shard_data_sources(num_shards, index, contiguous=contiguous))

    def reshard_data_sources(self) -> PrefetchingExamplesIterable:
        return self._like_self(super().reshard_data_sources())

    def __iter__(self):
        # as ExamplesIterable.__iter__, with one prefetch over the files of every remaining shard
        shard_idx_start = self._state_dict["shard_idx"] if self._state_dict else 0
        shards = list(islice(_split_gen_kwargs(self.kwargs, max_num_jobs=self.num_shards), shard_idx_start, None))
        thunks = (thunk for gen_kwargs in shards for thunk in self.fetch_fn(**gen_kwargs))
        with prefetch(thunks, self.ahead) as fetched:
            for gen_kwargs in shards:
                shard_example_idx_start = self._state_dict["shard_example_idx"] if self._state_dict else 0
                examples = self.generate_examples_fn(**gen_kwargs, fetched=fetched)
                for key_example in islice(examples, shard_example_idx_start, None):
                    if self._state_dict:
                        self._state_dict["shard_example_idx"] += 1
                    yield key_example
                if self._state_dict:
                    self._state_dict["shard_idx"] += 1
                    self._state_dict["shard_example_idx"] = 0
