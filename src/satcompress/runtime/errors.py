"""The errors of reading an artifact: every refusal is an :class:`ArtifactError`.

Defined apart from :mod:`satcompress.runtime.satc` (which re-exports them) so that the
checkers it calls (:mod:`.schema`, :mod:`.graphcheck`, :mod:`.sign`) raise the same classes
without importing it back.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ChecksumError",
    "IncompatibleVersionError",
    "ManifestError",
    "NotAnArtifactError",
    "SignatureError",
    "TruncatedArtifactError",
]


class ArtifactError(ValueError):
    """An artifact file cannot be read; the message says why."""


class NotAnArtifactError(ArtifactError):
    """The file does not start with the artifact magic bytes."""


class TruncatedArtifactError(ArtifactError):
    """The file is shorter than its header says (an interrupted copy or download)."""


class ChecksumError(ArtifactError):
    """The SHA-256 checksum does not match: the file was altered or corrupted."""


class IncompatibleVersionError(ArtifactError):
    """The file was written in a format version this satcompress cannot read."""


class ManifestError(ArtifactError):
    """The manifest breaks its schema, or disagrees with the payload or the graph.

    The message starts with the offending key, e.g. ``manifest.tensors[3].dtype: ...``.
    """


class SignatureError(ArtifactError):
    """A signature is missing where one is required, malformed, or does not verify."""
