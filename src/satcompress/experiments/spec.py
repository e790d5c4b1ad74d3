"""Experiment files: named stages in YAML, checked with file and line before anything runs.

An experiment is a list of named stages, each starting from an earlier stage or a
checkpoint, plus the data and named presets of overrides::

    name: kd_eurosat
    dataset: eurosat
    data_dir: ../../shared/data          # relative paths: relative to this file
    image_size: 64
    latency: true                        # time every stage's deployable file
    train_defaults: {epochs: 15}         # under every training config of the file
    stage_defaults:                      # under every stage of a kind (quantize: ptq, qat)
      qat: {config: {epochs: 3}}
    stages:
      - name: teacher
        stage: train                     # train|distill|prune|quantize|baic|evaluate|vit_layers
        config: {model: resnet18}        # the stage's config class (TrainConfig here)
      - name: student
        stage: distill
        teacher: teacher                 # an earlier stage, a checkpoint or a registry name
        config: {temperature: 4.0}       # DistillConfig
        train: {model: resnet9}          # the student's TrainConfig
      - name: student_int8
        stage: quantize
        from: student                    # an earlier stage or a checkpoint path
        config: {method: ptq}            # method: ptq (PTQConfig) or qat (QATConfig)
    presets:
      cpu: {train_defaults: {epochs: 15}}
      paper:
        image_size: 224
        train_defaults: {pretrained: true}
        stages: {student: {train: {epochs: 30}}}   # per-stage overrides, merged
        drop: [student_int8]                       # stages this preset leaves out

Without ``--preset`` the ``cpu`` preset applies if the file has one. Relative paths (``from``,
``teacher``, ``data_dir``, ``split_dir``, ``weights``) are relative to the file's folder.

Which stage keys a stage takes (:data:`STAGE_KEYS`): ``train`` (``from``: fine-tune that
model; ``config``: ``TrainConfig``), ``distill`` (``teacher`` required; ``train``: the student's
``TrainConfig``; ``from``: the student's starting weights), ``prune`` (``train``: fine-tuning
settings over the input's recipe; ``teacher`` and ``distill``: distil while fine-tuning),
``quantize`` (``train`` and ``teacher`` for QAT), ``baic`` (``teacher``), ``evaluate`` and
``vit_layers`` (``VitLayersConfig``: the ViT layer-importance analysis). These last two
measure a model without changing it: a stage ``from:`` (or taught by) one of them starts from
(or learns from) the model it measured, so a preset can point one evaluate stage at another
checkpoint and every stage after it follows.

:func:`load_experiment` reads the file, applies a preset, builds every config and checks
every name (stage kinds, keys, models, references); an error names the file and line.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from satcompress.config import Config, ConfigError

__all__ = [
    "DataSpec",
    "Experiment",
    "ExperimentError",
    "Ref",
    "StageSpec",
    "load_experiment",
]

#: Top-level keys of an experiment file.
TOP_KEYS = (
    "name", "description", "dataset", "data_dir", "split_dir", "image_size", "seed", "latency",
    "split", "train_defaults", "stage_defaults", "stages", "presets",
)  # fmt: skip
#: Keys a preset may override (``stages`` as a mapping of stage name to overrides).
PRESET_KEYS = (
    "description", "dataset", "data_dir", "split_dir", "image_size", "seed", "latency", "split",
    "train_defaults", "stage_defaults", "stages", "drop",
)  # fmt: skip
#: The stage keys each kind of stage takes (besides ``name``, ``stage``, ``description``).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("from", "config"),
    "distill": ("from", "teacher", "config", "train"),
    "prune": ("from", "config", "train", "teacher", "distill"),
    "quantize": ("from", "config", "train", "teacher"),
    "baic": ("from", "config", "teacher"),
    "evaluate": ("from", "config"),
    "vit_layers": ("from", "config"),
}
QUANTIZE_METHODS = ("ptq", "qat")
#: Stages that measure a model without changing it: ``from:`` one of them means its model.
PASS_THROUGH = ("evaluate", "vit_layers")
#: Keys of ``stage_defaults``: the stage kinds, quantize split by method.
DEFAULT_KINDS = tuple(k for k in STAGE_KEYS if k != "quantize") + QUANTIZE_METHODS
#: Paths inside a TrainConfig, resolved against the experiment file's folder.
_TRAIN_PATHS = ("data_dir", "split_dir", "weights")
_DATA_KEYS = ("dataset", "data_dir", "split_dir", "image_size")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExperimentError(ConfigError):
    """A mistake in an experiment file; the message starts with ``FILE:LINE:``."""


# --- YAML with line numbers ----------------------------------------------------------------


class Node(dict):
    """A YAML mapping that remembers the (1-based) line of itself and of each of its keys."""

    def __init__(self, *args: Any, line: int = 0, lines: Mapping[Any, int] | None = None) -> None:
        super().__init__(*args)
        self.line = line
        self.lines = dict(lines or {})

    def line_of(self, key: Any) -> int:
        """The line of ``key`` (the mapping's own line if the key is not there)."""
        return self.lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings are :class:`Node` objects (node marks give the lines)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    own = set()  # a key written twice is a mistake; one over a ``<<:`` merge is not
    for key_node, _ in node.value:
        if key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node, deep=True)
            if key in own:
                line = key_node.start_mark.line + 1
                raise _located(loader.name, line, f"duplicate key {key!r}")
            own.add(key)
    loader.flatten_mapping(node)  # merged keys first, then the mapping's own
    out = Node(line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _located(path: Any, line: int, message: str) -> ExperimentError:
    return ExperimentError(f"{path}:{line}: {message}")


def read_yaml(path: Path) -> Node:
    """An experiment file's mapping, with lines."""
    if not path.is_file():
        raise ExperimentError(f"experiment file not found: {path}")
    try:
        loader = _Loader(path.read_text())
        loader.name = str(path)
        try:
            values = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, Node):
        raise ExperimentError(f"{path} must hold a mapping (name, dataset, stages, presets)")
    return values


