"""Faults a real user meets: two writers, kill -9, Ctrl-C, damaged checkpoints, odd datasets.

The fast tests use the command line in this process (``main``) and light helper processes
that only take a lock; the ``slow`` ones run the command line in real processes that are
raced, killed with SIGKILL or sent SIGINT (each start imports torch and Lightning: about
ten seconds on a busy two-core machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fake_data import make_imagefolder, write_split_files
from satcompress.cli import how_to_continue, main
from satcompress.data import DatasetError, load_dataset
from satcompress.train import trainer as trainer_module
from satcompress.train.checkpoint_io import AtomicCheckpointIO, CheckpointError, read_checkpoint
from satcompress.utils.lock import HOLDER_FILE, LOCK_FILE, RunDirLockedError, run_lock

HOLD_LOCK = """
import sys, time
from satcompress.utils.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""

#: ``python -c RACE GO ARGV...``: import everything, then run the command when GO appears.
RACE = """
import os, sys, time
from pathlib import Path
from satcompress.cli import main
import satcompress.pipeline.stages
go = Path(sys.argv[1])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


def _train_args(run: Path, data: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "train", "--run-dir", str(run), "--model", "test_cnn", "--dataset", "imagefolder",
        "--data-dir", str(data), "--epochs", str(epochs), "--batch-size", "8", "--no-eval",
        "--threads", "1", *extra,
    ]  # fmt: skip


def _holding(run: Path) -> subprocess.Popen:
    """A process that holds ``run``'s lock until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def _checkpoint_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _weights_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(checkpoint)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


# --- one writer per run directory -----------------------------------------------------------


def test_a_second_writer_is_refused_at_once_naming_the_holder(imagefolder_root, tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holding(run)
    try:
        started = time.perf_counter()
        code = main(_train_args(run, imagefolder_root))
        waited = time.perf_counter() - started
    finally:
        _stop(holder)
    err = capsys.readouterr().err
    assert code == 2
    assert "in use by another satcompress process" in err
    assert f"pid {holder.pid} on " in err and "started " in err and "running `" in err
    _no_traceback(err)
    assert waited < 5, "refused at once, not after waiting or training"
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, HOLDER_FILE], "nothing written"


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_message(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _holding(run)
    _stop(holder)  # SIGKILL: no clean-up, its holder file stays
    assert json.loads((run / HOLDER_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="satcompress.utils.lock"):
        with run_lock(run):
            assert json.loads((run / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {holder.pid}" in caplog.text
    assert "which is no longer running" in caplog.text
    assert not (run / HOLDER_FILE).exists(), "a clean release removes the holder file"


def test_the_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    run = tmp_path / "run"
    with run_lock(run), run_lock(tmp_path / "." / "run"):  # stages nest: one writer
        probe = subprocess.run(
            [sys.executable, "-c", HOLD_LOCK, str(run)], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert probe.returncode != 0
        assert "RunDirLockedError" in probe.stderr and f"pid {os.getpid()}" in probe.stderr
    with run_lock(run):  # released by the outer block: free again
        pass


def test_other_ranks_of_a_multi_process_run_do_not_lock(tmp_path, monkeypatch):
    run = tmp_path / "run"
    holder = _holding(run)
    try:
        with pytest.raises(RunDirLockedError):
            with run_lock(run):
                pass
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker of the holder
        with run_lock(run):
            pass
    finally:
        _stop(holder)


def test_two_trains_into_one_folder_one_fails_clearly_nothing_mixed(imagefolder_root, tmp_path):
    run, go = tmp_path / "run", tmp_path / "go"
    seeds, processes = {}, {}
    for seed in (1, 2):
        argv = _train_args(run, imagefolder_root, "--seed", str(seed), epochs=4)
        log_file = tmp_path / f"seed{seed}.log"
        with log_file.open("w") as out:  # a file, not a pipe that could fill and block
            process = subprocess.Popen([sys.executable, "-c", RACE, str(go), *argv],
                                       stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        seeds[process.pid], processes[process.pid] = seed, (process, log_file)
    deadline = time.monotonic() + 300
    running = [process for process, _ in processes.values()]
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in running), "a process died while importing"
        time.sleep(0.1)  # until both have imported torch and Lightning
    go.touch()  # then start both commands at the same moment
    outputs = {}
    for pid, (process, log_file) in processes.items():
        process.wait(timeout=600)
        outputs[pid] = (log_file.read_text(), process.returncode)
    assert sorted(code for _, code in outputs.values()) == [0, 2], outputs
    winner = next(pid for pid, (_, code) in outputs.items() if code == 0)
    loser_err = next(text for text, code in outputs.values() if code == 2)
    assert "in use by another satcompress process" in loser_err
    assert f"pid {winner} " in loser_err
    _no_traceback(loser_err)
    # every file is the winner's: its seed, its best checkpoint's weights, one log, no -v1
    seed = seeds[winner]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
    assert json.loads((run / "model.json").read_text())["recipe"]["seed"] == seed
    assert _checkpoint_files(run) == ["best.ckpt", "last.ckpt", "last.ckpt.prev"]
    best = _weights_of(run / "checkpoints" / "best.ckpt")
    saved = load_file(str(run / "model.safetensors"))
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
    assert len(list((run / "logs").iterdir())) == 1
    assert not (run / HOLDER_FILE).exists()


# --- checkpoints and resume -----------------------------------------------------------------


def test_checkpoint_saves_are_atomic_and_keep_the_previous_last(tmp_path):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, last)
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, last)
    assert torch.equal(read_checkpoint(last)["state_dict"]["w"], torch.ones(3))
    assert torch.equal(read_checkpoint(tmp_path / "last.ckpt.prev")["state_dict"]["w"],
                       torch.zeros(3))  # fmt: skip

    class _Dies(AtomicCheckpointIO):
        def _write(self, checkpoint, handle):
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        _Dies().save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}}, last)
    assert torch.equal(read_checkpoint(last)["state_dict"]["w"], torch.ones(3)), "old one kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.prev"]
    io.save_checkpoint({"state_dict": {}}, tmp_path / "best.ckpt")
    assert not (tmp_path / "best.ckpt.prev").exists(), "only last.ckpt keeps its previous one"


