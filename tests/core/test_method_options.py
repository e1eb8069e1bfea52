"""Method options at model level: SVFit energy threshold and randomized SVD, LoLDU z inits and trainable σ."""

from __future__ import annotations

import pytest
import torch
from model_cases import MLP
from peft import PeftModel, get_peft_model
from torch import nn

from peft_inits import LoLDUConfig, SVFitConfig
from peft_inits import functional as Fn
from peft_inits.methods.loldu import IDENTITY_Z_INITS, Z_INITS, initial_z

X = torch.randn(5, 13, generator=torch.Generator().manual_seed(0))


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def test_energy_threshold_picks_the_smallest_rank_reaching_it(tmp_path):
    base = _mlp()
    sigma = torch.linalg.svdvals(base.fc1.weight.double())
    expected = Fn.energy_rank(sigma, 0.9)
    assert 1 < expected < 13
    model = get_peft_model(base, SVFitConfig(r=13, energy_threshold=0.9, target_modules=["fc1"]))
    adapter = model.base_model.model.fc1.adapter("default")
    assert adapter.r == expected and adapter.s.numel() == expected
    assert model.get_nb_trainable_parameters()[0] == expected
    kept = (sigma[:expected] ** 2).sum() / (sigma**2).sum()
    assert kept >= 0.9 > (sigma[: expected - 1] ** 2).sum() / (sigma**2).sum()
    with torch.no_grad():
        adapter.s.mul_(1.2)
    model.save_pretrained(tmp_path)
    assert torch.equal(PeftModel.from_pretrained(_mlp(), tmp_path)(X), model(X))


def test_energy_threshold_is_capped_by_r():
    model = get_peft_model(_mlp(), SVFitConfig(r=2, energy_threshold=0.999, target_modules=["fc1"]))
    assert model.base_model.model.fc1.adapter("default").r == 2


def test_randomized_svd_reloads_to_the_same_factors(tmp_path):
    config = SVFitConfig(r=4, svd="randomized", svd_niter=3, target_modules=["fc1", "fc2"])
    model = get_peft_model(_mlp(), config)
    exact = Fn.svd_top_r(_mlp().fc1.weight, 4)
    adapter = model.base_model.model.fc1.adapter("default")
    assert torch.allclose(adapter.s0, exact.S, rtol=1e-3)
    with torch.no_grad():
        adapter.s.mul_(0.7)
    model.save_pretrained(tmp_path)
    assert torch.equal(PeftModel.from_pretrained(_mlp(), tmp_path)(X), model(X))


def _official_loldu_weight(W: torch.Tensor, r: int, sigma: float, z0: torch.Tensor, z: torch.Tensor, init: str):
    """W′ of the official LoLDU code, written from the paper and the behaviour the official code shows when run: full
    LU with partial pivoting, residual W − σ·P L_r diag(z_res) U_r, with z_res = z₀ for the three inits whose in-place
    re-initialisation aliases the residual's tensor (uniform, normal, constant) and the true D_r otherwise."""
    P, L, U = torch.linalg.lu(W.double())
    D = torch.diagonal(U)[:r]
    U_unit = U[:r] / D[:, None]
    up = P @ L[:, :r]
    z_res = z0.double() if init in ("uniform", "normal", "constant") else D
    residual = W.double() - sigma * (up * z_res) @ U_unit
    return residual + sigma * (up * z.double()) @ U_unit


@pytest.mark.parametrize("init", Z_INITS)
def test_loldu_z_init_matches_the_official_semantics(init):
    """Step 0 and after a change of z: merged W equals the official code's W′ for every z_init."""
    base = _mlp()
    W = base.fc2.weight.detach().clone()
    model = get_peft_model(base, LoLDUConfig(r=4, alpha=8, z_init=init, target_modules=["fc2"]))
    layer = model.base_model.model.fc2
    adapter = layer.adapter("default")
    z0 = adapter.z.detach().clone()
    step0 = W.double() + layer.get_delta_weight("default").double()
    assert torch.allclose(step0, _official_loldu_weight(W, 4, 2.0, z0, z0, init), atol=1e-5)
    assert torch.equal(layer.get_delta_weight("default"), torch.zeros_like(W)) == (init in IDENTITY_Z_INITS)
    with torch.no_grad():
        adapter.z.add_(torch.linspace(-0.3, 0.4, 4))
    trained = W.double() + layer.get_delta_weight("default").double()
    assert torch.allclose(trained, _official_loldu_weight(W, 4, 2.0, z0, adapter.z.detach(), init), atol=1e-5)


