"""A study's records as report rows: technique, family, bits, sparsity, compression ratio.

Everything here reads the results store only (:class:`~satcompress.experiments.study.Study`):
no model is loaded and torch is never imported. Each record becomes an :class:`Entry` whose
technique :func:`technique` decides from the record's own fields (its recipe's stage, the
file format, bits, sparsity, a BAIC summary), so records imported from results files and
records written by experiment stages are classified the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from satcompress.experiments.export import stage_record
from satcompress.experiments.study import STAGE_SOURCE, Study, experiment_label

FP32 = "fp32"
KD = "KD"
PTQ = "PTQ"
QAT = "QAT"
PRUNE_STRUCTURED = "pruning (structured)"
PRUNE_UNSTRUCTURED = "pruning (unstructured)"
BAIC = "BAIC"
OTHER = "other"
#: Every technique, in the order legends and tables list them.
TECHNIQUES = (FP32, KD, PTQ, QAT, PRUNE_STRUCTURED, PRUNE_UNSTRUCTURED, BAIC, OTHER)

#: Model-name fragments of transformer families (everything else counts as a CNN).
TRANSFORMER_HINTS = ("vit", "deit", "swin", "clip", "transformer", "beit")
#: Pruning methods that zero single weights instead of removing channels.
UNSTRUCTURED_METHODS = ("magnitude",)
#: Recipe stages of plain-tool quantizers (the comparison rows of the quantize benchmark).
TOOL_PTQ_STAGES = ("nncf-default", "ort-default")
#: Recipe stages that only measure a model: the technique is the lineage's last real stage.
MEASURE_STAGES = ("eval", "evaluate", "vit_layers", None)
_INT_FORMAT = re.compile(r"int(\d+)")
NONE = "—"


# -- classification ---------------------------------------------------------------------------


#: The size each named dataset loads at by default (a record without an input size was made
#: at it). The data layer's ``default_image_size`` knows these, but importing it imports torch,
#: which the report does without; a test keeps the two the same.
NATIVE_SIZES: dict[str, tuple[int, int]] = {"eurosat": (64, 64), "ucmerced": (256, 256)}


def _recipe(record: Mapping[str, Any]) -> dict[str, Any]:
    recipe = record.get("recipe")
    return recipe if isinstance(recipe, dict) else {}


def _lineage_stage(record: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The last lineage entry's stage and config (``(None, {})`` without a lineage)."""
    lineage = record.get("lineage")
    if not isinstance(lineage, list) or not lineage or not isinstance(lineage[-1], dict):
        return None, {}
    config = lineage[-1].get("config")
    return lineage[-1].get("stage"), config if isinstance(config, dict) else {}


