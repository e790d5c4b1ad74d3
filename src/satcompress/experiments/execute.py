"""Run an experiment into a study: reuse what is finished, run the rest, in parallel if asked.

Each stage becomes a :class:`StageJob` (plain data: it crosses process boundaries) run by
:func:`run_stage`, here or in a worker (the executors of
:mod:`satcompress.utils.executors`, the ones BAIC's candidates use). The worker claims the
stage's key in the study itself: a finished stage is reused, one that another live process
runs is waited for, an interrupted one continues from its checkpoint where the stage can
(training, distillation, QAT, BAIC) and starts over where it cannot. Stages whose inputs are
finished are submitted together, so independent stages run side by side with
``workers > 1``.

Committed records can stand in for finished stages (``records_from``): a study on a new
machine takes them (:func:`~satcompress.experiments.export.adopt_records`) and runs the
rest. A finished stage whose files are gone, as such a stage's are, runs again only when a
stage still to run starts from its model ("rebuilt").
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from satcompress.card import card_hash, training_recipe
from satcompress.config import Config, ConfigError, config_from_dict
from satcompress.experiments.export import adopt_records
from satcompress.experiments.plan import RESUMABLE, PlannedStage, model_stage, plan
from satcompress.experiments.spec import DataSpec, Experiment
from satcompress.experiments.study import Study, experiment_label
from satcompress.utils.executors import task_pool, threads_per_worker
from satcompress.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

__all__ = ["ExperimentRun", "StageJob", "load_data", "run_experiment", "run_stage"]

#: Executors of ``satcompress experiment run --executor``.
EXECUTORS = ("process", "ray")

#: Outcomes of a stage that later stages can start from.
FINISHED = ("ran", "resumed", "reused", "rebuilt")

# Datasets loaded in this process, by their DataSpec: stages of one process share them.
_DATASETS: dict[DataSpec, Any] = {}


@dataclasses.dataclass
class StageJob:
    """One stage to run (or reuse), as plain data.

    Attributes:
        study: The study folder.
        key: The stage's key.
        name: Its name in the experiment.
        kind: The stage.
        spec: What its key hashes (stored with it).
        input_key: The key of the stage it starts from, if any.
        config: Its config, serialized.
        source: The run directory or checkpoint it starts from (None: from scratch).
        teacher: The teacher's run directory, checkpoint, registry name or ``self``.
        train: The student's ``TrainConfig`` serialized (distill), or fine-tuning overrides
            (prune, QAT).
        distill: A prune stage's distillation settings, serialized.
        data: The data to load (None: the input's card names it).
        latency: Time the stage's deployable file.
        split: The split its record scores.
        threads: Torch threads (None: leave as they are).
        progress: Show progress bars.
        rebuild: Finished, but its files are gone and a stage still to run needs its model:
            run it again (it stays finished; its record is replaced when the rerun ends).
    """

    study: str
    key: str
    name: str
    kind: str
    spec: dict[str, Any]
    input_key: str | None
    config: dict[str, Any]
    source: str | None = None
    teacher: str | None = None
    train: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    latency: bool = True
    split: str = "test"
    threads: int | None = None
    progress: bool = False
    rebuild: bool = False


@dataclasses.dataclass
class ExperimentRun:
    """What one run of an experiment did.

    Attributes:
        experiment: The experiment.
        stages: Its plan.
        outcomes: Per stage name: ``ran``, ``resumed``, ``reused``, ``rebuilt`` (finished
            before, its files made again for a later stage), ``failed`` or ``skipped`` (an
            input failed).
        errors: Per failed stage name, its error.
        seconds: Per stage name, the seconds the stage took in this run (0 when reused).
    """

    experiment: Experiment
    stages: list[PlannedStage]
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no stage failed or was skipped."""
        return not any(v in ("failed", "skipped") for v in self.outcomes.values())


# --- the scheduler (this process) ---------------------------------------------------------


def run_experiment(
    experiment: Experiment,
    study: Study | str | Path,
    *,
    workers: int = 1,
    executor: str = "process",
    ray_address: str | None = None,
    progress: bool = True,
    on_stage: Callable[[PlannedStage, str, float], None] | None = None,
    records_from: Sequence[str | Path] = (),
) -> ExperimentRun:
    """Run every stage of ``experiment`` that the study does not hold yet.

    Args:
        experiment: The checked experiment (:func:`~satcompress.experiments.spec.load_experiment`).
        study: The study (or its folder).
        workers: Stages at once: 1 runs them here, one after the other; more runs
            independent stages side by side on ``executor``.
        executor: ``process`` (worker processes) or ``ray`` (Ray tasks).
        ray_address: A Ray cluster's address (None: a local Ray runtime).
        progress: Print a line per stage (and progress bars when running serially).
        on_stage: Called here with each stage, its outcome and seconds as it finishes.
        records_from: Results files (or globs) whose exported stage records count as
            finished stages where their keys match this plan's (:func:`adopt_from`).

    Returns:
        What was run, resumed, reused, failed or skipped.

    Raises:
        ConfigError: For an unknown executor.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if not isinstance(study, Study):
        with Study(study) as opened:
            return run_experiment(experiment, opened, workers=workers, executor=executor,
                                  ray_address=ray_address, progress=progress,
                                  on_stage=on_stage, records_from=records_from)  # fmt: skip
    stages = plan(experiment, study, load_data=True, progress=progress)
    if records_from:
        taken = set(adopt_from(study, stages, records_from, progress))
        for stage in stages:
            if stage.key in taken:
                stage.status = "reuse"
    # bound now, so an interrupted experiment's finished stages can be exported by name
    study.bind(experiment.name, experiment.preset, {s.spec.name: s.key for s in stages if s.key})
    run = ExperimentRun(experiment, stages)
    kind = "serial" if workers <= 1 and executor != "ray" else executor
    threads = None if kind == "serial" else threads_per_worker(workers)
    jobs = _jobs(experiment, stages, study, threads, progress and kind == "serial")
    for name in rebuilds(stages):
        jobs[name].rebuild = True
    waiting = {stage.spec.name: set(stage.spec.depends_on()) for stage in stages}
    try:
        with task_pool(kind, workers, ray_address=ray_address) as pool:
            _schedule(pool, max(1, workers), waiting, jobs, run, progress, on_stage)
    except ImportError as err:  # Ray is not installed
        raise ConfigError(str(err)) from err
    _skip_unreachable(waiting, run, progress)
    _save_summary(study, run)
    return run


def adopt_from(
    study: Study, stages: Sequence[PlannedStage], patterns: Sequence[str | Path], progress: bool
) -> list[str]:
    """Take the records of ``patterns``' files whose keys match planned stages as finished.

    Returns:
        The keys taken.

    Raises:
        FileNotFoundError: If a pattern matches no file.
    """
    keys = {stage.key for stage in stages if stage.key}
    taken = []
    for pattern in patterns:
        names = sorted(glob.glob(str(pattern)))
        if not names:
            raise FileNotFoundError(f"no results file matches {pattern}")
        for name in names:
            records = read_json(Path(name))
            if isinstance(records, list):
                taken += adopt_records(study, records, keys, source=str(Path(name).resolve()))
    if progress and taken:
        names = [stage.spec.name for stage in stages if stage.key in taken]
        print(f"{len(names)} finished stages taken from records: {', '.join(names)}")
    return taken


def rebuilds(stages: Sequence[PlannedStage]) -> list[str]:
    """Finished stages to run again: their model is gone and a stage still to run needs it.

    Walks back from every stage that will run, through the inputs it starts from or learns
    from (its teacher), to finished stages whose run directory holds no model (taken from
    records, or cleaned up); those need their own inputs in turn.

    Returns:
        Their names, in file order.
    """
    by_name = {stage.spec.name: stage for stage in stages}
    todo = [stage for stage in stages if stage.status != "reuse"]
    found: set[str] = set()
    while todo:
        for name in todo.pop().spec.depends_on():
            needed = model_stage(name, by_name)
            if needed.spec.passes_through or needed.spec.name in found:
                continue  # a checkpoint the file names, or already found
            if needed.status == "reuse" and not has_model(needed.run_dir):
                found.add(needed.spec.name)
                todo.append(needed)
    return [name for name in by_name if name in found]


def has_model(run_dir: Path | None) -> bool:
    """Whether a stage's run directory holds the model later stages load from it."""
    return run_dir is not None and any(
        (run_dir / name).is_file() for name in ("model.safetensors", "model.satc")
    )


def _schedule(
    pool: Any,
    slots: int,
    waiting: dict[str, set[str]],
    jobs: dict[str, StageJob],
    run: ExperimentRun,
    progress: bool,
    on_stage: Callable[[PlannedStage, str, float], None] | None,
) -> None:
    """Submit ready stages (``slots`` at a time), collect them, submit the next ones."""
    by_name = {stage.spec.name: stage for stage in run.stages}
    _submit_ready(pool, waiting, jobs, run, slots)
    while pool.pending:
        done = pool.next_done()
        outcome, seconds = _outcome(done)
        run.outcomes[done.name], run.seconds[done.name] = outcome, seconds
        if done.error is not None:
            run.errors[done.name] = f"{type(done.error).__name__}: {done.error}"
            if _user_error(done.error):  # its message says what to change: no traceback
                log.error("stage %s failed: %s", done.name, done.error)
            else:
                log.error("stage %s failed", done.name, exc_info=done.error)
        _report(by_name[done.name], outcome, seconds, run, progress, on_stage)
        _submit_ready(pool, waiting, jobs, run, slots)


def _user_error(error: BaseException) -> bool:
    """Whether a stage failed on its inputs or settings, not on a fault of its code.

    A class mismatch, a bad data folder or weights file, a locked run directory: the
    message says what to change.
    """
    from satcompress.card import ClassMismatchError
    from satcompress.data import DatasetError
    from satcompress.models import WeightsError
    from satcompress.utils.lock import RunDirLockedError

    user = (ConfigError, ClassMismatchError, DatasetError, WeightsError, RunDirLockedError)
    return isinstance(error, user)


def _jobs(
    experiment: Experiment,
    stages: list[PlannedStage],
    study: Study,
    threads: int | None,
    progress: bool,
) -> dict[str, StageJob]:
    by_name = {stage.spec.name: stage for stage in stages}
    return {
        stage.spec.name: _job(experiment, stage, by_name, study, threads, progress)
        for stage in stages
    }


def _job(
    experiment: Experiment,
    stage: PlannedStage,
    by_name: dict[str, PlannedStage],
    study: Study,
    threads: int | None,
    progress: bool,
) -> StageJob:
    spec = stage.spec
    assert stage.key is not None  # planned with its data loaded
    source = spec.source
    source_stage = model_stage(source.stage, by_name) if source and source.stage else None
    return StageJob(
        study=str(study.root),
        key=stage.key,
        name=spec.name,
        kind=spec.kind,
        spec=stage.key_spec(),
        input_key=source_stage.key
        if source_stage and not source_stage.spec.passes_through
        else None,
        config=spec.config.serialize(),
        source=_location(spec.source, by_name),
        teacher=_location(spec.teacher, by_name),
        train=spec.train.serialize() if isinstance(spec.train, Config) else spec.train,
        distill=spec.distill.serialize() if spec.distill is not None else None,
        data=spec.data.to_dict() if spec.data is not None else None,
        latency=experiment.latency,
        split=experiment.split,
        threads=threads,
        progress=progress,
    )


def _location(ref: Any, by_name: dict[str, PlannedStage]) -> str | None:
    """Where a referenced model is: a stage's run directory, a checkpoint, a name, ``self``."""
    if ref is None:
        return None
    if ref.stage is not None:
        stage = by_name[ref.stage]
        if stage.spec.passes_through:  # the model it measured
            return _location(stage.spec.source, by_name)
        return str(stage.run_dir)
    return ref.path or ref.model or "self"


def _submit_ready(
    pool: Any,
    waiting: dict[str, set[str]],
    jobs: dict[str, StageJob],
    run: ExperimentRun,
    slots: int,
) -> None:
    """Submit stages whose inputs are all finished, in file order, while a slot is free.

    Holding back what the workers cannot start yet keeps the file's order: a stage that
    follows its input in the file runs as soon as the input is done, before later stages
    that were ready all along (otherwise every stage without inputs, the long trainings,
    would queue up first).
    """
    finished = {n for n, o in run.outcomes.items() if o in FINISHED}
    for name in [n for n, deps in waiting.items() if deps <= finished]:
        if pool.pending >= slots:
            return
        del waiting[name]
        pool.submit(name, run_stage, jobs[name])


def _outcome(done: Any) -> tuple[str, float]:
    if done.error is not None:
        return "failed", 0.0
    return str(done.result["outcome"]), float(done.result["seconds"])


def _report(
    stage: PlannedStage,
    outcome: str,
    seconds: float,
    run: ExperimentRun,
    progress: bool,
    on_stage: Callable[[PlannedStage, str, float], None] | None,
) -> None:
    if progress:
        count = f"[{len(run.outcomes)}/{len(run.stages)}]"
        took = f" in {seconds:.1f} s" if outcome in FINISHED and outcome != "reused" else ""
        error = f": {run.errors[stage.spec.name]}" if stage.spec.name in run.errors else ""
        print(f"{count} {stage.spec.name} ({stage.spec.kind}): {outcome}{took}{error}",
              flush=True)  # fmt: skip
    if on_stage is not None:
        on_stage(stage, outcome, seconds)


def _skip_unreachable(waiting: dict[str, set[str]], run: ExperimentRun, progress: bool) -> None:
    for name, deps in waiting.items():
        run.outcomes[name] = "skipped"
        if progress:
            print(f"{name}: skipped (its input {', '.join(sorted(deps))} did not finish)")


def _save_summary(study: Study, run: ExperimentRun) -> None:
    """``experiments/<name>[@preset].json`` in the study: each stage's key, outcome, figures."""
    experiment = run.experiment
    stages = {}
    for stage in run.stages:
        row = study.get(stage.key) if stage.key else None
        record = (row.record if row else None) or {}
        stages[stage.spec.name] = {
            "stage": stage.spec.kind,
            "key": stage.key,
            "outcome": run.outcomes.get(stage.spec.name),
            "run_dir": str(stage.run_dir),
            **{k: record.get(k) for k in ("accuracy", "size_bytes", "format") if k in record},
        }
    name = experiment_label(experiment.name, experiment.preset)
    atomic_write_json(study.root / "experiments" / f"{name}.json", {
        "experiment": str(experiment.path), "preset": experiment.preset, "stages": stages,
    })  # fmt: skip


# --- one stage (this process or a worker) -------------------------------------------------


def run_stage(job: StageJob) -> dict[str, Any]:
    """Run one stage into the study, or reuse it: ``{"outcome", "seconds", "key"}``.

    Raises:
        Exception: Whatever the stage raised (the study marks the stage failed first).
    """
    started = time.perf_counter()
    study = Study(job.study)
    try:
        claim = study.claim(job.key, job.kind, job.spec, job.input_key)
        while claim.state == "busy":
            log.info("%s: another process runs it; waiting", job.name)
            study.wait(job.key)
            claim = study.claim(job.key, job.kind, job.spec, job.input_key)
        run_dir = study.run_dir(job.kind, job.key)
        rebuild = claim.state == "done" and job.rebuild and not has_model(run_dir)
        if claim.state == "done" and not rebuild:
            return {"outcome": "reused", "seconds": 0.0, "key": job.key}
        # a rebuild resumes its own interrupted attempt; the stage stays finished meanwhile
        resume = (claim.resume or rebuild) and _can_resume(job.kind, run_dir)
        if job.progress:  # printed where it runs: this process or a worker's
            state = "resuming" if resume else "rebuilding its files" if rebuild else "started"
            print(f"{job.name} ({job.kind}): {state}", flush=True)
        if not resume and job.kind != "baic":
            shutil.rmtree(run_dir, ignore_errors=True)
        with study.heartbeat(job.key):
            try:
                result = _execute(job, run_dir, resume)
            except BaseException as err:
                # interrupted: resumed next time; a failed rebuild keeps its record
                if not isinstance(err, KeyboardInterrupt) and not rebuild:
                    study.fail(job.key, err)
                raise
        seconds = round(time.perf_counter() - started, 2)
        record = dict(result.record, stage_key=job.key) if result.record else None
        try:
            study.finish(job.key, record, card_hash=card_hash(result.card),
                         details=_details(result.details), seconds=seconds,
                         resumed=resume and not rebuild)  # fmt: skip
        except ValueError as err:  # a record that breaks the schema
            study.fail(job.key, err)
            raise
        outcome = "rebuilt" if rebuild else "resumed" if resume else "ran"
        return {"outcome": outcome, "seconds": seconds, "key": job.key}
    finally:
        study.close()


def _can_resume(kind: str, run_dir: Path) -> bool:
    if kind == "baic":
        return run_dir.is_dir()
    return kind in RESUMABLE and (run_dir / "checkpoints" / "last.ckpt").is_file()


def _details(details: Any) -> Any:
    """A stage's own result, JSON-ready where it is plain data (else its summary)."""
    if isinstance(details, dict):
        return details
    summary = getattr(details, "summary", None)
    return summary if isinstance(summary, dict) else None


def load_data(spec: DataSpec, progress: bool = False) -> Any:
    """The dataset of ``spec``, loaded once per process."""
    if spec not in _DATASETS:
        from satcompress.data import load_dataset

        _DATASETS[spec] = load_dataset(
            spec.dataset, spec.data_dir, split_dir=spec.split_dir, image_size=spec.image_size,
            skip_bad_files=spec.skip_bad_files, seed=spec.seed, progress=progress,
        )  # fmt: skip
    return _DATASETS[spec]


def _execute(job: StageJob, run_dir: Path, resume: bool) -> Any:
    """Run the stage's function (:data:`STAGE_RUNNERS`) with its options."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    dataset = load_data(DataSpec(**job.data), job.progress) if job.data else None
    return STAGE_RUNNERS[job.kind](job, dataset, run_dir, resume)


def _latency(job: StageJob) -> Any:
    from satcompress.evaluate.evaluate import DEFAULT_LATENCY

    return DEFAULT_LATENCY if job.latency else None


def _measure(job: StageJob) -> dict[str, Any]:
    return {"split": job.split, "latency": _latency(job), "progress": job.progress}


def _run_train(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.pipeline import run

    config = config_from_dict(job.config)
    return run(config, job.source, dataset, run_dir, resume=resume, **_measure(job))


def _run_distill(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.pipeline import run

    train = dict(job.train or {})
    if job.source:  # the student starts from this model's weights
        train["weights"] = str(_weights(job.source))
    return run(config_from_dict(job.config), job.teacher, dataset, run_dir,
               train_config=config_from_dict(train), resume=resume, **_measure(job))  # fmt: skip


def _weights(source: str) -> Path:
    path = Path(source)
    return path / "model.safetensors" if path.is_dir() else path


def _run_prune(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.pipeline import run

    teacher = job.teacher
    return run(
        config_from_dict(job.config), job.source, dataset, run_dir,
        train_config=_finetune(job), teacher=teacher,
        distill_config=config_from_dict(job.distill) if job.distill and teacher else None,
        **_measure(job),
    )  # fmt: skip


def _run_quantize(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.pipeline import run

    config = config_from_dict(job.config)
    options: dict[str, Any] = {}
    if type(config).__name__ == "QATConfig":
        if job.teacher:
            config = config.replace(teacher=job.teacher)
        options.update(train_config=_finetune(job), resume=resume)
    return run(config, job.source, dataset, run_dir, **options, **_measure(job))


def _run_baic(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.search import baic

    config = config_from_dict(job.config)
    if job.teacher:
        config = config.replace(teacher=job.teacher)
    return baic(job.source, dataset, config, run_dir, progress=job.progress)


def _run_evaluate(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.pipeline import run

    config = config_from_dict(job.config)
    if not job.latency:
        config = config.replace(latency=False)
    return run(config, job.source, dataset, run_dir, progress=job.progress)


def _run_vit_layers(job: StageJob, dataset: Any, run_dir: Path, resume: bool) -> Any:
    from satcompress.compress.prune.vit_layers import vit_layer_importance
    from satcompress.pipeline import StageResult, dataset_for, load

    model = load(job.source)
    dataset = dataset_for(model.card, dataset, where=job.source, progress=job.progress)
    config = config_from_dict(job.config)
    result = vit_layer_importance(model.model, dataset, config, run_dir,
                                  input_spec=model.input_spec, progress=job.progress)  # fmt: skip
    return StageResult("vit_layers", model.model, model.card, run_dir, model.input_spec,
                       details=result, dataset=dataset)  # fmt: skip


def _finetune(job: StageJob) -> Any:
    """The fine-tuning ``TrainConfig``: the input's recipe with the stage's overrides."""
    if not job.train:
        return None
    import dataclasses as dc

    from satcompress.checkpoint import read_card
    from satcompress.train.config import TrainConfig

    card = read_card(job.source) if job.source else {}
    names = {f.name for f in dc.fields(TrainConfig)}
    values = {k: v for k, v in training_recipe(card).items() if k in names}
    for key in ("model", "model_kwargs"):
        if key in card:
            values.setdefault(key, card[key])
    for key, value in job.train.items():
        merge = key in ("model_kwargs", "augment") and isinstance(value, dict)
        values[key] = {**values.get(key, {}), **value} if merge else value
    return TrainConfig.from_dict(values)


#: The function that runs each kind of stage.
STAGE_RUNNERS: dict[str, Callable[[StageJob, Any, Path, bool], Any]] = {
    "train": _run_train,
    "distill": _run_distill,
    "prune": _run_prune,
    "quantize": _run_quantize,
    "baic": _run_baic,
    "evaluate": _run_evaluate,
    "vit_layers": _run_vit_layers,
}
