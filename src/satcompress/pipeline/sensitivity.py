"""Per-layer sensitivity table: what each compression option costs, one unit at a time.

A budget search allocates, per layer or per coupled channel group, one option: weight bits
(8/6/4/3/2/1, or float), a structured channel ratio (0.25/0.5/0.75: that fraction of the
group's channels or heads removed) or an unstructured sparsity (0.5/0.75/0.9). To choose, it
needs, for each unit and each option applied to that unit alone:

* ``loss_increase``: cross-entropy on a fixed, seeded subset of TRAINING images, changed model
  minus unchanged model;
* ``kl``: mean ``KL(unchanged || changed)`` of the softmax outputs on the same images;
* ``accuracy``: top-1 accuracy of the changed model on them;
* ``bytes``: the unit's predicted bytes in the ``.satc`` artifact with that option (the
  stored tensors of the layers the option changes, from
  :class:`satcompress.artifact.encode.BytePredictor`), and ``file_bytes``, the whole file's.

Every option is applied by :func:`satcompress.compress.plan.apply_plan` with a one-unit plan,
so the table measures exactly what a plan will do: ``bits`` quantizes that layer's weights
per channel with Brevitas and its activations at 8 bits (calibrated, not fine-tuned),
channel ratios prune the group with L1 importance, sparsities zero that layer's smallest
weights. Units are the names :func:`satcompress.compress.plan.plan_units` gives: the
convolution and linear layers (bits, sparsity) and the groups Torch-Pruning's dependency graph
prunes together (channel ratios), merged by name: a group is named after its root layer, so
the row ``layer1.conv1`` carries that layer's bits and sparsity options and the channel ratios
of the group it roots. Attention layers appear as head groups (ratio = fraction of heads).
The classifier has no channel options.

The table is cached through :class:`satcompress.utils.cache.JsonCache` (one JSON file per
key, written atomically); the key hashes the weights (:func:`model_digest`), the data (dataset,
split fingerprint, split, image size, classes and the subset's indices), the input spec, the
settings and the code paths used (how options are applied, where bytes come from). A rerun with
the same key reads the file and computes nothing.

Example:
    >>> config = LayerSensitivityConfig(num_images=256)
    >>> table = layer_sensitivity(model, dataset, spec, config, cache_dir="runs/r18/cache")
    >>> print(table.markdown())
    >>> table.cell("layer1.conv1", "w4")["loss_increase"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from satcompress.compress.prune.common import (
    PruningError,
    clone,
    example_input,
    model_digest,
    unknown_layer_message,
)
from satcompress.compress.prune.common import subset_indices as common_subset_indices
from satcompress.compress.prune.config import check_ratio
from satcompress.compress.quantize.config import check_weight_bits
from satcompress.config import Config, ConfigError
from satcompress.data import SceneDataset
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.utils.cache import JsonCache, cache_key
from satcompress.utils.io import atomic_write_json, read_json
from satcompress.utils.lock import holds_run_lock

log = logging.getLogger(__name__)

SENSITIVITY_FILE = "sensitivity.json"
CACHE_DIR = "cache"
TABLE_FORMAT = "satcompress.layer_sensitivity/1"
FLOAT = "float"
#: What a cell holds (the columns :meth:`SensitivityTable.markdown` can show).
METRICS = ("loss_increase", "kl", "accuracy", "loss", "bytes", "file_bytes")


class SensitivityError(ValueError):
    """The analysis cannot run as asked; the message names the cause and the fix."""


@dataclasses.dataclass
class LayerSensitivityConfig(Config):
    """Per-unit sensitivity: which options are tried, on which images.

    Attributes:
        bits: Weight bit-widths tried per layer (1..8), as ``apply_plan`` quantizes a layer
            (its activations at 8 bits); the unchanged (float) option is always measured.
        channel_ratios: Fractions of a group's channels (or an attention layer's heads)
            removed, each in (0, 1).
        sparsities: Fractions of a layer's weights zeroed (smallest magnitude), each in (0, 1).
        num_images: Size of the seeded random subset of ``split`` (all of it if smaller).
        calibration_images: The first this many of them calibrate the 8-bit activation
            quantizers of a quantized layer (Brevitas calibration is the slow part).
        batch_size: Evaluation batch size.
        seed: Seed of the subset.
        units: Only these units (layer or group names as in the table); empty = all.
        split: Dataset split the images come from (the training images by default).
        predict_bytes: Predict each option's bytes (one ONNX export per quantized layer:
            the slow part on small models); off, ``bytes`` and ``file_bytes`` are None.
    """

    bits: tuple[int, ...] = (8, 6, 4, 3, 2, 1)
    channel_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.9)
    num_images: int = 256
    calibration_images: int = 32
    batch_size: int = 64
    seed: int = 0
    units: list[str] = dataclasses.field(default_factory=list)
    split: str = "train"
    predict_bytes: bool = True

    def __post_init__(self) -> None:
        for name in ("bits", "channel_ratios", "sparsities"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,)
            setattr(self, name, tuple(value))
        self.channel_ratios = tuple(_number(r) for r in self.channel_ratios)
        self.sparsities = tuple(_number(s) for s in self.sparsities)
        if isinstance(self.units, str):
            self.units = [self.units]
        self.units = [str(name) for name in self.units]
        super().__post_init__()

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        for bits in self.bits:
            check_weight_bits(bits, "bits")
        for name in ("channel_ratios", "sparsities"):
            for value in getattr(self, name):
                check_ratio(name, value)
                if value == 0:
                    raise ConfigError(f"{name} must be in (0, 1): 0 is the unchanged option")
        for name in ("bits", "channel_ratios", "sparsities"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} holds a value twice: {list(values)}")
        if not (self.bits or self.channel_ratios or self.sparsities):
            raise ConfigError("no option to measure: give bits, channel_ratios or sparsities")
        for name in ("num_images", "calibration_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def options(self) -> list[Option]:
        """Every option in table order: float, bits, channel ratios, sparsities."""
        return [
            Option(FLOAT, None),
            *(Option("bits", b) for b in self.bits),
            *(Option("channels", r) for r in self.channel_ratios),
            *(Option("sparsity", s) for s in self.sparsities),
        ]


def _number(value: Any) -> Any:
    """Ints and floats as float (so 1 and 1.0 name one option); anything else unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class Option:
    """One choice for one unit.

    Attributes:
        kind: ``float`` (unchanged), ``bits``, ``channels`` or ``sparsity``.
        value: Bits, channel ratio or sparsity; None for ``float``.
    """

    kind: str
    value: float | int | None = None

    @property
    def label(self) -> str:
        """Column name: ``float``, ``w8``, ``c0.25``, ``s0.9``."""
        if self.kind == FLOAT:
            return FLOAT
        prefix = {"bits": "w", "channels": "c", "sparsity": "s"}[self.kind]
        return f"{prefix}{self.value:g}"

    @classmethod
    def parse(cls, label: str) -> Option:
        """The option a column name stands for (inverse of :attr:`label`)."""
        if label == FLOAT:
            return cls(FLOAT)
        kinds = {"w": "bits", "c": "channels", "s": "sparsity"}
        if not label or label[0] not in kinds:
            raise ValueError(f"not an option label: {label!r} (float, w8, c0.25, s0.9)")
        kind = kinds[label[0]]
        return cls(kind, int(label[1:]) if kind == "bits" else float(label[1:]))

    def layer_plan(self) -> dict[str, Any]:
        """The one-unit plan entry: ``{"bits", "channel_ratio", "sparsity"}`` (float = None/0)."""
        return {
            "bits": self.value if self.kind == "bits" else None,
            "channel_ratio": self.value if self.kind == "channels" else 0.0,
            "sparsity": self.value if self.kind == "sparsity" else 0.0,
        }


