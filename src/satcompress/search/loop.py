"""BAIC, Budget-Aware Iterative Compression: the most accurate file that fits a byte budget.

``baic(source, dataset, config, run_dir)`` is a pipeline stage (one more lineage entry,
a :class:`~satcompress.pipeline.StageResult`). The search:

1. **Measure** (:mod:`satcompress.search.measure`, cached): per layer and option the loss
   increase (alone, on training images), the bytes in the artifact, the latency share.
2. **Allocate** (:mod:`satcompress.search.allocate`): an exact multiple-choice knapsack
   (``scipy.optimize.milp``) picks bits per layer and a channel ratio per group minimising the
   predicted cost under the budget. The additive byte model is then checked against the byte
   predictor of the whole plan (exact within 1%) and its target moved until the plan's
   predicted file fits the budget as tightly as it can (the correction of the byte model).
3. **Apply** (:mod:`satcompress.search.candidates`): prune and quantize as the plan says,
   fine-tune briefly with distillation from the input model, write the ``.satc`` and measure
   it (bytes on disk, validation accuracy in ONNX Runtime).
4. **Correct and repeat**: the byte model is recalibrated with the file just measured, and
   the next candidate is allocated with another view of the costs (structured pruning on or
   off, loss increase or KL), while time remains and the last candidate improved on the best;
   the best candidate by validation accuracy is fine-tuned longer and scored on the test
   split. Baselines (uniform, greedy) get the same fine-tune at the same budget; the optional
   ``mct`` baseline (:mod:`satcompress.search.mct_baseline`) is MCT's PTQ at that budget and
   the optional ``small-model`` one (:mod:`satcompress.search.small_baseline`) a small
   architecture distilled from the same teacher and quantized to fit.

The budget is a hard guarantee: a file over it is never saved as ``model.satc``; the search
tightens the target and tries again. Everything finished is in ``candidates.jsonl``: rerunning
the same command skips it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from satcompress.checkpoint import TrainedModel
from satcompress.compress.quantize.qat import quantizable_layers
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.evaluate.record import environment
from satcompress.pipeline.data import DataOverrides, dataset_for
from satcompress.pipeline.load import load
from satcompress.pipeline.result import StageResult
from satcompress.search.allocate import (
    Allocation,
    AllocationProblem,
    InfeasibleBudgetError,
    greedy,
    minimum_bytes,
    solve,
    uniform,
)
from satcompress.search.budget import format_bytes, parse_budget
from satcompress.search.candidates import (
    CandidateJob,
    CandidateLog,
    manifest_estimate,
    run_candidates,
    set_context,
)
from satcompress.search.config import BAICConfig
from satcompress.search.mct_baseline import mct_baseline, require_mct
from satcompress.search.measure import MeasuredModel, exact_bytes, measure, plan_of
from satcompress.search.small_baseline import KIND, fitting_bits, small_model
from satcompress.utils.cache import cache_root
from satcompress.utils.io import atomic_write_json
from satcompress.utils.lock import holds_run_lock

log = logging.getLogger(__name__)

__all__ = ["BAICError", "baic"]

CONFIG_FILE = "baic.json"
CANDIDATES_FILE = "candidates.jsonl"
MANIFEST_FILE = "manifest.json"
ARTIFACT = "model.satc"
#: Candidate kinds that are baselines (their time is the ``baselines`` phase).
BASELINE_KINDS = ("uniform", "greedy", "mct", KIND)
# Variants of the allocation tried in turn: (cost metric, structured pruning allowed).
VARIANTS = (("loss_increase", True), ("loss_increase", False), ("kl", True), ("kl", False))
FIT_ROUNDS = 12  # re-solves that move the additive model's target to fit the exact bytes
FIT_TOLERANCE = 0.003  # a plan within 0.3% under the budget fills it
RETRIES = 3  # new plans after a file came out over the budget


class BAICError(RuntimeError):
    """The search could not produce a file within the budget (the message says why)."""


@dataclasses.dataclass
class _Planned:
    """An allocation checked against the exact byte predictor."""

    allocation: Allocation
    plan: dict[str, Any]
    bytes: int
    label: str


class _Search:
    """One BAIC run: its settings, tables, log and clock."""

    def __init__(
        self,
        trained: TrainedModel,
        source: str,
        dataset: SceneDataset,
        config: BAICConfig,
        run_dir: Path,
        say: Callable[[str], None],
    ) -> None:
        self.trained, self.source, self.dataset = trained, source, dataset
        self.config, self.run_dir, self.say = config, run_dir, say
        self.started = time.perf_counter()
        self.log = CandidateLog(run_dir / CANDIDATES_FILE)
        self.done = self.log.done()
        self.seconds: dict[str, float] = {}
        self.measured: MeasuredModel | None = None
        self.budget = 0
        self.latency_budget = config.latency_budget_ms
        self.measure_wall = 0.0

    # --- clock and log ------------------------------------------------------------------------

    def time_left(self) -> float | None:
        """Seconds left of the time limit (None: no limit)."""
        if self.config.time_limit is None:
            return None
        return self.config.time_limit - (time.perf_counter() - self.started)

    def out_of_time(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def record(self, record: dict[str, Any]) -> None:
        """Log a finished candidate durably and say how the search stands."""
        self.log.append(record)
        self.done[record["id"]] = record
        best = self.best()
        shown = f"{record.get('accuracy', 0) * 100:.2f}%" if record.get("accuracy") else "-"
        left = self.time_left()
        self.say(
            f"candidate {record['id']} ({record['label']}): {format_bytes(record['bytes'] or 0)}"
            f", {record.get('split', 'val')} accuracy {shown}, {record['status']}"
            + (f"; best {best['id']} {best['accuracy'] * 100:.2f}%" if best else "")
            + (f"; {max(0, left) / 60:.1f} min left" if left is not None else "")
        )

    def file_factor(self) -> float:
        """Real file bytes over predicted bytes: the largest ratio measured so far (1 before).

        The correction of the byte prediction by measurement: the predictor is exact up to
        the zero codes fine-tuning changes (and LZMA, when on), so this stays near 1.
        """
        ratios = [
            r["bytes"] / r["predicted_bytes"]
            for r in self.done.values()
            if r.get("bytes")
            and r.get("predicted_bytes")
            and r["kind"] not in ("input", "mct", KIND)  # other predictors than the search's
        ]
        return max(ratios, default=1.0)

    def best(self, kind: str = "baic") -> dict[str, Any] | None:
        """The most accurate finished candidate of ``kind`` within the budget."""
        fits = [
            r
            for r in self.done.values()
            if r["kind"] == kind and r["status"] == "ok" and r.get("accuracy") is not None
        ]
        return max(fits, key=lambda r: r["accuracy"], default=None)

    # --- allocation ---------------------------------------------------------------------------

    def fit(
        self,
        solver: Callable[..., Allocation],
        problem: AllocationProblem,
        budget: int,
        label: str,
    ) -> _Planned:
        """The least-cost allocation whose whole-plan predicted bytes fit ``budget``.

        The additive model (conservative: pruned inputs are not counted) is solved at a target
        that is moved by the ratio of the budget to the exact prediction, keeping the best
        allocation that fits, so the plan uses the budget instead of the model's slack.
        """
        assert self.measured is not None
        target, best = float(budget), None
        low, high = 0.0, math.inf  # additive targets known to give a fitting / too large plan
        for _ in range(FIT_ROUNDS):
            try:
                allocation = solver(problem, target, self.latency_budget)
            except InfeasibleBudgetError:
                size = 0  # the additive model over-counts: a larger target may still fit
            else:
                plan = plan_of(allocation.bits, allocation.ratios)
                size = math.ceil(exact_bytes(self.measured.predictor, plan) * self.file_factor())
                better = best is None or allocation.predicted_cost < best.allocation.predicted_cost
                if size <= budget and better:
                    shown = f"{label}: {allocation.label or allocation.summary()}"
                    best = _Planned(allocation, plan.to_dict(), size, shown)
                if budget * (1 - FIT_TOLERANCE) <= size <= budget:
                    break  # the plan fills the budget
            if size <= budget:
                low = max(low, target)
            else:
                high = min(high, target)
            # bisect once the target is bracketed, else scale by what the predictor said
            step = (low + high) / 2 if high < math.inf else target * budget / max(size, budget / 2)
            if abs(step - target) <= target * 1e-4:
                break
            target = step
        if best is None:
            raise InfeasibleBudgetError(
                f"no plan of {label} fits {format_bytes(budget)}: the exact sizes of the plans "
                "the additive model proposed were all over it",
                min_bytes=minimum_bytes(problem),
            )
        return best

    def job(
        self,
        planned: _Planned,
        kind: str,
        job_id: str,
        *,
        epochs: int,
        batches: int | None,
        split: str = "val",
        latency: bool = False,
    ) -> CandidateJob:
        """A candidate of a planned allocation."""
        return CandidateJob(
            id=job_id,
            kind=kind,
            label=planned.label,
            plan=planned.plan,
            source=self.source,
            run_dir=str(self.run_dir / "candidates" / job_id),
            config=self.config.to_dict(),
            epochs=epochs,
            batches=batches,
            split=split,
            latency=latency,
            predicted_bytes=planned.bytes,
            predicted_cost=round(planned.allocation.predicted_cost, 6),
            budget_bytes=self.budget,
        )

    def run(self, jobs: list[CandidateJob]) -> list[dict[str, Any]]:
        """Run the jobs not already finished (resume); every record, old and new.

        A job whose plan and fine-tune equal another's (a baseline allocating what the exact
        solver did) reuses that record instead of training the same model twice.
        """
        todo, twins = [], []
        for job in jobs:
            if self._finished(job):
                self.say(f"candidate {job.id}: done in an earlier run, reused")
            elif self._twin(job) is not None:
                self._reuse(job)
            elif any(_same_work(job, other, self.source) for other in todo):
                twins.append(job)
            else:
                todo.append(job)
        if todo:
            run_candidates(
                todo,
                self.record,
                workers=self.config.workers,
                executor=self.config.executor,
                ray_address=self.config.ray_address,
            )
        for job in twins:
            if self._twin(job) is not None:
                self._reuse(job)
            else:
                run_candidates([job], self.record)
        return [self.done[job.id] for job in jobs if job.id in self.done]

    def _twin(self, job: CandidateJob) -> dict[str, Any] | None:
        """A finished record of the same plan, fine-tune and split."""
        for record in self.done.values():
            if record["status"] == "ok" and _same_work(job, record, self.source):
                return record
        return None

    def _reuse(self, job: CandidateJob) -> None:
        twin = self._twin(job)
        assert twin is not None
        self.say(f"candidate {job.id}: same plan and fine-tune as {twin['id']}, reused")
        self.record(
            {**twin, "id": job.id, "kind": job.kind, "label": job.label, "reused_from": twin["id"]}
        )

    def _finished(self, job: CandidateJob) -> bool:
        # by id: a resumed search allocates with what earlier runs measured (the byte
        # correction), so a later candidate's plan may differ; the finished one stands,
        # unless its fine-tune differs (a longer final asked for on resume)
        old = self.done.get(job.id)
        if old is None or old["status"] == "failed":
            return False
        return all(old.get(f, getattr(job, f)) == getattr(job, f) for f in FINE_TUNE_FIELDS)


#: A candidate record's fine-tune: a finished record with other values is not the job's.
FINE_TUNE_FIELDS = ("epochs", "batches", "split")


def _same_work(job: CandidateJob, other: CandidateJob | dict[str, Any], input_source: str) -> bool:
    """Whether two candidates train and score the same model: source, plan, fine-tune, split.

    ``other`` is a job or a record; records written before records named their source are
    of the input model (``input_source``).
    """
    fields = ("plan", "epochs", "batches", "split", "source")
    if isinstance(other, dict):
        other = {"source": input_source, **other}
        return all(getattr(job, f) == other.get(f) for f in fields)
    return all(getattr(job, f) == getattr(other, f) for f in fields)


@holds_run_lock
def baic(
    source: str | Path | TrainedModel | StageResult,
    dataset: SceneDataset | None,
    config: BAICConfig,
    run_dir: str | Path,
    *,
    overrides: DataOverrides | None = None,
    progress: bool = True,
) -> StageResult:
    """Compress a trained model to the most accurate ``.satc`` file that fits a byte budget.

    Args:
        source: The float model: a run directory or weights file with its card (a pruned run
            works too); :class:`TrainedModel`/:class:`StageResult` with a weights path.
        dataset: Its dataset; None = the card's (with ``overrides``).
        config: The search settings (budget, time limit, fine-tunes, baselines, workers).
        run_dir: Output folder: ``model.satc``, ``manifest.json``, ``candidates.jsonl``,
            ``report.md``, ``pareto.png``. Rerunning with the same settings resumes.
        overrides: Data settings replacing the card's (``--dataset``/``--data-dir``).
        progress: Print progress lines (which step, candidate k, best so far, time left).

    Returns:
        The stage result: the artifact loaded back, its card (with this stage in its lineage)
        and the record of the saved file (``size_bytes`` <= the budget).

    Raises:
        InfeasibleBudgetError: If no plan can fit the budget (its message gives the smallest
            achievable size).
        BAICError: If no fine-tuned file came out within the budget after the retries.
        ConfigError: If ``run_dir`` holds a BAIC run with other settings.
    """
    run_dir = Path(run_dir)
    if "mct" in config.baselines:
        require_mct()  # before any work: the extra is optional
    trained = load(source)
    if trained.kind not in ("weights", "pruned"):
        raise ConfigError(
            f"BAIC starts from a float model (a trained or pruned run), not a {trained.kind} "
            "one: give the checkpoint it was made from"
        )
    source_path = str(
        trained.weights_path.parent
        if trained.weights_path.name == "model.safetensors"
        else trained.weights_path
    )
    dataset = dataset_for(trained.card, dataset, overrides, where=source_path, progress=progress)
    say = _printer(progress)
    _claim(run_dir, config)
    search = _Search(trained, source_path, dataset, config, run_dir, say)
    _measure(search)
    _check_feasible(search)
    round_one = _first_round(search)
    search.run(round_one)
    _iterate(search)
    final = _final(search)
    return _finish(search, final)


# --- steps ----------------------------------------------------------------------------------


def _printer(progress: bool) -> Callable[[str], None]:
    started = time.perf_counter()

    def say(message: str) -> None:
        log.debug("baic: %s", message)  # printed below when progress is on: once, not twice
        if progress:
            print(
                f"[baic {time.perf_counter() - started:6.0f} s] {message}",
                file=sys.stderr,
                flush=True,
            )

    return say


#: Settings a resumed search may change: how it runs, baselines added beside the search (a
#: baseline's result is kept by its id; none of them changes a BAIC candidate), and the final
#: fine-tune's length (the search is reused; the final file is fine-tuned again).
FREE_ON_RESUME = frozenset(
    {"workers", "executor", "ray_address", "time_limit", "baselines", "uniform_pairs",
     "final_epochs"}
)  # fmt: skip


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with the defaults of options added since (a run resumes across them)."""
    try:
        return json.loads(json.dumps(BAICConfig.from_dict(saved).to_dict()))
    except (ConfigError, TypeError, ValueError):
        return saved  # options removed or renamed since: compared as saved


