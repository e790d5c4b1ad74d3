"""The study's figures, each drawn from the store alone or skipped with what it would need.

Every builder takes :class:`~satcompress.report.records.StudyData` and returns a bare
:class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state), or None when the study holds
no data for it: :data:`FIGURES` lists each one's file and the data that would produce it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from satcompress.report.headline import headline
from satcompress.report.records import (
    BAIC,
    FP32,
    PRUNE_STRUCTURED,
    PRUNE_UNSTRUCTURED,
    PTQ,
    QAT,
    TECHNIQUES,
    Entry,
    StudyData,
    datasets,
    pareto_front,
    unique_points,
)
from satcompress.search.report import STYLES, byte_label
from satcompress.utils.io import read_jsonl

#: Marker per technique (BAIC as the star search/report.py gives its chosen file).
MARKERS = {
    "fp32": "o",
    "KD": "D",
    PTQ: "s",
    QAT: "^",
    PRUNE_STRUCTURED: "v",
    PRUNE_UNSTRUCTURED: "<",
    BAIC: "*",
    "other": "x",
}
#: Colours of model families, in order of their largest file.
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan", "tab:gray", "tab:red")  # fmt: skip
#: Points this many accuracy points below a panel's best sit on its bottom edge, as ``BELOW``.
FLOOR_POINTS = 30.0
BELOW = "$\\downarrow$"
DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A bare Figure with the Agg canvas and constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def byte_axis(ax: Any, values: Sequence[float]) -> None:
    """Log x axis in byte units (``200 kB``, ``1 MB``), as BAIC's Pareto figure draws it."""
    ax.set_xscale("log")
    if values:
        ax.set_xlim(min(values) / 1.6, max(values) * 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: byte_label(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("deployable file size (log scale)")
    ax.grid(True, which="major", alpha=0.3)


def min_span(ax: Any, points: float = 3.0) -> None:
    """Widen the y axis to at least ``points`` so a 0.1-point change does not look steep."""
    low, high = ax.get_ylim()
    if high - low < points:
        middle = (low + high) / 2
        ax.set_ylim(middle - points / 2, middle + points / 2)


def family_colours(entries: Sequence[Entry]) -> dict[str, str]:
    """A colour per model family, the family with the largest file first."""
    largest: dict[str, int] = {}
    for e in entries:
        largest[e.model] = max(largest.get(e.model, 0), e.size_bytes or 0)
    order = sorted(largest, key=lambda m: (-largest[m], m))
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(order)}


# -- accuracy against bytes -------------------------------------------------------------------


def pareto_figure(data: StudyData) -> Figure | None:
    """Accuracy against deployable bytes: one panel per dataset, the main figure."""
    points = unique_points(data.entries)
    names = datasets(points)
    if not points:
        return None
    colours = family_colours(points)
    # the dataset with the most records gets the widest panel
    widths = [1.7 if i == 0 and len(names) > 1 else 1.0 for i in range(len(names))]
    figure = new_figure(5.2 * sum(widths) + 2.4, 5.4)
    axes = figure.subplots(1, len(names), squeeze=False, width_ratios=widths)[0]
    for ax, dataset in zip(axes, names, strict=True):
        _pareto_panel(ax, [p for p in points if p.dataset == dataset], colours, dataset)
    present = [t for t in TECHNIQUES if any(p.technique == t for p in points)]
    _legends(figure, present, list(colours), colours)
    return figure


def _pareto_panel(ax: Any, points: list[Entry], colours: dict[str, str], dataset: str) -> None:
    best = max(100 * (p.accuracy or 0) for p in points)
    floor = max(0.0, min(100 * (p.accuracy or 0) for p in points) - 1.5, best - FLOOR_POINTS)
    for p in points:
        acc = 100 * (p.accuracy or 0)
        below = acc < floor
        ax.scatter(
            [p.size_bytes], [floor if below else acc],
            marker=BELOW if below else MARKERS.get(p.technique, "x"),
            s=220 if p.technique == BAIC else 80 if below else 36,
            color="gold" if p.technique == BAIC else colours[p.model],
            edgecolors="black" if p.technique == BAIC else colours[p.model],
            linewidths=0.8, alpha=0.45 if below else 0.9, zorder=4 if p.technique == BAIC else 3,
            clip_on=False,
        )  # fmt: skip
    for model in sorted({p.model for p in points}):
        front = pareto_front(p for p in points if p.model == model)
        if len(front) >= 2:
            ax.step([p.size_bytes for p in front], [100 * (p.accuracy or 0) for p in front],
                    where="post", color=colours[model], lw=1.2, alpha=0.6, zorder=2)  # fmt: skip
    _annotate_baic(ax, [p for p in points if p.technique == BAIC])
    byte_axis(ax, [p.size_bytes or 1 for p in points])
    ax.set_ylim(floor - 0.5, best + 1.0)
    ax.set_ylabel("test accuracy (%)")
    below = sum(100 * (p.accuracy or 0) < floor for p in points)
    note = f" ({below} below {floor:.0f}% drawn on the edge as ↓)" if below else ""
    ax.set_title(f"{dataset}: accuracy vs deployable bytes{note}", fontsize=10)


def _annotate_baic(ax: Any, chosen: list[Entry]) -> None:
    """Label the most accurate BAIC file of each budget (budget, accuracy, model), staggered.

    One label per budget: several searches at one budget (other models, options) would
    otherwise stack their labels on one spot; their stars stay.
    """
    best: dict[Any, Entry] = {}
    for p in chosen:
        summary = p.record.get("baic") if isinstance(p.record.get("baic"), dict) else {}
        budget = summary.get("budget_bytes")
        if budget not in best or (p.accuracy or 0) > (best[budget].accuracy or 0):
            best[budget] = p
    for i, (budget, p) in enumerate(sorted(best.items(), key=lambda b: b[1].size_bytes or 0)):
        name = f"BAIC ≤ {byte_label(budget)}" if budget else "BAIC"
        ax.annotate(
            f"{name}\n{100 * (p.accuracy or 0):.2f}% {p.model}",
            (p.size_bytes, 100 * (p.accuracy or 0)),
            xytext=(10, -34 - 26 * i),  # a step down per budget: labels never stack
            textcoords="offset points",
            fontsize=8,
            arrowprops={"arrowstyle": "-", "color": "0.4"},
            # boxed above the markers: a label lands among other files' stars and points
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "alpha": 0.85},
            zorder=5,
        )


