"""Diagnostics behind the README's explanations (not targets): each a small measurement.

Writes ``results/diagnostics.json``, a mapping of measurement name to its figures (not the
model record schema; resumable: finished measurements are kept, the file is rewritten
atomically after each):

* ``train-speed``: training images/s of ResNet-18, ResNet-9 and MobileNetV2 at 64x64,
  fp32 against bf16 autocast, interleaved in one process (same batches and threads);
* ``train-accuracy``: accuracy on the training images (eval mode, no augmentation) of the
  shared ResNet-18 and of the runs named by ``--runs`` (is a recipe under- or overfitting?);
* ``tta``: test accuracy of the shared ResNet-18 and of the ``--runs`` with test-time
  augmentation, softmax averaged over the views: none, horizontal flip (2 views), and the
  8 flips and 90-degree rotations that the training augmentation draws from (at 2 and 8
  times the inference cost: would the 64 px models reach 97% that way?);
* ``qat-start``: test accuracy of MobileNetV2 calibrated for 8-bit QAT before any training,
  with the output quantizers before and after the ReLU6 (``quant_after_activation``);
* ``ort-agreement``: for the QAT runs named by ``--qat-runs``, predictions of the QDQ graph
  in ONNX Runtime with all graph optimisations and with none, against PyTorch fake-quant;
* ``ort-ops``: operator counts of the ONNX files named by ``--graphs`` after ONNX Runtime's
  graph optimisations (which convolutions run as int8 ``QLinearConv``, what stays in float);
* ``latency-threads``: the fp32 / int8 latency ratio of the two files named by
  ``--latency-pair`` at 2 and 1 threads, timed in interleaved rounds three ways: as the
  benchmarks do, with a 0.3 s pause before each file's block (one session's spinning worker
  threads go idle before the next is timed), and with ORT's thread spinning off;
* ``ort-profile``: ONNX Runtime's own profiler on the files named by ``--profile``: kernel
  time per operator type and per kind of convolution (stem, depthwise, pointwise, full) at 1
  and 2 threads, batch 1 and 64 (which kernels gain from int8 and from the second thread);
* ``ort-profile-untrained``: the same on fp32 and PTQ int8 files of the untrained models
  named by ``--profile-models`` (kernel times do not depend on the weights' values, so this
  needs no trained run);
* ``int8-kernels``: the int8 files named by ``--kernel-pairs FP32:INT8`` run by ONNX
  Runtime's native kernels and by the exact graph ``make_session`` builds on x86 CPUs
  without VNNI (8-bit weights as uint8): test accuracy, differing predictions, speed-ups;
  ``int8-kernels-untrained`` does the timing on untrained ``--kernel-models``;
* ``ort-quantizer``: the same comparison on files that ONNX Runtime's own
  ``quantize_static`` writes from the fp32 model of ``--ort-quantizer CHECKPOINT`` (uint8
  activations, int8 weights: QDQ per-channel, QDQ per-tensor, QOperator per-channel),
  beside satcompress's PTQ at 8 and 7 bits: is the int8 speed-up set by the file or by the
  runtime's kernels on this CPU?
* ``runtimes-untrained``: the int8 / fp32 latency ratio of those files in ONNX Runtime and
  in OpenVINO (``pip install -e ".[openvino]"``), the four timed in interleaved rounds: is
  the ratio set by the file or by the runtime's kernels?

``--jobs`` runs only the named measurements (e.g. the timing ones on a quiet machine).

    RUNS=~/.cache/satcompress/benchmarks
    python benchmarks/diagnostics.py --runs $RUNS/resnet18-6e06a5661b
    python benchmarks/diagnostics.py --mobilenet $RUNS/mobilenet_v2-6290bef81a
    Q=$RUNS/quantize/mobilenet_v2-mobilenet_v2-6290bef81a-qat-w8-e3-kd-lr0.005
    python benchmarks/diagnostics.py --graphs $Q/model_qdq.onnx $Q-aa/model_qdq.onnx \
        $RUNS/quantize/resnet18-resnet18_eurosat64.safetensors-ptq/model_int8.onnx \
        $RUNS/quantize/mobilenet_v2-mobilenet_v2-6290bef81a-ptq/model_int8.onnx
    R=$RUNS/quantize/resnet18-resnet18_eurosat64.safetensors
    python benchmarks/diagnostics.py --latency-pair $R-onnx/fp32.onnx $R-ptq/model_int8.onnx
    python benchmarks/diagnostics.py --jobs ort-profile --profile $R-onnx/fp32.onnx \
        $R-ptq/model_int8.onnx
    python benchmarks/diagnostics.py --jobs ort-profile-untrained runtimes-untrained \
        --profile-models mobilenet_v2 resnet18
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import satcompress as sc
from satcompress.compress.quantize import QATConfig, calibrate, prepare_qat
from satcompress.compress.quantize.qat import calibration_batches, load_qat_model
from satcompress.evaluate.artifact import pytorch_accuracy
from satcompress.evaluate.profile import cpu_description
from satcompress.experiments import benchmark_parser, load_eurosat
from satcompress.preprocess import Preprocess
from satcompress.runtime.onnx import make_session, run_session
from satcompress.utils.io import atomic_write_json, read_json

SHARED = Path("../shared/models/resnet18_eurosat64.safetensors")


def train_speed(threads: int, batches: int = 4, rounds: int = 2) -> dict:
    """Training images/s per model and precision, best of ``rounds`` interleaved rounds."""
    torch.set_num_threads(threads)
    x = torch.randn(64, 3, 64, 64).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    out: dict[str, dict[str, float]] = {}
    for name in ("resnet18", "resnet9", "mobilenet_v2"):
        model = sc.create_model(name, num_classes=10).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        best = {"fp32": 0.0, "bf16": 0.0}
        for _ in range(rounds):
            for mode in best:
                start = time.perf_counter()
                for _ in range(batches):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                rate = batches * len(x) / (time.perf_counter() - start)
                best[mode] = max(best[mode], round(rate, 1))
        out[name] = best
    return {"img_per_s": out, "threads": threads, "batch": 64}


def split_accuracy(model: torch.nn.Module, spec, dataset, split: str) -> float:
    return pytorch_accuracy(model.eval(), spec, dataset, split)


def train_accuracy(runs: list[Path], dataset) -> dict:
    out = {}
    for run in [SHARED, *runs]:
        loaded = sc.load_trained(run)
        out[str(run)] = {
            split: split_accuracy(loaded.model, loaded.input_spec, dataset, split)
            for split in ("train", "val", "test")
        }
    return {"accuracy": out}


def _dihedral_views(images: torch.Tensor, views: int) -> list[torch.Tensor]:
    """The first ``views`` of: identity, horizontal flip, then the other 6 flips/rotations."""
    flips = [images, images.flip(-1)]
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3) for x in flips]
    return (flips + turns)[:views]


class _AveragedViews(torch.nn.Module):
    """``model``'s softmax averaged over the first ``views`` dihedral views of the input."""

    def __init__(self, model: torch.nn.Module, views: int) -> None:
        super().__init__()
        self.model, self.views = model, views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return sum(self.model(x).softmax(1) for x in _dihedral_views(images, self.views))


