"""Tests of npugen.golden.binary: binarization, bit packing and the XNOR-popcount GEMM."""

import math

import numpy as np
import pytest

from npugen.golden.binary import (
    binarize_activations,
    binarize_weights,
    pack_bits,
    unpack_bits,
    xnor_popcount_gemm,
)

SEED_BASE = 0xB1A7_0000


def random_signs(rng, shape):
    return rng.choice(np.array([-1, 1], np.int8), size=shape)


def valid_mask_bytes(k):
    """Per byte of a K-element row, the bits holding real elements."""
    nbytes = -(-k // 8)
    mask = np.full(nbytes, 0xFF, np.uint8)
    if k % 8:
        mask[-1] = (1 << (k % 8)) - 1
    return mask


# -- binarization ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [SEED_BASE + i for i in range(3)])
def test_binarize_weights_per_output_channel(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    k, n = 37, 6
    w = rng.standard_normal((k, n)) * rng.uniform(0.01, 3, n)
    w[3, 2] = 0.0
    w[4, 1] = -0.0
    signs, alpha = binarize_weights(w)
    assert signs.dtype == np.int8 and signs.shape == (k, n)
    assert alpha.dtype == np.float32 and alpha.shape == (n,)
    np.testing.assert_array_equal(signs, np.where(w >= 0, 1, -1))
    assert signs[3, 2] == 1 and signs[4, 1] == 1
    expect = [math.fsum(abs(float(v)) for v in w[:, j]) / k for j in range(n)]
    np.testing.assert_allclose(alpha, expect, rtol=1e-6)
    # α = mean|w| is the least-squares scale of the signs, channel by channel.
    for j in range(n):
        best = np.dot(w[:, j], signs[:, j]) / k
        assert alpha[j] == pytest.approx(best, rel=1e-6)


def test_binarize_weights_axis():
    seed = SEED_BASE + 10
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 5)).astype(np.float32)   # O×H×W-like, channel axis 0
    signs, alpha = binarize_weights(w, axis=0)
    assert alpha.shape == (4,)
    np.testing.assert_allclose(alpha, np.abs(w).reshape(4, -1).mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(signs, np.where(w >= 0, 1, -1))
    _, alpha_mid = binarize_weights(w, axis=1)
    np.testing.assert_allclose(alpha_mid, np.abs(w).mean(axis=(0, 2)), rtol=1e-6)
    _, alpha_neg = binarize_weights(w, axis=-1)
    np.testing.assert_allclose(alpha_neg, np.abs(w).mean(axis=(0, 1)), rtol=1e-6)
    # A channel of zeros binarizes to +1 with α = 0.
    signs, alpha = binarize_weights(np.zeros((3, 2)))
    assert (signs == 1).all() and alpha.tolist() == [0.0, 0.0]


def test_binarize_activations():
    x = np.array([-2.5, -1e-30, -0.0, 0.0, 1e-30, 7.0])
    got = binarize_activations(x)
    assert got.dtype == np.int8
    assert got.tolist() == [-1, -1, 1, 1, 1, 1]
    assert binarize_activations(np.array([[-3, 0], [2, -1]])).tolist() == [[-1, 1], [1, -1]]
    assert binarize_activations(np.float32([-1, 1])).tolist() == [-1, 1]


# -- packing ---------------------------------------------------------------------------


def test_pack_bits_layout():
    # Element 8j + i → bit i of byte j; 1 → +1, 0 → -1.
    signs = np.array([1, -1, -1, -1, -1, -1, -1, -1, 1])
    assert pack_bits(signs).view(np.uint8).tolist() == [0x01, 0x01]
    assert pack_bits(signs, pad=1).view(np.uint8).tolist() == [0x01, 0xFF]
    assert pack_bits(np.array([-1, 1, 1, -1, -1, -1, -1, 1])).view(np.uint8).tolist() == [0x86]
    assert pack_bits(signs).dtype == np.int8
    assert pack_bits(np.array([[1, -1], [-1, -1], [1, 1]]), axis=0).view(np.uint8).tolist() == \
        [[0x05, 0x04]]


@pytest.mark.parametrize("shape, axis", [((1,), -1), ((8,), 0), ((9,), -1), ((3, 17), 1),
                                         ((15, 2), 0), ((2, 64, 3), 1), ((2, 3, 65), -1),
                                         ((3, 0), 1)])
def test_pack_unpack_round_trip(shape, axis):
    seed = SEED_BASE + 100 + sum(shape) + axis
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    signs = random_signs(rng, shape)
    n = shape[axis]
    for pad in (0, 1):
        packed = pack_bits(signs, axis=axis, pad=pad)
        expect_shape = list(shape)
        expect_shape[axis] = math.ceil(n / 8)
        assert packed.shape == tuple(expect_shape) and packed.dtype == np.int8
        back = unpack_bits(packed, n, axis=axis)
        assert back.dtype == np.int8
        np.testing.assert_array_equal(back, signs)
        np.testing.assert_array_equal(unpack_bits(packed.view(np.uint8), n, axis=axis), signs)
        full = unpack_bits(packed, 8 * math.ceil(n / 8), axis=axis)
        padding = np.take(full, range(n, full.shape[axis]), axis=axis)
        assert (padding == (1 if pad else -1)).all()
        np.testing.assert_array_equal(unpack_bits(packed, n // 3, axis=axis),
                                      np.take(signs, range(n // 3), axis=axis))


def test_unpack_every_byte():
    every = np.arange(256, dtype=np.uint8)
    signs = unpack_bits(every, 8 * 256).reshape(256, 8)
    for byte in (0x00, 0x01, 0x80, 0xA5, 0xFF):
        assert signs[byte].tolist() == [1 if byte >> i & 1 else -1 for i in range(8)]
    np.testing.assert_array_equal(pack_bits(signs.reshape(-1)).view(np.uint8), every)


# -- XNOR-popcount GEMM ------------------------------------------------------------------


def garbage_padding(packed_rows, k, rng):
    """``packed_rows`` (bytes along the last axis) with random bits past element k."""
    mask = valid_mask_bytes(k)
    noise = rng.integers(0, 256, packed_rows.shape, dtype=np.uint8)
    raw = packed_rows.view(np.uint8)
    return ((raw & mask) | (noise & ~mask)).view(np.int8)


K_VALUES = [1, 7, 8, 9, 63, 64, 65, 127, 200]


@pytest.mark.parametrize("k", K_VALUES + ["random"])
def test_xnor_popcount_gemm_equals_float_matmul(k):
    seed = SEED_BASE + 300 + (k if isinstance(k, int) else 999)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    if k == "random":
        k = int(rng.integers(1, 500))
        print(f"k={k}")
    m, n = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    a = random_signs(rng, (m, k))
    w = random_signs(rng, (k, n))
    expect = a.astype(np.float64) @ w.astype(np.float64)
    variants = []
    for pad_a in (0, 1):
        for pad_w in (0, 1):
            variants.append((pack_bits(a, pad=pad_a), pack_bits(w, axis=0, pad=pad_w)))
    a_packed, w_packed = variants[0]
    variants.append((garbage_padding(a_packed, k, rng),
                     garbage_padding(w_packed.T, k, rng).T))
    if k % 8:
        # The padding really differs between the variants that must agree.
        assert not np.array_equal(variants[0][0], variants[-1][0]) or m * (8 - k % 8) < 4
    for ap, wp in variants:
        got = xnor_popcount_gemm(ap, wp, k)
        assert got.shape == (m, n)
        np.testing.assert_array_equal(got, expect)
        # Also with uint8 bytes.
        np.testing.assert_array_equal(xnor_popcount_gemm(ap.view(np.uint8),
                                                         wp.view(np.uint8), k), expect)


def test_xnor_popcount_gemm_extremes():
    for k in (1, 8, 13, 64, 100):
        ones = np.ones((1, k), np.int8)
        a = pack_bits(ones, pad=0)
        w_same = pack_bits(ones.T, axis=0, pad=1)
        w_opp = pack_bits(-ones.T, axis=0, pad=1)
        assert xnor_popcount_gemm(a, w_same, k).tolist() == [[k]]
        assert xnor_popcount_gemm(a, w_opp, k).tolist() == [[-k]]
        # Padding bits that agree (pad 1 with pad 1) are not counted either.
        a1 = pack_bits(-ones, pad=1)
        assert xnor_popcount_gemm(a1, w_opp, k).tolist() == [[k]]


@pytest.mark.parametrize("call, exc, message", [
    (lambda: binarize_weights(np.zeros((0, 3))), ValueError, r"^w must not be empty$"),
    (lambda: binarize_weights(np.array([1.0, np.nan])), ValueError, r"^w must be finite$"),
    (lambda: binarize_weights(np.array([1.0, -np.inf])), ValueError, r"^w must be finite$"),
    (lambda: binarize_activations(np.array([np.inf])), ValueError, r"^x must be finite$"),
    (lambda: pack_bits(np.array([1, 0, -1])), ValueError,
     r"^signs must hold only -1 and \+1, found np\.int64\(0\)$|"
     r"^signs must hold only -1 and \+1, found 0$"),
    (lambda: pack_bits(np.array([1, 2])), ValueError, r"^signs must hold only -1 and \+1, found"),
    (lambda: pack_bits(np.array([1, -1]), pad=2), ValueError, r"^pad must be 0 or 1, not 2$"),
    (lambda: pack_bits(np.array([1, -1]), pad=-1), ValueError, r"^pad must be 0 or 1, not -1$"),
    (lambda: unpack_bits(np.zeros(2, np.int32), 3), TypeError,
     r"^packed must be int8 or uint8 bytes, not int32$"),
    (lambda: unpack_bits(np.zeros(2, np.int8), 17), ValueError,
     r"^count must be in 0\.\.16, not 17$"),
    (lambda: unpack_bits(np.zeros(2, np.int8), -1), ValueError,
     r"^count must be in 0\.\.16, not -1$"),
    (lambda: xnor_popcount_gemm(np.zeros((2, 1), np.int8), np.zeros((1, 3), np.int8), 0),
     ValueError, r"^k must be at least 1, not 0$"),
    (lambda: xnor_popcount_gemm(np.zeros((2, 1), np.int8), np.zeros((2, 3), np.int8), 9),
     ValueError, r"^a_packed must be M×2 bytes for k=9, not \(2, 1\)$"),
    (lambda: xnor_popcount_gemm(np.zeros(2, np.int8), np.zeros((1, 3), np.int8), 8),
     ValueError, r"^a_packed must be M×1 bytes for k=8, not \(2,\)$"),
    (lambda: xnor_popcount_gemm(np.zeros((2, 2), np.int8), np.zeros((1, 3), np.int8), 9),
     ValueError, r"^w_packed must be 2×N bytes for k=9, not \(1, 3\)$"),
])
def test_binary_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
