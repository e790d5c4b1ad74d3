"""Quantization-aware training with Brevitas, through the one training loop.

:func:`prepare_qat` swaps every ``nn.Conv2d``/``nn.Linear`` of any model (CNNs and timm ViTs
alike: no graph tracing) for Brevitas' ``QuantConv2d``/``QuantLinear``: per-output-channel
symmetric weights at 1..8 bits (1 bit: sign times a learned per-channel scale) and an
asymmetric unsigned activation quantizer on each layer's input (unless that input is already
another layer's quantized output: :func:`layers_fed_by`). Batch norms are kept and
train as usual; :mod:`satcompress.compress.quantize.export` folds them into the per-channel
weight scales, which leaves the integer weights exact. With ``output_quant`` (default) each
convolution's output is also quantized after its batch norm, which is what ONNX Runtime needs
to run the convolution with int8 kernels (``QLinearConv``) instead of in float. Torchvision
ResNet blocks first get one ReLU module per call (:func:`split_reused_activations`), so that
with ``quant_after_activation`` every ReLU, the residual ones included, has its own quantizer.

:func:`qat` calibrates the activation ranges, then fine-tunes with
:func:`satcompress.train.train` (optionally distilling from the full-precision model);
:func:`satcompress.compress.quantize.quantize` then writes the QDQ ONNX file and the artifact.

Why Brevitas and what is written here: Brevitas provides the quantizers (learned scales,
straight-through estimators, calibration); the layer swap by module name (instead of its FX
graph mode, which timm ViTs defeat), the 1-bit per-channel quantizer and the export are ours.

Divergence (a NaN or infinite loss, common at 1 bit): the training task raises
``FloatingPointError``; :func:`qat` stops that run, restores the last good checkpoint (or the
calibrated starting point), writes ``qat_failure.json`` and returns ``status="diverged"``
with the message instead of raising.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from satcompress.card import check_classes as check_card_classes
from satcompress.checkpoint import TrainedModel, load_trained, pruning_architecture
from satcompress.compress.distill import DistillationLoss, check_teacher_classes, load_teacher
from satcompress.compress.quantize.config import FLOAT_BITS, QATConfig
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.models import create_model
from satcompress.models.pruned import rebuild
from satcompress.models.weights import save_weights
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.train import TrainConfig, TrainResult, load_config_dataset, make_card, train
from satcompress.train.config import recipe_fields
from satcompress.utils.io import atomic_write_bytes, atomic_write_json, file_digest
from satcompress.utils.lock import holds_run_lock

with warnings.catch_warnings():  # Brevitas warns at import about optional CUDA kernels
    warnings.simplefilter("ignore")
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.inject.enum import ScalingImplType, ScalingPerOutputType, StatsOp
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
    from brevitas.quant import (
        Int8WeightPerChannelFloat,
        Int8WeightPerChannelFloatMSE,
        ShiftedUint8ActPerTensorFloat,
    )
    from brevitas.quant.binary import SignedBinaryWeightPerTensorConst

log = logging.getLogger(__name__)

QAT_FILE = "qat.yaml"
FAILURE_FILE = "qat_failure.json"
QUANTIZABLE = (nn.Conv2d, nn.Linear)


class BinaryWeightPerChannel(SignedBinaryWeightPerTensorConst):
    """1-bit weights: ``sign(w)`` times a learned per-output-channel scale.

    Brevitas ships binary quantizers with a constant per-tensor scale only; this one starts
    from each channel's mean absolute weight (XNOR-Net) and learns it. The scale has
    Brevitas's usual floor: an all-zero channel (unstructured pruning can leave one in a small
    layer) would otherwise get scale 0, and its codes 0/0.
    """

    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    scaling_stats_op = StatsOp.AVE
    scaling_per_output_type = ScalingPerOutputType.CHANNEL
    scaling_min_val = 1e-10


@dataclasses.dataclass
class QATResult:
    """What :func:`qat` returns.

    Attributes:
        model: The fake-quantized PyTorch model (Brevitas layers; eval mode).
        input_spec: Its input resolution and normalisation.
        run_dir: The run directory.
        layer_bits: Weight bits per quantized layer (None = kept in float).
        status: ``ok`` or ``diverged``.
        message: Why the run stopped early (empty when ``ok``).
        train: The training result (None when no epoch ran or training diverged).
        dataset: The dataset trained on.
        config: The QAT settings.
        train_config: The training settings used.
    """

    model: nn.Module
    input_spec: InputSpec
    run_dir: Path
    layer_bits: dict[str, int | None]
    status: str
    message: str
    train: TrainResult | None
    dataset: SceneDataset
    config: QATConfig
    train_config: TrainConfig


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Conv2d`` and ``nn.Linear`` layers of ``model`` by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, QUANTIZABLE) and name
    }


def execution_order(model: nn.Module, probe: torch.Tensor) -> list[str]:
    """Names of the quantizable layers in the order a forward pass calls them."""
    order: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda m, a, name=name: order.append(name))
        for name, module in quantizable_layers(model).items()
    ]
    run_with_hooks(model, probe, hooks)
    return list(dict.fromkeys(order))


def run_with_hooks(model: nn.Module, probe: torch.Tensor, hooks: list) -> None:
    """One eval-mode forward pass of ``probe``; then removes ``hooks`` and restores the mode."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)