def tta(runs: list[Path], dataset) -> dict:
    out = {}
    for run in [SHARED, *runs]:
        loaded = sc.load_trained(run)
        out[str(run)] = {
            f"views_{n}": split_accuracy(
                _AveragedViews(loaded.model, n), loaded.input_spec, dataset, "test"
            )
            for n in (1, 2, 8)
        }
    return {"test_accuracy": out}


def qat_start(run: Path, dataset) -> dict:
    """MobileNetV2 after ``prepare_qat`` + calibration at 8 bits, before any training.

    Both placements of the convolutions' output quantizers: after the batch norm
    (``calibrated_test``) and after the ReLU6 (``quant_after_activation``).
    """
    loaded = sc.load_trained(run)
    out = {"run": str(run)}
    out["fp32_test"] = split_accuracy(loaded.model, loaded.input_spec, dataset, "test")
    for key, after in (("calibrated_test", False), ("calibrated_test_after_activation", True)):
        torch.manual_seed(0)
        config = QATConfig(bits=8, quant_after_activation=after)
        model, _ = prepare_qat(loaded.model, config, torch.zeros(2, 3, 64, 64))
        calibrate(model, calibration_batches(dataset, loaded.input_spec, 256))
        out[key] = split_accuracy(model, loaded.input_spec, dataset, "test")
    return out


