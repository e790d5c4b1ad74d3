"""An experiment's plan: every stage's key, and whether the study already holds it.

A stage's key (:func:`satcompress.experiments.study.stage_key`) hashes

* its **input**: the key of the stage it starts from (known before that stage runs, so a
  whole chain is planned at once), or the card hash of a checkpoint file;
* its **data**: dataset, image size, split seed and split fingerprint (the SHA-256 of the
  three splits' file lists), not the folder: a study moved to another machine keeps its keys;
* its **settings**: the stage's config serialized (``type`` and ``version`` included), the
  student or fine-tuning settings, the teacher (a key or card hash) and what the record
  measures. Execution-only settings (threads, data loader workers, BAIC's executor) are
  left out, and a ``TrainConfig`` hashes as the training runs' own keys do
  (:func:`satcompress.experiments.keys.key_recipe`: a setting added later at its neutral value
  changes no key).

A config change therefore changes that stage's key and, through the input keys, the keys of
every stage downstream of it; nothing else.

The split fingerprint needs the split's file lists: the first plan of a dataset loads it
once and the study remembers the result, with a stamp of the data folder's directories
(their modification times), until the folder changes. A dry run never loads data: a stage
whose data was never loaded is planned as ``run``, its key still unknown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from satcompress.card import card_hash
from satcompress.config import Config
from satcompress.experiments.spec import DataSpec, Experiment, ExperimentError, Ref, StageSpec
from satcompress.experiments.study import Study, stage_key

__all__ = [
    "PlannedStage", "checkpoint_ref", "config_view", "data_part", "model_stage", "plan",
    "plan_table",
]  # fmt: skip

#: Settings of each config type that change how fast a stage runs, never what it makes.
EXECUTION_ONLY: dict[str, tuple[str, ...]] = {
    "TrainConfig": ("threads", "num_workers"),
    "BAICConfig": ("workers", "executor", "ray_address"),
}
#: TrainConfig settings that say where the data is: the key's data part covers the data.
_LOCATION = ("data_dir", "download")
#: Stages that continue an interrupted attempt from its checkpoint (BAIC: from its log).
RESUMABLE = ("train", "distill", "quantize", "baic")

#: What one plan has read already (cards, folder stamps), by what it read; None outside a
#: plan. A plan asks for the same card up to three times per stage (its data, its class
#: check, its key) and for a folder's stamp once per stage: each is read once per plan.
_memo: dict[tuple[str, ...], Any] | None = None


@contextmanager
def _reads_once() -> Iterator[None]:
    """Within the block, each card and folder stamp is read once."""
    global _memo
    outer, _memo = _memo, {} if _memo is None else _memo
    try:
        yield
    finally:
        _memo = outer


def _once(key: tuple[str, ...], read: Callable[[], Any]) -> Any:
    """``read()``, or what it returned for ``key`` earlier in this plan."""
    if _memo is None:
        return read()
    if key not in _memo:
        _memo[key] = read()
    return _memo[key]


@dataclasses.dataclass
class PlannedStage:
    """One stage of a plan.

    Attributes:
        spec: The stage as the file gives it.
        key: Its key (None: its data, or an input's, was never loaded: a dry run).
        input_ref: What the key hashes as its input.
        data: What the key hashes as its data (None: unknown yet).
        settings: What the key hashes as its settings.
        status: ``reuse`` (finished before), ``run``, ``resume`` (an interrupted attempt
            continues), ``rerun`` (an interrupted or failed attempt starts over) or ``busy``
            (another live process runs it now).
        run_dir: Its run directory in the study (None while the key is unknown).
    """

    spec: StageSpec
    key: str | None
    input_ref: Any
    data: dict[str, Any] | None
    settings: dict[str, Any]
    status: str = "run"
    run_dir: Path | None = None

    def key_spec(self) -> dict[str, Any]:
        """What the key hashes, as stored with the stage."""
        return {"input": self.input_ref, "data": self.data, "settings": self.settings}


def plan(
    experiment: Experiment, study: Study, *, load_data: bool = True, progress: bool = False
) -> list[PlannedStage]:
    """Every stage's key and status, in file order.

    Args:
        experiment: The checked experiment.
        study: The study it runs in.
        load_data: Load a dataset whose split fingerprint the study does not know yet
            (False for a dry run: such stages keep no key).
        progress: Show progress bars while loading data.

    Raises:
        ExperimentError: A stage starts from a checkpoint whose card names no data, and the
            file names none either; or it measures, compresses or learns from a checkpoint
            trained on other classes than its data's (before anything runs).
    """
    with _reads_once():
        return _plan(experiment, study, load_data, progress)


def _plan(
    experiment: Experiment, study: Study, load_data: bool, progress: bool
) -> list[PlannedStage]:
    planned: dict[str, PlannedStage] = {}
    for spec in experiment.stages:
        data = _stage_data(spec, experiment, study, planned, load_data, progress)
        _check_classes(spec, experiment, study)
        _check_heads(spec, experiment, planned)
        input_ref = _ref(spec.source, planned)
        settings = {
            "config": config_view(spec.config),
            "train": _train_view(spec.train),
            "distill": config_view(spec.distill) if spec.distill is not None else None,
            "teacher": _ref(spec.teacher, planned),
            "record": {"latency": experiment.latency, "split": experiment.split},
        }
        known = data is not None and _known(input_ref) and _known(settings["teacher"])
        key = stage_key(spec.kind, input_ref, data, settings) if known else None
        stage = PlannedStage(spec, key, input_ref, data, settings)
        if key is not None:
            stage.run_dir = study.run_dir(spec.kind, key)
            stage.status = _status(study, spec.kind, key)
        planned[spec.name] = stage
    return list(planned.values())


#: Stages whose ``from:`` checkpoint may have other classes: they can start with a new head.
NEW_HEAD_STAGES = ("train", "distill")


def _check_classes(spec: StageSpec, experiment: Experiment, study: Study) -> None:
    """Fail early when a checkpoint a stage uses was trained on other classes than its data.

    A named dataset knows its classes; an image folder's are saved with its fingerprint
    when the plan loads it (a dry run that has not loaded it leaves the check to the stage).
    """
    refs = [("teacher", spec.teacher)]
    if spec.kind not in NEW_HEAD_STAGES:
        refs.append(("from", spec.source))
    checkpoints = [(field, ref.path) for field, ref in refs if ref is not None and ref.path]
    if spec.data is None or not checkpoints:
        return
    from satcompress.data import dataset_classes

    expected = dataset_classes(spec.data.dataset) or _loaded_classes(spec.data, study)
    if not expected:
        return
    for field, path in checkpoints:
        classes = _card(path).get("classes")
        if classes and list(classes) != list(expected):
            found, known = ", ".join(classes[:3]), ", ".join(expected[:3])
            raise ExperimentError(
                f"{experiment.path}:{spec.line}: stage {spec.name!r}: its {field}: checkpoint "
                f"{path} was trained on {len(classes)} classes ({found}, ...), but the "
                f"{spec.data.dataset} data has {len(expected)} ({known}, ...); point {field}: "
                f"at a model trained on {spec.data.dataset}, or train one in an earlier stage"
            )


def _check_heads(
    spec: StageSpec, experiment: Experiment, planned: Mapping[str, PlannedStage]
) -> None:
    """Fail early when a structured prune would remove every head of a block.

    Per-layer ranking removes ``ceil(ratio * heads)`` heads of each layer: with ViT-Ti's 3,
    any ratio above 2/3 removes all of them. The model is built on PyTorch's meta device (no
    weights, no memory) from the train or distill stage the prune starts from; a global
    ranking depends on the trained weights and is checked when the stage runs.
    """
    config = spec.config
    if (
        spec.kind != "prune"
        or not getattr(config, "structured", False)
        or config.global_pruning
        or config.heads <= 0
    ):
        return
    model = _source_model(spec, planned)
    if model is None:
        return
    from satcompress.compress.prune import whole_heads_problem

    key = ("heads", model[0], json.dumps(model[1], sort_keys=True, default=str))
    for layer, heads in _once(key, lambda: _head_counts(*model)).items():
        problem = whole_heads_problem(layer, heads, config.heads)
        if problem is not None:
            raise ExperimentError(f"{experiment.path}:{spec.line}: stage {spec.name!r}: {problem}")


def _source_model(
    spec: StageSpec, planned: Mapping[str, PlannedStage]
) -> tuple[str, dict[str, Any]] | None:
    """The model name and options a stage starts from, where a train or distill stage sets them."""
    if spec.source is None or spec.source.stage is None:
        return None
    stage = model_stage(spec.source.stage, planned)
    config = {"train": stage.spec.config, "distill": stage.spec.train}.get(stage.spec.kind)
    model = getattr(config, "model", None)
    if not isinstance(model, str):
        return None
    return model, dict(getattr(config, "model_kwargs", None) or {})


def _head_counts(name: str, kwargs: dict[str, Any]) -> dict[str, int]:
    """Heads per attention layer of a model built on the meta device (no weights, no memory).

    Returns:
        Heads by layer name; {} when the model cannot be built so (the stage will say why).
    """
    import torch

    from satcompress.compress.prune import head_counts
    from satcompress.models import create_model

    try:
        with torch.device("meta"):
            return head_counts(create_model(name, 10, **kwargs))
    except Exception:  # noqa: BLE001  (an early check only: the stage checks again)
        return {}


def _loaded_classes(spec: DataSpec, study: Study) -> list[str] | None:
    """The classes of data the study has loaded before (None if it has not)."""
    source = study.data_source(spec.to_dict(), folder_stamp(spec))
    return source.get("classes") if source is not None else None


def _status(study: Study, kind: str, key: str) -> str:
    row = study.get(key)
    if row is None:
        return "run"
    if row.status == "done":
        return "reuse"
    if row.status == "running" and study.alive(row):
        return "busy"
    return "resume" if kind in RESUMABLE else "rerun"


def _known(ref: Any) -> bool:
    return not (isinstance(ref, dict) and "key" in ref and ref["key"] is None)


def model_stage(name: str, stages: Mapping[str, Any]) -> Any:
    """The stage whose model ``name`` stands for (past evaluate and vit_layers stages).

    Args:
        name: A stage's name.
        stages: Planned stages (or anything with ``.spec``) by name.
    """
    stage = stages[name]
    while stage.spec.passes_through and stage.spec.source.stage is not None:
        stage = stages[stage.spec.source.stage]
    return stage


def _ref(ref: Ref | None, planned: Mapping[str, PlannedStage]) -> Any:
    """A reference as the key hashes it."""
    if ref is None:
        return None
    if ref.stage is not None:
        stage = planned[ref.stage]
        if stage.spec.passes_through:  # the model it measured
            return stage.input_ref
        return {"key": stage.key}
    if ref.path is not None:
        return checkpoint_ref(ref.path)
    if ref.model is not None:
        return {"model": ref.model}
    return "self"


def checkpoint_ref(path: str | Path) -> dict[str, str]:
    """A checkpoint as a key hashes it: its card's hash, else its weights file's SHA-256."""
    from satcompress.checkpoint import weights_file
    from satcompress.utils.io import file_digest

    card = _card(str(path))
    if card:
        return {"card": str(card_hash(card))}
    return {"sha256": file_digest(weights_file(path), "sha256")}


def config_view(config: Config | None) -> dict[str, Any] | None:
    """A config as a key hashes it: serialized, without execution-only settings."""
    if config is None:
        return None
    name = type(config).__name__
    if name == "TrainConfig":
        from satcompress.experiments.keys import key_recipe

        values = {k: v for k, v in key_recipe(config).items() if k not in _LOCATION}
        if values.get("weights"):
            values["weights"] = checkpoint_ref(values["weights"])
    else:
        values = config.to_dict()
    for field in EXECUTION_ONLY.get(name, ()):
        values.pop(field, None)
    return {"type": name, "version": type(config).VERSION, **values}


def _train_view(train: Any) -> Any:
    if train is None or isinstance(train, Config):
        return config_view(train)
    values = {k: v for k, v in dict(train).items() if k not in _LOCATION}
    for field in EXECUTION_ONLY["TrainConfig"]:
        values.pop(field, None)
    if values.get("weights"):
        values["weights"] = checkpoint_ref(values["weights"])
    return {"overrides": values}


# --- data ---------------------------------------------------------------------------------


def _stage_data(
    spec: StageSpec,
    experiment: Experiment,
    study: Study,
    planned: Mapping[str, PlannedStage],
    load: bool,
    progress: bool,
) -> dict[str, Any] | None:
    if spec.data is not None:
        return data_part(spec.data, study, load=load, progress=progress)
    if spec.source is not None and spec.source.stage is not None:
        return planned[spec.source.stage].data
    source = spec.source.path if spec.source is not None else None
    card = _card(source) if source else {}
    data = card.get("data")
    if not isinstance(data, Mapping) or not data.get("split_fingerprint"):
        raise ExperimentError(
            f"{experiment.path}:{spec.line}: stage {spec.name!r}: the card of {source} names "
            "no data; give dataset: and data_dir: in the experiment file"
        )
    return _hashed(data)


def _card(path: str) -> dict[str, Any]:
    """The card of a checkpoint: a ``.satc`` file's manifest card, else its card file's.

    A run directory holding a ``model.satc`` and no ``model.safetensors`` is its artifact.
    """
    return _once(("card", str(Path(path).resolve())), lambda: _read_card(Path(path)))


def _read_card(path: Path) -> dict[str, Any]:
    from satcompress.checkpoint import read_card
    from satcompress.runtime.satc import load_artifact, manifest_card

    artifact = path / "model.satc" if path.is_dir() else path
    if (
        artifact.suffix == ".satc"
        and artifact.is_file()
        and not (path.is_dir() and (path / "model.safetensors").is_file())
    ):
        return manifest_card(load_artifact(artifact).manifest)
    return read_card(path)


def _hashed(source: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a data source a key hashes (not its folders)."""
    size = source.get("image_size")
    return {
        "dataset": source.get("dataset"),
        "image_size": list(size) if size is not None else None,
        "seed": source.get("seed", 0),
        "split_fingerprint": source.get("split_fingerprint"),
    }


