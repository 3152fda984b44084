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
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import quant_params_layout

__all__ = ["Requantizer", "LATENCY"]

#: Cycles from a row presented to its result.
LATENCY = 11

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

        # p[i], valid[i], raw[i]: the row's parameters, valid flag and raw sum in the
        # register after stage i + 1 (stage k reads p[k - 2]).  Each parameter travels
        # only as far as the last stage that reads it.
        last_use = {"bias": 0, "multiplier": 2, "shift": 5, "out_zero_point": 8,
                    "out_min": 9, "out_max": 9, "raw": 9}
        fields = dict(self._params_layout)
        p = [Signal(data.StructLayout({name: fields[name].shape for name in fields
                                       if last_use[name] >= i}), name=f"params_s{i + 1}")
             for i in range(LATENCY - 1)]
        valid = [Signal(name=f"valid_s{i}") for i in range(1, LATENCY)]
        raw_value = [Signal(data.ArrayLayout(signed(32), cols), name=f"raw_s{i}")
                     for i in range(1, LATENCY)]
        acc = Signal.like(self.acc, name="acc_s1")
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
            # at its width, sign-extended.  Stage 3: the left shift (wraps at 32 bits).
            m.d.sync += raw_value[1][lane].eq(
                (acc[lane] + p[0].bias[lane])[:self._config.acc_bits].as_signed())
            x = Signal(signed(32), name=f"x_{lane}")
            left = Mux(p[1].shift[lane] > 0, p[1].shift[lane].as_unsigned(), 0)[:5]
            m.d.sync += x.eq((raw_value[1][lane] << left)[:32].as_signed())

            # Stages 4-5: the 32×32 → 64-bit product from two registered 32×16 partial
            # products, then their sum.
            multiplier = p[2].multiplier[lane]
            prod_lo = Signal(signed(50), name=f"prod_lo_{lane}")
            prod_hi = Signal(signed(48), name=f"prod_hi_{lane}")
            overflow = [Signal(name=f"overflow_{lane}_s{i}") for i in range(4, 7)]
            m.d.sync += [
                prod_lo.eq(x * multiplier[:16]),
                prod_hi.eq(x * multiplier[16:].as_signed()),
                overflow[0].eq((x == _INT32_MIN) & (multiplier == _INT32_MIN)),
                overflow[1].eq(overflow[0]),
                overflow[2].eq(overflow[1]),
            ]
            prod = Signal(signed(64), name=f"prod_{lane}")
            m.d.sync += prod.eq(prod_lo + prod_hi.shift_left(16))

            # Stages 6-7: SaturatingRoundingDoublingHighMul: nudge, then divide by 2**31
            # rounding toward zero (C++ integer division), saturating INT32_MIN².  The
            # rounding shift's amount and mask are prepared alongside from the parameters.
            nudged = Signal(signed(65), name=f"nudged_{lane}")
            m.d.sync += nudged.eq(prod + Mux(prod >= 0, 1 << 30, 1 - (1 << 30)))
            high = Signal(signed(32), name=f"high_{lane}")
            quotient = (nudged >> 31) + ((nudged < 0) & (nudged[:31] != 0))
            right = Signal(range(32), name=f"right_{lane}")
            mask = Signal(unsigned(32), name=f"mask_{lane}")
            half = Signal(unsigned(32), name=f"half_{lane}")
            right_amount = Mux(p[5].shift[lane] < 0, (-p[5].shift[lane])[:5], 0)[:5]
            m.d.sync += [
                high.eq(Mux(overflow[2], _INT32_MAX, quotient[:32].as_signed())),
                right.eq(right_amount),
                mask.eq((Const(1, 33) << right_amount) - 1),
                half.eq((Const(1, 33) << right_amount) >> 1),
            ]

            # Stages 8-9: RoundingDivideByPOT (round half away from zero): the shift and
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
            divided = Signal(signed(32), name=f"divided_{lane}")
            m.d.sync += divided.eq(shifted + round_up)

            # Stages 10-11: output zero point (no wrap), then the clamp, or the raw sum.
            offset = Signal(signed(34), name=f"offset_{lane}")
            m.d.sync += offset.eq(divided + p[8].out_zero_point)
            clamped = Mux(offset < p[9].out_min, p[9].out_min,
                          Mux(offset > p[9].out_max, p[9].out_max, offset))
            m.d.sync += self.result[lane].eq(Mux(p[9].raw, raw_value[9][lane], clamped))
        return m