def stage_of(record: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The stage that made the record's model, and that stage's settings.

    The recipe's ``stage`` names it; a measuring stage (``eval``) defers to the lineage.

    Args:
        record: A record (schema ``satcompress.record/1``).

    Returns:
        ``(stage or None, settings)``.
    """
    recipe = _recipe(record)
    stage = recipe.get("stage")
    if stage in MEASURE_STAGES:
        lineage_stage, config = _lineage_stage(record)
        if lineage_stage is not None:
            return lineage_stage, config
    return stage, recipe


def _is_structured(record: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    pruning = record.get("pruning")
    if isinstance(pruning, dict) and "structured" in pruning:
        return bool(pruning["structured"])
    prune = settings.get("prune") if isinstance(settings.get("prune"), dict) else settings
    return prune.get("method") not in UNSTRUCTURED_METHODS


def _quantize_method(record: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    method = settings.get("method")
    if method is None and isinstance(settings.get("type"), str):
        method = "qat" if settings["type"].startswith("QAT") else "ptq"
    if method is None:
        method = "qat" if record.get("train") else "ptq"
    qat = settings.get("qat") if isinstance(settings.get("qat"), dict) else settings
    if str(method).lower() == "qat" and qat.get("epochs") == 0:
        return PTQ  # a QAT model calibrated and never trained (experiment 3's "PTQ at N bits")
    return QAT if str(method).lower() == "qat" else PTQ


def technique(record: Mapping[str, Any]) -> str:
    """The compression technique that produced a record's model (one of :data:`TECHNIQUES`).

    Decided from the record alone, first rule that applies:

    1. a ``baic`` summary, or a ``baic`` stage: :data:`BAIC`;
    2. a ``quantize`` stage: :data:`QAT` or :data:`PTQ` by its ``method`` (or config type);
       QAT for zero epochs (calibrated, never trained) is :data:`PTQ`;
       a plain-tool quantizer (``nncf-default``, ``ort-default``): :data:`PTQ`;
    3. a ``prune`` stage or a ``pruning`` summary: structured (channels removed) or
       unstructured (``magnitude``: single weights zeroed);
    4. a ``distill`` stage: :data:`KD`;
    5. an integer format (``artifact-int4-mixed``, ``onnx-int8``) with no known stage:
       :data:`QAT` if the record holds a training summary, else :data:`PTQ`;
    6. a float file (``onnx-fp32``, ``artifact-fp32``): :data:`FP32` (trained or evaluated),
       or unstructured pruning if it carries a ``sparsity`` above zero;
    7. anything else (no deployable file): :data:`OTHER`.

    Args:
        record: A record (schema ``satcompress.record/1``).

    Returns:
        The technique's label.
    """
    stage, settings = stage_of(record)
    fmt = str(record.get("format") or "")
    if isinstance(record.get("baic"), dict) or stage == "baic":
        return BAIC
    if stage == "quantize":
        return _quantize_method(record, settings)
    if stage in TOOL_PTQ_STAGES:
        return PTQ
    if stage == "prune" or isinstance(record.get("pruning"), dict):
        return PRUNE_STRUCTURED if _is_structured(record, settings) else PRUNE_UNSTRUCTURED
    if stage == "distill":
        return KD
    if _INT_FORMAT.search(fmt):
        return _quantize_method(record, {})
    if fmt.endswith("fp32"):
        return PRUNE_UNSTRUCTURED if (_number(record.get("sparsity")) or 0) > 0 else FP32
    return OTHER


def architecture(model: str) -> str:
    """``transformer`` for ViT-like model names, else ``CNN``."""
    name = model.lower()
    return "transformer" if any(h in name for h in TRANSFORMER_HINTS) else "CNN"


def bits(record: Mapping[str, Any]) -> int | None:
    """The (smallest) weight bit-width of the record's file: 32 for float files.

    Read from the format (``artifact-int2-mixed`` -> 2), else the quantize settings.
    """
    widths = _weight_bits(record)
    if widths:
        return widths[0]
    fmt = str(record.get("format") or "")
    found = _INT_FORMAT.search(fmt)
    if found:
        return int(found.group(1))
    _, settings = stage_of(record)
    for key in ("qat", "ptq"):
        value = settings.get(key, {}).get("bits") if isinstance(settings.get(key), dict) else None
        if isinstance(value, int):
            return value
    return 32 if "fp32" in fmt else None


def bits_label(record: Mapping[str, Any]) -> str:
    """Bit-widths as the table shows them: ``32``, ``8``, ``2/8`` (mixed), ``1-8``."""
    widths = _weight_bits(record)
    if widths:
        if len(widths) > 2:
            return f"{widths[0]}-{widths[-1]}"
        return "/".join(str(w) for w in widths)
    found = bits(record)
    return NONE if found is None else str(found)


def _weight_bits(record: Mapping[str, Any]) -> list[int]:
    """The sorted weight bit-widths a ``.satc`` file stores (its ``artifact.stats``)."""
    artifact = record.get("artifact")
    stats = artifact.get("stats") if isinstance(artifact, dict) else None
    widths = stats.get("weight_bits") if isinstance(stats, dict) else None
    if not isinstance(widths, list):
        return []
    return sorted({int(w) for w in widths if isinstance(w, int | float)})


#: How a record's model started training, as :func:`initialisation` names it.
SCRATCH, TRANSFER, FROM_WEIGHTS, PRETRAINED = (
    "from scratch", "transfer (new head)", "from own weights", "ImageNet weights"
)  # fmt: skip
INITIALISATIONS = (SCRATCH, TRANSFER, FROM_WEIGHTS, PRETRAINED)


def initialisation(record: Mapping[str, Any]) -> str | None:
    """How the model behind a record started training.

    The first step of the record's lineage (its card's: the ``train`` or ``distill`` stage
    the model came from) says it, so a quantized or pruned transfer model reads as transfer.
    Without a lineage the recipe does: a compressed model's recipe carries the training
    config of the model it came from (``recipe.train``), except QAT's, whose ``train`` is
    its own fine-tuning.

    Args:
        record: A record (schema ``satcompress.record/1``).

    Returns:
        :data:`PRETRAINED` (``pretrained: true``), :data:`TRANSFER` (another model's
        ``weights`` with a ``new_head``: another dataset's classes), :data:`FROM_WEIGHTS`
        (``weights`` without a new head), :data:`SCRATCH`, or None when neither says (a
        model trained elsewhere, measured or quantized without a lineage).
    """
    origin = _origin_config(record.get("lineage"))
    if origin is not None:
        return _started(origin)
    recipe = _recipe(record)
    stage = recipe.get("stage")
    if stage is not None and stage in (*MEASURE_STAGES, "quantize"):
        return None  # the file it measured / QAT's own fine-tuning: the origin is unknown
    return _started(recipe.get("train") if isinstance(recipe.get("train"), dict) else recipe)


def _origin_config(lineage: Any) -> dict[str, Any] | None:
    """The training config of a lineage's first step, if that step trained the model."""
    if not isinstance(lineage, list) or not lineage or not isinstance(lineage[0], dict):
        return None
    first = lineage[0]
    config = first.get({"train": "config", "distill": "train"}.get(first.get("stage"), ""))
    return config if isinstance(config, dict) else None


def _started(train: Mapping[str, Any]) -> str | None:
    """:func:`initialisation` of one training config."""
    if "pretrained" not in train and "weights" not in train:
        return None
    if train.get("pretrained"):
        return PRETRAINED
    if train.get("weights"):
        return TRANSFER if train.get("new_head") else FROM_WEIGHTS
    return SCRATCH


def sparsity(record: Mapping[str, Any]) -> float | None:
    """Fraction of the weights removed or zeroed (0..1), or None when nothing was pruned.

    Unstructured: the record's ``sparsity`` (or its pruning summary's); structured: one minus
    the ratio of parameters left to parameters before.
    """
    value = _number(record.get("sparsity"))
    pruning = record.get("pruning") if isinstance(record.get("pruning"), dict) else {}
    if value is None:
        value = _number(pruning.get("sparsity"))
    if value is None and pruning.get("structured"):
        before = _number((pruning.get("before") or {}).get("params"))
        after = _number((pruning.get("after") or {}).get("params"))
        if before and after is not None:
            value = 1 - after / before
    return value if value else None


# -- entries ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One record of the study, classified.

    Attributes:
        record: The record as stored.
        source: Where it came from: the results file's name, or ``stage:<kind>``.
        technique: :func:`technique` of the record.
    """

    record: dict[str, Any]
    source: str
    technique: str

    @property
    def id(self) -> str:
        """The record's id."""
        return str(self.record.get("id") or "")

    @property
    def model(self) -> str:
        """The model name (its family)."""
        return str(self.record.get("model") or "?")

    @property
    def dataset(self) -> str:
        """The dataset name."""
        return str(self.record.get("dataset") or "?")

    @property
    def accuracy(self) -> float | None:
        """Test accuracy (0..1)."""
        return _number(self.record.get("accuracy"))

    @property
    def size_bytes(self) -> int | None:
        """Bytes of the deployable file (None when there is no file)."""
        value = _number(self.record.get("size_bytes"))
        return int(value) if value and value > 0 else None

    @property
    def bits(self) -> int | None:
        """:func:`bits` of the record."""
        return bits(self.record)

    @property
    def sparsity(self) -> float | None:
        """:func:`sparsity` of the record."""
        return sparsity(self.record)

    @property
    def initialisation(self) -> str | None:
        """:func:`initialisation` of the record."""
        return initialisation(self.record)

    @property
    def architecture(self) -> str:
        """``CNN`` or ``transformer``."""
        return architecture(self.model)

    @property
    def plottable(self) -> bool:
        """Whether it has an accuracy and a deployable file."""
        return self.accuracy is not None and self.size_bytes is not None

    def latency(self, batch: str) -> float | None:
        """Median latency in ms at ``bs1`` or ``bs64``."""
        values = self.record.get("latency_ms")
        return _number(values.get(batch)) if isinstance(values, dict) else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The model's input ``(height, width)``: the record's, else its dataset's default."""
        given = self.record.get("input")
        size = given.get("size") if isinstance(given, dict) else None
        if isinstance(size, list | tuple) and len(size) == 2:
            return int(size[0]), int(size[1])
        return NATIVE_SIZES.get(self.dataset)

    @property
    def cpu(self) -> dict[str, Any]:
        """The CPU the latency was measured on (``{}`` if unknown)."""
        latency = self.record.get("latency")
        cpu = latency.get("cpu") if isinstance(latency, dict) else None
        return cpu if isinstance(cpu, dict) else {}


def classify(records: Iterable[Mapping[str, Any]], source: str) -> list[Entry]:
    """Entries of records that share a source."""
    return [Entry(dict(r), source, technique(r)) for r in records]


@dataclasses.dataclass
class StudyData:
    """What a report reads from a study.

    Attributes:
        root: The study folder.
        entries: Every record, classified, imported files first (in file order), then the
            records of the study's own stages.
        stages: ``(kind, details, run_dir)`` of every finished stage.
        experiments: Each experiment (``name`` or ``name@preset``) -> its finished stages'
            ``(stage name, entry, seconds)`` in file order: from the study's own runs, and
            from imported files whose records carry an ``experiment`` tag (``study export``).
        progress: Each experiment -> ``(finished stages, stages)`` where known.
    """

    root: Path
    entries: list[Entry]
    stages: list[tuple[str, Any, Path]]
    experiments: dict[str, list[tuple[str, Entry, float | None]]] = dataclasses.field(
        default_factory=dict
    )
    progress: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def load_study(study_dir: str | Path) -> StudyData:
    """Read every record and finished stage of a study (read-only use of the store).

    Args:
        study_dir: The study folder (holding ``study.sqlite``).

    Returns:
        The study's data.

    Raises:
        FileNotFoundError: If the folder holds no study.
    """
    root = Path(study_dir)
    if not (root / "study.sqlite").is_file():
        raise FileNotFoundError(f"no study in {root} (no study.sqlite): run `satcompress "
                                "study import` or `satcompress experiment run` first")  # fmt: skip
    with Study(root) as study:
        entries = []
        for source in sorted(s for s in study.sources() if s != STAGE_SOURCE):
            entries += classify(study.records(source), Path(source).name)
        stages, by_key = [], {}
        for row in study.stages("done"):
            stages.append((row.kind, row.details, row.run_dir))
            record = stage_record(row)
            if record is not None:
                by_key[row.key] = (classify([record], f"stage:{row.kind}")[0], row.seconds)
        experiments, progress = {}, {}
        for name, preset in study.experiments():
            bound = study.bindings(name, preset)
            rows = [(stage, *by_key[key]) for stage, key in bound.items() if key in by_key]
            if rows:
                label = experiment_label(name, preset)
                experiments[label] = rows
                progress[label] = study.progress(name, preset)
    entries += [entry for entry, _ in by_key.values()]
    for label, (rows, counts) in _tagged_experiments(entries).items():
        if label not in experiments:  # the study's own run of it wins
            experiments[label] = rows
            if counts is not None:
                progress[label] = counts
    return StudyData(root.resolve(), entries, stages, experiments, progress)


def _tagged_experiments(entries: Iterable[Entry]) -> dict[str, tuple[list, Any]]:
    """Imported records' ``experiment`` tags (``satcompress study export``), grouped.

    Each experiment -> its ``(stage, entry, seconds)`` rows and ``(done, stages)`` (None
    when the tags do not say: files exported before they did).
    """
    found: dict[str, tuple[list, Any]] = {}
    for entry in entries:
        tag = entry.record.get("experiment")
        if isinstance(tag, dict) and tag.get("name") and tag.get("stage"):
            label = experiment_label(str(tag["name"]), str(tag.get("preset") or ""))
            counts = (tag["done"], tag["stages"]) if "done" in tag and "stages" in tag else None
            rows, _ = found.setdefault(label, ([], counts))
            rows.append((str(tag["stage"]), entry, tag.get("seconds")))
    return found


# -- comparisons ------------------------------------------------------------------------------


def reference(entry: Entry, entries: Sequence[Entry]) -> Entry | None:
    """The uncompressed file ``entry`` is compared with: its model's largest fp32 file.

    Same dataset and model name, technique :data:`FP32`, the most bytes.
    """
    same = [
        e
        for e in entries
        if e.technique == FP32 and e.dataset == entry.dataset and e.model == entry.model
        and e.size_bytes is not None
    ]  # fmt: skip
    return max(same, key=lambda e: e.size_bytes or 0, default=None)


def compression_ratio(entry: Entry, entries: Sequence[Entry]) -> float | None:
    """Bytes of :func:`reference` over the entry's bytes (None when either is unknown)."""
    ref = reference(entry, entries)
    if ref is None or entry.size_bytes is None or ref.size_bytes is None:
        return None
    return ref.size_bytes / entry.size_bytes


def unique_points(entries: Iterable[Entry]) -> list[Entry]:
    """Plottable entries with repeats removed (the same file re-timed in another results file).

    Two entries repeat each other when model, dataset, technique, accuracy and bytes agree.
    """
    seen, out = set(), []
    for e in entries:
        if not e.plottable:
            continue
        key = (e.model, e.dataset, e.technique, round(e.accuracy or 0, 6), e.size_bytes)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def pareto_front(entries: Iterable[Entry]) -> list[Entry]:
    """The entries no other one beats on both bytes (fewer) and accuracy (higher), by size."""
    front, best = [], -math.inf
    points = [e for e in entries if e.plottable]
    for e in sorted(points, key=lambda e: (e.size_bytes, -(e.accuracy or 0))):
        if (e.accuracy or 0) > best:
            front.append(e)
            best = e.accuracy or 0
    return front


def datasets(entries: Iterable[Entry]) -> list[str]:
    """Dataset names, the one with the most plottable records first."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.plottable:
            counts[e.dataset] = counts.get(e.dataset, 0) + 1
    return sorted(counts, key=lambda d: (-counts[d], d))


# -- formatting (as the tables show numbers) -----------------------------------------------


def pct(value: float | None) -> str:
    """``95.48%`` (two decimals) or a dash."""
    return NONE if value is None else f"{100 * value:.2f}%"


def nbytes(value: float | None) -> str:
    """``44,718,668`` or a dash."""
    return NONE if value is None else f"{value:,.0f}"


def ratio_text(value: float | None) -> str:
    """``44.7x`` or a dash."""
    return NONE if value is None else f"{value:.1f}x"


def ms(value: float | None) -> str:
    """``3.71`` (ms, two decimals) or a dash."""
    return NONE if value is None else f"{value:.2f}"


def sparsity_text(value: float | None) -> str:
    """``50%`` or a dash."""
    return NONE if value is None else f"{100 * value:.0f}%"


def _number(value: Any) -> float | None:
    """A finite float, or None (booleans, strings and NaN are None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
