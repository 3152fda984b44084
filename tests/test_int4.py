"""Tests of npugen.golden.int4 against the ONNX reference and exact integer models."""

import math
from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_ref import onnx_run
from npugen.golden.int4 import (
    INT4_MAX,
    INT4_MIN,
    choose_int4_qparams,
    pack_int4,
    qgemm_int4,
    quantize_int4,
    unpack_int4,
)

SEED_BASE = 0x1447_0000
ONNX_INT4 = helper.tensor_dtype_to_np_dtype(TensorProto.INT4)


def onnx_quantize_int4(x, scale, zero_point, axis=None):
    """ONNX QuantizeLinear (opset 21) with an INT4 zero point, as int8 values."""
    attrs = {} if axis is None else {"axis": axis}
    y = onnx_run("QuantizeLinear", {
        "x": x, "scale": np.asarray(scale, np.float32),
        "zero_point": np.asarray(zero_point).astype(ONNX_INT4),
    }, TensorProto.INT4, x.shape, **attrs)
    assert y.dtype == ONNX_INT4
    return y.astype(np.int8)


def exact_matmul(a, b, za=0):
    return (a.astype(object) - int(za)).dot(b.astype(object))


def wrap(value, bits):
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


# -- choose_int4_qparams / quantize_int4 ------------------------------------------------


def test_onnx_reference_supports_int4_quantize():
    # Ties go to even and the result saturates to [-8, 7].
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 100.0, -100.0], np.float32)
    got = onnx_quantize_int4(x, 0.5, 0)
    assert got.tolist() == [0, 2, 2, 0, -2, 7, -8]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("i", range(4))
def test_quantize_int4_per_tensor_matches_onnx(symmetric, i):
    seed = SEED_BASE + 10 * i + symmetric
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.uniform(-5, 5, 2))
    if i == 3:
        lo, hi = 0.5, 3.0              # all positive: the range widens to include 0
    x = rng.uniform(lo, hi, (7, 9)).astype(np.float32)
    scale, zp = choose_int4_qparams(x, symmetric=symmetric)
    assert scale.shape == zp.shape == ()
    assert scale.dtype == np.float32 and zp.dtype == np.int32
    got = quantize_int4(x, scale, zp)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, onnx_quantize_int4(x, scale, zp))
    assert got.min() >= INT4_MIN and got.max() <= INT4_MAX
    # Real 0 is exactly the code zero_point, and the error is at most half a step.
    assert quantize_int4(np.zeros(1, np.float32), scale, zp).tolist() == [int(zp)]
    err = np.abs((got.astype(np.float64) - int(zp)) * float(scale) - x)
    assert err.max() <= 0.5 * float(scale) * (1 + 1e-5)
    if symmetric:
        assert int(zp) == 0 and got.min() >= -7
        assert float(scale) == pytest.approx(np.abs(x).max() / 7, rel=1e-6)
    else:
        span = max(float(x.max()), 0.0) - min(float(x.min()), 0.0)
        assert float(scale) == pytest.approx(span / 15, rel=1e-6)
        assert int(zp) == np.clip(np.rint(-8 - min(float(x.min()), 0.0) / float(scale)), -8, 7)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_int4_per_axis_matches_onnx(axis, symmetric):
    seed = SEED_BASE + 100 + 2 * (axis % 2) + symmetric
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((6, 5)) * rng.uniform(0.1, 4, (6, 1))).astype(np.float32)
    scale, zp = choose_int4_qparams(x, symmetric=symmetric, axis=axis)
    assert scale.shape == zp.shape == (x.shape[axis],)
    got = quantize_int4(x, scale, zp, axis=axis)
    np.testing.assert_array_equal(got, onnx_quantize_int4(x, scale, zp, axis=axis % 2))
    if symmetric:
        assert (zp == 0).all()
    else:
        # Every channel reaches both ends of its range (within the zero-point rounding).
        move = np.moveaxis(got, axis, 0)
        assert (move.min(axis=1) <= -7).all() and (move.max(axis=1) >= 6).all()


