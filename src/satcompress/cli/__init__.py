"""Command line: a thin layer over the Python API.

    satcompress data info --dataset eurosat --data-dir DATA
    satcompress train --config run.yaml --run-dir runs/r18 [--epochs 20 ...] [--resume]
    satcompress distill --teacher runs/r18 --student mobilenet_v2 --run-dir runs/kd [...]
    satcompress eval --checkpoint runs/r18 [--dataset ... --data-dir ...]

Every ``train`` option is a field of :class:`satcompress.train.TrainConfig`; flags given on
the command line override the ``--config`` YAML file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satcompress.cli import artifact as artifact_commands
from satcompress.cli import baic as baic_commands
from satcompress.cli import prune as prune_commands
from satcompress.cli import quantize as quantize_commands
from satcompress.cli import report as report_commands
from satcompress.cli import sign as sign_commands
from satcompress.cli import study as study_commands
from satcompress.cli.baic import cmd_baic
from satcompress.cli.common import (
    add_config_flags,
    add_data_flags,
    add_field_flag,
    add_run_flags,
    architecture_hint,
    data_overrides,
    print_record,
    print_result,
    train_config_from_args,
    verify_artifact,
)
from satcompress.config import ConfigError, load_yaml
from satcompress.runtime.flags import add_verify_flags
from satcompress.train.config import TrainConfig

if TYPE_CHECKING:
    from satcompress.compress.distill import DistillConfig

log = logging.getLogger("satcompress")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``satcompress`` command. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("satcompress").setLevel(logging.INFO)
        quiet_third_parties()
    lightning_logs_once()
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print(f"interrupted; {how_to_continue(args)}", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, *_user_errors()) as err:
        print(f"satcompress: error: {err}", file=sys.stderr)
        return 2
    except _runtime_errors() as err:  # a file that passed our checks but not ONNX Runtime's
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"satcompress: error: ONNX Runtime cannot load or run the model: {first}",
              file=sys.stderr)  # fmt: skip
        return 2


#: Known third-party noise that normal output hides (``--verbose`` shows it), named one by
#: one so that anything else still shows. Log records: the emitting logger ("" = root) and
#: the start of the message.
QUIET_LOGS = {
    # torch, imported by Brevitas, on every machine without CUDA
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    # onnxruntime.quantization logs through the root logger: advice on its own pre-processing
    "": (
        "Please consider to run pre-processing before quantization",
        "Please consider pre-processing before quantization",
    ),
}
#: Loggers whose INFO chatter is hidden: Lightning's "GPU available", "TPU available", its
#: litlogger tip, the echo of ``--limit-batches`` and "`Trainer.fit` stopped".
QUIET_BELOW_WARNING = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
#: Lightning's advertisements for its cloud services, hidden even with ``--verbose``.
LIGHTNING_TIPS = ("\N{ELECTRIC LIGHT BULB} Tip:",)
#: Python warnings hidden: (category, regex the message starts with).
QUIET_WARNINGS = (
    # Brevitas on every quantized layer with a bias
    (UserWarning, r"Computing zero point of output accumulator not supported yet"),
    # torch's Module.state_dict, called by Brevitas with positional arguments
    (FutureWarning, r"Positional args are being deprecated, use kwargs instead"),
    # torch's pytree, called by Lightning
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Lightning, for epochs shorter than its logging interval (--limit-batches, tiny data)
    (UserWarning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_third_parties() -> None:
    """Hide the known third-party warnings and chatter of :data:`QUIET_LOGS` and friends.

    For the command line only (the library leaves logging and warnings to its caller);
    idempotent.
    """
    for name, prefixes in QUIET_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    for name in QUIET_BELOW_WARNING:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def lightning_logs_once() -> None:
    """Print each Lightning log line once, and never its advertising tips (``--verbose`` too).

    ``import lightning`` gives the ``lightning`` logger a handler of its own (``INFO: ...``)
    and leaves it propagating to the root logger, whose handler the command line sets up:
    every Lightning line was printed twice. Its records now stop at its own handler.
    Idempotent.
    """
    logging.getLogger("lightning").propagate = False
    for name in QUIET_BELOW_WARNING:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(LIGHTNING_TIPS))


def _user_errors() -> tuple[type[Exception], ...]:
    from satcompress.data import DatasetError
    from satcompress.models import WeightsError
    from satcompress.utils.lock import RunDirLockedError

    return (DatasetError, WeightsError, RunDirLockedError)


def _runtime_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's load and run errors (imported only when an error needs matching)."""
    from satcompress.runtime.onnx import ORT_ERRORS

    return ORT_ERRORS


