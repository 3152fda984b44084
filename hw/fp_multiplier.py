"""Pipelined floating-point multiplier for any exponent/fraction width (BF16 by default).

IEEE-754 semantics with one rounding, to nearest with ties to even; the executable
specification is :func:`npugen.golden.floating.mul`:

* subnormal policy ``"ieee"`` (gradual underflow) or ``"ftz"`` (subnormal inputs read
  as zeros of their sign; a result below the smallest normal after rounding becomes a
  zero of its sign);
* every NaN result is the canonical quiet NaN (``0x7FC0`` for BF16); ``0 · ∞`` is NaN;
* overflow gives ±∞; the sign of a zero is the XOR of the operand signs.

Datapath, with a boundary after each step::

    unpack ─┤0├─ significand product ─┤1├─ normalize ─┤2├─ round, pack ─┤3├─ result

* *unpack*: special classes, significands with hidden bits (flushed under ``ftz``),
  ``x = e_a + e_b − bias`` (effective exponents, 1 for subnormals);
* *product*: ``p × p`` bits (p = precision) on a DSP (``multiplier="dsp"``, a ``*``
  that yosys maps to ``MULT18X18D``) or in logic (``"lut"``: AND partial products
  reduced by a carry-save tree of 3:2 compressors and one final adder, so no ``$mul``
  cell exists for yosys to put on a DSP);
* *normalize*: a leading-zero count ``lz`` of the product; the product is shifted left
  by ``lz`` (exponent ``x + 1 − lz``) or, when that would leave the exponent below 1
  (``ieee``), by ``x`` only or right by ``−x`` with a sticky bit (a subnormal result);
* *round*: ``{exponent, fraction} + round_up``, so a carry out of the fraction moves
  into the exponent (subnormal → smallest normal, largest normal → ∞).

``latency`` registers go on the boundaries in the order 3, 1, 2, 0 (so latency 1
registers the output, 2 also the product, ...); the rest are wires.
"""

from amaranth.hdl import Cat, Const, Module, Mux

from npugen.golden.floating import BFLOAT16, SUBNORMAL_POLICIES, FloatFormat

from .float_format import float_struct
from .fp_pipeline import FloatUnit, Stages, leading_zeros, operands_layout, wire

__all__ = ["FloatMultiplier", "MULTIPLIERS", "MAX_LATENCY", "DEFAULT_LATENCY",
           "operands_layout", "lut_product"]

#: Ways to build the significand product.
MULTIPLIERS = ("dsp", "lut")

#: Boundaries of the datapath; latency counts the registered ones.
MAX_LATENCY = 4

#: Registers on every boundary: the product alone in its stage (a DSP block or the
#: compressor tree), the leading-zero count and shifter apart from the rounding adder.
DEFAULT_LATENCY = 4

#: Which boundaries get the registers first (output, product, normalize, unpack).
_PRIORITY = (3, 1, 2, 0)


def registered_boundaries(latency):
    """Which of the four boundaries are registers for ``latency``."""
    chosen = set(_PRIORITY[:latency])
    return [i in chosen for i in range(MAX_LATENCY)]


def lut_product(m, a, b):
    """``a × b`` (unsigned) from logic: AND rows, a 3:2 carry-save tree, one final adder.

    The rows of every level are wires of ``m`` (each row feeds several gates).

    The expression contains no multiplication operator, so synthesis cannot map it to a
    DSP block whatever its options.
    """
    width = len(a) + len(b)
    rows = [(a & b[j].replicate(len(a))) << j for j in range(len(b))]
    rows = [wire(m, Cat(row, Const(0, width))[:width], f"pp{j}") for j, row in enumerate(rows)]
    level = 0
    while len(rows) > 2:
        level += 1
        reduced = []
        full = len(rows) - len(rows) % 3
        for i in range(0, full, 3):
            x, y, z = rows[i:i + 3]
            reduced.append(wire(m, (x ^ y ^ z)[:width], f"csa{level}_s{i // 3}"))
            reduced.append(wire(m, Cat(Const(0, 1), (x & y) | (x & z) | (y & z))[:width],
                                f"csa{level}_c{i // 3}"))
        reduced += rows[full:]
        rows = reduced
    if len(rows) == 1:
        return rows[0]
    return (rows[0] + rows[1])[:width]


def _check(fmt, latency, subnormals, multiplier=None):
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat, not {fmt!r}")
    if not isinstance(latency, int) or isinstance(latency, bool) or not 0 <= latency <= MAX_LATENCY:
        raise ValueError(f"latency must be an integer in 0..{MAX_LATENCY}, not {latency!r}")
    if subnormals not in SUBNORMAL_POLICIES:
        raise ValueError(f"subnormals must be one of {', '.join(map(repr, SUBNORMAL_POLICIES))}, "
                         f"not {subnormals!r}")
    if multiplier is not None and multiplier not in MULTIPLIERS:
        raise ValueError(f"multiplier must be one of {', '.join(map(repr, MULTIPLIERS))}, "
                         f"not {multiplier!r}")


