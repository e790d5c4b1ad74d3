"""Optional MLflow tracking: each stage an experiment runs becomes an MLflow run.

The study stays the store of record; MLflow is a view for its UI and comparisons. Needs the
``mlflow`` package (``pip install 'satcompress[mlflow]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from satcompress.config import ConfigError
from satcompress.experiments.plan import PlannedStage
from satcompress.experiments.study import Study

__all__ = ["MlflowTracker"]

#: Longest parameter value logged (MLflow refuses longer ones).
MAX_PARAM = 250


class MlflowTracker:
    """Logs finished stages as MLflow runs of one MLflow experiment.

    Args:
        uri: The tracking URI (``file:./mlruns``, ``http://host:5000``, ``sqlite:///m.db``).
        experiment: The MLflow experiment's name (the satcompress experiment's name).
        study: The study the stages' records are read from.

    Raises:
        ConfigError: If MLflow is not installed or refuses the URI.
    """

    def __init__(self, uri: str, experiment: str, study: Study) -> None:
        try:
            import mlflow
        except ImportError as err:
            raise ConfigError("--mlflow needs MLflow: pip install 'satcompress[mlflow]'") from err
        self.mlflow, self.study = mlflow, study
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(experiment)
        except Exception as err:  # noqa: BLE001 - MLflow's errors name the fix; say where
            raise ConfigError(f"--mlflow {uri}: {err}") from err

    def __call__(self, stage: PlannedStage, outcome: str, seconds: float) -> None:
        """Log a stage that ran (resumed, rebuilt) in this run; reused ones were logged then."""
        if outcome not in ("ran", "resumed", "rebuilt") or stage.key is None:
            return
        row = self.study.get(stage.key)
        record = (row.record if row else None) or {}
        tags = {"satcompress.key": stage.key, "satcompress.stage": stage.spec.kind,
                "satcompress.outcome": outcome}  # fmt: skip
        with self.mlflow.start_run(run_name=stage.spec.name, tags=tags):
            self.mlflow.log_params(_params(stage.settings))
            self.mlflow.log_metrics({**_metrics(record), "seconds": float(seconds)})
            if row is not None and (self.study.root / "records" / f"{stage.key}.json").is_file():
                self.mlflow.log_artifact(str(self.study.root / "records" / f"{stage.key}.json"))


def _params(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattened settings (``config.epochs``), values as short strings."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_params(value, name + "."))
        elif value is not None:
            out[name] = str(value)[:MAX_PARAM]
    return out


def _metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's figures: accuracy, size, parameters, MACs, batch-1 latency."""
    out = {
        key: float(record[key])
        for key in ("accuracy", "size_bytes", "params", "macs")
        if isinstance(record.get(key), (int, float))
    }
    bs1 = (record.get("latency_ms") or {}).get("bs1")
    if isinstance(bs1, Mapping):
        bs1 = bs1.get("median_ms")
    if isinstance(bs1, (int, float)):
        out["latency_bs1_ms"] = float(bs1)
    return out
