"""Pipelined floating-point multiplier for any exponent/fraction width (BF16 by default).

IEEE-754 semantics with one rounding, to nearest with ties to even; the executable
specification is :func:`npugen.golden.floating.mul`:

* subnormal policy ``"ieee"`` (gradual underflow) or ``"ftz"`` (subnormal inputs read
  as zeros of their sign; a result below the smallest normal after rounding becomes a
  zero of its sign);
* every NaN result is the canonical quiet NaN (``0x7FC0`` for BF16); ``0 · ∞`` is NaN;
* overflow gives ±∞; the sign of a zero is the XOR of the operand signs.

Datapath (p = precision), with a boundary after each step::

    unpack ─┤0├─ prenormalize ─┤1├─ product ─┤2├─ product adder ─┤3├─ select ─┤4├─
    subnormal shift, round bit ─┤5├─ round ─┤6├─ specials ─┤7├─ result

* *unpack*: special classes, significands with hidden bits (flushed under ``ftz``),
  ``e_a + e_b − bias`` (effective exponents, 1 for subnormals) and, under ``ieee``,
  the leading zeros of each significand;
* *prenormalize* (``ieee``): each significand shifted left by its leading zeros and the
  exponent ``x`` lowered by both counts, so the product's top bit is set in bit
  ``2p − 1`` or ``2p − 2`` and no leading-zero count of the product is needed; both
  candidates of the result exponent ``x + top`` and of ``1 − (x + top)`` (the right
  shift of a subnormal result), each one subtraction from registered values;
* *product*: ``p × p`` bits on a DSP (``multiplier="dsp"``, a ``*`` that yosys maps to
  ``MULT18X18D``) or in logic (``"lut"``: AND partial products and the first half of the
  levels of a carry-save tree of 3:2 compressors, so no ``$mul`` cell exists for yosys
  to put on a DSP); alongside, both candidates of the right shift of a subnormal
  result, from comparisons with constants;
* *product adder*: the LUT product's remaining compressor levels and its final
  carry-chain adder (the DSP product passes through);
* *select*: by the product's top bit, the significand with guard bit (p + 1 bits), the
  sticky OR of the bits below, the exponent and (``ieee``) the right shift;
* *subnormal shift, round bit* (``ieee``): a result below the normal range is shifted
  right (its exponent field is 0), the shifted-out bits joining the sticky bit; then
  ``round_up = guard ∧ (sticky ∨ lsb)``;
* *round*: ``{exponent, fraction} + round_up``, so a carry out of the fraction moves
  into the exponent (subnormal → smallest normal, largest normal → ∞), and the
  overflow (and ``ftz`` underflow) tests;
* *specials*: NaN, ∞, zero and the overflow/underflow results.

``latency`` registers go on the boundaries in the order 7, 2, 1, 5, 4, 0, 3, 6 (latency 1
registers the output; 3 also the product and its operands, which ECP5 packs into the
DSP block's input and output registers; ...); the rest are wires.
"""

from amaranth.hdl import Cat, Const, Module, Mux

from npugen.golden.floating import BFLOAT16, FloatFormat

from .float_format import float_struct
from .fp_pipeline import (FloatUnit, Stages, check_unit_parameters, leading_zeros,
                          less_than, operands_layout, registered_boundaries, wire)

__all__ = ["FloatMultiplier", "MULTIPLIERS", "MAX_LATENCY", "DEFAULT_LATENCY",
           "operands_layout", "lut_product", "lut_product_rows", "partial_products",
           "csa_reduce", "csa_levels"]

#: Ways to build the significand product.
MULTIPLIERS = ("dsp", "lut")

#: Which boundaries get the registers first: output, product (the DSP block's output
#: register), its operands (the block's input registers), round bit, select, unpack,
#: the LUT product's final adder, round.
_PRIORITY = (7, 2, 1, 5, 4, 0, 3, 6)

#: Boundaries of the datapath; latency counts the registered ones.
MAX_LATENCY = len(_PRIORITY)

#: The default depth: every boundary but the one after the rounding adder registered.
#: On ECP5 BF16 then runs at least as fast as the 8×8 systolic array, with its
#: significand product on a DSP block or in logic (``npugen cost``; the figures are in
#: docs/ARCHITECTURE.md).
DEFAULT_LATENCY = 7


