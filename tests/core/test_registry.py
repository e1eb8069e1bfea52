"""The method registry: round trips for every method, a method defined outside the package working everywhere, and
the new methods (PiSSA parity with PEFT, MiLoRA's minor components, rank-revealing LoLDU pivoting)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import pickle
from dataclasses import dataclass, field

import pytest
import torch
from model_cases import MLP
from peft import LoraConfig, PeftModel, get_peft_model
from runner_helpers import load_script
from torch import Tensor, nn

from peft_inits import AdapterConfig, AdapterSpec, AdapterWeights, LoLDUConfig, MiLoRAConfig, PiSSAConfig
from peft_inits import functional as Fn
from peft_inits.checkpoint import load_adapter, read_config, save_adapter
from peft_inits.cli import compare, encoder
from peft_inits.descriptors import gains_descriptor, record_from_model
from peft_inits.export import export_peft_lora
from peft_inits.registration import register_method, unregister_method
from peft_inits.registry import Method, get_method, method_names, methods, option_kind
from peft_inits.training.defaults import RunnerDefaults, register_runner_defaults, runner_defaults
from peft_inits.training.options import option_owners, option_settings
from peft_inits.training.prepare import prepare

pytest_plugins = ("runner_fixtures",)
X = torch.randn(6, 13, generator=torch.Generator().manual_seed(0))


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def _changed_value(f) -> object:
    """A valid non-default value of one option field, derived from its type and metadata."""
    kind = option_kind(f.type)[0]
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != f.default)
    if kind is bool:
        return not f.default
    if kind is int:
        return f.default + 1
    return 0.5


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", method_names())
def test_config_json_round_trip_for_every_option(name, tmp_path):
    method = get_method(name)
    changed = {f.name: _changed_value(f) for f in method.option_fields()}
    config = method.config(r=3, alpha=5.0, target_modules=["fc1", "fc2"], **changed)
    again = method.config.from_peft_type(**json.loads(json.dumps(config.to_dict())))
    assert again == config and type(again) is method.config
    model = get_peft_model(_mlp(), config)
    save_adapter(model, tmp_path / "a")
    assert read_config(tmp_path / "a").to_dict() == config.to_dict()


@pytest.mark.parametrize("name", method_names())
def test_an_adapted_model_pickles(name):
    model = get_peft_model(_mlp(), get_method(name).config(r=3, target_modules=["fc1"], init_weights=False))
    assert type(model.base_model.model.fc1.adapter("default").spec.options) is get_method(name).config.Options
    assert torch.equal(pickle.loads(pickle.dumps(model))(X), model(X))


@pytest.mark.parametrize("name", method_names())
def test_cli_flag_to_setting_to_config_for_every_option(name, tiny_encoder, sentiment_csv, cache, tmp_path):
    method = get_method(name)
    argv = ["--model", str(tiny_encoder), "--data", str(sentiment_csv), "--method", name, "--r", "2"]
    expected = {}
    for f in method.option_fields():
        value = _changed_value(f)
        flag = "--" + f.name.replace("_", "-")
        expected[f.name] = value
        argv += [flag if value is not False else "--no-" + flag[2:]]
        if not isinstance(value, bool):
            argv.append(str(value))
    args = encoder.parse_args(argv)
    settings = encoder.adapter_settings(args)
    assert settings.options == expected
    env = encoder.task_setup(encoder.parse_args([*argv, "--cache-dir", str(cache)]))
    prepared = prepare(env.build_model(), settings)
    assert prepared.config.method_options() == {**method.make_options().__dict__, **expected}
    # the same options from a TOML file
    toml = tmp_path / "run.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in expected.items()) + "\n")
    from_file = encoder.parse_args(["--model", str(tiny_encoder), "--method", name, "--config", str(toml)])
    assert encoder.adapter_settings(from_file).options == expected


def test_an_option_of_another_method_is_refused():
    with pytest.raises(ValueError, match="--pivoting is an option of loldu, not of svfit"):
        encoder.adapter_settings(encoder.parse_args(["--method", "svfit", "--pivoting", "rook"]))


def test_shared_option_names_share_one_flag():
    assert option_owners()["svd"] == ("svfit", "pissa")
    fields = {f.name: f for f in dataclasses.fields(option_settings())}
    assert fields["svd_niter"].type is int and fields["energy_threshold"].type == float | None
    assert fields["pivoting"].metadata["choices"] == ("partial", "rook", "complete")
    assert [a.option_strings for a in encoder.build_parser()._actions if a.dest == "svd"] == [["--svd"]]


def test_registry_refuses_bad_declarations():
    lora = get_method("lora")
    with pytest.raises(ValueError, match="already registered"):
        register_method(copy.copy(lora))
    with pytest.raises(ValueError, match="peft_type 'PI_LORA' is already used"):
        register_method(Method("lora2", "PI_LORA", lora.config, lora.weights))
    with pytest.raises(ValueError, match="lower-case"):
        register_method(Method("Bad-Name", "BAD", lora.config, lora.weights))
    with pytest.raises(ValueError, match="LoRAConfig is already the config of method 'lora'"):
        register_method(Method("lora2", "LORA2", lora.config, lora.weights))
    assert method_names().count("lora2") == 0 and lora.config.method == "lora"


def test_a_config_must_be_an_explicit_dataclass_that_keeps_the_shared_fields():
    lora = get_method("lora")

    class Undecorated(AdapterConfig):
        knob: float = 1.0

    @dataclass
    class Redefines(AdapterConfig):
        r: int = 16

    @dataclass
    class Listy(AdapterConfig):
        names: list = field(default_factory=list)

    with pytest.raises(TypeError, match=r"must be a @dataclass subclass of peft_inits\.AdapterConfig"):
        register_method(Method("undecorated", "UNDECORATED", Undecorated, lora.weights))
    with pytest.raises(ValueError, match=r"Redefines redefines field\(s\) \['r'\] that every config shares"):
        register_method(Method("redefines", "REDEFINES", Redefines, lora.weights))
    with pytest.raises(TypeError, match=r"Listy\.names: method options must be bool, int, float or str"):
        register_method(Method("listy", "LISTY", Listy, lora.weights))
    assert not {"undecorated", "redefines", "listy"} & set(method_names())


@pytest.mark.parametrize("name", method_names())
def test_options_are_the_config_fields_beyond_the_shared_ones(name):
    method = get_method(name)
    shared = {f.name for f in dataclasses.fields(AdapterConfig)}
    own = [f for f in dataclasses.fields(method.config) if f.name not in shared]
    assert [(f.name, f.default, dict(f.metadata)) for f in method.option_fields()] == [
        (f.name, f.default, dict(f.metadata)) for f in own
    ]
    assert method.config.__module__ == f"peft_inits.methods.{name}" and method.config.method == name
    assert method.options.__module__ == method.config.__module__
    assert set(inspect.signature(method.config).parameters) == shared | {f.name for f in own}


def test_runner_defaults_are_the_application_table():
    assert runner_defaults("svfit", "classifier") == RunnerDefaults(lr=3e-2, r="full")
    assert runner_defaults("pissa", "glyph") == RunnerDefaults(lr=3e-3, r=8)
    with pytest.raises(ValueError, match="unknown runner families \\['gpu'\\]"):
        register_runner_defaults("lora", gpu=RunnerDefaults(lr=1.0))
    with pytest.raises(TypeError, match="must be RunnerDefaults"):
        register_runner_defaults("lora", sd=1e-4)
    with pytest.raises(ValueError, match="declares no defaults for the 'classifier' runners"):
        runner_defaults("nope", "classifier")
    assert runner_defaults("lora", "sd") == RunnerDefaults(lr=1e-4, r=8)  # the refused calls changed nothing
    with pytest.raises(ValueError, match="unknown adapter method 'nope'"):
        get_method("nope")


# ------------------------------------------------------------------------------------------------ a method from outside


@dataclass
class RandGainConfig(AdapterConfig):
    """test method: random frozen projections, trainable gain"""

    std: float = field(default=1.0, metadata={"help": "std of the frozen random projections"})

    def check_options(self) -> None:
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")


class RandGainWeights(AdapterWeights):
    """Frozen seeded random down/up projections, a trainable gain starting at 0 (identity at step 0)."""

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        m, n = Fn.weight_matrix(weight).shape
        super().__init__(spec.r, spec.scale)
        g = torch.Generator().manual_seed(spec.seed)
        std = spec.options.std
        self.register_buffer("down", std * torch.randn(spec.r, n, generator=g) / math.sqrt(n))
        self.register_buffer("up", std * torch.randn(m, spec.r, generator=g) / math.sqrt(spec.r))
        self.gain = nn.Parameter(torch.zeros(spec.r))

    def factors(self):
        return self.down, self.gain, self.up

    @classmethod
    def trainable_count(cls, options, r, m, n):
        return r

    def relative_gain(self):
        return self.gain.detach().float().cpu()


@pytest.fixture
def randgain():
    method = register_method(Method("randgain", "TEST_RANDGAIN", RandGainConfig, RandGainWeights))
    register_runner_defaults("randgain", classifier=RunnerDefaults(lr=5e-2, r=4), sd=RunnerDefaults(lr=1e-2, r=4))
    yield method
    unregister_method("randgain")
    assert "randgain" not in method_names()


def test_outside_method_works_everywhere_the_builtins_do(randgain, tmp_path):
    base = _mlp()
    reference = base(X)
    assert randgain.config is RandGainConfig and RandGainConfig.peft_type_name == "TEST_RANDGAIN"
    assert runner_defaults("randgain", "glyph") == RunnerDefaults(lr=1e-2, r=4)  # glyph falls back to sd
    with pytest.raises(ValueError, match="std must be > 0, got -1"):
        RandGainConfig(std=-1.0)
    with pytest.raises(ValueError, match="std must be > 0, got 0"):
        randgain.make_options({"std": 0.0})
    model = get_peft_model(copy.deepcopy(base), RandGainConfig(r=4, std=0.5, target_modules=["fc1", "fc2"]))
    assert torch.equal(model(X), reference)
    assert model.get_nb_trainable_parameters()[0] == 8
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    target = torch.randn(6, 7, generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(5):
        loss = (model(X) - target).pow(2).mean()
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]
    trained = model(X).detach()
    save_adapter(model, tmp_path / "a")
    assert torch.equal(load_adapter(copy.deepcopy(base), tmp_path / "a")(X), trained)
    assert torch.equal(PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a")(X), trained)
    export = export_peft_lora(model, tmp_path / "lora")
    as_lora = PeftModel.from_pretrained(copy.deepcopy(base), export)
    assert torch.allclose(as_lora(X), trained, atol=1e-5)
    records = [record_from_model(model, "a"), record_from_model(model, "b")]
    assert gains_descriptor(records).shape == (2, 8)
    merged = model.merge_and_unload()
    assert torch.allclose(merged(X), trained, atol=1e-5)


def test_outside_method_in_compare_and_a_runner(randgain, tiny_encoder, sentiment_csv, cache, tmp_path):
    common = ["--model", str(tiny_encoder), "--data", str(sentiment_csv), "--cache-dir", str(cache), "--steps", "2",
              "--batch-size", "8", "--no-progress"]  # fmt: skip
    result = compare.main(compare.parse_args([*common, "--methods", "lora,randgain", "--timing-steps", "1",
                                              "--std", "0.5", "--output-dir", str(tmp_path / "c")]))  # fmt: skip
    rows = {row["label"]: row for row in result["rows"]}
    assert rows["randgain"]["adapter"] == "16"  # tiny BERT: 4 query/value matrices × r = 4 (its runner default)
    summary = encoder.main(encoder.parse_args([*common, "--method", "randgain", "--std", "2.0",
                                               "--output-dir", str(tmp_path / "e")]))  # fmt: skip
    assert summary["adapter_params"] == 16
    config = json.loads((tmp_path / "e" / "weights" / "adapter_config.json").read_text())
    assert config["peft_type"] == "TEST_RANDGAIN" and config["std"] == 2.0


# ------------------------------------------------------------------------------------------------ PiSSA and MiLoRA


def test_pissa_matches_peft_pissa_after_training():
    """Same data, same optimizer steps: our merged weights equal PEFT's own `init_lora_weights="pissa"` merge."""
    torch.manual_seed(0)
    base = _mlp()
    ours = get_peft_model(copy.deepcopy(base), PiSSAConfig(r=4, alpha=8.0, target_modules=["fc1", "fc2"]))
    peft = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=["fc1", "fc2"], lora_dropout=0.0),
    )
    assert torch.allclose(ours(X), base(X), atol=0) and torch.allclose(peft(X), base(X), atol=1e-5)
    target = torch.randn(6, 7, generator=torch.Generator().manual_seed(1))
    for model in (ours, peft):
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(5):
            data = X + 0.1 * step
            (model(data) - target).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    ours_merged, peft_merged = ours.merge_and_unload(), peft.merge_and_unload()
    for name in ("fc1", "fc2"):
        a, b = getattr(ours_merged, name).weight, getattr(peft_merged, name).weight
        assert not torch.allclose(a, getattr(base, name).weight, atol=1e-3)  # training moved it
        assert torch.allclose(a, b, atol=2e-5), float((a - b).abs().max())


