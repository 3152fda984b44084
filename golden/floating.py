"""Floating-point reference: exact arithmetic for any binary format, BF16 helpers.

Two layers:

* An **exact reference** for every IEEE-754-style binary format with ``exp_bits``
  exponent and ``man_bits`` fraction bits (:class:`FloatFormat`).  Operands are decoded
  to exact dyadic values ``(-1)**s · sig · 2**exp`` with Python integers; products and
  sums are formed exactly and rounded once, to nearest with ties to even
  (:func:`round_exact`).  It implements both subnormal policies:

  - ``"ieee"`` keeps subnormal inputs and produces subnormal results (gradual
    underflow);
  - ``"ftz"`` treats subnormal inputs as zeros of the same sign and flushes a result to
    a zero of its sign when, rounded with an unbounded exponent range, it is below the
    smallest normal number (tininess *after* rounding).

  Every NaN result is the canonical quiet NaN of the format (sign 0, exponent all
  ones, fraction MSB 1, rest 0: ``0x7FC0`` for BF16); ``0·∞`` and ``∞ − ∞`` are NaN;
  overflow rounds to ±∞; zeros keep their sign (``x + (−x) = +0``).

* **BF16 helpers** on :class:`ml_dtypes.bfloat16` (conversion from float32 with round to
  nearest even, vectorized products) and :func:`fp32_accumulate`, an float32
  accumulation in a fixed, caller-given order, as the hardware performs it.

The module depends on NumPy and ml_dtypes only (never Amaranth or cocotb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import ml_dtypes
import numpy as np

__all__ = [
    "SUBNORMAL_POLICIES", "FloatFormat", "Decoded", "BFLOAT16", "FLOAT16", "TENSORFLOAT32",
    "FLOAT32", "FORMATS", "decode", "round_exact", "from_fraction", "to_fraction", "mul",
    "add", "mul_array", "add_array", "special_values", "pattern_values", "random_operands",
    "bf16_from_bits", "bf16_to_bits", "fp32_to_bf16_bits", "bf16_mul", "bf16_product_fp32",
    "fp32_from_bits", "fp32_to_bits", "fp32_accumulate",
]

#: The subnormal policies a floating-point unit can be generated with.
SUBNORMAL_POLICIES = ("ieee", "ftz")


def _check_policy(subnormals):
    if subnormals not in SUBNORMAL_POLICIES:
        raise ValueError(f"subnormals must be one of {', '.join(map(repr, SUBNORMAL_POLICIES))}, "
                         f"not {subnormals!r}")


@dataclass(frozen=True)
class FloatFormat:
    """A binary interchange-style format: sign, ``exp_bits`` exponent, ``man_bits`` fraction.

    The exponent is biased by ``2**(exp_bits - 1) - 1``; exponent 0 holds zeros and
    subnormals, all ones holds infinities (fraction 0) and NaNs.
    """

    exp_bits: int
    man_bits: int
    name: str = field(default="", compare=False)

    def __post_init__(self):
        for what, value, lo, hi in (("exp_bits", self.exp_bits, 2, 15),
                                    ("man_bits", self.man_bits, 1, 52)):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{what} must be an integer in {lo}..{hi}, not {value!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, not {self.name!r}")

    def __str__(self):
        return self.name or f"e{self.exp_bits}m{self.man_bits}"

    # -- derived figures -------------------------------------------------------------

    @property
    def width(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def precision(self) -> int:
        """Significand bits including the hidden bit."""
        return self.man_bits + 1

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_all_ones(self) -> int:
        return (1 << self.exp_bits) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return self.bias

    # -- encodings -------------------------------------------------------------------

    def pack(self, sign: int, exponent: int, fraction: int) -> int:
        return (sign << (self.width - 1)) | (exponent << self.man_bits) | fraction

    def fields(self, bits: int) -> tuple[int, int, int]:
        """``(sign, exponent, fraction)`` of an encoding."""
        bits = int(bits)
        return (bits >> (self.width - 1)) & 1, (bits >> self.man_bits) & self.exp_all_ones, \
            bits & ((1 << self.man_bits) - 1)

    @property
    def quiet_nan(self) -> int:
        """The canonical NaN every NaN result is replaced by."""
        return self.pack(0, self.exp_all_ones, 1 << (self.man_bits - 1))

    def infinity(self, sign: int = 0) -> int:
        return self.pack(sign, self.exp_all_ones, 0)

    def zero(self, sign: int = 0) -> int:
        return self.pack(sign, 0, 0)

    def one(self, sign: int = 0) -> int:
        return self.pack(sign, self.bias, 0)

    def max_normal(self, sign: int = 0) -> int:
        return self.pack(sign, self.exp_all_ones - 1, (1 << self.man_bits) - 1)

    def min_normal(self, sign: int = 0) -> int:
        return self.pack(sign, 1, 0)

    def min_subnormal(self, sign: int = 0) -> int:
        return self.pack(sign, 0, 1)

    def max_subnormal(self, sign: int = 0) -> int:
        return self.pack(sign, 0, (1 << self.man_bits) - 1)

    def is_nan(self, bits: int) -> bool:
        _, e, f = self.fields(bits)
        return e == self.exp_all_ones and f != 0

    def is_inf(self, bits: int) -> bool:
        _, e, f = self.fields(bits)
        return e == self.exp_all_ones and f == 0

    def is_subnormal(self, bits: int) -> bool:
        _, e, f = self.fields(bits)
        return e == 0 and f != 0


BFLOAT16 = FloatFormat(8, 7, "bf16")
FLOAT16 = FloatFormat(5, 10, "fp16")
TENSORFLOAT32 = FloatFormat(8, 10, "tf32")
FLOAT32 = FloatFormat(8, 23, "fp32")

#: The named formats, by name.
FORMATS = {f.name: f for f in (BFLOAT16, FLOAT16, TENSORFLOAT32, FLOAT32)}


# -- exact values ---------------------------------------------------------------------


class Decoded(NamedTuple):
    """An operand as an exact value: ``kind`` is ``"nan"``, ``"inf"`` or ``"finite"``.

    A finite value is ``(-1)**sign · sig · 2**exp`` (``sig == 0`` for zeros).
    """
    kind: str
    sign: int
    sig: int = 0
    exp: int = 0


def decode(fmt: FloatFormat, bits: int, subnormals: str = "ieee") -> Decoded:
    """The exact value of ``bits``; with ``"ftz"`` a subnormal reads as a signed zero."""
    sign, e, f = fmt.fields(bits)
    if e == fmt.exp_all_ones:
        return Decoded("nan", 0) if f else Decoded("inf", sign)
    if e == 0:
        if subnormals == "ftz":
            f = 0
        return Decoded("finite", sign, f, fmt.emin - fmt.man_bits)
    return Decoded("finite", sign, f | (1 << fmt.man_bits), e - fmt.bias - fmt.man_bits)


def to_fraction(fmt: FloatFormat, bits: int, subnormals: str = "ieee"):
    """The value of ``bits`` as a :class:`~fractions.Fraction` (``float`` for ∞ and NaN).

    A zero comes back as ``Fraction(0)``; its sign is lost.
    """
    d = decode(fmt, bits, subnormals)
    if d.kind == "nan":
        return float("nan")
    if d.kind == "inf":
        return float("-inf") if d.sign else float("inf")
    value = Fraction(d.sig) * Fraction(2) ** d.exp
    return -value if d.sign else value


def round_exact(fmt: FloatFormat, sign: int, sig: int, exp: int, subnormals: str = "ieee") -> int:
    """Round ``(-1)**sign · sig · 2**exp`` (exact, ``sig ≥ 0``) to ``fmt``, ties to even."""
    if sig == 0:
        return fmt.zero(sign)
    man = fmt.man_bits
    lead = exp + sig.bit_length() - 1             # exponent of the leading one
    quantum = lead - man                          # weight of the last kept bit
    if subnormals == "ieee":
        quantum = max(quantum, fmt.emin - man)
    shift = quantum - exp
    if shift <= 0:
        kept = sig << -shift
    else:
        kept = sig >> shift
        rest = sig & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rest > half or (rest == half and kept & 1):
            kept += 1
    if kept >> (man + 1):                         # rounded up to the next binade
        kept >>= 1
        quantum += 1
    if kept == 0:
        return fmt.zero(sign)
    if kept >> man == 0:                          # subnormal (ieee only)
        return fmt.pack(sign, 0, kept)
    biased = quantum + man + fmt.bias
    if biased >= fmt.exp_all_ones:
        return fmt.infinity(sign)
    if biased <= 0:                               # ftz: tiny after rounding
        return fmt.zero(sign)
    return fmt.pack(sign, biased, kept - (1 << man))


def from_fraction(fmt: FloatFormat, value, subnormals: str = "ieee", *, negative_zero=False) -> int:
    """Round a rational (``Fraction``, ``int``, or an exactly converted ``float``) to ``fmt``.

    ``negative_zero`` gives the sign of an exact zero.  Infinite and NaN floats map to
    the infinities and the canonical NaN.
    """
    _check_policy(subnormals)
    if isinstance(value, float):
        if value != value:
            return fmt.quiet_nan
        if value in (float("inf"), float("-inf")):
            return fmt.infinity(int(value < 0))
    value = Fraction(value)
    if value == 0:
        return fmt.zero(int(negative_zero))
    sign = int(value < 0)
    num, den = abs(value.numerator), value.denominator
    if den & (den - 1) == 0:                      # dyadic: exact
        return round_exact(fmt, sign, num, -(den.bit_length() - 1), subnormals)
    # Enough quotient bits to decide the rounding, plus a sticky bit for the remainder.
    k = fmt.precision + 3 + den.bit_length() - num.bit_length()
    q, r = divmod(num << k, den) if k >= 0 else divmod(num, den << -k)
    return round_exact(fmt, sign, (q << 1) | (r != 0), -k - 1, subnormals)


# -- operations -------------------------------------------------------------------------


def mul(fmt: FloatFormat, a: int, b: int, subnormals: str = "ieee") -> int:
    """``a · b`` in ``fmt``, rounded once to nearest even (the exact reference)."""
    x, y = decode(fmt, a, subnormals), decode(fmt, b, subnormals)
    if x.kind == "nan" or y.kind == "nan":
        return fmt.quiet_nan
    sign = x.sign ^ y.sign
    if x.kind == "inf" or y.kind == "inf":
        if (x.kind == "finite" and x.sig == 0) or (y.kind == "finite" and y.sig == 0):
            return fmt.quiet_nan                  # 0 · ∞
        return fmt.infinity(sign)
    return round_exact(fmt, sign, x.sig * y.sig, x.exp + y.exp, subnormals)


def add(fmt: FloatFormat, a: int, b: int, subnormals: str = "ieee") -> int:
    """``a + b`` in ``fmt``, rounded once to nearest even (the exact reference)."""
    x, y = decode(fmt, a, subnormals), decode(fmt, b, subnormals)
    if x.kind == "nan" or y.kind == "nan":
        return fmt.quiet_nan
    if x.kind == "inf" or y.kind == "inf":
        if x.kind == "inf" and y.kind == "inf" and x.sign != y.sign:
            return fmt.quiet_nan                  # ∞ − ∞
        return fmt.infinity(x.sign if x.kind == "inf" else y.sign)
    exp = min(x.exp, y.exp)
    total = ((-1) ** x.sign * (x.sig << (x.exp - exp))
             + (-1) ** y.sign * (y.sig << (y.exp - exp)))
    if total == 0:
        # Exact zero: −0 only for (−0) + (−0); x + (−x) is +0 when rounding to nearest.
        return fmt.zero(x.sign & y.sign)
    return round_exact(fmt, int(total < 0), abs(total), exp, subnormals)


def _apply(op, fmt, a, b, subnormals):
    _check_policy(subnormals)
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    a, b = np.broadcast_arrays(a, b)
    out = [op(fmt, int(x), int(y), subnormals) for x, y in zip(a.ravel().tolist(), b.ravel().tolist())]
    dtype = np.uint16 if fmt.width <= 16 else np.uint32 if fmt.width <= 32 else np.uint64
    return np.array(out, dtype=dtype).reshape(a.shape)


def mul_array(fmt: FloatFormat, a, b, subnormals: str = "ieee") -> np.ndarray:
    """Element-wise :func:`mul` of two arrays of encodings."""
    return _apply(mul, fmt, a, b, subnormals)


def add_array(fmt: FloatFormat, a, b, subnormals: str = "ieee") -> np.ndarray:
    """Element-wise :func:`add` of two arrays of encodings."""
    return _apply(add, fmt, a, b, subnormals)


# -- operand sets -----------------------------------------------------------------------


def special_values(fmt: FloatFormat) -> list[int]:
    """One encoding of every special class, both signs, NaNs with and without payload.

    ±0, ±smallest and ±largest subnormal, ±smallest and ±largest normal, ±1, ±1.5,
    ±(1 + ulp), ±(1 + 3 ulp), ±(2 − ulp) (pairs of these give exact rounding ties in
    products and sums), ±∞, the canonical quiet NaN, quiet and signalling NaNs with
    payloads and a negative NaN.
    """
    m = fmt.man_bits
    top = 1 << (m - 1)
    magnitudes = [
        fmt.zero(), fmt.min_subnormal(), fmt.max_subnormal(), fmt.min_normal(),
        fmt.max_normal(), fmt.one(), fmt.pack(0, fmt.bias, top), fmt.pack(0, fmt.bias, 1),
        fmt.pack(0, fmt.bias, 3 if m >= 2 else 1), fmt.pack(0, fmt.bias, (1 << m) - 1),
        fmt.infinity(),
    ]
    values = [v | (s << (fmt.width - 1)) for v in magnitudes for s in (0, 1)]
    nans = [fmt.quiet_nan, fmt.pack(0, fmt.exp_all_ones, top | 1), fmt.pack(1, fmt.exp_all_ones, top)]
    if m >= 2:
        nans.append(fmt.pack(0, fmt.exp_all_ones, 1))                     # signalling
        nans.append(fmt.pack(1, fmt.exp_all_ones, (1 << (m - 1)) - 1))    # signalling
    return list(dict.fromkeys(values + nans))


def pattern_values(fmt: FloatFormat) -> list[int]:
    """TestFloat level-1 style operands: significand patterns × exponent patterns × signs.

    Significands: all zeros, all ones, a single one or a single zero at either end and in
    the middle, alternating bits.  Exponents: both ends of the range, around the bias,
    half and one and a half times the bias (products of those land near underflow and
    overflow).  The special values are included.
    """
    m = fmt.man_bits
    ones = (1 << m) - 1
    top = 1 << (m - 1)
    sigs = {0, 1, ones, ones - 1, top, top | 1, ones >> 1, 1 << (m // 2), ones ^ (1 << (m // 2)),
            int("10" * m, 2) & ones, int("01" * m, 2) & ones}
    b = fmt.bias
    exps = {0, 1, 2, b // 2, b - 1, b, b + 1, b + b // 2, fmt.exp_all_ones - 2,
            fmt.exp_all_ones - 1, fmt.exp_all_ones}
    values = [fmt.pack(s, e, f) for e in sorted(exps) for f in sorted(sigs) for s in (0, 1)
              if 0 <= e <= fmt.exp_all_ones]
    return list(dict.fromkeys(special_values(fmt) + values))


def random_operands(fmt: FloatFormat, n: int, rng: np.random.Generator, *, op: str = "mul"):
    """``n`` random operand pairs ``(a, b)`` mixing several regimes.

    A quarter uniformly random encodings (many infinities, NaNs, overflows and
    underflows); for ``op="mul"`` the rest have exponents whose sum lands near 1.0, near
    the underflow threshold (subnormal results, rounding into the smallest normal) or
    near the overflow threshold; for ``op="add"`` exponents close together
    (cancellation, carries) or far apart (sticky bits), with random signs.
    """
    if op not in ("mul", "add"):
        raise ValueError(f"op must be 'mul' or 'add', not {op!r}")
    m, e_all, b = fmt.man_bits, fmt.exp_all_ones, fmt.bias
    dtype = np.uint64
    sign = lambda: rng.integers(0, 2, n, dtype=dtype)
    frac = lambda: rng.integers(0, 1 << m, n, dtype=dtype)
    ea = rng.integers(0, e_all + 1, n)
    eb = rng.integers(0, e_all + 1, n)
    regime = rng.integers(0, 4, n)
    if op == "mul":
        # regime 1: product near 1; 2: near the underflow threshold; 3: near overflow.
        target = np.where(regime == 1, 2 * b, np.where(regime == 2, b + 1, b + e_all - 1))
        spread = np.where(regime == 1, 8, np.where(regime == 2, m + 4, 3))
        ea_r = rng.integers(0, e_all, n)
        eb_r = target - ea_r + rng.integers(-spread, spread + 1)
        keep = regime > 0
        ea = np.where(keep, ea_r, ea)
        eb = np.where(keep, eb_r, eb)
    else:
        # regime 1: equal or adjacent exponents; 2: far apart; 3: smallest exponents.
        ea_r = rng.integers(0, e_all, n)
        gap = np.where(regime == 1, rng.integers(-2, 3, n), rng.integers(-(m + 4), m + 5, n))
        eb_r = ea_r + gap
        ea = np.where(regime == 3, rng.integers(0, 3, n), np.where(regime > 0, ea_r, ea))
        eb = np.where(regime == 3, rng.integers(0, 3, n), np.where(regime > 0, eb_r, eb))
    ea = np.clip(ea, 0, e_all).astype(dtype)
    eb = np.clip(eb, 0, e_all).astype(dtype)
    # Away from the uniform regime, infinities and NaNs stay rare.
    fa, fb = frac(), frac()
    a = (sign() << dtype(fmt.width - 1)) | (ea << dtype(m)) | fa
    b_ = (sign() << dtype(fmt.width - 1)) | (eb << dtype(m)) | fb
    out = np.uint16 if fmt.width <= 16 else np.uint32
    return a.astype(out), b_.astype(out)


# -- BF16 and FP32 on NumPy / ml_dtypes ---------------------------------------------------------

_BF16_NAN = np.uint16(BFLOAT16.quiet_nan)
_FP32_NAN = np.uint32(FLOAT32.quiet_nan)


def bf16_from_bits(bits) -> np.ndarray:
    """``ml_dtypes.bfloat16`` values of 16-bit encodings."""
    return np.asarray(bits, dtype=np.uint16).view(ml_dtypes.bfloat16)


def bf16_to_bits(values, *, canonical_nan: bool = True) -> np.ndarray:
    """Encodings of ``bfloat16`` values; NaNs become 0x7FC0 unless ``canonical_nan`` is off."""
    values = np.asarray(values, dtype=ml_dtypes.bfloat16)
    bits = values.view(np.uint16).copy()
    if canonical_nan:
        bits[np.isnan(values)] = _BF16_NAN
    return bits


def fp32_to_bf16_bits(values) -> np.ndarray:
    """Round float32 values to BF16 (nearest, ties to even; subnormals kept)."""
    with np.errstate(all="ignore"):
        return bf16_to_bits(np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16))


def bf16_mul(a_bits, b_bits, subnormals: str = "ieee") -> np.ndarray:
    """BF16 products of encodings as the hardware computes them.

    ``"ieee"`` uses ml_dtypes (the product of two bf16 values is exact in float32
    whenever it matters for the rounding, so ml_dtypes' float32 detour rounds once);
    ``"ftz"`` has no ml_dtypes equivalent and uses the exact reference.
    """
    _check_policy(subnormals)
    if subnormals == "ftz":
        return mul_array(BFLOAT16, a_bits, b_bits, "ftz")
    with np.errstate(all="ignore"):
        return bf16_to_bits(bf16_from_bits(a_bits) * bf16_from_bits(b_bits))


def bf16_product_fp32(a_bits, b_bits) -> np.ndarray:
    """The float32 product of BF16 operands: exact unless it leaves float32's normal range.

    8-bit significands give a 16-bit product, which float32 (24 bits) holds exactly; only
    products of very small operands round (once, to nearest even) into float32
    subnormals or to zero.  NaNs are canonical (0x7FC00000).
    """
    with np.errstate(all="ignore"):
        a = bf16_from_bits(a_bits).astype(np.float32)
        b = bf16_from_bits(b_bits).astype(np.float32)
        return fp32_from_bits(fp32_to_bits(a * b))


def fp32_from_bits(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def fp32_to_bits(values, *, canonical_nan: bool = True) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    bits = values.view(np.uint32).copy()
    if canonical_nan:
        bits[np.isnan(values)] = _FP32_NAN
    return bits


def fp32_accumulate(products, *, init=0.0, subnormals: str = "ieee") -> np.ndarray:
    """Sum float32 ``products`` one at a time **in the given order**, as the hardware does.

    ``acc = init; for p in products: acc = fp32_add(acc, p)`` with every addition rounded
    to nearest even.  ``products`` may be 1-D (one sum) or K×N (N independent sums along
    axis 0, each in the order k = 0 … K−1).  Returns float32 (0-d or shape N) with
    canonical NaNs.  ``"ftz"`` uses the exact reference adder with flushing.
    """
    _check_policy(subnormals)
    products = np.asarray(products, dtype=np.float32)
    acc = np.array(np.broadcast_to(np.asarray(init, dtype=np.float32), products.shape[1:]))
    if subnormals == "ieee":
        with np.errstate(all="ignore"):
            for p in products:
                acc = (acc + p).astype(np.float32)
        return fp32_from_bits(fp32_to_bits(acc))
    bits = fp32_to_bits(acc)
    for p in products:
        bits = add_array(FLOAT32, bits, fp32_to_bits(p), "ftz")
    return fp32_from_bits(bits)
