"""A tiny, torch-free ``.satc`` that stores every kind of tensor the format knows.

Built with ``onnx.helper`` in milliseconds (the fuzz and signature tests write thousands of
variants of it): a uint8 image is normalised, fake-quantized (QDQ, uint8 zero point), goes
through a 2-bit per-channel QDQ convolution (narrow levels, sparse), a float convolution
whose patterned weights LZMA shrinks, a pooled ``Reshape`` (an int64 shape tensor) and a
1-bit QDQ ``Gemm`` ({-1, +1}, no zero level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from satcompress.artifact.format import write_artifact

CLASSES = ["field", "forest", "river"]
SIDE = 8


def tiny_model() -> onnx.ModelProto:
    """The ONNX model: ``image`` uint8 (N, 3, 8, 8) -> ``logits`` (N, 3)."""
    rng = np.random.default_rng(0)
    w2 = rng.integers(-1, 2, (4, 3, 3, 3)).astype(np.int8)  # 2-bit narrow, many zeros
    wf = np.tile(np.array([0.5, -0.25, 0.0, 1.0], np.float32), 72).reshape(8, 4, 3, 3)
    w1 = np.where(rng.random((3, 8)) < 0.5, -1, 1).astype(np.int8)  # 1 bit: {-1, +1}
    tensors = {
        "mean": np.full((1, 3, 1, 1), 0.5, np.float32),
        "inv_std": np.full((1, 3, 1, 1), 4.0, np.float32),
        "act_scale": np.array(0.05, np.float32),
        "act_zp": np.array(128, np.uint8),
        "conv1.w": w2,
        "conv1.scale": np.linspace(0.1, 0.4, 4).astype(np.float32),
        "conv1.zp": np.zeros(4, np.int8),
        "conv1.b": np.array([0.0, 0.1, 0.0, -0.1], np.float32),
        "conv2.w": wf,
        "shape": np.array([-1, 8], np.int64),
        "fc.w": w1,
        "fc.scale": np.array(0.2, np.float32),
        "fc.zp": np.array(0, np.int8),
        "fc.b": np.zeros(3, np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Cast", ["image"], ["x0"], to=TensorProto.FLOAT, name="cast"),
        node("Sub", ["x0", "mean"], ["x1"], name="sub"),
        node("Mul", ["x1", "inv_std"], ["x2"], name="mul"),
        node("QuantizeLinear", ["x2", "act_scale", "act_zp"], ["xq"], name="q"),
        node("DequantizeLinear", ["xq", "act_scale", "act_zp"], ["x3"], name="dq"),
        node("DequantizeLinear", ["conv1.w", "conv1.scale", "conv1.zp"], ["w1"], axis=0,
             name="conv1.dq"),
        node("Conv", ["x3", "w1", "conv1.b"], ["x4"], pads=[1, 1, 1, 1], name="conv1"),
        node("Relu", ["x4"], ["x5"], name="relu"),
        node("Conv", ["x5", "conv2.w"], ["x6"], pads=[1, 1, 1, 1], name="conv2"),
        node("GlobalAveragePool", ["x6"], ["x7"], name="pool"),
        node("Reshape", ["x7", "shape"], ["x8"], name="reshape"),
        node("DequantizeLinear", ["fc.w", "fc.scale", "fc.zp"], ["wfc"], name="fc.dq"),
        node("Gemm", ["x8", "wfc", "fc.b"], ["logits"], transB=1, name="fc"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES)])],
        [numpy_helper.from_array(array, name) for name, array in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"model": "tiny", "classes": '["field", "forest", "river"]'})
    onnx.checker.check_model(model)
    return model


def write_tiny_artifact(path: str | Path) -> Path:
    """Write the tiny model as a ``.satc`` (2-bit conv1, 1-bit fc) and return its path."""
    card = {
        "model": "tiny",
        "classes": CLASSES,
        "image_size": [SIDE, SIDE],
        "input": {"size": None, "mean": [0.5] * 3, "std": [0.25] * 3},
        "lineage": [{"stage": "train"}, {"stage": "quantize"}],
    }
    write_artifact(
        tiny_model(), path, bits={"conv1.w": 2, "fc.w": 1}, info={"card": card, "params": 0}
    )
    return Path(path)
