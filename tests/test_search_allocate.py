"""The BAIC allocator (exact MILP and DP against brute force, baselines) and byte budgets."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from satcompress.config import ConfigError
from satcompress.search.allocate import (
    AllocationProblem,
    GroupOptions,
    InfeasibleBudgetError,
    LayerOptions,
    brute_force,
    greedy,
    minimum_bytes,
    predict,
    recalibrate,
    solve,
    uniform,
    uniform_candidates,
)
from satcompress.search.budget import check_budget, format_bytes, parse_budget

BITS = [1, 2, 3, 4, 6, 8]


def random_problem(seed, groups=True, latency=False, max_layers=5):
    """A small random problem shaped like a real table: fewer bits, fewer bytes, more cost."""
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(1, 3)) if groups else 0
    group_options = {}
    for g in range(n_groups):
        ratios = rng.choice([0.25, 0.5, 0.75], size=int(rng.integers(1, 3)), replace=False)
        kept = {0.0: 1.0, **{float(r): float(1 - r + rng.uniform(-0.05, 0.05)) for r in ratios}}
        cost = {0.0: 0.0, **{float(r): float(rng.uniform(0, 0.4) * r) for r in ratios}}
        group_options[f"g{g}"] = GroupOptions(cost=cost, kept=kept)
    layers = {}
    for i in range(int(rng.integers(1, max_layers + 1))):
        options = [None, *rng.choice(BITS, size=int(rng.integers(1, 4)), replace=False).tolist()]
        weights = float(rng.integers(500, 50_000))
        size = {b: weights * (4 if b is None else b / 8) + 64 for b in options}
        cost = {b: 0.0 if b is None else float(rng.uniform(-0.002, 1) / b**1.5) for b in options}
        times = {b: weights / 1e4 * (1.0 if b is None else 0.5 + b / 30) for b in options}
        group = f"g{rng.integers(n_groups)}" if n_groups and rng.random() < 0.75 else None
        layers[f"layer{i}"] = LayerOptions(size, cost, times if latency else None, group)
    return AllocationProblem(layers, group_options, base_bytes=float(rng.integers(0, 4000)),
                             base_latency_ms=0.3)  # fmt: skip


def random_budgets(problem, seed, latency):
    """A byte budget between 5% and 100% of the float model, and a latency budget."""
    rng = np.random.default_rng(seed + 10_000)
    full = predict(problem, {n: None for n in problem.layers})
    budget = float(rng.uniform(0.05, 1.0)) * full.predicted_bytes
    return budget, (float(rng.uniform(0.4, 1.0)) * full.predicted_latency_ms if latency else None)


def hand_problem():
    """Two grouped layers and one free layer, with costs chosen so the answers are known."""
    layers = {
        "conv1": LayerOptions({None: 4000, 8: 1000, 4: 500}, {None: 0.0, 8: 0.01, 4: 0.2}),
        "conv2": LayerOptions(
            {None: 8000, 8: 2000, 4: 1000}, {None: 0.0, 8: 0.02, 4: 0.05}, group="stage"
        ),  # fmt: skip
        "fc": LayerOptions({None: 400, 8: 100}, {None: 0.0, 8: 0.001}, group="stage"),
    }
    groups = {"stage": GroupOptions(cost={0.0: 0.0, 0.5: 0.1}, kept={0.0: 1.0, 0.5: 0.5})}
    return AllocationProblem(layers, groups, base_bytes=100)


def costs_equal(a, b):
    return math.isclose(a.predicted_cost, b.predicted_cost, rel_tol=1e-7, abs_tol=1e-7)


# -- exact solvers -----------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("latency", [False, True])
def test_milp_equals_brute_force_on_random_problems(groups, latency):
    feasible = infeasible = 0
    for seed in range(40):
        problem = random_problem(seed, groups=groups, latency=latency)
        budget, latency_budget = random_budgets(problem, seed, latency)
        try:
            expected = brute_force(problem, budget, latency_budget)
        except InfeasibleBudgetError:
            with pytest.raises(InfeasibleBudgetError):
                solve(problem, budget, latency_budget)
            infeasible += 1
            continue
        found = solve(problem, budget, latency_budget)
        assert found.fits(budget, latency_budget), seed
        assert costs_equal(found, expected), (seed, found, expected)
        assert found.method == "milp"
        feasible += 1
    assert feasible >= 20 and infeasible >= 1  # both paths exercised


def test_dp_equals_brute_force_within_its_rounding():
    compared = 0
    for seed in range(60):
        problem = random_problem(seed, groups=False)
        budget, _ = random_budgets(problem, seed, False)
        resolution = budget / 200  # coarse, so the rounding matters
        slack = len(problem.layers) * resolution
        try:
            found = solve(problem, budget, method="dp", resolution=resolution)
        except InfeasibleBudgetError:
            with pytest.raises(InfeasibleBudgetError):
                brute_force(problem, budget)
            continue
        except ConfigError as err:  # feasible, but only within the rounding slack
            assert "rounding" in str(err)
            assert minimum_bytes(problem) > budget - slack
            continue
        assert found.fits(budget) and found.method == "dp"
        assert found.predicted_cost >= brute_force(problem, budget).predicted_cost - 1e-9
        try:
            tightened = brute_force(problem, budget - slack)
        except InfeasibleBudgetError:
            continue
        assert found.predicted_cost <= tightened.predicted_cost + 1e-9, seed
        compared += 1
    assert compared >= 20


def test_dp_at_default_resolution_matches_milp_on_a_resnet_sized_table():
    rng = np.random.default_rng(7)
    layers = {
        f"layer{i}": LayerOptions(
            {b: w * (4 if b is None else b / 8) for b in [None, *BITS]},
            {b: 0.0 if b is None else float(rng.uniform(0, 1) / b**2) for b in [None, *BITS]},
        )
        for i, w in enumerate(rng.integers(2_000, 1_100_000, size=21).tolist())
    }
    problem = AllocationProblem(layers, base_bytes=30_000)
    budget = 3_000_000
    exact = solve(problem, budget)
    dp = solve(problem, budget, method="dp")
    assert dp.fits(budget) and exact.fits(budget)
    assert exact.predicted_cost <= dp.predicted_cost + 1e-12
    slack = len(layers) * budget / 4000
    assert dp.predicted_cost <= solve(problem, budget - slack).predicted_cost + 1e-12


def test_milp_is_fast_on_a_resnet_sized_problem_with_groups_and_latency():
    rng = np.random.default_rng(3)
    groups = {
        f"g{g}": GroupOptions(
            cost={r: float(r * rng.uniform(0.1, 1)) for r in (0.0, 0.25, 0.5, 0.625, 0.75)},
            kept={r: 1 - r for r in (0.0, 0.25, 0.5, 0.625, 0.75)},
        )
        for g in range(8)
    }
    layers = {}
    for i, w in enumerate(rng.integers(2_000, 1_100_000, size=21).tolist()):
        options = [None, *BITS]
        layers[f"layer{i}"] = LayerOptions(
            {b: w * (4 if b is None else b / 8) for b in options},
            {b: 0.0 if b is None else float(rng.uniform(0, 1) / b**2) for b in options},
            {b: w / 1e5 * (1 if b is None else 0.6) for b in options},
            group=f"g{i % 8}" if 0 < i < 20 else None,
        )
    problem = AllocationProblem(layers, groups, base_bytes=30_000, base_latency_ms=1.0)
    full = predict(problem, {n: None for n in problem.layers})
    started = time.perf_counter()
    found = solve(problem, 1_000_000, full.predicted_latency_ms / 2)
    assert time.perf_counter() - started < 5
    assert found.fits(1_000_000, full.predicted_latency_ms / 2)
    assert any(r > 0 for r in found.ratios.values())  # pruning is used when it pays


def test_hand_problem_known_answers():
    problem = hand_problem()
    assert predict(problem, {"conv1": None, "conv2": None, "fc": None}).predicted_bytes == 12_500
    # all at 8 bits: 100 + 1000 + 2000 + 100 = 3200 bytes, cost 0.031
    found = solve(problem, 3200)
    assert found.bits == {"conv1": 8, "conv2": 8, "fc": 8} and found.ratios == {"stage": 0.0}
    assert found.predicted_bytes == 3200 and math.isclose(found.predicted_cost, 0.031)
    # 2700 bytes: conv2 to 4 bits (+0.03) beats pruning the group (+0.1) and conv1 at 4 (+0.19),
    # and leaves room for fc in float (2500 bytes, -0.001)
    found = solve(problem, 2700)
    assert found.bits == {"conv1": 8, "conv2": 4, "fc": None} and found.ratios == {"stage": 0.0}
    assert found.predicted_bytes == 2500 and math.isclose(found.predicted_cost, 0.06)
    # 1700 bytes: pruning the group (1650 bytes, cost 0.161) beats every layer at its
    # smallest unpruned option (1700 bytes, cost 0.251)
    found = solve(problem, 1700)
    assert found.bits == {"conv1": 8, "conv2": 4, "fc": 8} and found.ratios == {"stage": 0.5}
    assert found.predicted_bytes == 1650 and math.isclose(found.predicted_cost, 0.161)
    assert costs_equal(found, brute_force(problem, 1700))


def test_infeasible_budget_error_names_the_smallest_size():
    problem = hand_problem()
    smallest = 100 + 500 + (1000 + 100) * 0.5
    assert minimum_bytes(problem) == smallest
    for allocate in (solve, greedy, brute_force, lambda p, b: solve(p, b, method="milp")):
        with pytest.raises(InfeasibleBudgetError) as caught:
            allocate(problem, smallest - 1)
        assert caught.value.min_bytes == smallest
        assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert "below the smallest achievable size 1.15 kB" in message
    assert "all 3 layers" not in message and "ratio 0.5" in message
    assert solve(problem, smallest).predicted_bytes == smallest  # exactly at the minimum fits


def test_infeasible_budget_error_for_the_dp_and_without_groups():
    problem = random_problem(1, groups=False)
    smallest = minimum_bytes(problem)
    with pytest.raises(InfeasibleBudgetError, match="all .* at 1 bit|layers at") as caught:
        solve(problem, smallest * 0.9, method="dp")
    assert caught.value.min_bytes == smallest


def test_infeasible_latency_budget():
    problem = random_problem(4, groups=True, latency=True)
    with pytest.raises(InfeasibleBudgetError, match="latency budget") as caught:
        solve(problem, 1e12, latency_budget_ms=1e-6)
    assert caught.value.min_latency_ms > 1e-6 and caught.value.min_bytes == math.inf
    assert minimum_bytes(problem, latency_budget_ms=1e-6) == math.inf
    assert math.isclose(minimum_bytes(problem, latency_budget_ms=1e9), minimum_bytes(problem))


def test_dp_refuses_pruning_ratios_and_latency():
    with pytest.raises(ConfigError, match="pruning ratios"):
        solve(hand_problem(), 3000, method="dp")
    with pytest.raises(ConfigError, match="latency"):
        solve(random_problem(2, groups=False, latency=True), 1e9, 1.0, method="dp")
    with pytest.raises(ConfigError, match="unknown allocation method"):
        solve(hand_problem(), 3000, method="annealing")


# -- baselines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("latency", [False, True])
def test_greedy_and_uniform_are_feasible_and_never_beat_the_milp(latency):
    checked = 0
    for seed in range(40):
        problem = random_problem(seed, groups=True, latency=latency)
        budget, latency_budget = random_budgets(problem, seed, latency)
        try:
            exact = solve(problem, budget, latency_budget)
        except InfeasibleBudgetError:
            continue
        for baseline in (greedy, uniform):
            try:
                found = baseline(problem, budget, latency_budget)
            except InfeasibleBudgetError:
                assert baseline is uniform  # a uniform pair may not fit where a mix does
                continue
            except ConfigError as err:
                assert baseline is greedy and latency and "stuck" in str(err)
                continue
            assert found.fits(budget, latency_budget)
            assert found.predicted_cost >= exact.predicted_cost - 1e-9
            checked += 1
    assert checked >= 30


def test_uniform_applies_one_pair_and_keeps_layers_without_it():
    problem = hand_problem()
    found = uniform(problem, 3200)
    assert found.bits == {"conv1": 8, "conv2": 8, "fc": 8} and found.method == "uniform"
    assert found.label == "uniform 8 bits, ratio 0"
    # at 4 bits, fc (no 4-bit option) keeps its least-cost option, float
    found = uniform(problem, 2000)
    assert found.bits == {"conv1": 4, "conv2": 4, "fc": None}
    assert found.predicted_bytes == 100 + 500 + 1000 + 400
    ranked = uniform_candidates(problem, 12_500)
    assert [a.predicted_cost for a in ranked] == sorted(a.predicted_cost for a in ranked)
    assert ranked[0].bits == {"conv1": None, "conv2": None, "fc": None}
    assert all(a.fits(12_500) for a in ranked)
    only_half = uniform(problem, 1600, bits_options=[4], ratio_options=[0.5])
    assert only_half.ratios == {"stage": 0.5} and only_half.label == "uniform 4 bits, ratio 0.5"
    with pytest.raises(InfeasibleBudgetError, match="no uniform") as caught:
        uniform(problem, 1000)
    assert caught.value.min_bytes == 100 + 500 + (1000 + 400) * 0.5


def test_uniform_ties_prefer_the_larger_file():
    layers = {"a": LayerOptions({8: 100, 4: 50}, {8: 0.0, 4: 0.0})}
    assert uniform(AllocationProblem(layers), 1000).bits == {"a": 8}


def test_brute_force_refuses_large_problems():
    layers = {
        f"l{i}": LayerOptions({b: b for b in BITS}, {b: 1 / b for b in BITS}) for i in range(8)
    }
    with pytest.raises(ConfigError, match="brute force would try 1679616"):
        brute_force(AllocationProblem(layers), 100)


# -- recalibration -----------------------------------------------------------------------------


def test_recalibrate_makes_the_measured_allocation_exact():
    problem = hand_problem()
    chosen = solve(problem, 2700)
    corrected = recalibrate(problem, 2900, chosen.predicted_bytes, 0.5, chosen.predicted_cost)
    again = predict(corrected, chosen.bits, chosen.ratios)
    assert math.isclose(again.predicted_bytes, 2900)
    assert math.isclose(again.predicted_cost, 0.5)
    assert corrected.base_bytes == problem.base_bytes
    assert problem.layers["conv1"].bytes[8] == 1000  # the input is unchanged
    scale = (2900 - 100) / (chosen.predicted_bytes - 100)
    assert math.isclose(corrected.layers["conv1"].bytes[8], 1000 * scale)
    # a bigger file than predicted tightens the next allocation
    tighter = solve(recalibrate(problem, 2900, chosen.predicted_bytes), 2700)
    assert tighter.predicted_cost > chosen.predicted_cost and tighter.predicted_bytes <= 2700


def test_recalibrate_latency_and_refusals():
    problem = random_problem(5, latency=True)
    chosen = predict(problem, {n: None for n in problem.layers})
    corrected = recalibrate(problem, chosen.predicted_bytes, chosen.predicted_bytes,
                            measured_latency_ms=2 * chosen.predicted_latency_ms,
                            predicted_latency_ms=chosen.predicted_latency_ms)  # fmt: skip
    again = predict(corrected, chosen.bits)
    assert math.isclose(again.predicted_latency_ms, 2 * chosen.predicted_latency_ms)
    assert math.isclose(again.predicted_bytes, chosen.predicted_bytes)
    with pytest.raises(ConfigError, match="correction factor"):
        recalibrate(problem, problem.base_bytes / 2, chosen.predicted_bytes)
    with pytest.raises(ConfigError, match="both"):
        recalibrate(problem, 10, 10, measured_cost=0.1)
    with pytest.raises(ConfigError, match="correction factor"):
        recalibrate(problem, 10, 10, measured_cost=-0.1, predicted_cost=0.2)


# -- validation and records --------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: LayerOptions({8: 1, 4: 1}, {8: 0.0}), "different options"),
        (lambda: LayerOptions({8: 1}, {8: 0.0}, latency_ms={4: 1.0}), "different options"),
        (lambda: LayerOptions({9: 1}, {9: 0.0}), "integers 1..8"),
        (lambda: LayerOptions({8: -1}, {8: 0.0}), ">= 0.0"),
        (lambda: LayerOptions({}, {}), "non-empty"),
        (lambda: GroupOptions({0.5: 0.1}, {0.5: 0.5}), "lack ratio 0.0"),
        (lambda: GroupOptions({0.0: 0, 0.5: 0.1}, {0.0: 1.0, 0.5: 0.0}), r"\(0, 1\]"),
        (lambda: GroupOptions({0.0: 0, 1.0: 0.1}, {0.0: 1.0, 1.0: 0.1}), r"\[0, 1\)"),
        (lambda: AllocationProblem({"a": LayerOptions({8: 1}, {8: 0}, group="g")}), "unknown"),
        (lambda: AllocationProblem({}, base_bytes=-1), "base_bytes"),
    ],
)
def test_inconsistent_tables_are_refused(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_budget_arguments_are_checked():
    problem = hand_problem()
    for budget in (0, -5, math.inf, "1MB", True):
        with pytest.raises(ConfigError, match="budget_bytes"):
            solve(problem, budget)
    with pytest.raises(ConfigError, match="every layer's latency"):
        solve(problem, 5000, latency_budget_ms=3.0)
    with pytest.raises(ConfigError, match="not an option"):
        predict(problem, {"conv1": 2, "conv2": 8, "fc": 8})


def test_allocation_record_is_plain_json_with_a_summary():
    found = solve(hand_problem(), 1700)
    record = json.loads(json.dumps(found.to_dict()))
    assert record["ratios"] == {"stage": 0.5} and record["method"] == "milp"
    assert record["predicted_latency_ms"] is None  # no latency table
    assert found.summary().startswith("layers at") or found.summary().startswith("all 3 layers")
    assert "group" in found.summary()


# -- budgets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1000000", 1_000_000),
        (1_000_000, 1_000_000),
        (2.5e6, 2_500_000),
        ("1MB", 1_000_000),
        ("1 mb", 1_000_000),
        ("1.5MB", 1_500_000),
        ("4.35MB", 4_350_000),
        ("885kB", 885_000),
        ("885 KB", 885_000),
        ("2GB", 2_000_000_000),
        ("512KiB", 524_288),
        ("1 MiB", 1_048_576),
        ("1gib", 1_073_741_824),
        ("1000B", 1000),
        ("1e6", 1_000_000),
        (" .5MB ", 500_000),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


def test_parse_budget_ratio():
    assert parse_budget("44x", reference_bytes=44_700_000) == 1_015_909
    assert parse_budget("44.7X", reference_bytes=44_700_000) == 1_000_000
    with pytest.raises(ConfigError, match="ratio of the input model's size"):
        parse_budget("44x")
    with pytest.raises(ConfigError, match="positive"):
        parse_budget("0x", reference_bytes=100)


@pytest.mark.parametrize("text", ["", "abc", "1TB", "-1MB", "1 M B", "0", "0.5B", "MB", None, True])
def test_parse_budget_errors_list_the_accepted_forms(text):
    with pytest.raises(ConfigError, match="accepted forms.*KiB.*44x"):
        parse_budget(text)


def test_check_budget_accepts_ratios_without_a_reference():
    check_budget("44x")
    check_budget("1MB")
    with pytest.raises(ConfigError):
        check_budget("44y")


@pytest.mark.parametrize(
    "n, text",
    [(512, "512 B"), (0, "0 B"), (885_000, "885 kB"), (1_000_000, "1.00 MB"), (999_999, "1.00 MB"),
     (12_345, "12.3 kB"), (44_700_000, "44.7 MB"), (1.5e9, "1.50 GB"), (999.7, "1.00 kB")],
)  # fmt: skip
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_search_pieces_import_without_torch():
    code = (
        "import sys\n"
        "from satcompress.search import parse_budget, solve, write_report\n"
        "import satcompress.search.allocate, satcompress.search.budget, satcompress.search.report\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- unstructured sparsity as a layer option -------------------------------------------------


def sparse_problem(seed):
    """A random problem whose layers also have (bits, sparsity) options, stored as a mask."""
    problem = random_problem(seed, groups=True)
    rng = np.random.default_rng(seed + 20_000)
    layers = {}
    for name, opts in problem.layers.items():
        sizes, costs = dict(opts.bytes), dict(opts.cost)
        count = (opts.bytes[None] - 64) / 4
        for b in [b for b in opts.options if b is not None]:
            for s in (0.5, 0.75):
                sizes[(b, s)] = count / 8 + count * (1 - s) * b / 8 + 64  # mask + nonzero codes
                costs[(b, s)] = costs[b] + float(rng.uniform(0, 0.3)) * s
        layers[name] = LayerOptions(sizes, costs, group=opts.group)
    return AllocationProblem(layers, problem.groups, base_bytes=problem.base_bytes)


@pytest.mark.parametrize("seed", range(6))
def test_milp_equals_brute_force_with_sparse_options(seed):
    problem = sparse_problem(seed)
    for fraction in (0.08, 0.15, 0.3):
        full = predict(problem, {n: None for n in problem.layers}).predicted_bytes
        budget = fraction * full
        try:
            expected = brute_force(problem, budget)
        except InfeasibleBudgetError:
            with pytest.raises(InfeasibleBudgetError):
                solve(problem, budget)
            continue
        found = solve(problem, budget)
        assert found.predicted_bytes <= budget and costs_equal(found, expected)


def test_sparse_option_wins_when_it_is_cheaper_per_byte():
    # one layer of 8,000 weights: 8 bits dense 8,000 B, 8 bits at 75% sparse 1,000 + 2,000 B
    with pytest.raises(ConfigError, match="duplicate"):
        LayerOptions({8: 8000, (8, 0.0): 8000}, {8: 0.0, (8, 0.0): 0.0})  # (8, 0.0) is 8 bits
    layers = {
        "conv": LayerOptions({8: 8000, 4: 4000, (8, 0.75): 3000}, {8: 0.0, 4: 0.5, (8, 0.75): 0.1})
    }
    problem = AllocationProblem(layers)
    found = solve(problem, 5000)
    assert found.bits == {"conv": (8, 0.75)} and found.predicted_bytes == 3000
    assert "8 bits 75% sparse" in found.summary()
    assert json.loads(json.dumps(found.to_dict()))["bits"] == {"conv": [8, 0.75]}
    # a JSON list is read back as the same option; uniform stays dense (one bit-width)
    assert predict(problem, {"conv": [8, 0.75]}).bits == {"conv": (8, 0.75)}
    assert uniform(problem, 5000).bits == {"conv": 4}


@pytest.mark.parametrize("bad", [(8, 1.0), (8, -0.1), (9, 0.5), (8, "half"), (8, 0.5, 1)])
def test_bad_sparse_options_are_refused(bad):
    with pytest.raises(ConfigError):
        LayerOptions({bad: 10.0}, {bad: 0.0})
