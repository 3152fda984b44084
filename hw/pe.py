"""Weight-stationary INT8 processing element.

Each PE holds an *active* weight used by its multiplier and a *shadow* weight that the
next tile's weights shift through (column-wise, bottom to top) while the array keeps
computing.  The ``swap`` flag travels with the first activation row of a tile; when it
arrives the shadow weight becomes active, so the switch follows the skewed wavefront
exactly and consecutive tiles need no drain.

Per clock edge::

    act_reg  <= act_in          (passed right as act_out)
    w_active <= w_shadow        if swap_in
    product  <= act_reg * w_active
    psum_out <= psum_in + product   (wraps modulo 2**acc_bits)
    w_shadow <= w_shadow_in     if shift  (passed up as w_shadow_out)

Latency: ``act_out`` 1 cycle after ``act_in``; ``psum_out`` carries the product of
an activation 2 cycles after it reached ``act_reg``, so a column of PEs fed with a
1-cycle skew per row accumulates in one pass.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ProcessingElement"]


class ProcessingElement(wiring.Component):
    """One MAC cell: ``(lane_bits+1)``-bit zero-point-corrected activation × int8 weight.

    Parameters
    ----------
    act_bits : int
        Width of the activation after zero-point subtraction (``lane_bits + 1``).
    weight_bits : int
        Width of a weight.
    acc_bits : int
        Width of the partial sum.
    """

    def __init__(self, *, act_bits=9, weight_bits=8, acc_bits=32):
        for name, value, lo, hi in (("act_bits", act_bits, 2, 33),
                                    ("weight_bits", weight_bits, 2, 32),
                                    ("acc_bits", acc_bits, 2, 64)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
        self._act_bits = act_bits
        self._weight_bits = weight_bits
        self._acc_bits = acc_bits
        super().__init__({
            "act_in": In(signed(act_bits)),
            "swap_in": In(1),
            "act_out": Out(signed(act_bits)),
            "swap_out": Out(1),
            "psum_in": In(signed(acc_bits)),
            "psum_out": Out(signed(acc_bits)),
            "shift": In(1),
            "w_shadow_in": In(signed(weight_bits)),
            "w_shadow_out": Out(signed(weight_bits)),
        })

    @property
    def act_bits(self):
        return self._act_bits

    @property
    def weight_bits(self):
        return self._weight_bits

    @property
    def acc_bits(self):
        return self._acc_bits

    def elaborate(self, platform):
        m = Module()
        w_active = Signal(signed(self._weight_bits))
        product = Signal(signed(self._act_bits + self._weight_bits))

        m.d.sync += [
            self.act_out.eq(self.act_in),
            self.swap_out.eq(self.swap_in),
            product.eq(self.act_out * w_active),
            self.psum_out.eq(self.psum_in + product),
        ]
        with m.If(self.swap_in):
            m.d.sync += w_active.eq(self.w_shadow_out)
        with m.If(self.shift):
            m.d.sync += self.w_shadow_out.eq(self.w_shadow_in)
        return m

