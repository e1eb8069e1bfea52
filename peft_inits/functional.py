"""Reference maths of every adapter: pure tensor functions, no modules, no state.

Every adapter computes the same *down → gain → up* delta::

    Δy = scale · C · (g ⊙ (R · x))        ΔW = scale · C · diag(g) · R

with R (r×n) the down factor, g (r,) the gain and C (m×r) the up factor. Layers, kernels, tests and benchmarks call
these functions; nothing else re-derives the maths.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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


def abs_max(weight: Tensor, what: str = "weight") -> float:
    """max |W| from one `aminmax` pass (no W-sized temporary), refusing inf/NaN, which that pass propagates."""
    if weight.device.type == "meta" or weight.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(weight.detach())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(weight)).sum())  # only on the error path
        raise ValueError(f"{what} has {bad} non-finite values (inf/NaN); refusing to decompose it")
    return max(-lo, hi)


def check_finite(weight: Tensor, what: str = "weight") -> None:
    """Refuse weights holding inf or NaN: their decomposition would silently poison the adapter."""
    abs_max(weight, what)


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

    The randomized path is a Halko et al. range finder with `oversample` extra columns and `niter` power iterations.
    Wᵀ·Q is formed as (Qᵀ·W)ᵀ, which reads W in its own row-major layout: no transposed copy of W and no slow
    transposed GEMM (docs/performance.md). W is copied only when it must change dtype.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"decompositions run in float32 or float64, not {dtype}")
    W = weight_matrix(weight.detach()).to(dtype)
    m, n = W.shape
    check_rank(r, m, n)
    check_finite(W)
    if not randomized:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return SVDFactors(U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].contiguous())
    q = min(r + oversample, m, n)
    generator = torch.Generator(device=W.device).manual_seed(seed)
    omega = torch.randn(n, q, generator=generator, device=W.device, dtype=W.dtype)
    Q = torch.linalg.qr(W @ omega).Q
    for _ in range(niter):
        Q = torch.linalg.qr((Q.T @ W).T).Q
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


def principal_basis(X: Tensor, k: int, whiten: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k principal directions of the rows of X (N × P): (mean (P,), basis (k × P), std (k,)).

    basis rows are the right singular vectors of the centred X, ordered by variance; std_j = σ_j / √(N − 1) is the
    standard deviation of the rows along direction j. With `whiten` each row is scaled by its std, so that a unit
    coefficient moves one standard deviation of the data along that direction (one step size suits every k).
    At k ≥ rank of the centred X, mean + c @ basis reproduces every row exactly (c = its projection).
    """
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"principal directions need an (N, P) matrix with N >= 2 rows, got {tuple(X.shape)}")
    if not 1 <= k <= min(len(X) - 1, X.shape[1]):
        raise ValueError(f"basis size must be in [1, {min(len(X) - 1, X.shape[1])}] (N − 1 = {len(X) - 1} centred "
                         f"rows of width {X.shape[1]}), got {k}")  # fmt: skip
    mean = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)
    std = S[:k] / math.sqrt(len(X) - 1)
    basis = Vh[:k] * std[:, None] if whiten else Vh[:k]
    return mean, basis.contiguous(), std


# --------------------------------------------------------------------------------------------------- LDU (LoLDU)

PIVOTINGS = ("partial", "rook", "complete")
LDU_METHODS = ("auto", "truncated", "full")


@dataclass(frozen=True)
class LDUFactors:
    """First r steps of a pivoted LDU: W[perm][:, col_perm] ≈ L · diag(D) · U on the first r pivots.

    `L` is m × r unit lower-trapezoidal (in pivoted row order), `D` the r signed pivots in elimination order and `U`
    r × n unit upper-trapezoidal (in pivoted column order). Permutations are stored as indices, never as dense
    matrices; `col_perm` is None for partial (row-only) pivoting. In the weight's own order the rank-r term is
    `up() · diag(D) · down()`, and at r = min(m, n) it reproduces W.
    """

    perm: Tensor  # m, long
    L: Tensor  # m × r
    D: Tensor  # r
    U: Tensor  # r × n
    col_perm: Tensor | None = None  # n, long (rook / complete pivoting)

    def up(self) -> Tensor:
        """P · L_r: the m × r up factor in the weight's own row order."""
        C = torch.empty_like(self.L)
        C[self.perm] = self.L
        return C

    def down(self) -> Tensor:
        """U_r · Qᵀ: the r × n down factor in the weight's own column order (U itself under partial pivoting)."""
        if self.col_perm is None:
            return self.U
        R = torch.empty_like(self.U)
        R[:, self.col_perm] = self.U
        return R

    def product(self) -> Tensor:
        """The rank-r term up() · diag(D) · down() as an m × n matrix."""
        return (self.up() * self.D) @ self.down()