def resolve_layer_bits(
    model: nn.Module, config: QATConfig, probe: torch.Tensor
) -> dict[str, int | None]:
    """Weight bits of every quantizable layer (None = keep in float).

    ``bits`` everywhere, ``depthwise_bits`` for depthwise convolutions, the ``first_last``
    policy for the first and last layers called, then ``bits_map`` on top.

    Raises:
        ConfigError: If ``bits_map`` names a layer the model does not have (the message lists
            close matches and the available layers) or the model has no such layers.
    """
    layers = quantizable_layers(model)
    if not layers:
        raise ConfigError("the model has no Conv2d or Linear layer to quantize")
    _check_bits_map(config.bits_map, layers)
    bits: dict[str, int | None] = {name: config.bits for name in layers}
    if config.depthwise_bits is not None:
        for name, layer in layers.items():
            if _is_depthwise(layer):
                bits[name] = config.depthwise_bits
    called = execution_order(model, probe) or list(layers)
    edge = {"8bit": 8, "same": config.bits, "float": None}[config.first_last]
    for name in {called[0], called[-1]}:
        bits[name] = edge
    for name, value in config.bits_map.items():
        bits[name] = None if value == FLOAT_BITS else int(value)
    return bits


def _is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels


def _check_bits_map(bits_map: dict[str, int], layers: dict[str, nn.Module]) -> None:
    missing = [name for name in bits_map if name not in layers]
    if not missing:
        return
    names = list(layers)
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    raise ConfigError(
        f"bits_map names layers the model does not have: {'; '.join(hints)}. "
        f"Quantizable layers (Conv2d/Linear): {shown}"
    )


def prepare_qat(
    model: nn.Module, config: QATConfig, probe: torch.Tensor
) -> tuple[nn.Module, dict[str, int | None]]:
    """A copy of ``model`` with Brevitas fake-quantized Conv2d/Linear layers.

    Args:
        model: The full-precision model (not modified).
        config: Bits, activation bits, per-layer map and first/last policy.
        probe: A float input batch at the model's resolution (finds the layer order).

    Returns:
        The QAT model and the weight bits per layer (None = kept in float).
    """
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    split_reused_activations(model)
    layer_bits = resolve_layer_bits(model, config, probe)
    quantize_outputs = config.output_quant and config.activation_bits is not None
    norms = conv_batch_norms(model) if quantize_outputs else {}
    quantized_norms = {norms[name] for name, bits in layer_bits.items() if name in norms and bits}
    after = norm_activations(model, quantized_norms, probe) if config.quant_after_activation else {}
    # The module whose output each output quantizer follows: the norm, or its activation.
    outputs = {name: after.get(norm, norm) for name, norm in norms.items()}
    quantized_outputs = {outputs[n] for n in outputs if layer_bits.get(n)}
    if after:
        quantized_outputs |= residual_activations(model, layer_bits)
    requantized = layers_fed_by(model, quantized_outputs, probe)
    for name, bits in layer_bits.items():
        if bits is not None:
            layer = model.get_submodule(name)
            quant = _quant_layer(layer, bits, config, quantize_input=name not in requantized)
            _set_module(model, name, quant)
    for name in sorted(quantized_outputs):
        source = model.get_submodule(name)
        _set_module(model, name, nn.Sequential(source, _output_quant()))
    return model, layer_bits


