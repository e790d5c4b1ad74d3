import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from satcompress.cli import main

SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models"
SHARED_CARD = SHARED_MODEL / "resnet18_eurosat64.json"
SHARED_WEIGHTS = SHARED_MODEL / "resnet18_eurosat64.safetensors"


def test_data_info_prints_counts(eurosat_root, capsys):
    assert main(["data", "info", "--dataset", "eurosat", "--data-dir", str(eurosat_root)]) == 0
    out = capsys.readouterr().out
    assert "AnnualCrop" in out and "split_source" in out
    assert (
        main(["data", "info", "--dataset", "eurosat", "--data-dir", str(eurosat_root), "--json"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert sum(info["counts"].values()) == 80


def test_missing_data_gives_an_actionable_error_not_a_traceback(tmp_path, capsys):
    code = main(["data", "info", "--dataset", "eurosat", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    assert "satcompress: error:" in err and "--download" in err
    assert "Traceback" not in err


def test_a_model_onnx_runtime_rejects_is_one_line_not_a_traceback(monkeypatch, capsys):
    import satcompress.pipeline as pipeline
    from satcompress.runtime.onnx import ORT_ERRORS

    def rejected(*_args, **_kwargs):
        raise ORT_ERRORS[0]("[ONNXRuntimeError] : 1 : FAIL : Load model failed\nmore detail")

    monkeypatch.setattr(pipeline, "load", lambda path: object())
    monkeypatch.setattr(pipeline, "evaluate_stage", rejected)
    assert main(["eval", "--checkpoint", "model.satc", "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "satcompress: error: ONNX Runtime cannot load or run the model: "
        "[ONNXRuntimeError] : 1 : FAIL : Load model failed"
    )


def test_train_from_yaml_with_flag_override_then_eval(eurosat_root, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "test_cnn",
                "dataset": "eurosat",
                "data_dir": str(eurosat_root),
                "epochs": 5,
                "batch_size": 16,
                "ema_decay": None,
                "augment": {"shift": 2},
            }
        )
    )
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--run-dir", str(run), "--epochs", "2"]
    assert main([*args, "--augment", "brightness=0.1", "--no-channels-last"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["batch_size"] == 16
    assert saved["augment"]["shift"] == 2 and saved["augment"]["brightness"] == 0.1
    assert saved["channels_last"] is False
    record = json.loads((run / "record.json").read_text())
    assert record["recipe"]["epochs"] == 2 and record["model"] == "test_cnn"
    assert record["size_bytes"] == (run / "model.onnx").stat().st_size

    out_dir = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--run-dir", str(out_dir), "--no-latency"]) == 0
    again = json.loads((out_dir / "record.json").read_text())
    assert again["accuracy"] == record["accuracy"]
    assert "accuracy" in capsys.readouterr().out


def test_eval_refuses_a_model_trained_on_other_classes(
    eurosat_root, ucmerced_root, tmp_path, capsys
):
    run = tmp_path / "run"
    base = ["--dataset", "eurosat", "--data-dir", str(eurosat_root), "--model", "test_cnn"]
    assert main(["train", "--run-dir", str(run), *base, "--epochs", "1", "--no-eval"]) == 0
    code = main(
        [
            "eval",
            "--checkpoint",
            str(run),
            "--dataset",
            "ucmerced",
            "--data-dir",
            str(ucmerced_root),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "AnnualCrop" in err and "agricultural" in err


def test_limit_batches_is_a_quick_trial(eurosat_root, tmp_path):
    run = tmp_path / "quick"
    flags = ["--model", "test_cnn", "--dataset", "eurosat", "--data-dir", str(eurosat_root)]
    assert main(["train", "--run-dir", str(run), *flags, "--limit-batches", "1", "--no-eval"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert len(summary["s_per_epoch"]) == 20


def test_bare_weights_evaluate_with_model_and_a_named_dataset(eurosat_root, tmp_path):
    """No card beside the weights: --model names the architecture, --dataset its classes."""
    from satcompress.models import create_model, save_weights

    weights = save_weights(create_model("test_cnn", 10), tmp_path / "bare" / "w.safetensors")
    assert not (tmp_path / "bare" / "model.json").exists()
    data = ["--dataset", "eurosat", "--data-dir", str(eurosat_root)]
    args = ["eval", "--checkpoint", str(weights), "--model", "test_cnn", *data,
            "--run-dir", str(tmp_path / "e"), "--no-latency"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "e" / "record.json").read_text())
    assert record["model"] == "test_cnn" and len(record["classes"]) == 10


def test_bare_weights_name_their_architecture_in_safetensors_metadata(tmp_path):
    """As the shared model's file does: ``arch`` and ``num_classes`` in its own header."""
    from safetensors.torch import save_file

    from satcompress.checkpoint import load_trained
    from satcompress.models import create_model

    model = create_model("resnet18", 7)
    weights = tmp_path / "w.safetensors"
    meta = {"arch": "torchvision.models.resnet18", "num_classes": "7"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights, metadata=meta)
    loaded = load_trained(weights)
    assert loaded.card["model"] == "resnet18" and loaded.card["num_classes"] == 7
    save_file({"x": torch.zeros(1)}, tmp_path / "bare.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    for name in ("bare.safetensors", "broken.safetensors"):  # the same clear message
        with pytest.raises(ValueError, match="cannot tell the architecture"):
            load_trained(tmp_path / name)


def test_python_module_entry_point(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "satcompress", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout and "eval" in out.stdout


def test_ddp_with_two_cpu_processes(eurosat_root, tmp_path):
    """Real DDP: two gloo processes launched by Lightning from the command line."""
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "satcompress", "train", "--run-dir", str(run),
        "--model", "test_cnn", "--dataset", "eurosat", "--data-dir", str(eurosat_root),
        "--epochs", "1", "--batch-size", "8", "--devices", "2", "--strategy", "ddp",
        "--threads", "1", "--no-eval",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert (run / "model.safetensors").is_file()


def _shared_eval(shared_data, tmp_path, extra):
    if not SHARED_WEIGHTS.is_file():
        pytest.skip("shared model not found")
    card = json.loads(SHARED_CARD.read_text())
    weights = tmp_path / "weights.safetensors"  # no card beside it: normalisation from flags
    shutil.copy(SHARED_WEIGHTS, weights)
    out = tmp_path / "eval"
    args = [
        "eval", "--checkpoint", str(weights), "--model", "resnet18",
        "--dataset", "eurosat", "--data-dir", str(shared_data), "--run-dir", str(out),
        "--mean", *map(str, card["mean"]), "--std", *map(str, card["std"]), *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "record.json").read_text()), card


def test_shared_card_supplies_normalisation(tmp_path):
    """The shared model's own card (prose 'input', mean/std lists) is read as it is."""
    if not SHARED_WEIGHTS.is_file():
        pytest.skip("shared model not found")
    from satcompress.checkpoint import load_trained

    loaded = load_trained(SHARED_WEIGHTS, num_classes=10)
    card = json.loads(SHARED_CARD.read_text())
    assert loaded.card["model"] == "resnet18"
    assert loaded.input_spec.mean == pytest.approx(card["mean"])
    assert loaded.input_spec.std == pytest.approx(card["std"])


@pytest.mark.slow
def test_shared_resnet18_reproduces_its_card(shared_data, tmp_path):
    record, card = _shared_eval(shared_data, tmp_path, [])
    assert record["num_samples"] == 5400
    assert record["accuracy"] == pytest.approx(card["test_accuracy"], abs=1e-4)
    assert record["size_bytes"] == pytest.approx(44_717_048, rel=0.001)


def test_help_of_a_setting_joins_its_docstring_lines_and_escapes_percent():
    from satcompress.config import field_help
    from satcompress.train import TrainConfig

    class Settings:
        """Settings.

        Attributes:
            ratio: Share kept, in %
                of all weights.
            other: Next.
        """

    assert field_help(Settings, "ratio") == "Share kept, in %% of all weights."
    assert field_help(Settings, "missing") == ""
    assert "mixup, cutmix, mix_prob" in field_help(TrainConfig, "augment")


def test_normal_output_shows_no_third_party_warnings(eurosat_root, tmp_path):
    # torch's "No CUDA runtime is found" (on importing Brevitas), Brevitas's, torch's and
    # Lightning's warnings, onnxruntime's advice and Lightning's chatter (printed twice) are
    # hidden by the command line, which `--verbose` shows again
    def cli(*args: str) -> str:
        command = [sys.executable, "-m", "satcompress", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stderr

    data = ["--dataset", "eurosat", "--data-dir", str(eurosat_root)]
    quick = ["--epochs", "1", "--batch-size", "16", "--limit-batches", "1"]
    run = tmp_path / "run"
    train = ["train", "--model", "test_cnn", *data, *quick, "--run-dir", str(run), "--no-eval"]
    assert "GPU available" in cli("--verbose", *train), "the check below would see the noise"
    qat = ["--checkpoint", str(run), "--bits", "4", *quick, "--no-latency"]
    err = cli("quantize", "--method", "qat", *qat, "--run-dir", str(tmp_path / "qat"))
    ptq = ["--checkpoint", str(run), "--no-latency", "--run-dir", str(tmp_path / "ptq")]
    err += cli("quantize", "--method", "ptq", *ptq)
    noise = [line for line in err.splitlines() if "Warning" in line or "CUDA" in line]
    assert not noise, err
    assert "warn(" not in err and "GPU available" not in err and "Tip:" not in err, err
    assert "artifact" in err, "satcompress's own log lines still show"


def test_the_command_line_parser_builds_without_the_heavy_libraries():
    # `satcompress --help` must not wait for torch, ONNX or the libraries built on them.
    code = (
        "import sys, satcompress.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('torch', 'onnx', 'lightning', 'timm', 'brevitas', "
        "'onnxruntime', 'torch_pruning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_stay_functions_when_their_same_named_submodules_are_imported():
    import satcompress as sc
    import satcompress.compress.quantize.qat  # noqa: F401
    import satcompress.train.trainer  # noqa: F401
    from satcompress.compress import quantize

    assert callable(sc.train) and sc.train.__module__ == "satcompress.train.trainer"
    assert callable(sc.evaluate) and sc.evaluate.__module__ == "satcompress.evaluate.evaluate"
    assert quantize.qat.__module__ == "satcompress.compress.quantize.qat"
    assert callable(quantize.qat)
    assert "prepare_qat" in dir(quantize) and "train" in sc.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sc.nope
