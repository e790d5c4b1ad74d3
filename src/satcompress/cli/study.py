"""``satcompress experiment run`` and ``satcompress study``: experiments into one results store.

Examples::

    satcompress experiment run experiments/experiment_1_kd_eurosat.yaml --preset cpu
    satcompress experiment run FILE --workers 2 --executor ray --dry-run --mlflow URI
    satcompress experiment run FILE --records-from 'results/*.json'   # a new machine: the rest
    satcompress study import 'results/*.json' --study runs/study
    satcompress study show --study runs/study
    satcompress study export --study runs/study --out results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from satcompress.experiments.plan import PlannedStage
    from satcompress.experiments.spec import Experiment
    from satcompress.experiments.study import StageRow, Study

#: Where a study lives unless ``--study`` says otherwise.
DEFAULT_STUDY = Path("runs") / "study"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``experiment`` and ``study``."""
    experiment = commands.add_parser(
        "experiment", help="run experiment files (YAML lists of stages) into a study"
    ).add_subparsers(title="experiment commands")
    run = experiment.add_parser(
        "run",
        help="validate an experiment file, then run the stages the study does not hold yet",
        description=(
            "Every stage's key hashes its input, data and settings: finished stages are "
            "reused, interrupted ones resumed, changed ones (and what follows them) rerun."
        ),
    )
    run.add_argument("configs", nargs="+", type=Path, metavar="CONFIG",
                     help="experiment YAML file(s): every file is checked, then each runs "
                     "in turn")  # fmt: skip
    run.add_argument("--preset", help="a preset of the file (default: cpu, if it has one)")
    run.add_argument("--dataset", help="replace the file's dataset")
    run.add_argument("--data-dir", type=Path, help="replace the file's data folder")
    run.add_argument("--image-size", type=int, help="replace the file's image size (pixels)")
    _study_flag(run)
    run.add_argument("--workers", type=int, default=1, help="independent stages at once")
    run.add_argument("--executor", choices=["process", "ray"], default="process",
                     help="where parallel stages run (with --workers > 1)")  # fmt: skip
    run.add_argument("--ray-address", help="existing Ray cluster (default: a local runtime)")
    run.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan; run nothing"
    )
    run.add_argument("--mlflow", metavar="URI", help="also log each stage as an MLflow run")
    run.add_argument(
        "--export", type=Path, metavar="DIR",
        help="write the experiment's records to DIR/<name>@<preset>.json (as `study export` "
        "does) after each stage that finishes, and at the end of a failed or interrupted run",
    )  # fmt: skip
    run.add_argument(
        "--records-from", nargs="+", default=[], metavar="FILE",
        help="results files (or globs, e.g. 'results/*.json') of an earlier run: stages whose "
        "exported records match this plan's keys count as finished, so a new machine or a "
        "cleaned study runs only the rest (remaking a model a later stage needs)",
    )  # fmt: skip
    run.set_defaults(handler=cmd_experiment_run)

    study = commands.add_parser("study", help="the results store of a study").add_subparsers(
        title="study commands"
    )
    imports = study.add_parser(
        "import", help="load results files (JSON lists of records) into the study"
    )
    imports.add_argument("patterns", nargs="+", help="files or globs, e.g. 'results/*.json'")
    _study_flag(imports)
    imports.set_defaults(handler=cmd_study_import)
    show = study.add_parser("show", help="the stages and records a study holds")
    _study_flag(show)
    show.set_defaults(handler=cmd_study_show)
    export = study.add_parser(
        "export",
        help="write experiments' records as results files (JSON lists, small enough to commit)",
        description=(
            "One file per experiment and preset, <name>[@preset].json, each record tagged with "
            "its stage; `satcompress study import` loads them into another study."
        ),
    )
    export.add_argument("experiments", nargs="*", metavar="NAME",
                        help="experiment names (default: every one in the study)")  # fmt: skip
    export.add_argument("--preset", help="only this preset (default: every preset run)")
    export.add_argument("--out", type=Path, default=Path("results"),
                        help="folder for the files (default: results), or a .json file for "
                             "one experiment")  # fmt: skip
    _study_flag(export)
    export.set_defaults(handler=cmd_study_export)


def _study_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY,
                        help=f"study folder (default: {DEFAULT_STUDY})")  # fmt: skip


def cmd_experiment_run(args: argparse.Namespace) -> int:
    """Validate every file, then plan and (unless ``--dry-run``) run each in turn."""
    from satcompress.experiments.spec import load_experiment
    from satcompress.experiments.study import Study

    experiments = [
        load_experiment(config, args.preset, dataset=args.dataset, data_dir=args.data_dir,
                        image_size=args.image_size)
        for config in args.configs
    ]  # fmt: skip
    code = 0
    with Study(args.study) as study:
        for experiment in experiments:
            code = max(code, _run_one(args, study, experiment))
            if code == 130:  # Ctrl-C: not the next file either
                break
    return code