def residual_activations(model: nn.Module, layer_bits: dict[str, int | None]) -> set[str]:
    """The ReLU after each residual sum of a ResNet block whose convolutions are quantized.

    One output quantizer there serves both readers of the block's output, the next block's
    convolution and its skip connection, so ONNX Runtime runs the sum as ``QLinearAdd`` (the
    ReLU folds into the quantization) instead of dequantizing, adding and clamping in float.
    Used with ``quant_after_activation``, after :func:`split_reused_activations`.
    """
    found = set()
    for name, block in model.named_modules():
        if isinstance(block, _BasicBlockOwnReLUs):
            last_conv, relu = "conv2", "relu_out"
        elif isinstance(block, _BottleneckOwnReLUs):
            last_conv, relu = "conv3", "relu"
        else:
            continue
        if layer_bits.get(f"{name}.{last_conv}"):
            found.add(f"{name}.{relu}")
    return found


def conv_batch_norms(model: nn.Module) -> dict[str, str]:
    """``{conv: batch norm}`` for each Conv2d whose BatchNorm2d is registered right after it.

    Torchvision and timm blocks register a convolution's batch norm next to it (``conv1,
    bn1``; ``Conv2dNormActivation``); the export checks that the graph agrees.
    """
    pairs = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (name, conv), (next_name, norm) in zip(children, children[1:], strict=False):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and norm.num_features == conv.out_channels
            ):
                prefix = f"{parent_name}." if parent_name else ""
                pairs[prefix + name] = prefix + next_name
    return pairs


class _BasicBlockOwnReLUs(BasicBlock):
    """Torchvision's ``BasicBlock`` with a second ReLU module for the residual sum.

    The stock block calls ``self.relu`` twice (after ``bn1`` and after the sum), so one
    output quantizer cannot follow it. Same computation, same state dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + identity)


class _BottleneckOwnReLUs(Bottleneck):
    """Torchvision's ``Bottleneck`` with one ReLU module per call (see ``_BasicBlockOwnReLUs``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _insert_child(parent: nn.Module, after: str, name: str, module: nn.Module) -> None:
    """Register ``module`` as ``parent.<name>`` right after child ``after``.

    :func:`norm_activations` reads the registration order.
    """
    children = list(parent._modules.items())
    parent._modules.clear()
    for key, child in children:
        parent._modules[key] = child
        if key == after:
            parent._modules[name] = module


def split_reused_activations(model: nn.Module) -> int:
    """Give every torchvision ResNet block one ReLU module per call, in place.

    Torchvision's ``BasicBlock``/``Bottleneck`` reuse one ``relu`` module after the batch norms
    and after the residual sum, so :func:`norm_activations` must leave it out and the block's
    inner ReLU stays a float op between two quantizations in the deployed graph. The blocks
    are re-classed (no weights change, no state-dict key changes) so that each batch norm's
    ReLU is its own module, registered right after it.

    Why by hand: the blocks' ``forward`` is fixed code; neither Brevitas nor torchvision
    offers a way to un-share a module.

    Returns:
        The number of blocks changed.
    """
    changed = 0
    for block in model.modules():
        if type(block) is BasicBlock:
            block.__class__ = _BasicBlockOwnReLUs
            block.add_module("relu_out", copy.deepcopy(block.relu))
        elif type(block) is Bottleneck:
            block.__class__ = _BottleneckOwnReLUs
            _insert_child(block, "bn1", "relu1", copy.deepcopy(block.relu))
            _insert_child(block, "bn2", "relu2", copy.deepcopy(block.relu))
        else:
            continue
        changed += 1
    return changed


#: Activations an output quantizer may follow: they map a batch norm's output to a range
#: that starts at 0, so an unsigned 8-bit grid spends no levels on values they zero.
_CLAMPING_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def norm_activations(model: nn.Module, norms: set[str], probe: torch.Tensor) -> dict[str, str]:
    """``{norm: activation}`` for each norm whose output goes straight into a ReLU/ReLU6.

    Only an activation module registered right after the norm, called once per forward pass
    and on exactly that norm's output (torchvision's ``Conv2dNormActivation``). A module
    reused elsewhere (a stock ResNet block's ``relu`` also runs after the residual sum, until
    :func:`split_reused_activations`) would share one quantizer between two tensors, so it
    is left out.
    """
    candidates = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        prefix = f"{parent_name}." if parent_name else ""
        for (name, _), (next_name, act) in zip(children, children[1:], strict=False):
            if prefix + name in norms and isinstance(act, _CLAMPING_ACTIVATIONS):
                candidates[prefix + next_name] = prefix + name
    produced: dict[str, tuple[torch.Tensor, int]] = {}
    calls: dict[str, list[bool]] = {act: [] for act in candidates}

    def remember(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            produced[name] = (out, out._version)

        return hook

    def check(act: str):
        def hook(module: nn.Module, args: tuple) -> None:
            out, version = produced.get(candidates[act], (None, -1))
            calls[act].append(args[0] is out and out._version == version)

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(remember(n)) for n in norms]
    hooks += [model.get_submodule(a).register_forward_pre_hook(check(a)) for a in candidates]
    run_with_hooks(model, probe, hooks)
    return {norm: act for act, norm in candidates.items() if calls[act] == [True]}