def pivot_tolerance(W: Tensor) -> float:
    """Pivots at or below this magnitude count as zero (scaled so it is meaningful for any weight magnitude)."""
    return max(W.shape) * torch.finfo(torch.float32).eps * abs_max(W)


def _finish(perm: Tensor, L: Tensor, packed: Tensor, tol: float, col_perm: Tensor | None = None) -> LDUFactors:
    """(perm, L, D, U) from unit-lower L and the r eliminated rows `packed` (pivot on the diagonal), kept finite.

    A pivot |d| ≤ tol is taken as 1 and U keeps the residual row: D_k · U_k still equals the eliminated row exactly
    and no inf/NaN can appear. `tol=0` keeps every pivot whose division stays finite (LAPACK's own factors).
    """
    D = torch.diagonal(packed).clone()
    D[D.abs() <= tol] = 1.0
    U = packed / D[:, None]
    overflow = ~torch.isfinite(U).all(dim=1)
    if bool(overflow.any()):  # an exact zero, or a pivot too small to divide by in this dtype
        D[overflow] = 1.0
        U = packed / D[:, None]
    return LDUFactors(perm=perm, L=L, D=D, U=U, col_perm=col_perm)


def _full_order(taken: list[int], size: int, device: torch.device) -> Tensor:
    """The chosen indices in elimination order, then the others ascending: a complete permutation."""
    rest = torch.ones(size, dtype=torch.bool)
    rest[taken] = False
    order = torch.cat([torch.tensor(taken, dtype=torch.long), torch.nonzero(rest).flatten()])
    return order.to(device)


def panel_is_cheaper(r: int, m: int, n: int) -> bool:
    """Whether factoring the m × r panel and solving for r pivot rows beats LAPACK's LU of all of W (`auto`).

    Flops: the panel costs m·r² − r³/3 plus r²·n for the pivot rows, the whole LU m·n·k − k³/3 (k = min(m, n)).
    Measured here (1 thread, fp32): the two cross at r ≈ 0.6·k on 768², and at 768 × 3072 / 3072 × 768 near r = k.
    """
    k = min(m, n)
    return m * r * r - r**3 / 3 + r * r * n < m * n * k - k**3 / 3


def _partial_lapack(W: Tensor, r: int) -> LDUFactors:
    """The official code's factors: `torch.linalg.lu` of all of W, its first r pivots as LAPACK left them.

    On a W of numerical rank below r the pivots past the rank are rounding noise, and so are the L columns and U rows
    divided by them; they are kept as they are (official parity), only a division that would overflow
    (an exact zero pivot: NaN in the official code) takes the pivot as 1.
    """
    LU, pivots, _ = torch.linalg.lu_factor_ex(W)
    m = LU.shape[0]
    L = torch.tril(LU[:, :r], diagonal=-1) + torch.eye(m, r, dtype=LU.dtype, device=LU.device)
    return _finish(_swaps_to_order(pivots, m), L, torch.triu(LU[:r, :]), tol=0.0)


def _partial_panel(W: Tensor, r: int, tol: float, dtype: torch.dtype) -> LDUFactors:
    """The first r steps of row-pivoted LU from the m × r panel W[:, :r] alone, O(r²(m + n)), W only read.

    The first r columns decide the first r pivots and P·L_r (the panel's own LU, the step a blocked LU begins with);
    the eliminated rows D_r·U_r are the r pivot rows of W with the earlier steps removed, L₁₁⁻¹·W[pivots, :] for the
    unit-lower r × r block L₁₁ of L_r. Same LAPACK call on the same columns, so the same pivots as `_partial_lapack`.
    A pivot ≤ tol means W's rank is below r: past it the factors are rounding noise, which only the official
    computation reproduces, so that case is handed to `_partial_lapack`.
    """
    m = W.shape[0]
    LU, pivots, _ = torch.linalg.lu_factor_ex(W[:, :r].to(dtype))
    if bool((LU.diagonal().abs() <= tol).any()):
        return _partial_lapack(W.to(dtype), r)
    order = _swaps_to_order(pivots, m)
    L = torch.tril(LU, diagonal=-1)
    L.diagonal().fill_(1.0)
    rows = W.index_select(0, order[:r]).to(dtype)
    packed = torch.linalg.solve_triangular(L[:r], rows, upper=False, unitriangular=True)
    return _finish(order, L, torch.triu(packed), tol)