def test_quantize_int4_ties_and_saturation_match_onnx():
    # Exact halves with an odd and an even zero point, and far-out values.
    x = (np.arange(-24, 24, dtype=np.float32) + 0.5) * np.float32(0.25)
    for zp in (-8, -3, 0, 3, 7):
        got = quantize_int4(x, np.float32(0.25), zp)
        np.testing.assert_array_equal(got, onnx_quantize_int4(x, 0.25, zp))
        expect = np.clip(np.rint(x / np.float32(0.25)) + zp, -8, 7)
        np.testing.assert_array_equal(got, expect)
    assert quantize_int4(np.float32([2.5, 3.5, -2.5, -3.5]), 1.0).tolist() == [2, 4, -2, -4]
    assert quantize_int4(np.float32([1e30, -1e30]), 1.0, -8).tolist() == [7, -8]


def test_choose_int4_qparams_degenerate():
    scale, zp = choose_int4_qparams(np.zeros(5), symmetric=False)
    assert float(scale) == 1.0 and int(zp) == 0
    scale, zp = choose_int4_qparams(np.zeros((2, 3)), symmetric=True, axis=0)
    assert scale.tolist() == [1.0, 1.0] and zp.tolist() == [0, 0]


# -- packing ---------------------------------------------------------------------------


def test_pack_int4_byte_layout():
    # Element 2j → low nibble of byte j, element 2j + 1 → high nibble.
    assert pack_int4(np.array([1, -2])).view(np.uint8).tolist() == [0xE1]
    assert pack_int4(np.array([-8, 7, 0, -1])).view(np.uint8).tolist() == [0x78, 0xF0]
    # An odd length is padded in the high nibble of the last byte.
    assert pack_int4(np.array([5])).view(np.uint8).tolist() == [0x05]
    assert pack_int4(np.array([5]), pad=-1).view(np.uint8).tolist() == [0xF5]
    assert pack_int4(np.array([3, 4, 5]), pad=-8).view(np.uint8).tolist() == [0x43, 0x85]
    assert pack_int4(np.array([1, 2])).dtype == np.int8
    assert pack_int4(np.array([[1, 2, 3], [4, 5, 6]]), axis=0).view(np.uint8).tolist() == \
        [[0x41, 0x52, 0x63]]


@pytest.mark.parametrize("shape, axis", [((1,), -1), ((7,), 0), ((8,), -1), ((3, 5), 1),
                                         ((5, 3), 0), ((2, 9, 4), 1), ((3, 2, 7), -1),
                                         ((7, 2, 2), 0), ((4, 0), 1)])