def _legends(
    figure: Figure, techniques: list[str], families: list[str], colours: dict[str, str]
) -> None:
    """Technique markers and family colours, outside the panels (never over the data)."""
    shapes = [
        Line2D([], [], ls="", marker=MARKERS.get(t, "x"), color="0.35",
               markerfacecolor="gold" if t == BAIC else "0.35",
               markeredgecolor="black" if t == BAIC else "0.35",
               markersize=12 if t == BAIC else 7, label=t)
        for t in techniques
    ]  # fmt: skip
    lines = [Line2D([], [], color=colours[m], lw=2, label=m) for m in families]
    below = Line2D([], [], ls="", marker=BELOW, color="0.35", markersize=9,
                   label="below the axis")  # fmt: skip
    figure.legend(handles=[*shapes, below], title="technique", fontsize=8, title_fontsize=8,
                  loc="outside right upper")  # fmt: skip
    figure.legend(handles=lines, title="model (line: its Pareto front)", fontsize=8,
                  title_fontsize=8, loc="outside right lower")  # fmt: skip


# -- PTQ vs QAT -----------------------------------------------------------------------------


def _best_by(entries: list[Entry], key: Callable[[Entry], Any]) -> dict[Any, Entry]:
    """The most accurate entry per key."""
    best: dict[Any, Entry] = {}
    for e in entries:
        k = key(e)
        if k not in best or (e.accuracy or 0) > (best[k].accuracy or 0):
            best[k] = e
    return best


