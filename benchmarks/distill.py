"""Distillation benchmark: students trained with and without KD from a ResNet-18 teacher.

On EuroSAT 64x64 with the shared split. Writes ``results/distill.json``: one record per
model in the shared schema, each with an ``id``: the teacher (``teacher``), then every
student row trained with the default recipe (``TrainConfig``) for its epochs, without KD
(``<student>-ce``) and with Hinton KD (``<student>-kd``; ``DistillConfig`` defaults, T=4,
alpha=0.7), plus ``epochs``, ``wall_s``, ``teacher_s`` and ``teacher_share`` (the teacher's
part of the training time). The small students also get an int8 PTQ row
(``<student>-kd-int8``): their deployable size.

Students (issue 3): MobileNetV2 (15 epochs), ResNet-9 (15, bf16), MobileNetV2 at width 0.5 (10).
The teacher is the shared ResNet-18 (``--teacher``, default ``../shared/models``).

Resumable: finished rows are kept; trained runs are cached in ``--runs-dir`` keyed by
their config (and the teacher's digest), an interrupted one continues from its last
checkpoint.

``--dataset ucmerced`` (rows ``ucmerced-*``, same file): a ResNet-18 teacher trained here
from scratch, then MobileNetV2 with and without KD, at 128 px (``--ucm-size``), 30 epochs.

    python benchmarks/distill.py --data-dir ../shared/data
    python benchmarks/distill.py --students resnet9 --no-kd &  # two processes, one row each
    python benchmarks/distill.py --students resnet9 --no-baselines
    python benchmarks/distill.py --dataset ucmerced --precision bf16-mixed
    python benchmarks/distill.py --table
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import satcompress as sc
from satcompress.compress.distill import DistillConfig, distill
from satcompress.compress.quantize import PTQConfig
from satcompress.experiments import (
    RecordList,
    benchmark_parser,
    checkpoint_record,
    load_eurosat,
    report_only,
    train_and_evaluate,
)
from satcompress.pipeline import quantize
from satcompress.report import format_table
from satcompress.utils.io import file_digest

TEACHER = Path("../shared/models/resnet18_eurosat64.safetensors")
UCM_EPOCHS = 30
#: student id -> (registry name, builder arguments, epochs, precision, also quantize to int8).
#: Precision is each model's faster one on an AVX512-BF16 CPU (``train-speed`` in
#: ``results/diagnostics.json``): bf16 trains ResNet-9 2.0x faster, MobileNetV2 2x slower.
#: ResNet-9's arguments are spelled out so that its cache key differs from the earlier full-
#: resolution, unscaled variant (``results/distill-ablation-resnet9-full-res.json``, 8 epochs).
STUDENTS = {
    "mobilenet_v2": ("mobilenet_v2", {}, 15, "32-true", False),
    "resnet9": ("resnet9", {"stem_pool": True, "logit_scale": 0.125}, 15, "bf16-mixed", False),
    "mobilenet_v2_w0.5": ("mobilenet_v2", {"width_mult": 0.5}, 10, "32-true", True),
}


def student_config(student: str, args) -> sc.TrainConfig:
    name, kwargs, epochs, precision, _ = STUDENTS[student]
    return sc.TrainConfig(
        model=name,
        model_kwargs=kwargs,
        dataset="eurosat",
        data_dir=str(args.data_dir),
        epochs=args.epochs or epochs,
        threads=args.threads,
        limit_batches=args.limit_batches,
        precision=args.precision or precision,
    )


def run_dir_for(config: sc.TrainConfig, kd: DistillConfig | None, teacher_sha: str, args) -> Path:
    """Cache folder of one student run: its recipe, KD settings and teacher."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("threads", "num_workers")}
    key = {"train": recipe, "kd": kd.to_dict() if kd else None, "teacher": teacher_sha}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return args.runs_dir / f"distill-{config.model}-{'kd' if kd else 'ce'}-{digest}"


