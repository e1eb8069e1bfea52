"""Reference maths of every adapter: pure tensor functions, no modules, no state.

All three adapters compute the same *down → gain → up* delta (DESIGN.md §1)::

    Δy = scale · C · (g ⊙ (R · x))        ΔW = scale · C · diag(g) · R

with R (r×n) the down factor, g (r,) the gain and C (m×r) the up factor. Layers, kernels, tests and benchmarks call
these functions; nothing else re-derives the maths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOLDU_Z_INITS = ("lu", "uniform", "s_uniform", "normal", "s_normal", "constant", "ones", "zeros")
FINGERPRINT_SEED = 20241017


# --------------------------------------------------------------------------------------------------- validation


def weight_matrix(weight: Tensor) -> Tensor:
    """View a Linear (out × in) or Conv2d (out × in × kh × kw) weight as the m × n matrix that is decomposed."""
    return weight.reshape(weight.shape[0], -1)


def check_rank(r: int, m: int, n: int, what: str = "weight") -> None:
    """Raise a clear error unless 1 ≤ r ≤ min(m, n)."""
    if not isinstance(r, int) or isinstance(r, bool):
        raise TypeError(f"rank must be an int, got {type(r).__name__} ({r!r})")
    if not 1 <= r <= min(m, n):
        limit = min(m, n)
        raise ValueError(f"rank r={r} is out of range for {what} of shape {m}×{n}: need 1 ≤ r ≤ min(m, n) = {limit}")


def check_finite(weight: Tensor, what: str = "weight") -> None:
    """Refuse weights holding inf or NaN: their decomposition would silently poison the adapter."""
    if weight.device.type != "meta" and not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{what} has {bad} non-finite values (inf/NaN); refusing to decompose it")


def working_copy(weight: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """fp32 (or fp64) matrix copy of a weight, whatever its storage dtype: fp16/bf16 are never decomposed as such."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"decompositions run in float32 or float64, not {dtype}")
    return weight_matrix(weight.detach()).to(dtype=dtype, copy=True)


# --------------------------------------------------------------------------------------------------- SVD (SVFit)


@dataclass(frozen=True)
class SVDFactors:
    """Top-r singular triplets: W ≈ U · diag(S) · Vh."""

    U: Tensor  # m × r
    S: Tensor  # r
    Vh: Tensor  # r × n


def svd_top_r(
    weight: Tensor,
    r: int,
    *,
    randomized: bool = False,
    niter: int = 2,
    oversample: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SVDFactors:
    """Top-r SVD of a weight, exact (`torch.linalg.svd`) or randomized (seeded, so it is reproducible on reload).

    The randomized path is a Halko et al. range finder with `oversample` extra columns and `niter` power iterations;
    it multiplies by a contiguous Wᵀ, which is what keeps it fast (DESIGN.md §6).
    """
    W = working_copy(weight, dtype)
    m, n = W.shape
    check_rank(r, m, n)
    check_finite(W)
    if not randomized:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return SVDFactors(U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].contiguous())
    q = min(r + oversample, m, n)
    generator = torch.Generator(device=W.device).manual_seed(seed)
    omega = torch.randn(n, q, generator=generator, device=W.device, dtype=W.dtype)
    Wt = W.T.contiguous()
    Q = torch.linalg.qr(W @ omega).Q
    for _ in range(niter):
        Q = torch.linalg.qr(Wt @ Q).Q
        Q = torch.linalg.qr(W @ Q).Q
    Ub, S, Vh = torch.linalg.svd(Q.T @ W, full_matrices=False)
    U = Q @ Ub
    return SVDFactors(U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].contiguous())


def energy_rank(singular_values: Tensor, threshold: float) -> int:
    """Smallest r with Σ_{i≤r} σ_i² ≥ threshold · Σ_i σ_i² (the SVFit paper's "99% of the information")."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"energy threshold must be in (0, 1], got {threshold}")
    energy = singular_values.double().square()
    total = energy.sum()
    if total == 0:
        return 1
    cumulative = energy.cumsum(0) / total
    reached = torch.nonzero(cumulative >= threshold - 1e-12)
    return int(reached[0]) + 1 if len(reached) else len(singular_values)


# --------------------------------------------------------------------------------------------------- LDU (LoLDU)


@dataclass(frozen=True)
class LDUFactors:
    """First r steps of a row-pivoted LDU: rows `perm` of W satisfy W[perm] ≈ L · diag(D) · U on the first r pivots.

    `L` is m × r unit lower-trapezoidal (in pivoted row order), `D` the r signed pivots in elimination order and `U`
    r × n unit upper-trapezoidal. The permutation is stored as indices, never as a dense m × m matrix.
    """

    perm: Tensor  # m, long
    L: Tensor  # m × r
    D: Tensor  # r
    U: Tensor  # r × n

    def up(self) -> Tensor:
        """P · L_r: the m × r up factor in the weight's own row order."""
        C = torch.empty_like(self.L)
        C[self.perm] = self.L
        return C


