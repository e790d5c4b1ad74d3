"""Experiment 4: unstructured vs structured sparsity 0.25..0.9, ResNet-18 and ViT.

Runs ``experiment_4_sparsity_sweep.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_4_sparsity_sweep.py  # the cpu preset
    python experiments/experiment_4_sparsity_sweep.py --preset paper --dry-run
    python experiments/experiment_4_sparsity_sweep.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
