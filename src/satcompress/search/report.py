"""A search run's human outputs: ``report.md`` and ``pareto.png``.

Both are built from the candidate records BAIC writes one per line to ``candidates.jsonl``:
plain dicts with the keys ``id``, ``kind`` (``baic``, ``greedy``, ``uniform``,
``small-model``, ``mct``, ``input``), ``label``, ``predicted_bytes``, ``bytes`` (the real
file's size on disk), ``predicted_cost``, ``val_accuracy`` and ``test_accuracy`` (fractions),
``latency_ms``, ``seconds``, ``status`` (``ok``, ``over-budget``, ``infeasible``,
``failed``), ``chosen`` and ``plan``. Any value may be missing or None: such candidates are
listed in the table and left out of the figure.

The figure is drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so it
neither needs a display nor touches pyplot's global state.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from satcompress.search.budget import format_bytes
from satcompress.utils.io import atomic_write_bytes

REPORT_FILE = "report.md"
FIGURE_FILE = "pareto.png"
DEFAULT_TITLE = "Accuracy against size on disk"

#: Marker and colour per candidate kind; other kinds get ``_OTHER``.
STYLES: dict[str, tuple[str, str]] = {
    "baic": ("o", "tab:blue"),
    "greedy": ("s", "tab:orange"),
    "uniform": ("^", "tab:green"),
    "small-model": ("D", "tab:purple"),
    "mct": ("P", "tab:brown"),
    "input": ("X", "tab:gray"),
}
_OTHER = ("v", "tab:olive")
#: Under the candidate table when an ``mct`` row is in it (plotted at its file's size).
MCT_NOTE = (
    "mct: Model Compression Toolkit mixed-precision PTQ, no fine-tune. *predicted* is the "
    "weights memory its bit allocation implies (the figure its budget constrains); *on disk* "
    "is the fake-quant ONNX file it exports (float weights), the size plotted."
)
_NONE = "—"

Candidate = Mapping[str, Any]


def pareto_axes(
    candidates: Iterable[Candidate], budget_bytes: float | None, title: str = DEFAULT_TITLE
) -> Figure:
    """The Pareto figure as a matplotlib Figure (see :func:`pareto_figure`)."""
    points = _points(candidates)
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    mixed = len({p["test"] for p in points}) == 2
    for kind in _kinds(points):
        _scatter(ax, [p for p in points if p["kind"] == kind], kind, mixed)
    _front(ax, points)
    _chosen(ax, points)
    if budget_bytes:
        ax.axvline(
            budget_bytes,
            ls="--",
            color="black",
            lw=1.2,
            label=f"budget {format_bytes(budget_bytes)}",
        )
    _axes_style(ax, points, budget_bytes, title)
    return figure


def pareto_figure(
    candidates: Iterable[Candidate],
    budget_bytes: float | None,
    path: str | os.PathLike,
    title: str = DEFAULT_TITLE,
) -> Path:
    """Save accuracy (%) against bytes on disk (log axis) for every measured candidate.

    One marker per kind, the budget as a dashed vertical line, the Pareto front of the
    measured candidates as a step line and the chosen candidate as a star annotated with its
    size and accuracy. Test accuracy is used where present, else validation accuracy (the
    axis label says which; validation-only points are hollow when both kinds appear).

    Args:
        candidates: Candidate records.
        budget_bytes: The byte budget, or None for no budget line.
        path: The PNG to write (atomically).
        title: The figure title.

    Returns:
        The path written.
    """
    figure = pareto_axes(candidates, budget_bytes, title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def report_markdown(summary: Mapping[str, Any], candidates: Iterable[Candidate]) -> str:
    """The text of ``report.md``.

    Args:
        summary: The run's summary. Keys read (all optional): ``budget_bytes``,
            ``latency_budget_ms``, ``input`` and ``chosen`` (each a dict of ``bytes``,
            ``accuracy`` as a fraction, ``latency_ms``; without ``chosen``, the chosen
            file's values are read from the summary's own ``bytes``, ``accuracy`` and
            ``latency_ms``, as in BAIC's manifest), ``artifact`` (path), ``time_seconds``
            (or ``time_split``: phase -> seconds, ``total`` optional), ``config`` (dict),
            ``dataset`` and ``title``.
        candidates: Candidate records.

    Returns:
        Markdown: a summary table, the time split, every candidate sorted by size on disk
        (the chosen one starred), the figure and the config.
    """
    candidates = list(candidates)
    title = summary.get("title") or "BAIC report" + (
        f": {summary['dataset']}" if summary.get("dataset") else ""
    )
    parts = [f"# {title}", _summary_table(summary)]
    if summary.get("artifact"):
        parts.append(f"File: `{summary['artifact']}`")
    parts += [_time_table(summary), _candidate_table(candidates), f"![pareto]({FIGURE_FILE})"]
    if summary.get("config"):
        config = json.dumps(summary["config"], indent=1, sort_keys=True, default=str)
        parts.append(f"## Config\n\n```json\n{config}\n```")
    return "\n\n".join(p for p in parts if p) + "\n"


def write_report(
    run_dir: str | os.PathLike, summary: Mapping[str, Any], candidates: Iterable[Candidate]
) -> dict[str, Path]:
    """Write ``report.md`` and ``pareto.png`` into ``run_dir``, each atomically.

    Returns:
        ``{"report": path, "figure": path}``.
    """
    run_dir = Path(run_dir)
    candidates = list(candidates)
    title = summary.get("title") or DEFAULT_TITLE
    figure = pareto_figure(candidates, summary.get("budget_bytes"), run_dir / FIGURE_FILE, title)
    text = report_markdown(summary, candidates)
    report = atomic_write_bytes(run_dir / REPORT_FILE, text.encode())
    return {"report": report, "figure": figure}


# -- figure -----------------------------------------------------------------------------------


def _points(candidates: Iterable[Candidate]) -> list[dict[str, Any]]:
    """The plottable candidates: bytes on disk and an accuracy (test preferred, else val)."""
    points = []
    for c in candidates:
        size, test, val = (
            _number(c.get("bytes")),
            _number(c.get("test_accuracy")),
            _number(c.get("val_accuracy")),
        )
        accuracy = test if test is not None else val
        if size is None or size <= 0 or accuracy is None:
            continue
        points.append(
            {
                "kind": str(c.get("kind") or "other"),
                "bytes": size,
                "accuracy": 100 * accuracy,
                "test": test is not None,
                "chosen": bool(c.get("chosen")),
                "label": str(c.get("label") or c.get("id") or ""),
            }
        )
    return points


def _kinds(points: list[dict[str, Any]]) -> list[str]:
    """The kinds present, known ones in :data:`STYLES` order first."""
    present = {p["kind"] for p in points}
    return [k for k in STYLES if k in present] + sorted(present - set(STYLES))


def _scatter(ax: Any, points: list[dict[str, Any]], kind: str, mixed: bool) -> None:
    """One kind's points; validation-only points hollow when test points are shown too."""
    marker, colour = STYLES.get(kind, _OTHER)
    label = kind
    for test in (True, False):
        subset = [p for p in points if p["test"] == test]
        if not subset:
            continue
        ax.scatter(
            [p["bytes"] for p in subset],
            [p["accuracy"] for p in subset],
            s=42,
            marker=marker,
            facecolors="none" if mixed and not test else colour,
            edgecolors=colour,
            linewidths=1.2,
            label=label,
            zorder=3,
        )
        label = None


def _front(ax: Any, points: list[dict[str, Any]]) -> None:
    """The Pareto front (no other point is both smaller and more accurate) as a step line."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p["bytes"], -p["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    if len(front) >= 2:
        ax.step(
            [p["bytes"] for p in front],
            [p["accuracy"] for p in front],
            where="post",
            color="tab:red",
            lw=1.2,
            alpha=0.7,
            label="Pareto front",
            zorder=2,
        )


def _chosen(ax: Any, points: list[dict[str, Any]]) -> None:
    """The chosen candidate as a star, annotated with its size and accuracy."""
    for p in points:
        if not p["chosen"]:
            continue
        ax.scatter(
            [p["bytes"]],
            [p["accuracy"]],
            s=260,
            marker="*",
            color="gold",
            edgecolors="black",
            linewidths=0.8,
            label="chosen",
            zorder=4,
        )
        ax.annotate(
            f"{format_bytes(p['bytes'])}, {p['accuracy']:.2f}%",
            (p["bytes"], p["accuracy"]),
            xytext=(12, -16),
            textcoords="offset points",
            fontsize=9,
            arrowprops={"arrowstyle": "-", "color": "0.4"},
        )


def _axes_style(
    ax: Any, points: list[dict[str, Any]], budget_bytes: float | None, title: str
) -> None:
    """Log x axis in byte units, labels naming the accuracy split, legend, grid."""
    ax.set_xscale("log")
    xs = [p["bytes"] for p in points] + ([budget_bytes] if budget_bytes else [])
    if xs:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: byte_label(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("size on disk (log scale)")
    ax.set_ylabel(_accuracy_label(points))
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)


def _accuracy_label(points: list[dict[str, Any]]) -> str:
    """``test accuracy (%)``, ``validation accuracy (%)`` or the mixed form."""
    tests = {p["test"] for p in points}
    if tests == {True}:
        return "test accuracy (%)"
    if tests == {False}:
        return "validation accuracy (%)"
    if not tests:
        return "accuracy (%)"
    return "accuracy (%): test where measured, else validation (hollow)"


def byte_label(x: float) -> str:
    """A compact byte tick label: ``200 kB``, ``1 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= scale:
            return f"{x / scale:g} {unit}"
    return f"{x:g} B"


# -- markdown ---------------------------------------------------------------------------------


def _summary_table(summary: Mapping[str, Any]) -> str:
    """Budget, input and chosen: size on disk, accuracy, latency."""
    budget, lat_budget = (
        _number(summary.get("budget_bytes")),
        _number(summary.get("latency_budget_ms")),
    )
    base = summary.get("input") or {}
    chosen = summary.get("chosen") or {
        k: summary.get(k) for k in ("bytes", "accuracy", "latency_ms")
    }
    in_b, in_a, in_l = (_number(base.get(k)) for k in ("bytes", "accuracy", "latency_ms"))
    ch_b, ch_a, ch_l = (_number(chosen.get(k)) for k in ("bytes", "accuracy", "latency_ms"))
    rows = [
        "| | size on disk | accuracy | latency (batch 1) |",
        "|---|---:|---:|---:|",
        f"| budget | {_size(budget, exact=True)} | | {_ms(lat_budget)} |",
        f"| input model | {_size(in_b)} | {_pct(in_a)} | {_ms(in_l)} |",
        f"| **chosen** | {_size(ch_b)}{_ratio(in_b, ch_b, 'smaller')} | "
        f"{_pct(ch_a)}{_delta(in_a, ch_a)} | {_ms(ch_l)}{_ratio(in_l, ch_l, 'faster')} |",
    ]
    return "\n".join(rows)


def _time_table(summary: Mapping[str, Any]) -> str:
    """Seconds per phase and their share of the total."""
    times = summary.get("time_seconds") or summary.get("time_split") or {}
    phases = {k: _number(v) for k, v in times.items() if k != "total" and _number(v) is not None}
    if not phases:
        return ""
    total = _number(times.get("total")) or sum(phases.values())
    rows = ["## Time", "", "| phase | seconds | share |", "|---|---:|---:|"]
    for phase, seconds in phases.items():
        share = f"{100 * seconds / total:.0f}%" if total else _NONE
        rows.append(f"| {_cell(phase)} | {seconds:.1f} | {share} |")
    rows.append(f"| **total** | {total:.1f} | |")
    return "\n".join(rows)


def _candidate_table(candidates: list[Candidate]) -> str:
    """Every candidate, sorted by size on disk (then predicted size); the chosen one starred."""
    header = (
        "| | id | kind | label | predicted | on disk | predicted cost | val acc | test acc "
        "| latency | seconds | status |"
    )
    rows = [
        "## Candidates",
        "",
        f"{len(candidates)} candidates, sorted by size on disk; ★ marks the chosen file.",
        "",
        header,
        "|" + "---|" * 12,
    ]
    for c in sorted(candidates, key=_size_key):
        star = "★" if c.get("chosen") else ""
        name = f"**{_cell(c.get('id'))}**" if c.get("chosen") else _cell(c.get("id"))
        cost = _number(c.get("predicted_cost"))
        cells = [
            star,
            name,
            _cell(c.get("kind")),
            _cell(c.get("label")),
            _size(_number(c.get("predicted_bytes"))),
            _size(_number(c.get("bytes"))),
            _NONE if cost is None else f"{cost:.4g}",
            _pct(_number(c.get("val_accuracy"))),
            _pct(_number(c.get("test_accuracy"))),
            _ms(_number(c.get("latency_ms"))),
            _seconds(_number(c.get("seconds"))),
            _cell(c.get("status")),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    if any(c.get("kind") == "mct" for c in candidates):
        rows += ["", MCT_NOTE]
    return "\n".join(rows)


def _size_key(c: Candidate) -> tuple[int, float]:
    """Sort key: measured bytes, else predicted bytes, else last."""
    for key in ("bytes", "predicted_bytes"):
        value = _number(c.get(key))
        if value is not None:
            return (0 if key == "bytes" else 1, value)
    return (2, 0.0)


def _number(value: Any) -> float | None:
    """A finite float, or None (a ``{"bs1": ms}`` latency dict gives its batch-1 value)."""
    if isinstance(value, Mapping):
        value = value.get("bs1", next(iter(value.values()), None) if len(value) == 1 else None)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    if value is None or value == "":
        return _NONE
    return str(value).replace("|", "\\|").replace("\n", " ")


def _size(value: float | None, exact: bool = False) -> str:
    if value is None:
        return _NONE
    return f"{format_bytes(value)} ({value:,.0f} B)" if exact else format_bytes(value)


def _pct(value: float | None) -> str:
    return _NONE if value is None else f"{100 * value:.2f}%"


def _ms(value: float | None) -> str:
    return _NONE if value is None else f"{value:.2f} ms"


def _seconds(value: float | None) -> str:
    return _NONE if value is None else f"{value:.1f}"


def _ratio(before: float | None, after: float | None, word: str) -> str:
    """`` (50.5x smaller)`` when both values are known."""
    if not before or not after:
        return ""
    return f" ({before / after:.1f}x {word})"


def _delta(before: float | None, after: float | None) -> str:
    """`` (-0.38 points)`` when both accuracies are known."""
    if before is None or after is None:
        return ""
    return f" ({100 * (after - before):+.2f} points)"
