import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torchvision.models.resnet import BasicBlock, Bottleneck

from satcompress.artifact.format import load_artifact
from satcompress.compress.quantize import (
    PTQConfig,
    QATConfig,
    calibrate,
    export_qat_onnx,
    load_bits_map,
    prepare_qat,
    quantize_onnx,
    resolve_layer_bits,
    split_reused_activations,
)
from satcompress.compress.quantize.qat import output_quantizers, quant_layers
from satcompress.config import ConfigError
from satcompress.evaluate.artifact import pytorch_accuracy
from satcompress.models import create_model
from satcompress.models.deployable import export_onnx
from satcompress.pipeline import quantize
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.runtime.onnx import make_session, run_session
from satcompress.train import TrainConfig, train
from satcompress.train.task import SupervisedLoss

SPEC = InputSpec(mean=(0.4, 0.5, 0.3), std=(0.2, 0.2, 0.25))


@pytest.fixture(scope="module")
def cnn_run(eurosat_root, dataset, tmp_path_factory):
    """test_cnn trained for two epochs on the fixture EuroSAT (run directory with its card)."""
    run = tmp_path_factory.mktemp("cnn") / "run"
    config = TrainConfig(
        model="test_cnn",
        dataset="eurosat",
        data_dir=str(eurosat_root),
        epochs=2,
        batch_size=16,
        lr=0.05,
        ema_decay=None,
    )
    train(config, run, dataset=dataset, progress=False)
    return run


def _images(n=32, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _randomize_bn(model):
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) * 3 - 1.5)
    return model


def _qat_model(name, bits, images, model_kwargs=None, **config):
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if name == "test_vit" else {}
    model = _randomize_bn(create_model(name, 10, **kwargs, **(model_kwargs or {})).eval())
    x = Preprocess(SPEC)(torch.from_numpy(images))
    qat_model, layer_bits = prepare_qat(model, QATConfig(bits=bits, **config), x[:2])
    calibrate(qat_model, [x])
    return qat_model.eval(), layer_bits, x


# --- PTQ ---------------------------------------------------------------------------------


def _has_int8_qdq(model):
    ops = {n.op_type for n in model.graph.node}
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    return {"QuantizeLinear", "DequantizeLinear"} <= ops and any(len(t.dims) == 4 for t in int8)


