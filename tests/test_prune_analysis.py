"""Sensitivity analysis (cached), ViT layer importance, and the prune/analyze commands."""

import importlib
import json

import pytest

from satcompress.cli import main
from satcompress.compress.prune import (
    PruningError,
    SensitivityConfig,
    VitLayersConfig,
    common,
    sensitivity,
    sensitivity_table,
    vit_layer_importance,
)
from satcompress.config import ConfigError
from satcompress.data import load_dataset
from satcompress.models import create_model
from satcompress.preprocess import InputSpec
from satcompress.train import TrainConfig, train
from satcompress.utils.cache import JsonCache

sensitivity_module = importlib.import_module("satcompress.compress.prune.sensitivity")


@pytest.fixture(scope="module")
def dataset(eurosat_root):
    return load_dataset("eurosat", eurosat_root, progress=False)


def _counting(monkeypatch):
    """Count the accuracy evaluations of the sensitivity analysis."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return common.accuracy(*args, **kwargs)

    monkeypatch.setattr(sensitivity_module, "accuracy", counted)
    return calls


def test_sensitivity_is_cached_and_reused(dataset, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    model = create_model("test_resnet", 10)
    config = SensitivityConfig(method="l1", ratios=(0.5,), max_samples=16)
    first = sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec(), progress=False)
    units = first["units"]
    assert not first["cached"] and len(calls) == first["evaluations"] == 1 + len(units)
    assert {u["name"] for u in units} >= {"stem.0", "layer1.conv1", "layer2.conv1"}
    row = units[0]["results"][0]
    assert row["ratio"] == 0.5 and 0 <= row["accuracy"] <= 1
    assert row["params"] < first["baseline"]["params"]
    assert (tmp_path / "sensitivity.json").is_file()

    again = sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec(), progress=False)
    assert again["cached"] and len(calls) == first["evaluations"], "nothing was recomputed"
    assert again["units"] == units and again["key"] == first["key"]

    other = config.replace(ratios=(0.25,))
    third = sensitivity(model, dataset, other, tmp_path, input_spec=InputSpec(), progress=False)
    assert not third["cached"] and third["key"] != first["key"]
    assert JsonCache(tmp_path / "cache").keys() == sorted([first["key"], third["key"]])
    latest = json.loads((tmp_path / "sensitivity.json").read_text())
    assert latest["key"] == third["key"] and latest["units"] == third["units"]
    assert "stem.0" in sensitivity_table(first)
    fourth = sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec(), progress=False)
    assert fourth["cached"] and fourth["units"] == units, "both keys stay cached"
    assert len(calls) == first["evaluations"] + third["evaluations"]


def test_magnitude_sensitivity_covers_every_layer_and_the_weights_change_the_key(dataset, tmp_path):
    model = create_model("test_cnn", 10)
    config = SensitivityConfig(method="magnitude", ratios=(0.5, 0.9), max_samples=8)
    first = sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec(), progress=False)
    assert [u["name"] for u in first["units"]] == ["0", "3", "6", "11"]
    assert [r["ratio"] for r in first["units"][0]["results"]] == [0.5, 0.9]
    other = create_model("test_cnn", 10)  # other random weights: another key
    second = sensitivity(other, dataset, config, tmp_path, input_spec=InputSpec(), progress=False)
    assert not second["cached"]


def test_sensitivity_names_unknown_units(dataset):
    config = SensitivityConfig(ratios=(0.5,), layers=["layer1.conv"], max_samples=8)
    with pytest.raises(PruningError, match="Did you mean: .*layer1.conv1"):
        sensitivity(create_model("test_resnet", 10), dataset, config, input_spec=InputSpec())
    with pytest.raises(ConfigError, match=r"ratios must be in \(0, 1\)"):
        SensitivityConfig(ratios=(0.0,))


def test_vit_layer_importance_writes_table_and_plot(dataset, tmp_path):
    model = create_model("test_vit", 10)
    config = VitLayersConfig(head_ratio=0.5, max_samples=16)
    result = vit_layer_importance(
        model, dataset, config, tmp_path, input_spec=InputSpec(size=32), progress=False
    )
    assert [r["block"] for r in result["blocks"]] == [0, 1]
    assert all(r["heads"] == 2 and r["heads_left"] == 1 for r in result["blocks"])
    assert all(0 <= r["removed_accuracy"] <= 1 for r in result["blocks"])
    for name in ("vit_layers.json", "vit_layers.txt", "vit_layers.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "vit_layers.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(PruningError, match="no sequence of transformer blocks"):
        vit_layer_importance(create_model("test_cnn", 10), dataset, input_spec=InputSpec())


@pytest.fixture(scope="module")
def trained_runs(eurosat_root, dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base = dict(
        dataset="eurosat",
        data_dir=str(eurosat_root),
        epochs=1,
        batch_size=16,
        ema_decay=None,
        channels_last=False,
        limit_batches=1,
    )
    train(TrainConfig(model="test_cnn", **base), root / "cnn", dataset=dataset, progress=False)
    vit = TrainConfig(model="test_vit", normalize="imagenet", **base)
    train(vit, root / "vit", dataset=dataset, progress=False)
    return root


def test_prune_command_prunes_fine_tunes_and_evaluates(trained_runs, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--checkpoint", str(trained_runs / "cnn"), "--method", "l1"]
    args += ["--ratio", "0.5", "--steps", "2", "--finetune-epochs", "1", "--teacher", "self"]
    args += ["--limit-batches", "1", "--run-dir", str(out), "--no-latency"]
    assert main(args) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["pruning"]["macs_ratio"] > 2 and record["recipe"]["distill"]
    assert record["recipe"]["finetune"]["limit_batches"] == 1
    assert "pruned (l1, ratio 0.5)" in capsys.readouterr().out
    again = ["prune", "--checkpoint", str(out), "--method", "magnitude", "--ratio", "0.5"]
    assert main([*again, "--run-dir", str(tmp_path / "sparse"), "--no-eval"]) == 0
    assert (tmp_path / "sparse" / "pruning.json").is_file()


def test_prune_command_errors_name_the_cause(trained_runs, tmp_path, capsys):
    base = ["prune", "--checkpoint", str(trained_runs / "cnn"), "--run-dir", str(tmp_path / "x")]
    assert main([*base, "--ratio", "1.0"]) == 2
    assert "ratio must be a fraction in [0, 1)" in capsys.readouterr().err
    assert main([*base, "--ignore", "conv9", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "unknown ignored layer 'conv9'" in err and "Traceback" not in err


def test_analyze_commands(trained_runs, tmp_path, capsys):
    args = ["analyze", "sensitivity", "--checkpoint", str(trained_runs / "cnn")]
    args += ["--ratios", "0.5", "--max-samples", "8", "--run-dir", str(tmp_path / "s")]
    assert main(args) == 0
    assert "saved in" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused from" in capsys.readouterr().out
    vit = ["analyze", "vit-layers", "--checkpoint", str(trained_runs / "vit")]
    assert main([*vit, "--max-samples", "8", "--run-dir", str(tmp_path / "v")]) == 0
    assert "baseline accuracy" in capsys.readouterr().out
    assert (tmp_path / "v" / "vit_layers.png").is_file()
