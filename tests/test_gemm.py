"""Tests of npugen.golden.gemm against the ONNX reference and exact integer models."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto

from onnx_ref import onnx_run
from npugen.golden.gemm import matmul_integer, qgemm
from npugen.golden.quant import (
    INT32_MAX,
    INT32_MIN,
    quantize_multiplier,
    requantize,
    requantize_float,
)

SEED_BASE = 0x6E44_0000


def exact_matmul(a, b, za=0, zb=0):
    """Python-integer sum_k (a - za)(b - zb), with per-row/per-column zero points."""
    m, k = a.shape
    n = b.shape[1]
    za = np.broadcast_to(np.asarray(za, dtype=object), (m,))
    zb = np.broadcast_to(np.asarray(zb, dtype=object), (n,))
    da = a.astype(object) - za[:, None]
    db = b.astype(object) - zb[None, :]
    return da.dot(db)


def wrap(values, bits):
    half = 1 << (bits - 1)
    return np.vectorize(lambda v: (v + half) % (1 << bits) - half, otypes=[object])(values)


def random_operand(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def nonzero_zero_point(rng, dtype):
    info = np.iinfo(dtype)
    values = [v for v in range(info.min, info.max + 1) if v != 0]
    return np.asarray(rng.choice(values), dtype=dtype)


# -- matmul_integer ------------------------------------------------------------------

SHAPES = [(1, 1, 1), (5, 1, 3), (7, 16, 5), (3, 64, 9), (16, 33, 1)]
DTYPES = [np.int8, np.uint8]
MATMUL_CASES = [
    pytest.param((m, k, n), adt, bdt, SEED_BASE + i,
                 id=f"{m}x{k}x{n}-a_{np.dtype(adt).name}-b_{np.dtype(bdt).name}")
    for i, ((m, k, n), adt, bdt) in enumerate(itertools.product(SHAPES, DTYPES, DTYPES))
]


@pytest.mark.parametrize("shape, a_dtype, b_dtype, seed", MATMUL_CASES)
def test_matmul_integer_matches_onnx(shape, a_dtype, b_dtype, seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    m, k, n = shape
    a, b = random_operand(rng, (m, k), a_dtype), random_operand(rng, (k, n), b_dtype)
    za, zb = nonzero_zero_point(rng, a_dtype), nonzero_zero_point(rng, b_dtype)
    expect = onnx_run("MatMulInteger", {"a": a, "b": b, "za": za, "zb": zb}, TensorProto.INT32)
    got = matmul_integer(a, b, za, zb)
    assert got.dtype == np.int64 and got.shape == (m, n)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(got, exact_matmul(a, b, int(za), int(zb)))


@pytest.mark.parametrize("seed", [SEED_BASE + 100, SEED_BASE + 101])
def test_matmul_integer_per_row_and_per_column_zero_points(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a, b = random_operand(rng, (6, 11), np.uint8), random_operand(rng, (11, 4), np.int8)
    za = rng.integers(0, 256, 6).astype(np.uint8)
    zb = rng.integers(-128, 128, 4).astype(np.int8)
    np.testing.assert_array_equal(matmul_integer(a, b, za, zb), exact_matmul(a, b, za, zb))
    np.testing.assert_array_equal(matmul_integer(a, b, za, 0), exact_matmul(a, b, za, 0))


@pytest.mark.parametrize("acc_bits", [16, 18, 24])
def test_matmul_integer_wraps_narrow_accumulators(acc_bits):
    seed = SEED_BASE + 200 + acc_bits
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a, b = random_operand(rng, (8, 512), np.int8), random_operand(rng, (512, 6), np.int8)
    a[0] = -128                  # a - za = -255 everywhere in row 0
    b[:, 0] = -128               # +32640 per term in column 0: overflows any narrow width
    za, zb = 127, 0
    exact = exact_matmul(a, b, za, zb)
    got = matmul_integer(a, b, za, zb, acc_bits=acc_bits)
    np.testing.assert_array_equal(got, wrap(exact, acc_bits))
    assert (got != exact).any(), "the test must overflow the accumulator"
    half = 1 << (acc_bits - 1)
    assert got.min() >= -half and got.max() < half


def test_matmul_integer_wraps_int32_and_keeps_64_bits():
    k = 70_000                   # 70000 * 32385 > 2**31
    a = np.full((2, k), -128, np.int8)
    a[1, ::2] = 127
    w = np.full((k, 3), -127, np.int8)
    w[:, 1] = 127
    w[::7, 2] = 5
    exact = exact_matmul(a, w, 127, 0)
    assert exact[0, 0] == 70_000 * 32_385 > INT32_MAX
    np.testing.assert_array_equal(matmul_integer(a, w, 127, acc_bits=32), wrap(exact, 32))
    np.testing.assert_array_equal(matmul_integer(a, w, 127, acc_bits=64), exact)
    np.testing.assert_array_equal(matmul_integer(a, w, 127, acc_bits=40), wrap(exact, 40))


# -- qgemm --------------------------------------------------------------------------


def random_qgemm_operands(rng, m, k, n):
    a = random_operand(rng, (m, k), np.int8)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    za = int(rng.integers(-128, 128))
    return a, w, za


@pytest.mark.parametrize("seed", [SEED_BASE + 300 + i for i in range(3)])
def test_qgemm_int32_output_is_matmul_plus_bias(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a, w, za = random_qgemm_operands(rng, 9, 40, 7)
    bias = rng.integers(-(1 << 20), 1 << 20, 7).astype(np.int32)
    params = dict(a_zero_point=za, bias=bias, multiplier=1 << 30, shift=-8, out_zero_point=0,
                  output="int32")
    got = qgemm(a, w, **params)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, matmul_integer(a, w, za) + bias)
    wide = qgemm(a, w, **{**params, "acc_bits": 48})
    assert wide.dtype == np.int64
    np.testing.assert_array_equal(wide, got)
    # The int8 output requantizes exactly that accumulator.
    out = qgemm(a, w, **{**params, "output": "int8", "out_zero_point": -4})
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, requantize(got, 1 << 30, -8, out_zero_point=-4))


def test_qgemm_bias_wraps_in_narrow_accumulator():
    seed = SEED_BASE + 400
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a, w, za = random_qgemm_operands(rng, 6, 300, 5)
    bias = np.array([INT32_MAX, INT32_MIN, 1 << 17, -(1 << 17) - 1, 12345], np.int32)
    got = qgemm(a, w, a_zero_point=za, bias=bias, multiplier=1 << 30, shift=0,
                out_zero_point=0, acc_bits=18, output="int32")
    expect = wrap(exact_matmul(a, w, za) + bias.astype(object), 18)
    np.testing.assert_array_equal(got, expect)
    out = qgemm(a, w, a_zero_point=za, bias=bias, multiplier=1 << 30, shift=-10,
                out_zero_point=3, acc_bits=18)
    np.testing.assert_array_equal(out, requantize(expect.astype(np.int64), 1 << 30, -10,
                                                  out_zero_point=3))


def test_qgemm_int32_accumulator_wrap_reaches_requantizer():
    k = 70_000
    a = np.full((1, k), -128, np.int8)
    w = np.full((k, 2), -127, np.int8)
    exact = 70_000 * 32_385                       # positive, beyond INT32_MAX
    wrapped = exact - (1 << 32)                   # what a 32-bit accumulator holds
    params = dict(a_zero_point=127, bias=0, multiplier=1 << 30, shift=-20, out_zero_point=0)
    acc = qgemm(a, w, **params, output="int32")
    np.testing.assert_array_equal(acc, [[wrapped, wrapped]])
    out = qgemm(a, w, **params)
    assert out.tolist() == [[-128, -128]]         # the wrapped accumulator is negative
    acc64 = qgemm(a, w, **params, acc_bits=64, output="int32")
    np.testing.assert_array_equal(acc64, [[exact, exact]])


def qlinear_case(rng, m, k, n, *, a_scale=None, w_scale=None, y_scale=None):
    """Operands and float32 scales for QLinearMatMul with a realistic output spread."""
    a, w, za = random_qgemm_operands(rng, m, k, n)
    a_scale = np.float32(rng.uniform(0.005, 0.05) if a_scale is None else a_scale)
    if w_scale is None:
        w_scale = rng.uniform(0.002, 0.02, n)
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32), (n,)).copy()
    if y_scale is None:
        acc_std = float(np.std(matmul_integer(a, w, za)))
        y_scale = a_scale * float(np.median(w_scale)) * acc_std / 40
    y_scale = np.float32(y_scale)
    y_zp = int(rng.integers(-20, 21))
    # The multiplier exactly as the ONNX reference forms it: float32 arithmetic.
    real = (a_scale * w_scale) / y_scale
    assert real.dtype == np.float32
    return a, w, za, a_scale, w_scale, y_scale, y_zp, real


def compare_with_qlinear_matmul(a, w, za, a_scale, w_scale, y_scale, y_zp, real):
    """qgemm vs the ONNX reference; returns (number of outputs, number that differ)."""
    expect = onnx_run("QLinearMatMul", {
        "a": a, "a_scale": np.asarray(a_scale), "a_zero_point": np.asarray(za, np.int8),
        "b": w, "b_scale": w_scale, "b_zero_point": np.zeros((), np.int8),
        "y_scale": np.asarray(y_scale), "y_zero_point": np.asarray(y_zp, np.int8),
    }, TensorProto.INT8)
    acc = matmul_integer(a, w, za)
    # Single rounding, ties to even, zero point before rounding: bit-identical.
    np.testing.assert_array_equal(requantize_float(acc, real, out_zero_point=y_zp), expect)

    m0, shift = quantize_multiplier(real)
    got = qgemm(a, w, a_zero_point=za, bias=0, multiplier=m0, shift=shift, out_zero_point=y_zp)
    diff = got.astype(np.int32) - expect.astype(np.int32)
    assert np.abs(diff).max() <= 1

    # Each difference must come from the rounding rules: float32 multipliers are exact
    # in Q31, so the integer path sees the same real value v = acc * real and only its
    # two roundings (SRDHM at 2**-e, then RDBPOT, e = -shift) and the tie rules differ.
    # That can only happen within 2**-(e + 1) of a half-integer.
    for i, j in zip(*np.nonzero(diff)):
        mult = Fraction(float(real[j]))
        assert Fraction(int(m0[j])) * Fraction(2) ** (int(shift[j]) - 31) == mult
        v = int(acc[i, j]) * mult
        e = max(-int(shift[j]), 0)
        distance_to_tie = abs(v - (math.floor(v) + Fraction(1, 2)))
        assert distance_to_tie <= Fraction(1, 2 ** (e + 1)), (i, j, v, e)
    return diff.size, int(np.count_nonzero(diff))


@pytest.mark.parametrize("shape", [(16, 64, 24), (32, 200, 16), (8, 1, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_qgemm_vs_qlinear_matmul_random_scales(shape):
    seed = SEED_BASE + 500 + sum(shape)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    total = differ = 0
    for _ in range(4):
        size, count = compare_with_qlinear_matmul(*qlinear_case(rng, *shape))
        total, differ = total + size, differ + count
    print(f"{differ} of {total} outputs differ by one")


def test_qgemm_vs_qlinear_matmul_power_of_two_scales():
    # real = 2**-4 exactly: many accumulators land on or next to ties, so both the
    # tie rules and the double rounding are exercised; the bound must still hold.
    seed = SEED_BASE + 600
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    case = qlinear_case(rng, 24, 3, 24, a_scale=0.5, w_scale=0.125, y_scale=1.0)
    assert case[-1][0] == np.float32(2.0 ** -4)
    total, differ = compare_with_qlinear_matmul(*case)
    print(f"{differ} of {total} outputs differ by one")
    assert differ > 0


# -- validation ---------------------------------------------------------------------

A = np.zeros((2, 4), np.int8)
W = np.zeros((4, 3), np.int8)
W_BAD = W.copy()
W_BAD[2, 1] = -128
OK = dict(a_zero_point=0, bias=0, multiplier=1 << 30, shift=0, out_zero_point=0)
_I32 = r"\[-2147483648, 2147483647\]"


@pytest.mark.parametrize("call, exc, message", [
    (lambda: qgemm(A, W_BAD, **OK), ValueError,
     r"^w must be symmetric int8 in \[-127, 127\], found -128$"),
    (lambda: qgemm(A.astype(np.uint8), W, **OK), TypeError,
     r"^a must be an int8 NumPy array, not uint8$"),
    (lambda: qgemm(A, W.tolist(), **OK), TypeError, r"^w must be an int8 NumPy array, not list$"),
    (lambda: qgemm(A[0], W, **OK), ValueError, r"^a must be a 2-D array \(M, K\), not shape \(4,\)$"),
    (lambda: qgemm(A, W[None], **OK), ValueError,
     r"^w must be a 2-D array \(K, N\), not shape \(1, 4, 3\)$"),
    (lambda: qgemm(A, W[:3], **OK), ValueError,
     r"^w must have 4 rows to match the columns of a, not shape \(3, 3\)$"),
    (lambda: qgemm(A, W, **{**OK, "a_zero_point": 128}), ValueError,
     r"^a_zero_point must be in \[-128, 127\], found 128$"),
    (lambda: qgemm(A, W, **{**OK, "a_zero_point": np.int8(3).astype(float)}), TypeError,
     r"^a_zero_point must be an integer, not np\.float64\(3\.0\)$"),
    (lambda: qgemm(A, W, **{**OK, "bias": [1, 2, 3, 4]}), ValueError,
     r"^bias must be a scalar or have shape \(3,\), not \(4,\)$"),
    (lambda: qgemm(A, W, **{**OK, "bias": [0, 1 << 31, 0]}), ValueError,
     rf"^bias must be int32 in {_I32}, found 2147483648$"),
    (lambda: qgemm(A, W, **{**OK, "multiplier": [1, -1, 1]}), ValueError,
     r"^multiplier must be in \[0, 2147483647\], found -1$"),
    (lambda: qgemm(A, W, **{**OK, "shift": 31}), ValueError,
     r"^shift must be in \[-31, 30\], found 31$"),
    (lambda: qgemm(A, W, **{**OK, "shift": np.zeros((3, 1), int)}), ValueError,
     r"^shift must be a scalar or have shape \(3,\), not \(3, 1\)$"),
    (lambda: qgemm(A, W, **{**OK, "out_zero_point": 200}), ValueError,
     r"^out_zero_point must be in \[-128, 127\], found 200$"),
    (lambda: qgemm(A, W, **OK, out_max=128), ValueError,
     r"^out_max must be in \[-128, 127\], found 128$"),
    (lambda: qgemm(A, W, **OK, out_min=5, out_max=4), ValueError,
     r"^out_min must not exceed out_max, not out_min=5, out_max=4$"),
    (lambda: qgemm(A, W, **OK, acc_bits=15), ValueError, r"^acc_bits must be in \[16, 64\], found 15$"),
    (lambda: qgemm(A, W, **OK, acc_bits=33), ValueError,
     r"^acc_bits must be at most 32 for output='int8', not 33$"),
    (lambda: qgemm(A, W, **OK, output="int16"), ValueError,
     r"^output must be 'int8' or 'int32', not 'int16'$"),
    (lambda: matmul_integer(A.astype(float), W), TypeError, r"^a must be an integer array, not float64$"),
    (lambda: matmul_integer(A, W.astype(np.int64)), TypeError,
     r"^b must have an integer dtype of at most 32 bits, not int64$"),
    (lambda: matmul_integer(A, W[None]), ValueError,
     r"^b must be a 2-D array \(K, N\), not shape \(1, 4, 3\)$"),
    (lambda: matmul_integer(A, W.T), ValueError,
     r"^b must have 4 rows to match the columns of a, not shape \(3, 4\)$"),
    (lambda: matmul_integer(A.astype(np.uint8), W, -1), ValueError,
     r"^a_zero_point must be uint8 in \[0, 255\], found -1$"),
    (lambda: matmul_integer(A, W, [1, 2, 3]), ValueError,
     r"^a_zero_point must be a scalar or have shape \(2,\) \(one per row of a\), not \(3,\)$"),
    (lambda: matmul_integer(A, W, 0, [1, 2]), ValueError,
     r"^b_zero_point must be a scalar or have shape \(3,\) \(one per column of b\), not \(2,\)$"),
    (lambda: matmul_integer(A, W, acc_bits=65), ValueError, r"^acc_bits must be in \[2, 64\], found 65$"),
    (lambda: matmul_integer(A, W, acc_bits=32.0), TypeError, r"^acc_bits must be an integer, not 32\.0$"),
])
def test_gemm_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
