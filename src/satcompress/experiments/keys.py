"""Cache keys of training runs: one recipe, one key, stable as ``TrainConfig`` grows.

A benchmark stores a training run under ``<model>-<digest>`` (its run directory and the
``id`` of its record), the digest a hash of the recipe. The rule:

* every setting of :data:`KEY_SCHEMA` (the ``TrainConfig`` fields of the first recorded runs,
  2026-11-25) is always hashed, at whatever value;
* every other setting (added later, or added in the future) is hashed only when it differs
  from its neutral value: the one frozen in :data:`NEUTRAL` for the settings added so far,
  else its ``TrainConfig`` default. A field added at its default therefore never changes a
  key, and a run that uses it gets a key of its own;
* execution-only settings (:data:`EXECUTION_ONLY`) are never hashed.

For the default recipe this gives the keys of the committed records (``results/*.json``).
Between 2026-12-05 and this rule, ``train_input_size`` / ``train_input_fraction`` (and later
``sam_rho``) were hashed even at their defaults; :func:`run_keys` also yields those keys, so
records and run directories written then are still found (see :func:`find_record_id`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from satcompress.train.config import TrainConfig

#: Settings that change how fast a run goes, never what it learns.
EXECUTION_ONLY = ("threads", "num_workers")

#: The settings of the first key schema, always hashed (nested: the sub-settings hashed).
KEY_SCHEMA: dict[str, Any] = {
    **dict.fromkeys(
        (
            "model",
            "model_kwargs",
            "pretrained",
            "weights",
            "dataset",
            "data_dir",
            "split_dir",
            "download",
            "image_size",
            "input_size",
            "normalize",
            "mean",
            "std",
            "skip_bad_files",
            "epochs",
            "batch_size",
            "eval_batch_size",
            "optimizer",
            "lr",
            "momentum",
            "weight_decay",
            "schedule",
            "warmup",
            "label_smoothing",
            "ema_decay",
            "seed",
            "accelerator",
            "devices",
            "num_nodes",
            "strategy",
            "precision",
            "limit_batches",
            "channels_last",
        )
    ),
    "augment": dict.fromkeys(("hflip", "vflip", "rot90", "shift", "brightness", "contrast")),
}

#: Neutral values of the settings added after :data:`KEY_SCHEMA`, frozen as they were when
#: each was added: should a default ever change, keys keep meaning what they meant.
NEUTRAL: dict[str, Any] = {
    "train_input_size": None,
    "train_input_fraction": 0.7,
    "norm_bias_weight_decay": None,
    "sam_rho": 0.0,
    "augment": {"mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0},
}

#: Settings that earlier key rules hashed even at their neutral value, oldest first: the
#: keys of the records and run directories written under each rule (:func:`run_keys`).
_EARLIER_RULES: tuple[tuple[str, ...], ...] = (
    ("threads", "num_workers"),  # the first rule hashed the whole recipe
    ("train_input_size", "train_input_fraction"),
    ("train_input_size", "train_input_fraction", "sam_rho"),
)


def key_recipe(config: TrainConfig, always: Iterable[str] = ()) -> dict[str, Any]:
    """The settings that :func:`run_key` hashes, as a (nested) dictionary.

    Args:
        config: The training recipe.
        always: Further top-level settings hashed even at their neutral value (the rules
            of earlier keys).

    Returns:
        ``config.to_dict()`` without the execution-only settings and without the settings
        outside :data:`KEY_SCHEMA` that hold their neutral value.
    """
    defaults = type(config)().to_dict()  # a subclass's own defaults for its own fields
    return _kept(config.to_dict(), KEY_SCHEMA, NEUTRAL, defaults, set(always))


def _kept(
    values: Mapping[str, Any],
    schema: Mapping[str, Any],
    neutral: Mapping[str, Any],
    defaults: Mapping[str, Any],
    always: set[str],
) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        sub = schema.get(name)
        if name in always:
            out[name] = value
        elif name in EXECUTION_ONLY and schema is KEY_SCHEMA:
            continue
        elif isinstance(value, dict) and isinstance(sub, dict):  # a nested config: per setting
            out[name] = _kept(value, sub, neutral.get(name) or {}, defaults.get(name) or {}, set())
        elif name in schema:
            out[name] = value
        elif value != (neutral[name] if name in neutral else defaults.get(name, _MISSING)):
            out[name] = value
    return out


_MISSING = object()


def _digest(recipe: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def run_key(config: TrainConfig) -> str:
    """Cache key of a training run: ``<model>-<10 hex digits>`` of its recipe.

    Args:
        config: The training recipe (execution-only settings are ignored).

    Returns:
        The key; the same for every recipe that trains the same model.
    """
    return f"{config.model}-{_digest(key_recipe(config))}"


def run_keys(config: TrainConfig) -> list[str]:
    """:func:`run_key` first, then the keys that earlier rules gave the same recipe.

    Args:
        config: The training recipe.

    Returns:
        Distinct keys, newest rule first; look a run up under each, write it under the first.
    """
    keys = [run_key(config)]
    for always in reversed(_EARLIER_RULES):
        key = f"{config.model}-{_digest(key_recipe(config, always))}"
        if key not in keys:
            keys.append(key)
    return keys


def find_record_id(records: Any, prefix: str, config: TrainConfig) -> str:
    """The ``id`` under which ``records`` holds the run of ``config``, else its new ``id``.

    Args:
        records: A :class:`~satcompress.experiments.store.RecordList` (anything with
            ``get(id)``).
        prefix: The benchmark's prefix, e.g. ``"baseline"`` for ``baseline-<key>``.
        config: The training recipe.

    Returns:
        ``f"{prefix}-{key}"`` for the first key of :func:`run_keys` that has a record, or for
        :func:`run_key` if none has.
    """
    ids = [f"{prefix}-{key}" for key in run_keys(config)]
    return next((i for i in ids if records.get(i) is not None), ids[0])


def find_run_dir(runs_dir: str | Path, config: TrainConfig) -> Path:
    """The run directory of ``config`` in ``runs_dir``: an existing one, else a new one.

    Args:
        runs_dir: The benchmarks' run cache.
        config: The training recipe.

    Returns:
        ``runs_dir / key`` for the first key of :func:`run_keys` whose directory exists, or
        for :func:`run_key` if none does.
    """
    dirs = [Path(runs_dir) / key for key in run_keys(config)]
    return next((d for d in dirs if d.is_dir()), dirs[0])
