"""The exceptions and warnings of this package: every problem with the data surfaces as one of these."""

from __future__ import annotations


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
