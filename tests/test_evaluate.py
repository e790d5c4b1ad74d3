import json

import numpy as np
import pytest
import torch
from torch import nn

from satcompress.config import ConfigError
from satcompress.data import load_dataset
from satcompress.evaluate import (
    REQUIRED_KEYS,
    LatencyConfig,
    classification_metrics,
    count_macs,
    count_params,
    evaluate,
    predict_onnx,
)
from satcompress.models import create_model
from satcompress.models.deployable import export_onnx
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.runtime.onnx import make_session, read_metadata, run_session


def test_metrics_match_hand_computation():
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 0])
    m = classification_metrics(preds, labels, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": pytest.approx(2 / 3, abs=1e-6), "c": 0.0}
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    assert m["num_samples"] == 6


def test_metrics_class_without_samples_is_none():
    m = classification_metrics(np.array([0]), np.array([0]), ["a", "b"])
    assert m["per_class_accuracy"]["b"] is None


def test_macs_of_a_single_convolution():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (16, 16)) == 8 * 3 * 9 * 16 * 16
    assert count_params(conv) == 8 * 3 * 9


def test_onnx_matches_torch_and_carries_metadata(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_cnn", 4).eval()
    spec = InputSpec(size=24, mean=(0.3, 0.4, 0.5), std=(0.2, 0.2, 0.2))
    path = export_onnx(
        model, spec, (32, 32), tmp_path / "m.onnx", metadata={"classes": list("abcd")}
    )
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(Preprocess(spec)(images)).numpy()
    got = run_session(make_session(path, threads=1), images.numpy())
    assert np.allclose(got, expected, atol=1e-4)
    meta = read_metadata(path)
    assert meta["classes"] == list("abcd")
    assert meta["input_spec"]["size"] == [24, 24]


def test_read_metadata_keeps_other_tools_plain_text_entries(tmp_path):
    import onnx

    model = create_model("test_cnn", 4).eval()
    path = export_onnx(model, InputSpec(), (32, 32), tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    prop = proto.metadata_props.add()
    prop.key, prop.value = "onnx.quant.pre_process", "onnxruntime.quant"  # not JSON
    onnx.save(proto, str(path))
    meta = read_metadata(path)
    assert meta["onnx.quant.pre_process"] == "onnxruntime.quant"
    assert meta["input_spec"]["size"] is None


@pytest.fixture(scope="module")
def tiny_dataset(eurosat_root):
    return load_dataset("eurosat", eurosat_root, progress=False)


def test_evaluate_record_agrees_with_torch(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = create_model("test_cnn", len(tiny_dataset.classes)).eval()
    spec = InputSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    record = evaluate(
        model,
        tiny_dataset,
        spec,
        model_name="test_cnn",
        recipe={"stage": "unit"},
        run_dir=tmp_path,
        latency=LatencyConfig(runs=5, warmup=1, batch_sizes=(1, 64)),
        progress=False,
    )
    for key in REQUIRED_KEYS:
        assert key in record
    test = tiny_dataset.splits["test"]
    with torch.no_grad():
        torch_preds = model(Preprocess(spec)(test.images)).argmax(1)
    assert record["accuracy"] == pytest.approx((torch_preds == test.labels).float().mean().item())
    assert record["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert set(record["latency_ms"]) == {"bs1", "bs64"}
    assert all(v > 0 for v in record["latency_ms"].values())
    assert record["params"] == count_params(model)
    assert record["macs"] > 0
    assert sum(map(sum, record["confusion_matrix"])) == len(test.labels)
    saved = json.loads((tmp_path / "record.json").read_text())
    assert saved["accuracy"] == record["accuracy"]
    assert saved["split_fingerprint"] == tiny_dataset.split_fingerprint


def test_predict_refuses_other_classes(tiny_dataset, tmp_path):
    model = create_model("test_cnn", len(tiny_dataset.classes))
    path = export_onnx(
        model, InputSpec(), (64, 64), tmp_path / "m.onnx", metadata={"classes": ["x"] * 10}
    )
    with pytest.raises(ValueError, match="classes"):
        predict_onnx(path, tiny_dataset, progress=False)


def test_side_by_side_latency_interleaves_rounds_and_keeps_their_medians(tmp_path):
    from satcompress.evaluate import measure_latency_side_by_side

    small = export_onnx(
        create_model("test_cnn", 4).eval(), InputSpec(), (16, 16), tmp_path / "a.onnx"
    )
    big = export_onnx(
        create_model("test_resnet", 4).eval(), InputSpec(), (16, 16), tmp_path / "b.onnx"
    )
    config = LatencyConfig(runs=5, warmup=1, batch_sizes=(1, 8), threads=1)
    timings = measure_latency_side_by_side({"a": small, "b": big}, (16, 16), config, rounds=3)
    assert set(timings) == {"a", "b"}
    for timing in timings.values():
        assert timing["rounds"] == 3 and timing["threads"] == 1
        for key in ("bs1", "bs8"):
            medians = timing[key]["round_medians_ms"]
            assert len(medians) == 3 and all(m > 0 for m in medians)
            assert timing[key]["median_ms"] == pytest.approx(sorted(medians)[1], abs=1e-3)
    with pytest.raises(ConfigError, match="rounds"):
        measure_latency_side_by_side({"a": small}, (16, 16), config, rounds=0)
