"""LoLDU (Shi et al. 2024, arXiv 2410.13618): frozen P·L_r and U_r of a pivoted LDU; only the diagonal z trains.

ΔW = P L_r diag(σ·z − σ₀·z_ref) U_r with σ = alpha / r (fixed unless `train_sigma`). `z_ref` is what the official
code (SKDDJ/LoLDU, `get_residual_matrix`) builds its residual from: D_r for `lu`, `ones`, `zeros`, `s_uniform` and
`s_normal` (so all but `lu` change the output at step 0), but z₀ itself for `uniform`, `normal` and `constant`, whose
in-place re-initialisation aliases the residual's tensor — those three are identities at step 0 (checked by running
the official code).
With plain Adam and no weight decay on z (our runners never decay vectors), the trajectory of z − z₀ is then the
same for every identity init: only weight decay would tell `lu`, `uniform`, `normal` and `constant` apart.

`pivoting="rook"` or `"complete"` (not in the paper) pick large pivots first, so the kept rank-r term captures more
of W at small r; their column permutation joins the down factor. `partial` (row pivoting) is the official code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..adapters import AdapterSpec, DecomposedWeights, relative_change, set_random
from ..config import AdapterConfig
from ..registration import register_method
from ..registry import Method, MethodOptions

Z_INITS = ("lu", "uniform", "s_uniform", "normal", "s_normal", "constant", "ones", "zeros")
IDENTITY_Z_INITS = ("lu", "uniform", "normal", "constant")  # residual built from z₀: no change at step 0


@dataclass
class LoLDUConfig(AdapterConfig):
    """LoLDU (arXiv 2410.13618): train only the diagonal z of a pivoted LDU (r values, +1 if σ trains)."""

    z_init: str = field(
        default="lu",
        metadata={"help": "initial z (the official code's options; see IDENTITY_Z_INITS)", "choices": Z_INITS},
    )
    train_sigma: bool = field(default=False, metadata={"help": "train the scale σ = alpha / r as well"})
    ldu_method: str = field(
        default="auto",
        metadata={"help": "truncated (first r steps only), full LU, or auto", "choices": ("auto", "truncated", "full")},
    )
    pivoting: str = field(
        default="partial",
        metadata={"help": "partial (official, rows), rook or complete", "choices": ("partial", "rook", "complete")},
    )


def initial_z(D: Tensor, init: str, generator: torch.Generator | None = None) -> Tensor:
    """z₀ for each `z_init` of the official code (`normal` at r = 1, where the official code fails, uses std 0)."""
    r = D.shape[0]
    kw = {"dtype": D.dtype, "device": D.device}
    if init == "lu":
        return D.clone()
    if init == "uniform":
        half = abs(float(D.mean()) / 2)
        return torch.empty(r, **kw).uniform_(-half, half, generator=generator)
    if init == "s_uniform":
        return torch.empty(r, **kw).uniform_(-1.0, 1.0, generator=generator)
    if init == "normal":
        std = float(D.std()) if r > 1 else 0.0
        return float(D.mean()) + std * torch.randn(r, generator=generator, **kw)
    if init == "s_normal":
        return torch.randn(r, generator=generator, **kw)
    if init == "constant":
        return torch.full((r,), float(D.mean()), **kw)
    if init == "ones":
        return torch.ones_like(D)
    if init == "zeros":
        return torch.zeros_like(D)
    raise ValueError(f"unknown LoLDU z_init {init!r}; choose one of {', '.join(Z_INITS)}")


class LoLDUWeights(DecomposedWeights):
    """down = U_r (with the column permutation for rook/complete), up = P·L_r, gain = σ·z − σ₀·z_ref."""

    reference_name = "D"
    attaches_fingerprint = True
    shares_factors = True

    def __init__(self, weight: Tensor, spec: AdapterSpec) -> None:
        options = spec.options  # LoLDUConfig's option fields
        fingerprint = Fn.checked_fingerprint(weight, "base weight")  # one read of W; its ‖W‖ estimate: the tolerance
        f = Fn.pivoted_ldu(
            weight,
            spec.r,
            method=options.ldu_method,
            pivoting=options.pivoting,
            dtype=spec.dtype,
            scale=float(fingerprint[0]),
        )
        super().__init__(spec.r, 1.0)
        self.decompose_dtype = spec.dtype
        self.store_factors(weight, f.down().float(), f.up().float(), spec.embed_factors)
        self.register_buffer("D", f.D.float())
        # The pivot order is saved so a reload onto a rounded copy of the base (bf16, fp16) can follow it.
        self.register_buffer("pivot_rows", f.perm[: spec.r].clone())
        cols = f.col_perm[: spec.r].clone() if f.col_perm is not None else torch.empty(0, dtype=torch.long)
        self.register_buffer("pivot_cols", cols.to(f.perm.device))
        sigma = torch.tensor(spec.scale)
        self.register_buffer("sigma0", sigma.clone())
        if options.train_sigma:
            self.sigma = nn.Parameter(sigma.clone())
        else:
            self.register_buffer("sigma", sigma.clone())
        generator = torch.Generator().manual_seed(spec.seed)
        z0 = initial_z(self.D.cpu(), options.z_init, generator).to(self.D.device)
        self.z = nn.Parameter(z0.clone())
        self.register_buffer("z_ref", z0.clone() if options.z_init in IDENTITY_Z_INITS else self.D.clone())
        self.attach_fingerprint(fingerprint)

    def factors(self) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.down, Fn.loldu_gain(self.z, self.z_ref, self.sigma, self.sigma0), self.up

    def init_random(self, generator: torch.Generator) -> None:
        """z = z₀ + mean|D|·N(0, 1): the gain leaves its step-0 value, so ΔW ≠ 0; D, z_ref and the factors stay."""
        noise = torch.randn(self.z.shape, generator=generator) * float(self.D.abs().mean().clamp_min(1e-3))
        set_random(self.z, self.z.detach().cpu() + noise)

    @classmethod
    def trainable_count(cls, options: MethodOptions, r: int, m: int, n: int) -> int:
        return r + int(options.train_sigma)

    def repin(self, state, weight: Tensor) -> dict[str, Tensor] | None:
        rows, cols = state.get("pivot_rows"), state.get("pivot_cols")
        if rows is None or cols is None:
            raise ValueError("LoLDU adapter file has no pivot order (pivot_rows / pivot_cols)")
        if rows.shape != self.pivot_rows.shape or cols.shape != self.pivot_cols.shape:
            return None  # a rank or pivoting mismatch: the reference check reports it
        if torch.equal(rows.cpu(), self.pivot_rows.cpu()) and torch.equal(cols.cpu(), self.pivot_cols.cpu()):
            return None
        f = Fn.ldu_with_pivots(weight, rows, cols if cols.numel() else None, dtype=self.decompose_dtype)
        device = self.D.device
        return {"down": f.down().float().to(device), "up": f.up().float().to(device), "D": f.D.float().to(device)}

    def factor_choices(self) -> tuple:
        return tuple(self.pivot_rows.tolist()), tuple(self.pivot_cols.tolist())  # followed when loaded (`repin`)

    def relative_gain(self) -> Tensor:
        init = self.sigma0 * self.z_ref
        return relative_change(self.sigma * self.z - init, init)


LOLDU = register_method(Method(name="loldu", peft_type="LOLDU", config=LoLDUConfig, weights=LoLDUWeights))