def quantization_figure(data: StudyData) -> Figure | None:
    """Accuracy by weight bit-width, PTQ against QAT, per model (dense files, best of each)."""
    quant = [e for e in data.entries if e.technique in (PTQ, QAT) and e.plottable
             and e.bits is not None and not e.sparsity]  # fmt: skip
    if not quant:
        return None
    names = datasets(quant)
    figure = new_figure(5.8 * len(names) + 0.4, 4.4)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    colours = family_colours(quant)
    for ax, dataset in zip(axes, names, strict=True):
        subset = [e for e in quant if e.dataset == dataset]
        best = _best_by(subset, lambda e: (e.model, e.technique, e.bits))
        widths = sorted({k[2] for k in best})
        for model, kind in sorted({k[:2] for k in best}):
            xs = sorted(k[2] for k in best if k[:2] == (model, kind))
            ys = [100 * (best[(model, kind, x)].accuracy or 0) for x in xs]
            ax.plot(xs, ys, ls="-" if kind == QAT else "--", marker=MARKERS[kind],
                    color=colours[model], label=f"{model} {kind}")  # fmt: skip
        _fp32_lines(ax, data.entries, dataset, colours, {k[0] for k in best})
        min_span(ax)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("weight bits (first/last layers stay at 8)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: PTQ vs QAT by bit-width (best file per point)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return figure


def _fp32_lines(
    ax: Any, entries: list[Entry], dataset: str, colours: dict[str, str], models: set[str]
) -> None:
    """A dotted line at each model's fp32 accuracy.

    The evaluated checkpoint (recipe stage ``fp32``: what the quantizers started from) when
    the study has one, else the most accurate fp32 file.
    """
    pool = [e for e in entries if e.technique == FP32 and e.dataset == dataset
            and e.model in models and e.accuracy is not None]  # fmt: skip
    evaluated = [e for e in pool if (e.record.get("recipe") or {}).get("stage") == "fp32"]
    fp32 = _best_by(pool, lambda e: e.model)
    fp32.update(_best_by(evaluated, lambda e: e.model))
    for model, e in fp32.items():
        ax.axhline(100 * (e.accuracy or 0), ls=":", color=colours[model], lw=1,
                   label=f"{model} fp32")  # fmt: skip


# -- pruning -----------------------------------------------------------------------------------


def pruning_figure(data: StudyData) -> Figure | None:
    """Accuracy by sparsity, structured against unstructured, CNN and transformer panels."""
    pruned = [e for e in data.entries if e.technique in (PRUNE_STRUCTURED, PRUNE_UNSTRUCTURED)
              and e.accuracy is not None and e.sparsity is not None]  # fmt: skip
    if not pruned:
        return None
    kinds = [k for k in ("CNN", "transformer") if any(e.architecture == k for e in pruned)]
    figure = new_figure(5.8 * len(kinds) + 0.4, 5.6)
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    colours = family_colours(pruned)
    # the first dataset (alphabetically) has filled markers, any other hollow ones
    first = min(e.dataset for e in pruned)
    for ax, kind in zip(axes, kinds, strict=True):
        for (model, dataset, tech), line in _sweeps([e for e in pruned if e.architecture == kind]):
            xs = [e.sparsity or 0.0 for e in line]
            ys = [100 * (e.accuracy or 0) for e in line]
            dense = _dense_accuracy(data.entries, line[0])
            if dense is not None:
                xs, ys = [0.0, *xs], [dense, *ys]
            short = "structured" if tech == PRUNE_STRUCTURED else "unstructured"
            ax.plot([100 * x for x in xs], ys, marker=MARKERS[tech], color=colours[model],
                    ls="-" if tech == PRUNE_STRUCTURED else "--",
                    mfc=colours[model] if dataset == first else "white",
                    label=f"{model} ({dataset}) {short}")  # fmt: skip
        ax.set_xlabel("weights removed or zeroed (%)")
        ax.set_ylabel("test accuracy (%)")
        min_span(ax)
        ax.set_title(f"{kind}: structured vs unstructured pruning", fontsize=10)
        ax.grid(True, alpha=0.3)
        # below the panel: inside it, the legend hid whole sweeps
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)
    return figure


