"""BAIC end to end on fixture data: the saved file never exceeds the budget, infeasible budgets
fail at once, an interrupted search resumes, baselines and worker processes run."""

import json

import pytest

from satcompress.artifact.format import load_artifact
from satcompress.card import lineage_stages
from satcompress.cli import main
from satcompress.config import ConfigError
from satcompress.pipeline import run
from satcompress.search import candidates as candidates_module
from satcompress.search import loop as baic_module
from satcompress.search.allocate import InfeasibleBudgetError
from satcompress.search.budget import parse_budget
from satcompress.search.config import BAICConfig
from satcompress.search.loop import baic
from satcompress.train import TrainConfig

FAST = {
    "sensitivity_images": 16,
    "candidates": 2,
    "candidate_epochs": 1,
    "candidate_batches": 2,
    "final_epochs": 1,
    "bits": (8, 4, 2),
    "channel_ratios": (0.5,),
    "uniform_pairs": 1,
}


def _candidates(run_dir):
    """The search's candidate records, in the order written."""
    return [json.loads(line) for line in (run_dir / "candidates.jsonl").open()]


@pytest.mark.parametrize("budget", ["3x", "6x"])
def test_saved_file_fits_the_budget_and_beats_nothing_silently(trained_cnn, tmp_path, budget):
    result = baic(trained_cnn, None, BAICConfig(budget=budget, **FAST), tmp_path / "r",
                  progress=False)  # fmt: skip
    summary = result.details
    limit = parse_budget(budget, reference_bytes=summary["measure"]["fp32_bytes"])
    saved = tmp_path / "r" / "model.satc"
    assert saved.stat().st_size == summary["bytes"] <= limit == summary["budget_bytes"]
    assert result.record["size_bytes"] == saved.stat().st_size
    # every candidate file on disk is within the budget, or marked and never saved
    records = _candidates(tmp_path / "r")
    kinds = {r["kind"] for r in records}
    assert {"baic", "uniform", "greedy", "final", "input"} <= kinds
    for record in records:
        if record["kind"] != "input" and record["bytes"]:
            assert (record["bytes"] <= limit) == (record["status"] == "ok")
    # the plan is real: the artifact holds low-bit weights, the card its lineage
    artifact = load_artifact(saved)
    assert min(artifact.manifest["stats"]["weight_bits"]) < 8
    assert lineage_stages(result.card) == ["train", "baic"]
    for name in ("manifest.json", "report.md", "pareto.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["bytes"] == saved.stat().st_size and manifest["plan"]["layers"]
    assert manifest["split_fingerprint"] and manifest["environment"]


def test_file_over_the_predicted_size_is_never_saved(trained_cnn, tmp_path, monkeypatch):
    # make the predictor optimistic by 10%: the first files come out over the budget
    real = baic_module.exact_bytes
    monkeypatch.setattr(baic_module, "exact_bytes", lambda p, plan: int(real(p, plan) * 0.9))
    config = BAICConfig(budget="5x", baselines=(), **{**FAST, "candidates": 1})
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    records = _candidates(tmp_path / "r")
    assert any(r["status"] == "over-budget" for r in records)  # the retry was forced
    assert (tmp_path / "r" / "model.satc").stat().st_size <= result.details["budget_bytes"]


def test_infeasible_budget_fails_at_once_with_the_smallest_size(trained_cnn, tmp_path):
    with pytest.raises(InfeasibleBudgetError, match="smallest file") as err:
        baic(trained_cnn, None, BAICConfig(budget="1kB", **FAST), tmp_path / "r", progress=False)
    assert err.value.min_bytes > 1000
    assert not (tmp_path / "r" / "candidates.jsonl").exists()  # nothing was fine-tuned


class Crash(BaseException):
    """An interruption (pytest handles a real KeyboardInterrupt itself)."""


def test_interrupted_search_resumes_from_the_last_finished_candidate(
    trained_cnn, tmp_path, monkeypatch
):
    real, calls, crashed = candidates_module.run_candidate, [], []

    def interrupted(job):
        calls.append(job.id)
        if len(calls) == 2 and not crashed:
            crashed.append(job.id)
            raise Crash  # like Ctrl-C or a killed process: not caught by the search
        return real(job)

    monkeypatch.setattr(candidates_module, "run_candidate", interrupted)
    config = BAICConfig(budget="4x", **FAST)
    with pytest.raises(Crash):
        baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    first = calls[0]
    calls.clear()
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    assert first not in calls  # reused from candidates.jsonl, not fine-tuned again
    assert (tmp_path / "r" / "model.satc").stat().st_size <= result.details["budget_bytes"]
    with pytest.raises(ConfigError, match="other settings"):
        baic(trained_cnn, None, BAICConfig(budget="3x", **FAST), tmp_path / "r", progress=False)
    # how it runs and which baselines sit beside it may change: the search itself is reused
    calls.clear()
    fewer = BAICConfig(budget="4x", baselines=("uniform",), workers=2, **FAST)
    again = baic(trained_cnn, None, fewer, tmp_path / "r", progress=False)
    assert calls == [] and again.details["bytes"] == result.details["bytes"]
    # a longer final fine-tune reuses the search and fine-tunes the final file again
    longer = BAICConfig(budget="4x", **{**FAST, "final_epochs": 2})
    final = baic(trained_cnn, None, longer, tmp_path / "r", progress=False)
    assert calls == ["final"]
    finals = [r for r in _candidates(tmp_path / "r") if r["id"] == "final"]
    assert [r["epochs"] for r in finals] == [1, 2]
    assert (tmp_path / "r" / "model.satc").stat().st_size <= final.details["budget_bytes"]


def test_uniform_baseline_is_one_bit_width_everywhere(trained_cnn, tmp_path):
    config = BAICConfig(
        budget="4x", baselines=("uniform",), **{**FAST, "candidates": 1, "uniform_pairs": 2}
    )
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    records = _candidates(tmp_path / "r")
    uniform = next(r for r in records if r["kind"] == "uniform")
    bits = {entry.get("bits") for entry in uniform["plan"]["layers"].values()}
    ratios = {entry.get("channel_ratio", 0.0) for entry in uniform["plan"]["layers"].values()}
    assert len(bits) == 1 and len(ratios - {0.0}) <= 1
    assert uniform["bytes"] <= result.details["budget_bytes"]
    pairs = [r for r in records if r["kind"] == "uniform"]  # one per bit-width, best kept
    widths = [{e.get("bits") for e in r["plan"]["layers"].values()} for r in pairs]
    assert len(pairs) == 2 and widths[0] != widths[1]
    best = max(r["accuracy"] for r in pairs)
    assert result.details["baselines"]["uniform"]["accuracy"] == best


def test_worker_processes_run_candidates(trained_cnn, tmp_path):
    config = BAICConfig(budget="4x", workers=2, **{**FAST, "candidates": 1})
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    records = _candidates(tmp_path / "r")
    assert {r["id"] for r in records} >= {"baic-1", "uniform", "greedy"}
    assert all(r["status"] == "ok" for r in records)
    assert result.details["bytes"] <= result.details["budget_bytes"]


@pytest.mark.slow
def test_ray_executor_runs_candidates(trained_cnn, tmp_path):
    pytest.importorskip("ray")
    config = BAICConfig(budget="4x", executor="ray", workers=2, **{**FAST, "candidates": 1})
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    assert result.details["bytes"] <= result.details["budget_bytes"]


@pytest.mark.parametrize("model", ["test_mobilenet", "test_vit"])
def test_other_families(eurosat_root, tmp_path, model):
    config = TrainConfig(
        model=model, dataset="eurosat", data_dir=str(eurosat_root), epochs=1, batch_size=16,
        lr=0.01, ema_decay=None, **({"input_size": 32} if model == "test_vit" else {}),
    )  # fmt: skip
    run(config, None, None, tmp_path / "t", latency=None)
    search = BAICConfig(budget="2.5x", baselines=(), **{**FAST, "candidates": 1})
    result = baic(tmp_path / "t", None, search, tmp_path / "r", progress=False)
    assert result.details["bytes"] <= result.details["budget_bytes"]


def test_cli_baic(trained_cnn, tmp_path, capsys):
    code = main([
        "baic", "--checkpoint", str(trained_cnn), "--budget", "4x", "--run-dir",
        str(tmp_path / "r"), "--quick", "--bits", "8,4,2", "--channel-ratios", "0.5",
        "--candidate-batches", "2",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "budget" in out and "model.satc" in out
    assert main(["baic", "--checkpoint", str(trained_cnn), "--budget", "1kB", "--run-dir",
                 str(tmp_path / "r2"), "--quick"]) == 2  # fmt: skip
    assert "smallest file" in capsys.readouterr().err


def test_adaptive_compression_pipeline_defaults():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "adaptive_compression_pipeline.py"
    spec = importlib.util.spec_from_file_location("acp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.arguments(["--quick"])
    assert args[:2] == ["baic", "--quick"]
    pairs = dict(zip(args[2::2], args[3::2], strict=False))
    assert pairs["--budget"] == "1MB" and pairs["--dataset"] == "eurosat"
    assert pairs["--run-dir"] == "saved_models/resnet18_eurosat_baic_1MB"
    own = module.arguments(["--checkpoint", "runs/mine", "--budget", "500kB"])
    assert "--dataset" not in own and own[own.index("--run-dir") + 1].endswith("_500kB")


def test_sparsity_is_searched_and_stored_sparse(trained_cnn, tmp_path):
    # 8 bits only and no channel pruning: below the all-8-bit file, only sparsity fits
    config = BAICConfig(**{**FAST, "bits": (8,), "channel_ratios": (), "candidates": 1},
                        sparsities=(0.5, 0.75), budget="4.5x")  # fmt: skip
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    summary = result.details
    # the baselines run beside sparse options: uniform stays dense (so nothing fits), greedy
    # may take sparse options like the exact solver
    assert summary["baselines"]["uniform"]["status"] == "infeasible"
    assert summary["baselines"]["greedy"]["status"] == "ok"
    assert summary["bytes"] <= summary["budget_bytes"] < summary["measure"]["int8_bytes"]
    sparse = {n: e for n, e in summary["plan"]["layers"].items() if e["sparsity"] > 0}
    assert sparse and all(e["bits"] == 8 for e in sparse.values())
    stats = load_artifact(tmp_path / "r" / "model.satc").manifest["stats"]
    assert stats["nonzero_params"] < 0.8 * stats["params"]
    assert BAICConfig.from_dict(config.to_dict()).sparsities == (0.5, 0.75)
    with pytest.raises(ConfigError, match="sparsities"):
        BAICConfig(sparsities=(1.0,))


def test_small_model_baseline_is_distilled_quantized_to_fit_and_reused(trained_cnn, tmp_path):
    config = BAICConfig(**{**FAST, "candidates": 1, "baselines": ("small-model",)},
                        small_model="test_mobilenet", small_model_kwargs={}, small_epochs=1,
                        budget="2x")  # fmt: skip
    result = baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    records = _candidates(tmp_path / "r")
    (small,) = [r for r in records if r["kind"] == "small-model"]
    assert small["status"] == "ok" and 0 < small["bytes"] <= result.details["budget_bytes"]
    assert small["source"].endswith("student") and small["accuracy"] is not None
    # its file is the small architecture, at one width: the widest that fits
    manifest = load_artifact(small["artifact"]).manifest
    assert manifest["card"]["model"] == "test_mobilenet"
    (width,) = manifest["stats"]["weight_bits"]
    assert small["plan"]["default"]["bits"] == width and width in FAST["bits"]
    assert small["label"].startswith(f"small-model: test_mobilenet at {width} bit")
    assert result.details["baselines"]["small-model"]["bytes"] == small["bytes"]
    assert result.details["time_seconds"]["small_model_training"] > 0
    # a rerun reuses the distilled student and the finished candidate
    weights = tmp_path / "r" / "candidates" / "small-model" / "student" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="not a known model"):
        BAICConfig(baselines=("small-model",), small_model="resnet1000")


def test_a_diverging_fine_tune_is_retried_at_a_tenth_of_the_learning_rate(
    trained_cnn, tmp_path, monkeypatch
):
    real, scales, rates = candidates_module._fine_tuned, [], []

    def diverge_once(*args, lr_scale=1.0):
        scales.append(lr_scale)
        if len(scales) == 1:
            raise FloatingPointError("training loss became nan at step 3")
        model, train_config = real(*args, lr_scale=lr_scale)
        rates.append(train_config and train_config.lr)  # None: no fine-tune (0 epochs)
        return model, train_config

    monkeypatch.setattr(candidates_module, "_fine_tuned", diverge_once)
    config = BAICConfig(**{**FAST, "candidates": 1, "final_epochs": 0, "baselines": ()},
                        budget="3x")  # fmt: skip
    baic(trained_cnn, None, config, tmp_path / "r", progress=False)
    records = _candidates(tmp_path / "r")
    first = records[0]
    assert scales[:2] == [1.0, candidates_module.RETRY_LR_SCALE]
    assert first["status"] == "ok" and first["accuracy"] is not None
    assert "retried at a tenth of the learning rate" in first["note"]
    # the retry trained at a tenth of the usual rate (a tenth of the recipe's 0.05), and its
    # file's card records that rate
    assert rates[0] == pytest.approx(0.05 / 10 * candidates_module.RETRY_LR_SCALE)
    card = load_artifact(first["artifact"]).manifest["card"]
    assert card["lineage"][-1]["train"]["lr"] == pytest.approx(rates[0])


def test_trajectory_marks_only_the_saved_final_file():
    from satcompress.search.loop import trajectory

    records = [
        {"id": "baic-1", "kind": "baic", "status": "failed", "bytes": None},
        {"id": "final", "kind": "final", "status": "over-budget", "bytes": 501_000},
        {"id": "baic-1", "kind": "baic", "status": "ok", "bytes": 499_000},  # retried
        {"id": "final-2", "kind": "final", "status": "ok", "bytes": 498_700, "plan": {}},
    ]
    shown = trajectory(records)
    assert [(c["id"], c["status"]) for c in shown] == [
        ("baic-1", "ok"), ("final", "over-budget"), ("final-2", "ok"),
    ]  # fmt: skip
    assert [c["id"] for c in shown if c.get("chosen")] == ["final-2"]
    assert "plan" not in shown[-1]
