"""Exact allocation of weight bits and channel-pruning ratios under a byte budget.

The model is additive. Every layer ``l`` has weight options ``b``: a bit-width (1..8, or None
for float) or, with unstructured sparsity, a ``(bits, sparsity)`` pair (that bit-width with
the layer's smallest weights zeroed and stored sparse), each with predicted bytes ``B[l][b]``
at no pruning, an accuracy cost ``C[l][b]`` (a loss increase) and optionally a latency
``T[l][b]``. Every structured-pruning group ``g``
has ratio options ``r`` (0.0 always among them), each with a cost ``G[g][r]`` and a kept
fraction ``K[g][r]``; a layer belongs to at most one group and under ``(b, r)`` takes
``B[l][b] * K[g][r]`` bytes and ``T[l][b] * K[g][r]`` ms. The problem is to choose one ``b``
per layer and one ``r`` per group minimising ``sum C + sum G`` subject to
``base_bytes + sum bytes <= budget`` (and the same for latency when a latency budget is
given).

:func:`solve` finds the optimum with an integer program (``scipy.optimize.milp``) or, for
problems without pruning, a dynamic program over bytes (a multiple-choice knapsack).
:func:`greedy` and :func:`uniform` are the baselines, :func:`brute_force` the reference for
tests, and :func:`recalibrate` corrects the model with what a real file measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import csr_array

from satcompress.config import ConfigError
from satcompress.search.budget import format_bytes

#: A weight-bit option: 1..8 bits, or None for float (unquantized) weights.
Bits = int | None
#: A layer option: its bits, or ``(bits, sparsity)`` with a sparsity in (0, 1) (the fraction
#: of its smallest-magnitude weights zeroed). ``(bits, 0.0)`` is normalised to ``bits``.
Option = Bits | tuple[Bits, float]

#: :func:`brute_force` refuses problems with more combinations than this.
BRUTE_FORCE_LIMIT = 200_000

_METHODS = ("milp", "dp")


class InfeasibleBudgetError(ConfigError):
    """No allocation fits the budget; ``min_bytes`` is the smallest achievable size.

    Attributes:
        min_bytes: The smallest predicted size any allocation reaches (under the latency
            budget, if one was given; ``inf`` when the latency budget itself cannot be met).
        min_latency_ms: The smallest predicted latency, when a latency budget was given.
    """

    def __init__(self, message: str, min_bytes: float, min_latency_ms: float | None = None):
        super().__init__(message)
        self.min_bytes = min_bytes
        self.min_latency_ms = min_latency_ms


@dataclasses.dataclass
class LayerOptions:
    """One layer's weight options (bits, or bits and a sparsity: see :data:`Option`).

    Attributes:
        bytes: Predicted bytes in the artifact per option, at no pruning.
        cost: Accuracy cost (loss increase) per option; may be 0 or slightly negative.
        latency_ms: Predicted latency per bits option (same keys), or None.
        group: The structured-pruning group the layer belongs to, or None.
    """

    bytes: dict[Option, float]
    cost: dict[Option, float]
    latency_ms: dict[Option, float] | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        self.bytes = _table(self.bytes, _option_key, "bytes", minimum=0.0)
        self.cost = _table(self.cost, _option_key, "cost")
        _same_keys(self.bytes, self.cost, "bytes", "cost")
        if self.latency_ms is not None:
            self.latency_ms = _table(self.latency_ms, _option_key, "latency_ms", minimum=0.0)
            _same_keys(self.bytes, self.latency_ms, "bytes", "latency_ms")

    @property
    def options(self) -> list[Option]:
        """The options, in the order given."""
        return list(self.bytes)

    def cheapest(self) -> Option:
        """The least-cost option (ties: the smaller one)."""
        return min(self.bytes, key=lambda b: (self.cost[b], self.bytes[b]))


@dataclasses.dataclass
class GroupOptions:
    """One structured-pruning group's ratio options.

    Attributes:
        cost: Accuracy cost per pruning ratio; ratio 0.0 must be present.
        kept: Fraction of the members' weights kept per ratio, in (0, 1]; 1.0 at ratio 0.0.
    """

    cost: dict[float, float]
    kept: dict[float, float]

    def __post_init__(self) -> None:
        self.cost = _table(self.cost, _ratio_key, "cost")
        self.kept = _table(self.kept, _ratio_key, "kept")
        _same_keys(self.cost, self.kept, "cost", "kept")
        if 0.0 not in self.kept:
            raise ConfigError(f"group ratios {sorted(self.kept)} lack ratio 0.0 (no pruning)")
        if self.kept[0.0] != 1.0:
            raise ConfigError(f"kept fraction at ratio 0.0 must be 1.0, got {self.kept[0.0]}")
        bad = {r: k for r, k in self.kept.items() if not 0.0 < k <= 1.0}
        if bad:
            raise ConfigError(f"kept fractions must be in (0, 1], got {bad}")

    @property
    def ratios(self) -> list[float]:
        """The ratio options, in the order given."""
        return list(self.kept)

    def cheapest(self) -> float:
        """The least-cost ratio (ties: the larger one, which keeps fewer bytes)."""
        return min(self.kept, key=lambda r: (self.cost[r], self.kept[r]))


@dataclasses.dataclass
class AllocationProblem:
    """Layers, groups and the bytes and latency outside them.

    Attributes:
        layers: Layer name -> its options.
        groups: Group name -> its options; every layer's ``group`` must be a key here.
        base_bytes: Bytes not attributed to layers (header, manifest, biases, ...).
        base_latency_ms: Latency not attributed to layers.
    """

    layers: dict[str, LayerOptions]
    groups: dict[str, GroupOptions] = dataclasses.field(default_factory=dict)
    base_bytes: float = 0
    base_latency_ms: float = 0.0

    def __post_init__(self) -> None:
        self.layers = dict(self.layers)
        self.groups = dict(self.groups)
        unknown = {
            n: o.group for n, o in self.layers.items() if o.group not in (None, *self.groups)
        }
        if unknown:
            raise ConfigError(
                f"layers name unknown groups: {unknown}; known groups: {sorted(self.groups)}"
            )
        for name, value in (
            ("base_bytes", self.base_bytes),
            ("base_latency_ms", self.base_latency_ms),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def has_latency(self) -> bool:
        """Whether every layer has a latency table."""
        return all(o.latency_ms is not None for o in self.layers.values())

    def members(self, group: str) -> list[str]:
        """The layers of ``group``, in layer order."""
        return [n for n, o in self.layers.items() if o.group == group]

    def ratios_of(self, layer: str) -> list[float]:
        """The ratios that apply to ``layer``: its group's, or ``[0.0]`` without a group."""
        group = self.layers[layer].group
        return [0.0] if group is None else self.groups[group].ratios

    def kept(self, layer: str, ratio: float) -> float:
        """Kept fraction of ``layer`` at its group's ``ratio`` (1.0 without a group)."""
        group = self.layers[layer].group
        return 1.0 if group is None else self.groups[group].kept[ratio]

    def combinations(self) -> int:
        """Number of distinct allocations (the brute-force search space)."""
        sizes = [len(o.bytes) for o in self.layers.values()]
        sizes += [len(g.kept) for g in self.groups.values()]
        return math.prod(sizes)