def train_student(
    config, kd: DistillConfig | None, teacher: Path, args, dataset, teacher_sha: str
) -> dict:
    run_dir = run_dir_for(config, kd, teacher_sha, args)
    if (run_dir / "model.safetensors").is_file() and (run_dir / "train_summary.json").is_file():
        loaded = sc.load_trained(run_dir)
        model, spec = loaded.model, loaded.input_spec
        summary = json.loads((run_dir / "train_summary.json").read_text())
    else:
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        if kd is None:
            result = sc.train(config, run_dir, dataset=dataset, resume=resume)
        else:
            result = distill(config, kd, teacher, run_dir, dataset=dataset, resume=resume)
        model, spec, summary = result.model, result.input_spec, result.summary
    recipe = {"stage": "distill" if kd else "train", **config.to_dict()}
    if kd is not None:
        recipe["distill"] = {**kd.to_dict(), "teacher": str(teacher), "sha256": teacher_sha}
    record = sc.evaluate(
        model, dataset, spec, model_name=config.model, recipe=recipe, run_dir=run_dir
    )
    record.update(
        epochs=config.epochs,
        wall_s=summary["wall_s"],
        s_per_epoch=summary["s_per_epoch"],
        train_img_per_s=summary["train_img_per_s"],
        teacher_s=summary.get("teacher_s", 0.0),
        teacher_share=summary.get("teacher_share", 0.0),
        run_dir=str(run_dir),
    )
    return record


def int8_record(run_dir: Path, dataset) -> dict:
    return quantize(run_dir, dataset, PTQConfig(), run_dir / "int8").record


def ucmerced_rows(args, records: RecordList) -> None:
    """UC Merced: a ResNet-18 teacher trained here, then MobileNetV2 with and without KD.

    From scratch (no pretrained weights offline) at ``--ucm-size`` pixels, batch 32 (the
    train split is 1,260 images: 40 steps an epoch).
    """
    dataset = sc.load_dataset("ucmerced", args.data_dir, image_size=args.ucm_size)
    print(f"UC Merced: {dataset.split_source}, {dataset.image_size} px")

    def config(model: str) -> sc.TrainConfig:
        return sc.TrainConfig(
            model=model,
            dataset="ucmerced",
            data_dir=str(args.data_dir),
            image_size=args.ucm_size,
            epochs=args.epochs or UCM_EPOCHS,
            batch_size=32,
            lr=0.05,
            threads=args.threads,
            limit_batches=args.limit_batches,
            precision=args.precision or "32-true",
        )

    teacher_config = config("resnet18")
    record = records.get_or_run(
        "ucmerced-teacher", lambda: train_and_evaluate(teacher_config, dataset, args.runs_dir)
    )
    teacher = Path(record["run_dir"])
    teacher_sha = file_digest(teacher / "model.safetensors", "sha256")[:16]
    for kd in [None, DistillConfig()]:
        row = f"ucmerced-mobilenet_v2-{'kd' if kd else 'ce'}"
        record = records.get_or_run(
            row,
            lambda k=kd: train_student(
                config("mobilenet_v2"), k, teacher, args, dataset, teacher_sha
            ),
        )
        print(f"{row}: {record['accuracy'] * 100:.2f}% after {record['epochs']} epochs")


def _teacher_id(record: dict) -> str:
    return "teacher" if record.get("dataset", "eurosat") == "eurosat" else "ucmerced-teacher"


def _table_order(record: dict) -> tuple:
    """Per data set: the teacher, then each student (in ``STUDENTS`` order) without KD, with
    KD, int8."""
    rid = record["id"]
    dataset = 0 if record.get("dataset", "eurosat") == "eurosat" else 1
    if rid.endswith("teacher"):
        return dataset, -1, 0
    student, _, variant = rid.removeprefix("ucmerced-").partition("-")
    variants = ["ce", "kd", "kd-int8"]
    return (
        dataset,
        list(STUDENTS).index(student) if student in STUDENTS else len(STUDENTS),
        variants.index(variant) if variant in variants else len(variants),
    )


