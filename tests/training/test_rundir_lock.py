"""One writer per run directory: a second writer (fresh, --resume, --overwrite) is refused with a clear error, a lock
left by a dead process is taken over with a warning, metrics.jsonl never interleaves, and a run holds its lock for
its whole lifetime (released on errors too)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import stat
import threading
import time

import pytest
from runner_helpers import Crash, crash_at

from peft_inits.atomic import umask
from peft_inits.cli import encoder
from peft_inits.cli.args import run_script
from peft_inits.training import run as runner
from peft_inits.training.rundir import LOCK_NAME, OWNER_NAME, RunDir, RunDirBusy, StaleLockWarning, read_records

pytest_plugins = ("runner_fixtures",)

CONFIG = {"model": "tiny", "train": {"steps": 3}}
HOST = socket.gethostname()
FORK = multiprocessing.get_context("fork")


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    first = RunDir(tmp_path / "run")
    first.prepare(CONFIG, resume=False, overwrite=False)
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(RunDirBusy, match=rf"run is in use by another run: process {os.getpid()} on {HOST}"):
            RunDir(tmp_path / "run").prepare(CONFIG, resume=resume, overwrite=overwrite)
    assert json.loads((tmp_path / "run" / OWNER_NAME).read_text())["pid"] == os.getpid()
    first.unlock()
    assert not (tmp_path / "run" / OWNER_NAME).exists()
    second = RunDir(tmp_path / "run")
    assert second.prepare(CONFIG, resume=True, overwrite=False) is True  # free again once released
    second.unlock()


def test_metrics_cannot_be_written_without_the_lock(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"cannot append to metrics\.jsonl in .* without its writer lock"):
        run.log({"step": 1})
    with pytest.raises(RuntimeError, match=r"cannot truncate metrics\.jsonl"):
        run.truncate_metrics(0)


def test_the_lock_belongs_to_the_process_not_the_thread(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare(CONFIG, resume=False, overwrite=False)
    worker = threading.Thread(target=run.log, args=({"type": "train", "step": 1},))
    worker.start()
    worker.join()
    assert read_records(run.metrics_path) == [{"type": "train", "step": 1}]
    run.unlock()


def test_damaged_run_files_get_errors_naming_them(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare(CONFIG, resume=False, overwrite=False)
    run.log({"type": "train", "step": 1})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"type": "tra\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is not a JSON record"):
        run.records()
    (run.path / "config.json").write_text("[1]")
    run.unlock()
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object"):
        RunDir(run.path).prepare(CONFIG, resume=True, overwrite=False)
    assert RunDir(run.path).lock().owner()["pid"] == os.getpid()  # the refused start released the lock


def test_overwrite_keeps_the_lock_file_it_holds(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare(CONFIG, resume=False, overwrite=False)
    run.log({"type": "train", "step": 1})
    (run.path / "weights").mkdir()
    run.unlock()
    again = RunDir(tmp_path / "run")
    assert again.prepare({**CONFIG, "seed": 2}, resume=False, overwrite=True) is False
    assert sorted(p.name for p in again.path.iterdir()) == sorted([LOCK_NAME, OWNER_NAME, "config.json"])
    with pytest.raises(RunDirBusy):
        RunDir(tmp_path / "run").lock()  # the lock survived the overwrite
    again.unlock()


def _writer(path, mode, barrier, refused, results, records):
    run = RunDir(path)
    barrier.wait()
    try:
        run.prepare(CONFIG, resume=mode == "resume", overwrite=mode == "overwrite")
    except RunDirBusy as exc:
        results.put(("refused", os.getpid(), str(exc)))
        refused.set()
        return
    results.put(("ok", os.getpid(), ""))
    for step in range(1, records + 1):
        run.log({"type": "train", "step": step, "pid": os.getpid()})
        time.sleep(0.002)
    refused.wait(30)  # hold on until the other one has tried, however late the scheduler starts it
    run.unlock()


@pytest.mark.parametrize("mode", ["fresh", "resume", "overwrite"])
def test_two_processes_starting_on_one_run_directory_one_wins(tmp_path, mode):
    path = tmp_path / "run"
    if mode != "fresh":
        existing = RunDir(path)
        existing.prepare(CONFIG, resume=False, overwrite=False)
        existing.unlock()
    barrier, refused, results = FORK.Barrier(2), FORK.Event(), FORK.Queue()
    writers = [FORK.Process(target=_writer, args=(path, mode, barrier, refused, results, 200)) for _ in range(2)]
    for writer in writers:
        writer.start()
    outcomes = sorted(results.get(timeout=60) for _ in writers)
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    (ok, winner, _), (refused, _, message) = outcomes
    assert (ok, refused) == ("ok", "refused")
    assert f"is in use by another run: process {winner} on {HOST}" in message
    assert "choose another --output-dir" in message
    records = read_records(path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 201))
    assert {r["pid"] for r in records} == {winner}


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    path = tmp_path / "run"
    pid = os.fork()
    if pid == 0:
        try:
            RunDir(path).prepare(CONFIG, resume=False, overwrite=False)
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert json.loads((path / OWNER_NAME).read_text())["pid"] == pid  # its record is still there
    run = RunDir(path)
    with pytest.warns(StaleLockWarning, match=rf"taking over the lock left by process {pid} on {HOST} .*died without"):
        assert run.prepare(CONFIG, resume=True, overwrite=False) is True
    assert run.owner()["pid"] == os.getpid()
    run.unlock()


def _args(tiny_encoder, data, out, cache):
    return ["--model", str(tiny_encoder), "--data", str(data), "--output-dir", str(out), "--cache-dir", str(cache),
            "--batch-size", "8", "--eval-every", "2", "--eval-batch-size", "16", "--no-progress", "--steps", "4",
            "--save-every", "2"]  # fmt: skip


def test_a_run_holds_its_lock_for_its_lifetime_and_releases_it_on_errors(
    tiny_encoder, sentiment_csv, cache, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    argv = _args(tiny_encoder, sentiment_csv, out, cache)
    checks = []
    original = runner.train

    def train_while_checking(prepared, task, settings, run, **kwargs):
        with pytest.raises(RunDirBusy, match=rf"is in use by another run: process {os.getpid()}"):
            RunDir(out).prepare({}, resume=True, overwrite=False)
        checks.append(run.path)
        return original(prepared, task, settings, run, **kwargs)

    monkeypatch.setattr(runner, "train", train_while_checking)
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 3)
        encoder.main(encoder.parse_args(argv))
    assert not (out / OWNER_NAME).exists()  # released although the run died
    summary = encoder.main(encoder.parse_args([*argv, "--resume"]))
    assert summary["resumed_from"] == 2 and checks == [out, out]
    assert [r["step"] for r in read_records(out / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    RunDir(out).lock().unlock()  # free after a clean finish
    mask = umask()  # every file of the run (JSON, JSONL, weights, checkpoints, PNG) gets the umask's permissions
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert {"summary.json", "weights/adapter_model.safetensors", "loss.png"} <= set(modes)
    assert any(name.endswith("rng-0.safetensors") for name in modes)
    expected = {name: (0o777 if (out / name).is_dir() else 0o666) & ~mask for name in modes}
    assert modes == expected


def test_a_second_run_script_on_a_busy_directory_ends_with_the_message(tiny_encoder, sentiment_csv, cache, tmp_path):
    out = tmp_path / "run"
    holder = RunDir(out).lock()
    pid = os.fork()
    if pid == 0:  # another process tries to start a run there
        code = 3
        try:
            run_script(encoder.main, encoder.parse_args, _args(tiny_encoder, sentiment_csv, out, cache))
        except SystemExit as exc:
            code = 0 if "is in use by another run" in str(exc) and str(exc).startswith("error: ") else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    holder.unlock()
    assert os.WEXITSTATUS(status) == 0
    assert not (out / "metrics.jsonl").exists()
