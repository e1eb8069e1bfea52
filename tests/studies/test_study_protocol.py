"""The convergence study: its statistics (closed forms), the protocol on toy tasks with known answers, selection on
validation only, resume, and pairing (same seed → same data order and head init) on the real text task."""

from __future__ import annotations

import json
import math

import pytest
import torch

from peft_inits.studies import protocol
from peft_inits.studies.convergence import StudySettings, run_study
from peft_inits.studies.report import display_name
from peft_inits.studies.tasks import CI_BUDGET, StudyTask, text_task
from peft_inits.training import run as training_runner
from peft_inits.training.rundir import RunDir
from peft_inits.training.sampler import StepSampler

pytest_plugins = ("runner_fixtures",)


# ------------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_closed_forms(p):
    assert protocol.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert protocol.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert protocol.t_quantile(1 - p, 7) == pytest.approx(-protocol.t_quantile(p, 7), rel=1e-12)


def test_t_quantile_tends_to_the_normal_and_matches_tables():
    assert protocol.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)  # standard tables
    assert protocol.t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    assert protocol.t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)


def test_mean_ci_and_paired_difference():
    estimate = protocol.mean_ci([1.0, 2.0, 3.0])
    assert estimate.mean == 2.0 and estimate.sd == 1.0
    assert estimate.half_width == pytest.approx(protocol.t_quantile(0.975, 2) / math.sqrt(3))
    assert math.isinf(protocol.mean_ci([0.5]).half_width)
    diff = protocol.paired_difference({0: 0.7, 1: 0.8, 2: 0.75}, {0: 0.6, 1: 0.7, 2: 0.65, 3: 0.1})
    assert diff.n == 3 and diff.mean == pytest.approx(0.1) and diff.half_width == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="no common seed"):
        protocol.paired_difference({0: 1.0}, {1: 1.0})


def test_grid_selection_and_widening():
    assert protocol.lr_grid(3e-3) == [0.001, 0.003, 0.009, 0.03]
    assert protocol.select_lr({0.001: [0.5], 0.003: [0.7, 0.6], 0.009: [0.64]}) == 0.003
    assert protocol.select_lr({0.001: [0.5], 0.003: [0.4]}, greater_is_better=False) == 0.003
    assert protocol.widen([0.001, 0.003, 0.009], 0.009) == 0.027
    assert protocol.widen([0.001, 0.003, 0.009], 0.001) == pytest.approx(0.0003333)
    assert protocol.widen([0.001, 0.003, 0.009], 0.003) is None


def test_convergence_measures():
    records = [{"type": "eval", "step": s, "accuracy": a} for s, a in ((0, 0.2), (10, 0.6), (20, 0.8))]
    records.insert(1, {"type": "train", "step": 1, "loss": 1.0})
    assert protocol.steps_to_threshold(records, "accuracy", 0.6) == 10
    assert protocol.steps_to_threshold(records, "accuracy", 0.9) is None
    assert protocol.steps_to_threshold(records, "accuracy", 0.5, greater_is_better=False) == 0
    assert protocol.curve_area(records, "accuracy") == pytest.approx((10 * 0.4 + 10 * 0.7) / 20)


def test_verdict_words():
    same = protocol.Estimate(-0.004, 0.009, 5, 0.007)
    assert protocol.verdict("SVFit", "LoRA", "text", same) == (
        "SVFit vs LoRA on text: −0.4 ± 0.9 points (no difference shown; 5 seeds)"
    )
    worse = protocol.Estimate(-0.03, 0.01, 5, 0.008)
    assert protocol.verdict("SVFit", "LoRA", "text", worse).endswith("(LoRA better; 5 seeds)")
    lower_loss = protocol.Estimate(-0.03, 0.01, 5, 0.008)
    assert "(SVFit better" in protocol.verdict("SVFit", "LoRA", "sd", lower_loss, greater_is_better=False)


# ------------------------------------------------------------------------------------------------ toy tasks


