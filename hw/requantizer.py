"""Per-channel integer requantization, bit-exact with TFLite/gemmlowp.

For each lane, with ``shift`` in TFLite convention (positive = left shift)::

    x      = acc + bias                               (wraps modulo 2**acc_bits)
    x      = x << max(shift, 0)                       (wraps modulo 2**32)
    y      = SaturatingRoundingDoublingHighMul(x, multiplier)
    y      = RoundingDivideByPOT(y, max(-shift, 0))
    result = clamp(y + out_zero_point, out_min, out_max)

With ``raw`` set, ``result = acc + bias`` (sign-extended, for int32-output GEMMs).
The bias joins the accumulator at its own width, as in ``golden.gemm.qgemm``.

Seven pipeline stages (bias and shift; two partial products; their sum; nudge;
truncating division; rounding shift; zero point and clamp): a row presented in cycle t
is readable in cycle ``t + 7``.  The
parameters are sampled together with the accumulator row and carried along, so
consecutive rows may use different parameters.  The executable specification is
``npugen.golden.quant.requantize``.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import quant_params_layout

__all__ = ["Requantizer", "LATENCY"]

#: Cycles from a row presented to its result.
LATENCY = 7

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


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
        p_in = self.params

        # Per-stage copies of the parameters a later stage still needs.
        p = [Signal(self._params_layout, name=f"params_s{i}") for i in range(1, LATENCY)]
        valid = [Signal(name=f"valid_s{i}") for i in range(1, LATENCY)]
        raw_value = [Signal(data.ArrayLayout(signed(32), cols), name=f"raw_s{i}")
                     for i in range(1, LATENCY)]
        m.d.sync += [valid[0].eq(self.valid_in), p[0].eq(p_in)]
        for i in range(1, LATENCY - 1):
            m.d.sync += [valid[i].eq(valid[i - 1]), p[i].eq(p[i - 1]),
                         raw_value[i].eq(raw_value[i - 1])]
        m.d.sync += self.valid_out.eq(valid[-1])

        for lane in range(cols):
            # Stage 1: bias and left shift.
            x = Signal(signed(32), name=f"x_{lane}")
            x_sum = (self.acc[lane] + p_in.bias[lane])[:self._config.acc_bits].as_signed()
            left = Mux(p_in.shift[lane] > 0, p_in.shift[lane].as_unsigned(), 0)[:5]
            m.d.sync += [
                raw_value[0][lane].eq(x_sum),
                x.eq((x_sum << left)[:32].as_signed()),
            ]

            # Stages 2-3: the 32×32 → 64-bit product from two registered partial
            # products (the multiplier halves map onto DSP blocks with a register after).
            multiplier = p[0].multiplier[lane]
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
            # rounding toward zero (C++ integer division), saturating INT32_MIN².
            nudged = Signal(signed(65), name=f"nudged_{lane}")
            m.d.sync += nudged.eq(prod + Mux(prod >= 0, 1 << 30, 1 - (1 << 30)))
            high = Signal(signed(32), name=f"high_{lane}")
            quotient = (nudged >> 31) + ((nudged < 0) & (nudged[:31] != 0))
            m.d.sync += high.eq(Mux(overflow[2], _INT32_MAX, quotient[:32].as_signed()))

            # Stage 6: RoundingDivideByPOT (round half away from zero).
            right = Mux(p[4].shift[lane] < 0, (-p[4].shift[lane])[:5], 0)[:5]
            mask = Signal(unsigned(32), name=f"mask_{lane}")
            m.d.comb += mask.eq((Const(1, 33) << right) - 1)
            remainder = high.as_unsigned() & mask
            threshold = (mask >> 1) + (high < 0)
            divided = Signal(signed(32), name=f"divided_{lane}")
            m.d.sync += divided.eq((high >> right) + (remainder > threshold))

            # Stage 7: output zero point and clamp (no wrap), or the raw sum.
            shifted = Signal(signed(34), name=f"offset_{lane}")
            m.d.comb += shifted.eq(divided + p[5].out_zero_point)
            clamped = Mux(shifted < p[5].out_min, p[5].out_min,
                          Mux(shifted > p[5].out_max, p[5].out_max, shifted))
            m.d.sync += self.result[lane].eq(Mux(p[5].raw, raw_value[5][lane], clamped))
        return m
