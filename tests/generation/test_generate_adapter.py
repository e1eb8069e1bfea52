"""train-generator / generate-adapter / generation-eval on a tiny adapter data set in the data-set layout."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict
from PIL import Image
from runner_helpers import Crash, assert_bad_references_refused, crash_at, tiny_hypernetwork_args
from tiny_models import save_tiny_clip_and_dino

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.checkpoint import load_tensors, save_adapter, verify_adapter_dir, write_adapter_dir
from peft_inits.cli import sd as runner
from peft_inits.diffusion.composition import load_named_adapter
from peft_inits.diffusion.tiny import tiny_pipeline
from peft_inits.glyph.judge import Judge, save_judge
from peft_inits.training.rundir import read_records, without_timing

COLOURS = {"sA": (220, 40, 40), "sB": (40, 80, 230), "sC": (200, 60, 60)}  # sC: held out, A-like


def build_dataset(root, config, per_subject=3, wrapped=False):
    """Adapters made with `add_adapter` + a per-subject gain (A up, B down) + noise, saved the normal way (`wrapped`:
    with the `base_model.model.` keys a PeftModel's save writes, as the SD runner's runs have)."""
    unet = tiny_pipeline().unet
    rng = np.random.default_rng(0)
    adapters = []
    for subject_id, colour in COLOURS.items():
        folder = root / "references" / subject_id
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            pixels = np.zeros((32, 32, 3), np.uint8) + np.array(colour, np.uint8)
            pixels[8 + i : 20 + i, 10:22] = 255
            Image.fromarray(pixels).save(folder / f"{i}.png")
        split = "heldout" if subject_id == "sC" else "train"
        sign = -1.0 if subject_id == "sB" else 1.0
        for seed in range(per_subject if split == "train" else 1):
            name = f"{subject_id}-seed{seed}"
            unet.add_adapter(config, adapter_name=name)
            with torch.no_grad():
                for key, param in unet.named_parameters():
                    if f"pi_adapters.{name}." in key:
                        noise = torch.from_numpy(rng.standard_normal(param.shape)).float()
                        param.copy_(param * (1 + 0.5 * sign) + 0.05 * noise + (0.1 * sign if param.ndim > 1 else 0))
            if wrapped:
                state = get_peft_model_state_dict(unet, adapter_name=name)
                tensors = {f"base_model.model.{key}": value for key, value in state.items()}
                write_adapter_dir(root / "adapters" / name, tensors, unet.peft_config[name].to_dict())
            else:
                save_adapter(unet, root / "adapters" / name, adapter_name=name)
            unet.delete_adapters(name)
            adapters.append(
                {
                    "name": name,
                    "subject": "Q" if split == "heldout" else subject_id,  # a glyph: the shape score renders it
                    "subject_id": subject_id,
                    "split": split,
                    "seed": seed,
                    "references": f"references/{subject_id}",
                    "train_time_s": 1.5,
                    **{"family": "serif", "variant": "bold", "colour": "green"},  # the subject's recorded look
                }
            )
    index = {"method": config.method, "model": None, "settings": {}, "adapters": adapters}
    (root / "dataset.json").write_text(json.dumps(index))
    return root


def train_args(dataset, out, judge, *extra):
    return [
        "train-generator", "--dataset", str(dataset), "--output-dir", str(out), "--judge", str(judge),
        "--steps", "12", "--batch-size", "4", "--width", "32", "--depth", "2", "--heads", "2", "--latent", "8",
        "--warmup", "2", "--eval-every", "6", "--save-every", "6", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    torch.manual_seed(0)
    judge = save_judge(Judge(), {"note": "untrained: a fixed random CNN still tells the colours apart"}, root / "j")
    dataset = build_dataset(root / "svfit", SVFitConfig(r=2, module_kinds=["attn2"]))
    meta = runner.main(runner.parse_args(train_args(dataset, root / "gen", judge)))
    return {"root": root, "judge": judge, "dataset": dataset, "generator": root / "gen", "meta": meta}


def _generate(world, out, *extra):
    reference = world["dataset"] / "references" / "sC"
    args = ["generate-adapter", "--generator", str(world["generator"]), "--reference", str(reference)]
    return runner.main(runner.parse_args([*args, "--out", str(out), *extra]))


def test_generated_adapter_is_a_normal_adapter_directory(world, tmp_path):
    meta = world["meta"]
    assert meta["method"] == "svfit" and meta["sizes"]["parameters"] > 1000
    assert meta["explained_variance"] == pytest.approx(1.0, abs=1e-6)  # r = 2 gains: nothing compressed
    assert len(meta["layout"]) == 40 and meta["token_widths"] == [2] * 40  # attn2 q, k, v, out of 10 blocks
    result = _generate(world, tmp_path / "gen", "--method", "svfit", "--seed", "3")
    assert result["wall_s"] < 30 and result["images"] == 3
    config, tensors = verify_adapter_dir(tmp_path / "gen")
    assert config["peft_type"] == "SVFIT" and json.loads((tmp_path / "gen" / "generated.json").read_text())["seed"] == 3
    template = load_tensors(world["dataset"] / "adapters" / "sA-seed0" / "adapter_model.safetensors")
    assert set(tensors) == {f"base_model.model.{key}" for key in template}  # PeftModel.save_pretrained's keys
    template = {f"base_model.model.{key}": value for key, value in template.items()}
    gains = [k for k in tensors if k.endswith(".s")]
    assert all(torch.isfinite(tensors[k]).all() for k in gains)
    assert any(not torch.equal(tensors[k], template[k]) for k in gains)
    for key in tensors:  # the frozen, base-derived tensors are the data set's
        if not key.endswith(".s"):
            assert torch.equal(tensors[key], template[key]), key

    from peft import PeftModel

    unet = tiny_pipeline().unet
    model = PeftModel.from_pretrained(unet, str(tmp_path / "gen"))
    loaded = {k: v for k, v in model.state_dict().items() if k.endswith(".s")}
    assert len(loaded) == len(gains)
    pipe = tiny_pipeline()
    assert len(load_named_adapter(pipe.unet, tmp_path / "gen", "generated")) == 40
    export = ["export", "--model", "tiny", "--adapter", str(tmp_path / "gen"), "--format", "peft"]
    written = runner.main(runner.parse_args(export))
    assert (written[0] / "adapter_model.safetensors").is_file()
    _generate(world, tmp_path / "again", "--seed", "3")  # same seed, same adapter
    again = load_tensors(tmp_path / "again" / "adapter_model.safetensors")
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_bad_inputs_are_named(world, tmp_path):
    args = ["generate-adapter", "--generator", str(world["generator"]), "--out", str(tmp_path / "x")]
    assert_bad_references_refused(lambda argv: runner.main(runner.parse_args(argv)), args, tmp_path)
    with pytest.raises(ValueError, match="trained on svfit adapters, not loldu"):
        _generate(world, tmp_path / "x", "--method", "loldu")
    other = tmp_path / "other-base"
    tiny_pipeline(seed=1).save_pretrained(str(other))
    with pytest.raises(ValueError, match=r"trained for another base model.*fingerprint mismatch"):
        _generate(world, tmp_path / "x", "--model", str(other))
    with pytest.raises(FileNotFoundError, match="not a finished generator run"):
        references = str(world["dataset"] / "references" / "sA")
        runner.main(runner.parse_args([*args[:2], str(tmp_path), *args[3:], "--reference", references]))
    assert not (tmp_path / "x").exists()

    mixed = tmp_path / "mixed"
    shutil.copytree(world["dataset"], mixed)
    unet = tiny_pipeline().unet
    unet.add_adapter(LoLDUConfig(r=2, module_kinds=["attn2"]), adapter_name="other")
    save_adapter(unet, mixed / "adapters" / "sB-seed1", adapter_name="other")
    with pytest.raises(ValueError, match=r"mixes methods.*sB-seed1.*'loldu'"):
        runner.main(runner.parse_args(train_args(mixed, tmp_path / "g2", world["judge"])))
    foreign = tiny_pipeline(seed=1).unet  # an SVFit adapter of the data set's config, on another base
    foreign.add_adapter(SVFitConfig(r=2, module_kinds=["attn2"]), adapter_name="other")
    save_adapter(foreign, mixed / "adapters" / "sB-seed1", adapter_name="other")
    with pytest.raises(ValueError, match=r"adapter .*sB-seed1 was trained for another base model"):
        runner.main(runner.parse_args(train_args(mixed, tmp_path / "g3", world["judge"])))


def test_resume_reproduces_the_uninterrupted_run(world, tmp_path):
    killed = tmp_path / "gen"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 8)
        runner.main(runner.parse_args(train_args(world["dataset"], killed, world["judge"])))
    assert not (killed / "generator.json").exists()
    runner.main(runner.parse_args(train_args(world["dataset"], killed, world["judge"], "--resume")))
    assert json.loads((killed / "summary.json").read_text())["resumed_from"] == 6
    straight = world["generator"]
    assert without_timing(read_records(killed / "metrics.jsonl")) == without_timing(
        read_records(straight / "metrics.jsonl")
    )
    assert (killed / "weights" / "model.safetensors").read_bytes() == (
        straight / "weights" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        runner.main(runner.parse_args(train_args(world["dataset"], killed, world["judge"], "--resume", "--lr", "1")))


def test_lora_adapters_go_through_the_factor_codec(world, tmp_path):
    dataset = build_dataset(tmp_path / "lora", LoRAConfig(r=2, module_kinds=["attn2"]), wrapped=True)
    meta = runner.main(runner.parse_args(train_args(dataset, tmp_path / "gen", world["judge"], "--latent", "3")))
    assert meta["method"] == "lora" and all(list(item["pair"]) == ["lora_A", "lora_B"] for item in meta["layout"])
    assert meta["token_widths"] == [3] * 40  # 2·(m + n) values per layer, 3 principal directions each
    assert 0.5 < meta["explained_variance"] < 1.0
    reference = dataset / "references" / "sC"
    args = ["generate-adapter", "--generator", str(tmp_path / "gen"), "--reference", str(reference)]
    runner.main(runner.parse_args([*args, "--out", str(tmp_path / "out"), "--method", "lora"]))
    pipe = tiny_pipeline()
    assert len(load_named_adapter(pipe.unet, tmp_path / "out", "generated")) == 40


def test_generation_eval_reports_every_row_and_a_grid(world, tmp_path):
    args = [
        "generation-eval", "--dataset", str(world["dataset"]), "--generator", str(world["generator"]),
        "--output-dir", str(tmp_path), "--judge", str(world["judge"]), "--seeds", "0,1", "--image-seeds", "0",
        "--sample-steps", "2", "--backgrounds", "plain",
    ]  # fmt: skip
    report = runner.main(runner.parse_args(args))
    table = report["table"]
    assert list(table) == ["generated", "trained", "retrieval", "words", "none"]
    assert table["generated"]["subject_fidelity"]["n"] == 2 and table["trained"]["subject_fidelity"]["n"] == 1
    for row in table.values():
        assert -1.0 <= row["subject_fidelity"]["mean"] <= 1.0 and 0.0 <= row["prompt_fidelity"]["mean"] <= 1.0
    assert table["trained"]["time_to_adapter_s"] == 1.5 and table["generated"]["time_to_adapter_s"] < 30
    assert report["details"][0]["retrieved_subject"] == "sA"  # the red references' nearest training subject
    words = report["details"][0]["words"][0]  # recorded look + the judge's nearest training letter
    assert words.startswith("a green bold serif letter ") and words.endswith(" on a plain background")
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.height == 64 and grid.width >= 5 * 64  # 3 references | 1 generated | 1 trained
    assert "| generated |" in (tmp_path / "report.md").read_text()
    distance = report["weight_distance"]
    assert distance["generated"]["n"] == 2 and distance["retrieval"]["n"] == 1
    assert distance["generated: nearest training adapter"]["n"] == 2  # the memorisation check
    assert all(0.0 < d["mean"] < 100.0 for d in distance.values())
    shapes = [row["shape_fidelity"]["mean"] for row in table.values()]  # the held-out subject is a glyph ("Q")
    assert all(0.0 <= value <= 1.0 for value in shapes) and len(set(shapes)) > 1


def test_generation_eval_adds_a_hypernetwork_row(world, tmp_path):
    run = tmp_path / "hyper"
    train = tiny_hypernetwork_args(run, "--steps", "2")
    runner.main(runner.parse_args(train))
    args = [
        "generation-eval", "--dataset", str(world["dataset"]), "--generator", str(world["generator"]),
        "--output-dir", str(tmp_path / "eval"), "--judge", str(world["judge"]), "--seeds", "0", "--image-seeds", "0",
        "--sample-steps", "2", "--backgrounds", "plain", "--hypernetworks", f"{run},{run}", "--no-shape",
    ]  # fmt: skip
    report = runner.main(runner.parse_args(args))
    table = report["table"]
    assert list(table) == ["generated", "hypernetwork", "trained", "retrieval", "words", "none"]
    assert table["hypernetwork"]["subject_fidelity"]["n"] == 2  # one variant per run
    assert table["hypernetwork"]["subject_fidelity"]["std"] == 0.0  # the same run twice: the same adapter
    assert "shape_fidelity" not in table["none"]  # --no-shape
    assert table["hypernetwork"]["time_to_adapter_s"] < 30
    written = sorted(p.name for p in (tmp_path / "eval" / "hypernetwork").iterdir())
    assert written == ["sC-run0", "sC-run1"]
    assert verify_adapter_dir(tmp_path / "eval" / "hypernetwork" / "sC-run0")[0]["peft_type"] == "SVFIT"
    distance = report["weight_distance"]
    assert distance["hypernetwork"]["n"] == 2 and distance["hypernetwork: nearest training adapter"]["n"] == 2
    assert "| hypernetwork |" in (tmp_path / "eval" / "report.md").read_text()
    lora = tmp_path / "lora-hyper"
    shutil.copytree(run, lora)
    meta = json.loads((lora / "hypernetwork.json").read_text())
    (lora / "hypernetwork.json").write_text(json.dumps({**meta, "method": "lora"}))
    before = sorted(p.name for p in (tmp_path / "eval").iterdir())
    with pytest.raises(ValueError, match="predicts lora adapters"):
        runner.main(runner.parse_args([*args[:-3], "--hypernetworks", str(lora)]))
    leaky = tmp_path / "leaky-hyper"
    shutil.copytree(run, leaky)
    (leaky / "hypernetwork.json").write_text(json.dumps({**meta, "train_subjects": ["sC", *meta["train_subjects"]]}))
    with pytest.raises(ValueError, match="among hypernetwork"):
        runner.main(runner.parse_args([*args[:-3], "--hypernetworks", str(leaky)]))
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == before


def test_generation_eval_fine_tunes_each_prediction(world, tmp_path):
    run = tmp_path / "hyper"
    runner.main(runner.parse_args(tiny_hypernetwork_args(run, "--steps", "2")))
    args = [
        "generation-eval", "--generator", str(world["generator"]), "--judge", str(world["judge"]), "--seeds", "0",
        "--image-seeds", "0", "--sample-steps", "2", "--backgrounds", "plain", "--hypernetworks", str(run),
        "--no-shape", "--finetune-steps", "2",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"records no images.*not built by adapter-dataset"):
        runner.main(runner.parse_args([*args, "--dataset", str(world["dataset"]), "--output-dir", str(tmp_path / "x")]))
    dataset = tmp_path / "dataset"  # the hand-made data set, given the training recipe adapter-dataset records
    shutil.copytree(world["dataset"], dataset)
    manifest = json.loads((dataset / "dataset.json").read_text())
    manifest["settings"] = {"images": 4, "references": 2, "batch_size": 2, "lr": 0.05, "warmup": 0.0,
                            "weight_decay": 0.01, "max_grad_norm": 1.0, "prediction": "epsilon"}  # fmt: skip
    (dataset / "dataset.json").write_text(json.dumps(manifest))
    tuned = {}
    for lr in ("0", "0.05"):
        out = tmp_path / f"eval-{lr}"
        report = runner.main(runner.parse_args([*args, "--dataset", str(dataset), "--output-dir", str(out),
                                                "--finetune-lr", lr]))  # fmt: skip
        assert list(report["table"]) == ["generated", "hypernetwork", "hypernetwork + fine-tune", "trained",
                                         "retrieval", "words", "none"]  # fmt: skip
        row = report["table"]["hypernetwork + fine-tune"]
        assert row["time_to_adapter_s"] >= report["table"]["hypernetwork"]["time_to_adapter_s"]
        assert report["weight_distance"]["hypernetwork + fine-tune: nearest training adapter"]["n"] == 1
        predicted = load_tensors(out / "hypernetwork" / "sC-run0" / "adapter_model.safetensors")
        tuned[lr] = load_tensors(out / "finetuned" / "sC-run0" / "adapter_model.safetensors")
        assert tuned[lr].keys() == predicted.keys()
        gains = [k for k in predicted if k.endswith(".s")]
        same = all(torch.equal(tuned[lr][k], predicted[k]) for k in gains)
        assert same == (lr == "0")  # at rate 0 the fine-tune leaves the prediction as it was
    assert verify_adapter_dir(tmp_path / "eval-0.05" / "finetuned" / "sC-run0")[0]["peft_type"] == "SVFIT"


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """A width-16 CLIP (with its image projection) and a width-16 DINOv2, saved as local checkpoints."""
    return save_tiny_clip_and_dino(tmp_path_factory.mktemp("encoders"), dino_layers=1)


def test_image_encoder_features_clip_and_dino(world, encoders, tmp_path):
    from peft_inits.generation.features import ImageEncoderFeatures, build_sources, read_references

    images = read_references(world["dataset"] / "references" / "sA")
    assert ImageEncoderFeatures(encoders / "clip")(images).shape == (3, 8)  # CLIP image embeddings
    assert ImageEncoderFeatures(encoders / "dino")(images).shape == (3, 16)  # DINO CLS token
    with pytest.raises(ValueError, match="needs --image-encoder PATH"):
        build_sources(["image-encoder"])
    with pytest.raises(FileNotFoundError, match="not a local transformers checkpoint"):
        ImageEncoderFeatures(tmp_path)
    with pytest.raises(ValueError, match="unknown feature source"):
        build_sources(["clip"])
    extra = ["--features", "image-encoder,judge", "--image-encoder", str(encoders / "dino")]
    meta = runner.main(runner.parse_args(train_args(world["dataset"], tmp_path / "gen", world["judge"], *extra)))
    assert meta["feature_dims"] == {"image-encoder": 16, "judge": 256}
    reference = world["dataset"] / "references" / "sC"
    args = ["generate-adapter", "--generator", str(tmp_path / "gen"), "--reference", str(reference)]
    runner.main(runner.parse_args([*args, "--out", str(tmp_path / "out")]))
    verify_adapter_dir(tmp_path / "out")
    with pytest.raises(ValueError, match="gives 8 values but the generator was trained on 16"):  # another encoder
        runner.main(runner.parse_args([*args, "--out", str(tmp_path / "x"), "--image-encoder", str(encoders / "clip")]))


def test_model_names_resolve_like_the_data_set_writes_them(tmp_path):
    from peft_inits.generation.workflow import model_folder

    assert model_folder(None) is None and model_folder("tiny") is None
    unpacked = model_folder("glyph-t2i", tmp_path)  # the shipped model, unpacked (links) into the cache
    assert Path(unpacked).parent == tmp_path and Path(unpacked).name.startswith("glyph-t2i-")
    assert (Path(unpacked) / "unet").is_dir()
    assert model_folder(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a diffusers folder"):
        model_folder("sd-v9")


def test_generation_eval_scores_with_clip_and_dino_for_real_sd(world, encoders, tmp_path):
    args = [
        "generation-eval", "--dataset", str(world["dataset"]), "--generator", str(world["generator"]),
        "--output-dir", str(tmp_path), "--judge", str(world["judge"]), "--seeds", "0", "--image-seeds", "0,1",
        "--sample-steps", "2", "--clip", str(encoders / "clip"), "--dino", str(encoders / "dino"),
        "--prompts", "a sks glyph on grass", "--describe", "red square", "--class-word", "square",
    ]  # fmt: skip
    report = runner.main(runner.parse_args(args))
    assert report["details"][0]["words"] == ["a red square on grass"] and report["prompts"] == ["a sks glyph on grass"]
    for row in report["table"].values():
        assert -1.0 <= row["subject_fidelity"]["mean"] <= 1.0 and -1.0 <= row["prompt_fidelity"]["mean"] <= 1.0
    assert report["table"]["none"]["subject_fidelity"]["n"] == 2  # image seeds are the deterministic rows' variants
    with pytest.raises(ValueError, match="needs --describe"):
        runner.main(runner.parse_args([a for a in args if a not in ("--describe", "red square")]))


def test_distilled_dataset_holds_the_hypernetworks_adapters_and_trains_a_generator(world, tmp_path):
    from peft_inits.generation import features as feats
    from peft_inits.generation.dataset import read_dataset
    from peft_inits.generation.hypernetwork_run import load_hypernetwork
    from peft_inits.generation.workflow import load_base

    run_dir = tmp_path / "hyper"
    train = tiny_hypernetwork_args(run_dir, "--steps", "3", "--eval-every", "3", "--save-every", "3", "--lr", "5e-2")
    runner.main(runner.parse_args(train))
    out = tmp_path / "distilled"
    args = ["distill-hypernetwork", "--hypernetwork", str(run_dir), "--dataset", str(world["dataset"])]
    distilled = runner.main(runner.parse_args([*args, "--output-dir", str(out)]))
    original = read_dataset(world["dataset"])
    assert [e.name for e in distilled.adapters] == [e.name for e in original.adapters]
    run = load_hypernetwork(run_dir)
    sources = run.choice.build(load_base(None))
    for entry in distilled.entries("train"):  # exactly the hypernetwork's prediction from the entry's references
        condition = feats.condition(sources, feats.read_references(entry.references_dir))
        expected = run.states({k: v[None] for k, v in condition.items()})[0]
        _, tensors = verify_adapter_dir(entry.directory)
        assert all(torch.equal(tensors[f"base_model.model.{k}"], v) for k, v in expected.items())
    gains = [verify_adapter_dir(e.directory)[1] for e in distilled.entries("train")]
    keys = [k for k in gains[0] if k.endswith(".s")]
    assert any(not torch.equal(gains[0][k], gains[-1][k]) for k in keys)  # conditioned: subjects differ
    for entry in distilled.entries("heldout"):  # held-out adapters and references are the data set's
        kept = (entry.directory / "adapter_model.safetensors").read_bytes()
        assert kept == (world["dataset"] / "adapters" / entry.name / "adapter_model.safetensors").read_bytes()
    assert json.loads((out / "dataset.json").read_text())["settings"]["distilled_from"]["hypernetwork"] == str(run_dir)
    meta = runner.main(runner.parse_args(train_args(out, tmp_path / "gen", world["judge"])))
    assert meta["method"] == "svfit" and meta["train_adapters"] == [e.name for e in distilled.entries("train")]

    with pytest.raises(FileExistsError, match="exists"):
        runner.main(runner.parse_args([*args, "--output-dir", str(out)]))
    leaky = tmp_path / "leaky"
    shutil.copytree(run_dir, leaky)
    meta = json.loads((leaky / "hypernetwork.json").read_text())
    (leaky / "hypernetwork.json").write_text(json.dumps({**meta, "train_subjects": ["sC"]}))
    with pytest.raises(ValueError, match="would leak"):
        runner.main(runner.parse_args([*args[:2], str(leaky), *args[3:], "--output-dir", str(tmp_path / "none")]))
    assert not (tmp_path / "none").exists()