def layers_fed_by(model: nn.Module, sources: set[str], probe: torch.Tensor) -> set[str]:
    """Quantizable layers whose input is exactly the output of one of the ``sources`` modules.

    Such a layer's input is already quantized by the source's output quantizer; quantizing it
    again (a second scale) would be a ``Q -> DQ -> Q -> DQ`` chain that ONNX Runtime collapses
    into one quantization, so the deployed model would differ from the trained one.
    """
    # The tensors themselves (not ids, which are reused) and their version counters: an
    # in-place op in between (a ReLU6 after the batch norm) bumps the version.
    produced: list[tuple[torch.Tensor, int]] = []
    fed: set[str] = set()

    def remember(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        produced.append((out, out._version))

    def check(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if any(args[0] is out and out._version == v for out, v in produced):
                fed.add(name)

        return hook

    hooks = [model.get_submodule(name).register_forward_hook(remember) for name in sources]
    hooks += [
        layer.register_forward_pre_hook(check(name))
        for name, layer in quantizable_layers(model).items()
    ]
    run_with_hooks(model, probe, hooks)
    return fed


def _output_quant() -> nn.Module:
    return QuantIdentity(
        act_quant=ShiftedUint8ActPerTensorFloat, bit_width=8, return_quant_tensor=False
    )


def _quant_layer(
    layer: nn.Module, bits: int, config: QATConfig, *, quantize_input: bool = True
) -> nn.Module:
    kwargs: dict[str, Any] = {"return_quant_tensor": False, "bias": layer.bias is not None}
    if bits == 1:
        kwargs["weight_quant"] = BinaryWeightPerChannel
    else:
        learned = bits < 8 and config.weight_scale == "mse"
        kwargs["weight_quant"] = (
            Int8WeightPerChannelFloatMSE if learned else (Int8WeightPerChannelFloat)
        )
        kwargs["weight_bit_width"] = bits
    if config.activation_bits is not None and quantize_input:
        kwargs["input_quant"] = ShiftedUint8ActPerTensorFloat
        kwargs["input_bit_width"] = config.activation_bits
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ConfigError(f"QAT supports zero-padded convolutions only ({layer})")
        quant = QuantConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=layer.groups, **kwargs,
        )  # fmt: skip
    else:
        quant = QuantLinear(layer.in_features, layer.out_features, **kwargs)
    with torch.no_grad():
        quant.weight.copy_(layer.weight)
        if layer.bias is not None:
            quant.bias.copy_(layer.bias)
    return quant.to(layer.weight.device)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quant_layers(model: nn.Module) -> dict[str, QuantWeightBiasInputOutputLayer]:
    """The Brevitas quantized layers of a QAT model by module name."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, QuantWeightBiasInputOutputLayer)
    }


def output_quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """The output quantizers (Brevitas ``QuantIdentity``) of a QAT model by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantIdentity)}


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Initialise the quantizers: activation ranges, then weight scales.

    Activation ranges come from data in Brevitas' calibration mode; one more forward pass
    with quantization on initialises the weight scales.

    Args:
        model: A QAT model from :func:`prepare_qat`.
        batches: Preprocessed float input batches.
    """
    was_training = model.training
    batches = list(batches)
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for batch in batches:
            model(batch)
    with torch.no_grad():
        model(batches[0])
    model.train(was_training)


def load_qat_model(run_dir: str | Path) -> tuple[nn.Module, InputSpec, dict[str, Any]]:
    """Rebuild a QAT run's fake-quantized model from ``qat.yaml`` and ``model.safetensors``.

    Returns:
        The model (eval mode), its input spec and the saved ``qat.yaml`` content.

    Raises:
        FileNotFoundError: If the run directory holds no QAT run.
    """
    run_dir = Path(run_dir)
    settings_path = run_dir / QAT_FILE
    weights = run_dir / "model.safetensors"
    if not settings_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{run_dir} holds no QAT run ({QAT_FILE} + model.safetensors)")
    settings = yaml.safe_load(settings_path.read_text())
    source = settings["source"]
    spec = InputSpec.from_dict(source["input"])
    base = create_model(source["model"], int(source["num_classes"]), **source["model_kwargs"])
    if source.get("pruning"):  # quantized after structural pruning: the pruned shapes first
        rebuild(base, source["pruning"])
    probe = torch.zeros(2, 3, *(spec.size or tuple(source["image_size"])))
    # Runs saved before quant_after_activation existed placed every quantizer on the norms.
    saved = {"quant_after_activation": False, **settings["qat"]}
    model, _ = prepare_qat(base, QATConfig.from_dict(saved), probe)
    calibrate(model, [probe])  # builds the lazily initialised quantizer state
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), spec, settings


def qat_train_config(
    card: dict[str, Any],
    config: QATConfig,
    spec: InputSpec,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The training settings of a QAT run: the model's own recipe, fine-tuning style.

    The recipe stored in the checkpoint's card, with the QAT epochs, a tenth of its
    learning rate (unless ``config.lr``), a cosine schedule with a short warm-up, no EMA,
    and the checkpoint's exact normalisation; ``overrides`` win over all of these.
    """
    recipe = recipe_fields(card)
    base_lr = float(recipe.get("lr", TrainConfig.lr))
    values = {
        **recipe,
        "model": card.get("model", recipe.get("model", "model")),
        "model_kwargs": dict(card.get("model_kwargs", recipe.get("model_kwargs", {}))),
        "pretrained": False,
        "weights": None,
        "new_head": False,
        "epochs": max(1, config.epochs),
        "lr": config.lr if config.lr is not None else base_lr / 10,
        "schedule": "cosine",
        "warmup": 0.05,
        "ema_decay": None,
        "normalize": "custom",
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input_size": spec.size[0] if spec.size and spec.size[0] == spec.size[1] else None,
    }
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


