"""Regenerate a study's figures and reports from its results store (``satcompress report``).

    python generate_visualizations.py [STUDY_DIR] [--out DIR] [--readme README.md]

STUDY_DIR defaults to ``runs/study``; the files go to ``STUDY_DIR/visuals/``.
"""

import sys

from satcompress.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        args = ["runs/study", *args]
    raise SystemExit(main(["report", *args]))
