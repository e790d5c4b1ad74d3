"""``report.md``, a self-contained ``report.html`` and the README's generated sections.

A report is a list of blocks (headings, paragraphs, tables, figures, skipped figures) rendered
twice: as Markdown beside the PNGs, and as one HTML file with the figures embedded as base64
PNG and no external resource.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from satcompress.report.records import (
    INITIALISATIONS,
    NONE,
    TECHNIQUES,
    Entry,
    bits_label,
    compression_ratio,
    datasets,
    ms,
    nbytes,
    pct,
    ratio_text,
    sparsity_text,
)
from satcompress.report.tables import cpu_label, format_table

#: The README sections the report writes: name -> (start marker, end marker).
MARKERS = {
    name: (f"<!-- report:{name}:start -->", f"<!-- report:{name}:end -->")
    for name in ("headline", "figure")
}
TABLE_HEADER = ("model", "technique", "test acc.", "deployable bytes", "vs fp32", "bits",
                "sparsity", "ms bs1", "ms bs64", "CPU", "source", "id")  # fmt: skip
#: Columns holding figures (right-aligned) in any table of the report.
NUMERIC_COLUMNS = ("test acc.", "deployable bytes", "vs fp32", "bits", "sparsity", "ms bs1",
                   "ms bs64", "stage time", *INITIALISATIONS)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Block:
    """One piece of the report.

    Attributes:
        kind: ``h2``, ``p``, ``md`` (Markdown text, e.g. a table), ``table``, ``figure`` or
            ``skipped``.
        text: Heading, paragraph, Markdown, or the figure's title.
        rows: ``table`` only: header, then rows of cells.
        path: ``figure`` only: the PNG.
        note: ``skipped`` only: which data would produce the figure.
    """

    kind: str
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()
    path: Path | None = None
    note: str = ""


def record_rows(entries: Sequence[Entry], dataset: str) -> list[tuple[str, ...]]:
    """The table rows of one dataset: by model, technique, then largest file first."""
    chosen = [e for e in entries if e.dataset == dataset and e.accuracy is not None]
    order = sorted(chosen, key=lambda e: (e.model, TECHNIQUES.index(e.technique),
                                          -(e.size_bytes or 0), e.id))  # fmt: skip
    return [
        (
            e.model,
            e.technique,
            pct(e.accuracy),
            nbytes(e.size_bytes),
            ratio_text(compression_ratio(e, entries)),
            bits_label(e.record),
            sparsity_text(e.sparsity),
            ms(e.latency("bs1")),
            ms(e.latency("bs64")),
            cpu_label(e.cpu) if e.cpu else NONE,
            e.source,
            e.id,
        )  # fmt: skip
        for e in order
    ]


def table_blocks(entries: Sequence[Entry]) -> list[Block]:
    """One heading and table per dataset (the dataset with most records first)."""
    blocks = []
    names = datasets(entries) + sorted({e.dataset for e in entries} - set(datasets(entries)))
    for dataset in names:
        rows = record_rows(entries, dataset)
        if rows:
            blocks += [Block("h2", f"Records: {dataset} ({len(rows)})"),
                       Block("table", rows=(TABLE_HEADER, *rows))]  # fmt: skip
    return blocks


def initialisation_blocks(entries: Sequence[Entry]) -> list[Block]:
    """Scratch against transfer: the best file per model, technique and how it started.

    Only datasets whose models started more than one way (from scratch, transfer from another
    dataset's model, ImageNet weights) get a table.

    Returns:
        A heading and a table per such dataset (none otherwise).
    """
    blocks = []
    for dataset in datasets(entries):
        chosen = [e for e in entries if e.dataset == dataset and e.plottable and e.initialisation]
        starts = [i for i in INITIALISATIONS if any(e.initialisation == i for e in chosen)]
        if len(starts) < 2:
            continue
        best: dict[tuple[str, str, str], Entry] = {}
        for e in chosen:
            cell = (e.model, e.technique, e.initialisation)
            if cell not in best or e.accuracy > best[cell].accuracy:
                best[cell] = e
        pairs = sorted({(m, t) for m, t, _ in best}, key=lambda p: (p[0], TECHNIQUES.index(p[1])))
        rows = [
            (model, technique, *(_start_cell(best.get((model, technique, i))) for i in starts))
            for model, technique in pairs
        ]
        blocks += [
            Block("h2", f"Initialisation: {dataset}"),
            Block("p", "Best test accuracy (deployable bytes) of each model and technique by "
                       "how its model started training."),
            Block("table", rows=(("model", "technique", *starts), *rows)),
        ]  # fmt: skip
    return blocks


def _start_cell(entry: Entry | None) -> str:
    return NONE if entry is None else f"{pct(entry.accuracy)} ({nbytes(entry.size_bytes)} B)"


EXPERIMENT_HEADER = ("stage", "model", "technique", "test acc.", "deployable bytes", "vs fp32",
                     "bits", "sparsity", "ms bs1", "stage time")  # fmt: skip


def experiment_blocks(
    experiments: Mapping[str, Sequence[tuple[str, Entry, float | None]]],
    entries: Sequence[Entry],
    progress: Mapping[str, tuple[int, int]] | None = None,
) -> list[Block]:
    """One heading and table per experiment: its finished stages in the file's order.

    Args:
        experiments: :attr:`~satcompress.report.records.StudyData.experiments`.
        entries: Every entry (a stage's compression ratio is against its model's fp32 file).
        progress: :attr:`~satcompress.report.records.StudyData.progress`: the heading says
            how many of its stages had finished, and whether that is all of them.

    Returns:
        The blocks (none without experiments).
    """
    blocks = []
    for label, rows in experiments.items():
        body = [
            (stage, e.model, e.technique, pct(e.accuracy), nbytes(e.size_bytes),
             ratio_text(compression_ratio(e, entries)), bits_label(e.record),
             sparsity_text(e.sparsity), ms(e.latency("bs1")), duration(seconds))
            for stage, e, seconds in rows
        ]  # fmt: skip
        heading = f"Experiment: {label} ({_progress(len(body), (progress or {}).get(label))})"
        spent = [seconds for _, _, seconds in rows if seconds is not None]
        if spent:  # a stage another experiment ran first counts in both (same key, one run)
            heading += f", {duration(sum(spent))} of stage time"
        blocks += [Block("h2", heading),
                   Block("table", rows=(EXPERIMENT_HEADER, *body))]  # fmt: skip
    return blocks


def _progress(rows: int, counts: tuple[int, int] | None) -> str:
    if counts is None:
        return f"{_stages(rows)} finished"
    done, total = counts
    return (
        f"complete: {_stages(total)}"
        if done >= total
        else f"incomplete: {done} of {_stages(total)} finished"
    )


def _stages(count: int) -> str:
    return f"{count} stage{'s' * (count != 1)}"


def duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``12 min``, ``40 s`` or a dash (no time recorded)."""
    if seconds is None:
        return NONE
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# -- Markdown ----------------------------------------------------------------------------------


def to_markdown(title: str, blocks: Sequence[Block], base: Path) -> str:
    """The blocks as Markdown; figure paths relative to ``base`` (report.md's folder)."""
    parts = [f"# {title}"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"## {b.text}")
        elif b.kind in ("p", "md"):
            parts.append(b.text)
        elif b.kind == "table":
            header, *rows = b.rows
            parts.append(format_table(header, _align(header), rows))
        elif b.kind == "figure" and b.path is not None:
            rel = os.path.relpath(b.path, base).replace(os.sep, "/")
            parts.append(f"### {b.text}\n\n![{b.text}]({rel})")
        elif b.kind == "skipped":
            parts.append(f"- **{b.text}**: skipped, no data in the study (needs {b.note}).")
    return "\n\n".join(parts) + "\n"


# -- HTML --------------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:3px 6px}th{background:#f0f0f0}"
    "td.r{text-align:right}img{max-width:100%;border:1px solid #eee}"
    "code{background:#f4f4f4;padding:0 3px}"
)


