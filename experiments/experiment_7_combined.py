"""Experiment 7: KD + pruning + QAT chains, and BAIC at 1 MB and 0.5 MB.

Runs ``experiment_7_combined.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_7_combined.py  # the cpu preset
    python experiments/experiment_7_combined.py --preset paper --dry-run
    python experiments/experiment_7_combined.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
