"""Make ``load_dataset("ssl4eos12", ...)`` resolve to this package's builder.

``datasets`` >= 5 no longer runs loading scripts, and a name in its table of packaged modules goes through
a factory that first infers data files from ``data_dir`` (or the current directory): that fails in an
empty directory, mangles URL roots with ``Path.resolve()`` and hands unrelated files to the builder. So
instead of joining that table, the hook answers the name itself, before any data-file inference, with a
module whose builder finds its own files. Every other name goes to ``datasets`` untouched.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

BUILDER_NAME = "ssl4eos12"
BUILDER_MODULE = "ssl4eos12.builder"
#: Modules whose code decides what the builder yields: their hash keys the ``datasets`` cache.
_HASHED_MODULES = ("builder.py", "errors.py", "schema.py", "sources")


def builder_module(data_dir: str | None = None):
    """The ``DatasetModule`` that ``datasets`` instantiates the builder from."""
    from datasets.load import DatasetModule

    from .sources import normalize_root

    builder_kwargs = {"dataset_name": BUILDER_NAME}
    if data_dir is not None:
        # an absolute path keys the cache by location, not by the current directory's view of it
        builder_kwargs["data_dir"] = normalize_root(data_dir)
    return DatasetModule(BUILDER_MODULE, _source_hash(), builder_kwargs)


@functools.cache
def _source_hash() -> str:
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _HASHED_MODULES:
        for path in sorted((package / name).rglob("*.py")) if (package / name).is_dir() else [package / name]:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def register() -> None:
    """Install the hook (idempotent). Called on ``import ssl4eos12``."""
    import datasets.inspect
    import datasets.load

    for module in (datasets.load, datasets.inspect):
        original = getattr(module, "dataset_module_factory", None)
        if original is None or getattr(original, "_ssl4eos12_hook", False):
            continue
        module.dataset_module_factory = _hooked(original)


def _hooked(original):
    @functools.wraps(original)
    def dataset_module_factory(path, *args, data_dir=None, data_files=None, **kwargs):
        if path == BUILDER_NAME:
            if data_files is not None:
                raise ValueError(f"{BUILDER_NAME} finds its own files: pass data_dir= or root=, not data_files=")
            return builder_module(data_dir)
        return original(path, *args, data_dir=data_dir, data_files=data_files, **kwargs)

    dataset_module_factory._ssl4eos12_hook = True
    return dataset_module_factory
