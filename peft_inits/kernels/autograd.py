"""The fused adapter delta as one `torch.autograd.Function`, shared by the Triton and the pure-torch implementations.

Forward computes Δy = ((x Rᵀ) ⊙ (scale·g)) Cᵀ for token-major x (T × n). The scale is folded into the r-wide gain,
so no pass over the m-wide output is spent on it. What is saved for backward is h = x Rᵀ (T × r) plus references to
the factors; x itself is kept only when R trains (LoRA), because only dR needs it. Backward computes just the
gradients autograd asks for: SVFit/LoLDU (frozen R and C) get dgain and dx, and the dR/dC GEMMs are skipped.

The maths is `peft_inits.functional.linear_delta`; the tests hold both implementations to it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class DeltaOps(Protocol):
    """The three pieces an implementation (Triton or torch) provides; the Function decides which ones run."""

    name: str

    def forward(self, x: Tensor, down: Tensor, gain_scale: Tensor | None, up: Tensor) -> tuple[Tensor, Tensor]:
        """(Δy, h): Δy = ((x Rᵀ) ⊙ gain_scale) Cᵀ in x's dtype and h = x Rᵀ (dtype of the implementation's choice).

        `gain_scale` None means all ones.
        """
        ...

    def backward_input(
        self,
        grad_out: Tensor,
        h: Tensor,
        down: Tensor,
        gain_scale: Tensor | None,
        up: Tensor,
        *,
        need_dx: bool,
        need_dgain: bool,
        need_dh: bool,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(dx, Σ_t (dy C) ⊙ h as fp32 r-vector, dh = (dy C) ⊙ gain_scale); pieces not asked for are None."""
        ...

    def factor_grads(
        self,
        grad_out: Tensor,
        x: Tensor | None,
        h: Tensor,
        dh: Tensor | None,
        gain_scale: Tensor | None,
        *,
        need_ddown: bool,
        need_dup: bool,
    ) -> tuple[Tensor | None, Tensor | None]:
        """(dR = dhᵀ x, dC = dyᵀ (h ⊙ gain_scale)) for trainable factors (LoRA); None where not asked for."""
        ...


def folded_gain(gain: Tensor | None, scale: float, rank: int, like: Tensor) -> Tensor | None:
    """scale·g as an r-vector in fp32 (fp64 for fp64 inputs), or None when it is all ones (LoRA at scale 1)."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if gain is None:
        return None if scale == 1.0 else torch.full((rank,), float(scale), dtype=dtype, device=like.device)
    folded = gain.detach().to(dtype)
    return folded if scale == 1.0 else folded * float(scale)


class FusedAdapterDelta(torch.autograd.Function):
    """Δy = scale · ((x Rᵀ) ⊙ g) Cᵀ for 2-D token-major x, with a backward that skips what is not needed."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, down: Tensor, gain: Tensor | None, up: Tensor, scale: float, ops: DeltaOps
    ) -> Tensor:
        gain_scale = folded_gain(gain, scale, down.shape[0], x)
        out, h = ops.forward(x, down, gain_scale, up)
        keep_x = ctx.needs_input_grad[1]  # only dR = dhᵀ x reads x
        ctx.save_for_backward(h, down, up, gain_scale, x if keep_x else None)
        ctx.ops = ops
        ctx.scale = float(scale)
        ctx.gain_dtype = None if gain is None else gain.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        h, down, up, gain_scale, x = ctx.saved_tensors
        need_dx, need_ddown, need_dgain, need_dup = ctx.needs_input_grad[:4]
        grad_out = grad_out.contiguous()
        dx, dgain_sum, dh = ctx.ops.backward_input(
            grad_out, h, down, gain_scale, up, need_dx=need_dx, need_dgain=need_dgain, need_dh=need_ddown
        )
        ddown = dup = None
        if need_ddown or need_dup:
            ddown, dup = ctx.ops.factor_grads(grad_out, x, h, dh, gain_scale, need_ddown=need_ddown, need_dup=need_dup)
        dgain = None
        if need_dgain:
            dgain = dgain_sum if ctx.scale == 1.0 else dgain_sum * ctx.scale
            dgain = dgain if dgain.dtype == ctx.gain_dtype else dgain.to(ctx.gain_dtype)
        return dx, ddown, dgain, dup, None, None
