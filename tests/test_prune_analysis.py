"""Sensitivity analysis (cached), ViT layer importance, and the prune/analyze commands."""

import importlib
import json

import pytest

from satcompress.cli import main
from satcompress.compress.prune import PruningError, VitLayersConfig, vit_layer_importance
from satcompress.config import ConfigError
from satcompress.models import create_model
from satcompress.pipeline.sensitivity import (
    LayerSensitivityConfig,
    SensitivityError,
    SensitivityTable,
    layer_sensitivity,
    run_sensitivity,
)
from satcompress.preprocess import InputSpec
from satcompress.train import TrainConfig, train
from satcompress.utils.cache import JsonCache

sensitivity_module = importlib.import_module("satcompress.pipeline.sensitivity")


def _counting(monkeypatch):
    """Count the model evaluations of the sensitivity analysis (one per option and unit)."""
    calls = []
    log_probs = sensitivity_module._log_probs

    def counted(*args, **kwargs):
        calls.append(1)
        return log_probs(*args, **kwargs)

    monkeypatch.setattr(sensitivity_module, "_log_probs", counted)
    return calls


def _evaluations(table):
    """The reference model, then every cell that was measured."""
    return 1 + sum(len(unit["results"]) for unit in table.units)


def test_sensitivity_is_cached_and_reused(dataset, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    model = create_model("test_resnet", 10)
    config = LayerSensitivityConfig(bits=(), channel_ratios=(0.5,), sparsities=(), num_images=16)
    first = run_sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec())
    units = first.units
    assert not first.cached and len(calls) == _evaluations(first)
    groups = [u["name"] for u in units if "c0.5" in u["results"]]
    assert set(groups) >= {"stem.0", "layer1.conv1", "layer2.conv1"}
    cell = first.cell("stem.0", "c0.5")
    assert 0 <= cell["accuracy"] <= 1 and cell["kl"] >= 0
    assert cell["bytes"] < first.cell("stem.0", "float")["bytes"], "pruning shrinks the unit"
    assert cell["file_bytes"] < first.baseline["bytes"]
    assert (tmp_path / "sensitivity.json").is_file()

    again = run_sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec())
    assert again.cached and len(calls) == _evaluations(first), "nothing was recomputed"
    assert again.units == units and again.key == first.key

    other = config.replace(channel_ratios=(0.25,))
    third = run_sensitivity(model, dataset, other, tmp_path, input_spec=InputSpec())
    assert not third.cached and third.key != first.key
    assert JsonCache(tmp_path / "cache").keys() == sorted([first.key, third.key])
    latest = SensitivityTable.load(tmp_path / "sensitivity.json")
    assert latest.key == third.key and latest.units == third.units
    assert "| stem.0 |" in first.markdown()
    fourth = run_sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec())
    assert fourth.cached and fourth.units == units, "both keys stay cached"
    assert len(calls) == _evaluations(first) + _evaluations(third)


def test_sparsity_sensitivity_covers_every_layer_and_the_weights_change_the_key(dataset, tmp_path):
    model = create_model("test_cnn", 10)
    config = LayerSensitivityConfig(
        bits=(), channel_ratios=(), sparsities=(0.5, 0.9), num_images=8, predict_bytes=False
    )
    first = run_sensitivity(model, dataset, config, tmp_path, input_spec=InputSpec())
    assert first.unit_names() == ["0", "3", "6", "11"]
    assert all(set(u["results"]) == {"float", "s0.5", "s0.9"} for u in first.units)
    other = create_model("test_cnn", 10)  # other random weights: another key
    second = run_sensitivity(other, dataset, config, tmp_path, input_spec=InputSpec())
    assert not second.cached and second.key != first.key


def test_sensitivity_names_unknown_units(dataset):
    config = LayerSensitivityConfig(bits=(), sparsities=(), units=["layer1.conv"], num_images=8)
    with pytest.raises(SensitivityError, match="Did you mean: .*layer1.conv1"):
        layer_sensitivity(create_model("test_resnet", 10), dataset, InputSpec(), config)
    with pytest.raises(ConfigError, match=r"channel_ratios must be in \(0, 1\)"):
        LayerSensitivityConfig(channel_ratios=(0.0,))


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
    out = tmp_path / "s"
    args = ["analyze", "sensitivity", "--checkpoint", str(trained_runs / "cnn"), "--bits", "8"]
    args += ["--ratios", "0.5", "--sparsities", "0.9", "--max-samples", "8", "--run-dir", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "saved in" in text and "reused from" not in text
    assert "| unit (loss_increase) |" in text and "| unit (bytes) |" in text
    table = SensitivityTable.load(out / "sensitivity.json")
    assert table.options == ["float", "w8", "c0.5", "s0.9"] and len(table.data["indices"]) == 8
    assert all(f"| {name} |" in text for name in table.unit_names())
    assert main([*args, "--metric", "kl"]) == 0
    text = capsys.readouterr().out
    assert "reused from" in text and "| unit (kl) |" in text
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == table.key
    assert main([*args, "--metric", "speed"]) == 2
    assert "--metric must be one of" in capsys.readouterr().err
    vit = ["analyze", "vit-layers", "--checkpoint", str(trained_runs / "vit")]
    assert main([*vit, "--max-samples", "8", "--run-dir", str(tmp_path / "v")]) == 0
    assert "baseline accuracy" in capsys.readouterr().out
    assert (tmp_path / "v" / "vit_layers.png").is_file()
