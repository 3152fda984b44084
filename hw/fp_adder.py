"""Pipelined floating-point adder for any exponent/fraction width (FP32 by default).

Same conventions as :class:`~npugen.hw.fp_multiplier.FloatMultiplier`: one rounding to
nearest with ties to even, subnormal policy ``"ieee"`` or ``"ftz"``, canonical quiet
NaN for every NaN result, ``∞ − ∞`` is NaN, overflow gives ±∞, ``x + (−x) = +0`` and
``(−0) + (−0) = −0``.  The executable specification is :func:`npugen.golden.floating.add`.

Datapath, with a boundary after each step::

    unpack, order ─┤0├─ align, add ─┤1├─ normalize ─┤2├─ round, pack ─┤3├─ result

* *unpack, order*: special classes; the operand of larger magnitude becomes ``big``;
  the exponent difference ``d``;
* *align, add*: ``small`` shifted right by ``min(d, p + 3)`` with guard, round and
  sticky bits (p + 3 bits), then added to or subtracted from ``big`` (p + 4 bits);
* *normalize*: a carry shifts right by one (sticky kept); otherwise a leading-zero
  count shifts left, limited under ``ieee`` so the exponent stays ≥ 1 (the result is
  then subnormal), unlimited under ``ftz``;
* *round*: ``{exponent, fraction} + round_up`` (the carry runs into the exponent).

``latency`` registers go on the boundaries in the order 3, 1, 2, 0.
"""

from amaranth.hdl import Cat, Const, Module, Mux

from npugen.golden.floating import FLOAT32, FloatFormat

from .float_format import float_struct
from .fp_pipeline import (FloatUnit, Stages, check_unit_parameters, leading_zeros,
                          registered_boundaries, wire)

__all__ = ["FloatAdder", "MAX_LATENCY", "DEFAULT_LATENCY"]

#: Boundaries of the datapath; latency counts the registered ones.
MAX_LATENCY = 4

#: Registers on every boundary: the alignment shifter with the adder, the leading-zero
#: count with the normalizing shifter and the rounding adder each in their own stage.
DEFAULT_LATENCY = 4

#: Which boundaries get the registers first (output, align/add, normalize, unpack).
_PRIORITY = (3, 1, 2, 0)