def ort_agreement(runs: list[Path], dataset) -> dict:
    test = dataset.splits["test"]
    labels = test.labels.numpy()
    out = {}
    for run in runs:
        model, spec, _ = load_qat_model(run)
        pre = Preprocess(spec)
        with torch.no_grad():
            batches = [test.images[i : i + 256] for i in range(0, len(test), 256)]
            ref = torch.cat([model(pre(batch)) for batch in batches])
        ref_pred = ref.argmax(1).numpy()
        row = {"pytorch_accuracy": float((ref_pred == labels).mean())}
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}  # fmt: skip
        for name, level in levels.items():
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            session = ort.InferenceSession(str(run / "model_qdq.onnx"), options)
            feed = session.get_inputs()[0].name
            logits = np.concatenate(
                [
                    session.run(None, {feed: test.images[i : i + 256].numpy()})[0]
                    for i in range(0, len(test), 256)
                ]  # fmt: skip
            )
            pred = logits.argmax(1)
            row[name] = {
                "accuracy": float((pred == labels).mean()),
                "predictions_differing": int((pred != ref_pred).sum()),
            }
        out[str(run)] = row
    return {"runs": out, "images": len(test)}


def ort_ops(graphs: list[Path]) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for graph in graphs:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            nodes = onnx.load(options.optimized_model_filepath).graph.node
            out[str(graph)] = dict(sorted(Counter(n.op_type for n in nodes).items()))
    return {"graphs": out}