def plain(value: Any) -> Any:
    """``value`` with every :class:`Node` a plain dict (for configs and hashing)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --- what an experiment is -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The data a stage reads, as ``load_dataset`` takes it.

    Attributes:
        dataset: Dataset name.
        data_dir: Absolute folder of the data.
        split_dir: Absolute folder of split files (None: auto-detect or generate).
        image_size: Decode resolution (None: the dataset's default).
        seed: Seed of a generated split.
        skip_bad_files: Leave out unreadable images.
    """

    dataset: str
    data_dir: str
    split_dir: str | None = None
    image_size: int | None = None
    seed: int = 0
    skip_bad_files: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Ref:
    """What a stage starts from or learns from.

    Attributes:
        stage: An earlier stage's name.
        path: A checkpoint (run directory, weights file or ``.satc``), absolute.
        model: A registry name (a distillation teacher with its library weights).
        self_teacher: ``self``: the stage's own input model.
    """

    stage: str | None = None
    path: str | None = None
    model: str | None = None
    self_teacher: bool = False

    def describe(self) -> str:
        """The reference as the file wrote it."""
        return self.stage or self.path or self.model or "self"


@dataclasses.dataclass
class StageSpec:
    """One named stage of an experiment, its configs built and checked.

    Attributes:
        name: Its name in the file.
        kind: ``train``, ``distill``, ``prune``, ``quantize``, ``baic``, ``evaluate`` or
            ``vit_layers``.
        config: Its config (``TrainConfig``, ``DistillConfig``, ``PruneConfig``,
            ``PTQConfig``/``QATConfig``, ``BAICConfig``, ``EvalConfig``, ``VitLayersConfig``).
        source: What it starts from (None: trained from scratch).
        teacher: Who it learns from (distill; prune, QAT and BAIC optionally).
        train: The student's ``TrainConfig`` (distill), or fine-tuning overrides over the
            input's recipe (prune, QAT) as a dict.
        distill: Distillation settings of a prune stage's fine-tuning.
        data: The data it reads (None: its input checkpoint's card names it).
        line: Its line in the file.
    """

    name: str
    kind: str
    config: Config
    source: Ref | None = None
    teacher: Ref | None = None
    train: Any = None
    distill: Config | None = None
    data: DataSpec | None = None
    line: int = 0

    @property
    def passes_through(self) -> bool:
        """True for stages that only measure their input (``from:`` them names the input)."""
        return self.kind in PASS_THROUGH

    def depends_on(self) -> list[str]:
        """The earlier stages it needs."""
        refs = (self.source, self.teacher)
        return [ref.stage for ref in refs if ref is not None and ref.stage is not None]