@dataclasses.dataclass
class SensitivityTable:
    """Cost of every option for every unit, with what it was measured on.

    Attributes:
        units: One row per unit: ``{"name", "type", "params", "group", "layers",
            "results"}``; ``type`` is the module's class, ``params`` its weight count (None
            for a head group), ``group`` None or ``{"kind": "channels"|"heads", "size",
            "members", "inputs"}`` (layers whose outputs/inputs shrink with it), ``layers``
            the layers whose bytes the row's ``bytes`` counts, and ``results`` maps option
            labels to cells ``{"loss", "loss_increase", "kl", "accuracy", "bytes",
            "file_bytes"}`` (or ``{"error"}`` where the option could not be applied). Options
            that do not apply to a unit are absent.
        options: Column labels in order (``float`` first).
        baseline: The unchanged model: ``{"loss", "accuracy", "bytes"}`` (bytes of the file).
        data: Dataset, split, split fingerprint, image size, classes and the subset indices.
        config: The settings (:class:`LayerSensitivityConfig` as a dict).
        input: The input spec as a dict.
        model_sha256: Digest of the analysed weights.
        key: The cache key.
        backend: How options were applied (``apply``) and where bytes came from (``bytes``).
        seconds: Time to compute the table (of the original run, for a cached one).
        cached: Whether this table was read from the cache.
    """

    units: list[dict[str, Any]]
    options: list[str]
    baseline: dict[str, Any]
    data: dict[str, Any]
    config: dict[str, Any]
    input: dict[str, Any]
    model_sha256: str
    key: str = ""
    backend: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (with ``format``); :meth:`from_dict` reads it back."""
        return {"format": TABLE_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SensitivityTable:
        """Rebuild a table from :meth:`to_dict`'s output.

        Raises:
            SensitivityError: If ``values`` is not a sensitivity table of this format.
        """
        if not isinstance(values, dict) or values.get("format") != TABLE_FORMAT:
            found = values.get("format") if isinstance(values, dict) else type(values).__name__
            raise SensitivityError(f"not a {TABLE_FORMAT} table (format {found!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (atomically) and return the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityTable:
        """Read a table written by :meth:`save`."""
        return cls.from_dict(read_json(path))

    def unit_names(self) -> list[str]:
        """The row names in model order."""
        return [unit["name"] for unit in self.units]

    def cell(self, unit: str, option: str) -> dict[str, Any] | None:
        """The cell of ``unit`` and option label ``option``; None if it does not apply.

        Raises:
            KeyError: If the table has no such unit.
        """
        for row in self.units:
            if row["name"] == unit:
                return row["results"].get(option)
        raise KeyError(unknown_layer_message(unit, self.unit_names(), "unit"))

    def column(self, option: str, metric: str = "loss_increase") -> dict[str, float | None]:
        """``{unit: metric}`` of option ``option`` over the units it applies to (no errors)."""
        out = {}
        for row in self.units:
            cell = row["results"].get(option)
            if cell is not None and "error" not in cell:
                out[row["name"]] = cell.get(metric)
        return out

    def markdown(self, metric: str = "loss_increase") -> str:
        """Markdown tables: rows = units, columns = options, cells = ``metric``.

        The bytes table follows when bytes are known.

        Args:
            metric: ``loss_increase`` (default), ``kl``, ``accuracy``, ``loss``, ``bytes`` or
                ``file_bytes`` (see :data:`METRICS`).

        Raises:
            ValueError: For another metric.
        """
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        base = self.baseline
        lines = [
            f"Sensitivity on {len(self.data.get('indices', []))} {self.data.get('split')} images "
            f"of {self.data.get('dataset')}: baseline loss {base['loss']:.4f}, "
            f"accuracy {base['accuracy'] * 100:.2f}%.",
            "",
            *self._grid(metric),
        ]
        has_bytes = any(
            cell.get("bytes") is not None for row in self.units for cell in row["results"].values()
        )
        if metric not in ("bytes", "file_bytes") and has_bytes:
            lines += ["", *self._grid("bytes")]
        return "\n".join(lines)

    def _grid(self, metric: str) -> list[str]:
        head = f"| unit ({metric}) | type | params | " + " | ".join(self.options) + " |"
        rule = "|---|---|---:|" + "---:|" * len(self.options)
        rows = [head, rule]
        for row in self.units:
            cells = [_format(row["results"].get(option), metric) for option in self.options]
            params = "" if row.get("params") is None else str(row["params"])
            rows.append(f"| {row['name']} | {row['type']} | {params} | " + " | ".join(cells) + " |")
        return rows


def _format(cell: dict[str, Any] | None, metric: str) -> str:
    if cell is None:
        return ""
    if "error" in cell:
        return "error"
    value = cell.get(metric)
    if value is None:
        return "n/a"
    if metric in ("bytes", "file_bytes"):
        return str(int(value))
    if metric == "accuracy":
        return f"{value * 100:.2f}%"
    return f"{value:+.4f}" if metric == "loss_increase" else f"{value:.4f}"


# --------------------------------------------------------------------------- entry points


def layer_sensitivity(
    model: nn.Module,
    dataset: SceneDataset,
    spec: InputSpec,
    config: LayerSensitivityConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = False,
) -> SensitivityTable:
    """The sensitivity table of ``model``: each option applied to each unit alone (cached).

    Args:
        model: The trained model (not modified).
        dataset: Its dataset; ``config.split`` provides the images.
        spec: The model's input spec (resolution, normalisation).
        config: Options, subset size, seed, units; None = the defaults.
        cache_dir: Folder of the cache (``<key>.json`` per key); None = no cache.
        progress: Show a progress bar.

    Returns:
        The table; ``table.cached`` says whether it was read from the cache.

    Raises:
        SensitivityError: If the split is missing or empty, or ``config.units`` names a unit
            the model does not have.
    """
    config = config or LayerSensitivityConfig()
    indices = subset_indices(dataset, config.split, config.num_images, config.seed)
    payload = cache_payload(model, dataset, spec, config, indices)
    key = cache_key(payload)
    cache = JsonCache(cache_dir) if cache_dir is not None else None
    stored = cache.get(key) if cache is not None else None
    if stored is not None:
        try:
            table = SensitivityTable.from_dict(stored)
        except SensitivityError as err:
            log.warning("sensitivity: ignoring cache entry %s (%s)", cache.path(key), err)
        else:
            log.info("sensitivity: reusing %s", cache.path(key))
            table.cached = True
            return table
    started = time.perf_counter()
    table = _compute(model, dataset, spec, config, indices, progress)
    table.key = key
    table.seconds = round(time.perf_counter() - started, 3)
    if cache is not None:
        cache.put(key, table.to_dict(), payload)
    return table


@holds_run_lock
def run_sensitivity(
    checkpoint_path_or_model: str | os.PathLike | nn.Module,
    dataset: SceneDataset,
    config: LayerSensitivityConfig | None,
    run_dir: str | os.PathLike,
    *,
    input_spec: InputSpec | None = None,
    model_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> SensitivityTable:
    """Compute (or reuse) the table of a checkpoint or model and write ``run_dir/sensitivity.json``.

    Args:
        checkpoint_path_or_model: A run directory or weights file (its card gives the
            architecture and input spec), or a model.
        dataset: The dataset whose ``config.split`` provides the images.
        config: The settings; None = the defaults.
        run_dir: Output folder.
        input_spec: Overrides the card's input spec; pass it with a bare model (else
            :class:`InputSpec`'s defaults: ImageNet normalisation at the dataset's size).
        model_name: Registry name, for weights without a card.
        cache_dir: Cache folder; None = ``run_dir/cache``.
        progress: Show a progress bar.

    Returns:
        The table (also saved as ``run_dir/sensitivity.json``).
    """
    if isinstance(checkpoint_path_or_model, nn.Module):
        model, spec = checkpoint_path_or_model, input_spec or InputSpec()
    else:
        from satcompress.checkpoint import load_trained

        loaded = load_trained(checkpoint_path_or_model, model_name=model_name)
        model, spec = loaded.model, input_spec or loaded.input_spec
    run_dir = Path(run_dir)
    cache = Path(cache_dir) if cache_dir is not None else run_dir / CACHE_DIR
    table = layer_sensitivity(model, dataset, spec, config, cache, progress=progress)
    table.save(run_dir / SENSITIVITY_FILE)
    return table


# --------------------------------------------------------------------------- data and key


def subset_indices(dataset: SceneDataset, split: str, count: int, seed: int) -> list[int]:
    """The indices of a seeded random choice of ``count`` images of ``split`` (sorted).

    The choice of :func:`satcompress.compress.prune.common.subset_indices`, listed in full
    (all indices when the split holds ``count`` images or fewer).

    Raises:
        SensitivityError: If the split does not exist or is empty.
    """
    try:
        indices = common_subset_indices(dataset, split, count, seed)
    except PruningError as err:
        raise SensitivityError(str(err)) from None
    return list(range(len(dataset.splits[split].labels))) if indices is None else indices


def data_fingerprint(dataset: SceneDataset, split: str, indices: list[int]) -> dict[str, Any]:
    """What identifies the images measured: dataset, split files, split, size, the indices."""
    return {
        "dataset": dataset.name,
        "split_fingerprint": dataset.split_fingerprint,
        "split": split,
        "image_size": list(dataset.image_size),
        "classes": list(dataset.classes),
        "indices_sha256": hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest(),
    }


def cache_payload(
    model: nn.Module,
    dataset: SceneDataset,
    spec: InputSpec,
    config: LayerSensitivityConfig,
    indices: list[int],
) -> dict[str, Any]:
    """What the cache key hashes: weights, data, input spec, settings and code paths."""
    return {
        "analysis": TABLE_FORMAT,
        "model": model_digest(model),
        "architecture": type(model).__name__,
        "data": data_fingerprint(dataset, config.split, indices),
        "input": spec.to_dict(),
        "config": config.to_dict(),
        "backend": BACKEND,
    }


# --------------------------------------------------------------------------- computation

#: How the options are applied and bytes predicted (part of the cache key: a change of
#: method must not reuse tables measured the other way).
BACKEND = {"apply": "compress.plan.apply_plan", "bytes": "artifact.encode.BytePredictor"}


def _compute(
    model: nn.Module,
    dataset: SceneDataset,
    spec: InputSpec,
    config: LayerSensitivityConfig,
    indices: list[int],
    progress: bool,
) -> SensitivityTable:
    """Measure every option of every unit (no cache)."""
    from satcompress.compress.plan import plan_units
    from satcompress.compress.prune.transformers import split_multihead_attention

    split = dataset.splits[config.split]
    index = torch.tensor(indices, dtype=torch.long)
    images, labels = split.images[index], split.labels[index]
    work = clone(model).eval()
    split_multihead_attention(work)  # numerically the same; every copy can then lose heads
    device = next(work.parameters()).device
    preprocess = Preprocess(spec).to(device)
    inputs = [
        preprocess(images[i : i + config.batch_size].to(device))
        for i in range(0, len(indices), config.batch_size)
    ]
    example = example_input(spec, dataset.image_size).to(device)
    calibration = [torch.cat(inputs)[: config.calibration_images]]
    reference = _log_probs(work, inputs)
    labels = labels.to(reference.device)
    baseline = _metrics(reference, reference, labels)
    units = plan_units(work, example)
    rows = _select(_rows(work, units), config.units)
    sizes = _Sizes(work, spec, tuple(dataset.image_size)) if config.predict_bytes else None
    options = config.options()
    jobs = [(row, o) for row in rows for o in options if _applies(row, o)]
    for row, option in tqdm(jobs, desc="sensitivity", disable=not progress, leave=False):
        changed = _apply_option(work, row["name"], option, example, calibration)
        if isinstance(changed, str):
            row["results"][option.label] = {"error": changed}
            continue
        cell = _metrics(reference, _log_probs(changed, inputs), labels, baseline["loss"])
        cell.update(sizes.cell(row, option) if sizes else {"bytes": None, "file_bytes": None})
        row["results"][option.label] = cell
    for row in rows:
        del row["is_layer"]
    return SensitivityTable(
        units=rows,
        options=[o.label for o in options],
        baseline={
            "loss": _round(baseline["loss"]),
            "accuracy": baseline["accuracy"],
            "bytes": sizes.total() if sizes else None,
        },
        data={**data_fingerprint(dataset, config.split, indices), "indices": indices},
        config=config.to_dict(),
        input=spec.to_dict(),
        model_sha256=model_digest(model),
        backend=dict(BACKEND),
    )


@torch.no_grad()
def _log_probs(model: nn.Module, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """Log-softmax outputs (float64) of ``model`` in eval mode on the preprocessed batches."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():  # Brevitas: "zero point of output accumulator"
        warnings.simplefilter("ignore", UserWarning)
        out = torch.cat([model(x).double().log_softmax(1) for x in inputs])
    model.train(was_training)
    return out


