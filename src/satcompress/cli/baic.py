"""``satcompress baic``: the most accurate ``.satc`` file that fits a byte budget."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from satcompress.cli.common import (
    add_data_flags,
    add_sign_flag,
    data_overrides,
    sign_artifact,
    signing_key,
)
from satcompress.config import ConfigError


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``baic``."""
    parser = commands.add_parser(
        "baic",
        help="budget-aware compression: the most accurate file within a byte budget",
        description=(
            "Measure per-layer sensitivity, allocate bits and channel ratios exactly under the "
            "budget, fine-tune candidates with distillation, save the best as model.satc "
            "(never over the budget), with candidates.jsonl, report.md and pareto.png."
        ),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained float model")
    parser.add_argument("--budget", required=True, help="1MB, 500kB, 1MiB, 1000000 or 44x")
    parser.add_argument("--run-dir", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--latency-budget-ms", type=float, help="batch-1 latency limit (ORT)")
    parser.add_argument("--time-limit", type=_duration, help="seconds, or 30m / 1h")
    parser.add_argument("--teacher", help="distillation teacher (default: the input model)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="minutes, not an hour: fewer/shorter fine-tunes (see docs)",
    )
    parser.add_argument("--workers", type=int, help="candidate fine-tunes at once")
    parser.add_argument("--executor", choices=["local", "ray"], help="local processes or Ray")
    parser.add_argument("--ray-address", help="existing Ray cluster (default: a local runtime)")
    parser.add_argument("--candidates", type=int, help="most BAIC plans fine-tuned")
    parser.add_argument("--candidate-epochs", type=int, help="fine-tune epochs per candidate")
    parser.add_argument("--candidate-batches", type=int, help="batches per candidate epoch")
    parser.add_argument(
        "--final-epochs",
        type=int,
        help="fine-tune epochs of the chosen plan (may change when resuming a --run-dir: the "
        "search is reused and only the final file fine-tuned again)",
    )
    parser.add_argument("--baseline-epochs", type=int, help="fine-tune epochs of the baselines")
    parser.add_argument("--bits", help="bit-widths a layer may get, e.g. 8,6,4,3,2,1")
    parser.add_argument("--channel-ratios", help="prune ratios a group may get, e.g. 0.25,0.5")
    parser.add_argument(
        "--sparsities", help="unstructured sparsities a layer may add, e.g. 0.5,0.75 (none)"
    )
    parser.add_argument(
        "--baselines",
        help="uniform,greedy (default), small-model, mct (pip install satcompress[mct]), or none",
    )
    parser.add_argument(
        "--small-model", help="architecture of the small-model baseline (mobilenet_v2 at width 0.5)"
    )
    parser.add_argument("--small-epochs", type=int, help="distillation epochs of the small model")
    parser.add_argument(
        "--uniform-pairs", type=int, help="uniform bit-widths measured (the best one is kept)"
    )
    parser.add_argument("--batch-size", type=int, help="fine-tune batch size")
    parser.add_argument("--lr", type=float, help="fine-tune peak learning rate")
    parser.add_argument("--seed", type=int, help="seed of fine-tunes and sensitivity subset")
    add_data_flags(parser)
    add_sign_flag(parser)
    parser.set_defaults(handler=cmd_baic)


def _duration(text: str) -> float:
    scale = {"s": 1, "m": 60, "h": 3600}
    unit = text[-1].lower()
    try:
        return float(text[:-1]) * scale[unit] if unit in scale else float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (600, 10m, 1.5h)") from err


_FIELDS = (
    "budget",
    "latency_budget_ms",
    "time_limit",
    "teacher",
    "workers",
    "executor",
    "ray_address",
    "candidates",
    "candidate_epochs",
    "candidate_batches",
    "final_epochs",
    "baseline_epochs",
    "bits",
    "channel_ratios",
    "sparsities",
    "baselines",
    "small_model",
    "small_epochs",
    "uniform_pairs",
    "batch_size",
    "lr",
    "seed",
)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`BAICConfig` of the flags (``--quick`` preset first, flags on top)."""
    from satcompress.search.config import BAICConfig, quick_config

    values = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    if values.get("baselines") == "none":
        values["baselines"] = ()
    for name in ("channel_ratios", "sparsities"):
        if values.get(name) == "none":
            values[name] = ()
    size = _byte_budget(values["budget"]) if "budget" in values else None
    if getattr(args, "sign", None) is not None and size is not None:
        from satcompress.runtime.satc import SIGNATURE_SIZE

        values["budget"] = str(size - SIGNATURE_SIZE)  # the signed file stays within it
    return quick_config(**values) if args.quick else BAICConfig(**values)


def _byte_budget(budget: str) -> int | None:
    """The bytes of a budget given in bytes; None for a ratio (``44x``) or a bad budget."""
    from satcompress.search.budget import parse_budget

    try:
        return parse_budget(budget)
    except ConfigError:
        return None


def _sign_within_budget(path: Path, key: Any, budget: int) -> None:
    """Sign the saved (unsigned) file, unless the signature block would break ``budget``.

    Raises:
        ConfigError: If it would (only a ratio budget can: a byte budget reserves the block).
    """
    from satcompress.runtime.satc import SIGNATURE_SIZE

    over = path.stat().st_size + SIGNATURE_SIZE - budget
    if over > 0:
        raise ConfigError(
            f"the {SIGNATURE_SIZE}-byte signature block would put {path} {over:,} bytes over "
            "the budget, so it is left unsigned: give the budget in bytes (--sign then keeps "
            "the block's bytes free)"
        )
    sign_artifact(path, key)


def cmd_baic(args: argparse.Namespace) -> int:
    """Run the search and print its summary (with ``--sign``: sign the file, within budget)."""
    from satcompress.search.budget import format_bytes
    from satcompress.search.loop import baic

    key = signing_key(args)  # before the search: a bad key fails now, not after it
    result = baic(
        args.checkpoint,
        None,
        config_from_args(args),
        args.run_dir,
        overrides=data_overrides(args),
    )
    summary = result.details
    before, after = summary["input"], summary
    print(
        f"budget {format_bytes(summary['budget_bytes'])}: saved {format_bytes(after['bytes'])} "
        f"({after['bytes']:,} bytes on disk)\n"
        f"test accuracy {before['accuracy'] * 100:.2f}% ({format_bytes(before['bytes'])} fp32) "
        f"-> {after['accuracy'] * 100:.2f}%\n"
        f"latency (batch 1, ONNX Runtime) {before['latency_ms']:.2f} ms -> "
        f"{after['latency_ms']:.2f} ms\n"
        f"file: {summary['artifact']}\nreport: {result.files['report']}"
    )
    if key is not None:  # a byte budget's search kept the signature's bytes free
        limit = _byte_budget(args.budget) or int(summary["budget_bytes"])
        _sign_within_budget(Path(summary["artifact"]), key, limit)
    return 0