@dataclasses.dataclass
class Allocation:
    """A choice of bits per layer and ratio per group, with its predicted totals.

    Attributes:
        bits: Layer name -> its option: bits (None = float) or ``(bits, sparsity)``.
        ratios: Group name -> pruning ratio.
        predicted_bytes: ``base_bytes`` plus every layer's predicted bytes.
        predicted_cost: Sum of layer and group costs.
        predicted_latency_ms: Predicted latency, or None when the problem has no latency table.
        method: The method that chose it ("milp", "dp", "greedy", "uniform", ...).
        label: A short description (the uniform baseline's bits and ratio).
    """

    bits: dict[str, Option]
    ratios: dict[str, float]
    predicted_bytes: float
    predicted_cost: float
    predicted_latency_ms: float | None
    method: str
    label: str = ""

    def fits(self, budget_bytes: float, latency_budget_ms: float | None = None) -> bool:
        """Whether the predicted bytes (and latency, if a budget is given) are within budget."""
        if self.predicted_bytes > budget_bytes:
            return False
        if latency_budget_ms is None:
            return True
        return self.predicted_latency_ms is not None and (
            self.predicted_latency_ms <= latency_budget_ms
        )

    def summary(self) -> str:
        """``"all 12 layers at 4 bits, groups at ratio 0.5 (3), 0.25 (1)"`` and the like."""
        parts = [_count_phrase(Counter(self.bits.values()), "layer", _bits_name)]
        if self.ratios:
            parts.append(_count_phrase(Counter(self.ratios.values()), "group", _ratio_name))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)


def predict(
    problem: AllocationProblem,
    bits: Mapping[str, Option],
    ratios: Mapping[str, float] | None = None,
    method: str = "given",
    label: str = "",
) -> Allocation:
    """The predicted bytes, cost and latency of a given choice.

    Args:
        problem: The problem.
        bits: Option (bits, or bits and sparsity) per layer (every layer).
        ratios: Ratio per group; missing groups are at 0.0.
        method: Recorded in the result.
        label: Recorded in the result.

    Returns:
        The allocation with its predicted totals.

    Raises:
        ConfigError: If a layer is missing or a choice is not among its options.
    """
    ratios = {g: float((ratios or {}).get(g, 0.0)) for g in problem.groups}
    bits = dict(bits)
    missing = sorted(set(problem.layers) - set(bits))
    if missing:
        raise ConfigError(f"no bits given for layers {missing}")
    for group, ratio in ratios.items():
        if ratio not in problem.groups[group].kept:
            raise ConfigError(f"ratio {ratio} is not an option of group {group!r}")
    size, lat, cost = float(problem.base_bytes), float(problem.base_latency_ms), 0.0
    for name, opts in problem.layers.items():
        b = _option_key(bits[name])
        if b not in opts.bytes:
            raise ConfigError(f"{_bits_name(b)} is not an option of layer {name!r}")
        kept = 1.0 if opts.group is None else problem.groups[opts.group].kept[ratios[opts.group]]
        size += opts.bytes[b] * kept
        lat += opts.latency_ms[b] * kept if opts.latency_ms is not None else 0.0
        cost += opts.cost[b]
    cost += sum(problem.groups[g].cost[r] for g, r in ratios.items())
    latency = lat if problem.has_latency else None
    bits = {n: _option_key(bits[n]) for n in problem.layers}
    return Allocation(bits, ratios, size, cost, latency, method, label)