def toy_task(offsets: dict[str, float], calls: list, *, test_peak: float | None = None) -> StudyTask:
    """Accuracy = 0.7 + offset(method) − (log10(lr / 3e-3))² / 10 + seed noise, one eval every 10 of 30 steps.

    The validation metric peaks at the default rate; `test_peak` moves the test metric's peak to another rate (a
    selection that read the test split would pick it). Identical seeds give identical noise across methods.
    """

    def value(method: str, lr: float, seed: int, peak: float) -> float:
        noise = 0.01 * math.sin(7.0 * seed + 1.0)
        return 0.7 + offsets[method] - math.log10(lr / peak) ** 2 / 10 + noise

    def run(variant, lr, seed, out):
        run_dir = RunDir(out)
        if (out / "summary.json").is_file():
            return json.loads((out / "summary.json").read_text())
        calls.append((variant.label, lr, seed))
        method = variant.adapter.method
        final = value(method, lr, seed, 3e-3)
        with run_dir.writer():
            run_dir.prepare({"lr": lr, "seed": seed}, resume=False, overwrite=False)
            for step in (10, 20, 30):
                run_dir.log({"type": "eval", "step": step, "accuracy": final - (30 - step) / 100})
        test = value(method, lr, seed, test_peak or 3e-3) + 0.01
        summary = {"final": {"accuracy": final}, "test": {"accuracy": test}, "adapter_params": 10,
                   "weights_bytes": 2048, "median_step_time_s": 0.01, "peak_mem_mb": 1.0}  # fmt: skip
        run_dir.write_json("summary.json", summary)
        return summary

    return StudyTask("toy", "known answer", "classifier", CI_BUDGET, run, "accuracy", True, "accuracy")


def toy_settings(**kwargs) -> StudySettings:
    kwargs.setdefault("methods", ["lora", "svfit", "pissa"])
    kwargs.setdefault("progress", False)
    return StudySettings(seeds=4, **kwargs)


def test_protocol_tells_apart_what_differs_and_not_what_does_not(tmp_path):
    calls: list = []
    result = run_study(toy_settings(), [toy_task({"lora": 0.0, "svfit": -0.05, "pissa": 0.0}, calls)], tmp_path)
    rows = result["results"]["toy"]["rows"]
    assert rows["lora"]["selection"]["selected_lr"] == 3e-3
    # svfit's default is 3e-2: its grid's best (0.01) is an edge, so the grid widens down twice and finds the peak
    svfit = rows["svfit"]["selection"]
    assert svfit["widened"] == [0.003333, 0.001111] and svfit["selected_lr"] == 0.003333 and not svfit["on_edge"]
    lost = math.log10(0.003333 / 3e-3) ** 2 / 10  # what 0.003333 loses against the exact peak
    assert rows["svfit"]["paired_difference"]["mean"] == pytest.approx(-0.05 - lost)
    assert rows["svfit"]["paired_difference"]["half_width"] == pytest.approx(0.0, abs=1e-9)
    verdicts = result["results"]["toy"]["verdicts"]
    assert verdicts[0] == "SVFit vs LoRA on toy: −5.0 ± 0.0 points (LoRA better; 4 seeds)"
    assert verdicts[1] == "PiSSA vs LoRA on toy: 0.0 ± 0.0 points (no difference shown; 4 seeds)"
    # threshold 95 % of LoRA's mean best ≈ 0.665: LoRA's last eval reaches it, SVFit (≈ 0.65) never does
    assert result["results"]["toy"]["threshold"] == pytest.approx(0.95 * 0.7, abs=0.01)
    assert rows["lora"]["steps_to_threshold"] == [30] * 4 and rows["svfit"]["steps_to_threshold"] == [None] * 4
    # 4 grid rates (seed 0) + 3 more seeds per method, and svfit's 2 widened rates
    assert len(calls) == 3 * (4 + 3) + 2 == result["executed_runs"]
    assert (tmp_path / "toy.md").read_text().count("| ") > 10 and (tmp_path / "toy_curves.png").stat().st_size > 5000


def test_selection_reads_validation_only(tmp_path):
    calls: list = []
    task = toy_task({"lora": 0.0, "svfit": 0.0, "pissa": 0.0}, calls, test_peak=3e-2)
    result = run_study(toy_settings(methods=["lora"]), [task], tmp_path)
    selection = result["results"]["toy"]["rows"]["lora"]["selection"]
    assert selection["selected_lr"] == 3e-3  # the test metric would have picked 3e-2
    tests = {run["lr"]: run["test"] for run in result["runs"] if run["seed"] == 0}
    assert max(tests, key=tests.get) == 0.03


def test_edge_pick_widens_and_says_so(tmp_path):
    calls: list = []
    task = toy_task({"lora": 0.0}, calls)
    settings = toy_settings(methods=["lora"], factors=(3.0, 10.0))  # the peak (×1) lies below the grid
    rows = run_study(settings, [task], tmp_path)["results"]["toy"]["rows"]
    selection = rows["lora"]["selection"]
    assert selection["grid"] == [0.009, 0.03] and selection["widened"] == [0.003, 0.001]
    assert selection["selected_lr"] == 0.003 and not selection["on_edge"]


