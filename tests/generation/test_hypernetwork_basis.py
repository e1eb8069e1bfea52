"""The hypernetwork through a fixed output basis (LoRA through its data set's principal directions, issue 22): the
output lies in init + shift + span(basis), the PCA reproduces a low-rank set exactly at k = its rank, training moves
only the MLP, runs resume exactly and write LoRA adapters that load, and bad basis data sets are refused before
anything is written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from runner_helpers import Crash, crash_at, tiny_hypernetwork_args
from safetensors.torch import save_file

from peft_inits import functional as Fn
from peft_inits.checkpoint import load_tensors, verify_adapter_dir, write_adapter_dir
from peft_inits.cli import sd as runner
from peft_inits.diffusion.tiny import tiny_pipeline
from peft_inits.generation import dataset as D
from peft_inits.generation.entries import WRAPPER_PREFIX
from peft_inits.generation.hypernetwork import HypernetSettings, Hypernetwork, OutputBasis, Slots, hypernetwork_task
from peft_inits.generation.hypernetwork_basis import BasisSettings, adapter_vector, basis_source, fit_basis
from peft_inits.generation.hypernetwork_run import load_hypernetwork
from peft_inits.training.rundir import read_records, without_timing
from peft_inits.training.settings import AdapterSettings

ADAPTER = AdapterSettings(method="lora", r=2, module_kinds=["attn2"], head_modules=[], init_seed=0)
RANK = 3  # of the synthetic adapters' deviations from their mean


def _residual(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Relative distance of each row of `vectors` from span(rows of `basis`)."""
    coefficients = torch.linalg.lstsq(basis.double().T, vectors.double().T).solution
    return (vectors.double() - (basis.double().T @ coefficients).T).norm(dim=1) / vectors.double().norm(dim=1)