def solve(
    problem: AllocationProblem,
    budget_bytes: float,
    latency_budget_ms: float | None = None,
    method: str = "milp",
    *,
    resolution: float | None = None,
    time_limit_s: float | None = None,
) -> Allocation:
    """The least-cost allocation within the byte (and latency) budget.

    Args:
        problem: The problem.
        budget_bytes: Largest allowed predicted size, in bytes.
        latency_budget_ms: Largest allowed predicted latency, or None for no latency limit.
        method: ``"milp"`` (exact integer program, any problem) or ``"dp"`` (dynamic program
            over bytes; problems without pruning ratios and without a latency budget).
        resolution: ``"dp"`` only: the byte granularity; every layer's bytes are rounded up
            to it, so the DP never admits an over-budget allocation but may miss one that
            fits within ``len(layers) * resolution``. Default ``budget_bytes / 4000``.
        time_limit_s: ``"milp"`` only: a time limit; the best allocation found by then is
            returned (``method`` then reads ``"milp (time limit)"``).

    Returns:
        The optimal allocation (under the model).

    Raises:
        InfeasibleBudgetError: If no allocation fits.
        ConfigError: For an invalid budget or method, or a problem the method cannot solve.
    """
    _check_budgets(problem, budget_bytes, latency_budget_ms)
    if method not in _METHODS:
        raise ConfigError(f"unknown allocation method {method!r}; choose one of {_METHODS}")
    _raise_if_below_minimum(problem, budget_bytes)
    if method == "dp":
        if latency_budget_ms is not None:
            raise ConfigError("method='dp' has no latency constraint; use method='milp'")
        return _solve_dp(problem, budget_bytes, resolution)
    return _solve_milp(problem, budget_bytes, latency_budget_ms, time_limit_s)


def minimum_bytes(problem: AllocationProblem, latency_budget_ms: float | None = None) -> float:
    """The smallest predicted size any allocation reaches (``inf`` if the latency budget fails).

    Args:
        problem: The problem.
        latency_budget_ms: If given, the smallest size among allocations within it.
    """
    smallest = _smallest(problem, "bytes", latency_budget_ms)
    return math.inf if smallest is None else smallest.predicted_bytes


def greedy(
    problem: AllocationProblem, budget_bytes: float, latency_budget_ms: float | None = None
) -> Allocation:
    """Baseline: from the least-cost choice, take the cheapest moves per byte until it fits.

    A move changes one layer's bits or one group's ratio. While the size is over budget the
    move with the smallest cost increase per byte saved is taken; then, while the latency is
    over its budget, the one with the smallest cost increase per millisecond saved that keeps
    the size within budget.

    Raises:
        InfeasibleBudgetError: If no allocation fits.
        ConfigError: If the budget is feasible but the greedy moves do not reach it (possible
            only with a latency budget).
    """
    _check_budgets(problem, budget_bytes, latency_budget_ms)
    _raise_if_below_minimum(problem, budget_bytes)
    bits = {n: o.cheapest() for n, o in problem.layers.items()}
    ratios = {g: o.cheapest() for g, o in problem.groups.items()}
    current = predict(problem, bits, ratios, "greedy")
    while current.predicted_bytes > budget_bytes:
        current = _greedy_step(problem, current, "bytes", budget_bytes)
    while latency_budget_ms is not None and current.predicted_latency_ms > latency_budget_ms:
        step = _greedy_step(problem, current, "latency", budget_bytes)
        if step is current:
            _raise_infeasible(problem, budget_bytes, latency_budget_ms)
            raise ConfigError("greedy allocation got stuck above the latency budget")
        current = step
    return current


def uniform_candidates(
    problem: AllocationProblem,
    budget_bytes: float,
    latency_budget_ms: float | None = None,
    bits_options: Iterable[Bits] | None = None,
    ratio_options: Iterable[float] | None = None,
) -> list[Allocation]:
    """Every feasible "one bit-width, one prune ratio" allocation, least cost first.

    For a pair ``(b, r)``, every layer with option ``b`` takes it and every group with ratio
    ``r`` takes it; a layer without option ``b`` keeps its least-cost option (typically the
    float or 8-bit weights a uniform baseline leaves alone) and a group without ratio ``r``
    stays unpruned.

    Args:
        problem: The problem.
        budget_bytes: Largest allowed predicted size.
        latency_budget_ms: Largest allowed predicted latency, or None.
        bits_options: The bit-widths to try (default: every layer's options).
        ratio_options: The ratios to try (default: every group's ratios, or just 0.0).

    Returns:
        The distinct feasible allocations sorted by cost, ties by larger size first.
    """
    _check_budgets(problem, budget_bytes, latency_budget_ms)
    feasible = [
        a
        for a in _uniform_all(problem, bits_options, ratio_options)
        if a.fits(budget_bytes, latency_budget_ms)
    ]
    return sorted(feasible, key=lambda a: (a.predicted_cost, -a.predicted_bytes))


