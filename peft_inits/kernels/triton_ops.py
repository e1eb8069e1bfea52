"""Triton kernels of the fused adapter delta (down → gain → up) and their launchers.

Three kernels cover forward and backward for token-major activations x (T × n), R (r × n), C (m × r), r ≤ 128:

- `_forward_kernel`: per block of tokens, h = x Rᵀ stays in registers (fp32), is written once for the backward,
  scaled by the folded gain and multiplied by Cᵀ tile by tile; Δy is written once. A second grid axis splits the
  m output tiles over several programs (each recomputes its h block, which is cheap at small r) so that short
  token counts still fill the GPU.
- `_backward_input_kernel`: per block of tokens, ∂L/∂(h⊙g) = dy C in registers; the per-block gain-gradient
  partial sums Σ_t (dy C) ⊙ h; dh = (dy C) ⊙ g; dx = dh R tile by tile. Nothing else touches memory.
- `_factor_grad_kernel`: dC = dyᵀ (h ⊙ g) and dR = dhᵀ x, only for trainable factors (LoRA); split over tokens,
  partial sums reduced on the host.

Reductions over tokens go through per-program partial buffers summed by torch, never atomics, so results are
deterministic. fp32 inputs use IEEE fp32 dots unless torch allows TF32 for matmuls
(`torch.backends.cuda.matmul.allow_tf32`). On CPU tensors the kernels run under Triton's interpreter
(`TRITON_INTERPRET=1` set before this module is imported); its bf16 `tl.dot` returns garbage (triton 3.9), so bf16
dots are taken in fp32 there, the only difference from the GPU code path. The kernels call only builtins of
`triton.language` (`tl.full`, `tl.reduce`, not the jitted library helpers `tl.zeros`, `tl.sum`): those helpers are
decorated when triton is imported, which peft does early, so under the interpreter they fail unless
TRITON_INTERPRET was already set then.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_RANK = 128
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _mma(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b, in fp32 operands when asked (fp32 inputs, or bf16 under the interpreter)."""
    if DOT_FP32:  # noqa: SIM108 (a constexpr branch, pruned at compile time)
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _forward_kernel(
    x_ptr,
    down_ptr,
    gain_ptr,
    up_ptr,
    out_ptr,
    h_ptr,
    T,
    N,
    M,
    R,
    stride_x,
    stride_down,
    stride_up,
    stride_out,
    stride_h,
    tiles_per_group,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_GAIN: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    ranks = tl.arange(0, BLOCK_R)
    row_ok = rows < T
    rank_ok = ranks < R

    h = tl.full((BLOCK_T, BLOCK_R), 0.0, tl.float32)
    for k0 in range(0, N, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < N
        x_tile = tl.load(
            x_ptr + rows[:, None] * stride_x + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        )
        down_t = tl.load(
            down_ptr + ranks[None, :] * stride_down + cols[:, None], mask=rank_ok[None, :] & col_ok[:, None], other=0.0
        )
        h = _mma(x_tile, down_t.to(x_tile.dtype), h, DOT_FP32, PRECISION)
    if pid_m == 0:
        tl.store(h_ptr + rows[:, None] * stride_h + ranks[None, :], h, mask=row_ok[:, None] & rank_ok[None, :])

    if HAS_GAIN:
        gain = tl.load(gain_ptr + ranks, mask=rank_ok, other=0.0)
        h = h * gain[None, :]
    scaled = h.to(out_ptr.dtype.element_ty)
    for i in range(0, tiles_per_group):
        outs = (pid_m * tiles_per_group + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        out_ok = outs < M
        up_t = tl.load(
            up_ptr + outs[None, :] * stride_up + ranks[:, None], mask=out_ok[None, :] & rank_ok[:, None], other=0.0
        )
        acc = tl.full((BLOCK_T, BLOCK_M), 0.0, tl.float32)
        acc = _mma(scaled, up_t.to(scaled.dtype), acc, DOT_FP32, PRECISION)
        tl.store(
            out_ptr + rows[:, None] * stride_out + outs[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & out_ok[None, :],
        )


@triton.jit
def _backward_input_kernel(
    dout_ptr,
    down_ptr,
    gain_ptr,
    up_ptr,
    h_ptr,
    dx_ptr,
    dgain_part_ptr,
    dh_ptr,
    T,
    N,
    M,
    R,
    stride_dout,
    stride_down,
    stride_up,
    stride_h,
    stride_dx,
    stride_dh,
    tiles_per_group,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_GAIN: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DGAIN: tl.constexpr,
    NEED_DH: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    ranks = tl.arange(0, BLOCK_R)
    row_ok = rows < T
    rank_ok = ranks < R

    grad_scaled = tl.full((BLOCK_T, BLOCK_R), 0.0, tl.float32)  # ∂L/∂(h ⊙ g) = dy C
    for m0 in range(0, M, BLOCK_K):
        outs = m0 + tl.arange(0, BLOCK_K)
        out_ok = outs < M
        dout_tile = tl.load(
            dout_ptr + rows[:, None] * stride_dout + outs[None, :], mask=row_ok[:, None] & out_ok[None, :], other=0.0
        )
        up_tile = tl.load(
            up_ptr + outs[:, None] * stride_up + ranks[None, :], mask=out_ok[:, None] & rank_ok[None, :], other=0.0
        )
        grad_scaled = _mma(dout_tile, up_tile.to(dout_tile.dtype), grad_scaled, DOT_FP32, PRECISION)

    if NEED_DGAIN:  # noqa: SIM102 (constexpr outer branch, runtime inner one)
        if pid_n == 0:
            h_tile = tl.load(
                h_ptr + rows[:, None] * stride_h + ranks[None, :], mask=row_ok[:, None] & rank_ok[None, :], other=0.0
            )
            partial = tl.reduce(grad_scaled * h_tile, 0, _add)
            tl.store(dgain_part_ptr + pid_t * R + ranks, partial, mask=rank_ok)

    dh = grad_scaled
    if HAS_GAIN:
        gain = tl.load(gain_ptr + ranks, mask=rank_ok, other=0.0)
        dh = grad_scaled * gain[None, :]
    if NEED_DH:  # noqa: SIM102
        if pid_n == 0:
            tl.store(dh_ptr + rows[:, None] * stride_dh + ranks[None, :], dh, mask=row_ok[:, None] & rank_ok[None, :])

    if NEED_DX:
        dh_op = dh.to(dx_ptr.dtype.element_ty)
        for i in range(0, tiles_per_group):
            cols = (pid_n * tiles_per_group + i) * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            down_tile = tl.load(
                down_ptr + ranks[:, None] * stride_down + cols[None, :],
                mask=rank_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            acc = tl.full((BLOCK_T, BLOCK_N), 0.0, tl.float32)
            acc = _mma(dh_op, down_tile.to(dh_op.dtype), acc, DOT_FP32, PRECISION)
            tl.store(
                dx_ptr + rows[:, None] * stride_dx + cols[None, :],
                acc.to(dx_ptr.dtype.element_ty),
                mask=row_ok[:, None] & col_ok[None, :],
            )


@triton.jit
def _factor_grad_kernel(
    a_ptr,
    b_ptr,
    col_scale_ptr,
    out_ptr,
    T,
    P,
    R,
    stride_a,
    stride_b,
    stride_out_split,
    stride_out,
    rows_per_split,
    BLOCK_P: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    HAS_COL_SCALE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[split, p, j] = Σ_{t in split} a[t, p] · b[t, j] (· col_scale[j]): the token-reduction GEMM aᵀ b."""
    pid_p = tl.program_id(0)
    pid_s = tl.program_id(1)
    cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    ranks = tl.arange(0, BLOCK_R)
    col_ok = cols < P
    rank_ok = ranks < R
    first_row = pid_s * rows_per_split

    acc = tl.full((BLOCK_P, BLOCK_R), 0.0, tl.float32)
    for t0 in range(0, rows_per_split, BLOCK_T):
        rows = (first_row + t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        row_ok = rows < T
        a_t = tl.load(
            a_ptr + rows[None, :] * stride_a + cols[:, None], mask=col_ok[:, None] & row_ok[None, :], other=0.0
        )
        b_tile = tl.load(
            b_ptr + rows[:, None] * stride_b + ranks[None, :], mask=row_ok[:, None] & rank_ok[None, :], other=0.0
        )
        acc = _mma(a_t, b_tile.to(a_t.dtype), acc, DOT_FP32, PRECISION)
    if HAS_COL_SCALE:
        col_scale = tl.load(col_scale_ptr + ranks, mask=rank_ok, other=0.0)
        acc = acc * col_scale[None, :]
    tl.store(
        out_ptr + pid_s * stride_out_split + cols[:, None] * stride_out + ranks[None, :],
        acc,
        mask=col_ok[:, None] & rank_ok[None, :],
    )


# ------------------------------------------------------------------------------------------------------ launchers


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and grid splits. None means chosen from the problem size and the GPU's SM count.

    `groups` splits the output tiles of one token block over that many programs (forward: m, backward: n);
    `splits` splits the token reduction of the factor gradients. Tests pass small values to exercise every mask.
    """

    block_t: int | None = None
    block_k: int = 64
    block_mn: int = 64
    block_p: int = 64
    groups: int | None = None
    splits: int | None = None
    num_warps: int = 4


def block_rank(r: int) -> int:
    """The rank padded to a power of two ≥ 16 (the smallest `tl.dot` operand size)."""
    if not 1 <= r <= MAX_RANK:
        raise ValueError(f"the Triton adapter kernels support 1 ≤ r ≤ {MAX_RANK}, got r={r}")
    return max(16, triton.next_power_of_2(r))


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """Enough programs to fill the GPU about twice; the interpreter runs programs one by one, so few there."""
    if device.type != "cuda" or INTERPRETED:
        return 2
    return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    """(fp32 operands?, fp32 precision) for one input dtype."""
    if dtype == torch.float32:
        tf32 = torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED
        return True, "tf32" if tf32 else "ieee"
    return dtype == torch.bfloat16 and INTERPRETED, "ieee"


def _split(work_items: int, parallel_items: int, target: int) -> int:
    """How many programs share `work_items` output tiles so that about `target` programs run in all."""
    return max(1, min(work_items, triton.cdiv(target, max(parallel_items, 1))))


class TritonOps:
    """Triton implementation of the three pieces of `autograd.DeltaOps`; h and the partial sums are fp32."""

    name = "triton"

    def __init__(self, config: LaunchConfig | None = None) -> None:
        self.config = config or LaunchConfig()

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Every buffer the kernels write is allocated here (tests poison it with NaN to catch unwritten elements)."""
        return torch.empty(shape, dtype=dtype, device=device)

    def _check(self, x: Tensor) -> None:
        if x.device.type != "cuda" and not INTERPRETED:
            raise RuntimeError(
                "Triton kernels run on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before "
                "peft_inits.kernels.triton_ops is first imported"
            )

    def _block_t(self, r_block: int) -> int:
        return self.config.block_t or (64 if r_block <= 64 else 32)

    def forward(self, x: Tensor, down: Tensor, gain_scale: Tensor | None, up: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        T, N = x.shape
        M, R = up.shape
        cfg = self.config
        r_block = block_rank(R)
        block_t = self._block_t(r_block)
        out = self._empty((T, M), x.dtype, x.device)
        h = self._empty((T, R), torch.float32, x.device)
        token_blocks = triton.cdiv(T, block_t)
        tiles = triton.cdiv(M, cfg.block_mn)
        groups = cfg.groups or _split(tiles, token_blocks, _target_programs(x.device))
        groups = min(groups, tiles)
        dot_fp32, precision = _dot_mode(x.dtype)
        _forward_kernel[(token_blocks, groups)](
            x,
            down,
            h if gain_scale is None else gain_scale,
            up,
            out,
            h,
            T,
            N,
            M,
            R,
            x.stride(0),
            down.stride(0),
            up.stride(0),
            out.stride(0),
            h.stride(0),
            triton.cdiv(tiles, groups),
            BLOCK_T=block_t,
            BLOCK_K=cfg.block_k,
            BLOCK_R=r_block,
            BLOCK_M=cfg.block_mn,
            HAS_GAIN=gain_scale is not None,
            DOT_FP32=dot_fp32,
            PRECISION=precision,
            num_warps=cfg.num_warps,
        )
        return out, h

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
        self._check(grad_out)
        T, M = grad_out.shape
        R, N = down.shape
        cfg = self.config
        r_block = block_rank(R)
        block_t = self._block_t(r_block)
        token_blocks = triton.cdiv(T, block_t)
        device = grad_out.device
        dx = self._empty((T, N), grad_out.dtype, device) if need_dx else None
        dgain_part = self._empty((token_blocks, R), torch.float32, device) if need_dgain else None
        dh = self._empty((T, R), torch.float32, device) if need_dh else None
        tiles = triton.cdiv(N, cfg.block_mn)
        groups = 1
        if need_dx:
            groups = min(cfg.groups or _split(tiles, token_blocks, _target_programs(device)), tiles)
        dot_fp32, precision = _dot_mode(grad_out.dtype)
        placeholder = h  # any tensor: pointers of disabled outputs are never dereferenced
        _backward_input_kernel[(token_blocks, groups)](
            grad_out,
            down,
            placeholder if gain_scale is None else gain_scale,
            up,
            h,
            placeholder if dx is None else dx,
            placeholder if dgain_part is None else dgain_part,
            placeholder if dh is None else dh,
            T,
            N,
            M,
            R,
            grad_out.stride(0),
            down.stride(0),
            up.stride(0),
            h.stride(0),
            N if dx is None else dx.stride(0),
            R if dh is None else dh.stride(0),
            triton.cdiv(tiles, groups),
            BLOCK_T=block_t,
            BLOCK_K=cfg.block_k,
            BLOCK_R=r_block,
            BLOCK_N=cfg.block_mn,
            HAS_GAIN=gain_scale is not None,
            NEED_DX=need_dx,
            NEED_DGAIN=need_dgain,
            NEED_DH=need_dh,
            DOT_FP32=dot_fp32,
            PRECISION=precision,
            num_warps=cfg.num_warps,
        )
        dgain_sum = None if dgain_part is None else dgain_part.sum(0)
        return dx, dgain_sum, dh

    def _token_reduction(self, a: Tensor, b: Tensor, col_scale: Tensor | None) -> Tensor:
        """aᵀ b (· col_scale per column) in fp32, for a (T × P) and b (T × r, fp32)."""
        T, P = a.shape
        R = b.shape[1]
        cfg = self.config
        block_t = 64 if cfg.block_t is None else cfg.block_t
        col_blocks = triton.cdiv(P, cfg.block_p)
        row_blocks = triton.cdiv(T, block_t)
        splits = min(cfg.splits or _split(row_blocks, col_blocks, _target_programs(a.device)), row_blocks)
        rows_per_split = triton.cdiv(row_blocks, splits) * block_t
        splits = triton.cdiv(T, rows_per_split)
        partial = self._empty((splits, P, R), torch.float32, a.device)
        dot_fp32, precision = _dot_mode(a.dtype)
        _factor_grad_kernel[(col_blocks, splits)](
            a,
            b,
            b if col_scale is None else col_scale,
            partial,
            T,
            P,
            R,
            a.stride(0),
            b.stride(0),
            partial.stride(0),
            partial.stride(1),
            rows_per_split,
            BLOCK_P=cfg.block_p,
            BLOCK_T=block_t,
            BLOCK_R=block_rank(R),
            HAS_COL_SCALE=col_scale is not None,
            DOT_FP32=dot_fp32,
            PRECISION=precision,
            num_warps=cfg.num_warps,
        )
        return partial.sum(0) if splits > 1 else partial[0]

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
        self._check(grad_out)
        ddown = dup = None
        if need_ddown:
            if x is None or dh is None:
                raise RuntimeError("dR needs x and dh; the forward did not keep them")
            ddown = self._token_reduction(x, dh, None).T.to(x.dtype).contiguous()
        if need_dup:
            dup = self._token_reduction(grad_out, h, gain_scale).to(grad_out.dtype)
        return ddown, dup
