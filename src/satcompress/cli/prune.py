"""The ``prune`` and ``analyze`` commands (added to ``satcompress`` by :func:`add_commands`).

Examples::

    satcompress prune --checkpoint runs/r18 --method l1 --ratio 0.5 --steps 2
        --finetune-epochs 5 [--global] [--teacher self] --run-dir runs/r18_l1_50
    satcompress prune --checkpoint runs/r18 --method magnitude --ratio 0.9 --steps 3
        --finetune-epochs 5 --run-dir runs/r18_sparse90
    satcompress analyze sensitivity --checkpoint runs/r18 --bits 8 4 2 --channel-ratios 0.5
        --sparsities 0.9 --run-dir runs/s
    satcompress analyze vit-layers --checkpoint runs/vit --head-ratio 0.5 --run-dir runs/v
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from satcompress.cli.common import (
    add_config_flags,
    add_data_flags,
    add_options,
    add_run_flags,
    add_sign_flag,
    print_result,
    sign_artifact,
    signing_key,
    source_and_data,
)
from satcompress.compress.prune.config import METHODS, PruneConfig


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``prune`` and ``analyze {sensitivity,vit-layers}`` to the subcommands."""
    _add_prune(commands)
    analyses = commands.add_parser(
        "analyze", help="analyses: per-layer sensitivity table, ViT layer importance"
    ).add_subparsers(title="analyses")
    _add_sensitivity(analyses)
    _add_vit_layers(analyses)


def _add_prune(commands: argparse._SubParsersAction) -> None:
    from satcompress.train import TrainConfig

    parser = commands.add_parser(
        "prune", help="prune a trained model, fine-tune it, then evaluate it in ONNX Runtime"
    )
    _add_checkpoint(parser)
    parser.add_argument("--prune-config", type=Path, help="YAML file of PruneConfig options")
    add_run_flags(parser, "YAML file of fine-tuning TrainConfig options", resume=False)
    parser.add_argument("--no-latency", action="store_true", help="skip latency timing")
    group = parser.add_argument_group("pruning options (override --prune-config)")
    add_options(group, (
        ("--method", "method", "magnitude = unstructured; the others remove channels/heads",
         {"choices": METHODS}),
        ("--ratio", "ratio", "fraction in [0, 1) of weights (magnitude) or channels removed",
         {"type": float}),
        ("--global", "global_pruning", "rank all layers together (one threshold)",
         {"action": "store_true"}),
        ("--steps", "steps", "structured: pruning steps with fine-tuning after each; "
         "magnitude: gradual-schedule steps, one per fine-tuning epoch", {"type": int}),
        ("--finetune-epochs", "finetune_epochs", "total fine-tuning epochs (default 0)",
         {"type": int}),
        ("--finetune-lr", "finetune_lr", "fine-tuning peak learning rate (default: --lr)",
         {"type": float}),
        ("--head-ratio", "head_ratio", "transformers: fraction of heads removed "
         "(default: --ratio)", {"type": float}),
        ("--ignore", "ignored_layers", "module names never pruned",
         {"nargs": "+", "metavar": "LAYER"}),
        ("--round-to", "round_to", "keep channel counts multiples of this", {"type": int}),
        ("--taylor-batches", "taylor_batches", "taylor: batches of gradients", {"type": int}),
    ))  # fmt: skip
    _add_teacher_flags(parser)
    add_config_flags(parser, TrainConfig)
    add_sign_flag(parser)
    parser.set_defaults(handler=cmd_prune)


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="run directory or weights file (card)"
    )


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distillation while fine-tuning")
    group.add_argument(
        "--teacher",
        help="'self' (the unpruned model), a run directory or weights file, or a registry name",
    )
    group.add_argument("--teacher-weights", type=Path, help="weights of a registry-name teacher")
    group.add_argument("--temperature", type=float, help="KD temperature (default 4)")
    group.add_argument("--alpha", type=float, help="weight of the KD term (default 0.7)")


