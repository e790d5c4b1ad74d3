"""What every benchmark runs on: recipes, arguments, cached training runs, report-only mode."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from satcompress.checkpoint import load_trained
from satcompress.config import ConfigError, parse_value
from satcompress.data import load_dataset
from satcompress.evaluate import evaluate
from satcompress.evaluate.profile import cpu_description
from satcompress.experiments.keys import find_run_dir
from satcompress.experiments.retime import retime
from satcompress.experiments.store import RecordList
from satcompress.train import train
from satcompress.train.config import TrainConfig

#: The baseline benchmark's models and their builder arguments.
BASELINE_MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "mobilenet_v2": {},
}

#: Where trained runs are cached (outside the work tree), keyed by their recipe.
DEFAULT_RUNS_DIR = Path.home() / ".cache" / "satcompress" / "benchmarks"


def baseline_config(
    model: str,
    data_dir: str | Path,
    *,
    epochs: int = 20,
    threads: int | None = None,
    recipe: Sequence[str] = (),
) -> TrainConfig:
    """The baseline benchmark's recipe: the library defaults, only model and data set here.

    The other benchmarks start from the same runs (their dense / fp32 models).

    Args:
        model: A key of :data:`BASELINE_MODELS`.
        data_dir: Folder that holds EuroSAT.
        epochs: Training epochs.
        threads: Torch threads (execution only: not part of the run's key).
        recipe: ``KEY=VALUE`` overrides of an ablation (:func:`with_overrides`).

    Returns:
        The training recipe.

    Raises:
        ConfigError: If an override names no training setting.
    """
    config = TrainConfig(
        model=model,
        model_kwargs=dict(BASELINE_MODELS[model]),
        dataset="eurosat",
        data_dir=str(data_dir),
        epochs=epochs,
        threads=threads,
    )
    return with_overrides(config, recipe)


def with_overrides(config: TrainConfig, items: Sequence[str]) -> TrainConfig:
    """``config`` with ``KEY=VALUE`` overrides applied.

    Values are parsed as numbers, else as YAML (``null``, ``true``, ``{a: 1}``); a dotted key
    sets a nested setting (``augment.shift=4``).

    Args:
        config: The recipe to start from.
        items: The overrides, applied in order.

    Returns:
        A new, validated recipe.

    Raises:
        ConfigError: If an item is not ``KEY=VALUE`` or its key names no training setting.
    """
    values = config.to_dict()
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--recipe expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        target: Any = values
        for part in parents:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict) or leaf not in target:
            raise ConfigError(f"--recipe: {key!r} is not a training setting")
        target[leaf] = parse_value(text)
    return type(config).from_dict(values)


def train_and_evaluate(config: TrainConfig, dataset: Any, runs_dir: Path) -> dict[str, Any]:
    """Train ``config`` in the run cache (or reuse its finished run), then evaluate it.

    An interrupted run continues from its last checkpoint.

    Args:
        config: The training recipe.
        dataset: The loaded data set (``satcompress.load_dataset``).
        runs_dir: The run cache; the run lives in ``find_run_dir(runs_dir, config)``.

    Returns:
        The record (shared schema) plus ``epochs``, ``wall_s``, ``s_per_epoch``,
        ``train_img_per_s``, ``best_val_accuracy`` and ``run_dir``.
    """
    run_dir = find_run_dir(runs_dir, config)
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if (run_dir / "model.safetensors").is_file() and (run_dir / "train_summary.json").is_file():
        loaded = load_trained(run_dir)
        model, spec = loaded.model, loaded.input_spec
        summary = json.loads((run_dir / "train_summary.json").read_text())
    else:
        result = train(config, run_dir, dataset=dataset, resume=resume)
        model, spec, summary = result.model, result.input_spec, result.summary
    record = evaluate(
        model,
        dataset,
        spec,
        model_name=config.model,
        recipe={"stage": "train", **config.to_dict()},
        run_dir=run_dir,
    )
    record.update(
        epochs=config.epochs,
        wall_s=summary["wall_s"],
        s_per_epoch=summary["s_per_epoch"],
        train_img_per_s=summary["train_img_per_s"],
        best_val_accuracy=summary["best_val_accuracy"],
        run_dir=str(run_dir),
    )
    return record


def checkpoint_record(
    model: str, path: Path, dataset: Any, onnx_dir: Path, **extra: Any
) -> dict[str, Any]:
    """The record of an already trained model (e.g. ``../shared/models``), not retrained.

    Other benchmarks take such a model as their dense/fp32 base (``--checkpoint MODEL=PATH``).

    Args:
        model: The model's name in the record.
        path: Its run directory, or its weights file with the card beside it.
        dataset: The loaded data set.
        onnx_dir: Where its ONNX file is kept (``onnx_path``), to be timed again beside others.
        **extra: Further fields of the record.

    Returns:
        The record, with ``run_dir`` (``path``) and ``onnx_path``.
    """
    trained = load_trained(path)
    record = evaluate(
        trained.model,
        dataset,
        trained.input_spec,
        model_name=model,
        recipe={"stage": "fp32", "checkpoint": str(path), "card": trained.card.get("recipe")},
        run_dir=onnx_dir,
        extra=extra,
    )
    record.update(run_dir=str(path), onnx_path=str(Path(onnx_dir) / "model.onnx"))
    return record


def given_checkpoints(items: Sequence[str]) -> dict[str, Path]:
    """``--checkpoint MODEL=PATH`` arguments as a mapping.

    Args:
        items: The arguments.

    Returns:
        Model name to path.

    Raises:
        SystemExit: If an item is not ``MODEL=PATH`` of an existing file (a usage error).
    """
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"--checkpoint {item!r}: expected MODEL=PATH of an existing file")
        out[model] = Path(path)
    return out


def benchmark_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: data, results file, run cache, threads, reports.

    Args:
        doc: The benchmark's docstring (its first line describes the parser).
        out: The default results file.

    Returns:
        A parser the benchmark adds its own arguments to.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument("--threads", type=int, default=None, help="torch/ORT threads")
    parser.add_argument("--table", action="store_true", help="print the README table and exit")
    parser.add_argument(
        "--retime", action="store_true", help="only re-time every row side by side, then exit"
    )
    parser.add_argument("--retime-rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument(
        "--retime-threads",
        type=int,
        nargs="*",
        default=[1],
        help="thread counts also timed by the re-timing pass (after --threads)",
    )
    return parser


def load_eurosat(data_dir: Path) -> Any:
    """EuroSAT for a benchmark, with the split in use and the CPU printed (figures need both).

    Args:
        data_dir: Folder that holds EuroSAT.

    Returns:
        The loaded data set.
    """
    dataset = load_dataset("eurosat", data_dir)
    print(f"EuroSAT: {dataset.split_source}; CPU: {json.dumps(cpu_description())}")
    return dataset


def report_only(args: argparse.Namespace, table: Callable[[list[dict[str, Any]]], str]) -> bool:
    """``--table`` / ``--retime``: print (after re-timing) the README table.

    Args:
        args: Parsed :func:`benchmark_parser` arguments (``out``, ``table``, ``retime``...).
        table: The benchmark's table of its records.

    Returns:
        True if this was such a run (the benchmark has nothing left to do).
    """
    if not (args.table or args.retime):
        return False
    records = RecordList(args.out)
    if args.retime:
        retime(records, args.threads, max(1, args.retime_rounds), tuple(args.retime_threads))
    print(table(records.records))
    return True