def data_part(
    spec: DataSpec, study: Study, *, load: bool = True, progress: bool = False
) -> dict[str, Any] | None:
    """The data part of a key: the study's saved fingerprint, else the loaded data's.

    Args:
        spec: The data.
        study: Where fingerprints are saved.
        load: Load the data if its fingerprint is not saved (else return None).
        progress: Show progress bars while loading.
    """
    from satcompress.data import dataset_classes

    stamp = folder_stamp(spec)
    source = study.data_source(spec.to_dict(), stamp)
    if load and source is not None and "classes" not in source:
        if not dataset_classes(spec.dataset):  # saved before sources kept a folder's classes
            source = None
    if source is None and load:
        from satcompress.card import DataSource
        from satcompress.experiments.execute import load_data

        dataset = load_data(spec, progress)
        source = {**DataSource.of(dataset, spec.seed).to_dict(), "classes": list(dataset.classes)}
        study.save_data_source(spec.to_dict(), stamp, source)
    return _hashed(source) if source is not None else None


def folder_stamp(spec: DataSpec) -> str:
    """A digest of the data folder's directories and split files (paths, mtimes).

    Adding, removing or renaming an image changes its directory's modification time, and
    so the stamp; the saved fingerprint is then recomputed. A plan walks each folder once.
    """
    folders = (str(spec.data_dir), str(spec.split_dir))
    return _once(("stamp", *folders), lambda: _walk_stamp(spec))


