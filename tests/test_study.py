"""The study: one SQLite store of every stage, experiment files, keys, reuse, resume, import."""

import datetime as dt
import importlib
import json
import multiprocessing
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from satcompress.card import ClassMismatchError, card_hash, lineage_stages
from satcompress.cli import main
from satcompress.experiments import execute
from satcompress.experiments.execute import run_experiment
from satcompress.experiments.export import adopt_records, experiment_records, export_experiment
from satcompress.experiments.plan import plan
from satcompress.experiments.spec import ExperimentError, load_experiment
from satcompress.experiments.study import Study
from satcompress.report import build_report
from satcompress.utils.executors import task_pool

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))

TINY = """\
name: tiny
dataset: eurosat
data_dir: {data}
latency: false
train_defaults: {{epochs: 1, batch_size: 16, lr: 0.05, ema_decay: null}}
stages:
  - name: base
    stage: train
    config: {{model: test_cnn}}
  - name: pruned
    stage: prune
    from: base
    config: {{method: l1, ratio: {ratio}}}
presets:
  cpu: {{}}
  paper:
    image_size: 224
    train_defaults: {{pretrained: true, epochs: 30}}
"""


def _write(path, data, ratio=0.5):
    path.write_text(TINY.format(data=data, ratio=ratio))
    return path


