"""Checks of what a user asks for (builder keywords, command-line names) against what a data root holds.

Each check fails with one line that names the keyword or argument, the problem, and the names to choose from,
before any file is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .constants import MODALITIES, SPLIT_FOLDERS
from .errors import SSL4EOS12DataError
from .sources.remote import is_remote


def present_modalities(root: str) -> list[str] | None:
    """Modality folders under the split folders of a local root, sorted; ``None`` where it cannot be listed
    (a remote root, a missing folder): then the files themselves are the check."""
    if is_remote(root):
        return None
    root = root.removeprefix("file://")
    found = set()
    for folder in SPLIT_FOLDERS.values():
        split_dir = os.path.join(root, folder)
        if os.path.isdir(split_dir):
            found.update(name for name in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, name)))
    return sorted(found) if found else None


def present_splits(root: str) -> list[str] | None:
    """Splits whose folder a local root has (``None`` for a remote root)."""
    if is_remote(root):
        return None
    root = root.removeprefix("file://")
    return [split for split, folder in SPLIT_FOLDERS.items() if os.path.isdir(os.path.join(root, folder))]


def check_modalities_keyword(modalities, config_name: str | None) -> None:
    """``modalities=`` is a list of names, and keeps the modality of a single-modality config name."""
    if modalities is None:
        return
    if isinstance(modalities, str):
        raise ValueError(f"modalities={modalities!r}: a string, not a list of modality names; "
                         f"write modalities=[{modalities!r}]")
    if not isinstance(modalities, Sequence) or not modalities or not all(isinstance(m, str) for m in modalities):
        raise ValueError(f"modalities={modalities!r}: expected a non-empty list of modality names such as "
                         f"{list(MODALITIES)}")
    duplicates = sorted({m for m in modalities if list(modalities).count(m) > 1})
    if duplicates:
        raise ValueError(f"modalities={list(modalities)!r}: {', '.join(duplicates)} listed twice; name each once")
    if config_name in MODALITIES and config_name not in modalities:
        raise ValueError(f"config {config_name!r} reads {config_name}, but modalities={list(modalities)!r} leaves "
                         f"it out; use the config 'all' (or no config name) with modalities=[...], or add "
                         f"{config_name!r} to the list")


def check_modalities_present(root: str, modalities: Sequence[str], argument: str = "modalities") -> None:
    """Every name in ``modalities`` is a modality folder of ``root`` (when the root can be listed)."""
    present = present_modalities(root)
    if present is None:
        return
    missing = [m for m in modalities if m not in present]
    if missing:
        raise SSL4EOS12DataError(f"{argument}: no folder {', '.join(missing)} under {root}/{{train,val}}/; "
                                 f"present: {', '.join(present)}")
