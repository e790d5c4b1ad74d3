"""The headline rows: fp32, PTQ int8, QAT 2-bit, BAIC at each budget, the small distilled model.

Where another model's compressed file within a BAIC budget is more accurate than BAIC's from
the headline family, a ``best ≤ <budget>, any model`` row follows the BAIC rows.

They are chosen from the study by rule (:func:`headline`), on the dataset with the most
records and the model family BAIC compressed (else the family with the most records there),
so the README's headline table is whatever the store holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from satcompress.report.records import (
    BAIC,
    FP32,
    KD,
    PTQ,
    QAT,
    Entry,
    bits_label,
    datasets,
    ms,
    nbytes,
    pct,
    ratio_text,
)
from satcompress.report.tables import cpu_label, format_table
from satcompress.search.report import byte_label

#: What each headline row needs, for the note under the table when it is missing.
WANTED = {
    "fp32": "an fp32 record of the model family",
    "PTQ int8": "a PTQ record at 8 bits",
    "QAT 2-bit": "a QAT record at 2 bits",
    "BAIC": "a BAIC record (with its baic summary)",
    "KD": "a distilled (KD) record",
}


@dataclasses.dataclass(frozen=True)
class Headline:
    """The chosen rows.

    Attributes:
        dataset: The dataset they are on.
        family: The model family compressed.
        rows: ``(label, entry)`` in table order.
        missing: Labels of :data:`WANTED` rows the study has no record for.
    """

    dataset: str
    family: str
    rows: list[tuple[str, Entry]]
    missing: list[str]

    @property
    def fp32(self) -> Entry | None:
        """The fp32 row, the reference of every ratio."""
        return next((e for label, e in self.rows if label == "fp32"), None)


def _created(e: Entry) -> str:
    return str(e.record.get("created") or "")


def _best(
    entries: Sequence[Entry],
    prefer: Callable[[Entry], Any] | None = None,
    cpu: str | None = None,
) -> Entry | None:
    """The most accurate entry (``prefer`` first).

    Ties go to the smallest file, then to one timed on the CPU ``cpu``, then to the newest.
    """
    if not entries:
        return None
    return max(
        entries,
        key=lambda e: (
            prefer(e) if prefer else 0,
            e.accuracy or 0,
            -(e.size_bytes or 0),
            cpu is not None and cpu_label(e.cpu) == cpu,
            _created(e),
        ),
    )


def _budget(e: Entry) -> float:
    summary = e.record.get("baic") if isinstance(e.record.get("baic"), dict) else {}
    value = summary.get("budget_bytes")
    return float(value) if isinstance(value, int | float) else float(e.size_bytes or 0)


def _family(entries: Sequence[Entry], dataset: str) -> str:
    """The family BAIC compressed on ``dataset``, else the one with the most records."""
    baic = [e.model for e in entries if e.technique == BAIC and e.dataset == dataset]
    pool = baic or [e.model for e in entries if e.dataset == dataset and e.plottable]
    return max(sorted(set(pool)), key=pool.count) if pool else "?"


def _fp32(pool: list[Entry], family: str, baic: list[Entry]) -> Entry | None:
    """The fp32 file BAIC started from (same accuracy as its input), else an evaluated one."""
    inputs = {
        round(float(e.record["baic"].get("input", {}).get("accuracy") or -1), 6)
        for e in baic
        if isinstance(e.record.get("baic"), dict)
    }
    fp32 = [e for e in pool if e.technique == FP32 and e.model == family]
    return _best(
        fp32,
        lambda e: (
            round(e.accuracy or 0, 6) in inputs,
            (e.record.get("recipe") or {}).get("stage") == "fp32",
        ),
    )


def _quantized(
    pool: list[Entry], family: str, kind: str, width: int, cpu: str | None
) -> Entry | None:
    """The most accurate dense file of ``kind`` at ``width`` bits (own .satc files first)."""
    found = [
        e
        for e in pool
        if e.technique == kind and e.model == family and e.bits == width and not e.sparsity
    ]
    own = lambda e: str(e.record.get("format", "")).startswith("artifact")  # noqa: E731
    return _best(found, own, cpu)


def headline(entries: Sequence[Entry]) -> Headline:
    """Choose the headline rows of a study.

    Args:
        entries: The study's entries.

    Returns:
        The rows found (fp32, PTQ int8, QAT 2-bit, BAIC by budget, largest first, the most
        accurate file of any model within a budget where it beats BAIC's, and the smallest KD
        model) and the labels missing.
    """
    order = datasets(entries)
    dataset = order[0] if order else "?"
    family = _family(entries, dataset)
    pool = [e for e in entries if e.dataset == dataset and e.plottable]
    baic = sorted((e for e in pool if e.technique == BAIC and e.model == family),
                  key=lambda e: (-_budget(e), -(e.accuracy or 0)))  # fmt: skip
    fp32 = _fp32(pool, family, baic)
    cpu = cpu_label(fp32.cpu) if fp32 is not None and fp32.cpu else None
    rows: list[tuple[str, Entry | None]] = [
        ("fp32", fp32),
        ("PTQ int8", _quantized(pool, family, PTQ, 8, cpu)),
        ("QAT 2-bit", _quantized(pool, family, QAT, 2, cpu)),
    ]
    budgets: dict[float, Entry] = {}
    for e in baic:
        budgets.setdefault(_budget(e), e)
    rows += [(f"BAIC ≤ {byte_label(b)}", e) for b, e in budgets.items()] or [("BAIC", None)]
    rows += _best_under(pool, budgets)
    kd = [e for e in pool if _student_recipe(e, pool) is not None]
    small = min(kd, key=lambda e: (e.size_bytes or 0, -(e.accuracy or 0)), default=None)
    rows.append(("KD", small))
    found = [(label, e) for label, e in rows if e is not None]
    missing = [label for label, e in rows if e is None]
    return Headline(dataset, family, found, missing)


def _best_under(pool: Sequence[Entry], budgets: dict[float, Entry]) -> list[tuple[str, Entry]]:
    """The most accurate file of any model within each BAIC budget, where it beats BAIC's.

    The question a user with a byte budget asks: the best file that fits, whichever of the
    study's models it was made from (a ResNet-9 compressed to 1 MB may beat the ResNet-18's).
    A file already shown for a smaller budget is not repeated for a larger one.
    """
    rows: dict[float, Entry] = {}
    for limit in sorted(budgets):
        fits = [e for e in pool if e.technique != FP32 and 0 < (e.size_bytes or 0) <= limit]
        best = _best(fits)
        shown = best is not None and any(best is e for e in rows.values())
        if best is not None and not shown and (best.accuracy or 0) > (budgets[limit].accuracy or 0):
            rows[limit] = best
    return [(f"best ≤ {byte_label(b)}, any model", rows[b]) for b in budgets if b in rows]


def _distilled_source(e: Entry, pool: Sequence[Entry]) -> Entry | None:
    """The distilled (KD) record ``e`` was made from (its ``derived_from`` id), if any."""
    source = e.record.get("derived_from")
    found = [x for x in pool if source and x.id == source and x.source == e.source]
    return found[0] if found and found[0].technique == KD else None


def _student_recipe(e: Entry, pool: Sequence[Entry]) -> dict[str, Any] | None:
    """The training recipe of the distilled student ``e`` is (or was compressed from).

    A benchmark record names its source by id (``derived_from``); a study stage's record
    carries its card's lineage, whose ``distill`` step holds the student's recipe.
    """
    if e.technique == KD:
        return e.record.get("recipe") or {}
    source = _distilled_source(e, pool)
    if source is not None:
        return source.record.get("recipe") or {}
    for step in e.record.get("lineage") or []:
        if isinstance(step, dict) and step.get("stage") == "distill":
            return step.get("train") or {}
    return None


def _label(label: str, e: Entry, pool: Sequence[Entry] = ()) -> str:
    if label == "KD":
        widths = (_student_recipe(e, pool) or {}).get("model_kwargs") or {}
        width = f" (width {widths['width_mult']})" if "width_mult" in widths else ""
        then = f" + {e.technique}" if e.technique != KD else ""
        return f"KD student {e.model}{width}{then}"
    return label


def headline_markdown(entries: Sequence[Entry]) -> str:
    """The headline table as Markdown (what the README's markers enclose).

    Args:
        entries: The study's entries.

    Returns:
        A caption line, the table, the CPU(s) the latency was measured on, and a note naming
        the rows the study has no record for.
    """
    head = headline(entries)
    ref = head.fp32.size_bytes if head.fp32 else None
    rows = []
    for label, e in head.rows:
        ratio = ref / e.size_bytes if ref and e.size_bytes else None
        rows.append((
            _label(label, e, entries), e.model, f"**{pct(e.accuracy)}**", nbytes(e.size_bytes),
            ratio_text(ratio), bits_label(e.record), ms(e.latency("bs1")),
        ))  # fmt: skip
    header = ("", "model", "test acc.", "deployable bytes", "vs fp32", "bits", "ms bs1")
    lines = [
        f"Headline results on {head.dataset} ({head.family}), from the study's records:",
        "",
        format_table(header, "llrrrrr", rows),
    ]
    cpus = sorted({cpu_label(e.cpu) for _, e in head.rows if e.cpu})
    if cpus:
        lines += ["", f"Latency: ONNX Runtime, batch 1, on {', '.join(cpus)}."]
    if head.missing:
        needs = "; ".join(f"{m}: needs {WANTED[m]}" for m in head.missing)
        lines += ["", f"Not in the study yet ({needs})."]
    return "\n".join(lines)


__all__ = ["Headline", "headline", "headline_markdown"]