def _metrics(
    reference: torch.Tensor,
    changed: torch.Tensor,
    labels: torch.Tensor,
    base_loss: float | None = None,
) -> dict[str, Any]:
    """Loss, its increase over ``base_loss``, ``KL(reference || changed)`` and accuracy."""
    if not torch.isfinite(changed).all():
        return {"error": "non-finite outputs (the option breaks the model numerically)"}
    loss = float(-changed.gather(1, labels[:, None]).mean())
    kl = float((reference.exp() * (reference - changed)).sum(1).mean())
    return {
        "loss": loss if base_loss is None else _round(loss),
        "loss_increase": _round(loss - base_loss) if base_loss is not None else 0.0,
        "kl": _round(max(kl, 0.0)),  # an exact zero for the unchanged model, never -1e-17
        "accuracy": _round(float((changed.argmax(1) == labels).double().mean())),
    }


def _round(value: float) -> float:
    return float(f"{value:.8g}")


def _rows(model: nn.Module, units: Any) -> list[dict[str, Any]]:
    """One row per plan name (layers and groups merged by name), in model order.

    ``layers`` lists the layers whose stored bytes the row's options change: the layer
    itself and every layer the group it roots shrinks (outputs or inputs).
    """
    rows = []
    for name, module in model.named_modules():
        layer, group = units.layers.get(name), units.groups.get(name)
        if layer is None and group is None:
            continue
        touched = [name] if layer is not None else []
        if group is not None:
            touched += [*group.out_members, *group.in_members]
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "params": layer.count if layer is not None else None,
                "group": (
                    {
                        "kind": group.kind,
                        "size": group.size,
                        "members": list(group.out_members),
                        "inputs": list(group.in_members),
                    }
                    if group is not None
                    else None
                ),
                "layers": [n for n in dict.fromkeys(touched) if n in units.layers],
                "results": {},
                "is_layer": layer is not None,
            }
        )
    return rows


