"""Unstructured magnitude pruning: exact zeros, per-layer sparsity, one-shot and gradual."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from satcompress.artifact import artifact_format, load_artifact
from satcompress.checkpoint import load_trained
from satcompress.compress.prune import (
    GradualPruning,
    PruneConfig,
    PruningError,
    apply_magnitude,
    cubic_schedule,
    make_permanent,
    prunable_layers,
    sparsity_report,
)
from satcompress.config import ConfigError
from satcompress.models import create_model
from satcompress.pipeline import prune
from satcompress.preprocess import InputSpec
from satcompress.train import TrainConfig

CARD = {"model": "test_cnn", "model_kwargs": {}}


def _train_config(data_dir, **overrides):
    values = dict(
        model="test_cnn",
        dataset="eurosat",
        data_dir=str(data_dir),
        batch_size=16,
        ema_decay=None,
        channels_last=False,
        limit_batches=2,
    )
    return TrainConfig(**{**values, **overrides})


def test_layerwise_magnitude_pruning_gives_exact_zeros_per_layer():
    model = create_model("test_cnn", 10)
    layers = prunable_layers(model)
    apply_magnitude(layers, 0.75)
    make_permanent(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    report = sparsity_report(layers)
    for name, row in report["layers"].items():
        assert row["sparsity"] == pytest.approx(0.75, abs=0.01), name
    weight = dict(model.named_modules())["3"].weight
    assert (weight == 0).sum() == round(0.75 * weight.numel())


def test_global_magnitude_pruning_hits_the_total_not_each_layer():
    model = create_model("test_cnn", 10)
    layers = prunable_layers(model, ignored=["11"])
    assert "11" not in layers
    apply_magnitude(layers, 0.6, global_pruning=True)
    report = sparsity_report(layers)
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert len({round(r["sparsity"], 2) for r in report["layers"].values()}) > 1
    apply_magnitude(layers, 0.8, global_pruning=True)  # raising it keeps the old zeros
    assert sparsity_report(layers)["sparsity"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("global_pruning", [False, True])
def test_magnitude_pruning_works_on_channels_last_weights(global_pruning):
    model = create_model("test_cnn", 10).to(memory_format=torch.channels_last)
    layers = prunable_layers(model)
    apply_magnitude(layers, 0.5, global_pruning=global_pruning)
    make_permanent(model)
    assert sparsity_report(layers)["sparsity"] == pytest.approx(0.5, abs=1e-3)
    model(torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last))


def test_cubic_schedule_ends_at_the_target():
    assert cubic_schedule(0.9, 1) == [0.9]
    schedule = cubic_schedule(0.9, 3)
    assert schedule[-1] == 0.9 and schedule == sorted(schedule) and schedule[0] > 0.3


def test_one_shot_prune_writes_a_normal_run_with_sparsity_in_the_record(
    eurosat_root, dataset, tmp_path
):
    result = prune(
        create_model("test_cnn", 10),
        dataset,
        PruneConfig(method="magnitude", ratio=0.9, finetune_epochs=1),
        tmp_path / "sparse",
        input_spec=InputSpec(),
        card=CARD,
        train_config=_train_config(eurosat_root, ema_decay=0.9),
        latency=None,
        progress=False,
    )
    record = json.loads((tmp_path / "sparse" / "record.json").read_text())
    pruning = record["pruning"]
    assert pruning["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert pruning["layers"]["0"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert pruning["nonzero_params"] < 0.2 * record["params"]
    assert record["recipe"]["prune"]["method"] == "magnitude"
    assert record["recipe"]["finetune"]["ema_decay"] is None
    weights = load_file(tmp_path / "sparse" / "model.safetensors")
    assert float((weights["3.weight"] == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    loaded = load_trained(tmp_path / "sparse")  # same architecture: the usual loader works
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.model(x), result.model(x))
    # the deployable file is the artifact: zeros as mask bits, so far below the fp32 ONNX
    artifact = load_artifact(tmp_path / "sparse" / "model.satc")
    assert (
        record["size_bytes"]
        == artifact.size_bytes
        == (tmp_path / "sparse" / "model.satc").stat().st_size
    )
    assert record["size_bytes"] < 0.5 * record["onnx_bytes"]
    assert record["format"] == artifact_format(artifact.manifest)
    onnx_weights = {
        t.name: t for t in onnx.load(str(tmp_path / "sparse" / "model.onnx")).graph.initializer
    }
    for tensor in artifact.onnx_model().graph.initializer:  # bit-exact: what was scored ships
        np.testing.assert_array_equal(
            numpy_helper.to_array(tensor), numpy_helper.to_array(onnx_weights[tensor.name])
        )


class _Spy(GradualPruning):
    """Records the sparsity of the weights at each validation."""

    seen: list

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seen.append(sparsity_report(self.layers)["sparsity"])


def test_gradual_pruning_raises_sparsity_per_epoch_and_keeps_the_final_one(
    eurosat_root, dataset, tmp_path, monkeypatch
):
    seen = []
    monkeypatch.setattr(_Spy, "seen", seen, raising=False)
    monkeypatch.setattr("satcompress.compress.prune.api.GradualPruning", _Spy)
    result = prune(
        create_model("test_cnn", 10),
        dataset,
        PruneConfig(method="magnitude", ratio=0.8, steps=2, finetune_epochs=3, global_pruning=True),
        tmp_path / "gradual",
        input_spec=InputSpec(),
        card=CARD,
        train_config=_train_config(eurosat_root, ema_decay=0.9),
        evaluate_model=False,
        progress=False,
    )
    assert seen == pytest.approx([0.7, 0.8, 0.8], abs=1e-3)
    # the best checkpoint is chosen among epochs at the final sparsity only
    assert result.details.summary["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert result.details.summary["steps"][0]["schedule"] == [0.7, 0.8]
    assert result.card["recipe"]["finetune"]["ema_decay"] is None


def test_gradual_needs_an_epoch_per_step_and_names_unknown_layers():
    with pytest.raises(ConfigError, match="finetune_epochs >= 3"):
        PruneConfig(method="magnitude", steps=3, finetune_epochs=2)
    with pytest.raises(PruningError, match="unknown ignored layer '12'.*Did you mean"):
        prunable_layers(create_model("test_cnn", 10), ignored=["12"])
