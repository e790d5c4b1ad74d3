"""The optional ``mct`` BAIC baseline (Sony's Model Compression Toolkit mixed-precision PTQ).

The MCT tests need ``pip install satcompress[mct]``; the missing-extra error does not.
"""

import json
import math
import sys
from types import SimpleNamespace

import pytest

from satcompress.cli import main
from satcompress.config import ConfigError
from satcompress.pipeline import load
from satcompress.pipeline.data import dataset_for
from satcompress.search import loop as baic_module
from satcompress.search.config import BAICConfig
from satcompress.search.loop import baic
from satcompress.search.report import MCT_NOTE

FAST = {
    "sensitivity_images": 16,
    "candidates": 1,
    "candidate_epochs": 1,
    "candidate_batches": 2,
    "final_epochs": 0,
    "bits": (8, 4, 2),
    "channel_ratios": (0.5,),
}


@pytest.fixture(scope="module")
def mct():
    """MCT, or the test is skipped (before the model is trained)."""
    return pytest.importorskip("model_compression_toolkit")


def _kernel_weights(model):
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() > 1)


def test_mct_baseline_is_recorded_at_the_budget(mct, trained_cnn, tmp_path):
    config = BAICConfig(budget="6x", baselines=("mct",), **FAST)
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    records = [json.loads(line) for line in (tmp_path / "r" / "candidates.jsonl").open()]
    record = next(r for r in records if r["kind"] == "mct")
    budget = result.details["budget_bytes"]
    assert record["status"] == "ok" and 0 < record["accuracy"] <= 1
    # the allocation fits the budget, and is mixed: the budget is under 8 bits everywhere
    weights = _kernel_weights(load(trained_cnn).model)
    assert 2 * weights / 8 <= record["predicted_bytes"] == record["implied_bytes"] <= budget
    layers = record["layer_bits"].values()
    assert budget < weights and min(e["bits"] for e in layers) < 8
    assert sum(e["params"] for e in layers) == weights  # every kernel, BN folded in
    assert record["implied_bytes"] == math.ceil(sum(e["bits"] * e["params"] for e in layers) / 8)
    # the file MCT writes: a fake-quant ONNX, float weights, so over the implied size
    assert record["bytes"] == (tmp_path / "r" / "candidates" / "mct" / "model.onnx").stat().st_size
    assert record["bytes"] > 4 * weights
    summary = result.details["baselines"]["mct"]
    assert summary["bytes"] == record["bytes"]
    assert summary["predicted_bytes"] == record["implied_bytes"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| mct |" in report and MCT_NOTE in report
    # resumed: the finished baseline is reused, not quantized again
    baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    again = [json.loads(line) for line in (tmp_path / "r" / "candidates.jsonl").open()]
    assert sum(r["kind"] == "mct" for r in again) == 1


def test_budget_under_two_bits_is_infeasible_with_the_minimum(mct, trained_cnn, tmp_path):
    # BAIC's own smallest file of this tiny model (its manifest included) is over MCT's
    # 2-bit weights memory, so the search step is driven directly, as _first_round does
    trained = load(trained_cnn)
    dataset = dataset_for(trained.card, where=str(trained_cnn), progress=False)
    two_bits = 2 * _kernel_weights(trained.model) / 8
    records, said = [], []
    search = SimpleNamespace(
        done={}, say=said.append, record=records.append, trained=trained, dataset=dataset,
        budget=int(two_bits * 0.8), run_dir=tmp_path, config=BAICConfig(**FAST),
    )  # fmt: skip
    baic_module._mct(search)
    (record,) = records
    assert record["kind"] == "mct" and record["status"] == "infeasible"
    assert record["bytes"] is None and record["accuracy"] is None
    assert record["min_bytes"] == pytest.approx(two_bits)  # every kernel at 2 bits
    assert "cannot be quantized" in record["error"]  # MCT's own message
    assert "infeasible" in said[-1]


def test_without_mct_the_baseline_is_a_config_error(trained_cnn, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "model_compression_toolkit", None)  # import fails
    config = BAICConfig(budget="6x", baselines=("uniform", "mct"), **FAST)
    with pytest.raises(ConfigError, match=r"pip install satcompress\[mct\]"):
        baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "baic.json").exists()  # before any work
    code = main(["baic", "--checkpoint", str(trained_cnn), "--budget", "6x", "--run-dir",
                 str(tmp_path / "r2"), "--quick", "--baselines", "mct"])  # fmt: skip
    assert code == 2 and "satcompress[mct]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown baseline"):
        BAICConfig(baselines=("mct", "hawq"))
