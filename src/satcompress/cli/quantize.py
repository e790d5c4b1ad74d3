r"""``satcompress quantize``: PTQ (int8) or QAT (8 to 1 bits) of a trained model.

Usage::

    satcompress quantize --method ptq --checkpoint runs/r18 --run-dir runs/r18_int8
    satcompress quantize --method qat --bits 2 --epochs 3 --teacher self \\
        --checkpoint runs/r18 --run-dir runs/r18_w2 [--bits-map bits.yaml]

The run directory receives the quantized ONNX graph, the deployable artifact ``model.satc``
and ``record.json`` (accuracy and latency of the artifact in ONNX Runtime, its size next to
the bound sum(params x bits) / 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

from satcompress.cli.common import (
    add_data_flags,
    add_field_flag,
    add_sign_flag,
    sign_artifact,
    signing_key,
    source_and_data,
)
from satcompress.compress.quantize.config import (
    CALIBRATION_METHODS,
    FIRST_LAST_POLICIES,
    PTQ_MODES,
    WEIGHT_BITS,
    WEIGHT_SCALES,
    PTQConfig,
    QATConfig,
    load_bits_map,
)
from satcompress.config import ConfigError

EXIT_DIVERGED = 3
_TRAIN_OVERRIDES = ("batch_size", "limit_batches", "threads", "channels_last", "seed", "optimizer")
#: Flags (by dest) of one method only; given with the other, they are refused, not ignored.
#: ``--calibration-images`` and ``--seed`` serve both.
_PTQ_ONLY = (
    "ptq_mode",
    "calibration",
    "percentile",
    "per_channel",
    "reduce_range",
    "equalize",
    "bias_correction",
)
_QAT_ONLY = (
    "bits_map", "teacher", "epochs", "activation_bits", "first_last", "depthwise_bits",
    "quant_after_activation", "lr", "weight_scale", "temperature", "alpha", "batch_size",
    "limit_batches", "threads", "optimizer", "channels_last",
)  # fmt: skip


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``quantize`` to the ``satcompress`` command."""
    parser = subparsers.add_parser(
        "quantize",
        help="PTQ (int8) or QAT (8..1 bits) of a trained model; writes the deployable artifact",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--method", choices=("ptq", "qat"), default="ptq", help="default: ptq")
    parser.add_argument(
        "--bits", type=int, default=argparse.SUPPRESS,
        help=f"weight bits: 8 (PTQ); {min(WEIGHT_BITS)} to {max(WEIGHT_BITS)} (QAT)",
    )  # fmt: skip
    parser.add_argument(
        "--bits-map", type=Path,
        help=f"QAT only: YAML/JSON file of layer: bits ({min(WEIGHT_BITS)} to "
        f"{max(WEIGHT_BITS)}, or 32 = float)",
    )  # fmt: skip
    parser.add_argument("--teacher", help="distil during QAT from: self, or a run dir/weights")
    parser.add_argument("--epochs", type=int, default=argparse.SUPPRESS, help="QAT epochs")
    parser.add_argument("--checkpoint", type=Path, required=True, help="run dir or weights file")
    parser.add_argument("--run-dir", type=Path, required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="QAT: continue an interrupted run")
    parser.add_argument("--config", type=Path, help="YAML file of PTQConfig/QATConfig options")
    _add_ptq_flags(parser)
    _add_qat_flags(parser)
    add_data_flags(parser)
    out = parser.add_argument_group("evaluation")
    out.add_argument("--split", default="test", choices=["train", "val", "test"])
    out.add_argument("--no-eval", action="store_true", help="skip scoring the artifact")
    out.add_argument("--no-latency", action="store_true", help="skip latency timing")
    out.add_argument("--eval-threads", type=int, help="ONNX Runtime threads for timing")
    add_sign_flag(parser)
    parser.set_defaults(handler=cmd_quantize)


def _add_ptq_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PTQ options (override --config)")
    flag = functools.partial(add_field_flag, group, PTQConfig)
    flag("mode", dest="ptq_mode", choices=PTQ_MODES)
    flag("calibration", choices=CALIBRATION_METHODS)
    flag("calibration_images", type=int)
    flag("percentile", type=float)
    flag("per_channel", action=argparse.BooleanOptionalAction)
    flag("reduce_range", action=argparse.BooleanOptionalAction)
    flag("equalize", action=argparse.BooleanOptionalAction)
    flag("bias_correction", action=argparse.BooleanOptionalAction)


def _add_qat_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("QAT options (override --config)")
    flag = functools.partial(add_field_flag, group, QATConfig)
    flag("activation_bits", type=_optional_int, metavar="BITS|none")
    flag("first_last", choices=FIRST_LAST_POLICIES)
    flag("depthwise_bits", type=int, metavar="BITS")
    flag("quant_after_activation", action=argparse.BooleanOptionalAction)
    flag("lr", type=float)
    flag("weight_scale", choices=WEIGHT_SCALES)
    group.add_argument("--temperature", type=float, default=argparse.SUPPRESS, help="KD T")
    group.add_argument("--alpha", type=float, default=argparse.SUPPRESS, help="KD weight")
    train = parser.add_argument_group("QAT training overrides")
    train.add_argument("--batch-size", type=int, default=argparse.SUPPRESS)
    train.add_argument("--limit-batches", type=int, default=argparse.SUPPRESS)
    train.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch threads")
    train.add_argument("--seed", type=int, default=argparse.SUPPRESS)
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default=argparse.SUPPRESS)
    train.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS
    )


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "float", "fp32") else int(text)


