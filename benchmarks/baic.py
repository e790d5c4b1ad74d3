"""BAIC benchmark: the shared ResNet-18 compressed to byte budgets on EuroSAT 64x64.

Writes ``results/baic.json``: one record per row, the schema of every record (the saved
file's test accuracy in ONNX Runtime, ``size_bytes`` on disk, ``latency_ms``) plus the
search's summary (budget, baselines at the same budget, the time split, the plan). Every row
asserts that the file on disk is within its budget.

Rows (``--rows``):

* ``resnet18-<budget>``: ``satcompress baic`` from the shared ResNet-18 at that budget
  (1MB, 500kB, 250kB, 3MB by default), with the uniform and greedy baselines;
* ``resnet18-1MB-latency``: 1 MB and half the fp32 model's batch-1 latency;
* ``<row>-sparse``: the row with unstructured sparsity as a search option too
  (``--sparsities``, 0.5/0.75/0.9 by default), in its own run directory;
* ``resnet18-fp32-epoch``: one plain fp32 training epoch of the same model on the same
  machine (its recipe, full training split): the unit of the search's cost.
* ``ucmerced-fp32``: a UC Merced ResNet-18 at 128 px, fine-tuned from the shared EuroSAT
  model with a new head (``--ucm-epochs``; no ImageNet weights offline), its test accuracy;
* ``ucmerced-<budget>``: ``baic`` from that model on UC Merced at that budget.
* ``mobilenet_v2-fp32``: the baseline benchmark's MobileNetV2 (its recipe and run cache:
  trained once, shared with ``benchmarks/baseline.py``), its test accuracy;
* ``resnet9-fp32``: the distillation benchmark's ResNet-9 recipe without KD (97.11% there);
* ``mobilenet_v2-<budget>``, ``resnet9-<budget>``: ``baic`` from that model at that budget.

Resumable twice over: finished rows are kept in the results file, and an interrupted row
resumes its search from its last finished candidate (the run directories live under
``--runs-dir``, outside the work tree).

    python benchmarks/baic.py --rows resnet18-1MB resnet18-fp32-epoch
    python benchmarks/baic.py --table
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from satcompress.data import load_dataset
from satcompress.experiments import (
    RecordList,
    baseline_config,
    benchmark_parser,
    find_run_dir,
    load_eurosat,
    report_only,
    train_and_evaluate,
)
from satcompress.pipeline import load
from satcompress.pipeline import train as train_stage
from satcompress.search.budget import format_bytes, parse_budget
from satcompress.search.candidates import CandidateLog
from satcompress.search.config import BASELINES, BAICConfig
from satcompress.search.loop import CANDIDATES_FILE, baic, trajectory
from satcompress.train import TrainConfig

SHARED_RESNET18 = Path("../shared/models/resnet18_eurosat64.safetensors")
UCM_SIZE = 128
DEFAULT_ROWS = ("resnet18-1MB", "resnet18-fp32-epoch", "resnet18-500kB", "resnet18-3MB")


def main() -> None:
    parser = benchmark_parser(__doc__, "results/baic.json")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument(
        "--redo",
        action="store_true",
        help="recompute the rows even if saved: a search resumes from its run directory, so "
        "only its unfinished or failed candidates run again (and the file is re-measured)",
    )
    parser.add_argument("--checkpoint", type=Path, default=SHARED_RESNET18)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--candidate-batches", type=int, default=40)
    parser.add_argument("--final-epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=[0.5, 0.75, 0.9],
        help="unstructured sparsities a layer may add in ``-sparse`` rows",
    )
    parser.add_argument("--ucm-epochs", type=int, default=8, help="UC Merced fine-tune epochs")
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        help="baselines of every search row (mct needs pip install satcompress[mct]); rows "
        "with other than the default ones get their own id and run directory, row+<names>",
    )
    parser.add_argument(
        "--small-channel-ratios",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75],
        help="channel ratios of budgets under 1 MB (0.5 MB needs pruning beyond half)",
    )
    args = parser.parse_args()
    if report_only(args, table):
        return
    records = RecordList(args.out)
    attach_trajectories(records)
    datasets = _Datasets(args.data_dir)
    for row in args.rows:
        row_id = row if row.endswith("fp32-epoch") else _row_id(row, args.baselines)
        if records.get(row_id) is not None and not args.redo:
            print(f"{row_id}: done")
            continue
        source_name = row.split("-")[0]
        if row.endswith("fp32-epoch"):
            record = fp32_epoch(args, datasets.eurosat)
        elif row.endswith("-fp32") and source_name in TRAINED:
            config, data = TRAINED[source_name]
            record = train_and_evaluate(config(args), getattr(datasets, data), args.runs_dir)
        else:
            record = search_row(args, datasets, row, records)
        records.put({"id": row_id, **record})
        print(f"{row_id}: saved")
    print(table(records.records))


def attach_trajectories(records: RecordList) -> None:
    """Give each row its search's trajectory, where its run directory still is.

    The trajectory (the candidates in the order they finished) is read from the row's
    ``candidates.jsonl``: rows saved before summaries carried one get it, and rows whose
    stored one differs (an earlier rule marked refused final files as chosen) are updated.
    """
    for record in list(records.records):
        summary = record.get("baic")
        log = CandidateLog(Path(summary["artifact"]).parent / CANDIDATES_FILE) if summary else None
        if log is None or not log.path.is_file():
            continue
        found = trajectory(log.records())
        if summary.get("candidates") != found:
            records.put({**record, "baic": {**summary, "candidates": found}})


class _Datasets:
    """EuroSAT and UC Merced, each loaded when a row first needs it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @functools.cached_property
    def eurosat(self) -> Any:
        return load_eurosat(self.data_dir)

    @functools.cached_property
    def ucmerced(self) -> Any:
        return load_dataset("ucmerced", self.data_dir, image_size=UCM_SIZE)


