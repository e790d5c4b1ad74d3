"""The one exception type of the data layer."""

from __future__ import annotations


class DatasetError(Exception):
    """A data problem the user can fix: missing or broken files, bad splits, failed downloads.

    The message always says what is wrong, where it looked and what to do about it (which
    folder to create, which URL to fetch, which flag to pass: ``--data-dir``, ``--split-dir``,
    ``--download``, ``--skip-bad-files``).
    """
