"""BAIC's report.md and Pareto figure from candidate records."""

import pytest

from satcompress.search.report import pareto_axes, pareto_figure, report_markdown, write_report

BUDGET = 1_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def candidate(id, kind, bytes=None, val=None, test=None, **more):
    return {"id": id, "kind": kind, "label": more.pop("label", id), "bytes": bytes,
            "predicted_bytes": more.pop("predicted_bytes", bytes), "predicted_cost": None,
            "val_accuracy": val, "test_accuracy": test, "latency_ms": more.pop("latency_ms", None),
            "seconds": 1.0, "status": more.pop("status", "ok"), "chosen": more.pop("chosen", False),
            "plan": None, **more}  # fmt: skip


@pytest.fixture
def candidates():
    return [
        candidate("input", "input", 44_700_000, test=0.9548, latency_ms=12.3),
        candidate("baic-1", "baic", 998_000, val=0.951),
        candidate("baic-2", "baic", 985_000, val=0.955),
        candidate("baic-3", "baic", 1_030_000, val=0.957, status="over-budget"),
        candidate("final", "baic", 985_000, test=0.9521, latency_ms={"bs1": 4.1}, chosen=True),
        candidate("uniform", "uniform", 940_000, val=0.931, label="uniform 4 bits, ratio 0"),
        candidate("greedy", "greedy", 990_000, val=0.944),
        candidate("mobilenet", "small-model", 885_000, test=0.9289),
        candidate("mct", "mct", None, status="infeasible", label="MCT | 2-bit floor"),
        candidate("crashed", "baic", status="failed"),
    ]


@pytest.fixture
def summary():
    return {
        "budget_bytes": BUDGET,
        "latency_budget_ms": None,
        "bytes": 985_000,
        "accuracy": 0.9521,
        "latency_ms": 4.1,
        "input": {"bytes": 44_700_000, "accuracy": 0.9548, "latency_ms": 12.3},
        "artifact": "saved_models/r18_1mb/model.satc",
        "time_seconds": {"measure": 300.0, "allocate": 2.0, "candidates": 900.0, "total": 1300.0},
        "config": {"budget": "1MB", "bits": [8, 4, 2]},
        "dataset": "eurosat",
    }


def test_figure_is_log_scaled_with_budget_line_front_and_chosen_star(candidates):
    figure = pareto_axes(candidates, BUDGET)
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    budget = [line for line in ax.get_lines() if line.get_label().startswith("budget")]
    assert len(budget) == 1 and list(budget[0].get_xdata()) == [BUDGET, BUDGET]
    assert budget[0].get_linestyle() == "--"
    assert any(line.get_label() == "Pareto front" for line in ax.get_lines())
    labels = [c.get_label() for c in ax.collections]
    assert {"baic", "uniform", "greedy", "small-model", "input", "chosen"} <= set(labels)
    assert "mct" not in labels  # no bytes, no accuracy: not plotted
    (star,) = [c for c in ax.collections if c.get_label() == "chosen"]
    assert list(star.get_offsets()[0]) == pytest.approx([985_000, 95.21])
    assert any("985 kB, 95.21%" in t.get_text() for t in ax.texts)
    assert "test where measured, else validation" in ax.get_ylabel()
    assert ax.get_legend() is not None


def test_pareto_front_is_the_staircase_of_undominated_points():
    points = [
        candidate("a", "baic", 100_000, val=0.80),
        candidate("b", "baic", 200_000, val=0.70),  # dominated by a
        candidate("c", "baic", 300_000, val=0.90),
        candidate("d", "uniform", 400_000, val=0.85),  # dominated by c
    ]
    (ax,) = pareto_axes(points, None).axes
    (front,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert list(front.get_xdata()) == [100_000, 300_000]
    assert list(front.get_ydata()) == pytest.approx([80.0, 90.0])
    assert ax.get_ylabel() == "validation accuracy (%)"
    assert not [line for line in ax.get_lines() if line.get_label().startswith("budget")]


def test_write_report_writes_a_png_and_markdown(tmp_path, summary, candidates):
    files = write_report(tmp_path, summary, candidates)
    assert files == {"report": tmp_path / "report.md", "figure": tmp_path / "pareto.png"}
    png = files["figure"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "report.md"]  # no temps
    assert files["report"].read_text() == report_markdown(summary, candidates)


def test_markdown_lists_every_candidate_sorted_by_bytes_with_the_chosen_flagged(
    summary, candidates
):
    text = report_markdown(summary, candidates)
    for c in candidates:
        assert f" {c['id']} |" in text or f"**{c['id']}**" in text
    (chosen,) = [line for line in text.splitlines() if line.startswith("| ★")]
    assert "**final**" in chosen and "95.21%" in chosen and "4.10 ms" in chosen
    order = [c["id"] for c in candidates if c["id"] != "final"]
    positions = {i: text.index(f"| {i} |") for i in order}
    assert positions["mobilenet"] < positions["uniform"] < positions["greedy"] < positions["input"]
    assert positions["input"] < positions["mct"]  # no size: after every measured one
    assert "MCT \\| 2-bit floor" in text  # a pipe in a label does not break the table


def test_markdown_summary_time_split_figure_and_config(summary, candidates):
    text = report_markdown(summary, candidates)
    assert text.startswith("# BAIC report: eurosat")
    assert "| budget | 1.00 MB (1,000,000 B) |" in text
    assert "| input model | 44.7 MB | 95.48% | 12.30 ms |" in text
    assert "985 kB (45.4x smaller)" in text and "(-0.27 points)" in text
    assert "`saved_models/r18_1mb/model.satc`" in text
    assert "| candidates | 900.0 | 69% |" in text and "| **total** | 1300.0 |" in text
    assert "![pareto](pareto.png)" in text
    assert '"budget": "1MB"' in text


def test_missing_values_do_not_crash(tmp_path):
    sparse = [
        {"id": "only-id"},
        {"id": "no-accuracy", "kind": "baic", "bytes": 500_000, "chosen": True},
        {"id": "nan", "kind": "greedy", "bytes": 600_000, "val_accuracy": float("nan")},
        {"id": "odd-kind", "kind": "something-else", "bytes": 700_000, "val_accuracy": 0.5},
    ]
    files = write_report(tmp_path, {}, sparse)
    assert files["figure"].read_bytes().startswith(PNG_MAGIC)
    text = files["report"].read_text()
    assert all(c["id"] in text for c in sparse)
    write_report(tmp_path / "empty", {"budget_bytes": BUDGET}, [])
    assert (tmp_path / "empty" / "pareto.png").stat().st_size > 0
    assert "0 candidates" in (tmp_path / "empty" / "report.md").read_text()


def test_pareto_figure_writes_where_asked(tmp_path, candidates):
    path = pareto_figure(candidates, BUDGET, tmp_path / "sub" / "figure.png", title="test run")
    assert path == tmp_path / "sub" / "figure.png" and path.read_bytes().startswith(PNG_MAGIC)