def _swaps_to_order(pivots: Tensor, m: int) -> Tensor:
    """LAPACK's 1-based row swaps (step k swaps rows k and pivots[k]) as the resulting row order."""
    moved: dict[int, int] = {}  # position → row, only where the swaps changed something
    for step, row in enumerate((pivots - 1).tolist()):
        moved[step], moved[row] = moved.get(row, row), moved.get(step, step)
    order = torch.arange(m)
    if moved:
        order[torch.tensor(list(moved))] = torch.tensor(list(moved.values()))
    return order.to(pivots.device)


def _rook_crout(W: Tensor, r: int, tol: float, dtype: torch.dtype) -> LDUFactors:
    """Left-looking rook pivoting: alternate row/column max searches until the entry is largest in both.

    Schur columns and rows are computed on demand from L and the eliminated rows (each O(k(m + n)) at step k), so
    the trailing matrix is formed only if a search ends on a tiny pivot (rank-deficient W), to look everywhere.
    """
    m, n = W.shape
    L = torch.zeros(m, r, dtype=dtype, device=W.device)
    packed = torch.zeros(r, n, dtype=dtype, device=W.device)  # eliminated rows, columns in the weight's order
    row_free = torch.ones(m, dtype=torch.bool, device=W.device)
    col_free = torch.ones(n, dtype=torch.bool, device=W.device)
    rows: list[int] = []
    cols: list[int] = []
    for k in range(r):

        def column(j: int, k: int = k) -> Tensor:
            c = W[:, j].to(dtype) - L[:, :k] @ packed[:k, j]
            return c.masked_fill_(~row_free, 0.0)

        def row_of(i: int, k: int = k) -> Tensor:
            w = W[i].to(dtype) - L[i, :k] @ packed[:k]
            return w.masked_fill_(~col_free, 0.0)

        # start where the previous pivot row is largest: a free hint of big entries (mean captured energy 0.47
        # against 0.44 for a natural-order start, 48 decaying-spectrum 60×40 matrices, r ≤ 24)
        j = 0 if k == 0 else int(torch.argmax(packed[k - 1].abs().masked_fill(~col_free, -1.0)))
        col = column(j)
        i = int(torch.argmax(col.abs().masked_fill_(~row_free, -1.0)))
        best = float(col[i].abs())
        row = row_of(i)
        while True:
            j2 = int(torch.argmax(row.abs().masked_fill_(~col_free, -1.0)))
            if float(row[j2].abs()) <= best:
                break
            j, best = j2, float(row[j2].abs())
            col = column(j)
            i2 = int(torch.argmax(col.abs().masked_fill_(~row_free, -1.0)))
            if float(col[i2].abs()) <= best:
                break
            i, best = i2, float(col[i2].abs())
            row = row_of(i)
        if best <= tol:  # a dead end of the search, or the rest is numerically zero: look at the whole Schur
            schur = W.to(dtype) - L[:, :k] @ packed[:k]
            schur[~row_free] = 0.0
            schur[:, ~col_free] = 0.0
            flat = int(torch.argmax(schur.abs().masked_fill_(~(row_free[:, None] & col_free), -1.0)))
            i, j = divmod(flat, n)
            col, row = schur[:, j].clone(), schur[i].clone()
        pivot = col[i]
        row[j] = pivot
        packed[k] = row
        if pivot.abs() > tol:
            L[:, k] = col / pivot
        L[i, k] = 1.0
        row_free[i] = False
        col_free[j] = False
        rows.append(i)
        cols.append(j)
    perm, col_perm = _full_order(rows, m, W.device), _full_order(cols, n, W.device)
    return _finish(perm, L[perm], packed[:, col_perm], tol, col_perm)