def test_loldu_follows_the_official_formula_on_a_rank_deficient_weight():
    """Rank 12 < r = 16: the pivots past the rank are round-off, and so are the L columns and U rows divided by them;
    after any z the merged weight is still the official W + σ·P·L_r·diag(z − D_r)·U_r (full LU, partial pivoting)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 12, generator=g) @ torch.randn(12, 48, generator=g)
    layer = nn.Linear(48, 64, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W)
    model = get_peft_model(nn.Sequential(layer), LoLDUConfig(r=16, z_init="lu", target_modules=["0"]))
    adapted = model.base_model.model[0]
    z = adapted.adapter("default").z
    with torch.no_grad():
        z.add_(torch.randn(16, generator=g) * 0.5)
    P, L, U = torch.linalg.lu(W)
    D = torch.diagonal(U)[:16]
    official = W + (P @ L[:, :16]) @ torch.diag(z.detach() - D) @ (U[:16] / D[:, None])
    assert (D[12:].abs() < 1e-4 * D[:12].abs().min()).all()  # the case the test is about: round-off pivots
    merged = W + adapted.get_delta_weight("default")
    assert torch.allclose(merged, official, rtol=0, atol=1e-5 * float(official.abs().max()))


def test_loldu_normal_init_at_rank_one_is_finite():
    model = get_peft_model(_mlp(), LoLDUConfig(r=1, z_init="normal", target_modules=["fc2"]))
    assert torch.isfinite(model.base_model.model.fc2.adapter("default").z).all()


def test_trainable_sigma_gets_a_gradient_and_is_saved(tmp_path):
    model = get_peft_model(_mlp(), LoLDUConfig(r=3, train_sigma=True, target_modules=["fc1"]))
    adapter = model.base_model.model.fc1.adapter("default")
    with torch.no_grad():
        adapter.z.mul_(1.3)
    model(X).pow(2).sum().backward()
    assert adapter.sigma.grad is not None and adapter.sigma.grad.abs() > 0
    with torch.no_grad():
        adapter.sigma.fill_(1.7)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_mlp(), tmp_path)
    assert float(loaded.base_model.model.fc1.adapter("default").sigma) == pytest.approx(1.7)
    assert torch.equal(loaded(X), model(X))


@pytest.mark.parametrize("init", Z_INITS)
def test_loldu_initial_z(init):
    D = torch.tensor([2.0, -1.0, 4.0, 3.0])
    z = initial_z(D, init, torch.Generator().manual_seed(0))
    assert z.shape == D.shape and torch.isfinite(z).all()
    if init == "uniform":
        assert z.abs().max() <= D.mean() / 2
    if init == "constant":
        assert torch.equal(z, torch.full((4,), 2.0))


@pytest.mark.parametrize("init", [i for i in IDENTITY_Z_INITS if i != "lu"])
def test_identity_z_inits_train_like_lu_under_adam(init):
    """z − z₀ follows the same Adam trajectory whatever z₀, so ΔW after training matches `lu`'s up to rounding."""
    deltas = {}
    for name in ("lu", init):
        model = get_peft_model(_mlp(), LoLDUConfig(r=4, z_init=name, target_modules=["fc2"]))
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(4):
            model(X + step).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        deltas[name] = model.base_model.model.fc2.get_delta_weight("default").detach()
    assert deltas["lu"].abs().max() > 1e-3
    assert torch.allclose(deltas[init], deltas["lu"], atol=1e-5)