@dataclasses.dataclass
class Experiment:
    """An experiment file, a preset applied, every stage checked.

    Attributes:
        path: The file.
        name: Its name (``name:``, else the file's stem).
        preset: The preset applied (``""`` for none).
        stages: The stages, in file order (every dependency before its dependents).
        latency: Time every stage's deployable file.
        split: The split every stage's record scores.
    """

    path: Path
    name: str
    preset: str
    stages: list[StageSpec]
    latency: bool = True
    split: str = "test"

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)


# --- loading -------------------------------------------------------------------------------


def load_experiment(
    path: str | Path,
    preset: str | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
) -> Experiment:
    """Read, merge and check an experiment file.

    Args:
        path: The YAML file.
        preset: A key of its ``presets`` (None: ``cpu`` if the file has it, else none).
        dataset: Replaces the file's ``dataset`` (``--dataset``).
        data_dir: Replaces the file's ``data_dir`` (``--data-dir``; relative to the current
            folder).
        image_size: Replaces the file's (and preset's) ``image_size`` (``--image-size``).

    Returns:
        The checked experiment.

    Raises:
        ExperimentError: For any mistake, naming the file and line.
    """
    path = Path(path).resolve()
    doc = read_yaml(path)
    _check_keys(path, doc, TOP_KEYS, "experiment")
    presets = doc.get("presets") or Node()
    chosen = preset if preset is not None else ("cpu" if "cpu" in presets else "")
    if chosen:
        if chosen not in presets:
            known = ", ".join(presets) or "none"
            raise _located(path, doc.line_of("presets"),
                           f"no preset {chosen!r} (presets: {known})")  # fmt: skip
        doc = _apply_preset(path, doc, presets[chosen])
    if dataset is not None:
        doc["dataset"] = dataset
    if data_dir is not None:
        doc["data_dir"] = str(Path(data_dir).resolve())
    if image_size is not None:
        doc["image_size"] = image_size
    return _Builder(path, doc).experiment(chosen)


def _check_keys(path: Path, node: Any, allowed: tuple[str, ...], what: str) -> None:
    if not isinstance(node, Node):
        raise _located(path, getattr(node, "line", 0), f"{what} must be a mapping")
    for key in node:
        if key not in allowed:
            raise _located(
                path, node.line_of(key),
                f"unknown {what} key {key!r}; valid keys: {', '.join(allowed)}",
            )  # fmt: skip


def _merge(base: Any, over: Any) -> Any:
    """``over`` deep-merged into ``base`` (mappings merged, anything else replaced)."""
    if not (isinstance(base, Node) and isinstance(over, Node)):
        return over
    out = Node(base, line=base.line, lines=base.lines)
    for key, value in over.items():
        out[key] = _merge(base.get(key), value)
        out.lines[key] = over.line_of(key)
    return out


def _apply_preset(path: Path, doc: Node, preset: Any) -> Node:
    _check_keys(path, preset, PRESET_KEYS, "preset")
    stage_overrides = preset.get("stages") or Node()
    drop = preset.get("drop") or []
    if not isinstance(drop, list):
        raise _located(path, preset.line_of("drop"), "drop: must be a list of stage names")
    top = Node({k: v for k, v in preset.items() if k not in ("stages", "drop")},
               line=preset.line, lines=preset.lines)  # fmt: skip
    merged = _merge(doc, top)
    stages = doc.get("stages")
    if not isinstance(stages, list):
        return merged
    names = [s.get("name") for s in stages if isinstance(s, Node)]
    for name in [*stage_overrides, *drop]:
        if name not in names:
            line = (
                stage_overrides.line_of(name) if name in stage_overrides else preset.line_of("drop")
            )
            raise _located(
                path, line, f"preset names no stage {name!r} (stages: {', '.join(map(str, names))})"
            )
    merged["stages"] = [
        _merge(s, stage_overrides[s.get("name")]) if s.get("name") in stage_overrides else s
        for s in stages
        if not (isinstance(s, Node) and s.get("name") in drop)
    ]
    return merged