def _complete_right_looking(A: Tensor, r: int, tol: float) -> LDUFactors:
    """Complete pivoting on a working copy: the largest |entry| of the trailing matrix is the next pivot."""
    m, n = A.shape
    perm = torch.arange(m, device=A.device)
    col_perm = torch.arange(n, device=A.device)
    for k in range(r):
        i, j = divmod(int(torch.argmax(A[k:, k:].abs())), n - k)
        i, j = i + k, j + k
        if i != k:
            A[[k, i]] = A[[i, k]]
            perm[[k, i]] = perm[[i, k]]
        if j != k:
            A[:, [k, j]] = A[:, [j, k]]
            col_perm[[k, j]] = col_perm[[j, k]]
        pivot = A[k, k]
        if pivot.abs() > tol:
            A[k + 1 :, k] /= pivot
            A[k + 1 :, k + 1 :].sub_(torch.outer(A[k + 1 :, k], A[k, k + 1 :]))
        else:  # the whole trailing matrix is numerically zero
            A[k + 1 :, k] = 0.0
    L = torch.tril(A[:, :r], diagonal=-1) + torch.eye(m, r, dtype=A.dtype, device=A.device)
    return _finish(perm, L, torch.triu(A[:r, :]), tol, col_perm)


def pivoted_ldu(
    weight: Tensor,
    r: int,
    *,
    method: str = "auto",
    pivoting: str = "partial",
    dtype: torch.dtype = torch.float32,
    scale: float | None = None,
) -> LDUFactors:
    """First r pivots of W = P · L · diag(D) · U · Qᵀ, in elimination order (signed, not sorted).

    `pivoting="partial"` (row pivoting, Q = I) is what LoLDU's official code takes. `method="truncated"` factors the
    m × r panel of W's first r columns and solves for the r pivot rows — O(r²(m + n)), W is only read — and yields
    the same P·L_r, D_r, U_r as the full factorisation that `method="full"` computes with `torch.linalg.lu_factor`;
    `auto` picks truncated unless r is a large fraction of min(m, n) (`panel_is_cheaper`). `"rook"` and `"complete"`
    pivoting also permute columns, so their first pivots are large ones and the rank-r term captures more of W (see
    `captured_energy`); rook is left-looking (Schur columns and rows on demand), complete is right-looking
    (O(r·m·n)). For them `method="full"` runs all min(m, n) steps.

    Pivots |d| ≤ max(m, n)·eps₃₂·scale count as zero. `scale` defaults to max|W| from one `aminmax` pass, which
    also refuses inf/NaN; a caller that has already checked W in a pass of its own (e.g. `checked_fingerprint`)
    passes a magnitude such as the fingerprint's ‖W‖_F estimate and spares the truncated elimination its only full
    read of W.
    """
    if pivoting not in PIVOTINGS:
        raise ValueError(f"unknown LDU pivoting {pivoting!r}: use {', '.join(map(repr, PIVOTINGS))}")
    if method not in LDU_METHODS:
        raise ValueError(f"unknown LDU method {method!r}: use 'auto', 'truncated' or 'full'")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"decompositions run in float32 or float64, not {dtype}")
    W = weight_matrix(weight.detach())
    m, n = W.shape
    check_rank(r, m, n)
    if scale is None:
        scale = abs_max(W, "weight")  # the one full pass, and it checks finiteness
    tol = max(m, n) * torch.finfo(torch.float32).eps * float(scale)
    steps = min(m, n) if method == "full" else r
    if pivoting == "complete":
        f = _complete_right_looking(W.to(dtype=dtype, copy=True), steps, tol)
    elif pivoting == "rook":
        f = _rook_crout(W, steps, tol, dtype)
    elif method == "full" or (method == "auto" and not panel_is_cheaper(r, m, n)):
        return _partial_lapack(W.to(dtype), r)
    else:
        return _partial_panel(W, r, tol, dtype)
    if steps == r:
        return f
    return LDUFactors(f.perm, f.L[:, :r], f.D[:r], f.U[:r], f.col_perm)