@pytest.fixture
def trained_run(imagefolder_root, tmp_path):
    """A finished 2-epoch run: last.ckpt (epoch 2) and last.ckpt.prev (epoch 1)."""
    run = tmp_path / "run"
    assert main(_train_args(run, imagefolder_root)) == 0
    assert _checkpoint_files(run) == ["best.ckpt", "last.ckpt", "last.ckpt.prev"]
    return run


def test_resume_falls_back_to_the_previous_checkpoint_when_last_is_cut(
    trained_run, imagefolder_root, caplog
):
    last = trained_run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill during a plain write leaves
    with caplog.at_level(logging.WARNING):
        assert main([*_train_args(trained_run, imagefolder_root), "--resume"]) == 0
    assert f"{last} is damaged" in caplog.text
    assert "resuming from" in caplog.text and "last.ckpt.prev" in caplog.text
    assert _checkpoint_files(trained_run) == [
        "best.ckpt", "last.ckpt", "last.ckpt.bad", "last.ckpt.prev",
    ]  # fmt: skip
    assert read_checkpoint(last)["epoch"] == 1  # epoch 2 trained again, from epoch 1's state
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert len(summary["s_per_epoch"]) == 2


def test_resume_without_a_usable_checkpoint_says_what_to_do(trained_run, imagefolder_root, capsys):
    for name in ("last.ckpt", "last.ckpt.prev"):
        path = trained_run / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])
    code = main([*_train_args(trained_run, imagefolder_root), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert "satcompress: error: cannot resume" in err
    assert "last.ckpt is damaged" in err and "last.ckpt.prev is damaged" in err
    assert "without --resume" in err
    _no_traceback(err)


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_pickle_payload_without_running_it(
    trained_run, imagefolder_root, tmp_path, capsys
):
    marker = tmp_path / "payload-ran"
    last = trained_run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 1, "extra": _Payload(marker)}, last)
    (trained_run / "checkpoints" / "last.ckpt.prev").unlink()
    code = main([*_train_args(trained_run, imagefolder_root), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{last} was refused" in err and "not loaded" in err and "without --resume" in err
    _no_traceback(err)
    # Lightning's own load path (it may ask for weights_only=False) refuses it as well
    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(last, weights_only=False)
    assert not marker.exists(), "the payload never ran"


def test_kill_9_during_a_checkpoint_write_then_resume(imagefolder_root, tmp_path, capsys, caplog):
    run, paused = tmp_path / "run", tmp_path / "paused"
    argv = _train_args(run, imagefolder_root, epochs=4)
    # the 4th checkpoint save (epoch 2) writes half its bytes, then waits to be killed
    script = f"""
import io, sys, time, torch
from pathlib import Path
from satcompress.train.checkpoint_io import AtomicCheckpointIO
calls = []
write = AtomicCheckpointIO._write
def paused(self, checkpoint, handle):
    calls.append(1)
    if len(calls) < 4:
        return write(self, checkpoint, handle)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    handle.flush()
    Path({str(paused)!r}).touch()
    time.sleep(600)
AtomicCheckpointIO._write = paused
from satcompress.cli import main
sys.exit(main({argv!r}))
"""
    log_file = tmp_path / "killed.log"
    with log_file.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not paused.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert paused.exists(), log_file.read_text()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    ckpts = run / "checkpoints"
    assert [p.name for p in ckpts.glob(".*.tmp")], "the half-written file is a temporary one"
    in_place = [p for p in ckpts.iterdir() if not p.name.startswith(".")]
    assert "last.ckpt" in {p.name for p in in_place}
    for path in in_place:
        read_checkpoint(path)  # every checkpoint in place is complete
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--resume"]) == 0
    _no_traceback(capsys.readouterr().err)
    assert f"taking over the lock left by pid {process.pid}" in caplog.text
    assert "a checkpoint write an interrupted run left unfinished" in caplog.text
    assert not list(ckpts.glob(".*.tmp")), "the partial write was removed"
    assert len(json.loads((run / "train_summary.json").read_text())["s_per_epoch"]) == 4
    assert not (run / HOLDER_FILE).exists()


# --- Ctrl-C ---------------------------------------------------------------------------------


def _ctrl_c_in_epoch_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Press Ctrl-C as the second epoch starts (Lightning catches it, as it would a real one)."""
    start = trainer_module.ThroughputMonitor.on_train_epoch_start

    def ctrl_c_in_epoch_2(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt
        start(self, trainer, pl_module)

    monkeypatch.setattr(trainer_module.ThroughputMonitor, "on_train_epoch_start",
                        ctrl_c_in_epoch_2)  # fmt: skip


def test_ctrl_c_in_training_says_how_to_resume_and_resume_finishes(
    imagefolder_root, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    _ctrl_c_in_epoch_2(monkeypatch)
    # a shell's background job (nohup ... &) inherits SIGINT ignored: start from Python's own
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(_train_args(run, imagefolder_root, epochs=3)) == 130
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, inherited)
    err = capsys.readouterr().err
    last = run / "checkpoints" / "last.ckpt"
    assert f"interrupted; finished epochs are saved in {last}" in err
    assert "rerun the same command with --resume" in err
    assert restored is signal.default_int_handler, "Ctrl-C works again"
    assert not (run / HOLDER_FILE).exists()
    monkeypatch.undo()
    assert main([*_train_args(run, imagefolder_root, epochs=3), "--resume"]) == 0
    assert len(json.loads((run / "train_summary.json").read_text())["s_per_epoch"]) == 3


def test_ctrl_c_in_qat_says_how_to_resume_and_resume_finishes(
    imagefolder_root, tmp_path, capsys, monkeypatch
):
    source, run = tmp_path / "source", tmp_path / "qat"
    assert main(_train_args(source, imagefolder_root, epochs=1)) == 0
    qat = ["quantize", "--method", "qat", "--bits", "4", "--epochs", "3", "--checkpoint",
           str(source), "--run-dir", str(run), "--no-eval", "--batch-size", "8"]  # fmt: skip
    _ctrl_c_in_epoch_2(monkeypatch)
    assert main(qat) == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*qat, "--resume"]) == 0
    assert len(json.loads((run / "train_summary.json").read_text())["s_per_epoch"]) == 3
    assert (run / "model.satc").is_file()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["baic", "--checkpoint", "c", "--budget", "1MB"], "rerun the same command to continue"),
        (["prune", "--checkpoint", "c", "--ratio", "0.5"], "pruning does not resume"),
        (["quantize", "--method", "ptq", "--checkpoint", "c"], "rerun the same command to start"),
        (["quantize", "--method", "qat", "--checkpoint", "c"], "rerun the same command (without"),
        (["distill", "--teacher", "t"], "rerun the same command (without --resume)"),
    ],
)
def test_ctrl_c_advice_per_command(argv, expected, tmp_path):
    from satcompress.cli import build_parser

    args = build_parser().parse_args([*argv, "--run-dir", str(tmp_path / "run")])
    assert expected in how_to_continue(args)


@pytest.mark.slow
def test_ctrl_c_of_a_real_training_process(imagefolder_root, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "satcompress", *_train_args(run, imagefolder_root,
                                                                 epochs=500)]  # fmt: skip
    log_file = tmp_path / "interrupted.log"
    with log_file.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    last = run / "checkpoints" / "last.ckpt"
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    err = log_file.read_text()
    assert process.returncode == 130, err[-3000:]
    assert "rerun the same command with --resume" in err
    _no_traceback(err)


# --- datasets -------------------------------------------------------------------------------


def test_a_one_class_dataset_is_refused(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", classes=("cloud",), per_class=4)
    code = main(_train_args(tmp_path / "run", data))
    err = capsys.readouterr().err
    assert code == 2
    assert "1 class folder" in err and "at least two classes" in err
    _no_traceback(err)


def test_a_class_too_small_for_every_split_is_reported_with_its_count(tmp_path, caplog):
    data = make_imagefolder(tmp_path / "data", per_class=6)
    for image in sorted((data / "water").iterdir())[3:]:
        image.unlink()
    with caplog.at_level(logging.WARNING, logger="satcompress.data"):
        dataset = load_dataset("imagefolder", data, progress=False)
    assert "water: 3 images (2 train, 0 val, 1 test)" in caplog.text
    assert "needs 4 images" in caplog.text
    assert dataset.info()["classes_missing_from_splits"] == {
        "water": {"train": 2, "val": 0, "test": 1}
    }


def test_a_class_without_training_images_is_refused(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=3)
    splits = write_split_files(tmp_path / "splits", "mine", {
        "train": ["cloud/img_0.png", "field/img_0.png"],
        "val": ["cloud/img_1.png", "field/img_1.png", "water/img_0.png"],
        "test": ["cloud/img_2.png", "field/img_2.png", "water/img_1.png"],
    })  # fmt: skip
    with pytest.raises(DatasetError, match=r"water have no training image.*water: 2 images"):
        load_dataset("imagefolder", data, split_dir=splits["train"].parent, progress=False)


def test_how_to_continue_needs_a_handler():
    args = argparse.Namespace(handler=lambda a: 0)
    assert "nothing" in how_to_continue(args)


# -- atomic result files ------------------------------------------------------------------------

WRITER = """
import sys, time
from satcompress.utils.io import atomic_open
with atomic_open(sys.argv[1], "w") as handle:
    handle.write('{"rows": [1, 2, ')  # half a JSON document, then killed
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
    handle.write('3]}')
"""


def test_kill_9_during_a_result_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"rows": [1]}')
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads(path.read_text()) == {"rows": [1]}  # the old file, not half a new one
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "results.json"]
    assert all(name.endswith(".tmp") for name in leftovers)  # at most a stray temporary file


def test_atomic_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    from satcompress.utils.io import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        written = atomic_write_bytes(tmp_path / "model.satc", b"x")
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
