"""Per-channel integer requantization, bit-exact with TFLite/gemmlowp.

For each lane, with ``shift`` in TFLite convention (positive = left shift)::

    x      = acc + bias                               (wraps modulo 2**acc_bits)
    x      = x << max(shift, 0)                       (wraps modulo 2**32)
    y      = SaturatingRoundingDoublingHighMul(x, multiplier)
    y      = RoundingDivideByPOT(y, max(-shift, 0))
    result = clamp(y + out_zero_point, out_min, out_max)

With ``raw`` set, ``result = acc + bias`` (sign-extended, for int32-output GEMMs).
The bias joins the accumulator at its own width, as in ``golden.gemm.qgemm``.

Eleven pipeline stages (input register; bias; left shift; two partial products; their
sum; nudge; truncating division; rounding shift and round-up decision; their sum; zero
point; clamp), none with more than one carry chain or barrel shifter, and the input
registered so the accumulator's memory read ends in a register: a row presented in
cycle t is readable in cycle ``t + 11``.  The
parameters are sampled together with the accumulator row and carried along, so
consecutive rows may use different parameters.  The executable specification is
``npugen.golden.quant.requantize``.

Stages 3–9 (``MultiplyByQuantizedMultiplier``) are the component
:class:`QuantizedMultiplier`, which the vector unit shares.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import SHIFT_BITS, quant_params_layout

__all__ = ["Requantizer", "LATENCY", "QuantizedMultiplier", "MBQM_LATENCY"]

#: Cycles from a row presented to its result.
LATENCY = 11
#: Cycles from the inputs of :class:`QuantizedMultiplier` to its result.
MBQM_LATENCY = 7

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


class QuantizedMultiplier(wiring.Component):
    """TFLite ``MultiplyByQuantizedMultiplier`` on ``lanes`` int32 lanes per cycle.

    Per lane, ``result = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(
    wrap32(x << max(shift, 0)), multiplier), max(-shift, 0))``, as
    ``npugen.golden.quant.multiply_by_quantized_multiplier`` (``shift`` in [-31, 30]).
    Seven pipeline stages (left shift; two partial products; their sum; nudge;
    truncating division; rounding shift and round-up decision; their sum): inputs of
    cycle t give ``result`` in cycle ``t + 7``; a new lane set may enter every cycle.

    Parameters
    ----------
    lanes : int
        Lanes processed in parallel, each with its own multiplier and shift.
    """

    def __init__(self, lanes):
        if isinstance(lanes, bool) or not isinstance(lanes, int):
            raise TypeError(f"lanes must be a positive integer, not {lanes!r}")
        if lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "x": In(data.ArrayLayout(signed(32), lanes)),
            "multiplier": In(data.ArrayLayout(signed(32), lanes)),
            "shift": In(data.ArrayLayout(signed(SHIFT_BITS), lanes)),
            "result": Out(data.ArrayLayout(signed(32), lanes)),
        })

    @property
    def latency(self):
        return MBQM_LATENCY

    def elaborate(self, platform):
        m = Module()
        for lane in range(self._lanes):
            # Stage 1: the left shift (wraps at 32 bits); the multiplier and shift are
            # carried to the stages that read them.
            shift_in = self.shift[lane]
            x = Signal(signed(32), name=f"x_{lane}")
            left = Mux(shift_in > 0, shift_in.as_unsigned(), 0)[:5]
            m.d.sync += x.eq((self.x[lane] << left)[:32].as_signed())
            multiplier = Signal(signed(32), name=f"multiplier_{lane}")
            shifts = [Signal(signed(SHIFT_BITS), name=f"shift_{lane}_s{i}") for i in range(1, 5)]
            m.d.sync += [multiplier.eq(self.multiplier[lane]), shifts[0].eq(shift_in)]
            m.d.sync += [shifts[i].eq(shifts[i - 1]) for i in range(1, 4)]

            # Stages 2-3: the 32×32 → 64-bit product from two registered 32×16 partial
            # products, then their sum.
            prod_lo = Signal(signed(50), name=f"prod_lo_{lane}")
            prod_hi = Signal(signed(48), name=f"prod_hi_{lane}")
            overflow = [Signal(name=f"overflow_{lane}_s{i}") for i in range(2, 5)]
            m.d.sync += [
                prod_lo.eq(x * multiplier[:16]),
                prod_hi.eq(x * multiplier[16:].as_signed()),
                overflow[0].eq((x == _INT32_MIN) & (multiplier == _INT32_MIN)),
                overflow[1].eq(overflow[0]),
                overflow[2].eq(overflow[1]),
            ]
            prod = Signal(signed(64), name=f"prod_{lane}")
            m.d.sync += prod.eq(prod_lo + prod_hi.shift_left(16))

            # Stages 4-5: SaturatingRoundingDoublingHighMul: nudge, then divide by 2**31
            # rounding toward zero (C++ integer division), saturating INT32_MIN².  The
            # rounding shift's amount and mask are prepared alongside from the shift.
            nudged = Signal(signed(65), name=f"nudged_{lane}")
            m.d.sync += nudged.eq(prod + Mux(prod >= 0, 1 << 30, 1 - (1 << 30)))
            high = Signal(signed(32), name=f"high_{lane}")
            quotient = (nudged >> 31) + ((nudged < 0) & (nudged[:31] != 0))
            right = Signal(range(32), name=f"right_{lane}")
            mask = Signal(unsigned(32), name=f"mask_{lane}")
            half = Signal(unsigned(32), name=f"half_{lane}")
            right_amount = Mux(shifts[3] < 0, (-shifts[3])[:5], 0)[:5]
            m.d.sync += [
                high.eq(Mux(overflow[2], _INT32_MAX, quotient[:32].as_signed())),
                right.eq(right_amount),
                mask.eq((Const(1, 33) << right_amount) - 1),
                half.eq((Const(1, 33) << right_amount) >> 1),
            ]

            # Stages 6-7: RoundingDivideByPOT (round half away from zero): the shift and
            # the round-up decision (remainder above half, or exactly half when positive),
            # then their sum.
            shifted = Signal(signed(32), name=f"shifted_{lane}")
            round_up = Signal(name=f"round_up_{lane}")
            remainder = high.as_unsigned() & mask
            m.d.sync += [
                shifted.eq(high >> right),
                round_up.eq((remainder > half) | ((remainder == half) & (high >= 0) &
                                                  (right != 0))),
            ]
            m.d.sync += self.result[lane].eq(shifted + round_up)
        return m


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
        last_use = {"bias": 0, "multiplier": 1, "shift": 1, "out_zero_point": 8,
                    "out_min": 9, "out_max": 9, "raw": 9}
        fields = dict(self._params_layout)
        p = [Signal(data.StructLayout({name: fields[name].shape for name in fields
                                       if last_use[name] >= i}), name=f"params_s{i + 1}")
             for i in range(LATENCY - 1)]
        valid = [Signal(name=f"valid_s{i}") for i in range(1, LATENCY)]
        raw_value = [Signal(data.ArrayLayout(signed(32), cols), name=f"raw_s{i}")
                     for i in range(1, LATENCY)]
        acc = Signal.like(self.acc, name="acc_s1")
        m.submodules.mbqm = mbqm = QuantizedMultiplier(cols)
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
            # Stages 3-9: MultiplyByQuantizedMultiplier.
            m.d.comb += [mbqm.x[lane].eq(raw_value[1][lane]),
                         mbqm.multiplier[lane].eq(p[1].multiplier[lane]),
                         mbqm.shift[lane].eq(p[1].shift[lane])]
            divided = mbqm.result[lane]

            # Stages 10-11: output zero point (no wrap), then the clamp, or the raw sum.
            offset = Signal(signed(34), name=f"offset_{lane}")
            m.d.sync += offset.eq(divided + p[8].out_zero_point)
            clamped = Mux(offset < p[9].out_min, p[9].out_min,
                          Mux(offset > p[9].out_max, p[9].out_max, offset))
            m.d.sync += self.result[lane].eq(Mux(p[9].raw, raw_value[9][lane], clamped))
        return m