def csa_levels(rows):
    """The 3:2 carry-save levels that reduce ``rows`` partial-product rows to two."""
    levels = 0
    while rows > 2:
        rows = 2 * (rows // 3) + rows % 3
        levels += 1
    return levels


def partial_products(m, a, b):
    """The AND partial-product rows of ``a × b`` (unsigned), each ``len(a) + len(b)`` bits."""
    width = len(a) + len(b)
    rows = [(a & b[j].replicate(len(a))) << j for j in range(len(b))]
    return [wire(m, Cat(row, Const(0, width))[:width], f"pp{j}") for j, row in enumerate(rows)]


def csa_reduce(m, rows, levels, prefix="csa"):
    """Up to ``levels`` levels of 3:2 compressors (XOR/majority gates) over ``rows``.

    Every level turns each three rows into two (sum, shifted carry) of the same width;
    the sum of the rows is unchanged modulo ``2**width``.  The rows of every level are
    wires of ``m`` (each row feeds several gates).
    """
    width = len(rows[0])
    for level in range(1, levels + 1):
        if len(rows) <= 2:
            break
        reduced = []
        full = len(rows) - len(rows) % 3
        for i in range(0, full, 3):
            x, y, z = rows[i:i + 3]
            reduced.append(wire(m, (x ^ y ^ z)[:width], f"{prefix}{level}_s{i // 3}"))
            reduced.append(wire(m, Cat(Const(0, 1), (x & y) | (x & z) | (y & z))[:width],
                                f"{prefix}{level}_c{i // 3}"))
        reduced += rows[full:]
        rows = reduced
    return rows


def lut_product_rows(m, a, b):
    """``a × b`` (unsigned) from logic, up to the last two rows: AND partial products
    reduced by a carry-save tree of 3:2 compressors.  Returns ``(row0, row1)`` whose sum
    (modulo ``2**(len(a) + len(b))``) is the product.  The expression contains no
    multiplication operator, so synthesis cannot map it to a DSP block whatever its
    options."""
    rows = partial_products(m, a, b)
    rows = csa_reduce(m, rows, csa_levels(len(rows)))
    if len(rows) == 1:
        return rows[0], Const(0, len(rows[0]))
    return rows[0], rows[1]


def lut_product(m, a, b):
    """``a × b`` (unsigned) from logic: :func:`lut_product_rows` and one final adder."""
    row0, row1 = lut_product_rows(m, a, b)
    return (row0 + row1)[:len(a) + len(b)]


class FloatMultiplier(FloatUnit):
    """``result = operands.a × operands.b``, one pair per cycle, fixed latency.

    Parameters
    ----------
    fmt : FloatFormat
        Operand and result format (``BFLOAT16``, ``FLOAT16``, ``TENSORFLOAT32``,
        ``FLOAT32`` or any other exponent/fraction widths).
    latency : int
        Register stages, 0 (combinational) to :data:`MAX_LATENCY`; ``result`` follows
        ``operands`` by exactly this many cycles.
    subnormals : ``"ieee"`` | ``"ftz"``
        Subnormal policy.
    multiplier : ``"dsp"`` | ``"lut"``
        Significand product on a DSP block or in logic.
    operand_fmt : FloatFormat or None
        A narrower operand format with ``fmt``'s exponent (e.g. ``BFLOAT16`` operands,
        ``FLOAT32`` product: bf16 × bf16 → fp32, exact unless the product leaves fp32's
        normal range).  The significand product is ``operand_fmt``'s size; the rounding
        is ``fmt``'s.  ``None``: operands in ``fmt``.

    Ports
    -----
    operands : In(stream.Signature(operands_layout(operand_fmt), always_ready=True))
        ``payload.a``, ``payload.b``, ``valid``.  Never stalls; ``ready`` is constant 1.
    result : Out(stream.Signature(float_struct(fmt), always_ready=True))
        The product and its ``valid``, ``latency`` cycles after the operands.
    """

    def __init__(self, fmt: FloatFormat = BFLOAT16, *, latency: int = DEFAULT_LATENCY,
                 subnormals: str = "ieee", multiplier: str = "dsp",
                 operand_fmt: FloatFormat | None = None):
        self._multiplier = multiplier

        def check():
            check_unit_parameters(fmt, latency, subnormals, MAX_LATENCY, multiplier=multiplier,
                                  multipliers=MULTIPLIERS)
            if operand_fmt is not None and (
                    not isinstance(operand_fmt, FloatFormat) or
                    (operand_fmt.exp_bits, operand_fmt.bias) != (fmt.exp_bits, fmt.bias) or
                    operand_fmt.man_bits > fmt.man_bits):
                raise ValueError(f"operand_fmt must be None or a format with fmt's exponent and "
                                 f"at most its fraction bits, not {operand_fmt!r}")
        super().__init__(fmt, latency, subnormals, check, operand_fmt=operand_fmt)

    @property
    def multiplier(self) -> str:
        return self._multiplier

    def elaborate(self, platform):
        m = Module()
        fmt, policy = self._fmt, self._subnormals
        man, exp_bits, p = fmt.man_bits, fmt.exp_bits, fmt.precision
        # Operand precision: the significands and their product are this size; the product
        # is then aligned to the top of 2p bits (the low bits of a widened operand are 0).
        q = self._operand_fmt.precision
        ieee = policy == "ieee"
        struct = float_struct(fmt)
        stages = Stages(m, registered_boundaries(self._latency, _PRIORITY), "fmul")
        a, b = self.operands.payload.a, self.operands.payload.b
        # Width of the signed exponents: from below -(bias + 2p) to above 3 · 2**(e-1).
        xw = max(exp_bits + 3, (fmt.bias + 2 * p).bit_length() + 2)
        # The right shift of a subnormal result: p + 1 moves every bit below the guard.
        r_max = p + 1
        rw = r_max.bit_length()

        # Step 0: unpack.
        a_zero = wire(m, a.is_zero(policy), "a_zero")
        b_zero = wire(m, b.is_zero(policy), "b_zero")
        a_inf, b_inf = wire(m, a.is_inf(), "a_inf"), wire(m, b.is_inf(), "b_inf")
        exp_sum = wire(m, a.effective_exponent() + b.effective_exponent(), "exp_sum")
        exp_wide = Cat(exp_sum, Const(0, xw - len(exp_sum))).as_signed()
        sig_a, sig_b = wire(m, a.significand(policy), "sig_a"), wire(m, b.significand(policy), "sig_b")
        unpacked = dict(
            valid=self.operands.valid,
            sign=a.sign ^ b.sign,
            nan=a.is_nan() | b.is_nan() | (a_inf & b_zero) | (a_zero & b_inf),
            inf=a_inf | b_inf,
            zero=a_zero | b_zero,
            x=(exp_wide - fmt.bias)[:xw].as_signed(),
            x_up=(exp_wide - (fmt.bias - 1))[:xw].as_signed(),
            sig_a=sig_a, sig_b=sig_b)
        if ieee:
            unpacked.update(lz_a=leading_zeros(sig_a), lz_b=leading_zeros(sig_b),
                            x_down=(exp_wide - (fmt.bias + 1))[:xw].as_signed())
        s0 = stages.cut(**unpacked)
        flags = lambda s: dict(valid=s.valid, sign=s.sign, nan=s.nan, inf=s.inf, zero=s.zero)

        # Step 1: prenormalize (ieee): both significands get their top bit set.  The
        # result exponent will be x + top (top: the product's top bit); below 1 the
        # result is subnormal, shifted right by 1 - (x + top).  Both candidates of each
        # are formed here, every one a single subtraction from registered values.
        if ieee:
            norm_a = (s0.sig_a << s0.lz_a)[:q]
            norm_b = (s0.sig_b << s0.lz_b)[:q]
            lz_sum = wire(m, Cat(s0.lz_a + s0.lz_b, Const(0, 1)).as_signed(), "lz_sum")
            exponents = dict(e0=s0.x - lz_sum, e1=s0.x_up - lz_sum,
                             shift0=lz_sum - s0.x_down, shift1=lz_sum - s0.x)
        else:
            norm_a, norm_b = s0.sig_a, s0.sig_b
            exponents = dict(e0=s0.x, e1=s0.x_up)
        exponents = {name: value[:xw].as_signed() for name, value in exponents.items()}
        s1 = stages.cut(**flags(s0), sig_a=norm_a, sig_b=norm_b, **exponents)

        # Step 2: significand product (2q bits, top bit in 2q - 1 or 2q - 2 unless an
        # operand is zero); alongside, both candidates of the right shift of a subnormal
        # result (at most r_max), from comparisons with constants (small LUT trees).
        if self._multiplier == "dsp":
            rows = dict(product=(s1.sig_a * s1.sig_b)[:2 * q])
        else:
            # The first half of the compressor tree's levels (the second half and the final
            # adder are the next step).
            tree = partial_products(m, s1.sig_a, s1.sig_b)
            first = (csa_levels(len(tree)) + 1) // 2
            rows = {f"row{i}": row for i, row in enumerate(csa_reduce(m, tree, first))}
        candidates = dict(e0=s1.e0, e1=s1.e1)
        if ieee:
            for top in (0, 1):
                shift = getattr(s1, f"shift{top}")
                normal = shift[-1] | (shift == 0)                       # shift <= 0
                far = ~shift[-1] & ~less_than(shift[:xw - 1], r_max)    # shift >= r_max
                candidates[f"r{top}"] = Mux(normal, 0, Mux(far, r_max, shift[:rw]))[:rw]
                candidates[f"normal{top}"] = normal
        s2a = stages.cut(**flags(s1), **rows, **candidates)

        # Step 3: the rest of the compressor tree and the final adder of the LUT product
        # (nothing for the DSP).
        if self._multiplier == "dsp":
            product = s2a.product
        else:
            rest = [getattr(s2a, name) for name in rows]
            rest = csa_reduce(m, rest, csa_levels(len(rest)), prefix="csb")
            product = (rest[0] + rest[1] if len(rest) == 2 else rest[0])[:2 * q]
        if q < p:
            product = Cat(Const(0, 2 * (p - q)), product)
        s2 = stages.cut(**flags(s2a), product=product,
                        **{name: getattr(s2a, name) for name in candidates})

        # Step 4: select by the product's top bit.  The significand and guard bit are
        # bits [p - 1, 2p) of the normalized product, the sticky bit the OR of the rest.
        top = s2.product[2 * p - 1]
        normalized = Mux(top, s2.product, Cat(Const(0, 1), s2.product[:2 * p - 1]))
        below = s2.product[:p - 2].any() if p > 2 else Const(0, 1)
        selected = dict(significand=normalized[p - 1:2 * p],
                        sticky=below | (top & s2.product[p - 2]) if p > 1 else Const(0, 1),
                        exponent=Mux(top, s2.e1, s2.e0))
        if ieee:
            normal = Mux(top, s2.normal1, s2.normal0)
            selected.update(exponent=Mux(normal, Mux(top, s2.e1, s2.e0), 0),
                            right=Mux(top, s2.r1, s2.r0))
        s3 = stages.cut(**flags(s2), **selected)

        # Step 5: the right shift of a subnormal result (its shifted-out bits join the
        # sticky bit), then the rounding decision.
        significand, sticky = s3.significand, s3.sticky
        if ieee:
            lost = Cat(significand[i] & (s3.right > i) for i in range(p + 1)).any()
            significand = wire(m, significand >> s3.right, "subnormal")
            sticky = sticky | lost
        round_up = significand[0] & (sticky | significand[1])
        # The range tests of the rounded exponent, for both values of the carry out of
        # the fraction (comparisons of the exponent with constants, small LUT trees).
        exponent = s3.exponent

        def at_least(c):
            return ~exponent[-1] & ~less_than(exponent[:-1], c) if c > 0 else \
                ~exponent[-1] | (exponent == 0) if c == 0 else Const(1, 1)

        ranges = dict(over=at_least(fmt.exp_all_ones), over_carry=at_least(fmt.exp_all_ones - 1))
        if not ieee:
            ranges.update(under=~at_least(1), under_carry=~at_least(0))
        s4 = stages.cut(**flags(s3), exponent=exponent, fraction=significand[1:p],
                        round_up=round_up, **ranges)

        # Step 6: round (the fraction's carry runs into the exponent); the range test
        # that applies.
        rounded = wire(m, (Cat(s4.fraction, s4.exponent) + s4.round_up)[:man + xw], "rounded")
        carry = s4.round_up & s4.fraction.all()
        s5 = stages.cut(**flags(s4), rounded=rounded[:man + exp_bits],
                        overflow=Mux(carry, s4.over_carry, s4.over),
                        underflow=Mux(carry, s4.under_carry, s4.under) if not ieee
                        else Const(0, 1))

        # Step 7: special cases.  A zero operand makes the (meaningless) exponent
        # irrelevant: it wins over overflow.
        infinity = Cat(Const(0, man), Const(fmt.exp_all_ones, exp_bits), s5.sign)
        zero = Cat(Const(0, man + exp_bits), s5.sign)
        y = Mux(s5.nan, struct.quiet_nan().as_value(),
                Mux(s5.inf, infinity,
                    Mux(s5.zero, zero,
                        Mux(s5.overflow, infinity,
                            Mux(s5.underflow, zero, Cat(s5.rounded, s5.sign))))))
        s6 = stages.cut(valid=s5.valid, y=y)
        assert stages.done
        m.d.comb += [self.result.valid.eq(s6.valid), self.result.payload.eq(s6.y)]
        return m