def markdown_table(records: list[dict]) -> str:
    by_id = {r["id"]: r for r in records}
    rows = []
    for r in sorted(records, key=_table_order):
        teacher = by_id.get(_teacher_id(r))
        kd = "yes" if "-kd" in r["id"] else ("-" if r["id"].endswith("teacher") else "no")
        vs_teacher = f"{(r['accuracy'] - teacher['accuracy']) * 100:+.2f}" if teacher else "-"
        plain = by_id.get(r["id"].replace("-kd", "-ce")) if r["id"].endswith("-kd") else None
        gain = f"{(r['accuracy'] - plain['accuracy']) * 100:+.2f}" if plain else "-"
        wall = f"{r['wall_s'] / 60:.0f} min" if r.get("wall_s") else "-"
        share = f"{r['teacher_share'] * 100:.0f}%" if r.get("teacher_share") else "-"
        rows.append(
            (
                r["id"],
                kd,
                r.get("epochs", "-"),
                f"{r['accuracy'] * 100:.2f}%",
                vs_teacher,
                gain,
                f"{r['params'] / 1e6:.2f} M",
                f"{r['size_bytes']:,} ({r['format']})",
                wall,
                share,
            )
        )
    header = (
        "student",
        "KD",
        "epochs",
        "test acc.",
        "vs teacher",
        "KD vs no KD",
        "params",
        "deployable bytes",
        "wall",
        "teacher share",
    )
    return format_table(header, "llrrrrrrrr", rows, records)


def main() -> None:
    parser = benchmark_parser(__doc__, "results/distill.json")
    parser.add_argument("--teacher", type=Path, default=TEACHER, help="run dir or weights + card")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the students trained without KD")  # fmt: skip
    parser.add_argument("--no-kd", dest="kd", action="store_false",
                        help="only the students without KD (run both in parallel)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="override every row's epochs")
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke test")
    parser.add_argument("--precision", default=None,
                        help="e.g. bf16-mixed; default: each student's (STUDENTS)")  # fmt: skip
    parser.add_argument(
        "--dataset", default="eurosat", choices=("eurosat", "ucmerced"),
        help="ucmerced: train a ResNet-18 teacher here, then MobileNetV2 with and without KD",
    )  # fmt: skip
    parser.add_argument("--ucm-size", type=int, default=128, help="UC Merced pixels")
    args = parser.parse_args()
    if report_only(args, markdown_table):
        return
    records = RecordList(args.out)
    if args.dataset == "ucmerced":
        ucmerced_rows(args, records)
        print(markdown_table(records.records))
        return
    dataset = load_eurosat(args.data_dir)
    teacher_file = sc.load_trained(args.teacher).weights_path
    teacher_sha = file_digest(teacher_file, "sha256")[:16]
    records.get_or_run(
        "teacher",
        lambda: checkpoint_record(
            "resnet18", args.teacher, dataset, args.runs_dir / f"distill-teacher-{teacher_sha}"
        ),
    )
    for student in args.students:
        config = student_config(student, args)
        modes = ([None] if args.baselines else []) + ([DistillConfig()] if args.kd else [])
        for kd in modes:
            row = f"{student}-{'kd' if kd else 'ce'}"
            record = records.get_or_run(
                row,
                lambda c=config, k=kd: train_student(
                    c, k, args.teacher, args, dataset, teacher_sha
                ),
            )
            print(f"{row}: {record['accuracy'] * 100:.2f}% after {record['epochs']} epochs")
        if STUDENTS[student][4] and args.kd:
            kd_run = Path(records.get(f"{student}-kd")["run_dir"])
            row = f"{student}-kd-int8"
            record = records.get_or_run(row, lambda r=kd_run: int8_record(r, dataset))
            if "derived_from" not in record:  # the report follows it to the KD student
                records.put({**record, "derived_from": f"{student}-kd"})
    print(markdown_table(records.records))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