def _record(i, **extra):
    return {"id": f"r{i}", "model": "m", "dataset": "d", "recipe": {}, "accuracy": 0.5,
            "params": 1, "macs": 1, "size_bytes": 1, "latency_ms": {}, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def first_run(eurosat_root, tmp_path_factory):
    """The tiny experiment (train test_cnn 1 epoch, then prune) run once into a study."""
    folder = tmp_path_factory.mktemp("study")
    config = _write(folder / "tiny.yaml", eurosat_root)
    result = run_experiment(load_experiment(config), folder / "study", progress=False)
    return config, folder / "study", result


def _copy(first_run, tmp_path):
    config, study, _ = first_run
    shutil.copytree(study, tmp_path / "study")
    return Path(shutil.copy(config, tmp_path / "tiny.yaml")), tmp_path / "study"


def _forbid_running(monkeypatch, allowed=()):
    calls = []

    def refuse(kind):
        real = execute.STAGE_RUNNERS[kind]

        def runner(job, *args):
            calls.append(job.name)
            if job.name not in allowed:
                raise AssertionError(f"{job.name} was recomputed")
            return real(job, *args)

        return runner

    for kind in list(execute.STAGE_RUNNERS):
        monkeypatch.setitem(execute.STAGE_RUNNERS, kind, refuse(kind))
    return calls


def test_experiment_runs_into_the_study_with_records_and_lineage(first_run):
    _, folder, result = first_run
    assert result.ok and result.outcomes == {"base": "ran", "pruned": "ran"}
    with Study(folder) as study:
        rows = {row.kind: row for row in study.stages()}
        assert {r.status for r in rows.values()} == {"done"} and len(rows) == 2
        assert rows["prune"].input_key == rows["train"].key
        assert (folder / "records" / f"{rows['prune'].key}.json").is_file()
        assert rows["prune"].run_dir == study.run_dir("prune", rows["prune"].key)
        records = study.records("stage")
        assert {r["stage_key"] for r in records} == set(study.bindings("tiny", "cpu").values())
        train_card = json.loads((rows["train"].run_dir / "model.json").read_text())
        prune_card = json.loads((rows["prune"].run_dir / "model.json").read_text())
    assert lineage_stages(prune_card) == ["train", "prune"]
    assert prune_card["lineage"][-1]["input_card_hash"] == card_hash(train_card)
    summary = json.loads((folder / "experiments" / "tiny@cpu.json").read_text())
    assert summary["stages"]["pruned"]["accuracy"] == rows["prune"].record["accuracy"]


def test_rerun_reuses_every_finished_stage(first_run, monkeypatch):
    config, folder, _ = first_run
    weights = next((folder / "runs").glob("train-*")) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    calls = _forbid_running(monkeypatch)
    result = run_experiment(load_experiment(config), folder, progress=False)
    assert result.outcomes == {"base": "reused", "pruned": "reused"} and calls == []
    assert weights.stat().st_mtime_ns == stamp
    with Study(folder) as study:
        assert [row.attempts for row in study.stages()] == [1, 1]


def test_a_changed_stage_reruns_alone_and_a_changed_input_moves_every_key(
    first_run, tmp_path, monkeypatch, eurosat_root, capsys
):
    config, folder = _copy(first_run, tmp_path)
    _write(config, eurosat_root, ratio=0.25)
    calls = _forbid_running(monkeypatch, allowed=("pruned",))
    result = run_experiment(load_experiment(config), folder, progress=True)
    assert result.outcomes == {"base": "reused", "pruned": "ran"} and calls == ["pruned"]
    lines = capsys.readouterr().out.splitlines()  # a line when a stage starts, one when done
    assert "pruned (prune): started" in lines and not any("base (train): st" in x for x in lines)
    assert any(x.startswith("[2/2] pruned (prune): ran in ") for x in lines)
    with Study(folder) as study:
        assert len(study.stages("done")) == 3  # the first prune stays for the other config
        before = {s.spec.name: s.key for s in plan(load_experiment(config), study)}
        text = config.read_text().replace("epochs: 1,", "epochs: 2,")
        config.write_text(text)
        after = {s.spec.name: s for s in plan(load_experiment(config), study, load_data=False)}
    assert all(after[name].key != key for name, key in before.items())
    assert {s.status for s in after.values()} == {"run"}


def test_one_worker_runs_the_stages_in_file_order(first_run, tmp_path, monkeypatch):
    # "other" was ready from the start, but "pruned" comes first in the file: it runs first
    config, folder = _copy(first_run, tmp_path)
    other = "  - {name: other, stage: train, config: {model: test_cnn, lr: 0.02}}\n"
    config.write_text(config.read_text().replace("presets:", f"{other}presets:"))
    calls = _forbid_running(monkeypatch, allowed=("other",))
    result = run_experiment(load_experiment(config), folder, progress=False)
    assert list(result.outcomes.items()) == [("base", "reused"), ("pruned", "reused"),
                                             ("other", "ran")]  # fmt: skip
    assert calls == ["other"]


def test_an_interrupted_stage_resumes_and_what_follows_is_reused(first_run, tmp_path):
    config, folder = _copy(first_run, tmp_path)
    with sqlite3.connect(folder / "study.sqlite") as db:  # its process is gone
        db.execute("UPDATE stages SET status = 'running', owner = 'nohost:1', heartbeat = 0 "
                   "WHERE kind = 'train'")  # fmt: skip
    with Study(folder) as study:
        assert {s.spec.name: s.status for s in plan(load_experiment(config), study)} == {
            "base": "resume", "pruned": "reuse"
        }  # fmt: skip
    result = run_experiment(load_experiment(config), folder, progress=False)
    assert result.outcomes == {"base": "resumed", "pruned": "reused"}
    with Study(folder) as study:
        assert [row.attempts for row in study.stages()] == [2, 1]


def test_a_failed_stage_skips_its_dependents_and_is_retried(
    first_run, tmp_path, monkeypatch, caplog
):
    config, folder = _copy(first_run, tmp_path)
    text = config.read_text().replace("ratio: 0.5", "ratio: 0.3")
    config.write_text(text)

    def boom(*_):
        raise RuntimeError("no luck")

    monkeypatch.setitem(execute.STAGE_RUNNERS, "prune", boom)
    result = run_experiment(load_experiment(config), folder, progress=False)
    assert not result.ok and result.outcomes["pruned"] == "failed"
    assert "no luck" in result.errors["pruned"]
    assert "Traceback" in caplog.text  # a fault of the code: where it happened
    with Study(folder) as study:
        failed = study.stages("failed")
        assert len(failed) == 1 and "no luck" in failed[0].error
    caplog.clear()

    def mismatch(*_):
        raise ClassMismatchError("model.safetensors was trained on other classes")

    monkeypatch.setitem(execute.STAGE_RUNNERS, "prune", mismatch)
    result = run_experiment(load_experiment(config), folder, progress=False)
    assert result.outcomes["pruned"] == "failed"
    assert "stage pruned failed: model.safetensors was trained on other classes" in caplog.text
    assert "Traceback" not in caplog.text  # a user error: its message is enough
    monkeypatch.undo()
    result = run_experiment(load_experiment(config), folder, progress=False)
    assert result.outcomes["pruned"] == "ran"


def _writer(folder, tag, shared, own):
    study = Study(folder, timeout=60)
    for i in range(shared):
        key = f"shared-{i}"
        claim = study.claim(key, "train", {"i": i})
        while claim.state == "busy":
            study.wait(key, poll=0.01)
            claim = study.claim(key, "train", {"i": i})
        if claim.state == "run":
            study.finish(key, {**_record(0), "id": key, "writer": tag})
    for i in range(own):
        key = f"{tag}-{i}"
        assert study.claim(key, "prune", {"i": i}).state == "run"
        study.finish(key, {**_record(0), "id": key, "writer": tag})
    study.close()


def test_two_processes_write_one_study_and_lose_nothing(tmp_path):
    Study(tmp_path).close()
    context = multiprocessing.get_context("fork")  # SQLite and JSON only: no torch in them
    procs = [context.Process(target=_writer, args=(tmp_path, t, 40, 40)) for t in ("a", "b")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with Study(tmp_path) as study:
        rows = study.stages()
        records = study.records("stage")
    assert len(rows) == 120 and {r.status for r in rows} == {"done"}
    shared = [r for r in rows if r.key.startswith("shared-")]
    assert all(r.attempts == 1 for r in shared), "a shared stage ran twice"
    assert sorted(r["id"] for r in records) == sorted(r.key for r in rows)
    writers = {r["writer"] for r in records if r["id"].startswith("shared-")}
    assert writers <= {"a", "b"}


@pytest.mark.slow
def test_two_experiment_processes_share_one_study(eurosat_root, tmp_path):
    configs = []
    for ratio in (0.5, 0.25):  # the same base, two prunes
        configs.append(_write(tmp_path / f"tiny{ratio}.yaml", eurosat_root, ratio))
    command = [sys.executable, "-m", "satcompress", "experiment", "run"]
    procs = [subprocess.Popen([*command, str(c), "--study", str(tmp_path / "s")])
             for c in configs]  # fmt: skip
    assert [p.wait(600) for p in procs] == [0, 0]
    with Study(tmp_path / "s") as study:
        rows = study.stages()
    assert sorted(r.kind for r in rows) == ["prune", "prune", "train"]
    assert all(r.status == "done" and r.attempts == 1 for r in rows)


@pytest.mark.slow
def test_independent_stages_run_in_worker_processes(first_run, tmp_path):
    config, folder = _copy(first_run, tmp_path)
    text = config.read_text().replace("ratio: 0.5}", "ratio: 0.4}")
    extra = "  - {name: other, stage: prune, from: base, config: {method: l2, ratio: 0.3}}\n"
    config.write_text(text.replace("presets:", extra + "presets:"))
    result = run_experiment(load_experiment(config), folder, workers=2, progress=False)
    assert result.outcomes == {"base": "reused", "pruned": "ran", "other": "ran"}


def test_executors_return_results_and_errors_in_completion_order():
    for kind, seconds in (("serial", 0.1), ("process", 2.0)):
        with task_pool(kind, workers=2) as pool:
            pool.submit("slow", time.sleep, seconds)
            pool.submit("bad", abs, "not a number")
            done = [pool.next_done() for _ in range(2)]
        by_name = {d.name: d for d in done}
        assert by_name["slow"].error is None and isinstance(by_name["bad"].error, TypeError)
        if kind == "process":
            assert done[0].name == "bad"


# --- experiment files: validation with file and line -----------------------------------------


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("config: {{model: test_cnn}}", "config: {{model: test_cnn, epoch: 3}}"), 9, "epoch"),
        (("stage: prune", "stage: purne"), 11, "unknown stage 'purne'"),
        (("model: test_cnn", "model: resnet1000"), 9, "unknown model 'resnet1000'"),
        (("from: base", "from: nowhere"), 12, "names no earlier stage and no file"),
        (("latency: false", "latency: false\nlatnecy: true"), 5, "unknown experiment key"),
        (("ratio: {ratio}", "ratio: 1.5"), 13, "ratio must be"),
        (("  cpu: {{}}", "  cpu: {{stages: {{prune: {{}}}}}}"), 15, "no stage 'prune'"),
    ],
)
def test_mistakes_name_the_file_and_line(tmp_path, change, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace(*change).format(data=tmp_path, ratio=0.5))
    with pytest.raises(ExperimentError, match=message) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}:{line}:")