@pytest.mark.parametrize(
    "config",
    [
        PTQConfig(calibration_images=32),
        PTQConfig(calibration="entropy"),
        PTQConfig(calibration="percentile", per_channel=False),
        PTQConfig(equalize=True, bias_correction=True),
    ],
    ids=["minmax", "entropy", "percentile-per-tensor", "equalize-biascorr"],
)
def test_ptq_static_writes_a_qdq_graph_close_to_fp32(tmp_path, config):
    torch.manual_seed(0)
    model = _randomize_bn(create_model("test_resnet", 10).eval())
    fp32 = export_onnx(model, SPEC, (32, 32), tmp_path / "fp32.onnx", {"model": "test_resnet"})
    images = _images(64)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", images, config)
    proto = onnx.load(str(int8))
    assert _has_int8_qdq(proto)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["model"]) == "test_resnet"
    reference = run_session(make_session(fp32, 1), images)
    quantized = run_session(make_session(int8, 1), images)
    error = np.abs(quantized - reference).mean() / np.abs(reference).mean()
    assert error < 0.05
    assert (quantized.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_ptq_keeps_preprocessing_in_float_by_default(tmp_path):
    model = create_model("test_cnn", 10).eval()
    fp32 = export_onnx(model, SPEC, (32, 32), tmp_path / "fp32.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", _images(16), PTQConfig())
    names = [t.name for t in onnx.load(str(int8)).graph.initializer]
    assert "preprocess.inv_std" in names and not any(
        n.startswith("preprocess.inv_std_") for n in names
    )


def test_ptq_auto_uses_dynamic_int8_for_vit_linear_layers(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_vit", 10, img_size=32).eval()
    fp32 = export_onnx(model, SPEC, (32, 32), tmp_path / "fp32.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", None, PTQConfig())
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    images = _images(16)
    reference = run_session(make_session(fp32, 1), images)
    quantized = run_session(make_session(int8, 1), images)
    assert np.abs(quantized - reference).mean() / np.abs(reference).mean() < 0.05


def _int8_weight_extremes(path):
    """The largest |value| of each int8 initializer of more than 64 values (the weights)."""
    from onnx import numpy_helper

    return [
        int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 64
    ]


@pytest.mark.parametrize(
    "mode, reduce_range, limit",
    [("dynamic", True, 64), ("dynamic", False, 127), ("static", True, 64), ("static", False, 127)],
)
def test_ptq_reduce_range_keeps_weights_where_int8_kernels_cannot_saturate(
    tmp_path, mode, reduce_range, limit
):
    torch.manual_seed(0)
    name, kwargs = ("test_vit", {"img_size": 32}) if mode == "dynamic" else ("test_cnn", {})
    model = create_model(name, 10, **kwargs).eval()
    fp32 = export_onnx(model, SPEC, (32, 32), tmp_path / "fp32.onnx")
    config = PTQConfig(mode=mode, reduce_range=reduce_range)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", _images(16), config)
    extremes = _int8_weight_extremes(int8)
    assert extremes and max(extremes) <= limit
    assert max(extremes) > limit // 2  # the range is used, not merely bounded
    session = make_session(int8, 1, int8_kernels="exact")
    assert (session.satcompress_uint8_weights > 0) is (not reduce_range)


def test_ptq_config_rejects_a_non_boolean_reduce_range():
    with pytest.raises(ConfigError, match="reduce_range"):
        PTQConfig(reduce_range="yes")


def test_ptq_end_to_end_from_a_run_directory(cnn_run, dataset, tmp_path):
    result = quantize(
        cnn_run, dataset, PTQConfig(calibration_images=32), tmp_path / "ptq", latency=None,
        progress=False,
    )  # fmt: skip
    record = result.record
    assert record["status"] == "ok" and _has_int8_qdq(onnx.load(str(result.files["onnx"])))
    assert record["format"] == "artifact-int8"
    assert record["size_bytes"] == result.files["artifact"].stat().st_size
    assert record["bound_bytes"] == load_artifact(result.files["artifact"]).bound_bytes
    assert [e["stage"] for e in result.card["lineage"]] == ["train", "quantize"]
    fp32 = run_session(make_session(tmp_path / "ptq" / "model_fp32.onnx", 1), _fixture(dataset))
    int8 = run_session(make_session(result.files["onnx"], 1), _fixture(dataset))
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9


def _fixture(dataset, split="test"):
    return np.ascontiguousarray(dataset.splits[split].images.numpy())


# --- QAT: configuration -----------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 9, 16, "4", 2.0])
def test_unsupported_bit_widths_are_refused(bits):
    # a string or a float is refused by the type check, before the range check
    with pytest.raises(ConfigError, match="unsupported bit-width|bits: expected an integer"):
        QATConfig(bits=bits)


def test_bad_bits_map_values_and_activation_bits_are_refused():
    with pytest.raises(ConfigError, match="unsupported bit-width"):
        QATConfig(bits_map={"0": 12})
    with pytest.raises(ConfigError, match="activation_bits"):
        QATConfig(activation_bits=1)
    with pytest.raises(ConfigError, match="first_last"):
        QATConfig(first_last="fp16")


def test_bits_map_naming_missing_layers_is_refused_with_suggestions():
    model = create_model("test_resnet", 10)
    probe = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"'layer1.conv3' \(did you mean layer1.conv"):
        resolve_layer_bits(model, QATConfig(bits_map={"layer1.conv3": 2}), probe)
    with pytest.raises(ConfigError, match="Quantizable layers"):
        resolve_layer_bits(model, QATConfig(bits_map={"stem.1": 4}), probe)  # a BatchNorm


def test_layer_bits_follow_bits_first_last_policy_and_bits_map(tmp_path):
    model = create_model("test_resnet", 10)
    probe = torch.zeros(2, 3, 32, 32)
    bits = resolve_layer_bits(model, QATConfig(bits=2), probe)
    assert bits["stem.0"] == 8 and bits["fc"] == 8 and bits["layer1.conv1"] == 2
    bits = resolve_layer_bits(model, QATConfig(bits=2, first_last="float"), probe)
    assert bits["stem.0"] is None and bits["fc"] is None
    path = tmp_path / "bits.yaml"
    path.write_text("layer1.conv1: 4\nfc: 32\n")
    bits = resolve_layer_bits(model, QATConfig(bits=3, bits_map=load_bits_map(path)), probe)
    assert bits["layer1.conv1"] == 4 and bits["fc"] is None and bits["layer2.conv2"] == 3


def test_depthwise_bits_apply_to_depthwise_convolutions_only():
    model = create_model("test_mobilenet", 10)
    probe = torch.zeros(2, 3, 32, 32)
    bits = resolve_layer_bits(model, QATConfig(bits=2, depthwise_bits=8), probe)
    depthwise = {"features.1.conv.0.0", "features.2.conv.1.0", "features.3.conv.1.0"}
    assert {name for name, b in bits.items() if b == 8} == depthwise | {
        "features.0.0",
        "classifier.1",
    }
    assert bits["features.2.conv.0.0"] == 2 and bits["features.2.conv.2"] == 2
    with pytest.raises(ConfigError, match="depthwise_bits"):
        QATConfig(depthwise_bits=16)


# --- QAT: export matches the fake-quant model ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "bits", "output_quant"),
    [
        ("test_cnn", 8, True),
        ("test_cnn", 3, False),
        ("test_resnet", 4, True),
        ("test_resnet", 1, False),
        ("test_vit", 2, True),
    ],
)
def test_qat_export_reproduces_the_fake_quant_model(tmp_path, name, bits, output_quant):
    images = _images(48)
    model, layer_bits, x = _qat_model(
        name, bits, images, first_last="same", output_quant=output_quant
    )
    path, init_bits, layers = export_qat_onnx(
        model, SPEC, (32, 32), tmp_path / "qat.onnx", layer_bits
    )
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "DequantizeLinear" in ops
    assert set(layers.values()) == {n for n, b in layer_bits.items() if b is not None}
    for tensor in proto.graph.initializer:
        if tensor.name in init_bits:
            values = numpy_helper.to_array(tensor)
            limit = 1 if bits == 1 else (1 << (bits - 1)) - 1
            assert values.dtype == np.int8 and np.abs(values).max() <= limit
            if bits == 1:
                assert set(np.unique(values)) <= {-1, 1}
    with torch.no_grad():
        reference = model(x).numpy()
    exact = not output_quant or name == "test_vit"  # no conv + batch norm in the ViT
    _assert_matches(run_session(make_session(path, 1), images), reference, exact)