def ldu_with_pivots(
    weight: Tensor, rows: Tensor, cols: Tensor | None = None, *, dtype: torch.dtype = torch.float32
) -> LDUFactors:
    """The first r steps of an LDU whose pivot positions are given (step k eliminates at row `rows[k]`, column
    `cols[k]`; `cols=None` = columns 0..r−1, partial pivoting). No search: the same left-looking recurrences as
    `pivoted_ldu`, so a weight that was rounded (e.g. a bf16 copy) gets the factors of the original pivot order."""
    W = weight_matrix(weight.detach())
    m, n = W.shape
    r = int(rows.numel())
    check_rank(r, m, n)
    tol = pivot_tolerance(W)
    row_list = [int(i) for i in rows.tolist()]
    col_list = list(range(r)) if cols is None else [int(j) for j in cols.tolist()]
    L = torch.zeros(m, r, dtype=dtype, device=W.device)
    packed = torch.zeros(r, n, dtype=dtype, device=W.device)  # eliminated rows D_k·U_k, weight column order
    for k, (p, c) in enumerate(zip(row_list, col_list, strict=True)):
        col = W[:, c].to(dtype) - L[:, :k] @ packed[:k, c]
        row = W[p].to(dtype) - L[p, :k] @ packed[:k]
        row[col_list[:k]] = 0.0
        pivot = col[p].clone()
        row[c] = pivot
        packed[k] = row
        if pivot.abs() > tol:
            col /= pivot
            col[row_list[:k]] = 0.0
            L[:, k] = col
        L[p, k] = 1.0
    order = _full_order(row_list, m, W.device)
    if cols is None:
        return _finish(order, L[order], torch.triu(packed), tol)
    col_order = _full_order(col_list, n, W.device)
    return _finish(order, L[order], torch.triu(packed[:, col_order]), tol, col_order)


def captured_energy(weight: Tensor, approx: Tensor) -> float:
    """Fraction of W's energy a rank-r term captures: 1 − ‖W − W_r‖²_F / ‖W‖²_F (float64).

    For the top-r SVD this is Σ_{i≤r} σ_i² / Σ σ_i², the `energy_rank` definition; for a truncated LDU, W − W_r is
    the Schur complement after r steps. It is 1 at full rank and can go below 0 when the residual outgrows W.
    """
    W = weight_matrix(weight.detach()).double()
    total = float(torch.linalg.norm(W)) ** 2
    if total == 0:
        return 1.0
    return 1.0 - float(torch.linalg.norm(W - approx.double().reshape(W.shape))) ** 2 / total


# --------------------------------------------------------------------------------------------------- gains


def svfit_gain(s: Tensor, s0: Tensor) -> Tensor:
    """SVFit: W + U_r diag(s − σ_r) V_rᵀ is the paper's W_e + U_r diag(s) V_rᵀ with the base weight left untouched."""
    return s - s0


def loldu_gain(z: Tensor, D: Tensor, sigma: Tensor | float, sigma0: Tensor | float) -> Tensor:
    """LoLDU: σ·P L_r diag(z) U_r replaces σ₀·P L_r diag(D_r) U_r, so the gain is σ·z − σ₀·D_r."""
    return sigma * z - sigma0 * D


# --------------------------------------------------------------------------------------------------- delta


