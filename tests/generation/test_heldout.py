"""Held-out scoring shared by the hypernetwork's evaluation and head-start measurement: retrieval finds a training
subject from its own condition, the sampler is deterministic and sees the adapter, paired statistics are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from runner_helpers import tiny_hypernetwork_args

from peft_inits.cli import sd as runner
from peft_inits.diffusion.tiny import tiny_pipeline
from peft_inits.generation.heldout import HeldoutSampler, Retrieval, mean_sem, paired
from peft_inits.generation.hypernetwork_run import load_hypernetwork


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout") / "run"
    runner.main(runner.parse_args(tiny_hypernetwork_args(out, "--steps", "2")))
    return load_hypernetwork(out)


def test_retrieval_finds_each_training_subject_from_its_own_condition(run):
    names = run.meta["train_subjects"]
    conditions = run.train_conditions()
    retrieval = Retrieval(run, names)
    for row, name in enumerate(names):
        assert retrieval.nearest({k: v[row : row + 1] for k, v in conditions.items()}) == name
    restricted = Retrieval(run, names[1:])  # a bank without s000: its nearest is another subject
    assert restricted.nearest({k: v[0:1] for k, v in conditions.items()}) in names[1:]


def test_sampler_is_deterministic_and_sees_the_adapter(run, tmp_path):
    pipe = tiny_pipeline()
    sampler = HeldoutSampler(pipe, ("plain", "brick"), (0, 1), steps=2)
    assert sampler.prompts == ["a sks glyph on a plain background", "a sks glyph on a brick wall"]
    base = sampler(None)
    assert [len(row) for row in base] == [2, 2]
    again = sampler(None)
    flat = [np.asarray(image) for row in base for image in row]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(flat, [i for row in again for i in row], strict=True))
    assert not np.array_equal(np.asarray(base[0][0]), np.asarray(base[0][1]))  # seeds differ
    state = run.states({"vae": run.train_conditions()["vae"][:1]})[0]
    state = {k: v * 40 if k.endswith(".s") else v for k, v in state.items()}  # far from identity: visible
    adapter = run.write(state, tmp_path / "adapter", {})
    with_adapter = sampler(adapter)
    assert not np.array_equal(np.asarray(with_adapter[0][0]), np.asarray(base[0][0]))
    after = sampler(None)  # the adapter is gone again
    assert np.array_equal(np.asarray(after[0][0]), np.asarray(base[0][0]))
    with pytest.raises(ValueError, match="plain"):
        HeldoutSampler(pipe, ("brick", "plain"))


def test_paired_and_mean_sem_are_the_closed_forms():
    result = paired([0.5, 0.7, 0.9], [0.4, 0.8, 0.6])  # differences 0.1, -0.1, 0.3
    assert result["mean"] == pytest.approx(0.1) and result["wins"] == 2 and result["n"] == 3
    assert result["sem"] == pytest.approx(0.2 / math.sqrt(3))  # std of (0.1, -0.1, 0.3) is 0.2
    assert mean_sem([2.0, 4.0]) == pytest.approx({"mean": 3.0, "sem": math.sqrt(2) / math.sqrt(2)})
    assert mean_sem([1.0]) == {"mean": 1.0, "sem": 0.0}
