"""The pipeline diagram, generated from the experiment stage registry (never drawn by hand).

The stage kinds are those :data:`satcompress.experiments.execute.STAGE_RUNNERS` can run;
what each one takes (``from``: a model, ``teacher``: a teacher model, ``train``: a training
config) is :data:`satcompress.experiments.spec.STAGE_KEYS`, and the stages that measure
without changing the model are :data:`~satcompress.experiments.spec.PASS_THROUGH`. Adding a
stage kind to the registry adds its box and arrows here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from satcompress.experiments.execute import STAGE_RUNNERS
from satcompress.experiments.spec import PASS_THROUGH, QUANTIZE_METHODS, STAGE_KEYS
from satcompress.report.figures import new_figure

SOURCES = ("checkpoint or registry model", "dataset (split fingerprint)")
OUTPUTS = (".satc / ONNX file", "record (satcompress.record/1)", "study.sqlite", "report")
_COLUMN_COLOURS = ("#eeeeee", "#d6e9f8", "#fde2c8", "#dff0d8", "#eeeeee")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Columns of boxes, left to right.

    Attributes:
        columns: ``(title, [box names])`` per column.
        teacher: Stage kinds that take a teacher.
        keys: Stage kind -> the keys it takes.
    """

    columns: list[tuple[str, list[str]]]
    teacher: list[str]
    keys: dict[str, tuple[str, ...]]


def pipeline_layout(
    keys: Mapping[str, Sequence[str]] = STAGE_KEYS,
    runnable: Sequence[str] = tuple(STAGE_RUNNERS),
    measuring: Sequence[str] = PASS_THROUGH,
) -> Layout:
    """Place each stage kind by what it does.

    Stages that make a model from data (no ``from`` needed to train: ``train``,
    ``distill``) come first, then those that transform a model, then those that only
    measure one (``PASS_THROUGH``).

    Args:
        keys: Stage kind -> keys it takes (:data:`STAGE_KEYS`).
        runnable: The kinds the executor runs (:data:`STAGE_RUNNERS`).
        measuring: The kinds that measure without changing the model.

    Returns:
        The layout.
    """
    kinds = [k for k in keys if k in runnable]
    makers = [k for k in kinds if k in ("train", "distill")]
    measures = [k for k in kinds if k in measuring]
    transforms = [k for k in kinds if k not in makers and k not in measures]
    columns = [
        ("inputs", list(SOURCES)),
        ("train a model", makers),
        ("compress it", transforms),
        ("measure it", measures),
        ("outputs", list(OUTPUTS)),
    ]
    teacher = [k for k in kinds if "teacher" in keys[k]]
    return Layout([c for c in columns if c[1]], teacher, {k: tuple(keys[k]) for k in kinds})


def _label(name: str, layout: Layout) -> str:
    if name not in layout.keys:
        return name
    shown = name + (f" ({' | '.join(QUANTIZE_METHODS)})" if name == "quantize" else "")
    takes = [k for k in layout.keys[name] if k != "config"]
    return f"{shown}\ntakes: {', '.join(takes) or 'config'}"


def pipeline_figure(layout: Layout | None = None) -> Figure:
    """Draw the layout: boxes per column, model arrows between columns, teacher arrows.

    Args:
        layout: The layout (default: :func:`pipeline_layout` of the registry).

    Returns:
        The figure.
    """
    layout = layout or pipeline_layout()
    rows = max(len(names) for _, names in layout.columns)
    figure = new_figure(2.9 * len(layout.columns) + 0.4, 1.1 * rows + 1.2)
    ax = figure.subplots()
    ax.set_xlim(0, len(layout.columns))
    ax.set_ylim(-0.45, rows + 0.2)
    ax.set_axis_off()
    centres: dict[str, tuple[float, float]] = {}
    for i, (title, names) in enumerate(layout.columns):
        ax.text(i + 0.5, rows, title, ha="center", va="bottom", fontsize=10, weight="bold")
        top = rows - 0.5 - (rows - len(names)) / 2
        for j, name in enumerate(names):
            centres[name] = (i + 0.5, top - j)
            _box(ax, centres[name], _label(name, layout), _COLUMN_COLOURS[i % 5])
    _column_arrows(ax, layout, centres)
    _teacher_arrows(ax, layout, centres)
    ax.text(0.02, -0.3, "solid: the model flows on (a stage's `from:` is any earlier stage, "
            "so compress stages chain in any order); dashed: teacher logits (`teacher:`)",
            fontsize=8, color="0.3")  # fmt: skip
    ax.set_title("satcompress pipeline (generated from the experiment stage registry)",
                 fontsize=11)  # fmt: skip
    return figure


def _box(ax: object, centre: tuple[float, float], text: str, colour: str) -> None:
    x, y = centre
    ax.add_patch(FancyBboxPatch((x - 0.42, y - 0.3), 0.84, 0.6, boxstyle="round,pad=0.02",
                                facecolor=colour, edgecolor="0.3", lw=1))  # fmt: skip
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(
    ax: object, start: tuple[float, float], end: tuple[float, float], **style: object
) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1,
                                 color="0.25", shrinkA=2, shrinkB=2, **style))  # fmt: skip


def _column_arrows(ax: object, layout: Layout, centres: dict[str, tuple[float, float]]) -> None:
    """Each column joins the next through a vertical bus (no n x m tangle of arrows).

    The last column (the outputs) is a chain: each output feeds the one below it.
    """
    columns = layout.columns
    for (_, left), (_, right) in zip(columns, columns[1:], strict=False):
        bus = centres[right[0]][0] - 0.5
        targets = right[:1] if right is columns[-1][1] else right
        ys = [centres[n][1] for n in (*left, *targets)]
        ax.plot([bus, bus], [min(ys), max(ys)], color="0.25", lw=1)
        for name in left:
            x, y = centres[name]
            ax.plot([x + 0.42, bus], [y, y], color="0.25", lw=1)
        for name in targets:
            x, y = centres[name]
            _arrow(ax, (bus, y), (x - 0.42, y))
    outputs = columns[-1][1]
    for upper, lower in zip(outputs, outputs[1:], strict=False):
        (x, y1), (_, y2) = centres[upper], centres[lower]
        _arrow(ax, (x, y1 - 0.3), (x, y2 + 0.3))


def _teacher_arrows(ax: object, layout: Layout, centres: dict[str, tuple[float, float]]) -> None:
    """Dashed arrows from the training stage to every stage that takes a teacher."""
    source = next((n for n in ("train", "distill") if n in centres), None)
    if source is None:
        return
    sx, sy = centres[source]
    for name in layout.teacher:
        if name == source or name not in centres:
            continue
        x, y = centres[name]
        if abs(x - sx) < 0.1:  # same column: straight down
            _arrow(ax, (sx, sy - 0.3), (x, y + 0.3), linestyle="--")
            continue
        _arrow(ax, (sx + 0.42, sy + 0.18), (x - 0.42, y + 0.18), linestyle="--",
               connectionstyle="arc3,rad=-0.2")  # fmt: skip