def _claim(run_dir: Path, config: BAICConfig) -> None:
    """Create the run directory, or check that it holds this same search (resume)."""
    path = run_dir / CONFIG_FILE
    settings = json.loads(json.dumps(config.to_dict()))
    if path.is_file():
        saved = _with_defaults(json.loads(path.read_text()))
        changed = sorted(
            k for k in settings if saved.get(k) != settings[k] and k not in FREE_ON_RESUME
        )
        if changed:
            raise ConfigError(
                f"{run_dir} holds a BAIC run with other settings ({', '.join(changed)}): use "
                "another --run-dir, or the same settings to resume it"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def _measure(search: _Search) -> None:
    config = search.config
    started = time.perf_counter()
    search.say(
        "step 1/4 measure: per-layer sensitivity, bytes"
        + (", latency" if config.latency_budget_ms else "")
    )
    set_context(search.source, search.trained, search.dataset, _teacher(search))
    layers = quantizable_layers(search.trained.model)
    info = manifest_estimate(search.trained, search.dataset, config, layers)
    search.measured = measure(
        search.trained.model,
        search.trained.input_spec,
        search.dataset,
        bits=config.bits,
        channel_ratios=config.channel_ratios,
        sparsities=config.sparsities,
        images=config.sensitivity_images,
        seed=config.seed,
        cache_dir=cache_root() / "sensitivity",
        latency=config.latency_budget_ms is not None,
        info=info,
    )
    measured = search.measured
    wall = time.perf_counter() - started
    computed = sum(v for k, v in measured.seconds.items() if not k.endswith("_wall"))
    # a cached sensitivity table counts what it cost the run that computed it
    search.seconds["measure"] = round(max(wall, computed), 2)
    search.measure_wall = round(wall, 2)
    search.budget = parse_budget(config.budget, reference_bytes=measured.fp32_bytes)
    search.say(
        f"input model: {format_bytes(measured.fp32_bytes)} fp32, "
        f"{format_bytes(measured.int8_bytes)} at 8 bits; budget {format_bytes(search.budget)}"
        f" ({measured.fp32_bytes / search.budget:.1f}x)"
    )


def _teacher(search: _Search) -> Any:
    import copy

    from satcompress.compress.distill.teacher import load_teacher

    teacher = search.config.teacher
    return load_teacher(
        copy.deepcopy(search.trained) if teacher == "self" else teacher,
        num_classes=len(search.dataset.classes),
    )


def _check_feasible(search: _Search) -> None:
    assert search.measured is not None
    problem = search.measured.problems["loss_increase"]
    smallest = minimum_bytes(problem)
    if smallest > search.budget:  # the additive model is conservative: ask the predictor
        bits = {
            name: min(layer.bytes, key=layer.bytes.get) for name, layer in problem.layers.items()
        }
        ratios = {name: max(group.ratios) for name, group in problem.groups.items()}
        smallest = min(smallest, exact_bytes(search.measured.predictor, plan_of(bits, ratios)))
    if smallest > search.budget:
        raise InfeasibleBudgetError(
            f"budget {format_bytes(search.budget)} is below the smallest file this search can "
            f"make, about {format_bytes(int(smallest))} (every layer at "
            f"{min(search.config.bits)} bit(s){_sparsest(search.config)}, every group pruned "
            f"by {max(search.config.channel_ratios, default=0):g}): raise the budget or allow "
            "lower bits / higher channel ratios / sparsities",
            min_bytes=smallest,
        )


def _sparsest(config: BAICConfig) -> str:
    """`` or 90% sparse`` when sparsities are searched, else nothing."""
    return f" or {max(config.sparsities):.0%} sparse" if config.sparsities else ""


def _solver(variant: tuple[str, bool]) -> Callable[..., Allocation]:
    _, prune = variant

    def solver(problem: AllocationProblem, target: float, latency: float | None) -> Allocation:
        if not prune:
            problem = _without_pruning(problem)
        return solve(problem, target, latency, method="milp")

    return solver


def _without_pruning(problem: AllocationProblem) -> AllocationProblem:
    from satcompress.search.allocate import GroupOptions

    groups = {name: GroupOptions(cost={0.0: 0.0}, kept={0.0: 1.0}) for name in problem.groups}
    return dataclasses.replace(problem, groups=groups)


def _variant_label(variant: tuple[str, bool]) -> str:
    metric, prune = variant
    return f"exact {'bits+channels' if prune else 'bits'}, {metric.replace('_', ' ')}"


def _first_round(search: _Search) -> list[CandidateJob]:
    """The first BAIC candidate and the baselines: independent, run together."""
    assert search.measured is not None
    config, problem = search.config, search.measured.problems["loss_increase"]
    started = time.perf_counter()
    search.say("step 2/4 allocate: exact knapsack (scipy milp) and baselines")
    jobs = []
    planned = search.fit(
        _solver(VARIANTS[0]), problem, _tightened(search), _variant_label(VARIANTS[0])
    )
    jobs.append(
        search.job(
            planned,
            "baic",
            "baic-1",
            epochs=config.candidate_epochs,
            batches=config.candidate_batches,
        )
    )
    for name in config.baselines:
        if name in ("mct", KIND):
            continue  # not a plan of the input model: run below
        try:
            plans = _baseline_plans(search, problem, name)
        except InfeasibleBudgetError as err:
            search.say(f"baseline {name}: infeasible ({err})")
            search.record(_infeasible(name, str(err)))
            continue
        for rank, planned in enumerate(plans):
            job_id = name if rank == 0 else f"{name}-{rank + 1}"
            jobs.append(
                search.job(
                    planned,
                    name,
                    job_id,
                    epochs=config.baseline_fine_tune_epochs,
                    batches=config.candidate_batches,
                )
            )
    search.seconds["allocate"] = round(time.perf_counter() - started, 2)
    if KIND in config.baselines:
        jobs += _small_model_jobs(search)
    if "mct" in config.baselines:
        _mct(search)
    search.say(f"step 3/4 apply: fine-tune and measure {len(jobs)} plan(s)")
    return jobs


def _mct(search: _Search) -> None:
    """The ``mct`` baseline: MCT's mixed-precision PTQ with the budget as weights memory."""
    old = search.done.get("mct")
    if old is not None and old["status"] != "failed":
        search.say("baseline mct: done in an earlier run, reused")
        return
    search.say("baseline mct: Model Compression Toolkit mixed-precision PTQ")
    try:
        record = mct_baseline(
            search.trained.model,
            search.trained.input_spec,
            search.dataset,
            search.budget,
            search.run_dir / "candidates" / "mct",
            images=search.config.sensitivity_images,
            seed=search.config.seed,
        )
    except InfeasibleBudgetError as err:
        search.say(f"baseline mct: infeasible ({err})")
        record = {**_infeasible("mct", str(err)), "min_bytes": err.min_bytes}
    search.record(record)


def _small_model_jobs(search: _Search) -> list[CandidateJob]:
    """The ``small-model`` baseline: distil the small model (or reuse it), fit its bits."""
    config = search.config
    search.say(
        f"baseline {KIND}: {config.small_model} {config.small_kwargs} distilled "
        f"{config.small_epochs} epoch(s) from the teacher"
    )
    small = small_model(
        search.trained, search.source, search.dataset, config,
        search.run_dir / "candidates" / KIND / "student",
    )  # fmt: skip
    search.seconds["small_model_training"] = small.seconds
    try:
        plan, size = fitting_bits(
            small.trained, search.dataset, config, search.budget, search.file_factor()
        )
    except InfeasibleBudgetError as err:
        search.say(f"baseline {KIND}: infeasible ({err})")
        search.record(_infeasible(KIND, str(err)))
        return []
    source = str(small.run_dir)
    set_context(source, small.trained, search.dataset, _teacher(search))
    bits = plan.default.bits
    label = f"{KIND}: {config.small_model} at {bits} bit{'s' if bits != 1 else ''}"
    return [
        CandidateJob(
            id=KIND, kind=KIND, label=label, plan=plan.to_dict(), source=source,
            run_dir=str(search.run_dir / "candidates" / KIND / "qat"),
            config={**config.to_dict(), "teacher": small.teacher},
            epochs=config.baseline_fine_tune_epochs, batches=config.candidate_batches,
            predicted_bytes=size, budget_bytes=search.budget,
        )
    ]  # fmt: skip


def _baseline_plans(search: _Search, problem: AllocationProblem, name: str) -> list[_Planned]:
    """The plans a baseline fine-tunes: greedy's one, or the best uniform pair of each width.

    The additive model ranks uniform plans poorly at high compression (it sums losses measured
    one layer at a time), so the uniform baseline fits one pair per bit-width and measures
    the ``uniform_pairs`` best of them instead of trusting the model's single first choice.

    Raises:
        InfeasibleBudgetError: If no plan of the baseline fits.
    """
    if name == "greedy":
        return [search.fit(_greedy_solver, problem, search.budget, name)]
    # dense bit-widths only: a uniform plan is one width and one ratio, never sparse
    widths = sorted({b for o in problem.layers.values() for b in o.options if isinstance(b, int)})
    plans, error = [], None
    for width in widths:
        solver = functools.partial(_uniform_solver, bits=width)
        try:
            plans.append(search.fit(solver, problem, search.budget, name))
        except InfeasibleBudgetError as err:
            error = err
    if not plans:
        raise error or InfeasibleBudgetError("no uniform plan", minimum_bytes(problem))
    plans.sort(key=lambda p: (p.allocation.predicted_cost, -p.bytes))
    return plans[: search.config.uniform_pairs]


def _uniform_solver(
    problem: AllocationProblem, target: float, latency: float | None, bits: int
) -> Allocation:
    return uniform(problem, target, latency, bits_options=[bits])


def _greedy_solver(problem: AllocationProblem, target: float, latency: float | None) -> Allocation:
    return greedy(problem, target, latency)


def _infeasible(name: str, message: str) -> dict[str, Any]:
    return {
        "id": name,
        "kind": name,
        "label": name,
        "plan": None,
        "bytes": None,
        "predicted_bytes": None,
        "predicted_cost": None,
        "accuracy": None,
        "status": "infeasible",
        "error": message,
        "seconds": 0.0,
    }


def _iterate(search: _Search) -> None:
    """Steps 3-4 repeated: correct, re-allocate, apply, while the candidates improve.

    A candidate whose file came out over the budget is retried with the same variant (the
    measured bytes now correct the prediction: :meth:`_Search.file_factor`); otherwise the next
    variant of :data:`VARIANTS` is allocated, unless the last one did not beat the best so far.
    """
    assert search.measured is not None
    config = search.config
    tried = {json.dumps(r.get("plan"), sort_keys=True) for r in search.done.values()}
    pending, variant = list(VARIANTS[1:]), VARIANTS[0]
    best_before, retries, k, ran_since = None, 0, 2, False
    while True:
        last = search.done.get(f"baic-{k - 1}")
        if last is not None and last["status"] == "over-budget":
            if retries >= RETRIES:
                search.say(f"{RETRIES} files over the budget in a row: no further candidates")
                break
            retries += 1
        else:
            best = search.best()
            ok = sum(1 for r in search.done.values() if r["kind"] == "baic" and r["status"] == "ok")
            if ok >= config.candidates or not pending:
                break
            if ran_since and best is best_before:
                search.say(f"candidate baic-{k - 1} did not improve on {best['id']}: stop")
                break
            best_before, variant, ran_since = best, pending.pop(0), False
        if search.out_of_time():
            search.say("time limit reached: no further candidates")
            break
        try:
            planned = search.fit(
                _solver(variant),
                search.measured.problems[variant[0]],
                _tightened(search),
                _variant_label(variant),
            )
        except InfeasibleBudgetError as err:
            search.say(f"candidate baic-{k}: {err}")
            continue
        key = json.dumps(planned.plan, sort_keys=True)
        if key in tried:
            search.say(f"candidate baic-{k}: {planned.label} gives an earlier plan, skipped")
            continue
        tried.add(key)
        job = search.job(
            planned,
            "baic",
            f"baic-{k}",
            epochs=config.candidate_epochs,
            batches=config.candidate_batches,
        )
        search.run([job])
        k, ran_since = k + 1, True


#: BAIC's plans aim this fraction below the budget: the final fine-tune changes which codes
#: are zero, and its file has come out up to 0.2% larger than its candidate's (MobileNetV2 at
#: 500 kB), which cost a second final fine-tune.
FINAL_HEADROOM = 0.003


def _tightened(search: _Search) -> int:
    """The budget BAIC's plans aim at: just below it, lower once a file came out over it."""
    over = any(r["status"] == "over-budget" for r in search.done.values())
    return int(search.budget * (1 - FINAL_HEADROOM - (0.002 if over else 0.0)))


def _final(search: _Search) -> dict[str, Any]:
    """Step 4's end: the best candidate fine-tuned longer, scored on test; never over budget."""
    config = search.config
    best = search.best()
    if best is None:
        raise BAICError(
            "no BAIC candidate finished within the budget: see candidates.jsonl (statuses "
            f"{sorted({r['status'] for r in search.done.values()})})"
        )
    started = time.perf_counter()
    if config.final_epochs == 0 and not _over_latency(search, best):
        search.say(f"step 4/4 final: {best['id']} as it is (final_epochs=0), test split")
        earlier = search.done.get("final")
        reuse = earlier is not None and earlier.get("epochs") == 0
        record = earlier if reuse else _scored_on_test(search, best)
        search.seconds["final"] = round(time.perf_counter() - started, 2)
        return record
    search.say(
        f"step 4/4 final: {best['id']} fine-tuned {config.final_epochs} epoch(s), test split"
    )
    planned = _Planned(
        _stub_allocation(best), best["plan"], int(best["predicted_bytes"]), best["label"]
    )
    for attempt in range(RETRIES):
        job_id = "final" if attempt == 0 else f"final-{attempt + 1}"
        record = search.run(
            [
                search.job(
                    planned,
                    "final",
                    job_id,
                    epochs=config.final_epochs,
                    batches=None,
                    split="test",
                    latency=True,
                )
            ]
        )[0]
        slow = _over_latency(search, record)
        if record["status"] == "ok" and not slow:
            search.seconds["final"] = round(time.perf_counter() - started, 2)
            return record
        if record["status"] == "failed":
            raise BAICError(f"the final fine-tune failed: {record.get('error')}")
        if slow:
            search.say(f"{job_id}: {record['latency_ms']:.2f} ms is over the latency budget")
            search.latency_budget *= 0.97 * search.config.latency_budget_ms / record["latency_ms"]
        else:
            search.say(f"{job_id}: {format_bytes(record['bytes'])} is over the budget")
        problem = search.measured.problems["loss_increase"]
        planned = search.fit(_solver(VARIANTS[0]), problem, _tightened(search), "exact, tightened")
    raise BAICError(f"no final file within {format_bytes(search.budget)} after {RETRIES} tries")


def _scored_on_test(search: _Search, best: dict[str, Any]) -> dict[str, Any]:
    """The best candidate's own file as the final one: its test accuracy and latency."""
    from satcompress.evaluate.artifact import evaluate_artifact
    from satcompress.search.candidates import LATENCY

    measured = evaluate_artifact(
        best["artifact"], search.dataset, split="test", latency=LATENCY, progress=False
    )
    record = {
        **best,
        "id": "final",
        "kind": "final",
        "split": "test",
        "epochs": 0,
        "accuracy": float(measured["accuracy"]),
        "latency_ms": float(measured["latency_ms"]["bs1"]),
    }
    search.record(record)
    return record


def _over_latency(search: _Search, record: dict[str, Any]) -> bool:
    limit = search.config.latency_budget_ms
    measured = record.get("latency_ms")
    return limit is not None and measured is not None and measured > limit


def _stub_allocation(record: dict[str, Any]) -> Allocation:
    return Allocation(
        bits={},
        ratios={},
        predicted_bytes=float(record["predicted_bytes"]),
        predicted_cost=float(record.get("predicted_cost") or 0.0),
        predicted_latency_ms=0.0,
        method="record",
    )


def _finish(search: _Search, final: dict[str, Any]) -> StageResult:
    """Save model.satc, manifest.json, report.md and pareto.png; the stage result."""
    from satcompress.artifact.format import read_manifest
    from satcompress.artifact.manifest import manifest_card
    from satcompress.evaluate.artifact import evaluate_artifact
    from satcompress.search.report import write_report

    run_dir = search.run_dir
    target = run_dir / ARTIFACT
    temporary = run_dir / (ARTIFACT + ".tmp")
    shutil.copyfile(final["artifact"], temporary)
    if temporary.stat().st_size > search.budget:  # cannot happen: checked; never save it
        temporary.unlink()
        raise BAICError("the final file is over the budget")
    temporary.replace(target)
    input_record = _input_record(search)
    card = manifest_card(read_manifest(target))
    record = evaluate_artifact(target, search.dataset, split="test", latency=None, progress=False)
    timing = _side_by_side(search, input_record["artifact"], target)
    input_record = {**input_record, "latency_ms": timing["input"]}
    final = {**final, "latency_ms": timing["final"]}
    record["latency_ms"] = {"bs1": timing["final"]}
    for kinds, phase in ((("baic",), "candidates"), (BASELINE_KINDS, "baselines")):
        search.seconds[phase] = round(
            sum(
                r.get("seconds") or 0
                for r in search.done.values()
                if r["kind"] in kinds and not r.get("reused_from")
            ),
            2,
        )
    search.seconds["final"] = round(  # every final fine-tune, refused ones (over budget) too
        sum(
            float(r.get("seconds") or 0.0)
            for r in search.done.values()
            if r["kind"] == "final" and not r.get("reused_from")
        ),
        2,
    )
    # a resumed search costs what all its runs did: the phases, not this run's wall time
    wall = time.perf_counter() - search.started
    total = round(max(wall, sum(search.seconds.values())), 2)
    summary = _summary(search, final, input_record, total)
    summary["latency_note"] = (
        "input and chosen files timed side by side (interleaved rounds, batch 1, ONNX Runtime)"
    )
    atomic_write_json(run_dir / MANIFEST_FILE, {**summary, "card": card})
    candidates = [_for_report(r) for r in search.log.done().values()]
    write_report(run_dir, summary, candidates)
    search.say(
        f"done: {format_bytes(final['bytes'])} <= {format_bytes(search.budget)}; test accuracy "
        f"{input_record['accuracy'] * 100:.2f}% -> {final['accuracy'] * 100:.2f}%; latency "
        f"{input_record['latency_ms']:.2f} -> {final['latency_ms']:.2f} ms; {target}"
    )
    trained = load(target)
    files = {
        "artifact": target,
        "manifest": run_dir / MANIFEST_FILE,
        "candidates": run_dir / CANDIDATES_FILE,
        "report": run_dir / "report.md",
        "figure": run_dir / "pareto.png",
    }
    return StageResult(
        "baic",
        trained.model,
        card,
        run_dir,
        trained.input_spec,
        record,
        files,
        search.dataset,
        summary,
    )


def _side_by_side(search: _Search, before: str | Path, after: Path) -> dict[str, float]:
    """Batch-1 latency of the input's and the chosen file, timed in interleaved rounds.

    Timing each file when it was made compares two states of a shared machine; this compares
    the two files on one.
    """
    import tempfile

    from satcompress.artifact.format import load_artifact
    from satcompress.evaluate.profile import LatencyConfig, measure_latency_side_by_side

    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            name: load_artifact(path).save_onnx(Path(tmp) / f"{name}.onnx")
            for name, path in (("input", before), ("final", after))
        }
        config = LatencyConfig(batch_sizes=(1,), warmup=10, runs=50)
        timing = measure_latency_side_by_side(paths, tuple(search.dataset.image_size), config)
    return {name: float(entry["bs1"]["median_ms"]) for name, entry in timing.items()}