def _add_sensitivity(analyses: argparse._SubParsersAction) -> None:
    parser = analyses.add_parser(
        "sensitivity",
        help="per-layer cost of weight bits, channel ratios and sparsities, each alone (cached)",
    )
    _add_checkpoint(parser)
    parser.add_argument("--model", help="registry name (if the weights have no card)")
    parser.add_argument("--run-dir", type=Path, required=True, help="folder of sensitivity.json")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--metric",
        default="loss_increase",
        help="what the cells show: loss_increase, kl, accuracy, loss, bytes or file_bytes",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("analysis options (LayerSensitivityConfig)")
    add_options(group, (
        (("--bits",), "bits", "weight bits tried per layer (default 8 6 4 3 2 1; "
         "none: no bits)", {"type": int, "nargs": "*"}),
        (("--channel-ratios", "--ratios"), "channel_ratios", "fractions of a group's "
         "channels removed (default 0.25 0.5 0.75)", {"type": float, "nargs": "*"}),
        (("--sparsities",), "sparsities", "fractions of a layer's weights zeroed "
         "(default 0.5 0.75 0.9)", {"type": float, "nargs": "*"}),
        (("--split",), "split", "split the images come from (default train)",
         {"choices": ["train", "val", "test"]}),
        (("--num-images", "--max-samples"), "num_images", "images measured (default 256)",
         {"type": int}),
        (("--calibration-images",), "calibration_images", "images calibrating a quantized "
         "layer's activations (default 32)", {"type": int}),
        (("--batch-size",), "batch_size", "evaluation batch size", {"type": int}),
        (("--units", "--layers"), "units", "only these layers/groups (default: all)",
         {"nargs": "+", "metavar": "UNIT"}),
        (("--seed",), "seed", "seed of the image subset", {"type": int}),
        (("--predict-bytes",), "predict_bytes", "predict each option's artifact bytes",
         {"action": argparse.BooleanOptionalAction}),
    ))  # fmt: skip
    add_data_flags(parser)
    parser.set_defaults(handler=cmd_sensitivity)


def _add_vit_layers(analyses: argparse._SubParsersAction) -> None:
    parser = analyses.add_parser(
        "vit-layers", help="ViT: accuracy drop per block removed or with heads pruned; plot"
    )
    _add_checkpoint(parser)
    parser.add_argument("--model", help="registry name (if the weights have no card)")
    parser.add_argument("--run-dir", type=Path, required=True, help="where table and plot go")
    group = parser.add_argument_group("analysis options")
    add_options(group, (
        ("--head-ratio", "head_ratio", "fraction of one block's heads pruned (default 0.5)",
         {"type": float}),
        ("--method", "method", "head importance (default l1)",
         {"choices": ["l1", "l2", "taylor"]}),
        ("--split", "split", "split to score (default val)",
         {"choices": ["train", "val", "test"]}),
        ("--max-samples", "max_samples", "images scored (default 512)", {"type": int}),
        ("--batch-size", "batch_size", "evaluation batch size", {"type": int}),
        ("--seed", "seed", "seed of the image subset", {"type": int}),
    ))  # fmt: skip
    add_data_flags(parser)
    parser.set_defaults(handler=cmd_vit_layers)


def prune_config_from_args(args: argparse.Namespace) -> PruneConfig:
    """Defaults < ``--prune-config`` YAML < command-line flags."""
    values = PruneConfig.load_values(args.prune_config) if args.prune_config else {}
    return PruneConfig.from_dict({**values, **_given(args, PruneConfig)})


def finetune_config_from_args(args: argparse.Namespace, card: dict[str, Any]) -> Any:
    """The card's training recipe < ``--config`` YAML < command-line flags."""
    from satcompress.card import training_recipe
    from satcompress.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in training_recipe(card).items() if k in names}
    for key in ("model", "model_kwargs"):
        if key in card:
            values.setdefault(key, card[key])
    if args.config:
        values.update(TrainConfig.load_values(args.config))
    for name, value in _given(args, TrainConfig).items():
        if name in ("model_kwargs", "augment"):
            value = {**values.get(name, {}), **dict(value)}
        values[name] = str(value) if isinstance(value, Path) else value
    return TrainConfig.from_dict(values).with_absolute_paths()