def _walk_stamp(spec: DataSpec) -> str:
    entries = []
    for folder in (spec.data_dir, spec.split_dir):
        if folder is None or not Path(folder).exists():
            entries.append((str(folder), None))
            continue
        for root, _, files in os.walk(folder):
            entries.append((root, os.stat(root).st_mtime_ns))
            entries.extend(
                (os.path.join(root, f), os.stat(os.path.join(root, f)).st_mtime_ns)
                for f in files
                if f.endswith(".txt")
            )
    return hashlib.sha256(json.dumps(sorted(entries, key=str)).encode()).hexdigest()


# --- the dry run's table ------------------------------------------------------------------


def plan_table(stages: list[PlannedStage], study: Study) -> str:
    """The plan as a table: stage, kind, input, key, status, run directory."""
    rows = [("stage", "kind", "from", "key", "status", "run dir")]
    for stage in stages:
        spec = stage.spec
        refs = [spec.source.describe() if spec.source else "-"]
        if spec.teacher is not None:
            refs.append(f"teacher {spec.teacher.describe()}")
        status = stage.status if stage.key else "run (data not loaded yet: key unknown)"
        run_dir = os.path.relpath(stage.run_dir, study.root) if stage.run_dir else "-"
        rows.append((spec.name, spec.kind, ", ".join(_short(r) for r in refs),
                     stage.key[:12] if stage.key else "-", status, run_dir))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