def uniform(
    problem: AllocationProblem,
    budget_bytes: float,
    latency_budget_ms: float | None = None,
    bits_options: Iterable[Bits] | None = None,
    ratio_options: Iterable[float] | None = None,
) -> Allocation:
    """Baseline: the best feasible "one bit-width, one prune ratio" pair.

    See :func:`uniform_candidates` for the rule.

    Raises:
        InfeasibleBudgetError: If no pair fits; ``min_bytes`` is the smallest uniform size.
    """
    bits_options = None if bits_options is None else list(bits_options)
    ratio_options = None if ratio_options is None else list(ratio_options)
    found = uniform_candidates(
        problem, budget_bytes, latency_budget_ms, bits_options, ratio_options
    )
    if found:
        return found[0]
    every = _uniform_all(problem, bits_options, ratio_options)
    smallest = min(every, key=lambda a: a.predicted_bytes)
    raise InfeasibleBudgetError(
        f"no uniform bit-width and ratio fits budget {format_bytes(budget_bytes)}"
        + ("" if latency_budget_ms is None else f" and latency {latency_budget_ms:g} ms")
        + f"; the smallest uniform allocation is {format_bytes(smallest.predicted_bytes)} "
        f"({smallest.label})",
        smallest.predicted_bytes,
    )


def brute_force(
    problem: AllocationProblem, budget_bytes: float, latency_budget_ms: float | None = None
) -> Allocation:
    """The optimum by trying every allocation (tests on tiny problems only).

    Raises:
        ConfigError: If the problem has more than :data:`BRUTE_FORCE_LIMIT` allocations.
        InfeasibleBudgetError: If no allocation fits.
    """
    _check_budgets(problem, budget_bytes, latency_budget_ms)
    if problem.combinations() > BRUTE_FORCE_LIMIT:
        raise ConfigError(
            f"brute force would try {problem.combinations()} allocations "
            f"(limit {BRUTE_FORCE_LIMIT}); use solve()"
        )
    best = None
    groups = list(problem.groups)
    for combo in itertools.product(*(problem.groups[g].ratios for g in groups)):
        ratios = dict(zip(groups, combo, strict=True))
        found = _brute_force_layers(problem, ratios, budget_bytes, latency_budget_ms)
        if found is not None and (best is None or found.predicted_cost < best.predicted_cost):
            best = found
    if best is None:
        _raise_infeasible(problem, budget_bytes, latency_budget_ms)
    return best


def recalibrate(
    problem: AllocationProblem,
    measured_bytes: float,
    predicted_bytes: float,
    measured_cost: float | None = None,
    predicted_cost: float | None = None,
    measured_latency_ms: float | None = None,
    predicted_latency_ms: float | None = None,
) -> AllocationProblem:
    """The problem corrected so that an allocation just measured is predicted exactly.

    This is a global multiplicative correction: every layer's bytes are scaled by
    ``(measured_bytes - base) / (predicted_bytes - base)`` (the base bytes are taken as
    exact), and, when both are given, every layer and group cost by
    ``measured_cost / predicted_cost`` and every layer latency by
    ``(measured - base) / (predicted - base)``. It keeps the allocation's ranking of options
    and corrects the overall level, which is what the additive model gets wrong at high
    compression; re-solving with it moves the next allocation towards the budget.

    Args:
        problem: The problem whose predictions were measured.
        measured_bytes: The real file's bytes.
        predicted_bytes: The allocation's predicted bytes under ``problem``.
        measured_cost: The measured accuracy cost (loss increase), or None.
        predicted_cost: The allocation's predicted cost, or None.
        measured_latency_ms: The measured latency, or None.
        predicted_latency_ms: The allocation's predicted latency, or None.

    Returns:
        A new problem (``problem`` is left unchanged).

    Raises:
        ConfigError: If a correction factor is not a positive finite number, or only one of
            a measured/predicted pair is given.
    """
    byte_scale = _scale(measured_bytes, predicted_bytes, problem.base_bytes, "bytes")
    cost_scale = _scale(measured_cost, predicted_cost, 0.0, "cost")
    lat_scale = _scale(
        measured_latency_ms, predicted_latency_ms, problem.base_latency_ms, "latency"
    )
    layers = {
        name: LayerOptions(
            bytes={b: v * byte_scale for b, v in o.bytes.items()},
            cost={b: v * cost_scale for b, v in o.cost.items()},
            latency_ms=None
            if o.latency_ms is None
            else {b: v * lat_scale for b, v in o.latency_ms.items()},
            group=o.group,
        )
        for name, o in problem.layers.items()
    }
    groups = {
        name: GroupOptions({r: v * cost_scale for r, v in g.cost.items()}, dict(g.kept))
        for name, g in problem.groups.items()
    }
    return AllocationProblem(layers, groups, problem.base_bytes, problem.base_latency_ms)


