"""Stages compose in any order: data named once, the card's lineage growing, the artifact
scoring what the PyTorch model scores."""

import json

import pytest

from satcompress.card import lineage_stages
from satcompress.cli import main
from satcompress.compress.prune import PruneConfig
from satcompress.compress.quantize import PTQConfig, QATConfig
from satcompress.config import ConfigError, config_from_dict
from satcompress.pipeline import EvalConfig, ExportConfig, load, run
from satcompress.train import TrainConfig

# test_cnn's layers are numbered modules: a plan of mixed bits for its convolutions
MIXED_BITS = {"0": 8, "3": 4, "6": 2, "11": 8}


def _train_config(eurosat_root):
    return TrainConfig(
        model="test_cnn", dataset="eurosat", data_dir=str(eurosat_root), epochs=1,
        batch_size=16, lr=0.05, ema_decay=None,
    )  # fmt: skip


def test_python_chain_train_prune_qat_export_eval(eurosat_root, tmp_path):
    trained = run(_train_config(eurosat_root), None, None, tmp_path / "t", latency=None)
    pruned = run(PruneConfig(method="l1", ratio=0.5), trained, None, tmp_path / "p", latency=None)
    assert lineage_stages(pruned.card) == ["train", "prune"]
    assert pruned.card["data"]["data_dir"] == trained.card["data"]["data_dir"]
    qat = run(
        QATConfig(bits=4, epochs=1, calibration_images=16, bits_map=MIXED_BITS),
        tmp_path / "p", None, tmp_path / "q", latency=None,
    )  # fmt: skip
    assert qat.details.layer_bits["6"] == 2 and qat.details.layer_bits["3"] == 4
    exported = run(ExportConfig(), tmp_path / "q", None, tmp_path / "e")
    artifact = exported.files["artifact"]
    card = load(artifact).card
    assert lineage_stages(card) == ["train", "prune", "quantize", "export"]
    hashes = [entry["input_card_hash"] for entry in card["lineage"]]
    assert hashes[0] is None and all(hashes[1:]) and len(set(hashes)) == 4
    assert config_from_dict(card["lineage"][2]["config"]) == qat.details.config
    scored = run(EvalConfig(latency=False), artifact, None, tmp_path / "s")
    assert scored.record["size_bytes"] == artifact.stat().st_size
    assert abs(scored.record["accuracy"] - qat.record["pytorch_accuracy"]) <= 0.001
    assert [e["stage"] for e in scored.record["lineage"]] == lineage_stages(card)


def test_python_chain_unstructured_prune_then_ptq(eurosat_root, tmp_path):
    trained = run(_train_config(eurosat_root), None, None, tmp_path / "t", latency=None)
    sparse = run(PruneConfig(method="magnitude", ratio=0.7), trained.run_dir, None,
                 tmp_path / "sp", latency=None)  # fmt: skip
    ptq = run(PTQConfig(calibration_images=16), sparse, None, tmp_path / "q", latency=None)
    assert lineage_stages(ptq.card) == ["train", "prune", "quantize"]
    assert ptq.record["format"] == "artifact-int8"
    # size_bytes is always the deployable file the stage leaves; format says which
    assert trained.record["format"] == "onnx-fp32"
    assert trained.size_bytes == (tmp_path / "t" / "model.onnx").stat().st_size
    assert sparse.record["format"] == "artifact-fp32"
    for result in (sparse, ptq):
        assert result.size_bytes == result.files["artifact"].stat().st_size
    assert sparse.size_bytes < sparse.record["onnx_bytes"], "zeros cost mask bits"
    assert load(tmp_path / "q").kind == "artifact"
    with pytest.raises(ConfigError, match="already quantized"):
        run(PruneConfig(), tmp_path / "q", None, tmp_path / "again")


def test_build_artifact_writes_what_the_encoder_builds_and_predict_bytes_predicts(
    tmp_path, monkeypatch
):
    import satcompress.pipeline.stages as stages
    from satcompress.artifact.encode import export_for_artifact, predict_bytes
    from satcompress.artifact.format import load_artifact
    from satcompress.artifact.manifest import artifact_info
    from satcompress.compress.plan import CompressionPlan
    from satcompress.models import create_model
    from satcompress.preprocess import InputSpec

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return encode(*args, **kwargs)

    encode = stages.encode
    monkeypatch.setattr(stages, "encode", spy)
    model, spec, card = create_model("test_cnn", 10).eval(), InputSpec(size=32), {"model": "m"}
    graph, _, _ = export_for_artifact(model, spec, (32, 32))
    sizes = {}
    for compress in (False, True):
        path = tmp_path / f"{compress}.satc"
        kwargs = {"compress": compress} if not compress else {}  # the stages' default: LZMA
        manifest = stages.build_artifact(graph, card, path, params=1, macs=2, **kwargs)
        assert calls[-1]["compress"] is compress and calls[-1]["info"]["card"] == card
        assert manifest["size_bytes"] == path.stat().st_size == load_artifact(path).size_bytes
        sizes[compress] = manifest["size_bytes"]
    info = artifact_info(card, params=1, macs=2)
    assert predict_bytes(model, CompressionPlan(), spec, (32, 32), info=info) == sizes[False]
    assert sizes[True] <= sizes[False]


def test_cli_chain_names_the_data_only_once(eurosat_root, tmp_path, capsys):
    data = ["--dataset", "eurosat", "--data-dir", str(eurosat_root)]
    quick = ["--epochs", "1", "--batch-size", "16"]
    assert (
        main(["train", "--model", "test_cnn", *data, *quick, "--run-dir", str(tmp_path / "t")]) == 0
    )
    assert main(["prune", "--checkpoint", str(tmp_path / "t"), "--method", "l1", "--ratio", "0.5",
                 "--run-dir", str(tmp_path / "p"), "--no-latency"]) == 0  # fmt: skip
    bits = tmp_path / "bits.yaml"
    bits.write_text("".join(f"'{k}': {v}\n" for k, v in MIXED_BITS.items()))
    assert main(["quantize", "--method", "qat", "--bits", "4", "--bits-map", str(bits),
                 "--epochs", "1", "--calibration-images", "16", "--checkpoint",
                 str(tmp_path / "p"), "--run-dir", str(tmp_path / "q"),
                 "--no-latency"]) == 0  # fmt: skip
    qat_record = json.loads((tmp_path / "q" / "record.json").read_text())
    assert main(["export", "--checkpoint", str(tmp_path / "q"), "--output",
                 str(tmp_path / "m.satc")]) == 0  # fmt: skip
    assert main(["eval", "--artifact", str(tmp_path / "m.satc"), "--no-latency", "--run-dir",
                 str(tmp_path / "s")]) == 0  # fmt: skip
    record = json.loads((tmp_path / "s" / "record.json").read_text())
    assert [e["stage"] for e in record["lineage"]] == ["train", "prune", "quantize", "export"]
    assert abs(record["accuracy"] - qat_record["pytorch_accuracy"]) <= 0.001
    assert main(["prune", "--checkpoint", str(tmp_path / "t"), "--method", "magnitude",
                 "--ratio", "0.7", "--run-dir", str(tmp_path / "sp"),
                 "--no-latency"]) == 0  # fmt: skip
    assert main(["quantize", "--method", "ptq", "--calibration-images", "16", "--checkpoint",
                 str(tmp_path / "sp"), "--run-dir", str(tmp_path / "sq"),
                 "--no-latency"]) == 0  # fmt: skip
    assert "lineage: train -> prune -> quantize" in _inspect(tmp_path / "sq" / "model.satc", capsys)


def _inspect(path, capsys):
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    return capsys.readouterr().out