def _input_record(search: _Search) -> dict[str, Any]:
    """The input model's fp32 artifact: bytes, test accuracy, latency (cached in the log)."""
    if "input" in search.done:
        return search.done["input"]
    from satcompress.compress.plan import CompressionPlan

    planned = _Planned(
        _stub_allocation({"predicted_bytes": search.measured.fp32_bytes}),
        CompressionPlan().to_dict(),
        search.measured.fp32_bytes,
        "input fp32",
    )
    job = search.job(planned, "input", "input", epochs=0, batches=None, split="test", latency=True)
    job.budget_bytes = None
    return search.run([job])[0]


#: The fields of a candidate kept in the summary's trajectory (not its plan).
TRAJECTORY_FIELDS = (
    "id", "kind", "label", "bytes", "predicted_bytes", "accuracy", "split", "status", "seconds",
)  # fmt: skip


def trajectory(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every candidate in the order it finished, without its plan (the search's trajectory).

    The last record of an id wins (a resumed run may have retried one); the saved file's
    record (the last final fine-tune within the budget) is marked ``chosen``.
    """
    latest = list({r["id"]: r for r in records}.values())
    finals = [r["id"] for r in latest if r["kind"] == "final" and r["status"] == "ok"]
    shown = []
    for record in latest:
        entry = {k: record.get(k) for k in TRAJECTORY_FIELDS}
        if finals and record["id"] == finals[-1]:
            entry["chosen"] = True
        shown.append(entry)
    return shown


def _summary(
    search: _Search, final: dict[str, Any], input_record: dict[str, Any], total: float
) -> dict[str, Any]:
    from satcompress.compress.plan import CompressionPlan

    plan = CompressionPlan.from_dict(final["plan"])
    baselines = {}
    for r in search.done.values():  # the best measured of each kind (several uniform pairs)
        if r["kind"] in BASELINE_KINDS:
            shown = baselines.get(r["kind"])
            if shown is None or (r.get("accuracy") or 0) > (shown.get("accuracy") or 0):
                baselines[r["kind"]] = {
                    k: r.get(k) for k in ("bytes", "predicted_bytes", "accuracy", "status", "label")
                }
    best = search.best()
    return {
        "budget_bytes": search.budget,
        "latency_budget_ms": search.latency_budget,
        "bytes": final["bytes"],
        "predicted_bytes": final["predicted_bytes"],
        "accuracy": final["accuracy"],
        "val_accuracy": best["accuracy"] if best else None,
        "latency_ms": final.get("latency_ms"),
        "artifact": str(search.run_dir / ARTIFACT),
        "plan": {"layers": {k: v.to_dict() for k, v in plan.layers.items()}},
        "input": {k: input_record.get(k) for k in ("bytes", "accuracy", "latency_ms")},
        "baselines": baselines,
        "dataset": search.dataset.name,
        "split_fingerprint": search.dataset.split_fingerprint,
        "time_seconds": {**search.seconds, "total": total},
        "measure": {**search.measured.summary(), "wall_seconds": search.measure_wall},
        "config": search.config.to_dict(),
        "candidates": trajectory(list(search.done.values())),
        "environment": environment(),
    }


def _for_report(record: dict[str, Any]) -> dict[str, Any]:
    split = record.get("split")
    return {
        "id": record["id"],
        "kind": "baic" if record["kind"] == "final" else record["kind"],
        "label": record.get("label", ""),
        "predicted_bytes": record.get("predicted_bytes"),
        "bytes": record.get("bytes"),
        "predicted_cost": record.get("predicted_cost"),
        "val_accuracy": record.get("accuracy") if split == "val" else None,
        "test_accuracy": record.get("accuracy") if split == "test" else None,
        "latency_ms": record.get("latency_ms"),
        "seconds": record.get("seconds") or 0.0,
        "status": record.get("status", "ok"),
        "chosen": record["kind"] == "final",
        "plan": record.get("plan"),
    }