# -- validation -------------------------------------------------------------------------------


def option_parts(option: Option) -> tuple[Bits, float]:
    """The bits and the sparsity of a layer option (sparsity 0.0 for a plain bit-width)."""
    if isinstance(option, tuple):
        return option[0], option[1]
    return option, 0.0


def _option_key(key: Any) -> Option:
    """A layer option: bits, or a ``(bits, sparsity)`` pair (a list from JSON is accepted)."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise ConfigError(f"a sparse option is a (bits, sparsity) pair, got {key!r}")
        bits, sparsity = _bits_key(key[0]), key[1]
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
        return bits if sparsity == 0 else (bits, float(sparsity))
    return _bits_key(key)


def _bits_key(key: Any) -> Bits:
    """A bits option: None, or an integer 1..8."""
    if key is None:
        return None
    if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 1 <= key <= 8:
        raise ConfigError(f"bits options are integers 1..8 or None (float), got {key!r}")
    return int(key)


def _ratio_key(key: Any) -> float:
    """A pruning ratio: a number in [0, 1)."""
    if isinstance(key, bool) or not isinstance(key, numbers.Real) or not 0.0 <= key < 1.0:
        raise ConfigError(f"pruning ratios are numbers in [0, 1), got {key!r}")
    return float(key)


def _table(values: Mapping, key: Any, what: str, minimum: float | None = None) -> dict:
    """``values`` with normalised keys and finite float values (at least ``minimum``)."""
    if not isinstance(values, Mapping) or not values:
        raise ConfigError(f"{what} must be a non-empty mapping of option -> value, got {values!r}")
    table = {}
    for k, v in values.items():
        v = float(v)
        if not math.isfinite(v) or (minimum is not None and v < minimum):
            raise ConfigError(f"{what}[{k!r}] must be a finite number >= {minimum}, got {v}")
        table[key(k)] = v
    if len(table) != len(values):
        raise ConfigError(f"{what} has duplicate options: {list(values)}")
    return table


def _same_keys(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
    """Refuse two option tables with different keys, naming the difference."""
    if set(a) != set(b):
        raise ConfigError(
            f"{name_a} and {name_b} have different options: {sorted(map(str, a))} vs "
            f"{sorted(map(str, b))}"
        )


def _check_budgets(
    problem: AllocationProblem, budget_bytes: float, latency_budget_ms: float | None
) -> None:
    """Refuse a non-positive budget, or a latency budget for a problem without latencies."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Real):
        raise ConfigError(f"budget_bytes must be a number, got {budget_bytes!r}")
    if not (math.isfinite(budget_bytes) and budget_bytes > 0):
        raise ConfigError(f"budget_bytes must be a positive finite number, got {budget_bytes}")
    if latency_budget_ms is None:
        return
    if not (math.isfinite(latency_budget_ms) and latency_budget_ms > 0):
        raise ConfigError(f"latency_budget_ms must be positive, got {latency_budget_ms}")
    missing = [n for n, o in problem.layers.items() if o.latency_ms is None]
    if missing:
        raise ConfigError(f"a latency budget needs every layer's latency; missing for {missing}")


def _scale(measured: float | None, predicted: float | None, base: float, what: str) -> float:
    """The correction factor ``(measured - base) / (predicted - base)`` (1.0 if both None)."""
    if measured is None and predicted is None:
        return 1.0
    if measured is None or predicted is None:
        raise ConfigError(f"recalibrating {what} needs both the measured and predicted value")
    factor = (measured - base) / (predicted - base) if predicted != base else math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(
            f"cannot recalibrate {what}: measured {measured} and predicted {predicted} "
            f"(base {base}) give correction factor {factor}"
        )
    return factor


# -- infeasibility ----------------------------------------------------------------------------


def _smallest(
    problem: AllocationProblem, what: str, latency_budget_ms: float | None = None
) -> Allocation | None:
    """The allocation of least ``what`` ("bytes" or "latency"); None if none meets latency."""
    if latency_budget_ms is not None:
        return _Milp(problem).solve("bytes", [("latency", latency_budget_ms)], "smallest")
    table = {n: o.bytes if what == "bytes" else o.latency_ms for n, o in problem.layers.items()}
    bits = {n: min(t, key=t.get) for n, t in table.items()}
    ratios = {}
    for g, opts in problem.groups.items():
        size = sum(table[m][bits[m]] for m in problem.members(g))
        ratios[g] = min(
            opts.ratios, key=lambda r, g=g, size=size: (size * opts.kept[r], opts.cost[r])
        )
    return predict(problem, bits, ratios, "smallest")


def _raise_if_below_minimum(problem: AllocationProblem, budget_bytes: float) -> None:
    """Raise :class:`InfeasibleBudgetError` if even the smallest allocation is over budget."""
    smallest = _smallest(problem, "bytes")
    if smallest.predicted_bytes > budget_bytes:
        raise InfeasibleBudgetError(
            f"budget {format_bytes(budget_bytes)} is below the smallest achievable size "
            f"{format_bytes(smallest.predicted_bytes)} ({smallest.summary()})",
            smallest.predicted_bytes,
        )