def test_tasks_run_in_separate_calls_share_one_study_json(tmp_path):
    first, second = toy_task({"lora": 0.0}, []), toy_task({"lora": 0.0}, [])
    second.name = "toy2"
    run_study(toy_settings(methods=["lora"]), [first], tmp_path)
    again = run_study(toy_settings(methods=["lora"]), [second], tmp_path)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert set(saved["results"]) == {"toy", "toy2"} and saved == json.loads(json.dumps(again, default=str))
    assert sorted({r["task"] for r in saved["runs"]}) == ["toy", "toy2"] and len(saved["runs"]) == 2 * 7


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="not adapter methods"):
        StudySettings(methods=["lora", "head"])
    with pytest.raises(ValueError, match="reference method"):
        StudySettings(methods=["svfit"])
    with pytest.raises(ValueError, match="selection seeds"):
        StudySettings(methods=["lora"], seeds=2, selection_seeds=3)
    with pytest.raises(ValueError, match="not among the methods"):
        StudySettings(methods=["lora"], extra=["loldu.r=8"]).variants()
    labels = [display_name(v) for v in StudySettings(methods=["lora", "loldu"], extra=["loldu.r=8"]).variants()]
    assert labels == ["LoRA", "LoLDU", "LoLDU r=8"]


# ------------------------------------------------------------------------------------------------ the real text task


@pytest.fixture
def tiny_text(tiny_encoder, sentiment_csv, cache):
    return text_task(ci=True, model=str(tiny_encoder), data=str(sentiment_csv), cache_dir=str(cache),
                     sizes={"train_size": 30, "eval_size": 15, "test_size": 15})  # fmt: skip


def test_text_study_resumes_without_training_again(tiny_text, tmp_path):
    settings = StudySettings(methods=["lora", "svfit"], seeds=2, factors=(1.0, 3.0), max_widen=0, progress=False)
    first = run_study(settings, [tiny_text], tmp_path)
    assert first["executed_runs"] == 2 * (2 + 1) and first["reused_runs"] == 0
    again = run_study(settings, [tiny_text], tmp_path)
    assert again["executed_runs"] == 0 and again["reused_runs"] == 6
    assert again["results"] == first["results"]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert len(saved["runs"]) == 6 and {r["phase"] for r in saved["runs"]} == {"grid", "seeds"}
    assert all(r["adapter_params"] and r["weights_bytes"] and r["median_step_time_s"] for r in saved["runs"])
    assert "SVFit vs LoRA on text" in (tmp_path / "text.md").read_text()


def test_paired_runs_share_data_order_and_head_init(tiny_text, tmp_path, monkeypatch):
    batches: dict[tuple[str, int], list] = {}
    heads: dict[tuple[str, int], torch.Tensor] = {}
    current: list = []
    original_indices, original_prepare = StepSampler.indices, training_runner.prepare

    def indices(self, step):
        batches.setdefault(current[-1], []).append(original_indices(self, step))
        return batches[current[-1]][-1]

    def prepare(model, settings):
        prepared = original_prepare(model, settings)
        heads[current[-1]] = torch.cat([p.detach().flatten().clone() for p in prepared.head_params])
        return prepared

    monkeypatch.setattr(StepSampler, "indices", indices)
    monkeypatch.setattr(training_runner, "prepare", prepare)
    variants = StudySettings(methods=["lora", "svfit"], progress=False).variants()
    for variant in variants:
        for seed in (1, 2):
            current.append((variant.label, seed))
            tiny_text.run(variant, 1e-3, seed, tmp_path / f"{variant.slug}-{seed}")
    for seed in (1, 2):
        assert batches[("lora", seed)] == batches[("svfit", seed)]
        assert torch.equal(heads[("lora", seed)], heads[("svfit", seed)])
    assert batches[("lora", 1)] != batches[("lora", 2)]
    assert not torch.equal(heads[("lora", 1)], heads[("lora", 2)])
    config = json.loads((tmp_path / "svfit-2" / "config.json").read_text())
    assert config["train"]["seed"] == 2 and config["adapter"]["init_seed"] == 2


# ------------------------------------------------------------------------------------------------ compare --seeds


