"""``satcompress report``: a study's figures, report.md and report.html, from its store alone.

Examples::

    satcompress report runs/study                         # into runs/study/visuals/
    satcompress report runs/study --out visuals --readme README.md
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``report``."""
    report = commands.add_parser(
        "report",
        help="figures, report.md and report.html of a study, from its results store alone",
        description=(
            "Reads the study's store only (no model is loaded). Figures without data in the "
            "store are skipped and report.md says which records would produce them."
        ),
    )
    report.add_argument("study", type=Path, help="study folder (holding study.sqlite)")
    report.add_argument("--out", type=Path, help="output folder (default: STUDY/visuals)")
    report.add_argument(
        "--readme",
        type=Path,
        help="also replace the README's <!-- report:headline:start/end --> and "
        "<!-- report:figure:start/end --> sections",
    )
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report; print what was written and what was skipped."""
    from satcompress.report.build import build_report

    result = build_report(args.study, args.out, args.readme)
    for path in result.figures.values():
        print(f"figure {path}")
    for name, needs in result.skipped.items():
        print(f"skipped {name}: needs {needs}")
    print(f"report {result.markdown}\nreport {result.html}")
    if args.readme is not None:
        print(f"{args.readme}: replaced {', '.join(result.readme_sections)}")
    return 0