@pytest.mark.parametrize("config_cls", [PiSSAConfig, MiLoRAConfig])
def test_pissa_and_milora_start_from_the_right_singular_triplets(config_cls):
    base = _mlp()
    W = base.fc1.weight.detach().double()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    model = get_peft_model(copy.deepcopy(base), config_cls(r=3, alpha=6.0, target_modules=["fc1"]))
    adapter = model.base_model.model.fc1.adapter("default")
    chosen = slice(0, 3) if config_cls is PiSSAConfig else slice(-3, None)
    assert torch.allclose(adapter.s0.double(), S[chosen], atol=1e-5)
    # B₀A₀ · scale is the chosen rank-3 part of W (scale = alpha / r = 2)
    part = (U[:, chosen] * S[chosen]) @ Vh[chosen]
    product = 2.0 * adapter.lora_B.double() @ adapter.lora_A.double()
    assert torch.allclose(product, part, atol=1e-5)
    if config_cls is MiLoRAConfig:
        assert float(adapter.s0.max()) <= float(S[-3]) + 1e-6 < float(S[0])


def test_randomized_pissa_reloads_to_the_same_factors(tmp_path):
    model = get_peft_model(_mlp(), PiSSAConfig(r=3, svd="randomized", svd_niter=4, target_modules=["fc1"]))
    with torch.no_grad():
        model.base_model.model.fc1.adapter("default").lora_A.mul_(1.1)
    save_adapter(model, tmp_path / "a")
    assert torch.equal(load_adapter(_mlp(), tmp_path / "a")(X), model(X))