def test_compare_seeds_adds_a_ci_column_and_keeps_the_default_table(tiny_encoder, sentiment_csv, cache, tmp_path):
    from peft_inits.cli import compare

    base = ["--model", str(tiny_encoder), "--data", str(sentiment_csv), "--cache-dir", str(cache), "--steps", "2",
            "--batch-size", "8", "--methods", "lora,svfit", "--timing-steps", "0", "--no-progress"]  # fmt: skip
    plain = compare.main(compare.parse_args([*base, "--output-dir", str(tmp_path / "plain")]))
    seeded = compare.main(compare.parse_args([*base, "--output-dir", str(tmp_path / "seeded"), "--seeds", "3"]))
    assert all("seeds" not in row and "test_ci" not in row for row in plain["rows"])
    assert "test ± 95% CI" not in (tmp_path / "plain" / "table.md").read_text()
    for row, own in zip(seeded["rows"], plain["rows"], strict=True):
        assert {k: v for k, v in row.items() if k not in ("seeds", "test_ci")} == own  # seed 0 is the plain run
        assert row["seeds"] == "3"
    tests = [
        json.loads((tmp_path / "seeded" / name / "summary.json").read_text())["test"]["accuracy"]
        for name in ("svfit", "svfit-seed+1", "svfit-seed+2")
    ]
    estimate = protocol.mean_ci(tests)
    assert seeded["rows"][1]["test_ci"] == f"{estimate.mean:.4f} ± {estimate.half_width:.4f}"
    config = json.loads((tmp_path / "seeded" / "lora-seed+2" / "config.json").read_text())
    assert config["train"]["seed"] == 2 and config["adapter"]["init_seed"] == 2
    assert "test ± 95% CI" in (tmp_path / "seeded" / "table.md").read_text()
    with pytest.raises(ValueError, match="--seeds must be"):
        compare.main(compare.parse_args([*base, "--output-dir", str(tmp_path / "bad"), "--seeds", "0"]))


def test_study_command_defaults_and_ci_size():
    from peft_inits.cli.study import parse_args

    full = parse_args(["--output-dir", "x"])
    assert (full.seeds, full.factors, full.max_widen, full.tasks) == (5, list(protocol.GRID_FACTORS), 2, ["text"])
    ci = parse_args(["--ci", "--output-dir", "x", "--seeds", "3"])
    assert (ci.seeds, ci.factors, ci.max_widen) == (3, [1.0, 3.0], 0)  # flags win over the CI defaults
    with pytest.raises(SystemExit):
        parse_args(["--methods", "lora,nope", "--output-dir", "x"])


def test_resume_accepts_the_config_it_wrote_with_paths_in_it(tmp_path):
    from pathlib import Path

    config = {"model": Path("/models/minilm"), "sizes": {"train": 3}}
    run = RunDir(tmp_path / "run")
    with run.writer():
        assert run.prepare(config, resume=True, overwrite=False) is False
    with run.writer():  # what `--resume` of a default-model encoder run does: the same config, a Path inside
        assert run.prepare(config, resume=True, overwrite=False) is True
    with run.writer(), pytest.raises(ValueError, match="other settings"):
        run.prepare({**config, "model": Path("/models/other")}, resume=True, overwrite=False)


def test_bring_your_own_flags_reach_the_tasks(monkeypatch):
    from peft_inits.cli import study as command
    from peft_inits.studies import tasks

    seen = {}
    monkeypatch.setitem(tasks.TASKS, "text", lambda **kw: seen.setdefault("text", kw))
    monkeypatch.setitem(tasks.TASKS, "vision", lambda **kw: seen.setdefault("vision", kw))
    monkeypatch.setattr(command, "run_study", lambda settings, built, out: {"results": {}})
    args = command.parse_args([
        "--tasks", "text,vision", "--output-dir", "x", "--model", "/m/roberta-base", "--data", "/d/glue",
        "--text-task", "sst2", "--test-size", "all", "--eval-size", "872",
        "--vision-model", "timm:vit_base_patch16_224", "--vision-data", "/d/vtab",
        "--steps", "1000", "--batch-size", "32",
    ])  # fmt: skip
    with pytest.raises(AttributeError):  # the stub tasks are plain dicts: what reached them is what is checked
        command.main(args)
    text, vision = seen["text"], seen["vision"]
    assert (text["model"], text["data"], text["glue_task"]) == ("/m/roberta-base", "/d/glue", "sst2")
    assert text["sizes"] == {"train_size": 4000, "eval_size": 872, "test_size": None}
    assert (text["budget"].steps, text["budget"].batch_size, text["budget"].eval_every) == (1000, 32, 40)
    assert (vision["model"], vision["data"], vision["budget"].steps) == ("timm:vit_base_patch16_224", "/d/vtab", 1000)
    with pytest.raises(SystemExit):
        command.parse_args(["--output-dir", "x", "--test-size", "many"])
