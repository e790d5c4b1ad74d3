"""Experiments: the study store, experiment files, run keys and the benchmarks' plumbing.

Sits above ``search``, ``pipeline``, ``evaluate``, ``train`` and ``compress``; ``report``
reads what it stores. Public names import on first use (``satcompress study`` needs no
torch).
"""

from satcompress.utils.lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        "find_record_id": "keys",
        "find_run_dir": "keys",
        "run_key": "keys",
        "run_keys": "keys",
        "retime": "retime",
        "BASELINE_MODELS": "runner",
        "baseline_config": "runner",
        "benchmark_parser": "runner",
        "checkpoint_record": "runner",
        "given_checkpoints": "runner",
        "load_eurosat": "runner",
        "report_only": "runner",
        "train_and_evaluate": "runner",
        "with_overrides": "runner",
        "RecordList": "store",
        "Study": "study",
        "stage_key": "study",
        "Experiment": "spec",
        "ExperimentError": "spec",
        "load_experiment": "spec",
        "plan": "plan",
        "run_experiment": "execute",
        "experiment_records": "export",
        "export_experiment": "export",
    },
)