@holds_run_lock
def qat(
    checkpoint: str | Path | TrainedModel,
    config: QATConfig,
    run_dir: str | Path,
    *,
    train_config: TrainConfig | None = None,
    dataset: SceneDataset | None = None,
    resume: bool = False,
    progress: bool = True,
) -> QATResult:
    """Quantization-aware training of a trained model.

    Args:
        checkpoint: The full-precision model: a run directory or weights file (with its card),
            or a :class:`satcompress.TrainedModel`.
        config: The QAT settings.
        run_dir: Output folder (a training run directory, plus ``qat.yaml``).
        train_config: Training settings; default :func:`qat_train_config` of the card. Its
            epochs are replaced by ``config.epochs``.
        dataset: An already loaded dataset (default: the one the recipe names).
        resume: Continue an interrupted QAT run from its last checkpoint.
        progress: Show progress bars.

    Returns:
        A :class:`QATResult`; ``status == "diverged"`` when training hit a NaN/inf loss.

    Raises:
        ConfigError: For bad settings (e.g. a bits map naming missing layers).
    """
    run_dir = Path(run_dir)
    trained = checkpoint if isinstance(checkpoint, TrainedModel) else load_trained(checkpoint)
    spec = trained.input_spec
    train_config = train_config or qat_train_config(trained.card, config, spec)
    if config.epochs > 0 and train_config.epochs != config.epochs:
        train_config = train_config.replace(epochs=config.epochs)  # QATConfig.epochs decides
    dataset = dataset or load_config_dataset(train_config, progress)
    check_classes(trained, dataset)
    L.seed_everything(train_config.seed, workers=True, verbose=False)
    size = spec.size or dataset.image_size
    model, layer_bits = prepare_qat(trained.model, config, torch.zeros(2, 3, *size))
    calibrate(model, calibration_batches(dataset, spec, config.calibration_images))
    _save_settings(run_dir, config, trained, dataset, layer_bits)
    model.train()  # Lightning keeps each module's mode: a loaded model starts in eval mode
    initial = copy.deepcopy(model.state_dict())
    loss = _distill_loss(config, trained, model, train_config, dataset)
    status, message, result = "ok", "", None
    try:
        if config.epochs > 0:
            result = train(
                train_config,
                run_dir,
                model=model,
                dataset=dataset,
                loss=loss,
                resume=resume,
                progress=progress,
            )
    except FloatingPointError as err:
        status, message = "diverged", _divergence_message(err, config)
        log.error("%s", message)
        restored = _recover(model, run_dir, initial)
        failure = {"status": status, "message": message, "error": str(err)}
        failure["restored"] = str(restored) if restored else "calibrated starting point"
        atomic_write_json(run_dir / FAILURE_FILE, failure)
    finally:
        if isinstance(loss, DistillationLoss):
            loss.remove_hooks()
    model.eval()
    if result is None:
        _save_model(model, run_dir, train_config, dataset, spec, config, status, message)
    else:
        _update_card(result, config, layer_bits)
    return QATResult(
        model, spec, run_dir, layer_bits, status, message, result, dataset, config, train_config
    )


