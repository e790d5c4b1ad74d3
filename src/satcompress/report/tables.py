"""Markdown tables of results files, as the README shows them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from satcompress.train.config import TrainConfig

#: Recipe settings that say where and how fast a run went, not what it learnt.
NOT_RECIPE = ("model", "data_dir", "threads", "num_workers", "dataset", "stage")


def format_table(
    header: Sequence[str],
    align: str,
    rows: Iterable[Sequence[Any]],
    records: Sequence[dict[str, Any]] | None = None,
) -> str:
    """A Markdown table, with the CPU line of ``records`` under it.

    Args:
        header: Column titles.
        align: One letter per column: ``l`` (left) or ``r`` (right, for figures).
        rows: Cells per row (formatted with ``str``).
        records: The records the rows come from: :func:`cpu_line` is added below the table
            (``None``: no CPU line).

    Returns:
        The table's lines joined by newlines.

    Raises:
        ValueError: If ``align`` does not have one valid letter per column.
    """
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(header)}), got {align!r}")
    lines = [
        _row(header),
        _row("---:" if a == "r" else "---" for a in align),
        *(_row(row) for row in rows),
    ]
    if records is not None:
        lines.append(cpu_line(records))
    return "\n".join(lines)


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def cpu_label(cpu: dict[str, Any]) -> str:
    """Model and vector class of a record's CPU: two AMD EPYCs can be 3x apart.

    Args:
        cpu: A record's ``latency["cpu"]`` (``model``, ``flags``).

    Returns:
        E.g. ``"AMD EPYC (AVX-512)"``.
    """
    flags = cpu.get("flags", [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    model = cpu.get("model", "?")
    return f"{model} ({vector})" if vector else model


def cpu_line(records: Sequence[dict[str, Any]]) -> str:
    """The line under a README table: the CPU the first record was measured on.

    Figures from different CPUs are not comparable.

    Args:
        records: The table's records.

    Returns:
        A blank line, then ``CPU: <model>, <cores> cores, flags [...].``
    """
    cpu = records[0]["latency"].get("cpu", {}) if records else {}
    return f"\nCPU: {cpu.get('model')}, {cpu.get('cores')} cores, flags {cpu.get('flags')}."


def recipe_changes(recipe: dict[str, Any], model: str) -> str:
    """How ``recipe`` differs from the library's default ``TrainConfig``.

    Args:
        recipe: A record's ``recipe`` (a training run's settings).
        model: The model it trained.

    Returns:
        ``KEY=VALUE`` pairs (dotted keys for nested settings, :data:`NOT_RECIPE` left out),
        space-separated, or ``"default"``.
    """
    default = TrainConfig(model=model).to_dict()

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            if isinstance(value, dict) and value and key != "model_kwargs":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    ours, base = flat(recipe), flat(default)
    changed = [
        f"{key}={ours[key]}"
        for key in sorted(ours)
        if key.split(".")[0] not in NOT_RECIPE and ours[key] != base.get(key)
    ]
    return " ".join(changed) or "default"


def ablation_table(paths: Sequence[Path]) -> str:
    """One row per training run of the given results files: what changed, val and test.

    Args:
        paths: Results files of training runs (e.g. ``results/baseline-ablation-*.json``).

    Returns:
        The table.
    """
    from satcompress.experiments.store import RecordList  # imports torch: only when used

    rows = []
    for path in paths:
        for r in RecordList(path).records:
            val = r.get("best_val_accuracy")
            rows.append(
                (
                    f"`{path.name}`",
                    r["model"],
                    f"`{recipe_changes(r['recipe'], r['model'])}`",
                    "-" if val is None else f"{val * 100:.2f}%",
                    f"{r['accuracy'] * 100:.2f}%",
                    f"{r['macs'] / 1e6:.0f} M",
                    r["epochs"],
                    f"{r['wall_s'] / 60:.0f} min",
                    cpu_label(r["latency"].get("cpu", {})),
                )
            )
    header = (
        "file",
        "model",
        "recipe (changes to the default)",
        "best val",
        "test acc.",
        "MACs",
        "epochs",
        "wall",
        "CPU",
    )
    return format_table(header, "lllrrrrrl", rows)
