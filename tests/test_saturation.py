import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from satcompress.compress.quantize import PTQConfig, quantize_onnx
from satcompress.evaluate.profile import LatencyConfig, measure_latency
from satcompress.models import create_model
from satcompress.models.deployable import export_onnx
from satcompress.preprocess import InputSpec
from satcompress.runtime import saturation
from satcompress.runtime.onnx import make_session
from satcompress.runtime.saturation import (
    int8_saturates_here,
    make_saturation_safe,
    resolve_policy,
)


def _matmul_integer(weights: np.ndarray, zero_point: bool = True) -> onnx.ModelProto:
    """uint8 A (1, K) times an int8 initializer B (K, N), int32 out: exact integer maths."""
    k, n = weights.shape
    inputs = ["a", "b", "", "b_zp"] if zero_point else ["a", "b"]
    inits = [numpy_helper.from_array(weights.astype(np.int8), "b")]
    if zero_point:
        inits.append(numpy_helper.from_array(np.zeros(n, np.int8), "b_zp"))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", inputs, ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qdq_weight(weights: np.ndarray, shared_zero_point: bool) -> onnx.ModelProto:
    """Two DequantizeLinear nodes of int8 weights (one per-channel, one with no zero point)."""
    scale = np.full(weights.shape[0], 0.5, np.float32)
    inits = [
        numpy_helper.from_array(weights.astype(np.int8), "w"),
        numpy_helper.from_array(scale, "s"),
        numpy_helper.from_array(np.zeros(weights.shape[0], np.int8), "zp"),
        numpy_helper.from_array(np.full(weights.shape, 3, np.int8), "small"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["w_f"], axis=0, name="dq_w"),
        helper.make_node(
            "DequantizeLinear",
            ["small", "s", "zp" if shared_zero_point else ""],
            ["small_f"],
            axis=0,
            name="dq_small",
        ),
        helper.make_node("Add", ["w_f", "small_f"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, weights.shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qoperator(op: str, weights: np.ndarray, y_scale: float) -> onnx.ModelProto:
    """uint8 x (1, K) through ``op`` (QLinearConv 1x1 or QLinearMatMul) with int8 weights
    (N, K), per-output-channel (conv) or per-tensor (matmul) scales of 1 and zero points
    of 0, uint8 out: ``round(x @ w.T / y_scale)``, clipped to 0..255."""
    n, k = weights.shape
    conv = op == "QLinearConv"
    w = weights.reshape(n, k, 1, 1) if conv else weights.T
    w_shape = [n] if conv else []
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "x_s"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
        numpy_helper.from_array(w.astype(np.int8), "w"),
        numpy_helper.from_array(np.ones(w_shape, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(w_shape, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_s"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zp"),
    ]
    inputs = ["x", "x_s", "x_zp", "w", "w_s", "w_zp", "y_s", "y_zp"]
    x_shape, y_shape = ([1, k, 1, 1], [1, n, 1, 1]) if conv else ([1, k], [1, n])
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], name="q")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, tmp_path, policy: str, feed: dict) -> np.ndarray:
    path = tmp_path / f"{policy}.onnx"
    onnx.save(model, str(path))
    return make_session(path, 1, int8_kernels=policy).run(None, feed)[0]


def test_exact_policy_computes_the_integer_product_with_saturating_operands(tmp_path):
    # Every pair of products is 2 x 255 x 127 = 64,770: past int16, where CPUs without VNNI
    # saturate with the signed weights as stored.
    weights = np.full((64, 8), 127, np.int64)
    weights[::3] = -127
    a = np.full((1, 64), 255, np.uint8)
    expected = a.astype(np.int64) @ weights
    exact = _run(_matmul_integer(weights), tmp_path, "exact", {"a": a})
    np.testing.assert_array_equal(exact, expected)
    native = _run(_matmul_integer(weights), tmp_path, "native", {"a": a})
    if int8_saturates_here():  # the defect the rewrite exists for, on this very CPU
        assert not np.array_equal(native, expected)
    auto = _run(_matmul_integer(weights), tmp_path, "auto", {"a": a})
    np.testing.assert_array_equal(auto, expected if int8_saturates_here() else native)


@pytest.mark.parametrize("op", ["QLinearConv", "QLinearMatMul"])
def test_exact_policy_covers_the_operator_form_of_onnx_runtimes_quantizer(tmp_path, op):
    # QuantFormat.QOperator files hold int8 weights in QLinearConv / QLinearMatMul directly.
    weights = np.full((8, 64), 127, np.int64)
    weights[:, ::4] = -60
    x = np.full((1, 64), 255, np.uint8)
    y_scale = 8000.0  # the exact outputs (about 164) land well inside 0..255
    expected = np.clip(np.rint(x.astype(np.int64) @ weights.T / y_scale), 0, 255)
    feed = {"x": x.reshape(1, 64, 1, 1) if op == "QLinearConv" else x}
    model = _qoperator(op, weights, y_scale)
    exact = _run(model, tmp_path, "exact", feed).reshape(1, -1)
    np.testing.assert_array_equal(exact, expected)
    native = _run(model, tmp_path, "native", feed).reshape(1, -1)
    if int8_saturates_here():
        assert not np.array_equal(native, expected)
    assert make_saturation_safe(model) == 1
    zero_point = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[5])
    assert zero_point.data_type == TensorProto.UINT8 and list(zero_point.dims) == (
        [8] if op == "QLinearConv" else []
    )


