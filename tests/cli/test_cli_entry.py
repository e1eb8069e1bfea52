"""The `peft-inits` console command lists every runner and each one's --help works (CI also runs them from the
installed wheel, tests/helpers/wheel_smoke.py)."""

from __future__ import annotations

import pytest

from peft_inits import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in cli.COMMANDS)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_command_has_working_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_an_unknown_command_is_refused_with_the_list(capsys):
    assert cli.main(["train"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'train'" in error and "compare" in error


def test_python_dash_m_runs_the_same_command():
    """`python -m peft_inits.cli` is the console script without it (a checkout, a notebook's shell)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "peft_inits.cli", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: peft-inits demo")


@pytest.mark.parametrize("command", ["train", "sample", "ablation", "adapter-dataset", "descriptors", "pretrain"])
def test_sd_subcommands_have_working_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sd", command, "--help"])
    assert exit_.value.code == 0
    assert f"peft-inits sd {command}" in capsys.readouterr().out
