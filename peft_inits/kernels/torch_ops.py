"""The pure-torch implementation of the fused adapter delta: the fallback on CPU and wherever Triton is missing.

Same pieces, same saved tensors and same skipped GEMMs as the Triton kernels. h is kept in x's dtype, as
`functional.linear_delta` keeps it, so at scale 1 the forward is bit-identical to the reference on the same device.
"""

from __future__ import annotations

from torch import Tensor


def _as(t: Tensor, like: Tensor) -> Tensor:
    return t if t.dtype == like.dtype else t.to(like.dtype)


class TorchOps:
    """torch matmuls for the three pieces of `autograd.DeltaOps`."""

    name = "torch"

    def forward(self, x: Tensor, down: Tensor, gain_scale: Tensor | None, up: Tensor) -> tuple[Tensor, Tensor]:
        h = x @ down.T
        scaled = h if gain_scale is None else h * _as(gain_scale, h)
        return scaled @ up.T, h

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
        if not (need_dx or need_dgain or need_dh):
            return None, None, None
        grad_scaled = grad_out @ up  # ∂L/∂(h ⊙ gain_scale), T × r
        dgain_sum = (grad_scaled.float() * h.float()).sum(0) if need_dgain else None  # no-op casts in fp32
        if not (need_dx or need_dh):
            return None, dgain_sum, None
        dh = grad_scaled if gain_scale is None else grad_scaled * _as(gain_scale, grad_scaled)
        dx = dh @ down if need_dx else None
        return dx, dgain_sum, dh if need_dh else None

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
        ddown = dup = None
        if need_ddown:
            if x is None or dh is None:
                raise RuntimeError("dR needs x and dh; the forward did not keep them")
            ddown = dh.T @ x
        if need_dup:
            scaled = h if gain_scale is None else h * _as(gain_scale, h)
            dup = grad_out.T @ scaled
        return ddown, dup
