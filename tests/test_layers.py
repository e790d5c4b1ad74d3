"""The package's layers (pyproject.toml's import-linter contract) hold: no import goes up."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    done = subprocess.run(
        [lint, "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    """The contract is not vacuous: an upward import in a copy of the package breaks it."""
    lint = shutil.which("lint-imports")
    package = tmp_path / "src" / "satcompress"
    shutil.copytree(ROOT / "src" / "satcompress", package)
    (package / "models" / "upward.py").write_text("import satcompress.pipeline.stages\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    # the whole environment (a pyenv shim needs bash on PATH), the copy first on the path
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    done = subprocess.run(
        [lint, "--config", str(config)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    assert "satcompress.models.upward -> satcompress.pipeline.stages" in done.stdout
