"""Re-timing: every row of a results file timed again, side by side, in one pass."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from satcompress.artifact.format import load_artifact
from satcompress.evaluate.profile import LatencyConfig, measure_latency_side_by_side
from satcompress.experiments.store import RecordList


def onnx_file(record: dict[str, Any], tmp: Path) -> Path | None:
    """The ONNX model a record measured: its own file, its artifact rebuilt, or None.

    Args:
        record: A result record (``onnx_path``, ``run_dir`` or ``artifact.path`` locate it).
        tmp: Folder for an ONNX file rebuilt from the record's ``.satc`` artifact.

    Returns:
        The ONNX file, or ``None`` if neither it nor the artifact exists any more.
    """
    for path in (record.get("onnx_path"), Path(record.get("run_dir", "")) / "model.onnx"):
        if path and Path(path).is_file():
            return Path(path)
    artifact = (record.get("artifact") or {}).get("path")
    if artifact and Path(artifact).is_file():
        return load_artifact(artifact).save_onnx(tmp / f"{record['id']}.onnx")
    return None


def retime(
    records: RecordList,
    threads: int | None,
    rounds: int = 3,
    extra_threads: tuple[int, ...] = (),
) -> None:
    """Time every record's ONNX model again, each model's variants interleaved in one pass.

    Rows are timed right after they are made, minutes or hours apart on a shared machine;
    this pass gives latencies (and speed-ups) that share one machine state.

    Args:
        records: The results file; every row whose ONNX file still exists is re-timed.
        threads: ORT intra-op threads of the record's ``latency_ms`` (``None``: all cores).
        rounds: Interleaved rounds per thread count.
        extra_threads: Further thread counts, timed after ``threads``. Every count lands in
            ``latency_by_threads`` (``{"<n>": {"bs1": ms, "bs64": ms}}``). On the 2-vCPU
            machines here 1 thread gave the steadier ratios (``latency-threads`` in
            ``results/diagnostics.json``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for record in records.records:
            path = onnx_file(record, Path(tmp))
            if path is None:
                print(f"{record['id']}: its ONNX file is gone, its latency is kept as it was")
            else:
                paths[record["id"]] = path
        for model in sorted({records.get(i)["model"] for i in paths}):
            group = {i: p for i, p in paths.items() if records.get(i)["model"] == model}
            size = tuple(records.get(next(iter(group)))["input"]["size"] or (64, 64))
            primary = threads or os.cpu_count() or 1  # what None means to the session
            for count in (primary, *(t for t in extra_threads if t != primary)):
                timings = measure_latency_side_by_side(
                    group, size, LatencyConfig(threads=count), rounds
                )
                for record_id, timing in timings.items():
                    store_timing(records, record_id, timing, rounds, primary=count == primary)


def store_timing(
    records: RecordList, record_id: str, timing: dict[str, Any], rounds: int, primary: bool
) -> None:
    """Put one re-timing into its record and save it.

    Args:
        records: The results file.
        record_id: The re-timed row.
        timing: ``measure_latency_side_by_side``'s figures of that row.
        rounds: Interleaved rounds (noted in ``latency_note``).
        primary: The record's own thread count: ``latency`` / ``latency_ms`` are replaced
            (and ``latency_by_threads`` restarted); else only ``latency_by_threads`` grows.
    """
    record = records.get(record_id)
    medians = {k: v["median_ms"] for k, v in timing.items() if k[:2] == "bs"}
    by_threads = {} if primary else dict(record.get("latency_by_threads") or {})
    by_threads[str(timing["threads"])] = medians
    record["latency_by_threads"] = by_threads
    if primary:
        record.update(
            latency=timing,
            latency_ms=medians,
            latency_note=f"re-timed side by side, {rounds} interleaved rounds",
        )
    records.put(record)
    print(record_id, f"{timing['threads']} threads", medians)
