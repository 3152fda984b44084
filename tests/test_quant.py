"""Tests of npugen.golden.quant: affine quantization and the integer requantizer."""

from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto

from onnx_ref import onnx_run
from npugen.golden.quant import (
    INT32_MAX,
    INT32_MIN,
    choose_qparams,
    dequantize,
    multiply_by_quantized_multiplier,
    quantize,
    quantize_multiplier,
    requantize,
    requantize_float,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

SEED_BASE = 0x5EED_0000
SEEDS = [SEED_BASE + i for i in range(3)]

srdhm = saturating_rounding_doubling_high_mul
rdbpot = rounding_divide_by_pot
mbqm = multiply_by_quantized_multiplier

EXTREMES = [INT32_MIN, INT32_MIN + 1, -(1 << 30) - 1, -(1 << 30), -(1 << 30) + 1,
            -(1 << 15), -3, -2, -1, 0, 1, 2, 3, 1 << 15, (1 << 30) - 1, 1 << 30,
            (1 << 30) + 1, INT32_MAX - 1, INT32_MAX]


# -- independent pure-Python models -------------------------------------------------


def c_div(n, d):
    """C++ integer division: the quotient truncated toward zero."""
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d > 0) else -q


def ref_srdhm(a, b):
    """Transliteration of gemmlowp's reference SaturatingRoundingDoublingHighMul."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def ref_rdbpot(x, exponent):
    """x / 2**exponent rounded half away from zero, from the definition."""
    q, r = divmod(abs(x), 1 << exponent)
    q += 2 * r >= (1 << exponent) and exponent > 0
    return q if x >= 0 else -q


def ref_wrap32(x):
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def ref_mbqm(x, m0, shift):
    left, right = max(shift, 0), max(-shift, 0)
    return ref_rdbpot(ref_srdhm(ref_wrap32(x << left), m0), right)


def random_int32(rng, n):
    """int32 values mixing the full range, small magnitudes and powers of two +-1."""
    full = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    small = rng.integers(-1000, 1000, n, endpoint=True)
    pot = (1 << rng.integers(0, 31, n)) * rng.choice([-1, 1], n) + rng.integers(-1, 2, n)
    pick = rng.integers(0, 3, n)
    return np.clip(np.choose(pick, [full, small, pot]), INT32_MIN, INT32_MAX)


# -- quantize_multiplier ------------------------------------------------------------

MULTIPLIER_TABLE = [
    (0.0, 0, 0),
    (1.0, 1 << 30, 1),
    (0.5, 1 << 30, 0),
    (0.25, 1 << 30, -1),
    (0.75, 3 << 29, 0),
    (2.0 ** -7, 1 << 30, -6),
    (1 / 3, 1431655765, -1),            # 2/3 * 2**31 = 1431655765.33
    (0.1, 1717986918, -3),              # 0.8 * 2**31 = 1717986918.4
    (0.5 + 2.0 ** -32, (1 << 30) + 1, 0),   # mantissa tie 2**30 + 0.5 rounds away from zero
    (0.5 + 2.0 ** -33, 1 << 30, 0),     # 2**30 + 0.25 rounds down
    (1 - 2.0 ** -31, INT32_MAX, 0),     # largest mantissa that does not carry
    (1 - 2.0 ** -32, 1 << 30, 1),       # tie 2**31 - 0.5 rounds up to 2**31: carry
    (1 - 2.0 ** -40, 1 << 30, 1),       # rounds up to 2**31: carry
    (2.0 ** -31, 1 << 30, -30),
    (2.0 ** -32, 1 << 30, -31),         # smallest power of two accepted
    (2.0 ** -32 * (1 - 2.0 ** -40), 1 << 30, -31),  # frexp gives -32, the carry saves it
    (2.0 ** 29, 1 << 30, 30),           # largest power of two accepted
    (3.0, 3 << 29, 2),
]


@pytest.mark.parametrize("real, m0, shift", MULTIPLIER_TABLE,
                         ids=[repr(r) for r, _, _ in MULTIPLIER_TABLE])
def test_quantize_multiplier_table(real, m0, shift):
    assert quantize_multiplier(real) == (m0, shift)
    got = quantize_multiplier(np.float64(real))
    assert got == (m0, shift) and all(type(v) is int for v in got)


def test_quantize_multiplier_vectorised_matches_scalar():
    reals = np.array([r for r, _, _ in MULTIPLIER_TABLE])
    m0, shift = quantize_multiplier(reals)
    assert m0.dtype == np.int32 and shift.dtype == np.int32
    np.testing.assert_array_equal(m0, [m for _, m, _ in MULTIPLIER_TABLE])
    np.testing.assert_array_equal(shift, [s for _, _, s in MULTIPLIER_TABLE])
    m0, shift = quantize_multiplier(reals.reshape(2, -1))
    assert m0.shape == shift.shape == (2, len(MULTIPLIER_TABLE) // 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_multiplier_round_trip(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    reals = np.exp2(rng.uniform(-32, 29.99, 2000))
    m0, shift = quantize_multiplier(reals)
    assert ((m0 >= 1 << 30) & (m0.astype(np.int64) < 1 << 31)).all()
    for real, m, s in zip(reals.tolist(), m0.tolist(), shift.tolist()):
        represented = Fraction(m) * Fraction(2) ** (s - 31)
        # Half a unit in the last place of a 31-bit mantissa.
        assert abs(represented - Fraction(real)) <= Fraction(2) ** (s - 32)
        assert quantize_multiplier(real) == (m, s)
    # A float32 mantissa has 24 bits, so float32 multipliers are represented exactly.
    reals32 = reals.astype(np.float32)
    m0, shift = quantize_multiplier(reals32)
    for real, m, s in zip(reals32.tolist(), m0.tolist(), shift.tolist()):
        assert Fraction(m) * Fraction(2) ** (s - 31) == Fraction(real)


@pytest.mark.parametrize("real, message", [
    (-0.5, r"^real multiplier must be finite and non-negative, found -0\.5$"),
    (float("nan"), r"^real multiplier must be finite and non-negative, found nan$"),
    (float("inf"), r"^real multiplier must be finite and non-negative, found inf$"),
    ([0.5, -2.0], r"^real multiplier must be finite and non-negative, found -2\.0$"),
    (2.0 ** -33, r"^real multiplier 1\.1641532182693481e-10 needs shift -32, "
                 r"outside the supported range \[-31, 30\]$"),
    (2.0 ** 30, r"^real multiplier 1073741824\.0 needs shift 31, "
                r"outside the supported range \[-31, 30\]$"),
    ([0.5, 2.0 ** 31], r"^real multiplier 2147483648\.0 needs shift 32, "
                       r"outside the supported range \[-31, 30\]$"),
])
def test_quantize_multiplier_rejects(real, message):
    with pytest.raises(ValueError, match=message):
        quantize_multiplier(real)


def test_quantize_multiplier_rejects_non_numbers():
    with pytest.raises(TypeError, match=r"^real multiplier must hold real numbers, not <U3 values$"):
        quantize_multiplier("0.5")


# -- SRDHM, RDBPOT and MultiplyByQuantizedMultiplier against the pure-Python model ---


def test_srdhm_extremes():
    a, b = np.meshgrid(EXTREMES, EXTREMES)
    got = srdhm(a, b)
    assert got.dtype == np.int32
    expect = [[ref_srdhm(x, y) for x, y in zip(ra, rb)] for ra, rb in zip(a.tolist(), b.tolist())]
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("seed", SEEDS)
def test_srdhm_random(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a, b = random_int32(rng, 20000), random_int32(rng, 20000)
    got = srdhm(a, b)
    np.testing.assert_array_equal(got, [ref_srdhm(x, y) for x, y in zip(a.tolist(), b.tolist())])
    # Hardware form: add 2**30 and shift right arithmetically by 31 (the C++ truncating
    # division with the sign-dependent nudge is the same function), except saturation.
    saturated = (a == INT32_MIN) & (b == INT32_MIN)
    np.testing.assert_array_equal(got, np.where(saturated, INT32_MAX, (a * b + (1 << 30)) >> 31))


def test_rdbpot_extremes():
    x, e = np.meshgrid(EXTREMES, np.arange(32))
    got = rdbpot(x, e)
    assert got.dtype == np.int32
    expect = [[ref_rdbpot(v, k) for v, k in zip(rx, re)] for rx, re in zip(x.tolist(), e.tolist())]
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("seed", SEEDS)
def test_rdbpot_random(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x, e = random_int32(rng, 20000), rng.integers(0, 32, 20000)
    got = rdbpot(x, e)
    np.testing.assert_array_equal(got, [ref_rdbpot(v, k) for v, k in zip(x.tolist(), e.tolist())])
    # Hardware form: add half minus one for negative x, shift right arithmetically
    # (33-bit sum); exponent 0 is the identity.
    half = np.where(e > 0, 1 << np.maximum(e - 1, 0), 0)
    np.testing.assert_array_equal(got, (x + half - ((x < 0) & (e > 0))) >> e)


def test_mbqm_extremes():
    m0s = [INT32_MIN, -1, 0, 1, 1 << 30, (1 << 30) + 1, 1717986918, INT32_MAX]
    x, m, s = np.meshgrid(EXTREMES, m0s, np.arange(-31, 31), indexing="ij")
    got = mbqm(x, m, s)
    expect = np.vectorize(ref_mbqm, otypes=[np.int64])(x, m, s)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("seed", SEEDS)
def test_mbqm_random_per_channel(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = random_int32(rng, 64 * 48).reshape(64, 48)
    m0, shift = quantize_multiplier(np.exp2(rng.uniform(-32, 2, 48)))
    got = mbqm(x, m0, shift)
    assert got.shape == (64, 48)
    expect = [[ref_mbqm(v, m, s) for v, m, s in zip(row, m0.tolist(), shift.tolist())]
              for row in x.tolist()]
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("seed", SEEDS)
def test_requantize_random(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    acc = random_int32(rng, 32 * 16).reshape(32, 16)
    bias = random_int32(rng, 16)
    m0, shift = quantize_multiplier(np.exp2(rng.uniform(-20, 0, 16)))
    zp = int(rng.integers(-128, 128))
    got = requantize(acc, m0, shift, bias=bias, out_zero_point=zp)
    assert got.dtype == np.int32
    expect = [[min(max(ref_mbqm(ref_wrap32(v + b), m, s) + zp, -128), 127)
               for v, b, m, s in zip(row, bias.tolist(), m0.tolist(), shift.tolist())]
              for row in acc.tolist()]
    np.testing.assert_array_equal(got, expect)


# -- the six tie cases -------------------------------------------------------------

TIE_EXPONENTS = np.array([1, 2, 5, 16, 31])

TIE_CASES = [
    # 1. SRDHM nudge, product exactly +0.5 ulp of the high word: rounds up.
    pytest.param(lambda: srdhm([1, 3, 5, INT32_MAX, 1 << 15], [1 << 30] * 4 + [1 << 15]),
                 [1, 2, 3, 1 << 30, 1],
                 id="tie1-srdhm-nudge-positive-rounds-up"),
    # 2. SRDHM nudge, product exactly -0.5 ulp: the 1 - 2**30 nudge and the truncating
    #    division round toward +infinity, i.e. toward zero (-0.5 -> 0, -2.5 -> -2).
    pytest.param(lambda: srdhm([-1, -3, -5, INT32_MIN + 1, -(1 << 15)], [1 << 30] * 4 + [1 << 15]),
                 [0, -1, -2, -(1 << 30) + 1, 0],
                 id="tie2-srdhm-nudge-negative-rounds-toward-zero"),
    # 3. RoundingDivideByPOT, remainder exactly half: rounds away from zero (up).
    pytest.param(lambda: rdbpot(np.concatenate([1 << (TIE_EXPONENTS - 1),
                                                3 << (TIE_EXPONENTS[:-1] - 1),
                                                5 << (TIE_EXPONENTS[:-1] - 1)]),
                                np.concatenate([TIE_EXPONENTS, TIE_EXPONENTS[:-1],
                                                TIE_EXPONENTS[:-1]])),
                 [1] * 5 + [2] * 4 + [3] * 4,
                 id="tie3-rdbpot-positive-rounds-away-from-zero"),
    # 4. RoundingDivideByPOT, negative remainder exactly half: away from zero (down).
    pytest.param(lambda: rdbpot(np.concatenate([-(1 << (TIE_EXPONENTS - 1)),
                                                -(3 << (TIE_EXPONENTS[:-1] - 1)),
                                                -(5 << (TIE_EXPONENTS[:-1] - 1))]),
                                np.concatenate([TIE_EXPONENTS, TIE_EXPONENTS[:-1],
                                                TIE_EXPONENTS[:-1]])),
                 [-1] * 5 + [-2] * 4 + [-3] * 4,
                 id="tie4-rdbpot-negative-rounds-away-from-zero"),
    # 5. Exponent 0 (shift >= 0): RoundingDivideByPOT is the identity, so a positive
    #    half is decided by SRDHM alone (x * 0.5 with x odd rounds up).
    pytest.param(lambda: np.concatenate([rdbpot([1, 3, (1 << 30) + 1, INT32_MAX], 0),
                                         mbqm([1, 3, 5, INT32_MAX], 1 << 30, 0)]),
                 [1, 3, (1 << 30) + 1, INT32_MAX, 1, 2, 3, 1 << 30],
                 id="tie5-exponent0-positive-no-second-rounding"),
    # 6. Exponent 0, negative: identity again; the SRDHM rule (toward zero) stands.
    pytest.param(lambda: np.concatenate([rdbpot([-1, -3, -(1 << 30) - 1, INT32_MIN], 0),
                                         mbqm([-1, -3, -5, INT32_MIN + 1], 1 << 30, 0)]),
                 [-1, -3, -(1 << 30) - 1, INT32_MIN, 0, -1, -2, -(1 << 30) + 1],
                 id="tie6-exponent0-negative-no-second-rounding"),
]


@pytest.mark.parametrize("compute, expected", TIE_CASES)
def test_tie_case(compute, expected):
    np.testing.assert_array_equal(compute(), expected)


@pytest.mark.parametrize("x, m0, shift, expected, exact", [
    # SRDHM rounds 3.5 up to 4, which RDBPOT then sees as the tie 4/8 -> 1.
    pytest.param(7, 1 << 30, -3, 1, Fraction(7, 16), id="double-rounding-positive"),
    # 10 * 0.375 = 3.75 -> SRDHM -4 (negated), RDBPOT ties -4/8 -> -1.
    pytest.param(-10, 3 << 28, -3, -1, Fraction(-15, 32), id="double-rounding-negative"),
])
def test_double_rounding(x, m0, shift, expected, exact):
    assert mbqm(x, m0, shift) == expected
    assert round(exact) == 0  # the single-rounding result differs by one
    assert requantize_float(x, float(exact / x), out_min=-10, out_max=10) == 0


def test_requantize_ties_go_through_unchanged_by_zero_point():
    # The zero point is added after rounding: ties do not depend on its parity.
    acc = np.array([1, 3, -1, -3, 4, 12, -4, -12])
    m0 = np.array([1 << 30] * 4 + [1 << 30] * 4)
    shift = np.array([0] * 4 + [-2] * 4)    # 0.5 and 0.125
    for zp in (0, 1, -7):
        got = requantize(acc, m0, shift, out_zero_point=zp)
        np.testing.assert_array_equal(got - zp, [1, 2, 0, -1, 1, 2, -1, -2])


def test_requantize_float_ties_to_even_after_zero_point():
    acc = np.array([1, 3, 5, -1, -3, -5])
    np.testing.assert_array_equal(requantize_float(acc, 0.5), [0, 2, 2, 0, -2, -2])
    # An odd zero point shifts the parity: round_half_even(v + 1).
    np.testing.assert_array_equal(requantize_float(acc, 0.5, out_zero_point=1), [2, 2, 4, 0, 0, -2])


# -- saturation and wrap ----------------------------------------------------------


def test_srdhm_saturates_only_min_times_min():
    assert srdhm(INT32_MIN, INT32_MIN) == INT32_MAX
    assert srdhm(INT32_MIN, INT32_MAX) == -INT32_MAX
    assert srdhm(INT32_MAX, INT32_MIN) == -INT32_MAX
    assert srdhm(INT32_MAX, INT32_MAX) == INT32_MAX - 1
    assert mbqm(INT32_MIN, INT32_MIN, 0) == INT32_MAX


def test_requantize_clamps_to_both_rails():
    acc = np.array([INT32_MIN, -100000, -1000, 0, 800, 100000, INT32_MAX])
    got = requantize(acc, 1 << 30, -2, out_zero_point=5)    # x / 8 + 5
    np.testing.assert_array_equal(got, [-128, -128, -120, 5, 105, 127, 127])
    got = requantize(acc, 1 << 30, -2, out_zero_point=5, out_min=-20, out_max=30)
    np.testing.assert_array_equal(got, [-20, -20, -20, 5, 30, 30, 30])


def test_requantize_relu_clamps_at_zero_point():
    acc = np.array([-1000, -9, -8, -4, 0, 4, 8, 1000])
    got = requantize(acc, 1 << 30, -2, out_zero_point=-3, out_min=-3)
    np.testing.assert_array_equal(got, [-3, -3, -3, -3, -3, -2, -2, 122])


def test_requantize_zero_point_does_not_wrap():
    # MBQM gives INT32_MAX - 1; adding 100 must clamp to INT32_MAX, not wrap negative.
    got = requantize(INT32_MAX, INT32_MAX, 0, out_zero_point=100,
                     out_min=INT32_MIN, out_max=INT32_MAX)
    assert got == INT32_MAX
    got = requantize(INT32_MIN, INT32_MAX, 0, out_zero_point=-100,
                     out_min=INT32_MIN, out_max=INT32_MAX)
    assert got == INT32_MIN


def test_requantize_bias_addition_wraps_at_int32():
    wide = dict(out_min=INT32_MIN, out_max=INT32_MAX)
    assert requantize(INT32_MAX, 1 << 30, 0, bias=1, **wide) == -(1 << 30)
    assert requantize(INT32_MIN, 1 << 30, 0, bias=-2, **wide) == (1 << 30) - 1
    assert requantize_float(INT32_MAX, 0.5, bias=1, **wide) == -(1 << 30)


def test_mbqm_left_shift_wraps_at_int32():
    assert mbqm(1 << 30, 1 << 30, 1) == -(1 << 30)       # 2**31 wraps to INT32_MIN
    assert mbqm(3, 1 << 30, 30) == -(1 << 29)            # 3 * 2**30 wraps to -2**30
    assert mbqm(-(1 << 30), 1 << 30, 1) == -(1 << 30)    # INT32_MIN exactly: no wrap


def test_scalar_inputs_give_scalars():
    assert isinstance(srdhm(3, 1 << 30), np.int32)
    assert isinstance(requantize(3, 1 << 30, 0), np.int32)
    assert requantize([3], 1 << 30, 0).shape == (1,)


# -- requantization errors ----------------------------------------------------------

_I32 = r"\[-2147483648, 2147483647\]"


@pytest.mark.parametrize("call, exc, message", [
    (lambda: srdhm(1 << 31, 1), ValueError, rf"^a must be int32 in {_I32}, found 2147483648$"),
    (lambda: srdhm(1, [0, INT32_MIN - 1]), ValueError,
     rf"^b must be int32 in {_I32}, found -2147483649$"),
    (lambda: srdhm(1, 2 ** 70), ValueError, rf"^b must be int32 in {_I32}, found {2 ** 70}$"),
    (lambda: srdhm(1.0, 1), TypeError, r"^a must hold integers, not float64 values$"),
    (lambda: srdhm(True, 1), TypeError, r"^a must hold integers, not bool values$"),
    (lambda: srdhm([1, 2], [1, 2, 3]), ValueError,
     r"^b of shape \(3,\) does not broadcast against a of shape \(2,\)$"),
    (lambda: rdbpot(5, 32), ValueError, r"^exponent must be in \[0, 31\], found 32$"),
    (lambda: rdbpot(5, -1), ValueError, r"^exponent must be in \[0, 31\], found -1$"),
    (lambda: mbqm(5, 1 << 30, 31), ValueError, r"^shift must be in \[-31, 30\], found 31$"),
    (lambda: mbqm(5, 1 << 30, [0, -32]), ValueError, r"^shift must be in \[-31, 30\], found -32$"),
    (lambda: mbqm(5, 1 << 31, 0), ValueError, rf"^m0 must be int32 in {_I32}, found 2147483648$"),
    (lambda: requantize(5, -1, 0), ValueError, r"^m0 must be in \[0, 2147483647\], found -1$"),
    (lambda: requantize(1 << 31, 1, 0), ValueError,
     rf"^acc must be int32 in {_I32}, found 2147483648$"),
    (lambda: requantize(5, 1, 0, bias=-(1 << 31) - 1), ValueError,
     rf"^bias must be int32 in {_I32}, found -2147483649$"),
    (lambda: requantize(np.zeros((2, 4), int), 1, 0, bias=[1, 2, 3]), ValueError,
     r"^bias of shape \(3,\) does not broadcast against acc of shape \(2, 4\)$"),
    (lambda: requantize(np.zeros((2, 4), int), [1, 2], 0), ValueError,
     r"^m0 of shape \(2,\) does not broadcast against acc of shape \(2, 4\)$"),
    (lambda: requantize(5, 1, 0, out_min=10, out_max=-10), ValueError,
     r"^out_min must not exceed out_max, not out_min=10, out_max=-10$"),
    (lambda: requantize(5, 1, 0, out_max=1 << 31), ValueError,
     r"^out_max must be in \[-2147483648, 2147483647\], found 2147483648$"),
    (lambda: requantize(5, 1, 0, out_zero_point=1.5), TypeError,
     r"^out_zero_point must be an integer, not 1\.5$"),
    (lambda: requantize(5, 1, 0, out_min=np.array([-1])), TypeError,
     r"^out_min must be an integer, not array\(\[-1\]\)$"),
    (lambda: requantize_float(5, -0.25), ValueError,
     r"^real_multiplier must be finite and non-negative, found -0\.25$"),
    (lambda: requantize_float(5, [0.5, float("nan")]), ValueError,
     r"^real_multiplier must be finite and non-negative, found nan$"),
    (lambda: requantize_float(5, 0.5, out_min=3, out_max=2), ValueError,
     r"^out_min must not exceed out_max, not out_min=3, out_max=2$"),
])
def test_requantizer_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# -- affine quantization ------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_asymmetric_qparams_represent_zero_exactly(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    for lo, hi in [(-3.0, 5.0), (0.5, 9.0), (-7.0, -0.25), (-1e-3, 2e-3)]:
        x = rng.uniform(lo, hi, (16, 8)).astype(np.float32)
        scale, zp = choose_qparams(x, symmetric=False)
        assert scale.shape == zp.shape == () and scale.dtype == np.float32
        assert zp.dtype == np.int32 and -128 <= zp <= 127
        assert quantize(np.float32(0), scale, zp) == zp
        assert dequantize(zp, scale, zp) == 0
        q = quantize(x, scale, zp)
        assert q.dtype == np.int8
        assert np.abs(dequantize(q, scale, zp) - x).max() <= scale * 0.5001
    # One-signed data puts the zero point at a rail.
    assert choose_qparams(np.array([0.5, 2.0]), symmetric=False)[1] == -128
    assert choose_qparams(np.array([-0.5, -2.0]), symmetric=False)[1] == 127
    scale, zp = choose_qparams(np.array([0.0, 25.5]), symmetric=False, qmin=0, qmax=255)
    assert (scale, zp) == (np.float32(0.1), 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_symmetric_qparams_per_channel(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (24, 10)).astype(np.float32) * rng.uniform(0.01, 4, 10).astype(np.float32)
    scale, zp = choose_qparams(w, symmetric=True, axis=1)
    assert scale.shape == zp.shape == (10,) and not zp.any()
    np.testing.assert_array_equal(scale, (np.abs(w).max(axis=0) / 127).astype(np.float32))
    q = quantize(w, scale, zp, qmin=-127, axis=1)
    assert q.min() >= -127 and q.max() <= 127 and (np.abs(q).max(axis=0) == 127).all()
    for c in range(10):
        s, z = choose_qparams(w[:, c], symmetric=True)
        assert (s, z) == (scale[c], zp[c])
    s_neg, _ = choose_qparams(w, symmetric=True, axis=-1)
    np.testing.assert_array_equal(s_neg, scale)


def test_degenerate_ranges_are_safe():
    scale, zp = choose_qparams(np.zeros((3, 4)), symmetric=False)
    assert (scale, zp) == (1.0, 0)
    scale, zp = choose_qparams(np.zeros(5), symmetric=False, qmin=0, qmax=255)
    assert (scale, zp) == (1.0, 0)
    w = np.zeros((4, 3), np.float32)
    w[:, 1] = [0.5, -1.0, 0.25, 0.0]
    scale, zp = choose_qparams(w, symmetric=True, axis=1)
    np.testing.assert_array_equal(scale, np.array([1.0, 1.0 / 127, 1.0], np.float32))
    np.testing.assert_array_equal(quantize(w, scale, zp, axis=1)[:, 0], 0)
    tiny = choose_qparams(np.array([0.0, 1e-44]), symmetric=False)[0]
    assert tiny == np.finfo(np.float32).tiny


@pytest.mark.parametrize("seed", SEEDS)
def test_quantize_dequantize_match_onnx(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (6, 5)).astype(np.float32)
    # Exact halves of the scale exercise round-half-to-even.
    x[0] = np.array([0.25, 0.75, -0.25, -0.75, 1.25], np.float32)
    scale, zp = choose_qparams(x, symmetric=False)
    for s, z in [(scale, zp), (np.float32(0.5), np.int32(3))]:
        onnx_q = onnx_run("QuantizeLinear", {"x": x, "s": np.asarray(s, np.float32),
                                              "z": np.asarray(z, np.int8)}, TensorProto.INT8)
        q = quantize(x, s, z)
        np.testing.assert_array_equal(q, onnx_q)
        onnx_x = onnx_run("DequantizeLinear", {"q": q, "s": np.asarray(s, np.float32),
                                                "z": np.asarray(z, np.int8)}, TensorProto.FLOAT)
        np.testing.assert_array_equal(dequantize(q, s, z), onnx_x)
    np.testing.assert_array_equal(quantize(x[0], np.float32(0.5), 0), [0, 2, 0, -2, 2])
    scale, zp = choose_qparams(x, symmetric=False, axis=0, qmin=0, qmax=255)
    onnx_q = onnx_run("QuantizeLinear", {"x": x, "s": scale, "z": zp.astype(np.uint8)},
                       TensorProto.UINT8, axis=0)
    q = quantize(x, scale, zp, qmin=0, qmax=255, axis=0)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, onnx_q)
    onnx_x = onnx_run("DequantizeLinear", {"q": q, "s": scale, "z": zp.astype(np.uint8)},
                       TensorProto.FLOAT, axis=0)
    np.testing.assert_array_equal(dequantize(q, scale, zp, axis=0), onnx_x)


def test_quantize_saturates():
    q = quantize(np.array([-1e30, -1000.0, 1000.0, 1e30]), 0.5, -3)
    np.testing.assert_array_equal(q, [-128, -128, 127, 127])
    assert quantize([1e6], 1.0, 0, qmin=-(1 << 20), qmax=1 << 20).dtype == np.int32


@pytest.mark.parametrize("call, exc, message", [
    (lambda: choose_qparams([1.0], symmetric=True, qmin=-128), ValueError,
     r"^symmetric quantization needs qmin == -qmax, not qmin=-128, qmax=127$"),
    (lambda: choose_qparams([1.0], symmetric=False, qmin=5, qmax=5), ValueError,
     r"^qmin must be less than qmax, not qmin=5, qmax=5$"),
    (lambda: choose_qparams([1.0, float("nan")], symmetric=False), ValueError,
     r"^x must be finite to choose quantization parameters$"),
    (lambda: choose_qparams([], symmetric=False), ValueError, r"^x must not be empty$"),
    (lambda: choose_qparams(np.ones((2, 3)), symmetric=True, axis=2), ValueError,
     r"^axis must be in \[-2, 1\] for a 2-D array, found 2$"),
    (lambda: choose_qparams([1.0], symmetric=1), TypeError, r"^symmetric must be a bool, not 1$"),
    (lambda: choose_qparams(["a"], symmetric=True), TypeError,
     r"^x must hold real numbers, not <U1 values$"),
    (lambda: quantize([1.0], 0.0, 0), ValueError, r"^scale must be finite and positive, found 0\.0$"),
    (lambda: quantize([1.0], -1.0, 0), ValueError, r"^scale must be finite and positive, found -1\.0$"),
    (lambda: quantize([1.0], 1.0, 128), ValueError, r"^zero_point must be in \[-128, 127\], found 128$"),
    (lambda: quantize([float("inf")], 1.0, 0), ValueError, r"^x must be finite$"),
    (lambda: quantize(np.ones((2, 3)), [1.0, 1.0], 0), ValueError,
     r"^scale must be a scalar when axis is None, not an array of shape \(2,\)$"),
    (lambda: quantize(np.ones((2, 3)), [1.0, 1.0], [0, 0], axis=1), ValueError,
     r"^scale must have shape \(3,\) to match axis 1 of x, not \(2,\)$"),
    (lambda: quantize(np.ones((2, 3)), [1.0, 1.0], 0, axis=0), ValueError,
     r"^zero_point must have shape \(2,\) to match axis 0 of x, not \(\)$"),
    (lambda: dequantize([1.5], 1.0, 0), TypeError, r"^q must hold integers, not float64 values$"),
    (lambda: dequantize([1], float("inf"), 0), ValueError,
     r"^scale must be finite and positive, found inf$"),
])
def test_affine_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
