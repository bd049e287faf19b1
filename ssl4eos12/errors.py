"""The exceptions and warnings of this package: every problem with the data surfaces as one of these."""

from __future__ import annotations

import importlib


class SSL4EOS12FileError(ValueError):
    """A source file is missing, unreadable or not what SSL4EO-S12 v1.1 files are; names file and problem."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem


class SSL4EOS12DataError(FileNotFoundError):
    """The data root holds no SSL4EO-S12 data for what was asked (or is not a data root at all)."""


class SSL4EOS12BadFileWarning(UserWarning):
    """Emitted once per source file skipped with ``on_bad_file="skip"``."""


class SSL4EOS12EmptySelectionWarning(UserWarning):
    """Emitted when a streamed split's selection (``samples``, ``bbox``, ``time_range``, ``max_cloud_fraction``)
    keeps no example: the stream would be empty. Preparing such a split raises :class:`SSL4EOS12DataError`."""


def require_extra(module: str, extra: str, user: str, without: str = ""):
    """``module``, imported; where it is not installed, an ``ImportError`` in one line: ``user`` needs it, the
    optional extra ``extra`` installs it, and (``without``) what works without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = f"; {without}" if without else ""
        raise ImportError(f"{user} needs {module.split('.')[0]}, an optional extra: "
                          f"pip install 'ssl4eos12[{extra}]'{hint}") from None