def _sweeps(pruned: list[Entry]) -> list[tuple[tuple[str, str, str], list[Entry]]]:
    """One line per model, dataset and technique: the source (file) with the most points.

    Points of different sources start from different dense models (another training run,
    another input size) and fine-tune differently, so they are never joined into one line;
    the source that swept the most sparsities stands for the model (the most accurate file
    per sparsity within it).
    """
    best = _best_by(pruned, lambda e: (e.model, e.dataset, e.technique, e.source,
                                       round(e.sparsity or 0.0, 3)))  # fmt: skip
    by_source: dict[tuple[str, str, str], dict[str, dict[float, Entry]]] = {}
    for (model, dataset, tech, source, x), e in best.items():
        by_source.setdefault((model, dataset, tech), {}).setdefault(source, {})[x] = e
    lines = []
    for key in sorted(by_source):
        points = max(by_source[key].values(), key=len)  # ties: the first source read
        lines.append((key, [points[x] for x in sorted(points)]))
    return lines


def _dense_accuracy(entries: list[Entry], pruned: Entry) -> float | None:
    """The accuracy (%) of the dense model a pruned file came from: the 0% point.

    Its ``base_id`` record when the study holds it, else the model's fp32 file from the same
    source (an experiment's own dense stage), else the model's most accurate fp32 file.
    """
    base = pruned.record.get("base_id")
    same = [e for e in entries if e.technique == FP32 and e.model == pruned.model
            and e.dataset == pruned.dataset and e.accuracy is not None]  # fmt: skip
    own = [e.accuracy for e in same if base is not None and e.id == base]
    own = own or [e.accuracy for e in same if e.source == pruned.source]
    found = own or [e.accuracy for e in same]
    return 100 * max(found) if found else None


# -- datasets ----------------------------------------------------------------------------------


def _bits_label(technique: str, bits: int | None) -> str:
    """`` 4-bit`` for one width; BAIC's files mix widths (its smallest is not its width)."""
    if technique == BAIC:
        return " (mixed bits)"
    return f" {bits}-bit" if bits and bits < 32 else ""


