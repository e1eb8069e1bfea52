"""The reference maths: decompositions, gains, deltas and the exact LoRA export."""

import pytest
import torch

from peft_inits import functional as Fn


def _random(m: int, n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_truncated_ldu_equals_full_lu_on_first_r_pivots():
    W = _random(300, 200)
    truncated = Fn.pivoted_ldu(W, 8, method="truncated", dtype=torch.float64)
    full = Fn.pivoted_ldu(W, 8, method="full", dtype=torch.float64)
    assert torch.allclose(truncated.up(), full.up(), atol=1e-13)
    assert torch.allclose(truncated.D, full.D, atol=1e-13)
    assert torch.allclose(truncated.U, full.U, atol=1e-13)
    # D_r are torch.linalg.lu's first r pivots in elimination order (signed, not the largest).
    _, _, U = torch.linalg.lu(W)
    assert torch.allclose(truncated.D, torch.diagonal(U)[:8], atol=1e-13)
    assert (truncated.D < 0).any()


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (33, 33)])
def test_full_rank_ldu_reconstructs_weight(shape):
    W = _random(*shape, seed=1)
    f = Fn.pivoted_ldu(W, min(shape), dtype=torch.float64)
    assert torch.allclose(f.up() @ torch.diag(f.D) @ f.U, W, atol=1e-12)
    assert f.perm.dtype == torch.long and f.perm.shape == (shape[0],)
    assert torch.equal(torch.sort(f.perm).values, torch.arange(shape[0]))
    assert torch.allclose(torch.diagonal(f.U[:, : min(shape)]), torch.ones(min(shape), dtype=torch.float64))


@pytest.mark.parametrize("method", ["truncated", "full"])
def test_zero_pivots_stay_finite(method):
    W = torch.zeros(6, 5)
    W[:, 0] = torch.arange(1.0, 7.0)  # rank 1: every pivot after the first is zero
    f = Fn.pivoted_ldu(W, 4, method=method)
    for t in (f.L, f.D, f.U, f.up()):
        assert torch.isfinite(t).all()
    assert f.D[0] == 6.0 and torch.equal(f.D[1:], torch.ones(3))
    assert torch.allclose(f.up() @ torch.diag(f.D) @ f.U, W[:, :5] @ torch.eye(5), atol=1e-6)


def test_tiny_pivot_does_not_blow_up():
    W = torch.eye(4)
    W[2, 2] = 1e-30
    f = Fn.pivoted_ldu(W, 4, method="truncated")
    assert f.U.abs().max() <= 1.0 and torch.isfinite(f.D).all()


def test_exact_svd_top_r_matches_full_svd():
    W = _random(50, 30)
    f = Fn.svd_top_r(W, 5, dtype=torch.float64)
    S = torch.linalg.svdvals(W)
    assert torch.allclose(f.S, S[:5], atol=1e-12)
    assert f.U.shape == (50, 5) and f.Vh.shape == (5, 30)
    assert torch.allclose(f.U.T @ f.U, torch.eye(5, dtype=torch.float64), atol=1e-12)


def test_randomized_svd_is_accurate_on_decaying_spectrum_and_reproducible():
    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(120, 120, generator=g, dtype=torch.float64))
    S = 0.7 ** torch.arange(120, dtype=torch.float64)
    W = U[:, :120] @ torch.diag(S) @ V.T
    a = Fn.svd_top_r(W, 8, randomized=True, niter=2, seed=5, dtype=torch.float64)
    b = Fn.svd_top_r(W, 8, randomized=True, niter=2, seed=5, dtype=torch.float64)
    assert torch.equal(a.S, b.S) and torch.equal(a.U, b.U)
    assert torch.allclose(a.S, S[:8], rtol=1e-8)
    top = U[:, :8] @ torch.diag(S[:8]) @ V[:, :8].T
    assert torch.allclose(a.U @ torch.diag(a.S) @ a.Vh, top, atol=1e-8)