@pytest.mark.parametrize(
    ("model", "prune", "message"),
    [
        (
            "vit_tiny_patch16, model_kwargs: {{img_size: 32}}",
            "ratio: 0.75",
            "head ratio 0.75 would remove all 3 heads of blocks.0.attn",
        ),  # fmt: skip
        (
            "clip_vit_b32, model_kwargs: {{image_size: 64}}",
            "ratio: 0.25, head_ratio: 0.95",
            "would remove all 12 heads of visual.transformer.resblocks.0.attn",
        ),  # fmt: skip
        ("vit_tiny_patch16, model_kwargs: {{img_size: 32}}", "ratio: 0.75, head_ratio: 0.5", None),
        (
            "vit_tiny_patch16, model_kwargs: {{img_size: 32}}",
            "ratio: 0.75, global_pruning: true",
            None,
        ),  # fmt: skip  (weights decide: checked later)
        ("test_cnn", "ratio: 0.9", None),
    ],
)
def test_a_prune_that_would_remove_every_head_of_a_block_fails_before_anything_runs(
    tmp_path, model, prune, message
):
    path = tmp_path / "heads.yaml"
    text = TINY.replace("model: test_cnn", f"model: {model}").replace("ratio: {ratio}", prune)
    path.write_text(text.format(data=tmp_path))
    experiment = load_experiment(path)
    with Study(tmp_path / "s") as study:
        if message is None:
            assert [s.spec.name for s in plan(experiment, study, load_data=False)] == [
                "base",
                "pruned",
            ]
            return
        with pytest.raises(ExperimentError, match=message) as err:
            plan(experiment, study, load_data=False)
    assert str(err.value).startswith(f"{path}:10: stage 'pruned': head ratio")
    assert not (tmp_path / "s" / "runs").exists()


