"""Experiment 1: knowledge distillation on EuroSAT (ResNet-18 teacher; ResNet-18, ResNet-9).

Runs ``experiment_1_kd_eurosat.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_1_kd_eurosat.py  # the cpu preset
    python experiments/experiment_1_kd_eurosat.py --preset paper --dry-run
    python experiments/experiment_1_kd_eurosat.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