def pivot_tolerance(W: Tensor) -> float:
    """Pivots at or below this magnitude count as zero (scaled so it is meaningful for any weight magnitude)."""
    scale = float(W.abs().max()) if W.numel() else 0.0
    return max(W.shape) * torch.finfo(torch.float32).eps * scale


def _ldu_from_pivoted(perm: Tensor, LU: Tensor, r: int, tol: float) -> LDUFactors:
    """Split the packed LU of the first r pivots into (perm, L, D, U), keeping everything finite at tiny pivots.

    A pivot |d| ≤ tol cannot be divided out without blowing U up, so it is taken as 1 and U keeps the residual row:
    D_k · U_k still equals the eliminated row exactly, and no inf/NaN can appear.
    """
    m = LU.shape[0]
    L = torch.tril(LU[:, :r], diagonal=-1) + torch.eye(m, r, dtype=LU.dtype, device=LU.device)
    U_packed = torch.triu(LU[:r, :])
    D = torch.diagonal(U_packed).clone()
    tiny = D.abs() <= tol
    D[tiny] = 1.0
    return LDUFactors(perm=perm, L=L, D=D, U=U_packed / D[:, None])


def pivoted_ldu(weight: Tensor, r: int, *, method: str = "auto", dtype: torch.dtype = torch.float32) -> LDUFactors:
    """First r pivots of W = P · L · diag(D) · U (LU with partial row pivoting), as LoLDU's official code takes them.

    `method="truncated"` runs only r elimination steps, O(r·m·n), and yields the same P·L_r, D_r, U_r as the full
    factorisation, which `method="full"` computes with `torch.linalg.lu_factor`. `auto` picks truncated when r is a
    small fraction of min(m, n).
    """
    W = working_copy(weight, dtype)
    m, n = W.shape
    check_rank(r, m, n)
    check_finite(W)
    if method == "auto":
        method = "truncated" if 8 * r <= min(m, n) else "full"
    tol = pivot_tolerance(W)
    if method == "full":
        LU, pivots, _ = torch.linalg.lu_factor_ex(W)  # singular W is fine: tiny pivots are handled below
        order = list(range(m))
        for step, row in enumerate((pivots - 1).tolist()):
            order[step], order[row] = order[row], order[step]
        return _ldu_from_pivoted(torch.tensor(order, device=W.device), LU, r, tol)
    if method != "truncated":
        raise ValueError(f"unknown LDU method {method!r}: use 'auto', 'truncated' or 'full'")
    A = W
    perm = torch.arange(m, device=W.device)
    for k in range(r):
        p = k + int(torch.argmax(A[k:, k].abs()))
        if p != k:
            A[[k, p]] = A[[p, k]]
            perm[[k, p]] = perm[[p, k]]
        pivot = A[k, k]
        if pivot.abs() > tol:
            A[k + 1 :, k] /= pivot
            A[k + 1 :, k + 1 :].sub_(torch.outer(A[k + 1 :, k], A[k, k + 1 :]))
        else:
            A[k + 1 :, k] = 0.0
    return _ldu_from_pivoted(perm, A, r, tol)