def _raise_infeasible(
    problem: AllocationProblem, budget_bytes: float, latency_budget_ms: float | None
) -> None:
    """Raise :class:`InfeasibleBudgetError` if no allocation meets the budgets; else return."""
    _raise_if_below_minimum(problem, budget_bytes)
    if latency_budget_ms is None:
        return
    fastest = _smallest(problem, "latency")
    if fastest.predicted_latency_ms > latency_budget_ms:
        raise InfeasibleBudgetError(
            f"latency budget {latency_budget_ms:g} ms is below the smallest achievable latency "
            f"{fastest.predicted_latency_ms:.4g} ms ({fastest.summary()})",
            math.inf,
            fastest.predicted_latency_ms,
        )
    smallest = _smallest(problem, "bytes", latency_budget_ms)
    if smallest is None or smallest.predicted_bytes > budget_bytes:
        size = math.inf if smallest is None else smallest.predicted_bytes
        raise InfeasibleBudgetError(
            f"budget {format_bytes(budget_bytes)} is below the smallest size within the "
            f"latency budget {latency_budget_ms:g} ms, {format_bytes(size)}",
            size,
            fastest.predicted_latency_ms,
        )


# -- integer program --------------------------------------------------------------------------


class _Milp:
    """The integer program: binaries z[l, b, r] per layer option and y[g, r] per group ratio.

    Rows: every layer picks one (b, r); a grouped layer's r is its group's (for every member
    and ratio, ``sum_b z[l, b, r] = y[g, r]``); every group picks one r; then the inequality
    rows (bytes, latency) each call adds.
    """

    def __init__(self, problem: AllocationProblem):
        self.problem = problem
        self.z = [
            (layer, b, r)
            for layer, opts in problem.layers.items()
            for b in opts.options
            for r in problem.ratios_of(layer)
        ]
        self.y = [(g, r) for g, opts in problem.groups.items() for r in opts.ratios]
        self.size = len(self.z) + len(self.y)
        self.equalities = self._equalities()

    def column(self, what: str) -> np.ndarray:
        """The objective or row coefficients of ``what``: "cost", "bytes" or "latency"."""
        p = self.problem
        values = []
        for layer, b, r in self.z:
            opts = p.layers[layer]
            if what == "cost":
                values.append(opts.cost[b])
            else:
                table = opts.bytes if what == "bytes" else opts.latency_ms
                values.append(table[b] * p.kept(layer, r))
        values += [p.groups[g].cost[r] if what == "cost" else 0.0 for g, r in self.y]
        return np.asarray(values, dtype=float)

    def solve(
        self,
        objective: str,
        limits: list[tuple[str, float]],
        method: str,
        time_limit_s: float | None = None,
    ) -> Allocation | None:
        """The optimum of ``objective`` under ``limits`` (what, budget); None if infeasible."""
        rows = [self.equalities]
        for what, budget in limits:
            base = self.problem.base_bytes if what == "bytes" else self.problem.base_latency_ms
            rows.append(_scaled_row(self.column(what), budget - base))
        c = self.column(objective)
        c = c / max(float(np.abs(c).max(initial=0.0)), 1e-300)
        options = {"mip_rel_gap": 0.0}
        if time_limit_s is not None:
            options["time_limit"] = float(time_limit_s)
        done = milp(
            c, constraints=rows, integrality=np.ones(self.size), bounds=(0, 1), options=options
        )
        if done.x is None:
            return None
        if done.status != 0:
            method = f"{method} (time limit)"
        return self.allocation(done.x, method)

    def allocation(self, x: np.ndarray, method: str) -> Allocation:
        """Read the chosen options from a solution vector."""
        bits, best = {}, {}
        for value, (layer, b, _r) in zip(x[: len(self.z)], self.z, strict=True):
            if value > best.get(layer, -1.0):
                bits[layer], best[layer] = b, value
        ratios, best = {}, {}
        for value, (g, r) in zip(x[len(self.z) :], self.y, strict=True):
            if value > best.get(g, -1.0):
                ratios[g], best[g] = r, value
        return predict(self.problem, bits, ratios, method)

    def _equalities(self) -> LinearConstraint:
        """The one-choice rows (right-hand side 1) and the linking rows (0)."""
        index = {key: i for i, key in enumerate([*self.z, *self.y])}
        rows: list[list[tuple[int, float]]] = []
        rhs: list[float] = []
        for layer, opts in self.problem.layers.items():
            ratios = self.problem.ratios_of(layer)
            rows.append([(index[layer, b, r], 1.0) for b in opts.options for r in ratios])
            rhs.append(1.0)
            for r in ratios if opts.group is not None else ():
                rows.append([(index[layer, b, r], 1.0) for b in opts.options])
                rows[-1].append((index[opts.group, r], -1.0))
                rhs.append(0.0)
        for group, opts in self.problem.groups.items():
            rows.append([(index[group, r], 1.0) for r in opts.ratios])
            rhs.append(1.0)
        matrix = np.zeros((len(rows), self.size))
        for i, row in enumerate(rows):
            for j, value in row:
                matrix[i, j] = value
        return LinearConstraint(csr_array(matrix), rhs, rhs)