def test_presets_override_and_cli_validates_a_dry_run(eurosat_root, tmp_path, capsys):
    config = _write(tmp_path / "tiny.yaml", eurosat_root)
    paper = load_experiment(config, "paper")
    base = paper.stage("base").config
    assert (base.image_size, base.pretrained, base.epochs) == (224, True, 30)
    assert load_experiment(config).stage("base").config.epochs == 1  # cpu is the default
    code = main(["experiment", "run", str(config), "--preset", "paper", "--study",
                 str(tmp_path / "s"), "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "base" in out and "pruned" in out and "key unknown" in out
    assert not (tmp_path / "s" / "runs").exists()


def test_dry_run_shows_what_is_reused_and_a_rerun_reuses_it(first_run, capsys):
    config, folder, _ = first_run
    assert main(["experiment", "run", str(config), "--study", str(folder), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("base ") and " reuse " in line for line in lines)
    assert main(["experiment", "run", str(config), "--study", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 reused"


def test_several_files_are_all_checked_then_run_in_turn(first_run, tmp_path, monkeypatch, capsys):
    config, folder = _copy(first_run, tmp_path)
    twin = tmp_path / "twin.yaml"  # the same stages under another name: all reused
    twin.write_text(config.read_text().replace("name: tiny", "name: twin"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("stage: prune", "stage: purne"))
    calls = _forbid_running(monkeypatch)
    run = ["experiment", "run", "--study", str(folder), "--export", str(tmp_path / "out")]
    assert main([*run, str(config), str(bad)]) == 2  # the second file's mistake: nothing ran
    assert f"{bad}:11: stage 'pruned': unknown stage 'purne'" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "out").exists()
    assert main([*run, str(config), str(twin)]) == 0
    out = capsys.readouterr().out
    assert out.index("experiment tiny, preset cpu") < out.index("experiment twin, preset cpu")
    assert out.count("2 reused") == 2 and calls == []
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"tiny@cpu.json", "twin@cpu.json"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_every_experiment_file_validates_and_dry_runs(path, preset, tmp_path):
    if "../shared/models" in path.read_text() and not (ROOT.parent / "shared/models").is_dir():
        pytest.skip("needs ../shared/models")
    experiment = load_experiment(path, preset)
    assert experiment.preset == preset and len(experiment.stages) >= 2
    with Study(tmp_path) as study:
        planned = plan(experiment, study, load_data=False)
    assert [s.spec.name for s in planned] == [s.name for s in experiment.stages]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_runs_on_your_own_image_folder(path, imagefolder_root, tmp_path):
    experiment = load_experiment(path, "own", dataset="imagefolder",
                                 data_dir=imagefolder_root, image_size=32)  # fmt: skip
    with Study(tmp_path) as study:
        planned = plan(experiment, study)  # loads the folder; checks every checkpoint's classes
    assert all(s.key for s in planned) and {s.data["dataset"] for s in planned} == {"imagefolder"}
    assert {tuple(s.data["image_size"]) for s in planned} == {(32, 32)}
    # no stage measures or compresses a checkpoint of other classes (the plan checked them)
    assert all(s.spec.kind == "train" for s in planned if s.spec.source and s.spec.source.path)


# --- importing earlier results ---------------------------------------------------------------


def test_study_import_tags_records_with_their_file(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps([_record(1), _record(2), {"id": "broken"}]))
    (results / "b.json").write_text(json.dumps([_record(1, accuracy=0.9)]))
    (results / "diagnostics.json").write_text(json.dumps({"not": "records"}))
    args = ["study", "import", str(results / "*.json"), "--study", str(tmp_path / "s")]
    assert main(args) == 0 and main(args) == 0  # twice: replaced, not duplicated
    assert "3 records imported" in capsys.readouterr().out
    with Study(tmp_path / "s") as study:
        sources = study.sources()
        assert sources == {str(results / "a.json"): 2, str(results / "b.json"): 1}
        assert study.records(str(results / "b.json"))[0]["accuracy"] == 0.9
    assert (tmp_path / "s" / "imported" / "a.json").is_file()
    missing = ["study", "import", str(results / "nothing*.json"), "--study", str(tmp_path / "s")]
    assert main(missing) == 2
    assert "no results file matches" in capsys.readouterr().err


def test_study_import_loads_the_committed_results(tmp_path):
    with Study(tmp_path) as study:
        counts = study.import_results(ROOT / "results" / "*.json")
        assert sum(counts.values()) == len(study.records()) > 0
    baseline = json.loads((ROOT / "results" / "baseline.json").read_text())
    assert counts[str(ROOT / "results" / "baseline.json")] == len(baseline)
    assert str(ROOT / "results" / "diagnostics.json") not in counts  # not a list of records


def test_study_export_writes_each_experiment_and_import_reads_it_back(first_run, tmp_path, capsys):
    _, folder, _ = first_run
    out = tmp_path / "results"
    assert main(["study", "export", "--study", str(folder), "--out", str(out)]) == 0
    assert main(["study", "show", "--study", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "tiny@cpu.json: 2 records" in printed
    assert "experiment tiny@cpu: 2 of 2 stages done (complete)" in printed
    exported = json.loads((out / "tiny@cpu.json").read_text())
    with Study(folder) as study:
        keys = study.bindings("tiny", "cpu")
        stage_records = {r["stage_key"]: r for r in study.records("stage")}
    assert [r["id"] for r in exported] == ["tiny/base", "tiny/pruned"]
    for record in exported:
        tag = record["experiment"]
        assert tag["name"] == "tiny" and tag["preset"] == "cpu" and tag["key"] == keys[tag["stage"]]
        assert record["accuracy"] == stage_records[tag["key"]]["accuracy"]
    with Study(tmp_path / "other") as other:  # a study that never ran it reads the same numbers
        other.import_results(out / "*.json")
        assert sorted(r["accuracy"] for r in other.records()) == sorted(
            r["accuracy"] for r in exported
        )
    assert main(["study", "export", "nothing", "--study", str(folder), "--out", str(out)]) == 2
    assert "holds no run of nothing (it holds: tiny@cpu)" in capsys.readouterr().err
    one = out / "tiny.json"  # a file name for one experiment
    assert main(["study", "export", "tiny", "--study", str(folder), "--out", str(one)]) == 0
    assert json.loads(one.read_text()) == exported


def test_report_of_a_study_has_its_experiments_tables(first_run, tmp_path):
    _, folder, _ = first_run
    text = build_report(folder, tmp_path / "visuals").markdown.read_text()
    with Study(folder) as study:
        records = {r["stage_key"]: r for r in study.records("stage")}
        keys = study.bindings("tiny", "cpu")
    assert "## Experiment: tiny@cpu (complete: 2 stages)" in text
    for stage in ("base", "pruned"):
        accuracy = f"{100 * records[keys[stage]]['accuracy']:.2f}%"
        assert any(line.startswith(f"| {stage} | test_cnn |") and accuracy in line
                   for line in text.splitlines()), stage  # fmt: skip


def test_a_checkpoint_of_other_classes_fails_before_anything_runs(
    first_run, ucmerced_root, tmp_path, monkeypatch
):
    _, folder, _ = first_run
    eurosat_model = next((folder / "runs").glob("train-*"))
    config = tmp_path / "moved.yaml"
    stages = ("  - {name: learn, stage: train, config: {model: test_cnn}}\n"
              f"  - {{name: measure, stage: evaluate, from: {eurosat_model}}}\n")  # fmt: skip
    config.write_text(f"name: moved\ndataset: ucmerced\ndata_dir: {ucmerced_root}\nstages:\n"
                      + stages)  # fmt: skip
    calls = _forbid_running(monkeypatch)
    with pytest.raises(ExperimentError) as err:
        run_experiment(load_experiment(config), tmp_path / "study", progress=False)
    assert f"{config}:6: stage 'measure': its from: checkpoint {eurosat_model}" in str(err.value)
    assert "trained on 10 classes (AnnualCrop" in str(err.value)
    assert "the ucmerced data has 21 (agricultural" in str(err.value) and calls == []


def test_an_image_folder_of_other_classes_fails_before_anything_runs(
    first_run, imagefolder_root, tmp_path, monkeypatch
):
    _, folder, _ = first_run
    eurosat_model = next((folder / "runs").glob("train-*"))
    config = tmp_path / "own.yaml"
    stage = f"  - {{name: measure, stage: evaluate, from: {eurosat_model}}}\n"
    config.write_text(f"name: own\ndataset: imagefolder\ndata_dir: {imagefolder_root}\n"
                      f"stages:\n{stage}")  # fmt: skip
    calls = _forbid_running(monkeypatch)
    with pytest.raises(ExperimentError) as err:
        run_experiment(load_experiment(config), tmp_path / "study", progress=False)
    assert f"{config}:5: stage 'measure': its from: checkpoint {eurosat_model}" in str(err.value)
    assert "the imagefolder data has 3 (" in str(err.value) and calls == []
    # a dry run of the same file, with the folder loaded once, stops there too
    with pytest.raises(ExperimentError, match="trained on 10 classes"):
        plan(load_experiment(config), Study(tmp_path / "study"), load_data=False)


def test_an_image_folder_saved_without_its_classes_is_loaded_again_and_checked(
    first_run, imagefolder_root, tmp_path, monkeypatch
):
    """A study saved before data sources kept an image folder's classes still checks them."""
    plan_module = importlib.import_module("satcompress.experiments.plan")

    _, folder, _ = first_run
    eurosat_model = next((folder / "runs").glob("train-*"))
    config = tmp_path / "own.yaml"
    config.write_text(
        f"name: own\ndataset: imagefolder\ndata_dir: {imagefolder_root}\n"
        f"stages:\n  - {{name: measure, stage: evaluate, from: {eurosat_model}}}\n"
    )
    experiment, study = load_experiment(config), Study(tmp_path / "study")
    spec = experiment.stages[0].data
    plan_module.data_part(spec, study)  # loads the folder once and saves its classes
    saved = study.data_source(spec.to_dict(), plan_module.folder_stamp(spec))
    assert len(saved.pop("classes")) == 3
    study.save_data_source(spec.to_dict(), plan_module.folder_stamp(spec), saved)  # as before
    with pytest.raises(ExperimentError, match="the imagefolder data has 3"):
        plan(experiment, study)
    assert "classes" in study.data_source(spec.to_dict(), plan_module.folder_stamp(spec))


def test_a_plan_reads_each_card_and_walks_each_folder_once(first_run, tmp_path, monkeypatch):
    plan_module = importlib.import_module("satcompress.experiments.plan")

    _, folder, _ = first_run
    model = next((folder / "runs").glob("train-*"))
    config = tmp_path / "many.yaml"
    stages = "".join(
        f"  - {{name: s{i}, stage: prune, from: {model}, teacher: {model}, "
        f"config: {{method: l1, ratio: 0.{i + 1}}}}}\n"
        for i in range(3)
    )
    data = first_run[0].read_text().split("data_dir: ")[1].split("\n")[0]
    config.write_text(f"name: many\ndataset: eurosat\ndata_dir: {data}\nstages:\n{stages}")
    reads, walks = [], []
    real_read, real_walk = plan_module._read_card, plan_module._walk_stamp
    monkeypatch.setattr(plan_module, "_read_card", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(plan_module, "_walk_stamp", lambda s: walks.append(s) or real_walk(s))
    planned = plan(load_experiment(config), Study(first_run[1]))
    assert len({s.key for s in planned}) == 3 and all(s.key for s in planned)
    assert reads == [model] and len(walks) == 1
    plan(load_experiment(config), Study(first_run[1]))  # a new plan reads them again
    assert len(reads) == 2 and len(walks) == 2


def test_export_of_several_experiments_into_one_file_is_refused(first_run, tmp_path, capsys):
    _, folder = _copy(first_run, tmp_path)
    with Study(folder) as study:
        study.bind("other", "", study.bindings("tiny", "cpu"))
    args = ["study", "export", "--study", str(folder), "--out", str(tmp_path / "all.json")]
    assert main(args) == 2 and not (tmp_path / "all.json").exists()
    assert "names one file, but 2 experiments match" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"other.json", "tiny@cpu.json"}


def test_an_interrupted_experiment_exports_the_stages_it_finished(
    first_run, tmp_path, monkeypatch, capsys
):
    config, folder = _copy(first_run, tmp_path)
    config.write_text(config.read_text().replace("ratio: 0.5", "ratio: 0.4"))

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setitem(execute.STAGE_RUNNERS, "prune", interrupted)
    out = tmp_path / "results"
    run = ["experiment", "run", str(config), "--study", str(folder), "--export", str(out)]
    assert main(run) == 130  # Ctrl-C; --export still writes what finished
    with Study(folder) as study:
        records = experiment_records(study, "tiny", "cpu")
        assert study.get(study.bindings("tiny", "cpu")["pruned"]).status == "running"
    assert [r["id"] for r in records] == ["tiny/base"]  # the new prune is bound, not done
    assert json.loads((out / "tiny@cpu.json").read_text()) == records
    assert records[0]["experiment"]["done"] == 1 and records[0]["experiment"]["stages"] == 2
    with Study(tmp_path / "imported") as imported:
        imported.import_results(out / "*.json")
    text = build_report(tmp_path / "imported", tmp_path / "visuals").markdown.read_text()
    assert "## Experiment: tiny@cpu (incomplete: 1 of 2 stages finished)" in text
    assert main(["study", "show", "--study", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "experiment tiny@cpu: 1 of 2 stages done (incomplete)" in out
    assert "1 stage interrupted (prune)" in out and "running" not in out


def _finished(study, key, kind, record=None, details=None, input_key=None):
    assert study.claim(key, kind, {"key": key}, input_key).state == "run"
    study.finish(key, record, details=details)
    return study.run_dir(kind, key)


def test_export_carries_what_the_report_reads_from_stages(tmp_path, caplog):
    blocks = {"blocks": [{"block": 0, "removed_accuracy": 0.7}]}
    candidate = {"id": "c1", "bytes": 900, "accuracy": 0.8, "status": "ok"}
    with Study(tmp_path / "s") as study:
        _finished(study, "vit", "train", _record(1))
        _finished(study, "layers", "vit_layers", details=blocks, input_key="vit")
        run_dir = _finished(study, "search", "baic", _record(2, baic={"budget_bytes": 1000}))
        run_dir.mkdir(parents=True)
        (run_dir / "candidates.jsonl").write_text(json.dumps(candidate) + "\n{torn")
        study.bind("e", "", {"vit": "vit", "layers": "layers", "search": "search"})
        records = {r["id"]: r for r in experiment_records(study, "e", "")}
        path, count = export_experiment(study, "e", "", tmp_path / "out")
    assert list(records) == ["e/vit", "e/search"]  # file order; the analysis has no record
    assert records["e/vit"]["vit_layers"] == blocks
    assert records["e/search"]["baic"] == {"budget_bytes": 1000, "candidates": [candidate]}
    assert path == tmp_path / "out" / "e.json" and count == 2
    assert json.loads(path.read_text()) == list(records.values())
    assert "candidates.jsonl:2: skipped a line that is not JSON" in caplog.text


def test_exported_records_come_back_as_finished_stages_with_what_the_report_reads(tmp_path):
    blocks = {"blocks": [{"block": 0, "removed_accuracy": 0.7}]}
    baic = {"budget_bytes": 1000, "candidates": [{"id": "c1", "bytes": 900}]}
    with Study(tmp_path / "s") as study:
        _finished(study, "vit", "train", _record(1), input_key=None)
        _finished(study, "layers", "vit_layers", details=blocks, input_key="vit")
        _finished(study, "search", "baic", _record(2, baic=baic))
        study.bind("e", "", {"vit": "vit", "layers": "layers", "search": "search"})
        exported = experiment_records(study, "e", "")
    assert exported[0]["experiment"]["analyses"][0]["key"] == "layers"
    with Study(tmp_path / "new") as new:
        taken = adopt_records(new, exported, {"vit", "layers", "search", "other"}, "f.json")
        assert sorted(taken) == ["layers", "search", "vit"]
        assert adopt_records(new, exported, {"vit", "layers", "search"}) == []  # once
        new.bind("e", "", {"vit": "vit", "layers": "layers", "search": "search"})
        again = experiment_records(new, "e", "")
        rows = {row.key: row for row in new.stages()}
    for record in again + exported:  # the keys and times travel, the ids are the same
        record["experiment"].pop("seconds")
        for analysis in record["experiment"].get("analyses", []):
            analysis.pop("seconds")
    assert again == exported  # what the report reads, the analysis and the search included
    assert {row.status for row in rows.values()} == {"done"}
    assert rows["vit"].spec == {"adopted_from": "f.json"} and not rows["vit"].run_dir.exists()
    with Study(tmp_path / "partial") as partial:  # a record of other keys is left alone
        assert adopt_records(partial, exported, {"search"}) == ["search"]
        assert [row.key for row in partial.stages()] == ["search"]


def test_a_new_study_takes_committed_records_and_runs_only_what_is_missing(
    first_run, tmp_path, monkeypatch, capsys
):
    config, folder, _ = first_run
    out = tmp_path / "results"
    assert main(["study", "export", "--study", str(folder), "--out", str(out)]) == 0
    exported = json.loads((out / "tiny@cpu.json").read_text())
    committed = {r["experiment"]["stage"]: r for r in exported}
    new = tmp_path / "new"  # a new machine: the records, none of the run directories
    run = ["experiment", "run", str(config), "--study", str(new), "--records-from",
           str(out / "*.json")]  # fmt: skip
    calls = _forbid_running(monkeypatch)
    assert main(run + ["--export", str(out)]) == 0
    assert calls == [] and "2 finished stages taken from records: base, pruned" in (
        capsys.readouterr().out
    )
    assert json.loads((out / "tiny@cpu.json").read_text()) == list(committed.values())
    assert main(["study", "show", "--study", str(new)]) == 0
    assert "2 of them taken from records (--records-from), without files" in (
        capsys.readouterr().out
    )

    changed = Path(shutil.copy(config, tmp_path / "tiny.yaml"))  # the prune changes ...
    changed.write_text(changed.read_text().replace("ratio: 0.5", "ratio: 0.4"))
    monkeypatch.undo()
    calls = _forbid_running(monkeypatch, allowed=("base", "pruned"))
    result = run_experiment(load_experiment(changed), new, progress=False,
                            records_from=[out / "tiny@cpu.json"])  # fmt: skip
    assert calls == ["base", "pruned"]  # ... so its input's model is made again
    assert result.outcomes == {"base": "rebuilt", "pruned": "ran"}
    with Study(new) as study:
        keys = study.bindings("tiny", "cpu")
        base = study.get(keys["base"])
        assert base.status == "done" and base.attempts == 0  # finished all along
        assert keys["base"] == committed["base"]["experiment"]["key"]
        assert keys["pruned"] != committed["pruned"]["experiment"]["key"]
        assert (base.run_dir / "model.safetensors").is_file()
        assert base.record["accuracy"] == committed["base"]["accuracy"]  # seeded: the same
    monkeypatch.undo()
    calls = _forbid_running(monkeypatch)  # and now everything is there
    again = run_experiment(load_experiment(changed), new, progress=False)
    assert again.outcomes == {"base": "reused", "pruned": "reused"} and calls == []
    assert main(run[:-1] + [str(tmp_path / "none-*.json")]) == 2
    assert "no results file matches" in capsys.readouterr().err


def test_export_is_written_as_each_stage_finishes(eurosat_root, tmp_path, monkeypatch):
    config, out = _write(tmp_path / "tiny.yaml", eurosat_root), tmp_path / "results"
    seen, real = [], execute.STAGE_RUNNERS["prune"]

    def prune(job, *args):  # what a session killed now would have left
        seen.append(json.loads((out / "tiny@cpu.json").read_text()))
        return real(job, *args)

    monkeypatch.setitem(execute.STAGE_RUNNERS, "prune", prune)
    run = ["experiment", "run", str(config), "--study", str(tmp_path / "s"), "--export", str(out)]
    assert main(run) == 0
    assert [[r["id"] for r in records] for records in seen] == [["tiny/base"]]
    assert [r["id"] for r in json.loads((out / "tiny@cpu.json").read_text())] == [
        "tiny/base",
        "tiny/pruned",
    ]


def test_a_failed_rebuild_keeps_the_finished_stage(first_run, tmp_path, monkeypatch):
    config, folder, _ = first_run
    records = experiment_records(Study(folder), "tiny", "cpu")
    changed = Path(shutil.copy(config, tmp_path / "tiny.yaml"))
    changed.write_text(changed.read_text().replace("ratio: 0.5", "ratio: 0.3"))

    def broken(*_):
        raise RuntimeError("disk full")

    monkeypatch.setitem(execute.STAGE_RUNNERS, "train", broken)
    with Study(tmp_path / "new") as study:
        adopt_records(study, records, {records[0]["experiment"]["key"]})
        result = run_experiment(load_experiment(changed), study, progress=False)
        assert result.outcomes == {"base": "failed", "pruned": "skipped"}
        assert study.get(records[0]["experiment"]["key"]).status == "done"
        assert [r["id"] for r in experiment_records(study, "tiny", "cpu")] == ["tiny/base"]


def test_a_baic_stage_record_carries_its_search_summary(tmp_path):
    """The budget and the input model come from the search's summary (the stage's details)."""
    from satcompress.report import load_study
    from satcompress.report.headline import headline

    summary = {"budget_bytes": 1_000_000, "input": {"bytes": 44_000_000, "accuracy": 0.95},
               "baselines": {}, "artifact": "/elsewhere/model.satc",
               "candidates": [{"id": "final", "bytes": 990_000, "accuracy": 0.94}]}  # fmt: skip
    record = _record(1, dataset="eurosat", model="resnet18", size_bytes=990_000,
                     accuracy=0.94, format="artifact-int4-mixed")  # fmt: skip
    with Study(tmp_path / "s") as study:
        _finished(study, "search", "baic", record, details=summary)
        study.bind("e", "cpu", {"search": "search"})
        exported = experiment_records(study, "e", "cpu")[0]
    assert exported["baic"] == {
        k: summary[k] for k in ("budget_bytes", "input", "baselines", "candidates")
    }  # not its paths
    entries = load_study(tmp_path / "s").entries  # the study's own run, not an import
    assert dict(headline(entries).rows)["BAIC ≤ 1 MB"].accuracy == 0.94


def test_mlflow_logs_each_stage_that_ran(first_run, monkeypatch):
    logged = []

    class FakeRun:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class FakeMlflow:
        def set_tracking_uri(self, uri):
            logged.append(("uri", uri))

        def set_experiment(self, name):
            logged.append(("experiment", name))

        def start_run(self, run_name, tags):
            logged.append(("run", run_name, tags["satcompress.stage"]))
            return FakeRun()

        def log_params(self, params):
            logged.append(("params", params))

        def log_metrics(self, metrics):
            logged.append(("metrics", metrics))

        def log_artifact(self, path):
            logged.append(("artifact", Path(path).name))

    monkeypatch.setitem(sys.modules, "mlflow", FakeMlflow())
    from satcompress.experiments.tracking import MlflowTracker

    config, folder, _ = first_run
    with Study(folder) as study:
        tracker = MlflowTracker("file:/tmp/x", "tiny", study)
        stages = plan(load_experiment(config), study)
        tracker(stages[1], "ran", 1.5)
        tracker(stages[0], "reused", 0.0)  # logged when it ran
    runs = [e for e in logged if e[0] == "run"]
    assert runs == [("run", "pruned", "prune")]
    params = next(e[1] for e in logged if e[0] == "params")
    metrics = next(e[1] for e in logged if e[0] == "metrics")
    assert params["config.ratio"] == "0.5" and params["config.method"] == "l1"
    assert 0 <= metrics["accuracy"] <= 1 and metrics["seconds"] == 1.5
    assert ("artifact", f"{stages[1].key}.json") in logged


def test_stage_keys_hash_input_data_and_settings_only(first_run):
    config, folder, _ = first_run
    with Study(folder) as study:
        stages = plan(load_experiment(config), study, load_data=False)
    base = stages[0]
    assert base.input_ref is None and set(base.data) == {
        "dataset", "image_size", "seed", "split_fingerprint"}  # fmt: skip
    assert "data_dir" not in base.settings["config"] and "threads" not in base.settings["config"]
    assert stages[1].input_ref == {"key": base.key}


def test_export_after_a_ctrl_c_before_any_stage_was_planned(eurosat_root, tmp_path, monkeypatch,
                                                           capsys):  # fmt: skip
    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "plan", interrupted)
    config = _write(tmp_path / "tiny.yaml", eurosat_root)
    out = tmp_path / "results"
    code = main(["experiment", "run", str(config), "--study", str(tmp_path / "s"), "--export",
                 str(out)])  # fmt: skip
    assert code == 130 and not out.exists()
    assert "--export: no stage of tiny had been planned; nothing written" in capsys.readouterr().err


def test_an_experiment_is_what_it_last_bound_in_file_order(tmp_path):
    with Study(tmp_path) as study:
        _finished(study, "k1", "train", _record(1))
        study.bind("e", "cpu", {"a": "k1", "b": "k2", "c": "k3"})
        assert study.progress("e", "cpu") == (1, 3)
        study.bind("e", "cpu", {"c": "k3", "a": "k1"})  # b left the file, c moved up
        assert list(study.bindings("e", "cpu").items()) == [("c", "k3"), ("a", "k1")]
        assert study.progress("e", "cpu") == (1, 2) and study.progress("f", "cpu") == (0, 0)


def test_heartbeat_and_dead_owner(tmp_path):
    with Study(tmp_path, stale_after=60) as study:
        assert study.claim("k", "train", {}).state == "run"
        proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        dead = f"{socket.gethostname()}:{proc.stdout.strip()}"
        with sqlite3.connect(tmp_path / "study.sqlite") as db:
            db.execute("UPDATE stages SET owner = ? WHERE key = 'k'", (dead,))
        claim = study.claim("k", "train", {})
        assert claim.state == "run" and claim.resume
        with study.heartbeat("k", every=0.05):
            time.sleep(0.3)
        assert time.time() - study.get("k").heartbeat < 1


def test_a_resumed_stage_counts_the_time_of_the_attempts_it_continued(tmp_path):
    def set_row(key, **values):
        with sqlite3.connect(tmp_path / "study.sqlite") as db:
            for column, value in values.items():
                db.execute(f"UPDATE stages SET {column} = ? WHERE key = ?", (value, key))

    def started(ago):
        return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=ago)).isoformat()

    with Study(tmp_path, stale_after=60) as study:
        for key in ("resumed", "restarted"):
            study.claim(key, "train", {})
            set_row(key, started=started(100))
            study.fail(key, "first attempt failed")  # after 100 s
            study.claim(key, "train", {})
            # the second attempt is interrupted 40 s in: it counts to its last heartbeat
            set_row(key, owner=f"{socket.gethostname()}:999999999", started=started(50),
                    heartbeat=time.time() - 10)  # fmt: skip
            assert study.claim(key, "train", {}).resume
            assert study.get(key).seconds == pytest.approx(140, abs=2)
        study.finish("resumed", None, seconds=5.0, resumed=True)
        study.finish("restarted", None, seconds=5.0)  # started over: only its own time
        assert study.get("resumed").seconds == pytest.approx(145, abs=2)
        assert study.get("restarted").seconds == 5.0


def test_a_stage_a_live_process_runs_is_waited_for(tmp_path):
    study = Study(tmp_path)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from satcompress.experiments.study import Study
        study = Study({str(tmp_path)!r})
        study.claim("k", "train", {{}})
        print("claimed", flush=True)
        time.sleep(1.0)
        study.finish("k", None)
    """)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"
    assert study.claim("k", "train", {}).state == "busy"
    row = study.wait("k", poll=0.05)
    assert row.status == "done" and study.claim("k", "train", {}).state == "done"
    assert proc.wait(30) == 0
    study.close()
