"""The floating-point golden model: exact reference, BF16 helpers, fixed-order accumulation.

The exact reference (Python integers) is checked against ml_dtypes (BF16) and NumPy
(float16, float32) on the TestFloat-style pattern crossings and random pairs, and on
hand-computed cases for what those libraries cannot show (canonical NaN, ``ftz``).
Random tests print their seed.
"""

import re
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from npugen.golden.floating import (BFLOAT16, FLOAT16, FLOAT32, FORMATS, TENSORFLOAT32, FloatFormat,
                                    add, add_array, bf16_from_bits, bf16_mul, bf16_product_fp32,
                                    bf16_to_bits, decode, fp32_accumulate, fp32_from_bits,
                                    fp32_to_bf16_bits, fp32_to_bits, from_fraction, mul, mul_array,
                                    pattern_values, random_operands, round_exact, special_values,
                                    to_fraction)


# -- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"exp_bits": 1, "man_bits": 7}, "exp_bits must be an integer in 2..15, not 1"),
    ({"exp_bits": 16, "man_bits": 7}, "exp_bits must be an integer in 2..15, not 16"),
    ({"exp_bits": 8.0, "man_bits": 7}, "exp_bits must be an integer in 2..15, not 8.0"),
    ({"exp_bits": True, "man_bits": 7}, "exp_bits must be an integer in 2..15, not True"),
    ({"exp_bits": 8, "man_bits": 0}, "man_bits must be an integer in 1..52, not 0"),
    ({"exp_bits": 8, "man_bits": 53}, "man_bits must be an integer in 1..52, not 53"),
])
def test_format_rejects(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FloatFormat(**kwargs)


def test_format_name_type():
    with pytest.raises(TypeError, match=r"^name must be a string, not 3$"):
        FloatFormat(8, 7, 3)


@pytest.mark.parametrize("fmt, width, bias, nan, inf, max_normal, one", [
    (BFLOAT16, 16, 127, 0x7FC0, 0x7F80, 0x7F7F, 0x3F80),
    (FLOAT16, 16, 15, 0x7E00, 0x7C00, 0x7BFF, 0x3C00),
    (TENSORFLOAT32, 19, 127, 0x3FE00, 0x3FC00, 0x3FBFF, 0x1FC00),
    (FLOAT32, 32, 127, 0x7FC00000, 0x7F800000, 0x7F7FFFFF, 0x3F800000),
])
def test_named_formats(fmt, width, bias, nan, inf, max_normal, one):
    assert (fmt.width, fmt.bias, fmt.quiet_nan, fmt.infinity(), fmt.max_normal(), fmt.one()) == \
        (width, bias, nan, inf, max_normal, one)
    assert fmt.infinity(1) == inf | (1 << (width - 1))
    assert FORMATS[fmt.name] is fmt
    assert to_fraction(fmt, fmt.min_subnormal()) == Fraction(2) ** (fmt.emin - fmt.man_bits)


def test_decode_ftz_flushes_subnormals_only():
    d = decode(BFLOAT16, 0x8001, "ftz")
    assert (d.kind, d.sign, d.sig) == ("finite", 1, 0)
    assert decode(BFLOAT16, 0x8001, "ieee").sig == 1
    assert decode(BFLOAT16, 0x0080, "ftz").sig == 0x80
    assert decode(BFLOAT16, 0x7F81, "ftz").kind == "nan"


# -- operand sets ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=str)
def test_operand_sets(fmt):
    specials = special_values(fmt)
    patterns = pattern_values(fmt)
    assert set(specials) <= set(patterns)
    assert len(patterns) ** 2 >= 46_464
    classes = {fmt.zero(), fmt.zero(1), fmt.min_subnormal(), fmt.max_subnormal(1), fmt.min_normal(),
               fmt.max_normal(1), fmt.one(1), fmt.infinity(), fmt.infinity(1), fmt.quiet_nan}
    assert classes <= set(specials)
    assert any(fmt.is_nan(v) and v != fmt.quiet_nan for v in specials)
    assert len(set(patterns)) == len(patterns)


def test_random_operands_cover_regimes():
    seed = 0xF10A7
    print(f"seed={seed}")
    a, b = random_operands(BFLOAT16, 20_000, np.random.default_rng(seed))
    out = mul_array(BFLOAT16, a, b)
    subnormal = np.count_nonzero(((out >> 7) & 0xFF) == 0)
    overflow = np.count_nonzero((out & 0x7FFF) == 0x7F80)
    normal = np.count_nonzero((((out >> 7) & 0xFF) > 0) & (((out >> 7) & 0xFF) < 0xFF))
    assert subnormal > 1000 and overflow > 1000 and normal > 10_000
    with pytest.raises(ValueError, match=r"^op must be 'mul' or 'add', not 'div'$"):
        random_operands(BFLOAT16, 1, np.random.default_rng(0), op="div")


# -- the exact reference against ml_dtypes and NumPy ----------------------------------------


def _library(fmt, op, a, b):
    """Results of ml_dtypes (BF16) or NumPy (fp16, fp32), NaNs made canonical."""
    with np.errstate(all="ignore"):
        if fmt == BFLOAT16:
            x, y = bf16_from_bits(a), bf16_from_bits(b)
            return bf16_to_bits(x * y if op == "mul" else x + y).astype(np.uint64)
        dtype, utype = (np.float16, np.uint16) if fmt == FLOAT16 else (np.float32, np.uint32)
        x, y = np.asarray(a, dtype=utype).view(dtype), np.asarray(b, dtype=utype).view(dtype)
        r = x * y if op == "mul" else x + y
        bits = r.view(utype).astype(np.uint64)
        bits[np.isnan(r)] = fmt.quiet_nan
        return bits


@pytest.mark.parametrize("op", ["mul", "add"])
@pytest.mark.parametrize("fmt", [BFLOAT16, FLOAT16, FLOAT32], ids=str)
def test_exact_reference_matches_libraries(fmt, op):
    seed = {"mul": 101, "add": 202}[op] + fmt.width
    print(f"seed={seed}")
    patterns = np.array(pattern_values(fmt), dtype=np.uint64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(patterns) ** 2, 40_000, replace=False)
    ra, rb = random_operands(fmt, 60_000, rng, op=op)
    a = np.concatenate([patterns[pick // len(patterns)], ra])
    b = np.concatenate([patterns[pick % len(patterns)], rb])
    exact = (mul_array if op == "mul" else add_array)(fmt, a, b).astype(np.uint64)
    bad = np.nonzero(exact != _library(fmt, op, a, b))[0]
    assert len(bad) == 0, [(hex(a[i]), hex(b[i])) for i in bad[:5]]


def test_bf16_mul_helper():
    seed = 303
    print(f"seed={seed}")
    a, b = random_operands(BFLOAT16, 20_000, np.random.default_rng(seed))
    assert np.array_equal(bf16_mul(a, b, "ieee"), mul_array(BFLOAT16, a, b, "ieee"))
    assert np.array_equal(bf16_mul(a, b, "ftz"), mul_array(BFLOAT16, a, b, "ftz"))
    with pytest.raises(ValueError, match=r"^subnormals must be one of 'ieee', 'ftz', not 'daz'$"):
        bf16_mul(a, b, "daz")


# -- hand-computed cases ---------------------------------------------------------------------

BF = BFLOAT16

MUL_CASES = [
    # a, b, ieee, ftz
    (0x3FC0, 0x3F81, 0x3FC2, 0x3FC2),     # 1.5 · (1 + 2⁻⁷): tie, odd → up to even
    (0x3FC0, 0x3F83, 0x3FC4, 0x3FC4),     # 1.5 · (1 + 3·2⁻⁷) = 1.5 + 4.5 ulp: tie, even → down
    (0x3F81, 0x3F81, 0x3F82, 0x3F82),     # (1 + 2⁻⁷)² = 1 + 2⁻⁶ + 2⁻¹⁴: below the tie
    (0x0000, 0x7F80, 0x7FC0, 0x7FC0),     # 0 · ∞
    (0x8001, 0xFF80, 0x7F80, 0x7FC0),     # −subnormal · −∞ = +∞; ftz: −0 · −∞ = NaN
    (0x7FC5, 0x3F80, 0x7FC0, 0x7FC0),     # NaN payload dropped
    (0xFF81, 0x3F80, 0x7FC0, 0x7FC0),     # negative signalling NaN
    (0x7F7F, 0x4000, 0x7F80, 0x7F80),     # overflow → ∞
    (0xFF7F, 0x7F7F, 0xFF80, 0xFF80),     # overflow → −∞
    (0x8000, 0x3F80, 0x8000, 0x8000),     # −0 · 1 = −0
    (0x8000, 0x8000, 0x0000, 0x0000),     # −0 · −0 = +0
    (0x0080, 0x3F00, 0x0040, 0x0000),     # min normal / 2: subnormal, or flushed
    (0x8080, 0x3F00, 0x8040, 0x8000),     # … keeping the sign
    (0x0001, 0x3F00, 0x0000, 0x0000),     # min subnormal / 2: tie → 0 (even)
    (0x0003, 0x3F00, 0x0002, 0x0000),     # 1.5 quanta → 2 (even)
    (0x0001, 0x4B00, 0x0880, 0x0000),     # 2⁻¹³³ · 2²³ = 2⁻¹¹⁰ (normal), or 0 under ftz
    (0x3F7F, 0x0080, 0x0080, 0x0000),     # (1 − 2⁻⁸) · 2⁻¹²⁶: ieee rounds up to min normal
    (0x3F01, 0x00FE, 0x0080, 0x0080),     # below min normal, rounds up to it at full precision
]


@pytest.mark.parametrize("a, b, ieee, ftz", MUL_CASES, ids=[f"{c[0]:04x}x{c[1]:04x}" for c in MUL_CASES])
def test_bf16_mul_cases(a, b, ieee, ftz):
    assert mul(BF, a, b, "ieee") == ieee
    assert mul(BF, a, b, "ftz") == ftz
    assert mul(BF, b, a, "ieee") == ieee and mul(BF, b, a, "ftz") == ftz


ADD_CASES = [
    (0x3F80, 0xBF80, 0x0000, 0x0000),     # x + (−x) = +0
    (0x8000, 0x8000, 0x8000, 0x8000),     # −0 + −0 = −0
    (0x8000, 0x0000, 0x0000, 0x0000),
    (0x7F80, 0xFF80, 0x7FC0, 0x7FC0),     # ∞ − ∞
    (0xFF80, 0x3F80, 0xFF80, 0xFF80),
    (0x7F7F, 0x7F7F, 0x7F80, 0x7F80),     # overflow
    (0x3F80, 0x3B80, 0x3F80, 0x3F80),     # 1 + 2⁻⁸: tie → even (1)
    (0x3F81, 0x3B80, 0x3F82, 0x3F82),     # (1 + 2⁻⁷) + 2⁻⁸: tie → even (up)
    (0x0081, 0x8080, 0x0001, 0x0000),     # difference of normals is subnormal (or flushed)
    (0x0040, 0x0040, 0x0080, 0x0000),     # two subnormals make the min normal; ftz: 0 + 0
    (0x8001, 0x0000, 0x8001, 0x0000),     # ftz: −0 + +0 = +0
    (0x8001, 0x8000, 0x8001, 0x8000),     # ftz: −0 + −0 = −0
]


@pytest.mark.parametrize("a, b, ieee, ftz", ADD_CASES, ids=[f"{c[0]:04x}+{c[1]:04x}" for c in ADD_CASES])
def test_bf16_add_cases(a, b, ieee, ftz):
    assert add(BF, a, b, "ieee") == ieee
    assert add(BF, a, b, "ftz") == ftz
    assert add(BF, b, a, "ieee") == ieee and add(BF, b, a, "ftz") == ftz


def test_round_exact_cases():
    # 0.1 is not dyadic: from_fraction rounds the exact rational.
    assert from_fraction(FLOAT32, Fraction(1, 10)) == 0x3DCCCCCD
    assert from_fraction(BF, Fraction(1, 3)) == 0x3EAB
    assert from_fraction(BF, 0, negative_zero=True) == 0x8000
    assert from_fraction(BF, float("nan")) == 0x7FC0
    assert from_fraction(BF, float("-inf")) == 0xFF80
    # Halfway between the largest normal and 2**128 rounds to ∞; just below does not.
    top = Fraction(2) ** 128
    assert from_fraction(BF, top - Fraction(2) ** 119) == 0x7F80
    assert from_fraction(BF, top - Fraction(2) ** 119 - 1) == 0x7F7F
    assert round_exact(BF, 0, 3, -135, "ieee") == 0x0001      # 0.75 quanta → 1
    assert round_exact(BF, 0, 3, -135, "ftz") == 0x0000
    with pytest.raises(ValueError, match=r"^subnormals must be one of 'ieee', 'ftz', not 'x'$"):
        from_fraction(BF, 1, "x")


def test_from_fraction_matches_numpy_rounding():
    # float64 → float32 and float64 → float16 in NumPy round once to nearest even.
    seed = 404
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.integers(-45, 39, 3000),
                        rng.standard_normal(2000) * 2.0 ** rng.integers(-30, 17, 2000)])
    with np.errstate(all="ignore"):
        want32 = x.astype(np.float32).view(np.uint32)
        want16 = x.astype(np.float16).view(np.uint16)
    for value, w32, w16 in zip(x.tolist(), want32.tolist(), want16.tolist()):
        assert from_fraction(FLOAT32, value) == w32, value
        assert from_fraction(FLOAT16, value) == w16, value


# -- BF16 conversion, products and accumulation -------------------------------------------------


def test_fp32_to_bf16_round_to_nearest_even():
    cases = {0x3F808000: 0x3F80, 0x3F818000: 0x3F82, 0x3F808001: 0x3F81, 0x7F7FFFFF: 0x7F80,
             0x00008000: 0x0000, 0x00018000: 0x0002, 0x7FC12345: 0x7FC0, 0xFF800000: 0xFF80,
             0x80000000: 0x8000}
    got = fp32_to_bf16_bits(fp32_from_bits(np.array(list(cases), dtype=np.uint32)))
    assert [hex(v) for v in got] == [hex(v) for v in cases.values()]
    seed = 505
    print(f"seed={seed}")
    bits = np.random.default_rng(seed).integers(0, 1 << 32, 20_000, dtype=np.uint64)
    want = [from_fraction(BF, to_fraction(FLOAT32, int(v))) if not FLOAT32.is_nan(int(v))
            and not FLOAT32.is_inf(int(v)) else None for v in bits]
    got = fp32_to_bf16_bits(fp32_from_bits(bits.astype(np.uint32)))
    for v, w, g in zip(bits, want, got):
        if w is not None and to_fraction(FLOAT32, int(v)) != 0:
            assert g == w, hex(v)


def test_bf16_product_fp32_rounds_once():
    seed = 606
    print(f"seed={seed}")
    a, b = random_operands(BF, 5000, np.random.default_rng(seed))
    got = fp32_to_bits(bf16_product_fp32(a, b))
    for x, y, g in zip(a.tolist(), b.tolist(), got.tolist()):
        fx, fy = to_fraction(BF, x), to_fraction(BF, y)
        if isinstance(fx, float) or isinstance(fy, float):
            continue
        want = from_fraction(FLOAT32, fx * fy, negative_zero=bool((x ^ y) >> 15))
        assert g == want, (hex(x), hex(y))


def test_fp32_accumulate_keeps_the_given_order():
    big, one = np.float32(1e8), np.float32(1.0)
    assert fp32_accumulate([big, one, -big]) == 0.0
    assert fp32_accumulate([big, -big, one]) == 1.0
    assert fp32_accumulate([], init=np.float32(2.5)) == 2.5
    assert np.isnan(fp32_accumulate([np.inf, -np.inf]))
    assert fp32_to_bits(fp32_accumulate([np.inf, -np.inf])) == 0x7FC00000


@pytest.mark.parametrize("subnormals", ["ieee", "ftz"])
def test_fp32_accumulate_matches_sequential_reference(subnormals):
    seed = 707 + (subnormals == "ftz")
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    k, n = 24, 16
    products = (rng.standard_normal((k, n)) * 2.0 ** rng.integers(-140, 20, (k, n))).astype(np.float32)
    got = fp32_to_bits(fp32_accumulate(products, subnormals=subnormals))
    for col in range(n):
        acc = FLOAT32.zero()
        for row in range(k):
            acc = add(FLOAT32, acc, int(fp32_to_bits(products[row, col])), subnormals)
        assert got[col] == acc, col


def test_ml_dtypes_is_the_bf16_type():
    assert bf16_from_bits([0x3F80]).dtype == ml_dtypes.bfloat16
    assert bf16_to_bits(np.array([np.nan], dtype=ml_dtypes.bfloat16))[0] == 0x7FC0
    assert bf16_to_bits(np.array([np.nan], dtype=ml_dtypes.bfloat16), canonical_nan=False)[0] != 0
