"""Reports: tables (and later figures) made from the results store only."""

from satcompress.report.tables import (
    ablation_table,
    cpu_label,
    cpu_line,
    format_table,
    recipe_changes,
)

__all__ = ["ablation_table", "cpu_label", "cpu_line", "format_table", "recipe_changes"]