def _run_one(args: argparse.Namespace, study: Study, experiment: Experiment) -> int:
    """Plan and run (or with ``--dry-run`` show) one experiment; its exit code."""
    from satcompress.experiments.execute import run_experiment
    from satcompress.experiments.plan import plan, plan_table

    preset = f", preset {experiment.preset}" if experiment.preset else ""
    print(f"experiment {experiment.name}{preset}: {len(experiment.stages)} stages, "
          f"study {study.root}")  # fmt: skip
    if args.dry_run:
        print(plan_table(plan(experiment, study, load_data=False), study))
        return 0
    tracker = None
    if args.mlflow:
        from satcompress.experiments.tracking import MlflowTracker

        tracker = MlflowTracker(args.mlflow, experiment.name, study)

    def on_stage(stage: PlannedStage, outcome: str, seconds: float) -> None:
        if tracker is not None:
            tracker(stage, outcome, seconds)
        if outcome in ("ran", "resumed", "rebuilt"):  # a killed session loses no record
            _export_run(args.export, study, experiment.name, experiment.preset, quiet=True)

    try:
        result = run_experiment(
            experiment, study, workers=args.workers, executor=args.executor,
            ray_address=args.ray_address, on_stage=on_stage, records_from=args.records_from,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted; finished stages are saved in the study: rerun the same command "
              "to continue (interrupted training resumes from its last epoch)",
              file=sys.stderr)  # fmt: skip
        _export_run(args.export, study, experiment.name, experiment.preset)
        return 130
    _export_run(args.export, study, experiment.name, experiment.preset)
    counts = {o: list(result.outcomes.values()).count(o) for o in set(result.outcomes.values())}
    print(", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    for name, error in result.errors.items():
        print(f"{name} failed: {error}", file=sys.stderr)
    return 0 if result.ok else 1


def _export_run(
    out: Path | None, study: Study, name: str, preset: str, quiet: bool = False
) -> None:
    """Write the stages of the run that finished to ``out`` (nothing when ``out`` is None)."""
    if out is None:
        return
    from satcompress.experiments.export import export_experiment

    try:
        path, count = export_experiment(study, name, preset, out)
    except KeyError:  # interrupted before its stages were planned: nothing is bound yet
        print(f"--export: no stage of {name} had been planned; nothing written", file=sys.stderr)
        return
    if not quiet:
        print(f"{path}: {count} records")


def cmd_study_import(args: argparse.Namespace) -> int:
    """Index existing results files, tagged with the file each record came from."""
    from satcompress.experiments.study import Study

    with Study(args.study) as study:
        total = 0
        for pattern in args.patterns:
            for source, count in study.import_results(pattern).items():
                print(f"{source}: {count} records")
                total += count
    print(f"{total} records imported into {args.study}")
    return 0


def cmd_study_show(args: argparse.Namespace) -> int:
    """Stage counts by status, each experiment's progress, record counts by source."""
    from satcompress.experiments.study import Study, experiment_label

    with Study(args.study) as study:
        stages = study.stages()
        states = [_stage_state(study, s) for s in stages]
        for state in ("done", "running", "interrupted", "failed"):
            rows = [s for s, s_state in zip(stages, states, strict=True) if s_state == state]
            if rows:
                kinds = ", ".join(sorted({s.kind for s in rows}))
                print(f"{len(rows)} stage{'s' * (len(rows) != 1)} {state} ({kinds})")
        taken = [s for s in stages if s.status == "done" and _without_files(s)]
        if taken:
            print(f"  {len(taken)} of them taken from records (--records-from), without files")
        for name, preset in study.experiments():
            done, total = study.progress(name, preset)
            state = "complete" if done == total else "incomplete"
            print(f"experiment {experiment_label(name, preset)}: {done} of {total} stages "
                  f"done ({state})")  # fmt: skip
        for source, count in sorted(study.sources().items()):
            print(f"{count} records from {source}")
    return 0


def _without_files(row: StageRow) -> bool:
    """Whether a finished stage came from records and holds no model (none was remade)."""
    from satcompress.experiments.execute import has_model

    return "adopted_from" in row.spec and not has_model(row.run_dir)


def _stage_state(study: Study, row: StageRow) -> str:
    """A stage row's status, ``interrupted`` for a running one whose process is gone."""
    if row.status == "running" and not study.alive(row):
        return "interrupted"  # rerunning the experiment resumes it
    return row.status


def cmd_study_export(args: argparse.Namespace) -> int:
    """Write each chosen experiment's records to ``<out>/<name>[@preset].json``."""
    from satcompress.experiments.export import export_experiment
    from satcompress.experiments.study import Study

    with Study(args.study) as study:
        runs = [
            (name, preset)
            for name, preset in study.experiments()
            if (not args.experiments or name in args.experiments)
            and (args.preset is None or preset == args.preset)
        ]
        missing = sorted(set(args.experiments) - {name for name, _ in runs})
        if missing or not runs:
            print(f"the study {args.study} holds no run of {', '.join(missing) or 'any experiment'}"
                  f"{f' with preset {args.preset!r}' if args.preset else ''} (it holds: "
                  f"{study.experiment_labels()})", file=sys.stderr)  # fmt: skip
            return 2
        if args.out.suffix == ".json" and len(runs) > 1:
            print(f"--out {args.out} names one file, but {len(runs)} experiments match: give a "
                  "folder, or one experiment name", file=sys.stderr)  # fmt: skip
            return 2
        for name, preset in runs:
            path, count = export_experiment(study, name, preset, args.out)
            print(f"{path}: {count} records")
    return 0