def loldu_z_init(D: Tensor, init: str, generator: torch.Generator | None = None) -> Tensor:
    """Initial z of LoLDU for each option of the official code; only `lu` (z₀ = D_r) is the identity at step 0."""
    r = D.shape[0]
    kw = {"dtype": D.dtype, "device": D.device, "generator": generator}
    if init == "lu":
        return D.clone()
    if init == "uniform":
        half = float(D.mean()) / 2
        return torch.empty(r, dtype=D.dtype, device=D.device).uniform_(-abs(half), abs(half), generator=generator)
    if init == "s_uniform":
        return torch.empty(r, dtype=D.dtype, device=D.device).uniform_(-1.0, 1.0, generator=generator)
    if init == "normal":
        std = float(D.std()) if r > 1 else 0.0
        return float(D.mean()) + std * torch.randn(r, **kw)
    if init == "s_normal":
        return torch.randn(r, **kw)
    if init == "constant":
        return torch.full((r,), float(D.mean()), dtype=D.dtype, device=D.device)
    if init == "ones":
        return torch.ones_like(D)
    if init == "zeros":
        return torch.zeros_like(D)
    raise ValueError(f"unknown LoLDU z init {init!r}; choose one of {', '.join(LOLDU_Z_INITS)}")


# --------------------------------------------------------------------------------------------------- gains


def svfit_gain(s: Tensor, s0: Tensor) -> Tensor:
    """SVFit: W + U_r diag(s − σ_r) V_rᵀ is the paper's W_e + U_r diag(s) V_rᵀ with the base weight left untouched."""
    return s - s0


def loldu_gain(z: Tensor, D: Tensor, sigma: Tensor | float, sigma0: Tensor | float) -> Tensor:
    """LoLDU: σ·P L_r diag(z) U_r replaces σ₀·P L_r diag(D_r) U_r, so the gain is σ·z − σ₀·D_r."""
    return sigma * z - sigma0 * D


# --------------------------------------------------------------------------------------------------- delta


def linear_delta(x: Tensor, down: Tensor, gain: Tensor | None, up: Tensor, scale: float) -> Tensor:
    """Δy = scale · C (g ⊙ R x) for token-major x (..., n); gain None means all ones (LoRA)."""
    h = x @ down.T
    if gain is not None:
        h = h * gain
    return (h @ up.T) * scale


def conv2d_delta(
    x: Tensor,
    down: Tensor,
    gain: Tensor | None,
    up: Tensor,
    scale: float,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] | int = 1,
    padding: tuple[int, int] | int | str = 0,
    dilation: tuple[int, int] | int = 1,
) -> Tensor:
    """LoCon: R is a conv with the base conv's geometry, the gain scales its r channels, C is a 1×1 conv."""
    r = down.shape[0]
    h = F.conv2d(x, down.reshape(r, -1, *kernel_size), stride=stride, padding=padding, dilation=dilation)
    if gain is not None:
        h = h * gain[:, None, None]
    return F.conv2d(h, up[:, :, None, None]) * scale


def delta_weight(down: Tensor, gain: Tensor | None, up: Tensor, scale: float) -> Tensor:
    """ΔW = scale · C diag(g) R as an m × n matrix (reshape it to the conv kernel shape for Conv2d)."""
    scaled_up = up if gain is None else up * gain
    return (scaled_up @ down) * scale


def lora_pair(down: Tensor, gain: Tensor | None, up: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The exact LoRA pair (A, B) with B @ A == ΔW: any LoRA consumer can load an SVFit/LoLDU delta this way."""
    B = up if gain is None else up * gain
    return down.clone(), (B * scale).contiguous()


# --------------------------------------------------------------------------------------------------- fingerprint


def weight_fingerprint(weight: Tensor) -> Tensor:
    """Four float64 numbers that identify a base weight: ‖W‖_F, ΣW and two fixed random bilinear probes pᵀWq.

    Stored next to SVFit/LoLDU gains so that an adapter loaded onto another base model is refused.
    """
    W = weight_matrix(weight.detach()).to(device="cpu", dtype=torch.float64)
    m, n = W.shape
    generator = torch.Generator().manual_seed(FINGERPRINT_SEED)
    p = torch.randn(2, m, generator=generator, dtype=torch.float64)
    q = torch.randn(2, n, generator=generator, dtype=torch.float64)
    probes = ((p @ W) * q).sum(dim=1)
    return torch.cat([torch.linalg.norm(W).reshape(1), W.sum().reshape(1), probes])


def fingerprints_match(stored: Tensor, actual: Tensor, rtol: float = 1e-3) -> bool:
    """Compare fingerprints loosely enough for dtype round-trips, tightly enough to tell two models apart."""
    stored, actual = stored.double().cpu(), actual.double().cpu()
    scale = max(float(actual[0]), 1e-12) * (1 + float(actual.numel()))
    return bool(((stored - actual).abs() <= rtol * scale).all())
