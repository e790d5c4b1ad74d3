"""Experiments: the results store, run keys and the plumbing every benchmark runs on.

Sits above ``evaluate``, ``train`` and ``compress``; ``report`` reads what it stores.
"""

from satcompress.experiments.keys import find_record_id, find_run_dir, run_key, run_keys
from satcompress.experiments.retime import retime
from satcompress.experiments.runner import (
    BASELINE_MODELS,
    baseline_config,
    benchmark_parser,
    checkpoint_record,
    given_checkpoints,
    load_eurosat,
    report_only,
    train_and_evaluate,
    with_overrides,
)
from satcompress.experiments.store import RecordList

__all__ = [
    "BASELINE_MODELS",
    "RecordList",
    "baseline_config",
    "benchmark_parser",
    "checkpoint_record",
    "find_record_id",
    "find_run_dir",
    "given_checkpoints",
    "load_eurosat",
    "report_only",
    "retime",
    "run_key",
    "run_keys",
    "train_and_evaluate",
    "with_overrides",
]