def _given(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_prune(args: argparse.Namespace) -> int:
    """``satcompress prune``: the data comes from the checkpoint's card unless flags give it."""
    from satcompress.compress.distill import DistillConfig
    from satcompress.config import ConfigError
    from satcompress.evaluate import LatencyConfig
    from satcompress.pipeline import prune

    config = prune_config_from_args(args)
    if args.sign is not None and args.no_eval:
        raise ConfigError("--sign signs the model.satc the evaluation writes: drop --no-eval")
    key = signing_key(args)  # before the run: a bad key fails now, not after it
    source, dataset = source_and_data(args)
    train_config = finetune_config_from_args(args, source.card)
    kd = {k: getattr(args, k) for k in ("temperature", "alpha") if getattr(args, k) is not None}
    result = prune(
        source,
        dataset,
        config,
        args.run_dir,
        train_config=train_config,
        teacher=str(args.teacher) if args.teacher else None,
        teacher_weights=args.teacher_weights,
        distill_config=DistillConfig(**kd) if args.teacher else None,
        evaluate_model=not args.no_eval,
        latency=None if args.no_latency else LatencyConfig(),
    )
    code = print_result(_summary(result.details.summary), result.record)
    if key is not None:
        sign_artifact(result.files["artifact"], key)
    return code


def _summary(summary: dict[str, Any]) -> str:
    before, after = summary["before"], summary["after"]
    text = (
        f"pruned ({summary['method']}, ratio {summary['ratio']}): params {before['params']:,} "
        f"-> {after['params']:,} ({summary['params_ratio']}x), MACs {before['macs']:,} -> "
        f"{after['macs']:,} ({summary['macs_ratio']}x)"
    )
    if "sparsity" in summary:
        text += f", sparsity {summary['sparsity'] * 100:.1f}%"
    return text


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """``satcompress analyze sensitivity``: the per-layer table, printed and saved.

    Markdown to stdout (or the table's JSON with ``--json``); ``run_dir/sensitivity.json``
    holds the table, ``run_dir/cache`` the cache keyed by weights, data and settings.
    """
    from satcompress.config import ConfigError
    from satcompress.pipeline.load import is_quantized
    from satcompress.pipeline.sensitivity import (
        CACHE_DIR,
        METRICS,
        SENSITIVITY_FILE,
        LayerSensitivityConfig,
        run_sensitivity,
    )

    if args.metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}; got {args.metric!r}")
    config = LayerSensitivityConfig.from_dict(_given(args, LayerSensitivityConfig))
    loaded, dataset = source_and_data(args)
    if is_quantized(loaded):
        raise ConfigError(
            f"{args.checkpoint} is already quantized ({loaded.kind}): analyze the model it was "
            "quantized from"
        )
    table = run_sensitivity(
        loaded.model, dataset, config, args.run_dir, input_spec=loaded.input_spec,
        progress=not args.no_progress,
    )  # fmt: skip
    if args.json:
        print(json.dumps(table.to_dict(), indent=1))
    else:
        print(table.markdown(args.metric))
        saved = Path(args.run_dir) / SENSITIVITY_FILE
        origin = (
            f"reused from the cache in {Path(args.run_dir) / CACHE_DIR}; " if table.cached else ""
        )
        print(f"\n({origin}saved in {saved})")
    return 0


def cmd_vit_layers(args: argparse.Namespace) -> int:
    """``satcompress analyze vit-layers``."""
    from satcompress.compress.prune.config import VitLayersConfig
    from satcompress.compress.prune.vit_layers import (
        PLOT_FILE,
        vit_layer_importance,
        vit_layers_table,
    )

    loaded, dataset = source_and_data(args)
    config = VitLayersConfig.from_dict(_given(args, VitLayersConfig))
    result = vit_layer_importance(
        loaded.model, dataset, config, args.run_dir, input_spec=loaded.input_spec
    )
    print(vit_layers_table(result))
    print(f"(table, JSON and plot in {args.run_dir}; plot: {Path(args.run_dir) / PLOT_FILE})")
    return 0
