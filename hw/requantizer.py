"""Per-channel integer requantization, bit-exact with TFLite/gemmlowp.

For each lane, with ``shift`` in TFLite convention (positive = left shift)::

    x      = acc + bias                               (wraps modulo 2**acc_bits)
    x      = x << max(shift, 0)                       (wraps modulo 2**32)
    y      = SaturatingRoundingDoublingHighMul(x, multiplier)
    y      = RoundingDivideByPOT(y, max(-shift, 0))
    result = clamp(y + out_zero_point, out_min, out_max)

With ``raw`` set, ``result = acc + bias`` (sign-extended, for int32-output GEMMs).
The bias joins the accumulator at its own width, as in ``golden.gemm.qgemm``.

Eleven pipeline stages: the input register; the bias; the seven stages of
:class:`QuantizedMultiplier` (``MultiplyByQuantizedMultiplier``, shared with the vector
unit), whose rounding adder also adds the output zero point; the clamp decision (8-bit
comparisons: below ``out_min``, above ``out_max``); the bound, value or raw multiplexer.
No stage holds more than one carry chain or barrel shifter: a row presented in cycle t is
readable in cycle ``t + 11``.  The parameters are sampled together with the accumulator
row and carried along, so consecutive rows may use different parameters.  Only the
valid flags have a reset (the data registers need none).  The executable specification
is ``npugen.golden.quant.requantize``.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .fp_pipeline import less_than
from .layouts import QPARAM_BITS, SHIFT_BITS, quant_params_layout

__all__ = ["Requantizer", "LATENCY", "QuantizedMultiplier", "MBQM_LATENCY", "shift_left_wrapped"]

#: Cycles from a row presented to its result.
LATENCY = 11
#: Cycles from the inputs of :class:`QuantizedMultiplier` to its result.
MBQM_LATENCY = 7

#: Width of the unsigned low halves of the partial products (15 × 15 bits < 2**30).
_SPLIT = 15

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


def shift_left_wrapped(value, amount):
    """``value << amount`` modulo ``2**32`` (``value`` 32 bits, ``amount`` 5 bits,
    unsigned result), combinational: a rotation masked by a thermometer code of the
    amount.  The zeros come from an AND, not from multiplexers with a constant input,
    which synthesis would turn into a different synchronous reset for every bit."""
    rotated = Value.cast(value).as_unsigned()
    for k in range(5):
        rotated = Mux(amount[k], rotated.rotate_left(1 << k), rotated)
    keep = Cat(less_than(amount, i + 1) for i in range(32))
    return rotated & keep


class QuantizedMultiplier(wiring.Component):
    """TFLite ``MultiplyByQuantizedMultiplier`` on ``lanes`` int32 lanes per cycle.

    Per lane, ``result = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(
    wrap32(x << max(shift, 0)), multiplier), max(-shift, 0))``, as
    ``npugen.golden.quant.multiply_by_quantized_multiplier`` (``shift`` in [-31, 30]).
    Inputs of cycle t give ``result`` in cycle ``t + 7``; a new lane set may enter every
    cycle.  The two roundings become carries of the adders that are there anyway:

    * SaturatingRoundingDoublingHighMul's nudge and truncating division equal
      ``q = (p + 2³⁰) >> 31`` for every sign of the product ``p``; the ``2³⁰`` is a free
      bit of the lowest partial product (15 × 15 bits, below 2³⁰), so ``q`` is bits
      [31, 64) of the partial-product sum;
    * RoundingDivideByPOT by ``e`` (round half away from zero) is
      ``(u + 1 − d) >> 1`` with ``u = 2q >> e`` (arithmetic) and ``d`` set when ``q < 0``
      and no set bit was shifted out: one adder with ``1 − d`` as its carry input.

    Stages: (1) left shift (a rotation masked by a thermometer code); (2) four 18×18
    partial products (DSP blocks with input and output registers); (3) two partial
    sums; (4) their sum, ``q`` (saturated when both operands are ``INT32_MIN``); (5, 6)
    the right shift by ``4·⌊e/4⌋``, then by ``e mod 4``, keeping a sticky bit; (7) the
    rounding adder.

    With ``offset_bits`` the component also adds a per-lane ``offset`` (sampled with
    ``x``) in the rounding adder, at no cost in stages or adders: ``result`` is then
    ``MultiplyByQuantizedMultiplier(...) + offset`` exactly, ``max(32, offset_bits) + 1``
    bits wide (the requantizer's output zero point).

    With ``left_shift=False`` stage 1 only registers ``x``: the caller has already
    shifted it left by ``max(shift, 0)`` (wrapped to 32 bits, e.g. with
    :func:`shift_left_wrapped` in a stage of its own), and only the right shift by
    ``max(-shift, 0)`` is applied.

    Parameters
    ----------
    lanes : int
        Lanes processed in parallel, each with its own multiplier and shift.
    offset_bits : int
        Width of the ``offset`` input (0: no offset, ``result`` is int32).
    left_shift : bool
        Whether stage 1 shifts ``x`` left by ``max(shift, 0)``.
    """

    def __init__(self, lanes, *, offset_bits=0, left_shift=True):
        if isinstance(lanes, bool) or not isinstance(lanes, int):
            raise TypeError(f"lanes must be a positive integer, not {lanes!r}")
        if lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if isinstance(offset_bits, bool) or not isinstance(offset_bits, int):
            raise TypeError(f"offset_bits must be an integer in 0..32, not {offset_bits!r}")
        if not 0 <= offset_bits <= 32:
            raise ValueError(f"offset_bits must be an integer in 0..32, not {offset_bits!r}")
        if not isinstance(left_shift, bool):
            raise TypeError(f"left_shift must be a bool, not {left_shift!r}")
        self._lanes = lanes
        self._offset_bits = offset_bits
        self._left_shift = left_shift
        result_bits = max(32, offset_bits) + 1 if offset_bits else 32
        members = {
            "x": In(data.ArrayLayout(signed(32), lanes)),
            "multiplier": In(data.ArrayLayout(signed(32), lanes)),
            "shift": In(data.ArrayLayout(signed(SHIFT_BITS), lanes)),
            "result": Out(data.ArrayLayout(signed(result_bits), lanes)),
        }
        if offset_bits:
            members["offset"] = In(data.ArrayLayout(signed(offset_bits), lanes))
        super().__init__(members)

    @property
    def latency(self):
        return MBQM_LATENCY

    def elaborate(self, platform):
        m = Module()
        for lane in range(self._lanes):
            self._lane(m, lane)
        return m

    def _lane(self, m, lane):
        def reg(shape, name):
            # No reset: the lane holds data only (see Requantizer).
            return Signal(shape, name=f"{name}_{lane}", reset_less=True)

        # Stage 1: the left shift (wraps at 32 bits); the right shift's amount e.
        shift_in = self.shift[lane]
        x = reg(signed(32), "x")
        multiplier = reg(signed(32), "multiplier")
        negative = shift_in[-1]
        if self._left_shift:
            shifted = shift_left_wrapped(self.x[lane], Mux(negative, 0, shift_in[:5]))
        else:
            shifted = self.x[lane]
        right = [reg(range(32), f"right_s{i}") for i in range(1, 6)]
        m.d.sync += [
            x.eq(shifted.as_signed()),
            multiplier.eq(self.multiplier[lane]),
            right[0].eq(Mux(negative, (-shift_in)[:5], 0)),
        ]
        m.d.sync += [right[i].eq(right[i - 1]) for i in range(1, 5)]
        offset = 0
        if self._offset_bits:
            offsets = [reg(signed(self._offset_bits), f"offset_s{i}") for i in range(1, 7)]
            m.d.sync += offsets[0].eq(self.offset[lane])
            m.d.sync += [offsets[i].eq(offsets[i - 1]) for i in range(1, 6)]
            offset = offsets[5]

        # Stage 2: partial products of 15-bit low and 17-bit signed high halves, each one
        # DSP block.  INT32_MIN × INT32_MIN saturates (flagged alongside).
        x_lo, x_hi = x[:_SPLIT], x[_SPLIT:].as_signed()
        m_lo, m_hi = multiplier[:_SPLIT], multiplier[_SPLIT:].as_signed()
        pp_ll = reg(unsigned(2 * _SPLIT), "pp_ll")
        pp_lh = reg(signed(_SPLIT + 18), "pp_lh")
        pp_hl = reg(signed(_SPLIT + 18), "pp_hl")
        pp_hh = reg(signed(34), "pp_hh")
        overflow = [reg(1, f"overflow_s{i}") for i in range(2, 4)]
        m.d.sync += [
            pp_ll.eq(x_lo * m_lo),
            pp_lh.eq(x_lo * m_hi),
            pp_hl.eq(x_hi * m_lo),
            pp_hh.eq(x_hi * m_hi),
            overflow[0].eq((x == _INT32_MIN) & (multiplier == _INT32_MIN)),
            overflow[1].eq(overflow[0]),
        ]

        # Stage 3: two partial sums; SaturatingRoundingDoublingHighMul's 2**30 fills bit
        # 30 of pp_ll, which is below 2**30.
        low = reg(signed(2 * _SPLIT + 19), "sum_low")
        high = reg(signed(2 * _SPLIT + 19), "sum_high")
        m.d.sync += [
            low.eq(Cat(pp_ll, Const(1, 1)).as_unsigned() + pp_lh.shift_left(_SPLIT)),
            high.eq(pp_hl + pp_hh.shift_left(_SPLIT)),
        ]

        # Stage 4: q = (p + 2**30) >> 31, INT32_MAX when saturating (no reset, so the
        # saturation is the flip-flops' synchronous set/reset).
        total = (low + high.shift_left(_SPLIT))[:64].as_signed()
        q = reg(signed(33), "q")
        m.d.sync += q.eq(Mux(overflow[1], _INT32_MAX, total[31:64].as_signed()))

        # Stages 5-6: u = 2q >> e with a sticky bit of what is shifted out (by 4·(e // 4),
        # then by e % 4).  d: q is negative and nothing was shifted out.
        doubled = Cat(Const(0, 1), q).as_signed()                       # 34 bits
        coarse = reg(signed(34), "u_coarse")
        sticky = reg(1, "sticky_coarse")
        groups = right[3][2:5]                                          # e // 4
        m.d.sync += [
            coarse.eq(doubled >> Cat(Const(0, 2), groups)),
            sticky.eq(Cat((groups > g) & doubled[4 * g:4 * g + 4].any()
                          for g in range(8)).any()),
        ]
        fine = right[4][:2]                                             # e % 4
        u = reg(signed(34), "u")
        d = reg(1, "d")
        m.d.sync += [
            u.eq(coarse >> fine),
            d.eq(coarse[-1] & ~sticky & ~Cat((fine > i) & coarse[i] for i in range(3)).any()),
        ]

        # Stage 7: RoundingDivideByPOT = (u + 1 - d) >> 1, plus the offset: one adder,
        # 1 - d in the free low bit of 2·offset.
        total = u + Cat(~d, Value.cast(offset)).as_signed()
        result = reg(self.result[lane].shape(), "result")
        m.d.comb += self.result[lane].eq(result)
        m.d.sync += result.eq(total[1:1 + len(self.result[lane])].as_signed())


class Requantizer(wiring.Component):
    """Requantizes one row of ``config.cols`` accumulators per cycle.

    Parameters
    ----------
    config : NPUConfig
        Supplies ``cols`` (lanes) and ``acc_bits`` (accumulator width, sign-extended).
    """

    def __init__(self, config):
        self._config = config
        self._params_layout = quant_params_layout(config)
        super().__init__({
            "valid_in": In(1),
            "acc": In(data.ArrayLayout(signed(config.acc_bits), config.cols)),
            "params": In(self._params_layout),
            "valid_out": Out(1),
            "result": Out(data.ArrayLayout(signed(32), config.cols)),
        })

    @property
    def latency(self):
        return LATENCY

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols

        # p[i], valid[i], raw[i]: the row's parameters, valid flag and raw sum in the
        # register after stage i + 1 (stage k reads p[k - 2]).  Each parameter travels
        # only as far as the last stage that reads it.
        last_use = {"bias": 0, "multiplier": 1, "shift": 1, "out_zero_point": 1,
                    "out_min": 9, "out_max": 9, "raw": 9}
        fields = dict(self._params_layout)
        p = [Signal(data.StructLayout({name: fields[name].shape for name in fields
                                       if last_use[name] >= i}), name=f"params_s{i + 1}",
                    reset_less=True)
             for i in range(LATENCY - 1)]
        valid = [Signal(name=f"valid_s{i}") for i in range(1, LATENCY)]
        raw_value = [Signal(data.ArrayLayout(signed(32), cols), name=f"raw_s{i}",
                            reset_less=True)
                     for i in range(1, LATENCY)]
        acc = Signal.like(self.acc, name="acc_s1", reset_less=True)
        result = Signal.like(self.result, name="result_s11", reset_less=True)
        m.d.comb += self.result.eq(result)
        m.submodules.mbqm = mbqm = QuantizedMultiplier(cols, offset_bits=QPARAM_BITS)
        m.d.sync += [valid[0].eq(self.valid_in), p[0].eq(self.params), acc.eq(self.acc)]
        for i in range(1, LATENCY - 1):
            m.d.sync += valid[i].eq(valid[i - 1])
            m.d.sync += [getattr(p[i], name).eq(getattr(p[i - 1], name))
                         for name, _ in p[i].shape()]
            if i >= 2:
                m.d.sync += raw_value[i].eq(raw_value[i - 1])
        m.d.sync += self.valid_out.eq(valid[-1])

        for lane in range(cols):
            # Stage 1 registers the row (above).  Stage 2: the bias joins the accumulator
            # at its width, sign-extended.
            m.d.sync += raw_value[1][lane].eq(
                (acc[lane] + p[0].bias[lane])[:self._config.acc_bits].as_signed())
            # Stages 3-9: MultiplyByQuantizedMultiplier plus the output zero point (no
            # wrap), added by its rounding adder.
            m.d.comb += [mbqm.x[lane].eq(raw_value[1][lane]),
                         mbqm.multiplier[lane].eq(p[1].multiplier[lane]),
                         mbqm.shift[lane].eq(p[1].shift[lane]),
                         mbqm.offset[lane].eq(p[1].out_zero_point)]
            offset = mbqm.result[lane]

            # Stage 10: the clamp decision.  The bounds are 8-bit: a value outside
            # [-128, 127] (high bits not all equal) clamps by its sign, one inside is
            # compared on its low byte, so no comparison spans the whole width.  Only
            # the two flags are registered (one LUT after each comparison's carry chain).
            high = offset[QPARAM_BITS - 1:]
            inside = (high == 0) | (high == (1 << len(high)) - 1)
            low = offset[:QPARAM_BITS].as_signed()
            value = Signal(signed(QPARAM_BITS), name=f"value_{lane}", reset_less=True)
            below = Signal(name=f"below_{lane}", reset_less=True)
            above = Signal(name=f"above_{lane}", reset_less=True)
            m.d.sync += [value.eq(low),
                         below.eq(Mux(inside, low < p[8].out_min, offset[-1])),
                         above.eq(Mux(inside, low > p[8].out_max, ~offset[-1]))]
            # Stage 11: the bound that applies, the value, or the raw sum.
            m.d.sync += result[lane].eq(Mux(p[9].raw, raw_value[9][lane],
                                            Mux(below, p[9].out_min,
                                                Mux(above, p[9].out_max, value))))
        return m