def how_to_continue(args: argparse.Namespace) -> str:
    """What to run after a Ctrl-C of the command ``args`` describes."""
    handler, run_dir = args.handler, getattr(args, "run_dir", None)
    if handler is cmd_baic:
        return "finished candidates are saved: rerun the same command to continue"
    if run_dir is None or handler not in (cmd_train, cmd_distill, *_ONE_GO):
        return "nothing of this command needs continuing (run it again)"
    if handler is prune_commands.cmd_prune:
        if (Path(run_dir) / "model.safetensors").is_file():
            return f"the pruned model is saved in {run_dir} (satcompress eval --checkpoint it)"
        return "pruning does not resume: rerun the same command to start it over"
    if handler is quantize_commands.cmd_quantize and getattr(args, "method", None) != "qat":
        return "rerun the same command to start over"
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"finished epochs are saved in {last}: rerun the same command with --resume"
    return "no epoch had finished: rerun the same command (without --resume) to start over"


#: Commands writing a run directory that have no ``--resume`` of their own (or only for QAT).
_ONE_GO = (prune_commands.cmd_prune, quantize_commands.cmd_quantize)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="satcompress", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--verbose", action="store_true", help="also show third-party log messages and warnings"
    )
    commands = parser.add_subparsers(title="commands")

    data = commands.add_parser("data", help="dataset tools").add_subparsers(title="data commands")
    info = data.add_parser("info", help="counts per class and split, image sizes, where it looked")
    add_data_flags(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=cmd_data_info)

    train = commands.add_parser(
        "train", help="train a classifier, then evaluate it in ONNX Runtime"
    )
    add_run_flags(train)
    add_config_flags(train, TrainConfig)
    train.set_defaults(handler=cmd_train)
    _add_distill_command(commands)
    prune_commands.add_commands(commands)
    quantize_commands.add_commands(commands)
    artifact_commands.add_commands(commands)
    sign_commands.add_commands(commands)
    baic_commands.add_commands(commands)
    study_commands.add_commands(commands)
    report_commands.add_commands(commands)

    evaluate = commands.add_parser("eval", help="accuracy, size and latency of a trained model")
    source = evaluate.add_argument_group("model")
    source.add_argument("--checkpoint", type=Path, help="run directory or weights file")
    source.add_argument("--model", help="registry name (if the weights have no card)")
    source.add_argument("--weights", type=Path, help="weights file (same as --checkpoint)")
    source.add_argument("--artifact", type=Path, help="a deployable artifact (.satc) to run")
    source.add_argument("--mean", type=float, nargs=3, help="normalisation mean (overrides card)")
    source.add_argument("--std", type=float, nargs=3, help="normalisation std (overrides card)")
    source.add_argument("--input-size", type=int, help="model input resolution")
    add_data_flags(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--run-dir", type=Path, help="where to write model.onnx and record.json")
    evaluate.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    evaluate.add_argument("--no-latency", action="store_true", help="skip latency timing")
    add_verify_flags(evaluate)
    evaluate.set_defaults(handler=cmd_eval)
    return parser


def _add_distill_command(commands: argparse._SubParsersAction) -> None:
    from satcompress.compress.distill import TEACHER_CACHE_MODES, DistillConfig

    distill = commands.add_parser(
        "distill", help="train a student with a frozen teacher, then evaluate it in ONNX Runtime"
    )
    teacher_help = "teacher run directory or weights file (with its card), or a registry name"
    distill.add_argument("--teacher", required=True, help=teacher_help)
    distill.add_argument("--teacher-weights", type=Path, help="weights of a registry-name teacher")
    distill.add_argument(
        "--student", dest="model", default=argparse.SUPPRESS, help="student model (= --model)"
    )
    distill.add_argument("--distill-config", type=Path, help="YAML file of DistillConfig options")
    add_run_flags(distill)
    group = distill.add_argument_group("distillation options (override --distill-config)")
    for name, kwargs in (
        ("temperature", {"type": float}),
        ("alpha", {"type": float}),
        ("feature_layers", {"nargs": "+", "metavar": "STUDENT:TEACHER"}),
        ("feature_weight", {"type": float}),
        ("feature_normalize", {"action": argparse.BooleanOptionalAction}),
        ("teacher_cache", {"choices": TEACHER_CACHE_MODES}),
    ):
        add_field_flag(group, DistillConfig, name, **kwargs)
    add_config_flags(distill, TrainConfig)
    distill.set_defaults(handler=cmd_distill)


def cmd_train(args: argparse.Namespace) -> int:
    """``satcompress train``."""
    from satcompress.pipeline import train

    config = train_config_from_args(args)
    result = train(
        None, None, config, args.run_dir, resume=args.resume, evaluate_model=not args.no_eval
    )
    summary = result.details.summary
    return print_result(
        f"trained {config.model}: best val accuracy {summary['best_val_accuracy']}, "
        f"{summary['wall_s']} s, {summary['train_img_per_s']} train images/s",
        result.record,
    )


def distill_config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults < ``--distill-config`` YAML < command-line flags (feature layers are merged)."""
    from satcompress.compress.distill import DistillConfig
    from satcompress.compress.distill.config import parse_feature_layers

    values = DistillConfig.load_values(args.distill_config) if args.distill_config else {}
    for field in dataclasses.fields(DistillConfig):
        if field.name in vars(args):
            values[field.name] = getattr(args, field.name)
    if "feature_layers" in vars(args) and args.distill_config:
        saved = parse_feature_layers(load_yaml(args.distill_config).get("feature_layers"))
        values["feature_layers"] = {**saved, **parse_feature_layers(args.feature_layers)}
    return DistillConfig.from_dict(values)


def cmd_distill(args: argparse.Namespace) -> int:
    """``satcompress distill``."""
    from satcompress.pipeline import distill

    config = train_config_from_args(args)
    distill_config = distill_config_from_args(args)
    result = distill(
        args.teacher,
        None,
        distill_config,
        args.run_dir,
        train_config=config,
        teacher_weights=args.teacher_weights,
        resume=args.resume,
        evaluate_model=not args.no_eval,
    )
    summary = result.details.summary
    return print_result(
        f"distilled {config.model} from {args.teacher}: best val accuracy "
        f"{summary['best_val_accuracy']}, {summary['wall_s']} s, teacher "
        f"{summary['teacher_s']} s ({summary['teacher_share'] * 100:.0f}% of training)",
        result.record,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """``satcompress eval``: any stage's output (or ``--artifact``), on its card's data."""
    from satcompress.checkpoint import load_trained
    from satcompress.pipeline import EvalConfig, evaluate_stage, load
    from satcompress.preprocess import InputSpec

    path = args.artifact or args.checkpoint or args.weights
    if path is None:
        raise ConfigError("give the model to evaluate: --checkpoint RUN_DIR_OR_WEIGHTS")
    if args.verify is not None or args.require_signature:
        if args.artifact is None:
            raise ConfigError("--verify checks a .satc file: give it with --artifact")
        verify_artifact(args, args.artifact)
    source = load(path) if args.model is None else load_trained(path, **architecture_hint(args))
    if args.mean or args.std or args.input_size:
        spec = source.input_spec
        source.input_spec = InputSpec(
            size=args.input_size or spec.size,
            mean=tuple(args.mean or spec.mean),
            std=tuple(args.std or spec.std),
        )
    config = EvalConfig(split=args.split, latency=not args.no_latency, threads=args.threads)
    result = evaluate_stage(source, None, config, args.run_dir, overrides=data_overrides(args))
    print_record(result.record)
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """``satcompress data info``."""
    from satcompress.pipeline.data import dataset_for

    if not args.dataset or not args.data_dir:
        raise ConfigError("give --dataset and --data-dir")
    dataset = dataset_for({}, None, data_overrides(args), where="data info")
    info = dataset.info()
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict[str, Any]) -> None:
    table = info.get("per_split_per_class", {})
    for key, value in info.items():
        if key != "per_split_per_class":
            print(f"{key}: {value}")
    if table:
        splits = list(table)
        classes = list(next(iter(table.values())))
        width = max(len(c) for c in [*classes, "class"]) + 2
        print("\n" + "class".ljust(width) + "".join(f"{s:>8s}" for s in [*splits, "total"]))
        for name in classes:
            counts = [table[s].get(name, 0) for s in splits]
            print(name.ljust(width) + "".join(f"{c:>8d}" for c in [*counts, sum(counts)]))
        totals = [sum(table[s].values()) for s in splits]
        print("total".ljust(width) + "".join(f"{c:>8d}" for c in [*totals, sum(totals)]))


if __name__ == "__main__":
    raise SystemExit(main())
