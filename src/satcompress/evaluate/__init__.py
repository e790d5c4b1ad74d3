"""Evaluation: metrics, cost (params, MACs, latency) and the shared result record."""

from satcompress.evaluate.evaluate import evaluate, evaluate_onnx, predict_onnx
from satcompress.evaluate.metrics import classification_metrics
from satcompress.evaluate.profile import (
    LatencyConfig,
    count_macs,
    count_params,
    cpu_description,
    measure_latency,
    measure_latency_side_by_side,
)
from satcompress.evaluate.record import (
    RECORD_SCHEMA,
    REQUIRED_KEYS,
    validate_record,
)

__all__ = [
    "RECORD_SCHEMA",
    "REQUIRED_KEYS",
    "LatencyConfig",
    "classification_metrics",
    "count_macs",
    "count_params",
    "cpu_description",
    "evaluate",
    "evaluate_onnx",
    "measure_latency",
    "measure_latency_side_by_side",
    "predict_onnx",
    "validate_record",
]
