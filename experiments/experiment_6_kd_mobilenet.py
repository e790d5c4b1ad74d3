"""Experiment 6: knowledge distillation into MobileNetV2 and MobileNetV2 x0.5.

Runs ``experiment_6_kd_mobilenet.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_6_kd_mobilenet.py  # the cpu preset
    python experiments/experiment_6_kd_mobilenet.py --preset paper --dry-run
    python experiments/experiment_6_kd_mobilenet.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