def ucmerced_config(args: Any) -> TrainConfig:
    """The UC Merced model: ResNet-18 from the shared EuroSAT weights, a new 21-class head."""
    return TrainConfig(
        model="resnet18", dataset="ucmerced", data_dir=str(args.data_dir), image_size=UCM_SIZE,
        weights=str(SHARED_RESNET18), new_head=True, epochs=args.ucm_epochs, batch_size=32,
        lr=0.02, precision="bf16-mixed",
    )  # fmt: skip


def mobilenet_config(args: Any) -> TrainConfig:
    """The baseline benchmark's MobileNetV2 recipe (its run cache key, so trained once)."""
    return baseline_config("mobilenet_v2", args.data_dir)


def resnet9_config(args: Any) -> TrainConfig:
    """The distillation benchmark's ResNet-9 recipe without KD (its ``resnet9-ce``, 97.11%)."""
    return TrainConfig(
        model="resnet9", model_kwargs={"stem_pool": True, "logit_scale": 0.125},
        dataset="eurosat", data_dir=str(args.data_dir), epochs=15, precision="bf16-mixed",
    )  # fmt: skip


#: Models this benchmark trains (row ``<name>-fp32``) and compresses (``<name>-<budget>``):
#: their recipe and the data set they train on. ``resnet18`` is the shared model instead.
TRAINED = {
    "ucmerced": (ucmerced_config, "ucmerced"),
    "mobilenet_v2": (mobilenet_config, "eurosat"),
    "resnet9": (resnet9_config, "eurosat"),
}


def _trained_source(args: Any, row: str, config: TrainConfig) -> Path:
    """The run directory of a model this benchmark trains; an error if it is not there."""
    source = find_run_dir(args.runs_dir, config)
    if not (source / "model.safetensors").is_file():
        first = row.split("-")[0] + "-fp32"
        raise SystemExit(f"{row} needs {first} first (the model it compresses)")
    return source


def search_row(args: Any, datasets: _Datasets, row: str, records: RecordList) -> dict[str, Any]:
    """One ``baic`` run; asserts the saved file is within the budget."""
    source_name, budget = row.split("-")[:2]
    if source_name in TRAINED:
        config, data = TRAINED[source_name]
        source, dataset = _trained_source(args, row, config(args)), getattr(datasets, data)
    else:
        source, dataset = args.checkpoint, datasets.eurosat
    latency = None
    if row.endswith("-latency"):
        fp32 = records.get(f"{source_name}-{budget}") or {}
        before = (fp32.get("baic") or {}).get("input", {}).get("latency_ms")
        if before is None:
            raise SystemExit(f"{row} needs {source_name}-{budget} first (its fp32 latency)")
        latency = round(before / 2, 4)
    small = parse_budget(budget, reference_bytes=10**9) < 10**6
    options: dict[str, Any] = {"channel_ratios": tuple(args.small_channel_ratios)} if small else {}
    if row.endswith("-sparse"):
        options["sparsities"] = tuple(args.sparsities)
    config = BAICConfig(
        **options,
        budget=budget, latency_budget_ms=latency, candidates=args.candidates,
        candidate_batches=args.candidate_batches, final_epochs=args.final_epochs,
        workers=args.workers, baselines=tuple(args.baselines),
    )  # fmt: skip
    run_dir = args.runs_dir / "baic" / row  # other baselines resume the row's search
    started = time.perf_counter()
    result = baic(source, dataset, config, run_dir)
    summary = result.details
    limit = parse_budget(budget, reference_bytes=summary["input"]["bytes"])
    on_disk = Path(summary["artifact"]).stat().st_size
    assert on_disk <= limit, f"{row}: {on_disk} bytes on disk > budget {limit}"
    return {**result.record, "seconds": round(time.perf_counter() - started, 1), "baic": summary}


def _row_id(row: str, baselines: list[str]) -> str:
    """The row's id: ``row`` with the default baselines, else ``row+<baselines>``."""
    if tuple(baselines) == BASELINES:
        return row
    return "+".join([row, *baselines]) if baselines else f"{row}+no-baselines"