class _Builder:
    """Builds the stages of one merged experiment mapping, checking as it goes."""

    def __init__(self, path: Path, doc: Node) -> None:
        self.path, self.doc = path, doc
        self.stages: dict[str, StageSpec] = {}
        self.later: set[str] = set()

    def fail(self, node: Any, key: Any, message: str) -> ExperimentError:
        line = node.line_of(key) if isinstance(node, Node) else 0
        return _located(self.path, line, message)

    def experiment(self, preset: str) -> Experiment:
        doc = self.doc
        stages = doc.get("stages")
        if not isinstance(stages, list) or not stages:
            raise self.fail(doc, "stages", "stages must be a non-empty list of stages")
        self.later = {s.get("name") for s in stages if isinstance(s, Node)}
        for index, node in enumerate(stages):
            spec = self.stage(index, node)
            self.stages[spec.name] = spec
        return Experiment(
            path=self.path,
            name=str(doc.get("name") or self.path.stem),
            preset=preset,
            stages=list(self.stages.values()),
            latency=bool(doc.get("latency", True)),
            split=str(doc.get("split", "test")),
        )

    # --- one stage ----------------------------------------------------------------------

    def stage(self, index: int, node: Any) -> StageSpec:
        if not isinstance(node, Node):
            raise _located(
                self.path, self.doc.line_of("stages"), f"stages[{index}] must be a mapping"
            )
        name = node.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(node, "name", f"stages[{index}] needs a name (letters, digits, _ . -)")
        if name in self.stages:
            raise self.fail(node, "name", f"two stages are called {name!r}")
        kind = node.get("stage")
        if kind not in STAGE_KEYS:
            raise self.fail(
                node, "stage", f"stage {name!r}: unknown stage {kind!r}; stages: "
                f"{', '.join(STAGE_KEYS)}",
            )  # fmt: skip
        _check_keys(self.path, node, ("name", "stage", "description", *STAGE_KEYS[kind]),
                    f"{kind} stage")  # fmt: skip
        self.later.discard(name)
        return getattr(self, f"_{kind}")(name, self.with_defaults(kind, node))

    def with_defaults(self, kind: str, node: Node) -> Node:
        """``node`` merged over ``stage_defaults`` of its kind (quantize: of its method)."""
        defaults = self.doc.get("stage_defaults") or Node()
        _check_keys(self.path, defaults, DEFAULT_KINDS, "stage_defaults")
        if kind == "quantize":
            config = node.get("config")
            kind = config.get("method") if isinstance(config, Node) else None
        found = defaults.get(kind)
        if found is None:
            return node
        _check_keys(self.path, found, STAGE_KEYS["quantize" if kind in QUANTIZE_METHODS
                                                 else kind], f"stage_defaults.{kind}")  # fmt: skip
        merged = _merge(found, node)
        merged.line = node.line
        return merged

    def _train(self, name: str, node: Node) -> StageSpec:
        config = self.train_config(node, "config", name)
        source = self.ref(node, "from", name)
        return StageSpec(name, "train", config, source=source, data=_data_of(config),
                         line=node.line)  # fmt: skip

    def _distill(self, name: str, node: Node) -> StageSpec:
        from satcompress.compress.distill.config import DistillConfig

        if node.get("teacher") is None:
            raise self.fail(node, "stage", f"distill stage {name!r} needs a teacher")
        if "train" not in node:
            raise self.fail(node, "stage", f"distill stage {name!r} needs train: (the student)")
        train = self.train_config(node, "train", name)
        return StageSpec(
            name, "distill", self.config(node, "config", DistillConfig, name),
            source=self.ref(node, "from", name), teacher=self.ref(node, "teacher", name, True),
            train=train, data=_data_of(train), line=node.line,
        )  # fmt: skip

    def _prune(self, name: str, node: Node) -> StageSpec:
        from satcompress.compress.distill.config import DistillConfig
        from satcompress.compress.prune.config import PruneConfig

        distill = None
        if "distill" in node:
            if "teacher" not in node:
                raise self.fail(node, "distill", f"stage {name!r}: distill: needs a teacher:")
            distill = self.config(node, "distill", DistillConfig, name)
        return self.compress(name, node, "prune", PruneConfig, distill=distill)

    def _quantize(self, name: str, node: Node) -> StageSpec:
        from satcompress.compress.quantize.config import PTQConfig, QATConfig

        values = node.get("config")
        method = values.get("method") if isinstance(values, Node) else None
        if method not in QUANTIZE_METHODS:
            where = values if isinstance(values, Node) and "method" in values else node
            raise self.fail(
                where, "method" if where is values else "config",
                f"stage {name!r}: quantize needs config: {{method: ptq|qat, ...}}; got {method!r}",
            )  # fmt: skip
        cls = PTQConfig if method == "ptq" else QATConfig
        for key in ("train", "teacher"):
            if key in node and cls is PTQConfig:
                raise self.fail(node, key, f"stage {name!r}: {key}: is for QAT, not PTQ")
        return self.compress(name, node, "quantize", cls, drop=("method",))

    def _baic(self, name: str, node: Node) -> StageSpec:
        from satcompress.search.config import BAICConfig

        return self.compress(name, node, "baic", BAICConfig)

    def _evaluate(self, name: str, node: Node) -> StageSpec:
        from satcompress.pipeline.stages import EvalConfig

        return self.compress(name, node, "evaluate", EvalConfig)

    def _vit_layers(self, name: str, node: Node) -> StageSpec:
        from satcompress.compress.prune.config import VitLayersConfig

        return self.compress(name, node, "vit_layers", VitLayersConfig)

    def compress(
        self,
        name: str,
        node: Node,
        kind: str,
        cls: type[Config],
        *,
        distill: Config | None = None,
        drop: tuple[str, ...] = (),
    ) -> StageSpec:
        """A stage that starts from a model: prune, quantize, baic, evaluate, vit_layers."""
        if node.get("from") is None:
            raise self.fail(node, "stage", f"{kind} stage {name!r} needs from: (a stage or file)")
        source = self.ref(node, "from", name)
        teacher = self.ref(node, "teacher", name, True) if "teacher" in node else None
        train = None
        if "train" in node:
            train = self.train_overrides(node, name)
        config = self.config(node, "config", cls, name, drop=drop)
        return StageSpec(
            name, kind, config, source=source, teacher=teacher, train=train,
            distill=distill, data=self.inherited_data(source), line=node.line,
        )  # fmt: skip

    # --- configs ------------------------------------------------------------------------

    def config(
        self, node: Node, key: str, cls: type[Config], name: str, *, drop: tuple[str, ...] = ()
    ) -> Config:
        """``node[key]`` built as ``cls``: unknown keys and invalid values named with lines."""
        values = self.options(node, key, cls, name)
        values = Node({k: v for k, v in values.items() if k not in drop},
                      line=values.line, lines=values.lines)  # fmt: skip
        return self.build(values, cls, plain(values), f"stage {name!r}: {key}")

    def options(self, node: Node, key: str, cls: type[Config], name: str) -> Node:
        """The mapping ``node[key]`` (empty if absent)."""
        values = node.get(key)
        if values is None:
            return Node(line=node.line_of(key))
        if not isinstance(values, Node):
            raise self.fail(node, key, f"stage {name!r}: {key}: must be a mapping of "
                            f"{cls.__name__} options")  # fmt: skip
        return values

    def build(self, node: Node, cls: type[Config], values: dict[str, Any], where: str) -> Config:
        """``cls`` of ``values`` (``node``: where the options were written, for the lines)."""
        self.check_fields(node, cls, where)
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise self.fail(node, _field_named(err, values), f"{where}: {err}") from None

    def check_fields(self, values: Node, cls: type[Config], where: str) -> None:
        """Refuse unknown keys (in nested configs too), with the line of the key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in fields:
                raise self.fail(
                    values, key, f"{where}: unknown {cls.__name__} option {key!r}; valid "
                    f"options: {', '.join(sorted(fields))}",
                )  # fmt: skip
            nested = _config_class(hints[key])
            if nested is not None and isinstance(value, Node):
                self.check_fields(value, nested, f"{where}.{key}")

    def train_config(self, node: Node, key: str, name: str) -> Config:
        """A training config: the file's data < ``train_defaults`` < the stage's own options."""
        from satcompress.train.config import TrainConfig

        defaults = self.doc.get("train_defaults") or Node()
        if not isinstance(defaults, Node):
            raise self.fail(self.doc, "train_defaults", "train_defaults must be a mapping")
        self.check_fields(defaults, TrainConfig, "train_defaults")
        given = self.options(node, key, TrainConfig, name)
        data = {k: self.doc[k] for k in (*_DATA_KEYS, "seed") if self.doc.get(k) is not None}
        values = {**data, **plain(defaults), **plain(given)}
        if "data_dir" not in values or "dataset" not in values:
            raise self.fail(node, key, f"stage {name!r}: give dataset: and data_dir: (at the "
                            "top of the file or in the stage's options)")  # fmt: skip
        self.resolve_paths(values)
        config = self.build(given, TrainConfig, values, f"stage {name!r}: {key}")
        if config.model not in _known_models() and not config.model.startswith("timm/"):
            where = given if "model" in given else defaults if "model" in defaults else node
            raise self.fail(
                where, "model" if where is not node else key,
                f"stage {name!r}: unknown model {config.model!r}; models: "
                f"{', '.join(_known_models())} (or timm/<name>)",
            )  # fmt: skip
        return config

    def train_overrides(self, node: Node, name: str) -> dict[str, Any]:
        """A compress stage's fine-tuning overrides (checked now, merged with the card later)."""
        from satcompress.train.config import TrainConfig

        values = node.get("train")
        if not isinstance(values, Node):
            raise self.fail(node, "train", f"stage {name!r}: train: must be a mapping")
        self.check_fields(values, TrainConfig, f"stage {name!r}: train")
        out = plain(values)
        self.resolve_paths(out)
        return out

    def resolve_paths(self, values: dict[str, Any]) -> None:
        """Make the path options relative to the file's folder absolute."""
        from satcompress.train.config import TrainConfig

        for key in getattr(TrainConfig, "PATH_FIELDS", _TRAIN_PATHS):
            if isinstance(values.get(key), str):
                values[key] = str((self.path.parent / values[key]).resolve())

    # --- references and data ------------------------------------------------------------

    def ref(self, node: Node, key: str, name: str, teacher: bool = False) -> Ref | None:
        """``from:`` / ``teacher:``: an earlier stage, a checkpoint, a model name or self."""
        value = node.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(node, key, f"stage {name!r}: {key}: must be a stage name or a path")
        if value in self.stages:
            return Ref(stage=value)
        if value in self.later or value == name:
            raise self.fail(node, key, f"stage {name!r}: {key}: {value!r} is not an earlier stage")
        if teacher and value == "self":
            return Ref(self_teacher=True)
        path = (self.path.parent / value).resolve()
        if path.exists():
            return Ref(path=str(path))
        if teacher and (value in _known_models() or value.startswith("timm/")):
            return Ref(model=value)
        raise self.fail(
            node, key, f"stage {name!r}: {key}: {value!r} names no earlier stage and no file "
            f"({path} does not exist)",
        )  # fmt: skip

    def inherited_data(self, source: Ref) -> DataSpec | None:
        """A compress stage's data: its input stage's, else the file's (None: the card's)."""
        if source.stage is not None:
            return self.stages[source.stage].data
        doc = self.doc
        if doc.get("dataset") and doc.get("data_dir"):
            data_dir = str((self.path.parent / str(doc["data_dir"])).resolve())
            split_dir = doc.get("split_dir")
            return DataSpec(
                dataset=str(doc["dataset"]),
                data_dir=data_dir,
                split_dir=str((self.path.parent / split_dir).resolve()) if split_dir else None,
                image_size=doc.get("image_size"),
                seed=int(doc.get("seed", 0)),
            )
        return None


def _known_models() -> list[str]:
    from satcompress.models import list_models

    return list_models()


def _data_of(config: Any) -> DataSpec:
    return DataSpec(
        dataset=config.dataset,
        data_dir=str(config.data_dir),
        split_dir=config.split_dir,
        image_size=config.image_size,
        seed=config.seed,
        skip_bad_files=config.skip_bad_files,
    )


def _config_class(hint: Any) -> type[Config] | None:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not None and len(args) == 1:
        hint = args[0]
    return hint if isinstance(hint, type) and issubclass(hint, Config) else None


def _field_named(err: ConfigError, values: Mapping[str, Any]) -> str | None:
    """The option a config error is about: its ``key`` attribute, else the first one named."""
    key = getattr(err, "key", None)
    if isinstance(key, str):
        return key.split(".")[0]
    text = str(err)
    found = [(text.find(k), k) for k in values if re.search(rf"\b{re.escape(k)}\b", text)]
    return min(found)[1] if found else None
