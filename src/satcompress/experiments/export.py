"""An experiment's records as a results file, so a study's numbers can be committed.

A study folder holds models and run directories (gigabytes, never committed); its records
are small. :func:`export_experiment` writes the records of one experiment's stages as a JSON
list in the benchmarks' format, each tagged with the experiment, preset and stage name, so
``satcompress study import 'results/*.json'`` (and the report built from it) sees them like
any benchmark's records. What the report reads from a stage besides its record goes along:
a ``vit_layers`` stage's analysis lands on the record of the model it measured, a ``baic``
stage's candidates on its own record.

:func:`adopt_records` goes the other way: a study that lost its run directories (a new
machine, a cleaned cache) takes committed records back as finished stages, so rerunning the
experiment runs only what is missing (and remakes the models those stages start from).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from satcompress.experiments.study import StageRow, Study, experiment_label
from satcompress.utils.io import atomic_write_json, read_jsonl

__all__ = ["adopt_records", "experiment_records", "export_experiment", "stage_record"]

#: What a BAIC stage's record carries of its search's summary (the stage's ``details``): what
#: the report reads (budget, input model, baselines, trajectory), not the run's paths.
BAIC_SUMMARY = ("budget_bytes", "latency_budget_ms", "predicted_bytes", "val_accuracy", "input",
                "baselines", "time_seconds", "candidates")  # fmt: skip


def experiment_records(study: Study, experiment: str, preset: str) -> list[dict[str, Any]]:
    """The records of an experiment's finished stages, in the order it binds them.

    Args:
        study: The study.
        experiment: The experiment's ``name`` (its YAML file's, not the file name).
        preset: The preset it ran with (``""`` for none).

    Returns:
        One record per finished stage that has one, with ``id`` ``<experiment>/<stage>`` and
        an ``experiment`` block (name, preset, stage, kind, key, seconds; ``done`` and
        ``stages``: how many of the experiment's stages had finished when it was written).

    Raises:
        KeyError: If the study never ran that experiment with that preset.
    """
    keys = study.bindings(experiment, preset)
    if not keys:
        raise KeyError(f"the study holds no run of {experiment!r} with preset {preset!r} "
                       f"(it holds: {study.experiment_labels()})")  # fmt: skip
    rows = {name: study.get(key) for name, key in keys.items()}
    done = {name: row for name, row in rows.items() if row is not None and row.status == "done"}
    progress = dict(zip(("done", "stages"), study.progress(experiment, preset), strict=True))
    records = {
        name: _tagged(row, experiment, preset, name, progress)
        for name, row in done.items()
        if row.record is not None
    }
    by_key = {row.key: name for name, row in done.items() if name in records}
    for name, row in done.items():
        if row.kind == "vit_layers" and isinstance(row.details, dict):
            measured = by_key.get(row.input_key or "")
            if measured is not None:
                records[measured].setdefault("vit_layers", row.details)
                records[measured]["experiment"].setdefault("analyses", []).append(
                    {"stage": name, "kind": row.kind, "key": row.key, "seconds": row.seconds}
                )
    return list(records.values())


def export_experiment(
    study: Study, experiment: str, preset: str, out: str | Path
) -> tuple[Path, int]:
    """Write :func:`experiment_records` to ``out``: a ``.json`` file, or a folder.

    In a folder the file is ``<experiment>[@<preset>].json``.

    Returns:
        The file written (atomically) and how many records it holds.
    """
    path = Path(out)
    if path.suffix != ".json":
        path = path / f"{experiment_label(experiment, preset)}.json"
    records = experiment_records(study, experiment, preset)
    atomic_write_json(path, records)
    return path, len(records)


def adopt_records(
    study: Study, records: Iterable[Mapping[str, Any]], keys: Collection[str], source: str = ""
) -> list[str]:
    """Take exported stage records (:func:`experiment_records`') as the study's finished stages.

    Only records whose stage key is in ``keys`` (an experiment's planned stages) are taken:
    a record of other settings, data or inputs has another key and is left alone. Stages the
    study holds finished already are kept.

    Args:
        study: The study.
        records: Records of results files; those without an ``experiment`` block are skipped.
        keys: The stage keys to take.
        source: The file they came from (kept with each stage).

    Returns:
        The keys taken.
    """
    taken = []
    for record in records:
        tag = record.get("experiment")
        if not isinstance(tag, Mapping):
            continue
        if tag.get("key") in keys:
            own = {k: v for k, v in record.items() if k not in ("id", "experiment", "vit_layers")}
            details = own.get("baic") if tag.get("kind") == "baic" else None
            if study.adopt(tag["key"], tag["kind"], own, details=details,
                           seconds=tag.get("seconds"), source=source):  # fmt: skip
                taken.append(tag["key"])
        for analysis in tag.get("analyses") or ():
            if analysis.get("key") in keys and study.adopt(
                analysis["key"], analysis["kind"], None, details=record.get("vit_layers"),
                seconds=analysis.get("seconds"), input_key=tag.get("key"), source=source,
            ):  # fmt: skip
                taken.append(analysis["key"])
    return taken


def stage_record(row: StageRow) -> dict[str, Any] | None:
    """A finished stage's record, a BAIC stage's with its search's summary in ``baic``.

    The summary (budget, the input model, baselines, the trajectory) is the stage's
    ``details``; its candidates fall back to the run directory's ``candidates.jsonl``.
    """
    if row.record is None:
        return None
    record = dict(row.record)
    if row.kind == "baic":
        details = row.details if isinstance(row.details, dict) else {}
        summary = {k: details[k] for k in BAIC_SUMMARY if details.get(k) is not None}
        summary.update(record.get("baic") or {})
        if not summary.get("candidates"):
            candidates = Path(row.run_dir) / "candidates.jsonl"
            summary["candidates"] = read_jsonl(candidates) if candidates.is_file() else []
        record["baic"] = summary
    return record


def _tagged(
    row: StageRow, experiment: str, preset: str, name: str, progress: dict[str, int]
) -> dict[str, Any]:
    record = stage_record(row) or {}
    record["id"] = f"{experiment}/{name}"
    record["experiment"] = {"name": experiment, "preset": preset, "stage": name,
                            "kind": row.kind, "key": row.key, "seconds": row.seconds,
                            **progress}  # fmt: skip
    return record
