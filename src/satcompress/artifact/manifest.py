"""What an artifact's manifest says about its model: the model card, embedded whole.

The manifest carries the same card as the run directory's ``model.json`` (architecture,
classes, input spec, data source, lineage), plus the counts the record needs (``params``,
``macs``). :func:`manifest_card` (defined in :mod:`satcompress.runtime.satc`, which a
device reads artifacts with) reads it back, also from artifacts written before the card was
embedded (their description was spread over top-level keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from satcompress.runtime.satc import manifest_card

__all__ = ["artifact_info", "manifest_card"]


def artifact_info(card: Mapping[str, Any], *, params: int, macs: int) -> dict[str, Any]:
    """The ``info`` of :func:`~satcompress.artifact.format.write_artifact`: card and costs."""
    return {"card": dict(card), "params": int(params), "macs": int(macs)}
