"""Quantization settings: validated, serialisable dataclasses stored in every recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from satcompress.compress.distill.config import DistillConfig
from satcompress.config import Config, ConfigError, load_yaml

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PTQ_MODES = ("auto", "static", "dynamic")
INT8_TYPES = ("uint8", "int8")
WEIGHT_BITS = tuple(range(1, 9))
FLOAT_BITS = 32  # in a bits map: keep this layer in floating point
ACTIVATION_BITS = tuple(range(2, 9))
FIRST_LAST_POLICIES = ("8bit", "same", "float")
WEIGHT_SCALES = ("mse", "max")


@dataclasses.dataclass
class PTQConfig(Config):
    """Post-training int8 quantization of the exported ONNX model with ONNX Runtime.

    Attributes:
        mode: ``static`` (QDQ int8 weights and activations, calibrated), ``dynamic`` (int8
            weights of MatMul/Gemm, activations quantized at run time: transformers' linear
            layers) or ``auto`` (dynamic for attention models, static otherwise).
        calibration: Activation range estimation: ``minmax``, ``entropy`` or ``percentile``.
        calibration_images: Number of train-split images used for calibration.
        percentile: Percentile kept by ``calibration="percentile"``.
        per_channel: One weight scale per output channel (else one per tensor).
        activation_type: ``uint8`` (asymmetric, fastest on x86) or ``int8``.
        weight_type: ``int8`` or ``uint8``.
        reduce_range: 7-bit weights (within +-64; the default). On x86 CPUs without VNNI,
            ONNX Runtime's fast uint8 x int8 kernels saturate with 8-bit weights, so
            sessions run those as uint8 (exact, but slower than fp32 for MobileNetV2:
            :mod:`satcompress.runtime.saturation`); 7-bit weights run on the fast kernels
            there, exactly, and the same kernels as 8-bit ones elsewhere. Measured on
            EuroSAT: the same test accuracy for ResNet-18, -0.06 points (3 images) for
            MobileNetV2, artifacts 11-13% smaller. ``False``: full 8-bit weights.
        equalize: Cross-layer equalisation of Conv -> Relu -> Conv pairs before quantizing.
        bias_correction: Correct each quantized convolution's bias by the mean output shift
            measured on the calibration images.
        quantize_preprocessing: Also quantize the uint8 -> float normalisation baked into the
            graph (off: it stays in float, and the first layer's input is quantized once).
        seed: Seed for picking the calibration images.
    """

    mode: str = "auto"
    calibration: str = "minmax"
    calibration_images: int = 512
    percentile: float = 99.999
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = True
    equalize: bool = False
    bias_correction: bool = False
    quantize_preprocessing: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        _choice("mode", self.mode, PTQ_MODES)
        _choice("calibration", self.calibration, CALIBRATION_METHODS)
        _choice("activation_type", self.activation_type, INT8_TYPES)
        _choice("weight_type", self.weight_type, INT8_TYPES)
        if not isinstance(self.reduce_range, bool):
            raise ConfigError(f"reduce_range must be true or false, got {self.reduce_range!r}")
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be >= 1, got {self.calibration_images}")
        if not 50 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclasses.dataclass
class QATConfig(Config):
    """Quantization-aware training (Brevitas fake-quantization through the one training loop).

    Weights are quantized per output channel (symmetric, narrow range; 1 bit = sign times a
    learned per-channel scale), activations per tensor at the input of every quantized layer
    (asymmetric unsigned). Batch norms train normally and are folded into the per-channel
    weight scales at export, which keeps the integer weights exact.

    Attributes:
        bits: Weight bit-width of the quantized layers: 1 to 8 (8, 4, 3, 2, 1 are the
            studied ones).
        activation_bits: Activation bit-width (2..8), or None to keep activations in float.
        bits_map: Per-layer weight bit-widths ``{module name: bits}`` (1..8, or 32 = keep in
            float); overrides ``bits`` and ``first_last``. Every name must be a Conv2d or Linear
            layer of the model.
        first_last: Policy for the first and last quantized layers: ``8bit``, ``same`` (as
            ``bits``) or ``float`` (not quantized).
        depthwise_bits: Weight bits of depthwise convolutions (``groups == in_channels``),
            None = ``bits``. A depthwise filter has only 9 weights per channel, so at 2 bits
            it loses far more than a dense one; ``8`` costs a few percent of the size.
        output_quant: Also quantize (8 bits) each quantized convolution's output after its
            batch norm, so ONNX Runtime runs it with int8 kernels (``QLinearConv``); off, only
            layer inputs are quantized and the runtime convolves dequantized weights in float.
            No effect with float activations (``activation_bits=None``).
        quant_after_activation: Put a convolution's output quantizer after the ReLU/ReLU6
            that directly follows its batch norm (torchvision's ``Conv2dNormActivation``)
            instead of before it: the 256 levels then cover only the values the next layer
            sees (after the batch norm, about half of them are negative and zeroed), and
            ONNX Runtime can drop the clamp into the int8 convolution. In torchvision ResNet
            blocks (whose shared ReLU is first split into one module per call) the ReLU after
            each residual sum gets an output quantizer too, so the sum runs as ``QLinearAdd``
            and the deployed graph is integer end to end. On by default; off puts every output
            quantizer after its batch norm (the placement of results before 2026-12-02).
        epochs: QAT epochs.
        lr: Peak learning rate; None = a tenth of the training recipe's.
        weight_scale: Weight scale initialisation below 8 bits: ``mse`` (learned, initialised by
            an MSE search) or ``max`` (max-abs statistics, not learned). 8 bits always uses max.
        calibration_images: Train images used to initialise the activation ranges before QAT.
        teacher: Distil from this teacher during QAT: ``self`` (the full-precision model being
            quantized), a run directory or weights file; None = no distillation.
        distill: Distillation settings (temperature, alpha, ...) when ``teacher`` is set.
    """

    bits: int = 8
    activation_bits: int | None = 8
    bits_map: dict[str, int] = dataclasses.field(default_factory=dict)
    first_last: str = "8bit"
    depthwise_bits: int | None = None
    output_quant: bool = True
    quant_after_activation: bool = True
    epochs: int = 3
    lr: float | None = None
    weight_scale: str = "mse"
    calibration_images: int = 256
    teacher: str | None = None
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.teacher is not None:
            self.teacher = str(self.teacher)
        if isinstance(self.bits_map, dict):
            self.bits_map = {str(k): v for k, v in self.bits_map.items()}
        super().__post_init__()

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        check_weight_bits(self.bits, "bits")
        if self.activation_bits is not None and self.activation_bits not in ACTIVATION_BITS:
            raise ConfigError(
                f"activation_bits must be 2 to 8 (or None for float activations), "
                f"got {self.activation_bits!r}"
            )
        for name, value in self.bits_map.items():
            if value != FLOAT_BITS:
                check_weight_bits(value, f"bits_map[{name!r}]")
        _choice("first_last", self.first_last, FIRST_LAST_POLICIES)
        if self.depthwise_bits is not None:
            check_weight_bits(self.depthwise_bits, "depthwise_bits")
        _choice("weight_scale", self.weight_scale, WEIGHT_SCALES)
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be >= 1, got {self.calibration_images}")


def check_weight_bits(bits: Any, name: str = "bits") -> int:
    """Return ``bits`` if it is a supported weight bit-width (1..8), else raise ConfigError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in WEIGHT_BITS:
        raise ConfigError(
            f"unsupported bit-width {name}={bits!r}: weights are quantized to 1 to 8 bits "
            "(8, 4, 3, 2, 1 are the studied ones)"
        )
    return bits


def load_bits_map(path: str | Path) -> dict[str, int]:
    """A ``{layer: bits}`` mapping from a YAML or JSON file (``layer: bits`` per line).

    Raises:
        ConfigError: If the file is missing, not a mapping, or holds a bad bit-width.
    """
    values = load_yaml(path)
    if "bits_map" in values and isinstance(values["bits_map"], dict):
        values = values["bits_map"]
    out = {}
    for name, bits in values.items():
        if bits != FLOAT_BITS:
            check_weight_bits(bits, f"{path}: {name}")
        out[str(name)] = bits
    return out


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
