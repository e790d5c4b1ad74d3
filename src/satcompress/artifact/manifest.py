"""What an artifact's manifest says about its model: the model card, embedded whole.

The manifest carries the same card as the run directory's ``model.json`` (architecture,
classes, input spec, data source, lineage), plus the counts the record needs (``params``,
``macs``). :func:`manifest_card` reads it back, also from artifacts written before the card
was embedded (their description was spread over top-level keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from satcompress.card import CARD_FORMAT

__all__ = ["artifact_info", "manifest_card"]


def artifact_info(card: Mapping[str, Any], *, params: int, macs: int) -> dict[str, Any]:
    """The ``info`` of :func:`~satcompress.artifact.format.write_artifact`: card and costs."""
    return {"card": dict(card), "params": int(params), "macs": int(macs)}


def manifest_card(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The model card of an artifact's manifest (rebuilt for artifacts of older versions)."""
    if isinstance(manifest.get("card"), Mapping):
        return dict(manifest["card"])
    meta = manifest.get("metadata") or {}
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "model": manifest.get("model", meta.get("model", "model")),
        "classes": manifest.get("classes", meta.get("classes")),
        "input": manifest.get("input_spec") or meta.get("input_spec") or {},
        "image_size": manifest.get("image_size"),
        "recipe": manifest.get("recipe", {}),
    }
    if manifest.get("dataset") and manifest.get("data_dir"):
        card["data"] = {
            "dataset": manifest["dataset"],
            "data_dir": manifest["data_dir"],
            "split_dir": manifest.get("split_dir"),
            "image_size": manifest.get("image_size"),
            "split_fingerprint": manifest.get("split_fingerprint"),
        }
    return card