def fp32_epoch(args: Any, dataset: Any) -> dict[str, Any]:
    """One plain fp32 epoch of the checkpoint's model with its recipe: the cost unit."""
    trained = load(args.checkpoint)
    recipe = TrainConfig.from_dict(
        {**{k: v for k, v in trained.card.get("recipe", {}).items()
            if k in TrainConfig.__dataclass_fields__},
         "model": trained.card.get("model", "resnet18"), "epochs": 1, "dataset": "eurosat",
         "data_dir": str(args.data_dir), "weights": None, "new_head": False, "pretrained": False}
    )  # fmt: skip
    run_dir = args.runs_dir / "baic" / "fp32-epoch"
    started = time.perf_counter()
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    result = train_stage(None, dataset, recipe, run_dir, evaluate_model=False, resume=resume)
    seconds = time.perf_counter() - started
    summary = result.details.summary
    return {
        "model": recipe.model, "dataset": "eurosat", "recipe": recipe.to_dict(),
        "accuracy": float(summary.get("best_val_accuracy") or 0.0), "params": 0,
        "macs": 0, "size_bytes": 0, "format": "none", "latency_ms": {},
        "epoch_seconds": _last(summary.get("s_per_epoch")) or seconds, "seconds": round(seconds, 1),
    }  # fmt: skip


def _last(value: Any) -> float | None:
    """The last epoch's seconds (the summary keeps one per epoch)."""
    if isinstance(value, list):
        return float(value[-1]) if value else None
    return float(value) if value is not None else None


def table(records: list[dict[str, Any]]) -> str:
    """The README table: budget, file, accuracy, baselines, time in fp32 epochs."""
    epochs = _epoch_seconds(records)
    shown = [r for r in records if r.get("baic")]
    extra = [  # optional baselines: a column only where some row ran them
        (kind, title)
        for kind, title in (
            ("small-model", "small model (val)"),
            ("mct", "MCT PTQ (val, implied size)"),
        )
        if any(kind in r["baic"].get("baselines", {}) for r in shown)
    ]
    lines = [
        "| row | data | model | budget | file on disk | test acc (fp32) | uniform (val) "
        "| BAIC cand. (val) | greedy (val) "
        + "".join(f"| {title} " for _, title in extra)
        + "| latency bs1 | search time |",
        "|---|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---:|---:|",
    ]
    for record in shown:
        summary = record["baic"]
        base = summary.get("baselines", {})
        total = summary["time_seconds"]["total"]
        dataset = summary.get("dataset", "eurosat")
        unit = epochs.get(record["id"].split("-")[0])  # the source model's own fp32 epoch
        cost = f"{total / 60:.0f} min" + (f" ({total / unit:.1f} fp32 epochs)" if unit else "")
        accuracy = f"{_acc(summary['accuracy'])} ({_acc(summary['input']['accuracy'])})"
        budget = format_bytes(summary["budget_bytes"])
        if summary.get("latency_budget_ms"):
            budget += f", {summary['latency_budget_ms']:.2f} ms"
        if summary.get("config", {}).get("sparsities"):
            budget += ", +sparsity"
        lines.append(
            f"| `{record['id']}` | {dataset} | {record.get('model', '')} | {budget} "
            f"| {format_bytes(summary['bytes'])} | {accuracy} "
            f"| {_acc((base.get('uniform') or {}).get('accuracy'))} "
            f"| {_acc(summary.get('val_accuracy'))} "
            f"| {_acc((base.get('greedy') or {}).get('accuracy'))} "
            + "".join(f"| {_baseline_cell(kind, base.get(kind))} " for kind, _ in extra)
            + f"| {summary['input']['latency_ms']:.2f} -> {summary['latency_ms']:.2f} ms | {cost} |"
        )
    return "\n".join(lines)


def _epoch_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of one plain fp32 training epoch of each source model, where one was timed.

    ResNet-18: the ``resnet18-fp32-epoch`` row; the models this benchmark trains: the mean
    epoch of their ``<name>-fp32`` run (on the same machine, not side by side).
    """
    found = {}
    for r in records:
        name = r["id"].split("-")[0]
        if "epoch_seconds" in r:
            found[name] = float(r["epoch_seconds"])
        elif r["id"].endswith("-fp32") and r.get("s_per_epoch"):
            found[name] = sum(r["s_per_epoch"]) / len(r["s_per_epoch"])
    return found


def _acc(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _baseline_cell(kind: str, entry: dict[str, Any] | None) -> str:
    """An optional baseline's validation accuracy at its size, or its status.

    MCT's size is the one its allocation implies: the file it writes is no smaller.
    """
    if not entry:
        return "—"
    if entry.get("status") != "ok" or entry.get("accuracy") is None:
        return str(entry.get("status") or "—")
    size = entry.get("predicted_bytes") if kind == "mct" else entry.get("bytes")
    return f"{_acc(entry.get('accuracy'))} @ {format_bytes(size or 0)}"


if __name__ == "__main__":
    main()