def test_output_quantizers_let_onnx_runtime_fuse_int8_convolutions(tmp_path):
    images = _images(16)
    model, layer_bits, _ = _qat_model("test_resnet", 4, images)
    path, _, _ = export_qat_onnx(model, SPEC, (32, 32), tmp_path / "qat.onnx", layer_bits)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 6 and "Conv" not in ops  # all six convolutions


def _quantize_nodes(path, level):
    """QuantizeLinear nodes left after ONNX Runtime's graph optimizations at ``level``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    return sum(n.op_type == "QuantizeLinear" for n in graph.node)


def test_a_linear_bottleneck_is_quantized_once_so_onnx_runtime_runs_the_trained_model(tmp_path):
    # MobileNetV2's projection conv + batch norm feeds the next block's conv directly: that
    # conv must reuse the output quantizer's grid, not requantize with a second scale (ONNX
    # Runtime collapses such a Q-DQ-Q-DQ chain, so the deployed model would differ).
    # With the quantizers on the norms, the conv after a ReLU6 quantizes its own input.
    images = _images(16)
    model, layer_bits, x = _qat_model("test_mobilenet", 2, images, quant_after_activation=False)
    layers = quant_layers(model)
    fed = ["features.2.conv.0.0", "features.3.conv.0.0"]  # each after a linear bottleneck
    assert all(not layers[name].input_quant.is_quant_enabled for name in fed)
    assert layers["features.1.conv.0.0"].input_quant.is_quant_enabled  # after a ReLU6
    path, _, _ = export_qat_onnx(model, SPEC, (32, 32), tmp_path / "mnv2.onnx", layer_bits)
    before = _quantize_nodes(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert _quantize_nodes(path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC) == before
    with torch.no_grad():
        reference = model(x).numpy()
    _assert_matches(run_session(make_session(path, 1), images), reference, exact=False)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_splitting_reused_resnet_relus_keeps_outputs_and_state_dict(block):
    torch.manual_seed(0)
    if block == "basic":
        module = BasicBlock(8, 8)
    else:
        module = Bottleneck(16, 4, downsample=None)
    module = _randomize_bn(module).eval()
    x = torch.randn(2, module.conv1.in_channels, 6, 6)
    with torch.no_grad():
        reference = module(x)
    keys = set(module.state_dict())
    assert split_reused_activations(module) == 1
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference, rtol=0, atol=0)
    assert set(module.state_dict()) == keys
    children = [name for name, _ in module.named_children()]
    assert children[children.index("bn1") + 1].startswith("relu")  # right after its norm
    assert split_reused_activations(module) == 0  # already split


@pytest.mark.parametrize("stem_pool", [False, True])
def test_output_quantizers_after_activations_make_a_resnet_integer_end_to_end(tmp_path, stem_pool):
    images = _images(32)
    model, layer_bits, x = _qat_model(
        "test_resnet", 8, images, {"stem_pool": stem_pool}, quant_after_activation=True
    )
    quantizers = set(output_quantizers(model))
    # Each ReLU runs once now, right after its norm: the quantizer moves behind it.
    assert {"stem.2.1", "layer1.relu.1", "layer2.relu.1"} <= quantizers
    assert not {"stem.1.1", "layer1.bn1.1", "layer2.bn1.1"} & quantizers
    # The norm before the residual sum keeps its own; the sum's ReLU gets one for both readers.
    assert {"layer1.bn2.1", "layer1.relu_out.1", "layer2.relu_out.1"} <= quantizers
    layers = quant_layers(model)
    assert not layers["layer2.conv1"].input_quant.is_quant_enabled  # reuses layer1's output
    path, _, _ = export_qat_onnx(model, SPEC, (32, 32), tmp_path / "resnet.onnx", layer_bits)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 6 and ops.count("QLinearAdd") == 2
    # No float op left inside the blocks: with a max pool after the stem (read by the first
    # block's conv and by its residual sum), the pool runs on the quantized values too.
    assert not {"Relu", "Add", "Conv", "ReorderInput"} & set(ops)
    assert ops.count("MaxPool") + ops.count("NhwcMaxPool") == int(stem_pool)
    with torch.no_grad():
        reference = model(x).numpy()
    _assert_matches(run_session(make_session(path, 1), images), reference, exact=False)


def test_quantizing_after_relu6_fuses_the_clamp_and_matches_the_fake_quant_model(tmp_path):
    images = _images(32)
    model, layer_bits, x = _qat_model("test_mobilenet", 4, images, quant_after_activation=True)
    layers = quant_layers(model)
    after_relu6 = "features.1.conv.1"  # the 1x1 projection after a depthwise conv + ReLU6
    assert not layers[after_relu6].input_quant.is_quant_enabled  # reuses the ReLU6 grid
    path, _, _ = export_qat_onnx(model, SPEC, (32, 32), tmp_path / "mnv2.onnx", layer_bits)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "Clip" not in ops and "Conv" not in ops  # every clamp went into a QLinearConv
    assert ops.count("QLinearConv") == len([n for n in layers if n.startswith("features")])
    with torch.no_grad():
        reference = model(x).numpy()
    _assert_matches(run_session(make_session(path, 1), images), reference, exact=False)


def _assert_matches(exported, reference, exact=True):
    """Equal up to rare one-step rounding flips of a quantized activation.

    Brevitas rounds ``x / s + z``, ONNX ``x / s`` then adds ``z`` (they differ within float
    rounding of a tie); with output quantizers ONNX Runtime also accumulates in int32 with an
    int32 bias and requantizes with a float multiplier.
    """
    error = np.abs(exported - reference)
    if exact:
        assert np.median(error) <= 1e-6 * np.abs(reference).max()
    assert error.mean() <= 0.01 * np.abs(reference).mean()
    assert (exported.argmax(1) == reference.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("activation_bits", [4, None])
def test_activation_bits_below_8_or_float_activations_export_exactly(tmp_path, activation_bits):
    images = _images(32)
    model, layer_bits, x = _qat_model("test_cnn", 4, images, activation_bits=activation_bits)
    path, _, _ = export_qat_onnx(model, SPEC, (32, 32), tmp_path / "a.onnx", layer_bits)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ("QuantizeLinear" in ops) == (activation_bits is not None)
    with torch.no_grad():
        reference = model(x).numpy()
    exact = activation_bits is None  # 4-bit inputs, 8-bit outputs in QLinearConv otherwise
    _assert_matches(run_session(make_session(path, 1), images), reference, exact)


# --- QAT: training through the one loop -------------------------------------------------


def test_qat_4_bits_trains_one_epoch_and_the_artifact_agrees_with_pytorch(
    cnn_run, dataset, tmp_path
):
    config = QATConfig(bits=4, epochs=1, calibration_images=32)
    result = quantize(cnn_run, dataset, config, tmp_path / "q4", latency=None, progress=False)
    assert result.details.status == "ok" and result.details.train is not None
    record = result.record
    assert record["format"] == "artifact-int4-mixed"  # first and last layers at 8 bits
    assert abs(record["accuracy"] - record["pytorch_accuracy"]) <= 0.001
    assert (tmp_path / "q4" / "checkpoints" / "last.ckpt").is_file()
    card = json.loads((tmp_path / "q4" / "model.json").read_text())
    assert card["recipe"]["qat"]["bits"] == 4
    manifest = load_artifact(result.files["artifact"]).manifest
    weights = [t for t in manifest["tensors"] if t["role"] == "weight" and t["kind"] == "int"]
    assert {t["bits"] for t in weights} == {4, 8}


def test_qat_with_distillation_from_the_full_precision_model(cnn_run, dataset, tmp_path):
    config = QATConfig(bits=2, epochs=1, calibration_images=16, teacher="self")
    result = quantize(
        cnn_run, dataset, config, tmp_path / "kd", evaluate_model=False, progress=False
    )
    assert result.details.status == "ok"
    card = load_artifact(result.files["artifact"]).manifest["card"]
    assert card["lineage"][-1]["config"]["teacher"] == "self"


def _nan_after(monkeypatch, calls):
    """Make the supervised loss NaN from its ``calls``-th call on."""
    original = SupervisedLoss.forward
    count = {"n": 0}

    def forward(self, logits, labels, images):
        count["n"] += 1
        loss = original(self, logits, labels, images)
        return loss * float("nan") if count["n"] > calls else loss

    monkeypatch.setattr(SupervisedLoss, "forward", forward)


@pytest.mark.parametrize(("calls", "restored"), [(3, "best.ckpt"), (0, "calibrated")])
def test_qat_divergence_is_stopped_reported_and_the_last_good_model_kept(
    cnn_run, dataset, tmp_path, monkeypatch, calls, restored
):
    _nan_after(monkeypatch, calls)  # the fixture split has 3 batches per epoch
    config = QATConfig(bits=1, epochs=2, calibration_images=16)
    run = tmp_path / "q1"
    result = quantize(cnn_run, dataset, config, run, latency=None, progress=False)
    assert result.details.status == "diverged"
    message = result.details.message
    assert "diverged" in message and "loss became nan" in message
    failure = json.loads((run / "qat_failure.json").read_text())
    assert failure["status"] == "diverged" and restored in failure["restored"]
    assert result.record["status"] == "diverged" and 0 <= result.record["accuracy"] <= 1
    assert result.files["artifact"].is_file()
    state = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if calls:
        assert (run / "checkpoints" / "best.ckpt").is_file()


def test_qat_pytorch_accuracy_helper_matches_a_manual_count(cnn_run, dataset):
    from satcompress.checkpoint import load_trained

    trained = load_trained(cnn_run)
    accuracy = pytorch_accuracy(trained.model, trained.input_spec, dataset, "val")
    with torch.no_grad():
        logits = trained.model(Preprocess(trained.input_spec)(dataset.splits["val"].images))
    expected = (logits.argmax(1) == dataset.splits["val"].labels).float().mean().item()
    assert accuracy == pytest.approx(expected)


# --- command line ---------------------------------------------------------------------------


def test_cli_ptq_then_inspect_eval_and_fp32_export(cnn_run, tmp_path, capsys):
    from satcompress.cli import main

    out = tmp_path / "ptq"
    args = ["--checkpoint", str(cnn_run), "--run-dir", str(out), "--no-latency"]
    assert main(["quantize", "--method", "ptq", "--calibration-images", "16", *args]) == 0
    artifact = out / "model.satc"
    assert "bound sum(params x bits)/8" in capsys.readouterr().out
    assert main(["inspect", str(artifact)]) == 0
    text = capsys.readouterr().out
    assert "artifact-int8" in text and "sparsity" in text and "scales/zero points" in text
    evaluated = tmp_path / "eval"
    assert (
        main(["eval", "--artifact", str(artifact), "--no-latency", "--run-dir", str(evaluated)])
        == 0
    )
    record = json.loads((evaluated / "record.json").read_text())
    assert record["size_bytes"] == artifact.stat().st_size and record["format"] == "artifact-int8"
    assert record["bound_bytes"] > 0
    assert main(["quantize", "--method", "ptq", "--bits", "4", *args]) == 2
    assert "use --method qat" in capsys.readouterr().err
    fp32 = tmp_path / "fp32.satc"
    assert main(["export", "--checkpoint", str(cnn_run), "--output", str(fp32)]) == 0
    assert main(["eval", "--artifact", str(fp32), "--no-latency", "--run-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "record.json").read_text())["format"] == "artifact-fp32"


def test_cli_qat_2_bits_one_epoch_and_export_from_the_run(cnn_run, dataset, tmp_path, capsys):
    from satcompress.cli import main

    out = tmp_path / "w2"
    args = ["--checkpoint", str(cnn_run), "--run-dir", str(out), "--calibration-images", "16"]
    qat_args = ["quantize", "--method", "qat", "--bits", "2", "--epochs", "1", *args]
    assert main([*qat_args, "--no-latency"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["format"] == "artifact-int2-mixed" and record["status"] == "ok"
    assert abs(record["accuracy"] - record["pytorch_accuracy"]) <= 0.001
    # rebuilt in a new model from qat.yaml + model.safetensors, then exported again
    again = tmp_path / "again.satc"
    assert main(["export", "--checkpoint", str(out), "--output", str(again)]) == 0
    rebuilt = load_artifact(again).save_onnx(tmp_path / "again.onnx")
    images = _fixture(dataset)
    expected = run_session(make_session(out / "model_qdq.onnx", 1), images)
    assert np.array_equal(run_session(make_session(rebuilt, 1), images), expected)
    bits_map = tmp_path / "bits.yaml"
    bits_map.write_text("layer9: 2\n")
    capsys.readouterr()
    assert main([*qat_args, "--bits-map", str(bits_map), "--run-dir", str(tmp_path / "bad")]) == 2
    assert "bits_map names layers the model does not have: 'layer9'" in capsys.readouterr().err


def test_cli_qat_flags_reach_the_config():
    from satcompress.cli import build_parser
    from satcompress.cli.quantize import config_from_args

    argv = ["quantize", "--method", "qat", "--bits", "2", "--depthwise-bits", "8",
            "--first-last", "same", "--checkpoint", "x", "--run-dir", "y"]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.bits, config.depthwise_bits, config.first_last) == (2, 8, "same")
    assert config.quant_after_activation  # the default
    argv.append("--no-quant-after-activation")
    assert not config_from_args(build_parser().parse_args(argv)).quant_after_activation


def test_cli_ptq_reduce_range_flag_reaches_the_config():
    from satcompress.cli import build_parser
    from satcompress.cli.quantize import config_from_args

    argv = ["quantize", "--method", "ptq", "--checkpoint", "x", "--run-dir", "y"]
    assert config_from_args(build_parser().parse_args(argv)).reduce_range  # the default
    assert config_from_args(build_parser().parse_args([*argv, "--reduce-range"])).reduce_range
    parsed = build_parser().parse_args([*argv, "--no-reduce-range"])
    assert not config_from_args(parsed).reduce_range