def datasets_figure(data: StudyData) -> Figure | None:
    """The same recipes (model, technique, bits) on each dataset: grouped bars.

    Each dataset's bars come from the records at its most common input size (the study's
    setting), so an ablation at a larger input never stands for the recipe.
    """
    points = _at_main_input_size([e for e in data.entries if e.plottable])
    best = _best_by(points, lambda e: (e.model, e.technique, e.bits, e.dataset))
    names = datasets(points)
    recipes = sorted({k[:3] for k in best if sum(k[:3] + (d,) in best for d in names) >= 2},
                     key=lambda k: (k[0], TECHNIQUES.index(k[1]), -(k[2] or 0)))  # fmt: skip
    if not recipes:
        return None
    names = [d for d in names if any(r + (d,) in best for r in recipes)]
    figure = new_figure(max(5.0, 1.1 * len(recipes) * len(names) / 2 + 2.5), 4.4)
    ax = figure.subplots()
    width = 0.8 / len(names)
    for i, dataset in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(recipes))]
        ys = [100 * (best[r + (dataset,)].accuracy or 0) if r + (dataset,) in best else 0
              for r in recipes]  # fmt: skip
        bars = ax.bar(xs, ys, width, label=dataset, color=PALETTE[i % len(PALETTE)])
        ax.bar_label(bars, labels=[f"{y:.1f}" if y else "" for y in ys], fontsize=7, padding=2)
    # "pruning (structured)": the qualifier on a line of its own, so neighbours never touch
    labels = [f"{m}\n{t}{_bits_label(t, b)}".replace(" (", "\n(") for m, t, b in recipes]
    ax.set_xticks(range(len(recipes)), labels, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    low = min(100 * (e.accuracy or 0) for k, e in best.items() if k[:3] in recipes)
    ax.set_ylim(max(0.0, low - 10), 101)
    sizes = ", ".join(f"{d} {_side(points, d)} px" for d in names)
    ax.set_title(f"The same recipes on each dataset (best file per recipe; {sizes})", fontsize=10)
    figure.legend(fontsize=8, loc="outside lower center", ncols=len(names))
    ax.grid(True, axis="y", alpha=0.3)
    return figure


def _at_main_input_size(entries: list[Entry]) -> list[Entry]:
    """The entries at their dataset's most common input size."""
    counts: dict[tuple[str, Any], int] = {}
    for e in entries:
        counts[e.dataset, e.input_size] = counts.get((e.dataset, e.input_size), 0) + 1
    main: dict[str, Any] = {}
    for (dataset, size), count in counts.items():  # the first of equal counts wins
        if dataset not in main or count > counts[dataset, main[dataset]]:
            main[dataset] = size
    return [e for e in entries if e.input_size == main[e.dataset]]


def _side(entries: list[Entry], dataset: str) -> str:
    """``64`` for a square input, ``64x96`` otherwise, ``?`` if unknown."""
    size = next((e.input_size for e in entries if e.dataset == dataset), None)
    if not size:
        return "?"
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


# -- ViT layer importance ---------------------------------------------------------------------

_VIT_ROW = re.compile(
    r"^\s*(\d+)\s+([\d.]+)\s*\(\s*([+-]?[\d.]+)\)\s+(\d+)->(\d+)\s+([\d.]+)\s*\(\s*([+-]?[\d.]+)\)"
)


def parse_vit_table(text: str) -> dict[str, Any] | None:
    """The ViT layer-importance result back from its text table (as records carry it).

    Args:
        text: What ``vit_layers_table`` printed.

    Returns:
        ``{"baseline_accuracy", "blocks": [...]}`` in the analysis's own keys, or None.
    """
    base = re.search(r"baseline accuracy ([\d.]+)%", text)
    rows = []
    for line in text.splitlines():
        m = _VIT_ROW.match(line)
        if m:
            rows.append({
                "block": int(m[1]), "removed_accuracy": float(m[2]) / 100,
                "removed_drop": -float(m[3]) / 100, "heads": int(m[4]), "heads_left": int(m[5]),
                "heads_accuracy": float(m[6]) / 100, "heads_drop": -float(m[7]) / 100,
            })  # fmt: skip
    if not rows or base is None:
        return None
    return {"baseline_accuracy": float(base[1]) / 100, "blocks": rows}


def vit_results(data: StudyData) -> list[tuple[str, dict[str, Any]]]:
    """Every ViT layer-importance result: ``vit_layers`` stages, then records' ``vit_layers``."""
    found = []
    for kind, details, run_dir in data.stages:
        if kind == "vit_layers" and isinstance(details, dict) and details.get("blocks"):
            found.append((Path(run_dir).name, details))
    for e in data.entries:
        value = e.record.get("vit_layers")
        result = parse_vit_table(value) if isinstance(value, str) else value
        if isinstance(result, dict) and result.get("blocks"):
            found.append((f"{e.model} ({e.dataset})", result))
    return found


def vit_figure(data: StudyData) -> Figure | None:
    """Accuracy drop per transformer block, the block removed or its heads pruned.

    One panel per analysed model (the ViT, the CLIP tower), from its first result.
    """
    first: dict[str, dict[str, Any]] = {}
    for name, result in vit_results(data):
        first.setdefault(name, result)
    results = list(first.items())
    if not results:
        return None
    longest = max(len(result["blocks"]) for _, result in results)
    figure = new_figure(max(5.0, 0.55 * longest + 2.5), 3.4 * len(results) + 0.4)
    for ax, (name, result) in zip(figure.subplots(len(results), 1, squeeze=False)[:, 0],
                                  results, strict=True):  # fmt: skip
        _vit_panel(ax, name, result)
    return figure


def _vit_panel(ax: Any, name: str, result: dict[str, Any]) -> None:
    rows = result["blocks"]
    index = [r["block"] for r in rows]
    ax.bar([i - 0.2 for i in index], [100 * r["removed_drop"] for r in rows], 0.4,
           label="block removed", color=STYLES["baic"][1])  # fmt: skip
    pairs = {(r["heads"], r["heads_left"]) for r in rows}
    label = "heads pruned: {} -> {}".format(*pairs.pop()) if len(pairs) == 1 else "heads pruned"
    ax.bar([i + 0.2 for i in index], [100 * r["heads_drop"] for r in rows], 0.4, label=label,
           color=STYLES["greedy"][1])  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(index)
    ax.set_xlabel("transformer block")
    ax.set_ylabel("accuracy drop (points)")
    ax.set_title(f"Transformer layer importance: {name}, baseline "
                 f"{100 * result['baseline_accuracy']:.1f}%", fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)


# -- confusion matrices -----------------------------------------------------------------------


def confusion_figure(data: StudyData) -> Figure | None:
    """Row-normalised confusion matrices of the headline models."""
    rows = [
        (label, e)
        for label, e in headline(data.entries).rows
        if isinstance(e.record.get("confusion_matrix"), list) and e.record["confusion_matrix"]
    ]
    if not rows:
        return None
    cols = min(3, len(rows))
    lines = -(-len(rows) // cols)
    figure = new_figure(4.6 * cols, 4.4 * lines + 0.4)
    axes = figure.subplots(lines, cols, squeeze=False).ravel()
    image = None
    for ax, (label, e) in zip(axes, rows, strict=False):
        image = _confusion(ax, label, e)
    for ax in axes[len(rows) :]:
        ax.set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=list(axes[: len(rows)]), shrink=0.6, label="share of the class")
    return figure


def _confusion(ax: Any, label: str, e: Entry) -> Any:
    matrix = [[float(v) for v in row] for row in e.record["confusion_matrix"]]
    shares = [[v / (sum(row) or 1) for v in row] for row in matrix]
    classes = e.record.get("classes") or [str(i) for i in range(len(matrix))]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    short = [c if len(c) <= 10 else c[:9] + "." for c in classes]
    ax.set_xticks(ticks, short, rotation=90, fontsize=6)
    ax.set_yticks(ticks, short, fontsize=6)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(f"{label}: {e.model}, {100 * (e.accuracy or 0):.2f}%", fontsize=9)
    return image


# -- BAIC trajectory ---------------------------------------------------------------------------


def baic_runs(data: StudyData) -> list[tuple[str, float | None, list[dict[str, Any]]]]:
    """``(name, budget, candidates)`` of every BAIC run whose candidates the study holds.

    Candidates come from a record's ``baic.candidates``, a stage's details, or the
    ``candidates.jsonl`` in a ``baic`` stage's run directory (in the order they finished).
    """
    runs, seen = [], []
    for e in data.entries:
        summary = e.record.get("baic")
        if isinstance(summary, dict) and summary.get("candidates"):
            if summary["candidates"] in seen:
                continue  # one search recorded twice (a resumed run with more baselines)
            seen.append(summary["candidates"])
            runs.append((e.id, summary.get("budget_bytes"), list(summary["candidates"])))
    for kind, details, run_dir in data.stages:
        if kind != "baic":
            continue
        details = details if isinstance(details, dict) else {}
        candidates = details.get("candidates") or read_jsonl(Path(run_dir) / "candidates.jsonl")
        if candidates:
            runs.append((Path(run_dir).name, details.get("budget_bytes"), candidates))
    return runs


def baic_figure(data: StudyData) -> Figure | None:
    """Each BAIC run's candidates in the order they finished: bytes and accuracy."""
    runs = [(n, b, [c for c in cs if c.get("bytes")]) for n, b, cs in baic_runs(data)]
    runs = [r for r in runs if r[2]]
    if not runs:
        return None
    figure = new_figure(11, 3.2 * len(runs) + 0.6)
    axes = figure.subplots(len(runs), 2, squeeze=False)
    for (name, budget, candidates), (left, right) in zip(runs, axes, strict=True):
        steps = list(range(1, len(candidates) + 1))
        for step, c in zip(steps, candidates, strict=True):
            marker, colour = STYLES.get(str(c.get("kind")), ("v", "tab:olive"))
            acc = (
                c.get("test_accuracy")
                if c.get("test_accuracy") is not None
                else c.get("val_accuracy", c.get("accuracy"))
            )
            big = 200 if c.get("chosen") else 40
            left.scatter([step], [c["bytes"]], marker=marker, color=colour, s=big, zorder=3)
            if acc is not None:
                right.scatter([step], [100 * acc], marker=marker, color=colour, s=big, zorder=3)
        if budget:
            left.axhline(budget, ls="--", color="black", lw=1, label=f"budget {byte_label(budget)}")
            left.legend(fontsize=8, loc="center right")
        left.set_yscale("log")
        sizes = [c["bytes"] for c in candidates] + ([budget] if budget else [])
        left.set_ylim(min(sizes) / 1.6, max(sizes) * 1.6)  # the fp32 input is not on the edge
        left.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: byte_label(x)))
        left.yaxis.set_minor_formatter(NullFormatter())
        left.set_ylabel("bytes on disk")
        right.set_ylabel("accuracy (%)")
        for ax in (left, right):
            ax.set_xlabel("candidate (order finished)")
            ax.set_xticks(steps)
            ax.grid(True, alpha=0.3)
        left.set_title(f"{name}: candidate sizes", fontsize=10)
        right.set_title(f"{name}: candidate accuracy (large marker: chosen)", fontsize=10)
    kinds = sorted({str(c.get("kind")) for _, _, cs in runs for c in cs})
    styles = {k: STYLES.get(k, ("v", "tab:olive")) for k in kinds}
    handles = [
        Line2D([], [], ls="", marker=styles[k][0], color=styles[k][1], label=k) for k in kinds
    ]
    axes[0][1].legend(handles=handles, fontsize=8, loc="lower right")
    return figure