def test_principal_basis_reproduces_a_low_rank_set_at_its_rank():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(50, generator=generator, dtype=torch.float64)
    directions = torch.randn(RANK, 50, generator=generator, dtype=torch.float64)
    X = mean + torch.randn(9, RANK, generator=generator, dtype=torch.float64) @ directions
    for whiten in (True, False):
        centre, basis, std = Fn.principal_basis(X, RANK, whiten)
        assert torch.allclose(centre, X.mean(0), atol=1e-12)
        unit = basis / std[:, None] if whiten else basis
        assert torch.allclose(unit @ unit.T, torch.eye(RANK, dtype=torch.float64), atol=1e-10)  # orthonormal
        coefficients = torch.linalg.lstsq(basis.T, (X - centre).T).solution.T
        assert torch.allclose(centre + coefficients @ basis, X, atol=1e-10)  # exact at k = rank
        if whiten:  # a unit coefficient is one std: the coefficients have unit variance
            assert torch.allclose(coefficients.var(0), torch.ones(RANK, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(std.square().sum(), (X - X.mean(0)).square().sum() / 8, rtol=1e-10)  # all variance
    _, fewer, _ = Fn.principal_basis(X, RANK - 1)
    assert _residual(X - X.mean(0), fewer).max() > 1e-3  # one direction short: not exact
    with pytest.raises(ValueError, match=r"basis size must be in \[1, 8\]"):
        Fn.principal_basis(X, 9)


def test_output_lies_in_init_shift_and_the_span_of_the_basis():
    generator = torch.Generator().manual_seed(1)
    slots = Slots(("a", "b"), ((3, 4), (5,)), torch.randn(17, generator=generator))
    basis = OutputBasis(torch.randn(4, 17, generator=generator), torch.randn(17, generator=generator))
    net = Hypernetwork({"x": 3}, slots, None, HypernetSettings(hidden=8, output_scale=0.5), basis)
    assert net.mlp[-1].out_features == 4  # k coefficients, not the 17 values
    conditions = {"x": torch.randn(6, 3, generator=generator)}
    with torch.no_grad():
        assert torch.equal(net(conditions), (slots.init + basis.shift).expand(6, -1))  # untrained: init + shift
        for parameter in net.mlp.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
        values = net(conditions)
    offsets = values - slots.init - basis.shift
    assert offsets.norm(dim=1).min() > 1e-2 and _residual(offsets, basis.basis).max() < 1e-5
    coefficients = torch.linalg.lstsq(basis.basis.double().T, offsets.double().T).solution.T
    with torch.no_grad():
        expected = 0.5 * net.mlp(net.normalised(conditions))  # output_scale scales the coefficients
    assert torch.allclose(coefficients.float(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="spans 16 values but the adapter trains 17"):
        Hypernetwork({"x": 3}, slots, None, None, OutputBasis(torch.zeros(2, 16), torch.zeros(16)))


# ------------------------------------------------------------------------------------------------ the tiny U-Net


def _attached(seed: int = 0):
    from peft_inits.generation.hypernetwork_training import attach

    pipe = tiny_pipeline(seed=seed)
    return pipe, attach(pipe.unet, ADAPTER, 2)


def _write_dataset(root, attached, subject_ids, *, method="lora", init_seed=0, heldout=()) -> torch.Tensor:
    """A LoRA data set of synthetic adapters init + m + z @ W (deviations of rank RANK); returns their vectors."""
    generator = torch.Generator().manual_seed(7)
    size = attached.slots.size
    mean = 0.05 * torch.randn(size, generator=generator)
    directions = 0.05 * torch.randn(RANK, size, generator=generator)
    vectors = attached.slots.init + mean + torch.randn(len(subject_ids), RANK, generator=generator) @ directions
    entries = []
    for subject_id, vector in zip(subject_ids, vectors, strict=True):
        state = dict(attached.template)
        for key, part in zip(attached.keys, attached.slots.split(vector[None]).values(), strict=True):
            state[key] = part[0].contiguous()
        name = f"{subject_id}-seed0"
        write_adapter_dir(root / "adapters" / name, {WRAPPER_PREFIX + k: v for k, v in state.items()},
                          attached.adapter_config)  # fmt: skip
        split = "heldout" if subject_id in heldout else "train"
        entries.append(D.DatasetEntry(name, "x", subject_id, split, 0, f"references/{subject_id}", 0.0))
    D.write_manifest(D.AdapterDataset(method, "tiny", {"init_seed": init_seed}, entries), root)
    return vectors


def _train_args(out, dataset, *extra: str) -> list[str]:
    return tiny_hypernetwork_args(out, "--method", "lora", "--basis-dataset", str(dataset), "--basis-size", str(RANK),
                                  *extra)  # fmt: skip


TRAIN_IDS = ["s000", "s001", "s002", "s003", "s004", "s005"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("basis")
    _, attached = _attached()
    vectors = _write_dataset(root / "data", attached, [*TRAIN_IDS, "s257"], heldout={"s257"})
    attached.population.detach()
    meta = runner.main(runner.parse_args(_train_args(root / "run", root / "data")))
    references = root / "refs"
    references.mkdir()
    arrays, _ = D.subjects(4, 2)[1][0].images(3, 64, "references")
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(references / f"ref-{i}.png")
    return {"root": root, "run": root / "run", "data": root / "data", "meta": meta, "vectors": vectors,
            "references": references}  # fmt: skip


def test_the_basis_is_the_training_split_and_reproduces_it(trained):
    meta, run = trained["meta"], load_hypernetwork(trained["run"])
    basis = meta["basis"]
    assert basis["subjects"] == TRAIN_IDS and basis["adapters"] == 6  # the held-out entry s257 is not read
    assert basis["size"] == RANK and meta["sizes"]["outputs"] == RANK
    assert meta["sizes"]["predicted_values"] == run.net.init.numel() == trained["vectors"].shape[1]
    assert basis["explained_variance"] == pytest.approx(1.0, abs=1e-6)  # rank-3 deviations, k = 3
    train = trained["vectors"][:6].double()
    assert torch.allclose(run.net.shift.double(), train.mean(0) - run.net.init.double(), atol=1e-6)
    assert _residual(train - run.net.init - run.net.shift, run.net.basis).max() < 1e-5  # exact up to float32
    records = read_records(trained["run"] / "metrics.jsonl", "eval")
    assert records[0]["val_loss"] == records[0]["val_loss_mean_condition"]  # zero-init: the mean adapter


def test_a_training_step_through_a_basis_changes_only_the_mlp(trained):
    from peft_inits.diffusion.objective import Frozen
    from peft_inits.generation.hypernetwork_training import denoising_subjects
    from peft_inits.generation.workflow import Base, FeatureChoice

    pipe, attached = _attached()
    source = basis_source(BasisSettings(str(trained["data"]), RANK), method="lora", heldout=[], init_seed=0)
    basis, _ = fit_basis(source, attached.slots, attached.keys, attached.template, attached.layout, pipe.unet)
    frozen = Frozen(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler).to(torch.device("cpu"))
    sources = FeatureChoice(("vae",), cache_dir=None).build(Base(pipe.unet, pipe.vae, 64, "tiny"))
    settings = HypernetSettings(hidden=8, images=3, references=2, renders=2)
    data = denoising_subjects(D.subjects(2, 0)[0], frozen, sources, attached.unet, settings, 64, "epsilon")
    net = Hypernetwork({"vae": 24}, attached.slots, None, settings, basis)
    before_unet = {k: v.clone() for k, v in attached.unet.state_dict().items()}
    before_population = [p.detach().clone() for p in attached.population.parameters()]
    before_net = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    hypernetwork_task(attached.population, data).loss(net, {"rows": torch.tensor([0, 1])}).backward()
    optimizer.step()
    assert all(torch.equal(v, before_unet[k]) for k, v in attached.unet.state_dict().items())
    assert all(p.grad is None for p in attached.population.parameters())
    assert all(torch.equal(p, q) for p, q in zip(attached.population.parameters(), before_population, strict=True))
    assert (net.mlp[-1].weight != 0).all()  # the zero-init coefficient layer moved
    for name in ("init", "basis", "shift", "mean_0", "std_0"):
        assert torch.equal(net.state_dict()[name], before_net[name])
    assert {name for name, _ in net.named_parameters()} == {f"mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    attached.population.detach()


def test_resume_with_a_basis_is_exact(trained, tmp_path):
    killed = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, 4)
        runner.main(runner.parse_args(_train_args(killed, trained["data"])))
    runner.main(runner.parse_args(_train_args(killed, trained["data"], "--resume")))
    assert json.loads((killed / "summary.json").read_text())["resumed_from"] == 4
    assert without_timing(read_records(killed / "metrics.jsonl")) == without_timing(
        read_records(trained["run"] / "metrics.jsonl")
    )
    assert (killed / "weights" / "model.safetensors").read_bytes() == (
        trained["run"] / "weights" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match="other settings"):  # another basis size: another run
        runner.main(runner.parse_args(_train_args(killed, trained["data"], "--resume", "--basis-size", "2")))


def test_generated_lora_adapter_loads_and_lies_in_the_basis(trained, tmp_path):
    from peft import PeftModel

    out = tmp_path / "gen"
    args = ["generate-adapter", "--generator", str(trained["run"]), "--reference", str(trained["references"]),
            "--out", str(out), "--method", "lora"]  # fmt: skip
    runner.main(runner.parse_args(args))
    config, tensors = verify_adapter_dir(out)
    assert config["peft_type"] == "PI_LORA"
    run = load_hypernetwork(trained["run"])
    vector = adapter_vector(out, run.keys)
    offset = vector - run.net.init.double() - run.net.shift.double()
    assert offset.norm() > 1e-6 and _residual(offset[None], run.net.basis).item() < 1e-5
    model = PeftModel.from_pretrained(tiny_pipeline().unet, str(out))
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if ".lora_" in k}
    assert len(loaded) == len(run.keys) == 80  # 40 attn2 projections × (A, B)
    assert all(torch.equal(loaded[WRAPPER_PREFIX + k], tensors[WRAPPER_PREFIX + k]) for k in run.keys)


def test_bad_basis_inputs_are_refused_and_write_nothing(trained, tmp_path):
    root = tmp_path
    _, attached = _attached()
    cases = {
        "other-method": ({"method": "svfit"}, "holds svfit adapters; the hypernetwork predicts lora"),
        "leak": ({"subject_ids": [*TRAIN_IDS, "s258"]}, r"trained on held-out subjects \['s258'\]"),
        "gauge": ({"init_seed": 3}, "from init seed 3, the hypernetwork's adapter uses 0: not one gauge"),
    }
    for name, (change, message) in cases.items():
        _write_dataset(root / name, attached, change.pop("subject_ids", TRAIN_IDS), **change)
        with pytest.raises(ValueError, match=message):
            runner.main(runner.parse_args(_train_args(root / f"out-{name}", root / name)))
        assert not (root / f"out-{name}").exists()
    attached.population.detach()
    _, other = _attached(seed=1)  # the same adapter trained on another base: its fingerprints differ
    _write_dataset(root / "other-base", other, TRAIN_IDS)
    other.population.detach()
    with pytest.raises(ValueError, match="trained for another base model"):
        runner.main(runner.parse_args(_train_args(root / "out-base", root / "other-base")))
    with pytest.raises(ValueError, match="basis size 6 needs at least 7 training adapters"):
        runner.main(runner.parse_args(_train_args(root / "out-size", trained["data"], "--basis-size", "6")))
    with pytest.raises(FileNotFoundError, match="not an adapter dataset"):
        runner.main(runner.parse_args(_train_args(root / "out-missing", root / "nowhere")))
    assert not any((root / f"out-{n}").exists() for n in ("base", "size", "missing"))
    tampered = root / "tampered"  # a run whose weights hold another basis than its record
    shutil.copytree(trained["run"], tampered)
    weights = load_tensors(tampered / "weights" / "model.safetensors")
    weights["shift"] = weights["shift"] + 1.0
    save_file(weights, str(tampered / "weights" / "model.safetensors"))
    with pytest.raises(ValueError, match="digest mismatch"):
        load_hypernetwork(tampered)
