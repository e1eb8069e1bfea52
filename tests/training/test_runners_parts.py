"""The training machinery in isolation: data order, checkpoint round trips, schedules, metrics, splits, loaders."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from peft_inits.cli import encoder
from peft_inits.cli.args import run_script
from peft_inits.training import rng, state
from peft_inits.training.data.local_text import load_local
from peft_inits.training.data.splits import stratified_split, stratified_subsample
from peft_inits.training.metrics import classification_metrics, regression_metrics
from peft_inits.training.optim import linear_schedule
from peft_inits.training.sampler import StepSampler
from peft_inits.training.settings import AdapterSettings, TrainSettings, parse_rank

pytest_plugins = ("runner_fixtures",)


def test_sampler_is_a_function_of_the_step_and_shards_cover_the_global_batch():
    a, b = StepSampler(50, 4, seed=3), StepSampler(50, 4, seed=3)
    assert [a.indices(s) for s in range(30)] == [b.indices(s) for s in reversed(range(30))][::-1]
    epoch = [i for s in range(a.steps_per_epoch) for i in a.indices(s)]
    assert len(set(epoch)) == len(epoch) == 48  # no repeats inside an epoch, tail dropped
    assert a.indices(0) != a.indices(a.steps_per_epoch)  # a new permutation per epoch
    shards = [StepSampler(50, 2, seed=3, rank=r, world=2).indices(5) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(a.indices(5))
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepSampler(3, 4, seed=0)


def test_rng_capture_restore_round_trip():
    tensors, meta = rng.capture()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    rng.restore(tensors, meta)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "role": "adapter"}, {"params": [model.bias]}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, 2, 10))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    state.save(tmp_path, step=3, model_state=model.state_dict(), optimizer=optimizer, scheduler=scheduler,
               scaler=None, metrics_bytes=17, elapsed_s=1.5)  # fmt: skip
    state.save(tmp_path, step=4, model_state=model.state_dict(), optimizer=optimizer, scheduler=scheduler,
               scaler=None, metrics_bytes=19, elapsed_s=2.0)  # fmt: skip
    path = state.latest(tmp_path)
    assert path.name == "step-00000004" and not (tmp_path / "checkpoints" / "step-00000003").exists()
    loaded = state.load(path)
    assert loaded.metrics_bytes == 19 and loaded.step == 4
    fresh = torch.optim.AdamW([{"params": [model.weight], "role": "adapter"}, {"params": [model.bias]}], lr=0.1)
    fresh.load_state_dict(loaded.optimizer)
    for a, b in zip(fresh.state.values(), optimizer.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.999) and fresh.param_groups[0]["role"] == "adapter"
    assert all(torch.equal(loaded.model[k], v) for k, v in model.state_dict().items())


def test_incomplete_checkpoint_is_reported(tmp_path):
    (tmp_path / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000002")
    with pytest.raises(ValueError, match="incomplete"):
        state.latest(tmp_path)


def test_linear_schedule_warms_up_then_decays_to_zero():
    values = [linear_schedule(s, 2, 6) for s in range(7)]
    assert values[0] < values[1] < values[2] == 1.0 and values[-1] == 0.0


def test_metrics_against_known_values():
    logits = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2], [2, 0, 0], [0, 0, 2]])
    labels = torch.tensor([0, 1, 2, 2, 1, 2])
    m = classification_metrics(logits, labels, ("accuracy", "macro_f1", "matthews"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 / 3, 1 / 2, 4 / 5]  # per class F1 of this confusion matrix
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert m["matthews"] == pytest.approx(sklearn.matthews_corrcoef(labels, logits.argmax(1)))
    x, y = torch.tensor([1.0, 2, 2, 3, 5]), torch.tensor([2.0, 1, 3, 3, 6])
    r = regression_metrics(x, y)
    assert r["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    scipy = pytest.importorskip("scipy.stats")
    assert r["spearman"] == pytest.approx(scipy.spearmanr(x, y).statistic)


def test_stratified_split_and_subsample():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    parts = stratified_split(labels, [0.8, 0.1, 0.1], seed=1)
    assert [len(p) for p in parts] == [80, 10, 10] and sorted(i for p in parts for i in p) == list(range(100))
    assert [sum(labels[i] == 2 for i in p) for p in parts] == [16, 2, 2]
    small, large = stratified_subsample(labels, 10, 0), stratified_subsample(labels, 20, 0)
    assert set(small) <= set(large) and [labels[i] for i in small].count(0) == 5


def test_settings_validation():
    assert parse_rank("full") == "full" and parse_rank("8") == 8
    with pytest.raises(ValueError, match="rank r must be"):
        parse_rank("0")
    with pytest.raises(ValueError, match="unknown method 'adalora'"):
        AdapterSettings(method="adalora")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        TrainSettings(steps=0)
    assert TrainSettings(steps=200, warmup=0.1).warmup_steps() == 20 and TrainSettings(warmup=5).warmup_steps() == 5


def test_local_csv_gets_carved_splits_and_string_labels(tmp_path, cache):
    path = tmp_path / "d.csv"
    path.write_text("review,stars\n" + "".join(f"text {i},{['bad', 'good'][i % 2]}\n" for i in range(40)))
    corpus = load_local(path, text_columns=["review"], label_column="stars", cache=cache)
    assert corpus.label_names == ["bad", "good"] and corpus.num_labels == 2
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 32, "validation": 4, "test": 4}


def test_glue_layout_folder_with_unlabelled_test(tmp_path, cache):
    folder = tmp_path / "glue" / "sst2"
    folder.mkdir(parents=True)
    (folder / "train-00000-of-00001.csv").write_text("sentence,label,idx\n" + "a,0,0\nb,1,1\n" * 10)
    (folder / "validation-00000-of-00001.csv").write_text("sentence,label,idx\nc,0,0\nd,1,1\n")
    (folder / "test-00000-of-00001.csv").write_text("sentence,label,idx\ne,-1,0\n")
    corpus = load_local(tmp_path / "glue", task="sst2", cache=cache)
    assert set(corpus.splits) == {"train", "validation"} and corpus.metrics == ("accuracy",)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_local(tmp_path / "nothing", cache=cache)
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        load_local(tmp_path / "glue", task="sst3", cache=cache)


def test_scripts_end_bad_input_with_the_message_not_a_traceback(tmp_path, monkeypatch):
    argv = ["--data", str(tmp_path / "missing.csv"), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"^error: data path .*missing\.csv does not exist"):
        run_script(encoder.main, encoder.parse_args, argv)
    monkeypatch.setenv("PEFT_INITS_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        run_script(encoder.main, encoder.parse_args, argv)
