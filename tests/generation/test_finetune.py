"""generation.finetune (a generated adapter as a head start): from the method's init it retrains a data set's
adapter exactly as `adapter-dataset` trained it, and at learning rate 0 it leaves a start where it was."""

from __future__ import annotations

import pytest
import torch

from peft_inits.checkpoint import read_tensors
from peft_inits.cli.sd import main, parse_args
from peft_inits.diffusion.models import load_pipeline
from peft_inits.generation import dataset as D
from peft_inits.generation.finetune import Finetuner
from peft_inits.training.settings import AdapterSettings

SMALL = ["--model", "tiny", "--subjects", "1", "--heldout", "1", "--seeds", "0", "--steps", "3", "--images", "4",
         "--references", "2", "--lr", "0.05", "--no-progress"]  # fmt: skip
ADAPTER = AdapterSettings(method="svfit", head_modules=[], init_seed=0, family="sd")  # adapter-dataset's on tiny


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finetune") / "svfit"
    main(parse_args(["adapter-dataset", "--method", "svfit", "--output-dir", str(directory), *SMALL]))
    return D.read_dataset(directory)


def _gains(directory):
    tensors = read_tensors(directory / "adapter_model.safetensors")[0]
    return {k: v for k, v in tensors.items() if k.endswith(".s")}


def _subject(entry):
    return D.Subject(entry.subject_id, entry.subject, entry.family, entry.variant, entry.colour)


def test_from_the_init_it_retrains_the_data_sets_adapter(built, tmp_path):
    entry = built.entries("heldout")[0]
    finetuner = Finetuner.build(load_pipeline(None), ADAPTER, built.settings, size=1)
    finetuner.start_from(None)
    finetuner.save(0, tmp_path / "init")
    finetuner.train(finetuner.chunk([_subject(entry)]), built.settings["steps"], built.settings["lr"])
    retrained, stored, init = (
        _gains(finetuner.save(0, tmp_path / "retrained")),
        _gains(entry.directory),
        _gains(tmp_path / "init"),
    )
    assert retrained.keys() == stored.keys() and len(stored) == 80  # q, k, v, out of attn1 and attn2
    for key in stored:
        torch.testing.assert_close(retrained[key], stored[key], rtol=1e-5, atol=1e-6)
    assert max((stored[k] - init[k]).abs().max() for k in stored) > 1e-3  # the data set's adapter did train


def test_a_start_trains_from_its_values_and_stays_at_rate_zero(built):
    entry = built.entries("heldout")[0]
    finetuner = Finetuner.build(load_pipeline(None), ADAPTER, built.settings, size=2)
    width = int(finetuner.attached.slots.init.numel())
    start = 1.0 + 0.1 * torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    subjects = [_subject(entry)] * 2
    finetuner.start_from(start)
    own = dict(finetuner.population.named_parameters())
    assert all(torch.equal(own[n], v) for n, v in finetuner.attached.slots.split(start).items())
    seen: list[int] = []
    finetuner.train(finetuner.chunk(subjects), 2, 0.0, on_step=seen.append)
    assert seen == [0, 1, 2]
    assert all(torch.equal(own[n], v) for n, v in finetuner.attached.slots.split(start).items())  # lr 0: unmoved
    finetuner.start_from(start[:1])  # member 1 back at the method's init
    assert all(torch.equal(own[n][1], finetuner.init[n][1]) for n in own)
    finetuner.start_from(start)
    finetuner.train(finetuner.chunk(subjects), 2, 0.05)
    moved = finetuner.attached.slots.split(start)
    assert all(not torch.equal(own[n], moved[n]) for n in own)