def test_pack_unpack_round_trip(shape, axis):
    seed = SEED_BASE + 200 + sum(shape) + axis
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    values = rng.integers(-8, 8, shape).astype(np.int8)
    for pad in (0, -8, 7):
        packed = pack_int4(values, axis=axis, pad=pad)
        expect_shape = list(shape)
        expect_shape[axis] = math.ceil(shape[axis] / 2)
        assert packed.shape == tuple(expect_shape) and packed.dtype == np.int8
        n = shape[axis]
        back = unpack_int4(packed, n, axis=axis)
        assert back.dtype == np.int8
        np.testing.assert_array_equal(back, values)
        np.testing.assert_array_equal(unpack_int4(packed.view(np.uint8), n, axis=axis), values)
        if n % 2:
            # The padding nibble is the pad value.
            full = unpack_int4(packed, n + 1, axis=axis)
            assert (np.take(full, [n], axis=axis) == pad).all()
        # A shorter count takes a prefix.
        np.testing.assert_array_equal(unpack_int4(packed, n // 2, axis=axis),
                                      np.take(values, range(n // 2), axis=axis))


def test_unpack_every_byte():
    every = np.arange(256, dtype=np.uint8)
    values = unpack_int4(every, 512)
    lo = (every & 0xF).astype(np.int64)
    hi = (every >> 4).astype(np.int64)
    np.testing.assert_array_equal(values[0::2], np.where(lo > 7, lo - 16, lo))
    np.testing.assert_array_equal(values[1::2], np.where(hi > 7, hi - 16, hi))
    np.testing.assert_array_equal(pack_int4(values).view(np.uint8), every)


# -- qgemm_int4 --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (9, 64, 11), (4, 301, 6)],
                         ids=lambda s: "x".join(map(str, s)))
def test_qgemm_int4_matches_onnx_matmul_integer(shape):
    seed = SEED_BASE + 300 + sum(shape)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    m, k, n = shape
    for _ in range(3):
        a = rng.integers(-8, 8, (m, k)).astype(np.int8)
        w = rng.integers(-8, 8, (k, n)).astype(np.int8)
        za = int(rng.choice([v for v in range(-8, 8) if v]))
        expect = onnx_run("MatMulInteger", {
            "a": a, "w": w, "za": np.asarray(za, np.int8), "zw": np.zeros((), np.int8),
        }, TensorProto.INT32, (m, n))
        np.testing.assert_array_equal(expect, exact_matmul(a, w, za))
        bias = rng.integers(-(1 << 12), 1 << 12, n)
        multiplier = rng.integers(1 << 30, (1 << 31) - 1, n)
        shift = rng.integers(-8, 0, n)
        acc = qgemm_int4(a, w, a_zero_point=za, bias=bias, multiplier=multiplier,
                         shift=shift, output="int32")
        np.testing.assert_array_equal(acc, expect.astype(np.int64) + bias)
        out_zp = int(rng.integers(-8, 8))
        out = qgemm_int4(a, w, a_zero_point=za, bias=bias, multiplier=multiplier,
                         shift=shift, out_zero_point=out_zp)
        assert out.dtype == np.int8
        assert out.min() >= -8 and out.max() <= 7
        np.testing.assert_array_equal(out, gemmlowp_model(expect.astype(object) + bias,
                                                          multiplier, shift, out_zp, -8, 7))


def test_qgemm_int4_extremes_and_narrow_accumulator():
    # -8 - 7 = -15 times -8, K times: the widest int4 sums, wrapped at 18 bits.
    k = 3000
    a = np.full((2, k), -8, np.int8)
    a[1, ::2] = 7
    w = np.full((k, 3), -8, np.int8)
    w[:, 1] = 7
    exact = exact_matmul(a, w, 7)
    assert exact[0, 0] == k * 120 > (1 << 17)
    got = qgemm_int4(a, w, a_zero_point=7, multiplier=1 << 30, shift=0, acc_bits=18,
                     output="int32")
    np.testing.assert_array_equal(got, np.vectorize(lambda v: wrap(v, 18))(exact))
    got = qgemm_int4(a, w, a_zero_point=7, multiplier=1 << 30, shift=0, output="int32")
    np.testing.assert_array_equal(got, exact)


def srdhm(x, m0):
    """Exact gemmlowp SaturatingRoundingDoublingHighMul: round half toward +inf."""
    return math.floor(Fraction(x * m0, 1 << 31) + Fraction(1, 2))


def rdbpot(x, e):
    """Exact gemmlowp RoundingDivideByPOT: round half away from zero."""
    v = Fraction(x, 1 << e)
    r = math.floor(abs(v) + Fraction(1, 2))
    return r if v >= 0 else -r


def gemmlowp_model(total, multiplier, shift, out_zp, out_min, out_max):
    out = np.empty(total.shape, dtype=np.int64)
    for (i, j), v in np.ndenumerate(total):
        v = int(v)
        s = int(shift[j])
        scaled = rdbpot(srdhm(v << max(s, 0), int(multiplier[j])), max(-s, 0))
        out[i, j] = min(max(scaled + out_zp, out_min), out_max)
    return out


@pytest.mark.parametrize("shift, out_zp, table", [
    # multiplier 0.5: halves round toward +inf, then the clamp to [-8, 7].
    (0, 0, {-18: -8, -17: -8, -16: -8, -15: -7, -3: -1, -1: 0, 0: 0, 1: 1, 3: 2,
            13: 7, 14: 7, 15: 7, 16: 7, 100: 7, -100: -8}),
    (0, -1, {-15: -8, -13: -7, -1: -1, 1: 0, 15: 7, 16: 7, 17: 7, 13: 6}),
    # multiplier 0.25: SRDHM rounds x/2 half up, then RDBPOT rounds half away from 0.
    (-1, 0, {2: 1, -2: -1, 6: 2, -6: -2, 5: 2, -5: -1, 29: 7, -30: -8, -29: -7,
             -34: -8, 27: 7, 26: 7, -26: -7, -27: -7}),
])
def test_qgemm_int4_ties_and_clamp(shift, out_zp, table):
    for acc, expect in table.items():
        # acc = sum of (a - za) * 1 over K = 8 terms, each a - za in [-15, 15].
        za = -8 if acc >= 0 else 7
        step = 15 if acc >= 0 else -15
        terms = [step] * (abs(acc) // 15) + [acc - step * (abs(acc) // 15)]
        terms += [0] * (8 - len(terms))
        a = np.array([terms], np.int64) + za
        assert a.min() >= -8 and a.max() <= 7
        out = qgemm_int4(a.astype(np.int8), np.ones((8, 1), np.int8), a_zero_point=za,
                         multiplier=1 << 30, shift=shift, out_zero_point=out_zp)
        assert out.tolist() == [[expect]], acc
        model = gemmlowp_model(np.array([[acc]], object), [1 << 30], [shift], out_zp, -8, 7)
        assert model.tolist() == [[expect]], acc


def test_qgemm_int4_wider_output_clamp():
    a = np.array([[7, -8]], np.int8)
    w = np.array([[7], [-8]], np.int8)
    # (7 - -8)*7 + (-8 - -8)*-8 = 105: 105 * 0.5 → 53 when the clamp allows int8.
    kwargs = dict(a_zero_point=-8, multiplier=1 << 30, shift=0)
    assert qgemm_int4(a, w, **kwargs).tolist() == [[7]]
    assert qgemm_int4(a, w, **kwargs, out_min=-128, out_max=127).tolist() == [[53]]
    assert qgemm_int4(a, w, **kwargs, out_min=-2, out_max=50).tolist() == [[50]]


# -- errors ------------------------------------------------------------------------------

V = np.zeros((2, 3), np.int8)
Q = dict(multiplier=1 << 30, shift=0)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: pack_int4(np.array([1, 8])), ValueError,
     r"^values must hold int4 values in \[-8, 7\], found 8$"),
    (lambda: pack_int4(np.array([[0, -9], [-10, 0]])), ValueError,
     r"^values must hold int4 values in \[-8, 7\], found -9$"),
    (lambda: pack_int4(np.array([1.0, 2.0])), TypeError,
     r"^values must hold integers, not float64$"),
    (lambda: pack_int4(np.array([True, False])), TypeError,
     r"^values must hold integers, not bool$"),
    (lambda: pack_int4(np.array([1]), pad=8), ValueError,
     r"^pad must hold int4 values in \[-8, 7\], found 8$"),
    (lambda: pack_int4(np.array([1]), pad=0.5), TypeError,
     r"^pad must hold integers, not float64$"),
    (lambda: unpack_int4(np.zeros(3, np.int16), 2), TypeError,
     r"^packed must be int8 or uint8 bytes, not int16$"),
    (lambda: unpack_int4(np.zeros(3, np.int8), 7), ValueError, r"^count must be in 0\.\.6, not 7$"),
    (lambda: unpack_int4(np.zeros(3, np.int8), -1), ValueError,
     r"^count must be in 0\.\.6, not -1$"),
    (lambda: unpack_int4(np.zeros((2, 3), np.int8), 5, axis=0), ValueError,
     r"^count must be in 0\.\.4, not 5$"),
    (lambda: qgemm_int4(V + 8, V.T, **Q), ValueError,
     r"^a must hold int4 values in \[-8, 7\], found 8$"),
    (lambda: qgemm_int4(V, V.T - 9, **Q), ValueError,
     r"^w must hold int4 values in \[-8, 7\], found -9$"),
    (lambda: qgemm_int4(V.astype(float), V.T, **Q), TypeError,
     r"^a must hold integers, not float64$"),
    (lambda: qgemm_int4(V, V.T, a_zero_point=8, **Q), ValueError,
     r"^a_zero_point must be in \[-8, 7\], not 8$"),
    (lambda: qgemm_int4(V, V.T, a_zero_point=-9, **Q), ValueError,
     r"^a_zero_point must be in \[-8, 7\], not -9$"),
    (lambda: qgemm_int4(V, V.T, output="int8", **Q), ValueError,
     r"^output must be 'int4' or 'int32', not 'int8'$"),
    (lambda: quantize_int4(np.zeros(2), 1.0, 8), ValueError,
     r"^zero_point must be in \[-8, 7\], found 8$"),
    (lambda: quantize_int4(np.zeros(2), 0.0), ValueError,
     r"^scale must be finite and positive, found 0\.0$"),
    (lambda: choose_int4_qparams(np.zeros(0), symmetric=False), ValueError,
     r"^x must not be empty$"),
    (lambda: choose_int4_qparams(np.array([np.inf]), symmetric=True), ValueError,
     r"^x must be finite to choose quantization parameters$"),
])
def test_int4_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