def test_rewrite_keeps_dequantized_values_and_skips_weights_that_cannot_saturate(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (6, 5))
    model = _qdq_weight(weights, shared_zero_point=True)
    before = _run(model, tmp_path, "native", {})
    assert make_saturation_safe(model) == 1  # "small" (|w| = 3) is left alone
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["w"].dtype == np.uint8
    np.testing.assert_array_equal(inits["w"].astype(np.int64) - 128, weights)
    assert inits["small"].dtype == np.int8 and inits["zp"].dtype == np.int8  # shared zp kept
    dq = next(n for n in model.graph.node if n.name == "dq_w")
    np.testing.assert_array_equal(inits[dq.input[2]], np.full(6, 128, np.uint8))
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, tmp_path, "native", {}), before)


def test_rewrite_adds_a_zero_point_where_none_was_given(tmp_path):
    weights = np.full((4, 3), -100)
    model = _matmul_integer(weights, zero_point=False)
    assert make_saturation_safe(model) == 1
    node = model.graph.node[0]
    assert len(node.input) == 4 and node.input[2] == ""
    zero_point = next(t for t in model.graph.initializer if t.name == node.input[3])
    assert numpy_helper.to_array(zero_point).tolist() == 128
    a = np.arange(4, dtype=np.uint8).reshape(1, 4) * 60
    out = _run(model, tmp_path, "native", {"a": a})
    np.testing.assert_array_equal(out, a.astype(np.int64) @ weights)


def test_weights_read_by_other_ops_or_with_nonzero_zero_points_are_left_alone():
    model = _matmul_integer(np.full((4, 3), 120))
    next(t for t in model.graph.initializer if t.name == "b_zp").CopyFrom(
        numpy_helper.from_array(np.ones(3, np.int8), "b_zp")
    )
    assert make_saturation_safe(model) == 0
    model = _matmul_integer(np.full((4, 3), 120))
    cast = helper.make_node("Cast", ["b"], ["b_f"], to=TensorProto.FLOAT)
    model.graph.node.append(cast)
    assert make_saturation_safe(model) == 0


@pytest.mark.parametrize(
    "machine, flags, saturates",
    [
        ("x86_64", "fpu avx2 fma", True),
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),
        ("aarch64", "fp asimd", False),
    ],
)
def test_cpu_detection(tmp_path, monkeypatch, machine, flags, saturates):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    monkeypatch.setattr(saturation, "is_x86", lambda: machine == "x86_64")
    assert int8_saturates_here(cpuinfo) is saturates
    assert int8_saturates_here(tmp_path / "missing") is (machine == "x86_64")


def test_policy_is_validated():
    assert resolve_policy("exact") and not resolve_policy("native")
    with pytest.raises(ValueError, match="int8_kernels"):
        resolve_policy("fast")


def test_latency_record_says_how_many_weights_ran_as_uint8(tmp_path):
    model = create_model("test_cnn", 10).eval()
    fp32 = export_onnx(model, InputSpec(), (32, 32), tmp_path / "fp32.onnx")
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), np.uint8)
    int8 = quantize_onnx(
        fp32, tmp_path / "int8.onnx", images, PTQConfig(mode="static", reduce_range=False)
    )
    weights = sum(
        t.data_type == TensorProto.INT8 and np.abs(numpy_helper.to_array(t)).max() > 64
        for t in onnx.load(str(int8)).graph.initializer
    )
    assert weights >= 2  # every convolution's and the head's 8-bit weights
    config = LatencyConfig(batch_sizes=(1,), runs=3, warmup=0)
    for policy, expected in (("exact", weights), ("native", 0)):
        session = make_session(int8, 1, int8_kernels=policy)
        timing = measure_latency(int8, (32, 32), config, session)
        assert timing["uint8_weight_tensors"] == expected


def test_zero_points_nothing_reads_any_more_are_removed():
    model = _qdq_weight(np.full((3, 2), 100), shared_zero_point=False)
    assert make_saturation_safe(model) == 1
    names = {t.name for t in model.graph.initializer}
    assert "zp" not in names and "w" in names and "small" in names
    onnx.checker.check_model(model)
