"""The study's adaptive compression pipeline: ``satcompress baic`` with the study's defaults.

Compresses the shared EuroSAT ResNet-18 to the most accurate ``.satc`` file within 1 MB and
saves it, with its report, under ``saved_models/``. Every ``satcompress baic`` flag works here
too (``--budget 500kB``, ``--quick``, ``--checkpoint``, ``--dataset ucmerced``...)::

    python adaptive_compression_pipeline.py             # 1 MB, full search
    python adaptive_compression_pipeline.py --quick     # minutes on 2 cores
"""

from __future__ import annotations

import sys

from satcompress.cli import main

DEFAULTS = {
    "--checkpoint": "../shared/models/resnet18_eurosat64.safetensors",
    "--budget": "1MB",
    "--dataset": "eurosat",
    "--data-dir": "../shared/data",
}


def arguments(argv: list[str]) -> list[str]:
    """``baic`` with the defaults for every flag the user did not give."""
    given = {arg.split("=")[0] for arg in argv if arg.startswith("--")}
    args = ["baic", *argv]
    for flag, value in DEFAULTS.items():
        data_flag = flag in ("--dataset", "--data-dir")
        if flag not in given and not (data_flag and "--checkpoint" in given):
            args += [flag, value]  # another checkpoint brings its own data (its card)
    if "--run-dir" not in given:
        budget = dict(zip(args, args[1:], strict=False)).get("--budget", DEFAULTS["--budget"])
        args += ["--run-dir", f"saved_models/resnet18_eurosat_baic_{budget}"]
    return args


if __name__ == "__main__":
    sys.exit(main(arguments(sys.argv[1:])))
