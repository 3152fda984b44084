"""Accumulator buffer: sums the partial results of consecutive K tiles.

One row of ``cols`` accumulators per address (``acc_depth`` rows).  Each incoming
partial-sum row is added to the stored row (or, with ``first``, replaces it) in a
read-modify-write pipeline that accepts a row every cycle; the read port is
transparent to the write port, so a row revisited on the very next cycle (M = 1)
sees the value just written.  Rows flagged ``last`` leave on ``sum``.

Latency: a row presented in cycle t has its sum on ``sum`` in cycle ``t + 1``
(combinational from the registered read).  Rows that are not ``last`` are written
back at the end of t + 1; a ``last`` row leaves on ``sum`` and is not written back,
so the next tile for that address must start with ``first``.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["AccumulatorBuffer"]


class AccumulatorBuffer(wiring.Component):
    """Read-modify-write accumulator rows.

    Parameters
    ----------
    config : NPUConfig
        Supplies ``cols``, ``acc_bits`` and ``acc_depth``.
    tag_shape : shape
        Side information carried from ``tag_in`` to ``tag_out`` with the row.
    """

    def __init__(self, config, *, tag_shape=unsigned(1)):
        self._config = config
        row = data.ArrayLayout(signed(config.acc_bits), config.cols)
        self._row_layout = row
        super().__init__({
            "valid_in": In(1),
            "addr": In(range(config.acc_depth)),
            "first": In(1),
            "last": In(1),
            "tag_in": In(tag_shape),
            "psum": In(row),
            "valid_out": Out(1),
            "tag_out": Out(tag_shape),
            "sum": Out(row),
        })

    @property
    def latency(self):
        return 1

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.memory = memory = Memory(shape=self._row_layout, depth=cfg.acc_depth,
                                              init=[])
        write = memory.write_port()
        read = memory.read_port(transparent_for=(write,))

        valid = Signal()
        first = Signal()
        last = Signal()
        addr = Signal.like(self.addr)
        psum = Signal(self._row_layout)
        m.d.comb += read.addr.eq(self.addr)
        m.d.sync += [
            valid.eq(self.valid_in), first.eq(self.first), last.eq(self.last),
            addr.eq(self.addr), psum.eq(self.psum), self.tag_out.eq(self.tag_in),
        ]

        for c in range(cfg.cols):
            m.d.comb += self.sum[c].eq(psum[c] + Mux(first, 0, read.data[c]))
        m.d.comb += [
            write.addr.eq(addr),
            write.data.eq(self.sum),
            write.en.eq(valid & ~last),
            self.valid_out.eq(valid & last),
        ]
        return m