def inline(text: str) -> str:
    """Markdown inline marks (``**bold**``, backticks) as HTML, everything else escaped."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _align(header: Sequence[str]) -> str:
    return "".join("r" if column in NUMERIC_COLUMNS else "l" for column in header)


def _html_table(rows: Sequence[Sequence[str]], align: str) -> str:
    header, *body = rows
    head = "".join(f"<th>{inline(c)}</th>" for c in header)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in body:
        cells = "".join(
            f'<td class="{"r" if a == "r" else "l"}">{inline(str(c))}</td>'
            for c, a in zip(row, align, strict=False)
        )
        lines.append(f"<tr>{cells}</tr>")
    return "\n".join(lines) + "</tbody></table>"


def markdown_table_html(text: str) -> str:
    """A Markdown table (and the lines around it) as HTML."""
    lines, out, table = text.splitlines(), [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if table:
            align = "".join("r" if c.endswith(":") else "l" for c in table[1])
            out.append(_html_table([table[0], *table[2:]], align))
            table = []
        if line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out)


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """The blocks as one self-contained HTML page (figures as base64 PNG, inline CSS)."""
    name = html.escape(title)
    parts = [
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{name}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{name}</h1>"
    ]
    for b in blocks:
        parts.append(_html_block(b))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_block(b: Block) -> str:
    if b.kind == "h2":
        return f"<h2>{inline(b.text)}</h2>"
    if b.kind == "p":
        return f"<p>{inline(b.text)}</p>"
    if b.kind == "md":
        return markdown_table_html(b.text)
    if b.kind == "table":
        return _html_table(b.rows, _align(b.rows[0]))
    if b.kind == "figure" and b.path is not None:
        data = base64.b64encode(b.path.read_bytes()).decode()
        return (f"<h3>{inline(b.text)}</h3><img alt=\"{html.escape(b.text)}\" "
                f"src=\"data:image/png;base64,{data}\">")  # fmt: skip
    if b.kind == "skipped":
        return (f"<p><strong>{inline(b.text)}</strong>: skipped, no data in the study "
                f"(needs {inline(b.note)}).</p>")  # fmt: skip
    return ""


# -- README ------------------------------------------------------------------------------------


def replace_section(text: str, name: str, content: str) -> tuple[str, bool]:
    """Replace what lies between the ``name`` markers (see :data:`MARKERS`).

    Args:
        text: The document.
        name: ``headline`` or ``figure``.
        content: The new text between the markers.

    Returns:
        The new document and whether the markers were there.

    Raises:
        ValueError: If only one of the two markers is there, or the end comes first.
    """
    start, end = MARKERS[name]
    i, j = text.find(start), text.find(end)
    if i < 0 and j < 0:
        return text, False
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"the README needs both {start} and {end}, in that order")
    return text[: i + len(start)] + "\n" + content.strip() + "\n" + text[j:], True


def update_readme(path: str | Path, sections: dict[str, str]) -> list[str]:
    """Write the generated sections into a README between their markers.

    Args:
        path: The README.
        sections: Marker name -> content.

    Returns:
        The sections replaced.

    Raises:
        ValueError: If the README has none of the markers.
    """
    path = Path(path)
    text = original = path.read_text()
    done = []
    for name, content in sections.items():
        text, found = replace_section(text, name, content)
        if found:
            done.append(name)
    if not done:
        markers = ", ".join(f"{a} ... {b}" for a, b in MARKERS.values())
        raise ValueError(f"{path} has none of the report markers ({markers})")
    if text != original:
        path.write_text(text)
    return done


def figure_markdown(figure: Path, readme: Path, title: str) -> str:
    """The README's main-figure line: an image link relative to the README's folder."""
    rel = os.path.relpath(figure.resolve(), readme.resolve().parent).replace(os.sep, "/")
    return f"![{title}]({rel})"
