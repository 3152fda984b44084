"""Accumulator buffer: sums the partial results of consecutive K tiles.

One row of ``cols`` accumulators per address (``acc_depth`` rows).  Each incoming
partial-sum row is added to the stored row (or, with ``first``, replaces it) in a
read-modify-write pipeline that accepts a row every cycle.  Rows flagged ``last`` leave
on ``sum`` and are not written back, so the next tile for that address must start with
``first``.

Pipeline (a row presented in cycle t):

* cycle t: the memory read of the row's address;
* cycle t + 1: the read data goes into a register, so the memory's slow clock-to-output
  time and the adder are in different cycles;
* cycle t + 2: ``sum = psum + (first ? 0 : stored)``, combinational on ``sum`` (with
  ``valid_out``, ``tag_out``); a row that is not ``last`` is written back at the end of
  the cycle.

The read of cycle t misses the write-backs of the two rows before it (rows t − 1 and
t − 2 are written at the end of cycles t + 1 and t).  When one of those rows has the same
address (M = 1 or 2 rows revisited back to back), its sum is forwarded from a register
instead of the memory data, the newer one first.  The choice is made in cycle t + 1, so
the adder of cycle t + 2 sees one of two registers (or zero for ``first``) through one
level of logic.

With ``fp32=True`` (a bf16 array) a row presented with ``fp32_in`` holds FP32 sums:
the stored row is added with an FP32 adder (round to nearest even; combinational in
cycle t + 2 like the integer adder) and ``first`` takes the row's bits unchanged.

Latency 2: a row presented in cycle t has its sum on ``sum`` in cycle ``t + 2``.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from npugen.golden.floating import FLOAT32

from .fp_adder import FloatAdder

__all__ = ["AccumulatorBuffer", "LATENCY"]

#: Cycles from a row presented to its sum on ``sum``.
LATENCY = 2


class AccumulatorBuffer(wiring.Component):
    """Read-modify-write accumulator rows.

    Parameters
    ----------
    config : NPUConfig
        Supplies ``cols``, ``acc_bits`` and ``acc_depth``.
    tag_shape : shape
        Side information carried from ``tag_in`` to ``tag_out`` with the row.
    fp32 : bool
        Build the FP32 adders, used by rows presented with ``fp32_in``.
    """

    def __init__(self, config, *, tag_shape=unsigned(1), fp32=False):
        self._config = config
        row = data.ArrayLayout(signed(config.acc_bits), config.cols)
        self._row_layout = row
        self._tag_shape = tag_shape
        self._fp32 = fp32
        super().__init__({
            "fp32_in": In(1),
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
        return LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        # A read in the cycle its address is written back (by the row two before) gets
        # a forwarded sum instead (below), so what the memory returns then does not
        # matter: `no_rw_check` keeps yosys from building a collision bypass (a register
        # and a multiplexer per bit after the block RAM's slow output).
        m.submodules.memory = memory = Memory(shape=self._row_layout, depth=cfg.acc_depth,
                                              init=[], attrs={"no_rw_check": 1})
        write = memory.write_port()
        read = memory.read_port()
        m.d.comb += read.addr.eq(self.addr)

        # The row's fields after one and two cycles (index 0: cycle t + 1).
        # Only the valid flags have a reset: the local clear of the unit around the
        # buffer need not reach the data registers (a reset net to all of them routes
        # badly), rows that are not valid are neither written nor passed on.
        stage = data.StructLayout({"addr": range(cfg.acc_depth), "first": 1,
                                   "last": 1, "tag": self._tag_shape, "fp32": 1,
                                   "psum": self._row_layout})
        s1 = Signal(stage, name="row_s1", reset_less=True)
        s2 = Signal(stage, name="row_s2", reset_less=True)
        valid_s1, valid_s2 = Signal(name="valid_s1"), Signal(name="valid_s2")
        m.d.sync += [
            valid_s1.eq(self.valid_in), s1.addr.eq(self.addr), s1.first.eq(self.first),
            s1.last.eq(self.last), s1.tag.eq(self.tag_in), s1.psum.eq(self.psum),
            s1.fp32.eq(self.fp32_in if self._fp32 else 0),
            s2.eq(s1), valid_s2.eq(valid_s1),
        ]
        stored = Signal(self._row_layout, name="stored", reset_less=True)
        m.d.sync += stored.eq(read.data)

        # Forwarding, decided in cycle t + 1 by comparing the row with the two before it
        # (in s2 and one cycle older), each written back only when valid and not last:
        # `forward` then holds the newer matching sum (the row in s2 is being summed in
        # this very cycle; the older one is in `prev`), so cycle t + 2 chooses between two
        # registers only.
        older = Signal(stage.members["addr"], name="addr_s3")
        older_writes = Signal(name="writes_s3")
        m.d.sync += [older.eq(s2.addr), older_writes.eq(valid_s2 & ~s2.last)]
        from_prev = Signal(name="from_prev")
        from_prev2 = Signal(name="from_prev2")
        m.d.comb += [
            from_prev.eq(valid_s2 & ~s2.last & (s2.addr == s1.addr)),
            from_prev2.eq(older_writes & (older == s1.addr)),
        ]
        prev = Signal(self._row_layout, name="sum_prev", reset_less=True)
        forward = Signal(self._row_layout, name="forward", reset_less=True)
        use_forward = Signal(name="use_forward")
        use_stored = Signal(name="use_stored")
        m.d.sync += [
            prev.eq(self.sum),
            forward.eq(Mux(from_prev, self.sum, prev)),
            use_forward.eq(~s1.first & (from_prev | from_prev2)),
            use_stored.eq(~s1.first & ~from_prev & ~from_prev2),
        ]

        for c in range(cfg.cols):
            base = (forward[c] & use_forward.replicate(cfg.acc_bits)) | \
                   (stored[c] & use_stored.replicate(cfg.acc_bits))
            integer = s2.psum[c] + base.as_signed()
            if self._fp32:
                m.submodules[f"fp32_add_{c}"] = add = FloatAdder(FLOAT32, latency=0)
                m.d.comb += [add.operands.payload.a.as_value().eq(base),
                             add.operands.payload.b.as_value().eq(s2.psum[c]),
                             add.operands.valid.eq(valid_s2 & s2.fp32 & ~s2.first)]
                fp32_sum = Mux(s2.first, s2.psum[c], add.result.payload.as_value())
                m.d.comb += self.sum[c].eq(Mux(s2.fp32, fp32_sum, integer))
            else:
                m.d.comb += self.sum[c].eq(integer)
        m.d.comb += [
            write.addr.eq(s2.addr),
            write.data.eq(self.sum),
            write.en.eq(valid_s2 & ~s2.last),
            self.valid_out.eq(valid_s2 & s2.last),
            self.tag_out.eq(s2.tag),
        ]
        return m