def config_from_args(args: argparse.Namespace) -> PTQConfig | QATConfig:
    """Defaults < ``--config`` YAML < flags, for the chosen method.

    Raises:
        ConfigError: For bad values, or options of the other method.
    """
    _refuse_other_method_flags(args)
    method_config = PTQConfig if args.method == "ptq" else QATConfig
    values = method_config.load_values(args.config) if args.config else {}
    given = vars(args)
    if args.method == "ptq":
        if given.get("bits", 8) != 8:
            raise ConfigError(
                f"PTQ quantizes to int8 only (got --bits {given['bits']}); use --method qat "
                "for 4, 3, 2 or 1 bits"
            )
        names = {f.name for f in dataclasses.fields(PTQConfig)}
        values.update({k: v for k, v in given.items() if k in names})
        if "ptq_mode" in given:
            values["mode"] = given["ptq_mode"]
        return PTQConfig.from_dict(values)
    names = {f.name for f in dataclasses.fields(QATConfig)} - {"bits_map", "distill"}
    values.update({k: v for k, v in given.items() if k in names and k != "teacher"})
    if args.bits_map is not None:
        values["bits_map"] = {**values.get("bits_map", {}), **load_bits_map(args.bits_map)}
    if args.teacher is not None:
        values["teacher"] = args.teacher
    kd = {k: given[k] for k in ("temperature", "alpha") if k in given}
    if kd:
        values["distill"] = {**values.get("distill", {}), **kd}
    return QATConfig.from_dict(values)


def _refuse_other_method_flags(args: argparse.Namespace) -> None:
    """Options of the other method are an error: PTQ has no bits map, QAT no calibration.

    Raises:
        ConfigError: Naming the flags and the method they belong to.
    """
    other, method = (_QAT_ONLY, "qat") if args.method == "ptq" else (_PTQ_ONLY, "ptq")
    given = [n for n in other if getattr(args, n, None) is not None]
    if not given:
        return
    flags = ", ".join("--" + n.replace("_", "-") for n in given)
    why = (
        "PTQ quantizes every layer to int8, with no training"
        if method == "qat"
        else "they set ONNX Runtime's static quantizer, which QAT does not use"
    )
    verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
    raise ConfigError(
        f"{flags} {verb} to --method {method} only ({why}); drop {them}, or use --method {method}"
    )


def cmd_quantize(args: argparse.Namespace) -> int:
    """``satcompress quantize``: the data comes from the checkpoint's card unless flags give it."""
    from satcompress.compress.quantize.qat import qat_train_config
    from satcompress.evaluate import LatencyConfig
    from satcompress.pipeline import quantize

    config = config_from_args(args)
    key = signing_key(args)  # before the run: a bad key fails now, not after it
    source, dataset = source_and_data(args)
    train_config = None
    if isinstance(config, QATConfig):
        overrides = {k: v for k, v in vars(args).items() if k in _TRAIN_OVERRIDES}
        train_config = qat_train_config(source.card, config, source.input_spec, overrides)
    latency = None if args.no_latency else LatencyConfig(threads=args.eval_threads)
    result = quantize(
        source,
        dataset,
        config,
        args.run_dir,
        train_config=train_config,
        evaluate_model=not args.no_eval,
        resume=args.resume,
        split=args.split,
        latency=latency,
    )
    _report(result)
    details = result.details
    if details is not None and details.status != "ok":
        print(f"satcompress: {details.message}", file=sys.stderr)
        if key is not None:
            print("satcompress: the artifact is left unsigned (the run failed)", file=sys.stderr)
        return EXIT_DIVERGED
    sign_artifact(result.files["artifact"], key)
    return 0


def _report(result: Any) -> None:
    from satcompress.artifact.format import load_artifact

    artifact = load_artifact(result.files["artifact"])
    size, bound = artifact.size_bytes, artifact.bound_bytes
    status = result.details.status if result.details is not None else "ok"
    method = "qat" if result.details is not None else "ptq"
    print(
        f"{method} -> {artifact.path}: {size:,} bytes "
        f"(bound sum(params x bits)/8 = {bound:,.0f}, {size / bound:.3f}x); status {status}"
    )
    record = result.record
    if record:
        latency = ", ".join(f"{k} {v:.2f} ms" for k, v in record["latency_ms"].items())
        agreement = ""
        if "pytorch_accuracy" in record:
            agreement = f" (PyTorch fake-quant {record['pytorch_accuracy'] * 100:.2f}%)"
        print(
            f"{record['format']} on {record['dataset']} ({record['split']}): accuracy "
            f"{record['accuracy'] * 100:.2f}%{agreement}" + (f", {latency}" if latency else "")
        )