# ------------------------------------------------------------------------------------------------ LoLDU pivoting


@pytest.mark.parametrize("pivoting", ["partial", "rook", "complete"])
def test_loldu_pivoting_full_rank_reproduces_w_and_is_the_identity(pivoting):
    base = _mlp()
    W = base.fc2.weight.detach()
    model = get_peft_model(copy.deepcopy(base), LoLDUConfig(r=7, pivoting=pivoting, target_modules=["fc2"]))
    layer = model.base_model.model.fc2
    adapter = layer.adapter("default")
    assert torch.equal(model(X), base(X))
    rebuilt = (adapter.up * adapter.D) @ adapter.down  # P L diag(D) U Q at full rank
    assert torch.allclose(rebuilt, W, atol=1e-5)
    with torch.no_grad():
        adapter.z.zero_()  # z = 0 removes the whole kept term: W + ΔW = W − W_r = 0 at full rank
    assert torch.allclose(W + layer.get_delta_weight("default"), torch.zeros_like(W), atol=1e-5)


def test_rook_and_complete_capture_at_least_partial_energy_at_every_rank():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    W = (U[:, :30] * torch.logspace(0, -3, 30, dtype=torch.float64)) @ V.T
    W = W[torch.randperm(40, generator=g)]
    for r in range(1, 31):
        error = {}
        for pivoting in ("partial", "rook", "complete"):
            f = Fn.pivoted_ldu(W, r, pivoting=pivoting, dtype=torch.float64)
            error[pivoting] = float(torch.linalg.norm(W - (f.up() * f.D) @ f.down()))
        assert error["rook"] <= error["partial"] * (1 + 1e-9) + 1e-12, (r, error)
        assert error["complete"] <= error["partial"] * (1 + 1e-9) + 1e-12, (r, error)


def test_compare_sweeps_a_method_option():
    from peft_inits.studies.variants import build_variants
    from peft_inits.training.settings import AdapterSettings

    rows = build_variants(["lora", "loldu"], AdapterSettings(), sweeps=["loldu.pivoting=partial,rook,complete"])
    assert [v.label for v in rows] == ["lora", *(f"loldu pivoting={p}" for p in ("partial", "rook", "complete"))]
    assert [v.adapter.options for v in rows[1:]] == [{"pivoting": p} for p in ("partial", "rook", "complete")]


def test_compare_script_lists_every_registered_method():
    script = load_script("compare")
    assert script.parse_args([]).methods == [*method_names(), "full", "head"]
    assert [m.name for m in methods()] == list(method_names())