def check_classes(trained: TrainedModel, dataset: SceneDataset) -> None:
    """Refuse a model trained on other classes than ``dataset``'s, naming both."""
    check_card_classes(trained.card, dataset.classes, trained.weights_path)


def calibration_batches(
    dataset: SceneDataset, spec: InputSpec, count: int, batch_size: int = 64
) -> list[torch.Tensor]:
    """``count`` preprocessed training images, in batches, for the activation quantizers."""
    from satcompress.compress.quantize.ptq import calibration_images

    images = torch.from_numpy(calibration_images(dataset, count))
    preprocess = Preprocess(spec)
    return [preprocess(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]


def _distill_loss(
    config: QATConfig,
    trained: TrainedModel,
    student: nn.Module,
    train_config: TrainConfig,
    dataset: SceneDataset,
) -> DistillationLoss | None:
    if config.teacher is None:
        return None
    # "self": the full-precision model being quantized (the student is a separate copy)
    teacher = load_teacher(
        trained if config.teacher == "self" else config.teacher,
        num_classes=len(dataset.classes),
    )
    check_teacher_classes(teacher, dataset.classes, dataset.name, dataset.image_size)
    return DistillationLoss(
        teacher.model,
        teacher.input_spec,
        config.distill,
        label_smoothing=train_config.label_smoothing,
        student=student,
        student_spec=trained.input_spec,
        image_size=dataset.image_size,
        channels_last=train_config.channels_last,
        augment=train_config.augment,
    )


def _divergence_message(err: Exception, config: QATConfig) -> str:
    return (
        f"QAT at {config.bits} bits diverged: {err}. The run was stopped; the model is the "
        "last good checkpoint (or the calibrated starting point if no epoch finished)"
    )


def _recover(model: nn.Module, run_dir: Path, initial: dict[str, torch.Tensor]) -> Path | None:
    """Load the last good weights into ``model``; return the checkpoint used (None: initial)."""
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
            if all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
                model.load_state_dict(weights)
                return path
    model.load_state_dict(initial)
    return None


def _save_settings(
    run_dir: Path,
    config: QATConfig,
    trained: TrainedModel,
    dataset: SceneDataset,
    layer_bits: dict[str, int | None],
) -> None:
    card = trained.card
    source = {
        "checkpoint": str(trained.weights_path),
        "model": card["model"],
        "model_kwargs": dict(card.get("model_kwargs", {})),
        "num_classes": len(dataset.classes),
        "classes": list(dataset.classes),
        "input": trained.input_spec.to_dict(),
        "image_size": list(dataset.image_size),
        "weights_sha256": card.get("weights_sha256"),
        "dataset": dataset.name,
        "data_dir": str(dataset.root),
        "split_dir": str(dataset.split_dir) if dataset.split_dir else None,
        "split_fingerprint": dataset.split_fingerprint,
        "pruning": pruning_architecture(trained),
    }
    settings = {"qat": config.to_dict(), "source": source, "layer_bits": layer_bits}
    atomic_write_bytes(run_dir / QAT_FILE, yaml.safe_dump(settings, sort_keys=False).encode())


def _save_model(
    model: nn.Module,
    run_dir: Path,
    train_config: TrainConfig,
    dataset: SceneDataset,
    spec: InputSpec,
    config: QATConfig,
    status: str,
    message: str,
) -> None:
    """Weights and card when ``train()`` did not write them (no epoch, or divergence)."""
    weights = run_dir / "model.safetensors"
    save_weights(model, weights)
    card = make_card(
        train_config.model, train_config.model_kwargs, dataset, spec, train_config.to_dict()
    )
    card["recipe"]["qat"] = config.to_dict()
    card.update(
        qat_status=status, qat_message=message, weights_sha256=file_digest(weights, "sha256")
    )
    atomic_write_json(run_dir / "model.json", card)


def _update_card(result: TrainResult, config: QATConfig, layer_bits: dict[str, Any]) -> None:
    result.card["recipe"] = {**result.card["recipe"], "qat": config.to_dict()}
    result.card["qat_status"] = "ok"
    if result.is_global_zero:
        atomic_write_json(result.run_dir / "model.json", result.card)