def _scaled_row(coefficients: np.ndarray, capacity: float) -> LinearConstraint:
    """``coefficients @ x <= capacity``, scaled to order 1 for the solver's tolerances."""
    scale = max(float(np.abs(coefficients).max(initial=0.0)), abs(capacity), 1e-300)
    return LinearConstraint(coefficients[None, :] / scale, -np.inf, capacity / scale)


def _solve_milp(
    problem: AllocationProblem,
    budget_bytes: float,
    latency_budget_ms: float | None,
    time_limit_s: float | None,
) -> Allocation:
    """Solve by integer program, tightening a budget that the solver's tolerance overshot."""
    model = _Milp(problem)
    limits = {"bytes": float(budget_bytes)}
    if latency_budget_ms is not None:
        limits["latency"] = float(latency_budget_ms)
    for _ in range(4):
        found = model.solve("cost", list(limits.items()), "milp", time_limit_s)
        if found is None:
            break
        if found.fits(budget_bytes, latency_budget_ms):
            return found
        limits["bytes"] -= max(found.predicted_bytes - budget_bytes, 0.0) + 1e-9 * budget_bytes
        if latency_budget_ms is not None:
            over = max(found.predicted_latency_ms - latency_budget_ms, 0.0)
            limits["latency"] -= over + 1e-9 * latency_budget_ms
    _raise_infeasible(problem, budget_bytes, latency_budget_ms)
    raise ConfigError(
        f"the integer program found no allocation within {format_bytes(budget_bytes)}"
        + ("" if time_limit_s is None else f" in {time_limit_s:g} s")
    )


# -- dynamic program --------------------------------------------------------------------------


def _solve_dp(
    problem: AllocationProblem, budget_bytes: float, resolution: float | None
) -> Allocation:
    """Multiple-choice knapsack over bytes rounded up to ``resolution``."""
    pruned = [g for g, o in problem.groups.items() if any(r > 0 for r in o.ratios)]
    if pruned:
        raise ConfigError(
            f"method='dp' allocates bits only, but groups {pruned} have pruning ratios > 0; "
            "use method='milp'"
        )
    resolution = budget_bytes / 4000 if resolution is None else float(resolution)
    if not (math.isfinite(resolution) and resolution > 0):
        raise ConfigError(f"resolution must be a positive number of bytes, got {resolution}")
    capacity = math.floor((budget_bytes - problem.base_bytes) / resolution)
    if len(problem.layers) * (capacity + 1) > 200_000_000:
        raise ConfigError(f"resolution {resolution:g} B is too fine for the DP; use a larger one")
    names = list(problem.layers)
    options = [problem.layers[n].options for n in names]
    weights = [
        [math.ceil(problem.layers[n].bytes[b] / resolution) for b in opts]
        for n, opts in zip(names, options, strict=True)
    ]
    costs = [
        [problem.layers[n].cost[b] for b in opts] for n, opts in zip(names, options, strict=True)
    ]
    picks = _knapsack(weights, costs, capacity)
    if picks is None:
        raise ConfigError(
            f"budget {format_bytes(budget_bytes)} is within the DP's rounding slack "
            f"({len(names)} layers x {resolution:g} B); use a smaller resolution or method='milp'"
        )
    bits = {n: opts[k] for n, opts, k in zip(names, options, picks, strict=True)}
    ratios = {g: 0.0 for g in problem.groups}
    return predict(problem, bits, ratios, "dp")


def _knapsack(
    weights: list[list[int]], costs: list[list[float]], capacity: int
) -> list[int] | None:
    """Pick one option per item minimising cost with total weight <= capacity (None if none).

    ``best[c]`` is the least cost of the items so far within weight ``c``; ``choice`` keeps
    each item's argmin per capacity for the walk back.
    """
    if capacity < 0:
        return None
    best = np.zeros(capacity + 1)
    choices = []
    for item_weights, item_costs in zip(weights, costs, strict=True):
        new = np.full(capacity + 1, np.inf)
        choice = np.full(capacity + 1, -1, dtype=np.int16)
        for k, (w, c) in enumerate(zip(item_weights, item_costs, strict=True)):
            if w > capacity:
                continue
            candidate = best[: capacity + 1 - w] + c
            better = candidate < new[w:]
            new[w:][better] = candidate[better]
            choice[w:][better] = k
        best = new
        choices.append(choice)
    if not np.isfinite(best[capacity]):
        return None
    picks, room = [], capacity
    for item_weights, choice in zip(reversed(weights), reversed(choices), strict=True):
        k = int(choice[room])
        picks.append(k)
        room -= item_weights[k]
    return picks[::-1]


# -- baselines --------------------------------------------------------------------------------


