"""Search: BAIC, the budget-aware search for the most accurate file that fits a byte budget.

The pure pieces import without torch: byte budgets (:mod:`~satcompress.search.budget`), the
exact bits and pruning-ratio allocator and its baselines
(:mod:`~satcompress.search.allocate`) and the run's report and Pareto figure
(:mod:`~satcompress.search.report`)::

    from satcompress.search import AllocationProblem, LayerOptions, parse_budget, solve

    budget = parse_budget("1MB")
    allocation = solve(problem, budget)  # least predicted accuracy cost within 1 MB

The search itself (:func:`~satcompress.search.loop.baic`, :class:`BAICConfig`) measures the
model (:mod:`~satcompress.search.measure`), fine-tunes candidates
(:mod:`~satcompress.search.candidates`) and writes the run's files::

    result = baic("runs/r18", None, BAICConfig(budget="1MB"), "runs/r18-1MB")
"""

from satcompress.utils.lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        "ACCEPTED_FORMS": "budget",
        "check_budget": "budget",
        "format_bytes": "budget",
        "parse_budget": "budget",
        "Allocation": "allocate",
        "AllocationProblem": "allocate",
        "GroupOptions": "allocate",
        "InfeasibleBudgetError": "allocate",
        "LayerOptions": "allocate",
        "brute_force": "allocate",
        "greedy": "allocate",
        "minimum_bytes": "allocate",
        "predict": "allocate",
        "recalibrate": "allocate",
        "solve": "allocate",
        "uniform": "allocate",
        "uniform_candidates": "allocate",
        "BAICConfig": "config",
        "quick_config": "config",
        "BAICError": "loop",
        "baic": "loop",
        "pareto_axes": "report",
        "pareto_figure": "report",
        "report_markdown": "report",
        "write_report": "report",
    },
)
