"""Model cost: parameters, MACs, and ONNX Runtime latency on the CPU."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from satcompress.config import Config, ConfigError
from satcompress.models.stats import count_macs, count_params  # noqa: F401  (API)
from satcompress.runtime.onnx import make_session, run_session
from satcompress.utils.cpu import cpu_info


@dataclasses.dataclass
class LatencyConfig(Config):
    """How latency is measured in ONNX Runtime.

    Attributes:
        batch_sizes: Batch sizes to time (the record keeps ``bs<N>`` medians).
        threads: Intra-op threads (``None`` = all cores of this machine).
        warmup: Untimed runs before timing.
        runs: Timed runs at batch size 1 (larger batches get proportionally fewer, min 10).
    """

    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int | None = None
    warmup: int = 10
    runs: int = 100

    def validate(self) -> None:
        """Check ranges."""
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if self.runs < 3 or self.warmup < 0:
            raise ConfigError("latency needs runs >= 3 and warmup >= 0")


def measure_latency(
    onnx_path: str | Path,
    image_size: tuple[int, int],
    config: LatencyConfig | None = None,
    session: ort.InferenceSession | None = None,
) -> dict[str, Any]:
    """Median and p90 latency of an ONNX file in ONNX Runtime on the CPU.

    Args:
        onnx_path: The model file (uint8 input).
        image_size: (height, width) of its input images.
        config: Batch sizes, threads, warm-up and run counts.
        session: An existing session to reuse (must match ``config.threads``).

    Returns:
        ``{"bs1": {"median_ms", "p90_ms", "runs"}, ..., "threads", "runtime", "cpu"}``.
    """
    config = config or LatencyConfig()
    session = session or make_session(onnx_path, config.threads)
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for batch in config.batch_sizes:
        images = rng.integers(0, 256, (batch, 3, *image_size), dtype=np.uint8)
        runs = max(10, config.runs // max(1, batch // 8)) if batch > 1 else config.runs
        for _ in range(config.warmup if batch == 1 else max(2, config.warmup // 4)):
            run_session(session, images)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run_session(session, images)
            times.append((time.perf_counter() - start) * 1e3)
        result[f"bs{batch}"] = {
            "median_ms": round(float(np.median(times)), 4),
            "p90_ms": round(float(np.percentile(times, 90)), 4),
            "runs": runs,
        }
    result["threads"] = session.get_session_options().intra_op_num_threads
    result["runtime"] = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    # 8-bit weight tensors run as uint8 to avoid int16 saturation on this CPU (make_session)
    result["uint8_weight_tensors"] = getattr(session, "satcompress_uint8_weights", 0)
    result["cpu"] = cpu_description()
    return result


def measure_latency_side_by_side(
    onnx_paths: dict[str, str | Path],
    image_size: tuple[int, int],
    config: LatencyConfig | None = None,
    rounds: int = 3,
) -> dict[str, dict[str, Any]]:
    """Time several ONNX files in interleaved rounds, so that they share the same machine state.

    On a shared, noisy CPU, timing model A now and model B ten minutes later compares two
    machines; interleaving the files round by round and keeping the median of each file's
    round medians makes their ratios trustworthy.

    Args:
        onnx_paths: ``{name: file}`` to time (uint8 inputs of ``image_size``).
        image_size: (height, width) of the inputs.
        config: Batch sizes, threads, warm-up and runs of each round.
        rounds: Interleaved rounds.

    Returns:
        ``{name: timing}`` in :func:`measure_latency`'s format, each ``bs<N>`` entry the
        median over rounds (with ``rounds`` and the per-round medians).
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    config = config or LatencyConfig()
    sessions = {name: make_session(path, config.threads) for name, path in onnx_paths.items()}
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            per_round[name].append(measure_latency(onnx_paths[name], image_size, config, session))
    out = {}
    for name, timings in per_round.items():
        merged = dict(timings[-1])
        for key in (k for k in timings[-1] if k.startswith("bs")):
            medians = [t[key]["median_ms"] for t in timings]
            merged[key] = {
                "median_ms": round(float(np.median(medians)), 4),
                "p90_ms": round(float(np.median([t[key]["p90_ms"] for t in timings])), 4),
                "runs": sum(t[key]["runs"] for t in timings),
                "round_medians_ms": medians,
            }
        merged["rounds"] = rounds
        out[name] = merged
    return out


def cpu_description() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags that decide int8/fp32 speed."""
    model, flags = cpu_info()
    model, flags = model or platform.processor() or "unknown", flags or frozenset()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}