def _timed_session(path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
    # Not artifact.make_session: this measurement varies ORT's spinning setting.
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _block_ms(session: ort.InferenceSession, images: np.ndarray, runs: int) -> list[float]:
    feed = {session.get_inputs()[0].name: images}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _interleaved_medians(sessions: dict, batch: int, runs: int, pause: float, rounds: int):
    """Each session's block medians (ms), the sessions timed in turn, ``rounds`` times."""
    height, width = next(iter(sessions.values())).get_inputs()[0].shape[-2:]
    images = np.random.default_rng(0).integers(0, 256, (batch, 3, height, width), np.uint8)
    medians: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            time.sleep(pause)
            _block_ms(session, images, max(2, runs // 10))  # warm-up
            medians[name].append(float(np.median(_block_ms(session, images, runs))))
    return medians


def latency_threads(fp32: Path, int8: Path, rounds: int = 5) -> dict:
    rows = []
    ways = {"as-benchmarked": (True, 0.0), "pause-0.3s": (True, 0.3), "no-spinning": (False, 0.0)}
    for threads in (2, 1):
        for way, (spinning, pause) in ways.items():
            sessions = {"fp32": _timed_session(fp32, threads, spinning),
                        "int8": _timed_session(int8, threads, spinning)}  # fmt: skip
            for batch, runs in ((1, 100), (64, 10)):
                m = _interleaved_medians(sessions, batch, runs, pause, rounds)
                fp, q = float(np.median(m["fp32"])), float(np.median(m["int8"]))
                ratios = [round(a / b, 2) for a, b in zip(m["fp32"], m["int8"], strict=True)]
                rows.append({"threads": threads, "way": way, "batch": batch,
                             "fp32_ms": round(fp, 4), "int8_ms": round(q, 4),
                             "ratio": round(fp / q, 2), "round_ratios": ratios})  # fmt: skip
                print(rows[-1])
    return {"fp32": str(fp32), "int8": str(int8), "rounds": rounds, "rows": rows}


def int8_kernels(pairs: list[tuple[Path, Path]], dataset, rounds: int = 5) -> dict:
    """Each int8 file run by ONNX Runtime's native kernels and by the exact (uint8-weight)
    graph that ``make_session`` builds on x86 CPUs without VNNI: test accuracy, predictions
    that differ, and latency against its fp32 file (1 and 2 threads, interleaved rounds)."""
    test = dataset.splits["test"]
    images, labels = test.images.numpy(), test.labels.numpy()
    out = {}
    for fp32, int8 in pairs:
        row: dict = {"fp32": str(fp32), "int8": str(int8)}
        predictions = {}
        for policy in ("native", "exact"):
            session = make_session(int8, 2, int8_kernels=policy)
            row[f"uint8_weight_tensors_{policy}"] = session.satcompress_uint8_weights
            predictions[policy] = np.concatenate(
                [
                    run_session(session, images[i : i + 256]).argmax(1)
                    for i in range(0, len(images), 256)
                ]  # fmt: skip
            )
            row[f"accuracy_{policy}"] = float((predictions[policy] == labels).mean())
        row["predictions_differing"] = int((predictions["native"] != predictions["exact"]).sum())
        row["timing"] = []
        for threads in (2, 1):
            sessions = {"fp32": make_session(fp32, threads, "native"),
                        "native": make_session(int8, threads, "native"),
                        "exact": make_session(int8, threads, "exact")}  # fmt: skip
            for batch, runs in ((1, 100), (64, 10)):
                m = {k: float(np.median(v)) for k, v in
                     _interleaved_medians(sessions, batch, runs, 0.0, rounds).items()}  # fmt: skip
                times = {f"{k}_ms": round(v, 4) for k, v in m.items()}
                row["timing"].append({
                    "threads": threads, "batch": batch, **times,
                    "native_speed_up": round(m["fp32"] / m["native"], 2),
                    "exact_speed_up": round(m["fp32"] / m["exact"], 2),
                })  # fmt: skip
                print(int8.name, row["timing"][-1])
        out[str(int8)] = row
    return {"rounds": rounds, "images": len(labels), "files": out}


def ort_quantizer_files(checkpoint: Path, dataset, folder: Path) -> list[tuple[Path, Path]]:
    """(fp32, int8) ONNX pairs: ONNX Runtime's ``quantize_static`` in three settings and
    satcompress's PTQ at 8 and 7 bits, all calibrated on the same 512 train images."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from satcompress.compress.quantize import PTQConfig, calibration_images, quantize_onnx
    from satcompress.compress.quantize.ptq import ImageReader
    from satcompress.models.deployable import export_onnx

    trained = sc.load_trained(checkpoint)
    fp32 = export_onnx(trained.model, trained.input_spec, dataset.image_size, folder / "fp32.onnx")
    images = calibration_images(dataset, 512)
    settings = {
        "ort-qdq-per-channel": {"per_channel": True},
        "ort-qdq-per-tensor": {"per_channel": False},
        "ort-qoperator-per-channel": {"per_channel": True, "quant_format": QuantFormat.QOperator},
    }
    pairs = []
    for name, options in settings.items():
        int8 = folder / f"{name}.onnx"
        quantize_static(str(fp32), str(int8), ImageReader(images), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, **options)  # fmt: skip
        pairs.append((fp32, int8))
    for name, config in (("satcompress-ptq", PTQConfig(reduce_range=False)),
                         ("satcompress-ptq-7bit", PTQConfig())):  # fmt: skip
        pairs.append((fp32, quantize_onnx(fp32, folder / f"{name}.onnx", images, config)))
    return pairs


def _ort_quantizer(checkpoint: Path, dataset) -> dict:
    """:func:`int8_kernels` on :func:`ort_quantizer_files` (file names as keys)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = int8_kernels(ort_quantizer_files(checkpoint, dataset, Path(tmp)), dataset)
    result["files"] = {Path(k).stem: v for k, v in result["files"].items()}
    for row in result["files"].values():
        row["fp32"], row["int8"] = Path(row["fp32"]).name, Path(row["int8"]).name
    return {"checkpoint": str(checkpoint), **result}


def _profiled_kernel_us(path: Path, threads: int, batch: int, runs: int) -> dict[str, float]:
    """Mean kernel time (us per run) of every node, from ONNX Runtime's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        height, width = session.get_inputs()[0].shape[-2:]
        images = np.random.default_rng(0).integers(0, 256, (batch, 3, height, width), np.uint8)
        feed = {session.get_inputs()[0].name: images}
        for _ in range(runs):
            session.run(None, feed)
        events = read_json(session.end_profiling())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = f"{event['args']['op_name']} {event['name'].removesuffix('_kernel_time')}"
            totals[key] = totals.get(key, 0.0) + event["dur"] / runs
    return totals


class _OpenVINOSession:
    """An OpenVINO CPU model behind the two ``InferenceSession`` calls the timers use.

    fp32 stays fp32 (OpenVINO would otherwise run it in bf16 on CPUs that have it); the
    batch is fixed at compile time, as OpenVINO prefers.
    """

    def __init__(self, path: Path, threads: int, batch: int) -> None:
        import openvino  # optional: only this measurement needs it

        core = openvino.Core()
        model = core.read_model(str(path))
        self._name = model.inputs[0].get_any_name()
        self._shape = [batch, *(d.get_length() for d in model.inputs[0].get_partial_shape()[1:])]
        model.reshape({self._name: self._shape})
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
        self._request = core.compile_model(model, "CPU", config).create_infer_request()

    def get_inputs(self) -> list:
        """The input's name and shape, as ``InferenceSession.get_inputs`` gives them."""
        return [type("Input", (), {"name": self._name, "shape": self._shape})]

    def run(self, _outputs, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Logits for the fed batch."""
        return [self._request.infer(feed)[0]]


def runtime_comparison(graphs: list[Path], rounds: int = 5) -> dict:
    """int8 / fp32 latency in ONNX Runtime and in OpenVINO, all four timed interleaved.

    ``graphs`` alternate fp32 and int8 files of the same model (as
    :func:`untrained_graphs` returns them). Top-1 agreement of OpenVINO with ONNX Runtime
    on random images shows both run the same computation.
    """
    import openvino

    out = {}
    for fp32, int8 in zip(graphs[::2], graphs[1::2], strict=True):
        rows = []
        for threads in (2, 1):
            for batch, runs in ((1, 100), (64, 10)):
                sessions = {
                    "ort-fp32": _timed_session(fp32, threads, spinning=True),
                    "ort-int8": _timed_session(int8, threads, spinning=True),
                    "openvino-fp32": _OpenVINOSession(fp32, threads, batch),
                    "openvino-int8": _OpenVINOSession(int8, threads, batch),
                }
                m = {k: float(np.median(v)) for k, v in
                     _interleaved_medians(sessions, batch, runs, 0.0, rounds).items()}  # fmt: skip
                ratios = {f"{rt}_ratio": round(m[f"{rt}-fp32"] / m[f"{rt}-int8"], 2)
                          for rt in ("ort", "openvino")}  # fmt: skip
                times = {f"{k}_ms": round(v, 4) for k, v in m.items()}
                rows.append({"threads": threads, "batch": batch, **times, **ratios})
                print(fp32.name, rows[-1])
        agree = {}
        for kind, path in (("fp32", fp32), ("int8", int8)):
            session = _OpenVINOSession(path, 1, 64)
            shape = session.get_inputs()[0].shape
            images = np.random.default_rng(1).integers(0, 256, shape, np.uint8)
            ov_top1 = session.run(None, {"image": images})[0].argmax(1)
            ort_top1 = run_session(make_session(path, 1), images).argmax(1)
            agree[kind] = float((ov_top1 == ort_top1).mean())
        out[fp32.name.removesuffix("-fp32.onnx")] = {"rows": rows, "top1_agreement": agree}
    return {"rounds": rounds, "openvino": openvino.__version__, "models": out}


def _conv_kinds(path: Path) -> dict[str, str]:
    """Kind of each convolution in ORT's optimised graph, by node name.

    ``stem`` (3 input channels), ``depthwise`` (one input channel per group), ``pointwise``
    (1x1) or ``full``; the weight is read from the fp32 ``Conv`` or the int8 ``QLinearConv``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    kinds = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "QLinearConv"):
            continue
        weight = shapes[node.input[3] if node.op_type == "QLinearConv" else node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if weight[1] == 3 and group == 1:
            kinds[node.name] = "stem"
        elif group > 1 and weight[1] == 1:
            kinds[node.name] = "depthwise"
        else:
            kinds[node.name] = "pointwise" if weight[2:] == [1, 1] else "full"
    return kinds


def _summed(per_node: dict[int, dict[str, float]], key_of) -> dict[str, dict[str, float]]:
    """Per-node times at each thread count summed by ``key_of(node key)`` (None = skipped)."""
    out: dict[str, dict[str, float]] = {}
    for threads, nodes in per_node.items():
        for node, us in nodes.items():
            key = key_of(node)
            if key is not None:
                entry = out.setdefault(key, {"1": 0.0, "2": 0.0})
                entry[str(threads)] = round(entry[str(threads)] + us, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["1"]))


def ort_profile(graphs: list[Path]) -> dict:
    """Kernel time per op type and per kind of convolution, 1 and 2 threads, batch 1 and 64."""
    out = {}
    for graph in graphs:
        kinds = _conv_kinds(graph)
        for batch, runs in ((1, 300), (64, 20)):
            per_node = {t: _profiled_kernel_us(graph, t, batch, runs) for t in (1, 2)}
            by_op = _summed(per_node, lambda key: key.split(" ")[0])
            by_kind = _summed(per_node, lambda key, k=kinds: k.get(key.split(" ", 1)[1]))
            by_conv = _summed(per_node, lambda key: key.split(" ", 1)[1] if "Conv" in key else None)
            out[f"{graph} bs{batch}"] = {
                "us_per_run_by_op": by_op,
                "us_per_run_by_conv_kind": by_kind,
                "us_per_run_by_conv": by_conv,
            }
            print(graph, batch, by_kind, by_op)
    return {"runs": {"bs1": 300, "bs64": 20}, "profiles": out}


def untrained_graphs(models: list[str], folder: Path, size: int = 64) -> list[Path]:
    """fp32 and PTQ int8 ONNX files of untrained EuroSAT-shaped models, for kernel timing.

    Kernel times do not depend on the weights' values, so these stand in for the trained
    files when none is at hand. Batch-norm statistics come from a few random batches, and
    calibration uses random images.
    """
    from satcompress.compress.quantize import PTQConfig, quantize_onnx
    from satcompress.models.deployable import export_onnx
    from satcompress.preprocess import InputSpec

    paths = []
    images = np.random.default_rng(0).integers(0, 256, (64, 3, size, size), np.uint8)
    for name in models:
        torch.manual_seed(0)
        model = sc.create_model(name, num_classes=10).train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(32, 3, size, size))
        fp32 = export_onnx(model.eval(), InputSpec(), (size, size), folder / f"{name}-fp32.onnx")
        config = PTQConfig(reduce_range=False)  # 8-bit weights, as when these were measured
        paths += [fp32, quantize_onnx(fp32, folder / f"{name}-int8.onnx", images, config)]
    return paths


def _untrained_kernels(models: list[str], dataset) -> dict:
    """:func:`int8_kernels` on the untrained files of ``models`` (timing; accuracy is chance)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = untrained_graphs(models, Path(tmp))
        pairs = list(zip(paths[::2], paths[1::2], strict=True))
        return {"model_names": models, **int8_kernels(pairs, dataset)}


def _untrained(measure, models: list[str], size: int) -> dict:
    """``measure`` on the fp32 and int8 files of untrained ``models`` (file names as keys)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(untrained_graphs(models, Path(tmp), size))
    if "profiles" in result:
        result["profiles"] = {Path(k).name: v for k, v in result["profiles"].items()}
    return {"model_names": models, "image_size": size, **result}


def main() -> None:
    parser = benchmark_parser(__doc__, "results/diagnostics.json")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="trained runs")
    parser.add_argument("--qat-runs", nargs="*", type=Path, default=[], help="QAT runs")
    parser.add_argument("--mobilenet", type=Path, help="MobileNetV2 run for qat-start")
    parser.add_argument("--graphs", nargs="*", type=Path, default=[], help="ONNX files")
    parser.add_argument("--latency-pair", nargs=2, type=Path, help="fp32 and int8 ONNX files")
    parser.add_argument("--profile", nargs="*", type=Path, default=[], help="ONNX files")
    parser.add_argument(
        "--profile-models", nargs="*", default=[], help="profile untrained fp32/int8 graphs"
    )
    parser.add_argument(
        "--profile-size", type=int, default=64, help="their input size (jobs named -SIZEpx)"
    )
    parser.add_argument(
        "--kernel-pairs", nargs="*", default=[], metavar="FP32:INT8", help="int8-kernels files"
    )
    parser.add_argument(
        "--kernel-models", nargs="*", default=[], help="int8-kernels-untrained models"
    )
    parser.add_argument(
        "--ort-quantizer", type=Path, metavar="CHECKPOINT", help="ort-quantizer's fp32 model"
    )
    parser.add_argument("--jobs", nargs="*", help="only these measurements (default: all)")
    args = parser.parse_args()
    done = read_json(args.out) if args.out.is_file() else {}
    loaded: list = []

    def dataset():  # decoded only for the jobs that need images
        if not loaded:
            loaded.append(load_eurosat(args.data_dir))
        return loaded[0]

    jobs = {
        "train-speed": lambda: train_speed(args.threads or 1),
        "train-accuracy": lambda: train_accuracy(args.runs, dataset()),
        "tta": lambda: tta(args.runs, dataset()),
    }
    if args.mobilenet:
        jobs["qat-start"] = lambda: qat_start(args.mobilenet, dataset())
    if args.qat_runs:
        jobs["ort-agreement"] = lambda: ort_agreement(args.qat_runs, dataset())
    if args.graphs:
        jobs["ort-ops"] = lambda: ort_ops(args.graphs)
    if args.latency_pair:
        jobs["latency-threads"] = lambda: latency_threads(*args.latency_pair)
    if args.profile:
        jobs["ort-profile"] = lambda: ort_profile(args.profile)
    if args.profile_models:
        suffix = "" if args.profile_size == 64 else f"-{args.profile_size}px"
        jobs[f"ort-profile-untrained{suffix}"] = lambda: _untrained(
            ort_profile, args.profile_models, args.profile_size
        )
        jobs[f"runtimes-untrained{suffix}"] = lambda: _untrained(
            runtime_comparison, args.profile_models, args.profile_size
        )
    if args.kernel_pairs:
        if not all(":" in item for item in args.kernel_pairs):
            raise SystemExit(f"--kernel-pairs expects FP32:INT8 pairs, got {args.kernel_pairs}")
        pairs = [tuple(Path(p) for p in item.split(":", 1)) for item in args.kernel_pairs]
        jobs["int8-kernels"] = lambda: int8_kernels(pairs, dataset())
    if args.kernel_models:
        jobs["int8-kernels-untrained"] = lambda: _untrained_kernels(args.kernel_models, dataset())
    inputs = [
        *args.runs,
        *args.qat_runs,
        args.mobilenet,
        *args.graphs,
        *(args.latency_pair or []),
        *args.profile,
        *[p for item in args.kernel_pairs for p in item.split(":")],
        args.ort_quantizer,
    ]
    missing = [str(p) for p in inputs if p is not None and not Path(p).exists()]
    if missing:  # before any dataset decoding, not as a traceback minutes in
        raise SystemExit(f"not found: {', '.join(missing)}")
    if args.ort_quantizer:
        jobs["ort-quantizer"] = lambda: _ort_quantizer(args.ort_quantizer, dataset())
    unknown = set(args.jobs or []) - set(jobs)
    if unknown:
        raise SystemExit(f"--jobs: {sorted(unknown)} not among {sorted(jobs)} (check the inputs)")
    jobs = {name: job for name, job in jobs.items() if not args.jobs or name in args.jobs}
    for name, job in jobs.items():
        if name not in done:
            done[name] = {**job(), "cpu": cpu_description()}
            atomic_write_json(args.out, done)
        print(name, done[name])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