class FloatMultiplier(FloatUnit):
    """``result = operands.a × operands.b``, one pair per cycle, fixed latency.

    Parameters
    ----------
    fmt : FloatFormat
        Operand and result format (``BFLOAT16``, ``FLOAT16``, ``TENSORFLOAT32``,
        ``FLOAT32`` or any other exponent/fraction widths).
    latency : int
        Register stages, 0 (combinational) to 4; ``result`` follows ``operands`` by
        exactly this many cycles.
    subnormals : ``"ieee"`` | ``"ftz"``
        Subnormal policy.
    multiplier : ``"dsp"`` | ``"lut"``
        Significand product on a DSP block or in logic.

    Ports
    -----
    operands : In(stream.Signature(operands_layout(fmt), always_ready=True))
        ``payload.a``, ``payload.b``, ``valid``.  Never stalls; ``ready`` is constant 1.
    result : Out(stream.Signature(float_struct(fmt), always_ready=True))
        The product and its ``valid``, ``latency`` cycles after the operands.
    """

    def __init__(self, fmt: FloatFormat = BFLOAT16, *, latency: int = DEFAULT_LATENCY,
                 subnormals: str = "ieee", multiplier: str = "dsp"):
        self._multiplier = multiplier
        super().__init__(fmt, latency, subnormals,
                         lambda: _check(fmt, latency, subnormals, multiplier))

    @property
    def multiplier(self) -> str:
        return self._multiplier

    def elaborate(self, platform):
        m = Module()
        fmt, policy = self._fmt, self._subnormals
        man, exp_bits, p = fmt.man_bits, fmt.exp_bits, fmt.precision
        struct = float_struct(fmt)
        stages = Stages(m, registered_boundaries(self._latency), "fmul")
        a, b = self.operands.payload.a, self.operands.payload.b

        # Step 0: unpack.
        a_zero = wire(m, a.is_zero(policy), "a_zero")
        b_zero = wire(m, b.is_zero(policy), "b_zero")
        a_inf, b_inf = wire(m, a.is_inf(), "a_inf"), wire(m, b.is_inf(), "b_inf")
        exp_sum = a.effective_exponent() + b.effective_exponent()
        x = Cat(exp_sum, Const(0, 2)).as_signed() - fmt.bias            # signed, e + 3 bits
        s0 = stages.cut(
            valid=self.operands.valid,
            sign=a.sign ^ b.sign,
            nan=a.is_nan() | b.is_nan() | (a_inf & b_zero) | (a_zero & b_inf),
            inf=a_inf | b_inf,
            zero=a_zero | b_zero,
            x=x[:exp_bits + 3].as_signed(),
            sig_a=a.significand(policy),
            sig_b=b.significand(policy))

        # Step 1: significand product (2p bits).
        if self._multiplier == "dsp":
            product = s0.sig_a * s0.sig_b
        else:
            product = lut_product(m, s0.sig_a, s0.sig_b)
        s1 = stages.cut(valid=s0.valid, sign=s0.sign, nan=s0.nan, inf=s0.inf, zero=s0.zero,
                        x=s0.x, product=product[:2 * p])

        # Step 2: normalize.  The product sits at the top of a 4p+2 bit word whose low
        # 2p+2 bits catch what a right shift (subnormal result) moves out.
        width = 4 * p + 2
        lz = wire(m, leading_zeros(s1.product), "lz")                    # 0 .. 2p
        lz_s = Cat(lz, Const(0, 1)).as_signed()
        x = s1.x
        if policy == "ieee":
            normal = wire(m, x >= lz_s, "normal")
            shift_bits = (2 * p + 2).bit_length()
            left = Mux(normal, lz, Mux(x > 0, x[:shift_bits], 0))
            neg_x = (-x)[:exp_bits + 3]
            right = Mux(x < 0, Mux(neg_x > 2 * p + 2, 2 * p + 2, neg_x[:shift_bits]), 0)
            exponent = Mux(normal, x + 1 - lz_s, 0)
        else:
            left, right = lz, 0
            exponent = x + 1 - lz_s
        wide = Cat(Const(0, 2 * p + 2), s1.product)
        shifted = wire(m, ((wide << left)[:width] >> right)[:width], "shifted")
        sig = shifted[width - p:]
        s2 = stages.cut(valid=s1.valid, sign=s1.sign, nan=s1.nan, inf=s1.inf, zero=s1.zero,
                        exponent=exponent.as_signed()[:exp_bits + 4].as_signed(),
                        fraction=sig[:man],
                        round_up=shifted[width - p - 1] & (shifted[:width - p - 1].any() | sig[0]))

        # Step 3: round (the fraction's carry runs into the exponent), special cases.
        rounded = wire(m, (Cat(s2.fraction, s2.exponent) + s2.round_up)[:man + exp_bits + 4],
                       "rounded")
        r_exp = rounded[man:].as_signed()
        overflow = r_exp >= fmt.exp_all_ones
        underflow = r_exp <= 0 if policy == "ftz" else Const(0, 1)
        infinity = Cat(Const(0, man), Const(fmt.exp_all_ones, exp_bits), s2.sign)
        zero = Cat(Const(0, man + exp_bits), s2.sign)
        # A zero operand makes the (meaningless) exponent irrelevant: it wins over overflow.
        y = Mux(s2.nan, struct.quiet_nan().as_value(),
                Mux(s2.inf, infinity,
                    Mux(s2.zero, zero,
                        Mux(overflow, infinity,
                            Mux(underflow, zero, Cat(rounded[:man], r_exp[:exp_bits], s2.sign))))))
        s3 = stages.cut(valid=s2.valid, y=y)
        assert stages.done
        m.d.comb += [self.result.valid.eq(s3.valid), self.result.payload.eq(s3.y)]
        return m