# -- the list ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One figure of the report.

    Attributes:
        file: Its PNG's name.
        title: Its heading.
        needs: Which records would produce it (said in report.md when it is skipped).
        draw: Its builder (None: no data).
    """

    file: str
    title: str
    needs: str
    draw: Callable[[StudyData], Figure | None]


#: The figures in report order; the pipeline diagram is added by :mod:`.build`.
FIGURES = (
    FigureSpec("accuracy-vs-bytes.png", "Accuracy against deployable bytes",
               "records with an accuracy and a deployable file (size_bytes > 0)", pareto_figure),
    FigureSpec("ptq-vs-qat.png", "PTQ against QAT by bit-width",
               "quantize records (PTQ or QAT) with their bit-width", quantization_figure),
    FigureSpec("pruning.png", "Unstructured against structured pruning by sparsity",
               "prune records (a pruning summary or sparsity)", pruning_figure),
    FigureSpec("datasets.png", "The same recipes on EuroSAT and UC Merced",
               "records of one model and technique on two datasets", datasets_figure),
    FigureSpec("vit-layers.png", "ViT layer importance",
               "a vit_layers stage, or a record carrying vit_layers (prune-vit-layers)",
               vit_figure),
    FigureSpec("confusion.png", "Confusion matrices of the headline models",
               "headline records carrying a confusion_matrix", confusion_figure),
    FigureSpec("baic-trajectory.png", "BAIC's search trajectory",
               "BAIC candidates: a baic stage's candidates.jsonl, or baic.candidates in a record",
               baic_figure),
)  # fmt: skip
