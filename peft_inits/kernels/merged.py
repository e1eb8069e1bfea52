"""The merged adapter path: y = x (W + ΔW)ᵀ + b in one GEMM, with a backward that trains only the gain.

For SVFit/LoLDU at high rank the factored path (x → R → g → C) costs 2·T·r·(m + n) extra multiply-adds per
forward + backward, which at r ≈ n exceeds the frozen layer itself. Forming W′ = W + scale·C diag(g) R once per
call costs r·m·n, after which forward and dx are one GEMM each, as in the frozen layer. The gain gradient
dL/dg_i = scale · Σ_t (dy_t · c_i)(r_i · x_t) is computed whichever way is cheaper:

- ``"projections"``: from (dy C) ⊙ (x Rᵀ), T·r·(m + n); h = x Rᵀ (T × r) is saved in forward;
- ``"weight_grad"``: from diag(Cᵀ (dyᵀ x) Rᵀ), T·m·n + r·m·n; x is saved and G = dyᵀ x formed in backward.

Only the gain may require grad (frozen base weight, bias and factors); `kernels.cost` sends everything else to the
factored path. W′ is kept for dx (m·n per layer, like one extra activation of m·n elements); with
`save_merged=False` backward forms it again instead (another r·m·n), leaving only h or x saved. The maths is
`functional.linear_delta` added to the base layer; tests hold the two paths equal.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

GAIN_GRADIENTS = ("projections", "weight_grad")


def merged_weight(weight: Tensor, down: Tensor, gain: Tensor | None, up: Tensor, scale: float) -> Tensor:
    """W + scale·C diag(g) R in the base weight's dtype, the sum formed in fp32 (or fp64) like `merge`."""
    compute = torch.promote_types(weight.dtype, torch.float32)
    scaled_up = up.to(compute) if gain is None else up.to(compute) * gain.to(compute)
    if scale != 1.0:
        scaled_up = scaled_up * float(scale)
    if weight.dtype == compute:
        return torch.addmm(weight, scaled_up, down.to(compute))
    return torch.addmm(weight.to(compute), scaled_up, down.to(compute)).to(weight.dtype)


class MergedAdapterLinear(torch.autograd.Function):
    """y = x (W + scale·C diag(g) R)ᵀ + b for token-major 2-D x; gradients for x and g only."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        down: Tensor,
        gain: Tensor | None,
        up: Tensor,
        scale: float,
        gain_gradient: str,
        save_merged: bool,
    ) -> Tensor:
        merged = merged_weight(weight, down, gain, up, scale)
        out = F.linear(x, merged, bias)
        need_dx, need_dgain = ctx.needs_input_grad[0], gain is not None and ctx.needs_input_grad[4]
        saved_h = saved_x = None
        if need_dgain and gain_gradient == "projections":
            saved_h = x.to(down.dtype) @ down.T  # T × r, the only activation this mode keeps
        elif need_dgain:
            saved_x = x
        keep = merged if need_dx and save_merged else None
        ctx.rebuild = need_dx and not save_merged
        ctx.save_for_backward(
            keep,
            down,
            up,
            saved_h,
            saved_x,
            weight if ctx.rebuild else None,
            gain.detach() if ctx.rebuild and gain is not None else None,
        )
        ctx.scale = float(scale)
        ctx.gain_gradient = gain_gradient
        ctx.gain_dtype = None if gain is None else gain.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        merged, down, up, h, x, weight, gain = ctx.saved_tensors
        need_dx, _, _, _, need_dgain = ctx.needs_input_grad[:5]
        if ctx.rebuild:
            merged = merged_weight(weight, down, gain, up, ctx.scale)
        dx = grad_out @ merged if need_dx else None
        dgain = None
        if need_dgain:
            dy = grad_out.to(up.dtype)
            if ctx.gain_gradient == "projections":
                dgain = ((dy @ up) * h).sum(0)
            else:
                G = dy.T @ x.to(up.dtype)  # m × n, the weight gradient the frozen layer never forms
                dgain = ((up.T @ G) * down).sum(1)
            if ctx.scale != 1.0:
                dgain = dgain * ctx.scale
            dgain = dgain.to(ctx.gain_dtype)
        return dx, None, None, None, dgain, None, None, None, None


def merged_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    down: Tensor,
    gain: Tensor | None,
    up: Tensor,
    scale: float,
    gain_gradient: str = "projections",
    save_merged: bool = True,
) -> Tensor:
    """Base linear plus adapter delta through the merged weight, for x of shape (..., n).

    `save_merged=False` trades r·m·n of backward work for not keeping the m × n merged weight until backward.
    """
    if gain_gradient not in GAIN_GRADIENTS:
        raise ValueError(f"unknown gain gradient {gain_gradient!r}; choose one of {', '.join(GAIN_GRADIENTS)}")
    for name, t in (("base weight", weight), ("bias", bias), ("down", down), ("up", up)):
        if t is not None and t.requires_grad:
            raise ValueError(f"the merged adapter path trains only the gain, but {name} requires grad")
    lead = x.shape[:-1]
    out = MergedAdapterLinear.apply(
        x.reshape(-1, x.shape[-1]), weight, bias, down, gain, up, float(scale), gain_gradient, save_merged
    )
    return out.reshape(*lead, weight.shape[0])
