"""The ``mct`` baseline: Sony's Model Compression Toolkit mixed-precision PTQ at BAIC's budget.

MCT (``pip install satcompress[mct]``) searches per-layer weight bit-widths (8, 4 or 2 bits
on its default IMX500 platform) under a weights-memory target with its own sensitivity metric
and integer program, then quantizes weights and activations post-training (no fine-tune).
With the target set to BAIC's byte budget its allocation is a third answer to BAIC's question,
recorded in ``candidates.jsonl`` like the other baselines (kind ``mct``):

* ``accuracy``: the quantized PyTorch model MCT returns (fake-quantized), on the validation
  split, in torch;
* ``predicted_bytes`` (= ``implied_bytes``): the weights memory its allocation implies, as MCT
  reports it (quantized kernels only: MCT does not count biases, and folds batch norms);
* ``bytes``: the ONNX file MCT's exporter writes (fake-quant: float weights, so about the
  fp32 size whatever the bit-widths; it is what MCT hands to a converter, not a packed file).

A budget under MCT's smallest allocation (every kernel at its lowest width) raises
:class:`~satcompress.search.allocate.InfeasibleBudgetError` with MCT's own message and that
minimum. MCT is imported here only, and only when the baseline runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from satcompress.compress.prune.common import accuracy
from satcompress.compress.quantize.ptq import calibration_images
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.search.allocate import InfeasibleBudgetError
from satcompress.search.budget import format_bytes

log = logging.getLogger(__name__)

__all__ = ["MCT_FILE", "mct_baseline", "require_mct"]

PACKAGE = "model_compression_toolkit"
INSTALL = "pip install satcompress[mct]"
MCT_FILE = "model.onnx"
LOG_FILE = "mct.log"
BATCH_SIZE = 32
_UNREACHABLE = "cannot be quantized to meet"  # MCT's message for a target under its minimum


def require_mct() -> None:
    """Check that MCT can be imported, without importing it.

    Raises:
        ConfigError: If ``model_compression_toolkit`` is not installed.
    """
    if importlib.util.find_spec(PACKAGE) is None:
        raise ConfigError(
            "the mct baseline needs Sony's Model Compression Toolkit, which is not installed: "
            f"{INSTALL} (or leave mct out of baselines)"
        )


def mct_baseline(
    model: nn.Module,
    spec: InputSpec,
    dataset: SceneDataset,
    budget: int,
    run_dir: str | os.PathLike,
    *,
    images: int,
    seed: int = 0,
) -> dict[str, Any]:
    """MCT's mixed-precision PTQ of ``model`` with ``budget`` bytes of weights: its record.

    Args:
        model: The float model (not modified).
        spec: Its input resolution and normalisation.
        dataset: Calibration images come from its training split, accuracy from ``val``.
        budget: The byte budget, MCT's weights-memory target.
        run_dir: Folder of the exported ONNX file and MCT's log.
        images: Training images for calibration and for MCT's mixed-precision sensitivity
            (BAIC's ``sensitivity_images``: the same number its own sensitivity table uses).
        seed: Seed of the calibration subset.

    Returns:
        The candidate record (``status`` ``ok``, or ``failed`` with MCT's error when MCT could
        not quantize the model at all).

    Raises:
        InfeasibleBudgetError: If the budget is under MCT's smallest allocation.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = _representative(_calibration(dataset, spec, images, seed))
    try:
        with _output_to(run_dir / LOG_FILE):
            quantized, info = _quantize(model, data, budget, images)
    except Exception as err:  # MCT raises a bare Exception (Logger.critical)
        if _UNREACHABLE in str(err):
            raise _infeasible(model, data, budget, err) from err
        log.error("mct baseline failed: %s", err)
        return _failed(err, budget, time.perf_counter() - started)
    record = _measured(quantized, info, spec, dataset, budget)
    record.update(_exported(quantized, data, run_dir / MCT_FILE))
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _measured(
    quantized: nn.Module, info: Any, spec: InputSpec, dataset: SceneDataset, budget: int
) -> dict[str, Any]:
    """The record of MCT's model: its allocation, implied bytes and validation accuracy."""
    bits = layer_bits(quantized)
    implied = _implied_bytes(quantized, info)
    return {
        **_base(budget),
        "label": f"MCT mixed-precision PTQ: {_bits_summary(bits)}",
        "layer_bits": bits,
        "predicted_bytes": implied,
        "implied_bytes": implied,
        "accuracy": accuracy(quantized, *_split(dataset, "val"), spec),
        "status": "ok" if implied <= budget else "over-budget",
        "note": "bytes: MCT's fake-quant ONNX export (float weights); "
        "predicted_bytes: the weights memory its allocation implies",
    }


def _exported(quantized: nn.Module, data: Callable[[], Iterator], path: Path) -> dict[str, Any]:
    """``bytes`` and ``file`` of MCT's ONNX export (``export_error`` instead if it failed)."""
    try:
        export_onnx(quantized, data, path)
    except Exception as err:  # the accuracy and allocation stand without the file
        log.error("mct baseline: the ONNX export failed: %s", err)
        return {"bytes": None, "file": None, "export_error": f"{type(err).__name__}: {err}"}
    return {"bytes": path.stat().st_size, "file": str(path)}


def layer_bits(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per quantized layer of an MCT model: its kernel's bit-width and number of weights."""
    from mct_quantizers import PytorchQuantizationWrapper

    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, PytorchQuantizationWrapper):
            continue
        for attr, quantizer in module.weights_quantizers.items():
            weight = getattr(module, str(attr), None)
            if weight is None:
                weight = getattr(module.layer, str(attr))
            out[name] = {"bits": int(quantizer.num_bits), "params": int(weight.numel())}
    return out


def export_onnx(model: nn.Module, data: Callable[[], Iterator], path: Path) -> Path:
    """``mct.exporter.pytorch_export_model`` to a fake-quant ONNX file; its path.

    MCT calls ``torch.onnx.export`` without ``dynamo``; newer torch defaults to the dynamo
    exporter, which rejects MCT's ``dynamic_axes``, so the TorchScript exporter is asked for.
    """
    import model_compression_toolkit as mct

    export = functools.partial(torch.onnx.export, dynamo=False)
    with mock.patch.object(torch.onnx, "export", export):
        mct.exporter.pytorch_export_model(
            model,
            save_model_path=str(path),
            repr_dataset=data,
            quantization_format=mct.exporter.QuantizationFormat.FAKELY_QUANT,
        )
    return path


def _quantize(
    model: nn.Module, data: Callable[[], Iterator], budget: int, images: int
) -> tuple[nn.Module, Any]:
    """``mct.ptq.pytorch_post_training_quantization`` under a weights-memory target."""
    import model_compression_toolkit as mct

    core = mct.core.CoreConfig(
        mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig(num_of_images=images)
    )
    return mct.ptq.pytorch_post_training_quantization(
        _float_copy(model),
        data,
        target_resource_utilization=mct.core.ResourceUtilization(weights_memory=budget),
        core_config=core,
        target_platform_capabilities=mct.get_target_platform_capabilities(),
    )


def _infeasible(
    model: nn.Module, data: Callable[[], Iterator], budget: int, err: BaseException
) -> InfeasibleBudgetError:
    """MCT's error for a target under its minimum, with the minimum it implies."""
    smallest = minimum_bytes(model, data)
    return InfeasibleBudgetError(
        f"budget {format_bytes(budget)} is below MCT's smallest weights memory, about "
        f"{format_bytes(smallest)} (every kernel at its lowest bit-width); MCT: {err}",
        min_bytes=smallest,
    )


def minimum_bytes(model: nn.Module, data: Callable[[], Iterator]) -> float:
    """MCT's weights memory with every kernel at the lowest width its platform allows."""
    import model_compression_toolkit as mct

    tpc = mct.get_target_platform_capabilities()
    default, lowest = _kernel_bits(tpc)
    with _output_to(os.devnull):
        usage = mct.core.pytorch_resource_utilization_data(
            _float_copy(model), data, target_platform_capabilities=tpc
        )
    return float(usage.weights_memory) * lowest / default  # usage is at the default width


def _kernel_bits(tpc: Any) -> tuple[int, int]:
    """The default and the lowest kernel bit-width of the platform's mixed-precision ops."""
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR

    defaults, widths = set(), set()
    for operators in tpc.operator_set or ():
        options = operators.qc_options
        if options is None:
            continue
        for config in options.quantization_configurations:
            kernel = config.attr_weights_configs_mapping.get(KERNEL_ATTR)
            if kernel is not None and kernel.enable_weights_quantization:
                widths.add(kernel.weights_n_bits)
        kernel = options.base_config.attr_weights_configs_mapping.get(KERNEL_ATTR)
        if kernel is not None:
            defaults.add(kernel.weights_n_bits)
    return max(defaults, default=8), min(widths, default=8)


def _implied_bytes(model: nn.Module, info: Any) -> int:
    """MCT's final weights memory, else the bit-widths times the weights of its layers."""
    usage = getattr(info, "final_resource_utilization", None)
    memory = getattr(usage, "weights_memory", None)
    if memory is not None and math.isfinite(memory):
        return math.ceil(memory)
    return math.ceil(sum(e["bits"] * e["params"] for e in layer_bits(model).values()) / 8)


def _bits_summary(bits: dict[str, dict[str, int]]) -> str:
    """``8b x3, 4b x1, 2b x1`` (layers per width)."""
    counts: dict[int, int] = {}
    for entry in bits.values():
        counts[entry["bits"]] = counts.get(entry["bits"], 0) + 1
    return ", ".join(f"{b}b x{n}" for b, n in sorted(counts.items(), reverse=True)) or "none"


def _calibration(
    dataset: SceneDataset, spec: InputSpec, count: int, seed: int
) -> list[torch.Tensor]:
    """``count`` training images (seeded), preprocessed, in batches of :data:`BATCH_SIZE`."""
    images = torch.from_numpy(calibration_images(dataset, count, seed))
    preprocess = Preprocess(spec)
    with torch.no_grad():
        return [preprocess(images[i : i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)]


def _representative(batches: list[torch.Tensor]) -> Callable[[], Iterator[list[torch.Tensor]]]:
    """MCT's representative dataset: a callable that yields ``[batch]`` lists."""

    def generate() -> Iterator[list[torch.Tensor]]:
        for batch in batches:
            yield [batch]

    return generate


def _float_copy(model: nn.Module) -> nn.Module:
    """A float32 copy in eval mode on the CPU (MCT moves it to its own device)."""
    import copy

    return copy.deepcopy(model).float().cpu().eval()


def _split(dataset: SceneDataset, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    split = dataset.splits[name]
    return split.images, split.labels


def _base(budget: int) -> dict[str, Any]:
    """The fields every mct record has."""
    from importlib.metadata import version

    return {
        "id": "mct",
        "kind": "mct",
        "plan": None,
        "predicted_cost": None,
        "split": "val",
        "epochs": 0,
        "budget_bytes": budget,
        "mct_version": version("model-compression-toolkit"),
    }


def _failed(err: BaseException, budget: int, seconds: float) -> dict[str, Any]:
    return {
        **_base(budget),
        "label": "MCT mixed-precision PTQ",
        "bytes": None,
        "predicted_bytes": None,
        "accuracy": None,
        "status": "failed",
        "error": f"{type(err).__name__}: {err}",
        "seconds": round(seconds, 2),
    }


@contextlib.contextmanager
def _output_to(path: str | os.PathLike) -> Iterator[None]:
    """Send this process's standard output (file descriptor 1) to ``path`` meanwhile.

    MCT's integer-program solver (PuLP's CBC, a subprocess) prints its whole log there.
    """
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)
