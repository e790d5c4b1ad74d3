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
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satcompress.config import ConfigError, field_help, load_yaml, parse_value
from satcompress.train.config import TrainConfig

if TYPE_CHECKING:
    from satcompress.compress.distill import DistillConfig

log = logging.getLogger("satcompress")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``satcompress`` command. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print(
            "interrupted; finished work is saved (rerun with --resume to continue)", file=sys.stderr
        )
        return 130
    except (ConfigError, FileNotFoundError, ValueError, *_user_errors()) as err:
        print(f"satcompress: error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    from satcompress.data import DatasetError
    from satcompress.models import WeightsError

    return (DatasetError, WeightsError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="satcompress", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(title="commands")

    data = commands.add_parser("data", help="dataset tools").add_subparsers(title="data commands")
    info = data.add_parser("info", help="counts per class and split, image sizes, where it looked")
    _add_data_flags(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=cmd_data_info)

    train = commands.add_parser(
        "train", help="train a classifier, then evaluate it in ONNX Runtime"
    )
    train.add_argument("--config", type=Path, help="YAML file of TrainConfig options")
    train.add_argument("--run-dir", type=Path, required=True, help="output folder of the run")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    _add_config_flags(train, TrainConfig)
    train.set_defaults(handler=cmd_train)
    _add_distill_command(commands)
    __import__("satcompress.compress.prune.cli", fromlist=["add_commands"]).add_commands(commands)
    __import__("satcompress.compress.quantize.cli", fromlist=["cli"]).add_commands(commands)
    __import__("satcompress.artifact.cli", fromlist=["cli"]).add_commands(commands)

    evaluate = commands.add_parser("eval", help="accuracy, size and latency of a trained model")
    source = evaluate.add_argument_group("model")
    source.add_argument("--checkpoint", type=Path, help="run directory or weights file")
    source.add_argument("--model", help="registry name (if the weights have no card)")
    source.add_argument("--weights", type=Path, help="weights file (same as --checkpoint)")
    source.add_argument("--artifact", type=Path, help="a deployable artifact (.satc) to run")
    source.add_argument("--mean", type=float, nargs=3, help="normalisation mean (overrides card)")
    source.add_argument("--std", type=float, nargs=3, help="normalisation std (overrides card)")
    source.add_argument("--input-size", type=int, help="model input resolution")
    _add_data_flags(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--run-dir", type=Path, help="where to write model.onnx and record.json")
    evaluate.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    evaluate.add_argument("--no-latency", action="store_true", help="skip latency timing")
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
    distill.add_argument("--config", type=Path, help="YAML file of TrainConfig options")
    distill.add_argument("--distill-config", type=Path, help="YAML file of DistillConfig options")
    distill.add_argument("--run-dir", type=Path, required=True, help="output folder of the run")
    distill.add_argument("--resume", action="store_true", help="continue an interrupted run")
    distill.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    group = distill.add_argument_group("distillation options (override --distill-config)")
    for name, kwargs in (
        ("temperature", {"type": float}),
        ("alpha", {"type": float}),
        ("feature_layers", {"nargs": "+", "metavar": "STUDENT:TEACHER"}),
        ("feature_weight", {"type": float}),
        ("feature_normalize", {"action": argparse.BooleanOptionalAction}),
        ("teacher_cache", {"choices": TEACHER_CACHE_MODES}),
    ):
        flag = "--" + name.replace("_", "-")
        help_text = field_help(DistillConfig, name)
        group.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text, **kwargs)
    _add_config_flags(distill, TrainConfig)
    distill.set_defaults(handler=cmd_distill)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=None, help="eurosat, ucmerced or imagefolder")
    group.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset")
    group.add_argument("--split-dir", type=Path, help="folder of split files")
    group.add_argument("--download", action="store_true", help="download if missing")
    group.add_argument("--image-size", type=int, help="decode resolution")
    group.add_argument("--skip-bad-files", action="store_true", help="skip unreadable images")


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--flag`` per config field; unset flags stay out of the namespace."""
    group = parser.add_argument_group("training options (override --config)")
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        hint = _strip_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint in (int, float, str):
            kwargs["type"] = hint
        elif typing.get_origin(hint) is tuple:
            kwargs.update(type=float, nargs=3)
        else:  # dicts and nested configs: key=value pairs
            kwargs.update(type=_key_value, nargs="+", metavar="KEY=VALUE")
        group.add_argument(flag, help=field_help(config_cls, field.name), **kwargs)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), parse_value(value)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--config`` YAML < command-line flags."""
    values = load_yaml(args.config) if args.config else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in names & set(vars(args)):
        value = getattr(args, name)
        if name in ("model_kwargs", "augment"):
            value = {**values.get(name, {}), **dict(value)}
        values[name] = value
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    """``satcompress train``."""
    from satcompress.train import train

    config = train_config_from_args(args)
    result = train(config, args.run_dir, resume=args.resume)
    summary = result.summary
    print(
        f"trained {config.model}: best val accuracy {summary['best_val_accuracy']}, "
        f"{summary['wall_s']} s, {summary['train_img_per_s']} train images/s"
    )
    if not args.no_eval:
        evaluate_run(result, config.model, {"stage": "train", **config.to_dict()}, args.run_dir)
    return 0


def evaluate_run(result: Any, model_name: str, recipe: dict[str, Any], run_dir: Path) -> None:
    """Evaluate a finished training run's model in ONNX Runtime and print its record."""
    from satcompress.evaluate import evaluate

    if not result.is_global_zero:  # the other processes of a multi-process run
        return
    record = evaluate(
        result.model,
        result.dataset,
        result.input_spec,
        model_name=model_name,
        recipe=recipe,
        run_dir=run_dir,
        extra={"train": result.summary},
    )
    _print_record(record)


def distill_config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults < ``--distill-config`` YAML < command-line flags (feature layers are merged)."""
    from satcompress.compress.distill import DistillConfig
    from satcompress.compress.distill.config import parse_feature_layers

    values = load_yaml(args.distill_config) if args.distill_config else {}
    for field in dataclasses.fields(DistillConfig):
        if field.name in vars(args):
            values[field.name] = getattr(args, field.name)
    if "feature_layers" in vars(args) and args.distill_config:
        saved = parse_feature_layers(load_yaml(args.distill_config).get("feature_layers"))
        values["feature_layers"] = {**saved, **parse_feature_layers(args.feature_layers)}
    return DistillConfig.from_dict(values)


def cmd_distill(args: argparse.Namespace) -> int:
    """``satcompress distill``."""
    from satcompress.compress.distill import distill

    config = train_config_from_args(args)
    distill_config = distill_config_from_args(args)
    result = distill(
        config,
        distill_config,
        args.teacher,
        args.run_dir,
        teacher_weights=args.teacher_weights,
        resume=args.resume,
    )
    summary = result.summary
    print(
        f"distilled {config.model} from {args.teacher}: best val accuracy "
        f"{summary['best_val_accuracy']}, {summary['wall_s']} s, teacher "
        f"{summary['teacher_s']} s ({summary['teacher_share'] * 100:.0f}% of training)"
    )
    if not args.no_eval:
        recipe = {"stage": "distill", **result.card["recipe"]}
        evaluate_run(result, config.model, recipe, args.run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``satcompress eval``."""
    from satcompress.checkpoint import load_trained, read_card
    from satcompress.evaluate import LatencyConfig, evaluate
    from satcompress.preprocess import InputSpec

    if args.artifact is not None:  # rebuilt to ONNX, run in ONNX Runtime, sized as the file
        from satcompress.artifact.cli import eval_artifact

        _print_record(eval_artifact(args))
        return 0
    path = args.checkpoint or args.weights
    if path is None:
        raise ConfigError("give the model to evaluate: --checkpoint RUN_DIR_OR_WEIGHTS")
    card = read_card(path)
    recipe = card.get("recipe", {})
    dataset = dataset_for_checkpoint(args, path, card, recipe)
    loaded = load_trained(path, model_name=args.model, num_classes=len(dataset.classes))
    spec = loaded.input_spec
    if args.mean or args.std or args.input_size:
        spec = InputSpec(
            size=args.input_size or spec.size,
            mean=tuple(args.mean or spec.mean),
            std=tuple(args.std or spec.std),
        )
    latency = None if args.no_latency else LatencyConfig(threads=args.threads)
    record = evaluate(
        loaded.model,
        dataset,
        spec,
        model_name=loaded.card["model"],
        recipe={"stage": "eval", "weights": str(loaded.weights_path), **recipe},
        split=args.split,
        run_dir=args.run_dir,
        latency=latency,
    )
    _print_record(record)
    return 0


def dataset_for_checkpoint(
    args: argparse.Namespace, path: Path, card: dict[str, Any], recipe: dict[str, Any]
) -> Any:
    """The dataset to score a checkpoint on: data flags first, else its card and recipe.

    The split settings (split files, seed) come from the recipe unless the flags give them,
    so a model is scored on the split it was trained with. A dataset whose classes differ
    from the card's is refused, naming both.
    """
    from satcompress.data import load_dataset

    name = args.dataset or card.get("dataset") or recipe.get("dataset")
    data_dir = args.data_dir or recipe.get("data_dir")
    if not name or not data_dir:
        raise ConfigError(
            "give --dataset and --data-dir (the checkpoint's card does not name them)"
        )
    dataset = load_dataset(
        name,
        data_dir,
        split_dir=args.split_dir or recipe.get("split_dir"),
        download=args.download,
        image_size=args.image_size or recipe.get("image_size"),
        skip_bad_files=args.skip_bad_files,
        seed=recipe.get("seed", 0),
    )
    expected = card.get("classes")
    if expected is not None and list(expected) != list(dataset.classes):
        raise ValueError(
            f"{path} was trained on classes {list(expected)}, but the dataset has "
            f"{list(dataset.classes)}"
        )
    return dataset


def cmd_data_info(args: argparse.Namespace) -> int:
    """``satcompress data info``."""
    from satcompress.data import load_dataset

    if not args.dataset or not args.data_dir:
        raise ConfigError("give --dataset and --data-dir")
    dataset = load_dataset(
        args.dataset,
        args.data_dir,
        split_dir=args.split_dir,
        download=args.download,
        image_size=args.image_size,
        skip_bad_files=args.skip_bad_files,
    )
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


def _print_record(record: dict[str, Any]) -> None:
    latency = record["latency_ms"]
    print(
        f"{record['model']} on {record['dataset']} ({record['split']}): "
        f"accuracy {record['accuracy'] * 100:.2f}%, {record['params']:,} params, "
        f"{record['macs'] / 1e6:.1f} M MACs, "
        f"{record['size_bytes']:,} bytes ({record.get('format', 'onnx-fp32')}), "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items())
    )


if __name__ == "__main__":
    raise SystemExit(main())