def _greedy_step(
    problem: AllocationProblem, current: Allocation, what: str, budget_bytes: float
) -> Allocation:
    """The allocation after the move with the least cost increase per unit of ``what`` saved.

    Returns ``current`` itself when no move saves any ``what`` (for latency: within budget);
    raises :class:`InfeasibleBudgetError` when that happens while over the byte budget.
    """
    best, best_key = current, None
    for bits, ratios in _moves(problem, current):
        moved = predict(problem, bits, ratios, "greedy")
        saved = _amount(current, what) - _amount(moved, what)
        if saved <= 0 or (what == "latency" and moved.predicted_bytes > budget_bytes):
            continue
        key = ((moved.predicted_cost - current.predicted_cost) / saved, -saved)
        if best_key is None or key < best_key:
            best, best_key = moved, key
    if best is current and what == "bytes":
        _raise_if_below_minimum(problem, budget_bytes)
        raise ConfigError("greedy allocation got stuck above the byte budget")
    return best


def _amount(allocation: Allocation, what: str) -> float:
    """The allocation's predicted bytes or latency."""
    return allocation.predicted_bytes if what == "bytes" else allocation.predicted_latency_ms


def _moves(problem: AllocationProblem, current: Allocation):
    """Every (bits, ratios) one change away from ``current``."""
    for layer, opts in problem.layers.items():
        for b in opts.options:
            if b != current.bits[layer]:
                yield {**current.bits, layer: b}, current.ratios
    for group, opts in problem.groups.items():
        for r in opts.ratios:
            if r != current.ratios[group]:
                yield current.bits, {**current.ratios, group: r}


def _uniform_all(
    problem: AllocationProblem,
    bits_options: Iterable[Bits] | None,
    ratio_options: Iterable[float] | None,
) -> list[Allocation]:
    """The allocation of every (bits, ratio) pair, feasible or not."""
    if bits_options is None:  # uniform means dense: one bit-width, no sparsity
        bits_options = {
            b for o in problem.layers.values() for b in o.options if not isinstance(b, tuple)
        }
    if ratio_options is None:
        ratio_options = {r for g in problem.groups.values() for r in g.ratios} or {0.0}
    bits_options = sorted(set(bits_options), key=lambda b: 99 if b is None else b)
    ratio_options = sorted({float(r) for r in ratio_options})
    found, seen = [], set()
    for b, r in itertools.product(bits_options, ratio_options):
        bits = {n: b if b in o.bytes else o.cheapest() for n, o in problem.layers.items()}
        ratios = {g: r if r in o.kept else 0.0 for g, o in problem.groups.items()}
        key = (tuple(bits.values()), tuple(ratios.values()))
        if key not in seen:
            seen.add(key)
            label = f"uniform {_bits_name(b)}, ratio {_ratio_name(r)}"
            found.append(predict(problem, bits, ratios, "uniform", label))
    return found


def _brute_force_layers(
    problem: AllocationProblem,
    ratios: dict[str, float],
    budget_bytes: float,
    latency_budget_ms: float | None,
) -> Allocation | None:
    """The best layer bits for fixed group ratios, all combinations at once with numpy."""
    names = list(problem.layers)
    options = [problem.layers[n].options for n in names]
    kept = {n: problem.kept(n, ratios.get(problem.layers[n].group, 0.0)) for n in names}

    def every_sum(table: str, scaled: bool) -> np.ndarray:
        values = [getattr(problem.layers[n], table) for n in names]
        factors = [kept[n] if scaled else 1.0 for n in names]
        return _outer_sum(
            [[v[b] * f for b in opts] for v, f, opts in zip(values, factors, options, strict=True)]
        )

    ok = every_sum("bytes", True) + problem.base_bytes <= budget_bytes
    if latency_budget_ms is not None:
        ok &= every_sum("latency_ms", True) + problem.base_latency_ms <= latency_budget_ms
    if not ok.any():
        return None
    cost = every_sum("cost", False)
    index = np.unravel_index(int(np.argmin(np.where(ok, cost, np.inf))), cost.shape)
    bits = {n: opts[int(i)] for n, opts, i in zip(names, options, index, strict=True)}
    return predict(problem, bits, ratios, "brute-force")


def _outer_sum(tables: list[list[float]]) -> np.ndarray:
    """Array with one axis per table holding every sum of one entry from each table."""
    total = np.zeros(())
    for values in tables:
        total = np.add.outer(total, np.asarray(values, dtype=float))
    return total


# -- descriptions -----------------------------------------------------------------------------


def _bits_name(option: Option) -> str:
    """The name of an option: ``float``, ``1 bit``, ``4 bits``, ``4 bits 75% sparse``."""
    bits, sparsity = option_parts(option)
    name = "float" if bits is None else f"{bits} bit" if bits == 1 else f"{bits} bits"
    return f"{name} {sparsity:.0%} sparse" if sparsity else name


def _ratio_name(ratio: float) -> str:
    """A ratio without trailing zeros."""
    return f"{ratio:g}"


def _count_phrase(counts: Counter, noun: str, name: Any) -> str:
    """``all 12 layers at 4 bits`` or ``layers at 4 bits (10), 8 bits (2)``."""
    total = sum(counts.values())
    if len(counts) == 1:
        (value,) = counts
        joiner = "ratio " if noun == "group" else ""
        return f"all {total} {noun}{'s' if total != 1 else ''} at {joiner}{name(value)}"
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    joiner = "ratio " if noun == "group" else ""
    return f"{noun}s at {joiner}" + ", ".join(f"{name(v)} ({n})" for v, n in items)
