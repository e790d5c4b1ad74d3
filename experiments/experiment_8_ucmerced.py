"""Experiment 8: UC Merced: KD, pruning, QAT, combined and BAIC.

Runs ``experiment_8_ucmerced.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_8_ucmerced.py  # the cpu preset
    python experiments/experiment_8_ucmerced.py --preset paper --dry-run
    python experiments/experiment_8_ucmerced.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