class FloatAdder(FloatUnit):
    """``result = operands.a + operands.b``, one pair per cycle, fixed latency.

    Parameters
    ----------
    fmt : FloatFormat
        Operand and result format (default ``FLOAT32``, the accumulator format).
    latency : int
        Register stages, 0 (combinational) to 4.
    subnormals : ``"ieee"`` | ``"ftz"``
        Subnormal policy.

    Ports
    -----
    operands : In(stream.Signature(operands_layout(fmt), always_ready=True))
    result : Out(stream.Signature(float_struct(fmt), always_ready=True))
        The sum and its ``valid``, ``latency`` cycles after the operands.
    """

    def __init__(self, fmt: FloatFormat = FLOAT32, *, latency: int = DEFAULT_LATENCY,
                 subnormals: str = "ieee"):
        super().__init__(fmt, latency, subnormals,
                         lambda: check_unit_parameters(fmt, latency, subnormals, MAX_LATENCY))

    def elaborate(self, platform):
        m = Module()
        fmt, policy = self._fmt, self._subnormals
        man, exp_bits, p = fmt.man_bits, fmt.exp_bits, fmt.precision
        struct = float_struct(fmt)
        stages = Stages(m, registered_boundaries(self._latency, _PRIORITY), "fadd")
        a, b = self.operands.payload.a, self.operands.payload.b

        # Step 0: unpack, put the larger magnitude first.
        sig_a = wire(m, a.significand(policy), "sig_a")
        sig_b = wire(m, b.significand(policy), "sig_b")
        exp_a = wire(m, a.effective_exponent(), "exp_a")
        exp_b = wire(m, b.effective_exponent(), "exp_b")
        a_inf, b_inf = wire(m, a.is_inf(), "a_inf"), wire(m, b.is_inf(), "b_inf")
        swap = wire(m, Cat(sig_b, exp_b) > Cat(sig_a, exp_a), "swap")
        big_exp = wire(m, Mux(swap, exp_b, exp_a), "big_exp")
        small_exp = Mux(swap, exp_a, exp_b)
        diff = wire(m, (big_exp - small_exp)[:exp_bits], "diff")
        s0 = stages.cut(
            valid=self.operands.valid,
            nan=a.is_nan() | b.is_nan() | (a_inf & b_inf & (a.sign != b.sign)),
            inf=a_inf | b_inf,
            inf_sign=Mux(a_inf, a.sign, b.sign),
            zero_sign=a.sign & b.sign,
            subtract=a.sign ^ b.sign,
            sign=Mux(swap, b.sign, a.sign),
            exp=big_exp[:exp_bits],
            big=Mux(swap, sig_b, sig_a)[:p],
            small=Mux(swap, sig_a, sig_b)[:p],
            diff=Mux(diff > p + 3, p + 3, diff)[:(p + 3).bit_length()])

        # Step 1: align (guard, round, sticky) and add.
        ext = p + 3
        small_wide = Cat(Const(0, ext + 3), s0.small)                    # 2p + 6 bits
        aligned_wide = wire(m, small_wide >> s0.diff, "aligned_wide")
        aligned = Cat(aligned_wide[ext] | aligned_wide[:ext].any(),
                      aligned_wide[ext + 1:2 * ext])
        big = Cat(Const(0, 3), s0.big)
        aligned = wire(m, aligned, "aligned")
        total = Mux(s0.subtract, big - aligned, big + aligned)[:ext + 1]
        s1 = stages.cut(valid=s0.valid, nan=s0.nan, inf=s0.inf, inf_sign=s0.inf_sign,
                        zero_sign=s0.zero_sign, sign=s0.sign, exp=s0.exp, total=total)

        # Step 2: normalize to p + 3 bits with the hidden bit on top.
        carry = s1.total[ext]
        low = s1.total[:ext]
        lz = wire(m, leading_zeros(low), "lz")
        exp_w = Cat(s1.exp, Const(0, 3)).as_signed()                     # e + 3 bits
        if policy == "ieee":
            limit = wire(m, (s1.exp - 1)[:exp_bits], "limit")
            shift = Mux(lz < limit, lz, limit)
        else:
            shift = lz
        shift = wire(m, shift[:max(len(lz), exp_bits)], "shift")
        shifted = wire(m, (low << shift)[:ext], "shifted")
        exp_shifted = exp_w - Cat(shift, Const(0, 1)).as_signed()
        if policy == "ieee":
            exp_shifted = Mux(shifted[ext - 1], exp_shifted, 0)           # subnormal
        norm = wire(m, Mux(carry, Cat(s1.total[0] | s1.total[1], s1.total[2:ext + 1]), shifted),
                    "norm")
        exponent = Mux(carry, exp_w + 1, exp_shifted)
        s2 = stages.cut(valid=s1.valid, nan=s1.nan, inf=s1.inf, inf_sign=s1.inf_sign,
                        zero_sign=s1.zero_sign, sign=s1.sign, zero=s1.total == 0,
                        exponent=exponent.as_signed()[:exp_bits + 3].as_signed(),
                        fraction=norm[3:3 + man],
                        round_up=norm[2] & (norm[1] | norm[0] | norm[3]))

        # Step 3: round, special cases.
        rounded = wire(m, (Cat(s2.fraction, s2.exponent) + s2.round_up)[:man + exp_bits + 3],
                       "rounded")
        r_exp = rounded[man:].as_signed()
        overflow = r_exp >= fmt.exp_all_ones
        underflow = r_exp <= 0 if policy == "ftz" else Const(0, 1)
        infinity = lambda sign: Cat(Const(0, man), Const(fmt.exp_all_ones, exp_bits), sign)
        zero = lambda sign: Cat(Const(0, man + exp_bits), sign)
        y = Mux(s2.nan, struct.quiet_nan().as_value(),
                Mux(s2.inf, infinity(s2.inf_sign),
                    Mux(s2.zero, zero(s2.zero_sign),
                        Mux(overflow, infinity(s2.sign),
                            Mux(underflow, zero(s2.sign),
                                Cat(rounded[:man], r_exp[:exp_bits], s2.sign))))))
        s3 = stages.cut(valid=s2.valid, y=y)
        assert stages.done
        m.d.comb += [self.result.valid.eq(s3.valid), self.result.payload.eq(s3.y)]
        return m