def test_energy_rank_definition():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert Fn.energy_rank(s, 9 / 14) == 1
    assert Fn.energy_rank(s, 0.9) == 2
    assert Fn.energy_rank(s, 0.99) == 3
    assert Fn.energy_rank(s, 1.0) == 3
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Fn.energy_rank(s, 1.5)


def test_rank_and_finiteness_errors():
    with pytest.raises(ValueError, match=r"r=31 is out of range .* 30×20: .* min\(m, n\) = 20"):
        Fn.check_rank(31, 30, 20)
    with pytest.raises(ValueError, match="r=0 is out of range"):
        Fn.svd_top_r(torch.ones(4, 4), 0)
    W = torch.ones(4, 4)
    W[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        Fn.pivoted_ldu(W, 2)
    with pytest.raises(ValueError, match="unknown LDU method"):
        Fn.pivoted_ldu(torch.ones(4, 4), 2, method="qr")


def test_half_precision_weights_are_decomposed_in_float32():
    W = _random(24, 16, dtype=torch.float32)
    f16 = Fn.svd_top_r(W.half(), 4)
    assert f16.S.dtype == torch.float32
    assert torch.allclose(f16.S, Fn.svd_top_r(W.half().float(), 4).S)
    ldu = Fn.pivoted_ldu(W.bfloat16(), 4)
    assert ldu.D.dtype == torch.float32


def test_delta_forms_agree_and_lora_pair_is_exact():
    g = torch.Generator().manual_seed(0)
    down, gain, up = torch.randn(4, 12, generator=g), torch.randn(4, generator=g), torch.randn(9, 4, generator=g)
    x = torch.randn(5, 7, 12, generator=g)
    dW = Fn.delta_weight(down, gain, up, 0.5)
    assert torch.allclose(Fn.linear_delta(x, down, gain, up, 0.5), x @ dW.T, atol=1e-5)
    A, B = Fn.lora_pair(down, gain, up, 0.5)
    assert torch.allclose(B @ A, dW, atol=1e-6)
    assert torch.linalg.matrix_rank(dW) == 4


def test_conv_delta_equals_conv_with_delta_weight():
    g = torch.Generator().manual_seed(1)
    m, cin, k = 6, 3, 3
    down, gain = torch.randn(2, cin * k * k, generator=g), torch.randn(2, generator=g)
    up = torch.randn(m, 2, generator=g)
    x = torch.randn(2, cin, 9, 9, generator=g)
    dW = Fn.delta_weight(down, gain, up, 2.0).reshape(m, cin, k, k)
    got = Fn.conv2d_delta(x, down, gain, up, 2.0, kernel_size=(k, k), stride=2, padding=1, dilation=1)
    want = torch.nn.functional.conv2d(x, dW, stride=2, padding=1)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("init", Fn.LOLDU_Z_INITS)
def test_loldu_z_inits(init):
    D = torch.tensor([2.0, -1.0, 4.0, 3.0])
    z = Fn.loldu_z_init(D, init, torch.Generator().manual_seed(0))
    assert z.shape == D.shape and torch.isfinite(z).all()
    identity = torch.equal(Fn.loldu_gain(z, D, 1.0, 1.0), torch.zeros(4))
    assert identity == (init == "lu")
    if init == "uniform":
        assert z.abs().max() <= D.mean() / 2
    if init == "constant":
        assert torch.equal(z, torch.full((4,), 2.0))


def test_fingerprint_tells_weights_apart_and_survives_dtype_round_trip():
    W = _random(32, 16, dtype=torch.float32)
    fp = Fn.weight_fingerprint(W)
    assert fp.shape == (4,) and fp.dtype == torch.float64
    assert Fn.fingerprints_match(fp, Fn.weight_fingerprint(W.bfloat16()))
    other = W.clone()
    other[0, 0] += 0.5
    assert not Fn.fingerprints_match(fp, Fn.weight_fingerprint(other))
    assert not Fn.fingerprints_match(fp, Fn.weight_fingerprint(_random(32, 16, seed=9, dtype=torch.float32)))
