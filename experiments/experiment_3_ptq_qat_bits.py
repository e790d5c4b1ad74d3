"""Experiment 3: PTQ vs QAT at 8/4/3/2/1 bits, ResNet-18 and MobileNetV2 on EuroSAT.

Runs ``experiment_3_ptq_qat_bits.yaml`` (beside this file) through ``satcompress experiment
run``, passing on every argument::

    python experiments/experiment_3_ptq_qat_bits.py  # the cpu preset
    python experiments/experiment_3_ptq_qat_bits.py --preset paper --dry-run
    python experiments/experiment_3_ptq_qat_bits.py --study runs/study --workers 2
"""

import sys
from pathlib import Path

from satcompress.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "run", str(CONFIG), *sys.argv[1:]]))