def _applies(row: dict[str, Any], option: Option) -> bool:
    if option.kind == FLOAT:
        return True  # every row: the reference of its bytes, and a check of apply_plan
    if option.kind == "channels":
        return row["group"] is not None
    return row["is_layer"]  # bits and sparsity act on a layer's weights


def _select(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return rows
    known = [r["name"] for r in rows]
    for name in names:
        if name not in known:
            raise SensitivityError(unknown_layer_message(name, known, "unit"))
    return [r for r in rows if r["name"] in names]


def _one_unit_plan(name: str, option: Option) -> Any:
    from satcompress.compress.plan import CompressionPlan, LayerPlan

    return CompressionPlan({name: LayerPlan(**option.layer_plan())})


def _apply_option(
    model: nn.Module,
    name: str,
    option: Option,
    example: torch.Tensor,
    calibration: list[torch.Tensor],
) -> nn.Module | str:
    """A copy of ``model`` with ``option`` applied to unit ``name`` alone (or an error text).

    The one place options are applied: :func:`satcompress.compress.plan.apply_plan` with a
    one-unit plan (bits insert Brevitas quantizers on that layer, with its 8-bit activation
    quantizers, calibrated on ``calibration``; ratios prune the group with L1 importance;
    sparsities zero that layer's smallest weights).
    """
    from satcompress.compress.plan import apply_plan

    try:
        with warnings.catch_warnings():  # Brevitas: "zero point of output accumulator"
            warnings.simplefilter("ignore", UserWarning)
            return apply_plan(model, _one_unit_plan(name, option), example, calibration)
    except (ValueError, RuntimeError) as err:  # ConfigError and PruningError are ValueErrors
        return f"{type(err).__name__}: {err}"


class _Sizes:
    """Predicted artifact bytes of one-unit plans (one :class:`BytePredictor`, shared)."""

    def __init__(self, model: nn.Module, spec: InputSpec, image_size: tuple[int, int]) -> None:
        from satcompress.artifact.encode import BytePredictor

        self.predictor = BytePredictor(model, spec, image_size)

    def _table(self, plan: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.predictor.table(plan)

    def total(self) -> int | None:
        """Bytes of the unchanged model's artifact."""
        from satcompress.compress.plan import CompressionPlan

        try:
            return int(self._table(CompressionPlan()).total)
        except (ValueError, RuntimeError) as err:
            log.warning("sensitivity: no byte prediction for the model (%s)", err)
            return None

    def cell(self, row: dict[str, Any], option: Option) -> dict[str, int | None]:
        """``bytes`` (the row's layers) and ``file_bytes`` (whole artifact) with ``option``."""
        try:
            table = self._table(_one_unit_plan(row["name"], option))
        except (ValueError, RuntimeError) as err:
            log.warning("sensitivity: no bytes for %s %s (%s)", row["name"], option.label, err)
            return {"bytes": None, "file_bytes": None}
        layers = set(row["layers"])
        unit = sum(int(r["total"]) for r in table.rows if r["layer"] in layers)
        return {"bytes": unit, "file_bytes": int(table.total)}
