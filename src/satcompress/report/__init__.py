"""Reports made from the results store only: tables, figures, report.md/html, README sections.

``build_report(study_dir)`` (``satcompress report``) draws every figure the store has data for
into ``STUDY/visuals/``, with ``report.md`` and a self-contained ``report.html``; torch is never
imported.
"""

from satcompress.report.build import ReportResult, build_report
from satcompress.report.headline import headline, headline_markdown
from satcompress.report.records import load_study, technique
from satcompress.report.tables import (
    ablation_table,
    cpu_label,
    cpu_line,
    format_table,
    recipe_changes,
)

__all__ = [
    "ReportResult",
    "ablation_table",
    "build_report",
    "cpu_label",
    "cpu_line",
    "format_table",
    "headline",
    "headline_markdown",
    "load_study",
    "recipe_changes",
    "technique",
]