def linear_delta(x: Tensor, down: Tensor, gain: Tensor | None, up: Tensor, scale: float) -> Tensor:
    """Δy = scale · C (g ⊙ R x) for token-major x (..., n); gain None means all ones (LoRA).

    A B × r gain gives sample b of x (B × … × n) its own row: adapters that share their frozen factors (SVFit or LoLDU
    adapters of one base) serve a mixed batch with one down- and one up-projection, whatever their number.
    """
    h = x @ down.T
    if gain is not None:
        h = h * (gain if gain.ndim == 1 else gain.reshape(gain.shape[0], *([1] * (h.ndim - 2)), gain.shape[1]))
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
    """LoCon: R is a conv with the base conv's geometry, the gain scales its r channels, C is a 1×1 conv (a B × r
    gain: one row per sample, as in `linear_delta`)."""
    r = down.shape[0]
    h = F.conv2d(x, down.reshape(r, -1, *kernel_size), stride=stride, padding=padding, dilation=dilation)
    if gain is not None:
        h = h * (gain[:, None, None] if gain.ndim == 1 else gain[:, :, None, None])
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
    """Five float64 numbers that identify a base weight, from one read of W: a magnitude s, ΣW, two bilinear probes
    pᵀWq with fixed random p, q, and the unit roundoff of the weight's dtype.

    The first four come from one 3 × m by m × n product V = [p₁; p₂; 1]ᵀ·W on the weight's device (no W-sized
    temporary): ΣW = V₃·1, pᵢᵀWqᵢ = Vᵢ·qᵢ and s = ‖V₁,₂‖_F / √2, whose square is an unbiased estimate of ‖W‖²_F.
    The roundoff says how precisely W was known, so that `fingerprints_match` can accept a rounded copy (fp32 ↔ bf16 ↔
    fp16). fp16/bf16 weights are read as fp32. Stored next to every adapter so that one loaded onto another base
    model is refused.
    """
    W = weight_matrix(weight.detach())
    roundoff = unit_roundoff(W.dtype)
    if W.dtype not in (torch.float32, torch.float64):
        W = W.float()
    left, right = _fingerprint_probes(*W.shape)
    projected = (left.to(device=W.device, dtype=W.dtype) @ W).to(device="cpu", dtype=torch.float64)
    probes = (projected * right).sum(dim=1)  # p₁ᵀWq₁, p₂ᵀWq₂, 1ᵀW1
    magnitude = torch.linalg.vector_norm(projected[:2]).div(math.sqrt(2.0)).reshape(1)
    return torch.cat([magnitude, probes[2:], probes[:2], torch.tensor([roundoff], dtype=torch.float64)])


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-(mantissa bits + 1): rounding to `dtype` moves a value w by at most u·|w| (2⁻⁸ bf16, 2⁻¹¹ fp16)."""
    return torch.finfo(dtype).eps / 2


@functools.lru_cache(maxsize=64)
def _fingerprint_probes(m: int, n: int) -> tuple[Tensor, Tensor]:
    """[p₁; p₂; 1] (3 × m) and [q₁; q₂; 1] (3 × n) in float64, fixed by FINGERPRINT_SEED."""
    generator = torch.Generator().manual_seed(FINGERPRINT_SEED)
    p = torch.randn(2, m, generator=generator, dtype=torch.float64)
    q = torch.randn(2, n, generator=generator, dtype=torch.float64)
    return torch.cat([p, torch.ones(1, m, dtype=torch.float64)]), torch.cat([q, torch.ones(1, n, dtype=torch.float64)])


def checked_fingerprint(weight: Tensor, what: str = "weight") -> Tensor:
    """`weight_fingerprint`, refusing inf/NaN: any of them makes ΣW non-finite, so this is also the finiteness check.

    With `pivoted_ldu(..., scale=float(fp[0]))` a LoLDU init reads all of W once (the fingerprint's product); the
    decomposition itself reads only r columns and r rows.
    """
    fp = weight_fingerprint(weight)
    if weight.device.type != "meta" and not bool(torch.isfinite(fp).all()):
        bad = int((~torch.isfinite(weight)).sum())  # only on the error path
        if bad:
            raise ValueError(f"{what} has {bad} non-finite values (inf/NaN); refusing to decompose it")
        fp = weight_fingerprint(weight.double())  # finite entries whose sums overflowed fp32
        fp[4] = unit_roundoff(weight.dtype)
    return fp


# A probe's change under rounding, pᵀEq for the rounding error E (|E_ij| ≤ u·|W_ij|), has standard deviation
# ‖E‖_F ≤ u·‖W‖_F over the random probe vectors whatever the structure of E; K of them is the tolerance (the worst
# seen here on 768² to 3072 × 768 weights, bf16 and fp16 copies, was 1.7·u·s).
PROBE_TOLERANCE_SIGMAS = 8.0
# fp32 matmuls may run as TF32 on GPUs (10-bit mantissa): no fingerprint is trusted below fp16's roundoff.
MIN_FINGERPRINT_ROUNDOFF = 2.0**-11
# Adapters saved before the roundoff was recorded (4 entries) may come from any dtype: assume the coarsest.
LEGACY_FINGERPRINT_ROUNDOFF = 2.0**-8


def fingerprints_match(stored: Tensor, actual: Tensor) -> bool:
    """Whether two fingerprints can come from one base weight, rounded to either's dtype.

    The two random probes are compared within K·u·s (`PROBE_TOLERANCE_SIGMAS`), u the coarser roundoff of the two
    weights and s the magnitude: rounding moves a probe by the magnitude of its terms, not of its value. ΣW is not
    compared: its rounding error is up to u·Σ|W| ≈ u·√(mn)·‖W‖_F, larger than ‖W‖_F itself for a big bf16 matrix, so it
    could not tell bases apart there; it stays the finiteness check. Entry 0 was the exact ‖W‖_F in adapters saved
    before the one-read fingerprint (2026-12-02), and those still load.
    """
    stored, actual = stored.double().cpu(), actual.double().cpu()
    roundoffs = [float(f[4]) if f.numel() > 4 else LEGACY_FINGERPRINT_ROUNDOFF for f in (stored, actual)]
    roundoff = max(*roundoffs, MIN_FINGERPRINT_ROUNDOFF)
    tolerance = PROBE_TOLERANCE_SIGMAS * roundoff * max(float(actual[0]), 1e-12)
    return bool(((stored[2:4] - actual[2:4]).abs() <= tolerance).all())
