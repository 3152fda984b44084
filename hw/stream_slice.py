"""A one-entry register slice of a ``lib.stream`` (timing isolation between blocks).

::

    i ──► [payload, full] ──► o        i.ready = ~full (a register)

Everything the slice drives is a register or one inverter of one: ``o.valid`` is
``full``, ``o.payload`` the registered payload (loaded from ``i.payload`` in every
cycle the slice is empty), ``i.ready`` is ``~full``.  So no combinational path crosses
it in either direction: the upstream's ``valid`` reaches only ``full``, its ``payload``
only the payload register's data inputs, and the downstream's ``ready`` only ``full``.

Latency: an item accepted on ``i`` in cycle t is offered on ``o`` from t + 1 on.
Throughput: one item every 2 cycles (``i.ready`` is low while the entry is held, also in
the cycle it leaves).  ``clear`` empties the slice at the end of the cycle (the entry and
any item accepted on ``i`` in that cycle are dropped); ``o.valid`` is not gated by it, so
the downstream must not take an item in a cycle with ``clear``.
"""

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamSlice"]


class StreamSlice(wiring.Component):
    """A one-entry register slice of a stream of ``shape`` (see the module documentation).

    Ports
    -----
    i : In(stream.Signature(shape))
        Upstream; ``ready`` is ``~full``.
    o : Out(stream.Signature(shape))
        Downstream; ``valid`` is ``full``, ``payload`` a register.
    clear : In(1)
        Drop the entry (and an item accepted in the same cycle).
    full : Out(1)
        The slice holds an item (a register).
    """

    def __init__(self, shape):
        try:
            if isinstance(shape, bool):
                raise TypeError
            width = Shape.cast(shape).width
        except TypeError:
            raise TypeError(f"shape must be a shape-castable object, not {shape!r}") from None
        if width == 0:
            raise ValueError(f"shape must be at least 1 bit wide, not {shape!r}")
        self._shape = shape
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "clear": In(1),
            "full": Out(1),
        })

    @property
    def shape(self):
        return self._shape

    def elaborate(self, platform):
        m = Module()
        full = Signal()
        payload = Signal(self._shape, reset_less=True)    # data only: read when full
        m.d.comb += [self.i.ready.eq(~full), self.o.valid.eq(full),
                     self.o.payload.eq(payload), self.full.eq(full)]
        with m.If(self.clear):
            m.d.sync += full.eq(0)
        with m.Elif(self.i.valid & ~full):
            m.d.sync += full.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += full.eq(0)
        # The payload follows `i` while the slice is empty: its enable is a register.
        with m.If(~full):
            m.d.sync += payload.eq(self.i.payload)
        return m
