"""Experiment 5: ViT and CLIP image encoder pruning vs CNNs at matched ratios.

Runs ``experiment_5_transformer_pruning.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_5_transformer_pruning.py  # the cpu preset
    python experiments/experiment_5_transformer_pruning.py --preset paper --dry-run
    python experiments/experiment_5_transformer_pruning.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
