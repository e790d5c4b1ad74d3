"""Experiment 2: pruning and static int8 on EuroSAT, ResNet-18 and ViT, ViT layer importance.

Runs ``experiment_2_prune_int8_eurosat.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_2_prune_int8_eurosat.py  # the cpu preset
    python experiments/experiment_2_prune_int8_eurosat.py --preset paper --dry-run
    python experiments/experiment_2_prune_int8_eurosat.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
