"""Adapters move between rounded copies of their base (fp32 ↔ bf16 ↔ fp16) for every method, and a base that differs
by more than rounding is still refused. The base is made of real weights of the shipped glyph U-Net that a tolerance
relative to the fingerprint's value alone refused as bf16 copies (issue 19)."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from peft_inits import functional as Fn
from peft_inits.glyph.assets import GLYPH_T2I
from peft_inits.registry import methods

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAIRS = list(itertools.permutations(DTYPES, 2))
CONFIGS = {method.name: method.config for method in methods()}
X = torch.randn(6, 512, generator=torch.Generator().manual_seed(1))
BLOCK = "attentions.{}.transformer_blocks.0"
BASES = {  # (ff.net.2: 512 → 128, attn2.to_q: 128 → 128) from two places of the U-Net
    "saved": (f"up_blocks.1.{BLOCK.format(1)}.ff.net.2.weight", f"down_blocks.2.{BLOCK.format(0)}.attn2.to_q.weight"),
    "other": (f"mid_block.{BLOCK.format(0)}.ff.net.2.weight", f"up_blocks.1.{BLOCK.format(1)}.attn1.to_q.weight"),
}


@functools.cache
def _unet_weights() -> dict[str, torch.Tensor]:
    return load_file(GLYPH_T2I / "unet" / "diffusion_pytorch_model.safetensors")


def _base(which: str = "saved") -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 128), nn.Tanh(), nn.Linear(128, 128))
    with torch.no_grad():
        for layer, key in zip((model[0], model[2]), BASES[which], strict=True):
            layer.weight.copy_(_unet_weights()[key])
    return model


def _config(method: str):
    # init_weights=False: a random, non-identity adapter, so the outputs compared carry the adapter's delta
    return CONFIGS[method](r=8, target_modules=["0", "2"], init_weights=False)


def _tolerance(*dtypes: torch.dtype) -> float:
    """Output tolerance relative to max |y|: the coarser dtype's roundoff, times the two layers' accumulation."""
    return 32 * max(Fn.unit_roundoff(d) for d in dtypes)


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize(("saved", "loaded"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_an_adapter_loads_onto_a_rounded_copy_of_its_base(method, saved, loaded, tmp_path):
    saved_dtype, loaded_dtype = DTYPES[saved], DTYPES[loaded]
    model = get_peft_model(_base().to(saved_dtype), _config(method))
    with torch.no_grad():
        want = model(X.to(saved_dtype)).float()
        change = (want - _base()(X)).abs().max()
    assert change > 0.1 * want.abs().max(), "the adapter must change the output for the test to mean anything"
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_base().to(loaded_dtype), tmp_path)
    with torch.no_grad():
        got = reloaded(X.to(loaded_dtype)).float()
    tol = _tolerance(saved_dtype, loaded_dtype) * float(want.abs().max())
    assert (got - want).abs().max() <= tol


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_different_base_is_refused_in_every_dtype(method, dtype, tmp_path):
    model = get_peft_model(_base(), _config(method))
    model.save_pretrained(tmp_path)
    other = _base("other").to(DTYPES[dtype])
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="different base weight"):
        PeftModel.from_pretrained(other, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_probe_tolerance_follows_the_magnitude_of_the_terms_not_the_value():
    """A rounded copy moves a probe by ~u·‖W‖_F whatever the probe's own value, and is accepted; a weight that differs
    by more than K·u·‖W‖_F is refused (K = 8: 3 % of ‖W‖_F against a bf16 side, 0.4 % otherwise)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        W = torch.randn(768, 768, generator=g) * 0.02 + 0.01  # an offset: the rounding errors share a sign
        fp = Fn.weight_fingerprint(W)
        for dtype in (torch.bfloat16, torch.float16):
            copy = Fn.weight_fingerprint(W.to(dtype))
            assert Fn.fingerprints_match(fp, copy) and Fn.fingerprints_match(copy, fp)
        for noise, dtypes in ((1.0, DTYPES.values()), (0.2, (torch.float32, torch.float16))):
            other = W + noise * 0.02 * torch.randn(W.shape, generator=g)  # ‖other − W‖_F ≈ 0.9·noise·‖W‖_F
            for dtype in dtypes:
                assert not Fn.fingerprints_match(fp, Fn.weight_fingerprint(other.to(dtype)))


def test_every_weight_of_the_shipped_unet_matches_its_rounded_copies():
    for name, weight in _unet_weights().items():
        if weight.ndim in (2, 4) and min(weight.shape[:2]) > 1:
            fp = Fn.weight_fingerprint(weight.float())
            for dtype in (torch.bfloat16, torch.float16):
                assert Fn.fingerprints_match(fp, Fn.weight_fingerprint(weight.to(dtype))), name


def test_the_fingerprint_records_the_weight_roundoff_and_legacy_ones_still_match():
    W = torch.randn(64, 48, generator=torch.Generator().manual_seed(2))
    fp32, bf16 = Fn.weight_fingerprint(W), Fn.weight_fingerprint(W.bfloat16())
    assert float(fp32[4]) == 2.0**-24 and float(bf16[4]) == 2.0**-8
    assert Fn.fingerprints_match(fp32[:4], bf16) and Fn.fingerprints_match(bf16[:4], fp32)  # saved before 2026-12-05
