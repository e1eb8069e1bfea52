"""The end-to-end hypernetwork: it learns known per-cluster gains through a frozen model, trains only itself, resumes
exactly, and writes normal adapter directories; bad inputs are named and change nothing."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from runner_helpers import Crash, assert_bad_references_refused, crash_at, tiny_hypernetwork_args
from torch import nn

from peft_inits.checkpoint import load_tensors, verify_adapter_dir
from peft_inits.cli import sd as runner
from peft_inits.diffusion.composition import load_named_adapter
from peft_inits.diffusion.tiny import tiny_pipeline
from peft_inits.generation import dataset as D
from peft_inits.generation.hypernetwork import HypernetSettings, Hypernetwork, Slots, feature_stats, hypernetwork_task
from peft_inits.population import Population, per_adapter_mean
from peft_inits.training.prepare import prepare
from peft_inits.training.rundir import read_records, without_timing
from peft_inits.training.settings import AdapterSettings

# ------------------------------------------------------------------------------------------------ a known optimum


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class Regression:
    """Subjects of two clusters: inputs x, targets from the frozen net with its cluster's teacher gains; the condition
    is the cluster's code plus noise. The right gains of every subject are its cluster's teacher gains."""

    def __init__(self, net: nn.Module, population: Population, teachers: torch.Tensor, slots: Slots,
                 clusters: torch.Tensor, seed: int) -> None:  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        self.net, self.clusters = net, clusters
        self.x = torch.randn(len(clusters), 16, 6, generator=generator)
        codes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])[clusters]
        self.conditions = {"code": codes + 0.1 * torch.randn(len(clusters), 3, generator=generator)}
        self.y = torch.empty(len(clusters), 16, 5)
        with torch.no_grad():
            for c in (0, 1):
                rows = (clusters == c).nonzero().flatten()
                values = teachers[c].expand(population.size, -1)
                with population.substitute(slots.split(values)), population.batch(torch.zeros(16 * len(rows)).long()):
                    self.y[rows] = net(self.x[rows].flatten(0, 1)).reshape(len(rows), 16, 5)

    def __len__(self) -> int:
        return len(self.clusters)

    def losses(self, population: Population, rows: torch.Tensor, fixed: bool) -> torch.Tensor:
        index = torch.arange(len(rows)).repeat_interleave(16)
        with population.batch(index):
            out = self.net(self.x[rows].flatten(0, 1))
        per_sample = (out - self.y[rows].flatten(0, 1)).pow(2).mean(1)
        return per_adapter_mean(per_sample, index, population.size)[: len(rows)]


def test_conditioned_predictions_land_on_their_cluster_and_beat_the_mean():
    prepared = prepare(Net(), AdapterSettings(method="svfit", r=3, target_modules=["fc1", "fc2"], head_modules=[]))
    model = prepared.model
    population = Population(model, 4)  # before freezing: it copies the adapter's trainable tensors
    model.requires_grad_(False)
    slots = Slots.of(population)
    teachers = torch.stack([slots.init * 1.6, slots.init * 0.4])  # gains that differ by construction
    clusters = torch.tensor([0, 1] * 8)
    train = Regression(model, population, teachers, slots, clusters, seed=1)
    heldout = Regression(model, population, teachers, slots, torch.tensor([0, 1] * 3), seed=2)
    torch.manual_seed(0)
    net = Hypernetwork({"code": 3}, slots, feature_stats(train.conditions), HypernetSettings(hidden=32))
    task = hypernetwork_task(population, train, heldout)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    start = task.evaluate(net, "validation")
    for step in range(300):
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(step))[:4]
        task.loss(net, {"rows": rows}).backward()
        optimizer.step()
        optimizer.zero_grad()
    end = task.evaluate(net, "validation")
    with torch.no_grad():
        predicted = net(heldout.conditions)
        mean_prediction = net({"code": train.conditions["code"].mean(0, keepdim=True)})
    own = (predicted - teachers[heldout.clusters]).norm(dim=1)
    other = (predicted - teachers[1 - heldout.clusters]).norm(dim=1)
    gap = (teachers[0] - teachers[1]).norm()
    assert (own < 0.25 * gap).all() and (other > 0.75 * gap).all()  # every held-out subject lands on its cluster
    assert (own < (mean_prediction - teachers[heldout.clusters]).norm(dim=1)).all()
    assert end["val_loss"] < 0.1 * start["val_loss"]  # the untrained network is the init: far from both teachers
    assert end["val_loss"] < 0.1 * end["val_loss_mean_condition"]  # conditioning carries the effect


# ------------------------------------------------------------------------------------------------ the tiny U-Net


_train_args = tiny_hypernetwork_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hyper")
    meta = runner.main(runner.parse_args(_train_args(root / "run")))
    references = root / "refs"
    references.mkdir()
    arrays, _ = D.subjects(4, 2)[1][0].images(3, 64, "references")
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(references / f"ref-{i}.png")
    return {"run": root / "run", "meta": meta, "references": references}


def _generate(trained, out, *extra: str):
    args = ["generate-adapter", "--generator", str(trained["run"]), "--reference", str(trained["references"]),
            "--out", str(out), *extra]  # fmt: skip
    return runner.main(runner.parse_args(args))


def test_a_training_step_changes_only_the_hypernetwork():
    from peft_inits.diffusion.objective import Frozen
    from peft_inits.generation.hypernetwork_training import attach, denoising_subjects
    from peft_inits.generation.workflow import Base, FeatureChoice

    pipe = tiny_pipeline()
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(torch.device("cpu"))
    sources = FeatureChoice(("vae",), cache_dir=None).build(Base(pipe.unet, pipe.vae, 64, "tiny"))
    adapter = AdapterSettings(method="loldu", r=2, module_kinds=["attn2"], head_modules=[])
    attached = attach(pipe.unet, adapter, 2)
    settings = HypernetSettings(hidden=8, images=3, references=2, renders=2)
    data = denoising_subjects(D.subjects(2, 0)[0], frozen, sources, attached.unet, settings, 64, "epsilon")
    net = Hypernetwork({"vae": 24}, attached.slots, feature_stats(data.conditions), settings)
    before_unet = {k: v.clone() for k, v in attached.unet.state_dict().items()}
    before_population = [p.detach().clone() for p in attached.population.parameters()]
    before_net = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    task = hypernetwork_task(attached.population, data)
    task.loss(net, {"rows": torch.tensor([0, 1])}).backward()
    optimizer.step()
    assert all(torch.equal(v, before_unet[k]) for k, v in attached.unet.state_dict().items())
    assert all(p.grad is None for p in attached.population.parameters())
    assert all(torch.equal(p, q) for p, q in zip(attached.population.parameters(), before_population, strict=True))
    last = net.mlp[-1]
    assert (last.weight != 0).all() and not torch.equal(last.bias, before_net["mlp.2.bias"])  # zero-init layer moved
    for name in ("init", "mean_0", "std_0"):  # the init and the feature statistics are buffers, not trained
        assert torch.equal(net.state_dict()[name], before_net[name])
    attached.population.detach()


def test_resume_reproduces_the_uninterrupted_run(trained, tmp_path):
    killed = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 4)
        runner.main(runner.parse_args(_train_args(killed)))
    assert not (killed / "hypernetwork.json").exists()
    runner.main(runner.parse_args(_train_args(killed, "--resume")))
    assert json.loads((killed / "summary.json").read_text())["resumed_from"] == 4
    straight = trained["run"]
    assert without_timing(read_records(killed / "metrics.jsonl")) == without_timing(
        read_records(straight / "metrics.jsonl")
    )
    assert (killed / "weights" / "model.safetensors").read_bytes() == (
        straight / "weights" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        runner.main(runner.parse_args(_train_args(killed, "--resume", "--hidden", "9")))


def test_generated_adapter_is_a_normal_adapter_directory(trained, tmp_path):
    meta = trained["meta"]
    assert meta["method"] == "svfit" and meta["sizes"]["predicted_values"] == 40 * 2  # attn2 q, k, v, out × r = 2
    assert meta["train_subjects"] == ["s000", "s001", "s002", "s003"]
    assert not set(meta["train_subjects"]) & set(meta["heldout_subjects"])
    records = read_records(trained["run"] / "metrics.jsonl", "eval")
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    assert records[0]["val_loss"] == records[0]["val_loss_mean_condition"]  # zero-init: the init, whatever the input
    assert records[-1]["val_loss"] != records[-1]["val_loss_mean_condition"]  # trained: the condition matters
    result = _generate(trained, tmp_path / "gen", "--method", "svfit")
    assert result["images"] == 3
    config, tensors = verify_adapter_dir(tmp_path / "gen")
    assert config["peft_type"] == "SVFIT"
    template = {f"base_model.model.{k}": v for k, v in load_tensors(trained["run"] / "template.safetensors").items()}
    assert set(tensors) == set(template)  # PeftModel.save_pretrained's keys
    gains = [k for k in tensors if k.endswith(".s")]
    assert len(gains) == 40 and any(not torch.equal(tensors[k], template[k]) for k in gains)
    assert all(torch.equal(tensors[k], template[k]) for k in tensors if not k.endswith(".s"))
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_pipeline().unet, str(tmp_path / "gen"))
    loaded = {k: v for k, v in model.state_dict().items() if k.endswith(".s")}
    assert len(loaded) == 40
    assert len(load_named_adapter(tiny_pipeline().unet, tmp_path / "gen", "generated")) == 40
    export = ["export", "--model", "tiny", "--adapter", str(tmp_path / "gen"), "--format", "peft"]
    assert (runner.main(runner.parse_args(export))[0] / "adapter_model.safetensors").is_file()
    _generate(trained, tmp_path / "again")  # deterministic: same references, same adapter
    again = load_tensors(tmp_path / "again" / "adapter_model.safetensors")
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_bad_inputs_are_named_and_change_nothing(trained, tmp_path):
    out = tmp_path / "x"
    base = ["generate-adapter", "--generator", str(trained["run"]), "--out", str(out)]
    assert_bad_references_refused(lambda argv: runner.main(runner.parse_args(argv)), base, tmp_path)
    with pytest.raises(ValueError, match="predicts svfit adapters, not loldu"):
        _generate(trained, out, "--method", "loldu")
    other = tmp_path / "other-base"
    tiny_pipeline(seed=1).save_pretrained(str(other))
    with pytest.raises(ValueError, match=r"trained for another base model.*fingerprint mismatch"):
        _generate(trained, out, "--model", str(other))
    assert not out.exists()
    with pytest.raises(ValueError, match="overlap"):
        from peft_inits.generation.hypernetwork_training import train_hypernetwork
        from peft_inits.generation.workflow import FeatureChoice

        subjects = D.subjects(3, 0)[0]
        train_hypernetwork(tmp_path / "y", train=subjects, heldout=subjects[:1], model="tiny",
                           adapter=AdapterSettings(method="svfit", head_modules=[]),
                           choice=FeatureChoice(("vae",), cache_dir=None))  # fmt: skip
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match=r"renders \(3\) cannot exceed images \(2\)"):
        HypernetSettings(images=2, renders=3)
