"""`sd.py adapter-dataset` on the tiny pipeline: layout, loading, indexing, resume, batched = alone, bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from peft_inits.checkpoint import read_tensors
from peft_inits.cli.sd import main, parse_args
from peft_inits.collection import index_collection
from peft_inits.diffusion.composition import load_named_adapter
from peft_inits.diffusion.objective import Frozen, noise_loss
from peft_inits.diffusion.tiny import tiny_pipeline
from peft_inits.generation import builder as A
from peft_inits.generation import dataset as D
from peft_inits.glyph.world import SUBJECTS

SMALL = ["--model", "tiny", "--subjects", "2", "--heldout", "1", "--steps", "2", "--images", "4", "--references", "2"]


def _build(directory, *extra: str):
    return main(parse_args(["adapter-dataset", "--method", "svfit", "--output-dir", str(directory), *SMALL,
                            "--no-progress", *extra]))  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("adapters") / "svfit"
    _build(directory, "--population", "4")  # 6 adapters: a chunk of 4 and one of 2
    return directory


def test_layout(built):
    manifest = json.loads((built / "dataset.json").read_text())
    assert manifest["method"] == "svfit" and manifest["model"] == "tiny"
    assert manifest["settings"]["steps"] == 2 and manifest["settings"]["lr"] == pytest.approx(5e-3)
    entries = manifest["adapters"]
    assert [e["name"] for e in entries] == ["s000-seed0", "s000-seed1", "s001-seed0", "s001-seed1",
                                            "s258-seed0", "s258-seed1"]  # fmt: skip
    assert [e["split"] for e in entries] == ["train"] * 4 + ["heldout"] * 2
    pool = D.glyph_pool()
    for entry in entries:
        assert entry["subject"] == pool[int(entry["subject_id"][1:])]
        assert entry["references"] == f"references/{entry['subject_id']}"
        assert entry["train_time_s"] > 0
        assert np.isfinite([entry["final_loss"], entry["eval_loss_start"], entry["eval_loss_end"]]).all()
        adapter = built / "adapters" / entry["name"]
        assert (adapter / "adapter_config.json").is_file()
        _, metadata = read_tensors(adapter / "adapter_model.safetensors")
        assert "peft_inits.sha256" in metadata
        references = sorted((built / entry["references"]).glob("*.png"))
        assert len(references) == 2
    # seeds of one subject train different adapters; references are fresh renders, not the training images
    s0, s1 = (
        read_tensors(built / "adapters" / n / "adapter_model.safetensors")[0] for n in ("s000-seed0", "s000-seed1")
    )
    assert any(not torch.equal(s0[k], s1[k]) for k in s0 if k.endswith(".s"))
    subject = D.subjects(1, 0)[0][0]
    train, _ = subject.images(4, 64, "train")
    refs, _ = subject.images(2, 64, "references")
    assert not any(np.array_equal(r, t) for r in refs for t in train)
    dataset = D.read_dataset(built)
    assert len(dataset.entries("heldout")) == 2 and dataset.adapters[0].directory.is_dir()


def test_every_adapter_loads_verifies_and_is_indexed(built):
    unet = tiny_pipeline().unet
    for directory in sorted((built / "adapters").iterdir()):
        assert load_named_adapter(unet, directory, directory.name.replace("-", "_"))  # fingerprints checked here
    other = tiny_pipeline(seed=1).unet
    with pytest.raises(ValueError, match=r"different base weight|differs"):
        load_named_adapter(other, built / "adapters" / "s000-seed0", "x")
    collection = index_collection(built / "adapters", tiny_pipeline().unet, progress=False)
    assert collection.failures == {}
    assert len(collection.records) == 6


def test_resume_skips_finished_adapters(built, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    kept = (copy / "adapters" / "s000-seed0" / "adapter_model.safetensors").stat().st_mtime_ns
    shutil.rmtree(copy / "adapters" / "s001-seed1")
    capsys.readouterr()
    _build(copy, "--population", "4")
    assert "6 adapters, 5 done, 1 to train" in capsys.readouterr().out
    assert (copy / "adapters" / "s000-seed0" / "adapter_model.safetensors").stat().st_mtime_ns == kept
    assert len(json.loads((copy / "dataset.json").read_text())["adapters"]) == 6
    # more subjects: only the new ones train; the population size is free to change
    capsys.readouterr()
    _build(copy, "--population", "2", "--subjects", "3")
    assert "8 adapters, 6 done, 2 to train" in capsys.readouterr().out


def test_batched_equals_one_at_a_time(built, tmp_path):
    """The command with --population 1 trains each adapter alone; the batched dataset must hold the same tensors."""
    alone = tmp_path / "alone"
    _build(alone, "--population", "1")
    for name in ("s000-seed0", "s001-seed1", "s258-seed0"):
        a = read_tensors(alone / "adapters" / name / "adapter_model.safetensors")[0]
        b = read_tensors(built / "adapters" / name / "adapter_model.safetensors")[0]
        assert a.keys() == b.keys()
        # fp32, different batch compositions: summation order only. The tiny U-Net's mid block sees 1 × 1 latents, so
        # its self-attention q/k get a zero true gradient; Adam turns the ~1e-12 rounding noise there into updates of
        # up to ~1e-5 (values ~1). Everything else agrees to ~3e-7.
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=3e-5, msg=key)


def test_population_loss_is_the_runner_loss():
    """Adapter k's share of `population_noise_loss` is `objective.noise_loss` with adapter k's generator."""
    pipe = tiny_pipeline()
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(torch.device("cpu"))
    from peft_inits.population import Population
    from peft_inits.training.prepare import prepare

    unet = prepare(pipe.unet, A._adapter_settings("lora", A.AdapterDatasetSettings())).model
    population = Population(unet, 2)
    with torch.no_grad():
        for param in population.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(5)) * 0.05)
    jobs = [A.Job(s, "train", 0) for s in D.subjects(2, 0)[0]]
    chunk = A.Chunk(jobs, frozen, 4, 2, 64, 2, torch.device("cpu"))
    latents, context, index = chunk.batch(0)
    generators = [torch.Generator().manual_seed(j.noise_seed) for j in jobs]
    losses = A.population_noise_loss(unet, frozen.scheduler, population, latents, context, index, generators, "epsilon")
    population.detach()
    for k, job in enumerate(jobs):
        population.load_member(k)
        arrays, prompts = job.subject.images(4, 64, "train")
        picks = chunk.samplers[k].indices(0)
        pixels = A._pixels(arrays)[picks]
        ids = frozen.tokens([prompts[i] for i in picks])
        generator = torch.Generator().manual_seed(job.noise_seed)
        expected = noise_loss(unet, frozen, pixels, ids, "epsilon", generator=generator)
        torch.testing.assert_close(losses[k], expected, rtol=1e-5, atol=1e-7)


def test_subject_pool():
    pool = D.glyph_pool()
    assert len(pool) >= 200 and len(set(pool)) == len(pool)
    assert not set(pool) & set(SUBJECTS)
    train, heldout = D.subjects(100, 20)
    assert len(train) == 100 and len(heldout) == 20
    assert not {s.glyph for s in train} & {s.glyph for s in heldout}
    assert D.subjects(5, 3)[0] == train[:5] and D.subjects(5, 3)[1] == heldout[-3:]  # ids stable across sizes
    with pytest.raises(ValueError, match="glyph pool holds"):
        D.subjects(len(pool), 1)
    big, prompts = train[0].images(1, 512, "references")  # an SD-1.5-sized model: rendered at 128 px, upscaled
    assert big.shape == (1, 512, 512, 3) and prompts[0].startswith("a sks glyph on ")


def test_bad_inputs(built, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["adapter-dataset", "--method", "nope", "--output-dir", str(tmp_path)])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"dataset\.json is a svfit dataset; --method lora"):
        main(parse_args(["adapter-dataset", "--method", "lora", "--output-dir", str(built), *SMALL]))
    with pytest.raises(ValueError, match=r"other settings \(steps: 2 → 3\)"):
        main(parse_args(["adapter-dataset", "--method", "svfit", "--output-dir", str(built), *SMALL, "--steps", "3"]))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        _build(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="glyph pool holds"):
        _build(tmp_path / "big", "--subjects", "5000")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"dataset\.json must hold a JSON object"):
        _build(broken)
