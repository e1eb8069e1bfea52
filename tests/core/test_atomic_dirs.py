"""Adapter directories, exports and training checkpoints are replaced as a whole: a kill at any moment leaves the
old or the new version (never a mix), leftovers of killed writes are removed by the next save, and every file gets
the permissions of the user's umask."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest
import torch
from model_cases import MLP
from peft import get_peft_model, get_peft_model_state_dict

from peft_inits import SVFitConfig
from peft_inits import checkpoint as ckpt
from peft_inits.atomic import atomic_write
from peft_inits.checkpoint import load_adapter, save_adapter
from peft_inits.export import export_peft_lora
from peft_inits.training import state
from peft_inits.training.rundir import RunDir

FILES = ["adapter_config.json", "adapter_model.safetensors"]


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def _adapter(r: int, gain: float):
    model = get_peft_model(_mlp(), SVFitConfig(r=r, target_modules=["fc1", "fc2"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pi_adapters" in name:
                p.mul_(gain)
    return model


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}


def _version(directory, versions: dict[str, dict[str, torch.Tensor]]) -> str:
    """Which saved version `directory` loads as (raises if it loads as neither)."""
    loaded = _state(load_adapter(_mlp(), directory))
    for name, expected in versions.items():
        if loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected):
            return name
    raise AssertionError(f"{directory} loads as a mix of versions")


def _leftovers(directory) -> list[str]:
    siblings = [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")]
    inside = [p.name for p in directory.iterdir() if p.name.startswith(".")] if directory.is_dir() else []
    return siblings + inside


def test_save_replaces_the_directory_as_a_whole_and_keeps_the_users_files(tmp_path):
    path = save_adapter(_adapter(2, 1.5), tmp_path / "adapter")
    (path / "meta.json").write_text('{"label": "a"}')
    inode = path.stat().st_ino
    new = _adapter(3, 0.5)
    save_adapter(new, path)
    assert path.stat().st_ino != inode  # a new directory was swapped in
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, "meta.json"])
    assert json.loads((path / "adapter_config.json").read_text())["r"] == 3
    assert (path / "meta.json").read_text() == '{"label": "a"}'
    assert _version(path, {"new": _state(new)}) == "new"
    assert _leftovers(path) == []


def test_a_failing_save_leaves_the_previous_version_untouched(tmp_path, monkeypatch):
    old = _adapter(2, 1.5)
    path = save_adapter(old, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(_adapter(3, 0.5), path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _leftovers(path) == []


def test_a_swap_interrupted_between_its_renames_is_restored_on_load(tmp_path):
    old = _adapter(2, 1.5)
    path = save_adapter(old, tmp_path / "adapter")
    # the state a kill between "current → .old" and ".tmp → current" leaves: no adapter, a set-aside old version,
    # a complete new version still under its temp name
    os.rename(path, tmp_path / ".adapter.old-1a2b3c4d")
    save_adapter(_adapter(3, 0.5), tmp_path / "staging")
    os.rename(tmp_path / "staging", tmp_path / ".adapter.tmp-x1y2z3")
    with pytest.warns(UserWarning, match=r"interrupted while swapping versions; restored .*\.adapter\.old-1a2b3c4d"):
        assert _version(path, {"old": _state(old)}) == "old"
    new = _adapter(3, 0.7)
    save_adapter(new, path)
    assert _version(path, {"new": _state(new)}) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_several_set_aside_versions_are_not_guessed_between(tmp_path):
    path = save_adapter(_adapter(2, 1.5), tmp_path / "adapter")
    save_adapter(_adapter(3, 0.5), tmp_path / "other")
    os.rename(path, tmp_path / ".adapter.old-00000001")
    os.rename(tmp_path / "other", tmp_path / ".adapter.old-00000002")
    with pytest.raises(ValueError, match=r"adapter is missing and several set-aside versions exist .*rename one"):
        load_adapter(_mlp(), path)
    assert len(list(tmp_path.iterdir())) == 2  # nothing deleted


def test_stale_temp_files_and_dirs_are_removed_by_the_next_save(tmp_path):
    model = _adapter(2, 1.5)
    path = save_adapter(model, tmp_path / "adapter")
    (path / ".adapter_model.safetensors.k2j4h5.tmp").write_bytes(b"half a file")
    (tmp_path / ".adapter.tmp-abc123").mkdir()
    (tmp_path / ".adapter.old-deadbeef").mkdir()
    (tmp_path / ".results.json.q1w2e3.tmp").write_text("{")
    save_adapter(model, path)
    atomic_write(tmp_path / "results.json", lambda tmp: Path(tmp).write_text("{}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "results.json"]
    assert sorted(p.name for p in path.iterdir()) == FILES


def test_saving_through_a_symlinked_directory_replaces_its_target(tmp_path):
    real = save_adapter(_adapter(2, 1.5), tmp_path / "store" / "adapter")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    new = _adapter(3, 0.5)
    save_adapter(new, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == real
    assert _version(tmp_path / "link", {"new": _state(new)}) == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["adapter"]


def test_a_file_in_the_way_is_not_replaced_by_an_adapter_directory(tmp_path):
    (tmp_path / "adapter").write_text("my notes")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory; refusing to replace it"):
        save_adapter(_adapter(2, 1.5), tmp_path / "adapter")
    assert (tmp_path / "adapter").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_export_replaces_its_directory_as_a_whole(tmp_path):
    export_peft_lora(_adapter(3, 1.5), tmp_path / "export")
    (tmp_path / "export" / ".adapter_config.json.zzz.tmp").write_text("x")
    export_peft_lora(_adapter(2, 0.5), tmp_path / "export")
    config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    weights = ckpt.load_tensors(tmp_path / "export" / "adapter_model.safetensors")
    assert config["r"] == 2 and {t.shape[0] for k, t in weights.items() if "lora_A" in k} == {2}
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted([*FILES, "README.md"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def _kill_loop(tmp_path, work, check, kills: int, seed: int) -> list[str]:
    """Fork a child that runs `work()` forever, SIGKILL it after a random delay, then `check()`; `kills` times."""
    rng = random.Random(seed)
    seen = []
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            try:
                work()
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.01, 0.12))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), "the writer ended before it was killed"
        seen.append(check())
    return seen


def test_kill_during_repeated_adapter_saves_leaves_old_or_new_never_a_mix(tmp_path):
    """14 SIGKILLs at random moments while a child alternates saving two adapters of different rank."""
    a, b = _adapter(2, 1.5), _adapter(3, 0.5)
    versions = {"a": _state(a), "b": _state(b)}
    path = save_adapter(a, tmp_path / "adapter")

    def work():
        while True:
            save_adapter(b, path)
            save_adapter(a, path)

    def check():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a kill mid-swap is restored with a warning
            return _version(path, versions)

    seen = _kill_loop(tmp_path, work, check, kills=14, seed=0)
    assert set(seen) <= {"a", "b"} and len(seen) == 14
    save_adapter(a, path)
    assert _leftovers(path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert _version(path, versions) == "a"


def test_kill_during_repeated_checkpoints_always_resumes_from_a_complete_one(tmp_path):
    """10 SIGKILLs while a child writes checkpoints of increasing step whose tensors equal the step number."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()

    def save(step):
        weights = {"w": torch.full((64, 64), float(step))}
        state.save(tmp_path, step=step, model_state=weights, optimizer=optimizer, scheduler=scheduler, scaler=None,
                   metrics_bytes=step, elapsed_s=0.0)  # fmt: skip

    save(1)
    counter = {"next": 2}

    def work():
        step = counter["next"]
        while True:
            save(step)
            step += 1

    def check():
        path = state.latest(tmp_path)
        loaded = state.load(path)
        assert torch.equal(loaded.model["w"], torch.full((64, 64), float(loaded.step))) and loaded.step >= 1
        counter["next"] = loaded.step + 1000  # the next child writes steps the killed one never reached
        return path.name

    seen = _kill_loop(tmp_path, work, check, kills=10, seed=1)
    assert len(seen) == 10
    save(99999)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00099999"]
    assert sorted(p.name for p in (root / "step-00099999").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "rng-0.safetensors", "state.json"
    ]  # fmt: skip


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_adapter_export_and_checkpoint_files_honour_the_umask(tmp_path, umask_027):
    model = _adapter(2, 1.5)
    save_adapter(model, tmp_path / "adapter")
    save_adapter(model, tmp_path / "adapter")  # a replacement too
    export_peft_lora(model, tmp_path / "export")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state.save(tmp_path / "run", step=1, model_state=_state(model), optimizer=optimizer, scheduler=scheduler,
               scaler=None, metrics_bytes=0, elapsed_s=0.0)  # fmt: skip
    modes = _modes(tmp_path)
    files = {k: m for k, m in modes.items() if (tmp_path / k).is_file()}
    dirs = {k: m for k, m in modes.items() if (tmp_path / k).is_dir() and k != "."}
    assert files and set(files.values()) == {0o640}, files
    assert dirs and set(dirs.values()) == {0o750}, dirs


def test_run_directory_files_honour_the_umask(tmp_path, umask_027):
    run = RunDir(tmp_path / "run")
    run.prepare({"a": 1}, resume=False, overwrite=False)
    run.log({"type": "train", "step": 1})
    run.write_json("summary.json", {"ok": True})
    modes = _modes(run.path)
    assert modes == {".": 0o750, ".lock": 0o640, ".lock-owner.json": 0o640, "config.json": 0o640,
                     "metrics.jsonl": 0o640, "summary.json": 0o640}  # fmt: skip
    run.unlock()
