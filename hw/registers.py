"""The NPU's control and status registers behind an AXI4-Lite subordinate.

The map (offsets, access types, writable bits, reset values, the ID block) comes from
``npugen.golden.regmap``; :class:`~npugen.golden.regmap.RegisterFileModel` is the
executable specification of the behaviour.

Bus: AW and W are accepted independently, each into a one-entry holding register
(``awready``/``wready`` are low while it is full).  A write is applied in the first
cycle both are held, and its effect and ``bvalid`` appear in the next: AW and W accepted
in cycle t are answered from cycle t + 2, ``bvalid`` held until ``bready`` (the next
write may be applied in the cycle a response is taken).  A read is decoded in the cycle
AR is accepted and answered on R from the next (``arready`` is low while ``rvalid``
waits for ``rready``).  Responses: SLVERR for a read of an unmapped offset and for a
write to a read-only or unmapped one (which changes nothing); the write-only CTRL reads
as 0; the low two address bits are ignored; writes honour ``wstrb``.

Run control: a write of CTRL.START while not BUSY pulses ``start`` for one cycle, the
cycle ``bvalid`` rises; in that cycle BUSY is already set and
``prog_addr``/``read_base``/``read_limit``/``write_base``/``write_limit`` hold the values
sampled from their registers (kept until the next START).  Each cycle with BUSY counts
in CYCLES (64 bits), each with ``retire`` in INSTRET, each with ``unit_busy`` bit i in
LOAD/COMPUTE/VECTOR/STORE_BUSY (bit 0..3).  ``finish`` or ``fail`` (wins) in a BUSY cycle
ends the run in that cycle: BUSY clears the cycle after, DONE or ERROR (with the code,
detail and pc) and the IRQ_STATUS bit are set; a set and a W1C clear of the same bit in
one cycle leave it set.  ``irq = |(IRQ_STATUS & IRQ_ENABLE)`` (from registers, no added
latency).  ``finish``/``fail``/``retire`` outside a run are ignored.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.config import NPUConfig
from npugen.golden.regmap import ADDR_WIDTH, OKAY, SLVERR, UNIT_COUNTERS, register_map

from .axi import AXI4LiteSignature
from .isa import NPUError

__all__ = ["RegisterFile", "SAMPLED"]

#: RW registers whose values are sampled at START onto output ports (lower-case names).
SAMPLED = ("PROG_ADDR", "READ_BASE", "READ_LIMIT", "WRITE_BASE", "WRITE_LIMIT")


class RegisterFile(wiring.Component):
    """AXI4-Lite register file of the NPU of ``config`` (see the module docstring).

    Ports: ``axil`` (subordinate, 12 address bits, 32 data bits); ``start``,
    ``prog_addr``, ``read_base``, ``read_limit``, ``write_base``, ``write_limit``,
    ``busy``, ``irq`` out; ``finish``, ``fail`` with ``fail_code``, ``fail_detail``,
    ``fail_pc``, ``retire`` and ``unit_busy`` (4 bits) in.
    """

    def __init__(self, config):
        try:
            NPUConfig.check(config)
        except TypeError:
            self._MustUse__silence = True  # rejected, never elaborated: not "unused"
            raise
        self._config = config
        self._map = register_map(config)
        super().__init__({
            "axil": In(AXI4LiteSignature(addr_width=ADDR_WIDTH)),
            "start": Out(1),
            **{name.lower(): Out(32) for name in SAMPLED},
            "irq": Out(1),
            "busy": Out(1),
            "finish": In(1),
            "fail": In(1),
            "fail_code": In(NPUError),
            "fail_detail": In(8),
            "fail_pc": In(32),
            "retire": In(1),
            "unit_busy": In(len(UNIT_COUNTERS)),
        })

    @property
    def config(self):
        return self._config

    @property
    def register_map(self):
        """The :class:`~npugen.golden.regmap.RegisterMap` this register file implements."""
        return self._map

    def elaborate(self, platform):
        m = Module()
        bus, rmap = self.axil, self._map

        def place(name, **values):
            """A register word with ``values`` in the fields of register ``name``."""
            reg, word = rmap[name], Const(0, 32)
            for field, value in values.items():
                f = reg.field(field)
                word = word | (value[:f.width].as_unsigned() << f.lsb)[:32]
            return word

        # -- state ---------------------------------------------------------------------
        stored = {reg.name: Signal(32, init=reg.reset, name=reg.name.lower())
                  for reg in rmap if reg.access in ("RW", "RW1C")}
        done, error = Signal(name="done"), Signal(name="error")
        error_code = Signal(8, name="error_code")
        error_detail = Signal(8, name="error_detail")
        error_pc = Signal(32, name="error_pc")
        cycles = Signal(64, name="cycles")
        instret = Signal(32, name="instret")
        unit_counts = [Signal(32, name=name.lower()) for name in UNIT_COUNTERS]

        read_value = {
            "STATUS": place("STATUS", BUSY=self.busy, DONE=done, ERROR=error),
            "ERROR": place("ERROR", CODE=error_code, DETAIL=error_detail),
            "ERROR_PC": error_pc,
            "CYCLES_LO": cycles[:32],
            "CYCLES_HI": cycles[32:],
            "INSTRET": instret,
            **dict(zip(UNIT_COUNTERS, unit_counts)),
            **stored,
        }
        for reg in rmap:
            if reg.access == "WO":
                read_value[reg.name] = Const(0, 32)
            elif reg.name not in read_value:  # constants: ID, VERSION, the ID block
                if reg.access != "RO":
                    raise ValueError(f"register {reg.name} ({reg.access}) has no "
                                     f"implementation")
                read_value[reg.name] = Const(reg.reset, 32)

        # -- write channel: AW and W held independently, applied together -------------
        aw_full, aw_addr = Signal(name="aw_full"), Signal(ADDR_WIDTH, name="aw_addr")
        w_full, w_data = Signal(name="w_full"), Signal(32, name="w_data")
        w_strb = Signal(4, name="w_strb")
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]

        apply = Signal()
        m.d.comb += apply.eq(aw_full & w_full & (~bus.bvalid | bus.bready))
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        byte_mask = Signal(32)
        m.d.comb += byte_mask.eq(Cat(w_strb[i].replicate(8) for i in range(4)))

        w1c_clear = {reg.name: Signal(32, name=f"{reg.name.lower()}_clear")
                     for reg in rmap if reg.access == "RW1C"}
        start_request = Signal()
        write_hit = {reg.name: Signal(name=f"write_{reg.name.lower()}")
                     for reg in rmap if reg.writable}
        m.d.comb += [hit.eq(aw_addr[2:] == rmap[name].offset >> 2)
                     for name, hit in write_hit.items()]
        with m.If(apply):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1),
                         # read-only or unmapped: nothing changes
                         bus.bresp.eq(Mux(Cat(*write_hit.values()).any(), OKAY, SLVERR))]
        for name, hit in write_hit.items():
            reg = rmap[name]
            bits = byte_mask & reg.write_mask
            with m.If(apply & hit):
                if reg.access == "RW":
                    m.d.sync += stored[name].eq((stored[name] & ~bits) | (w_data & bits))
                elif reg.access == "RW1C":
                    m.d.comb += w1c_clear[name].eq(w_data & bits)
                elif name == "CTRL":
                    start_bit = reg.field("START").mask
                    m.d.comb += start_request.eq((w_data & bits & start_bit) != 0)
                else:
                    raise ValueError(f"register {name} ({reg.access}) has no implementation")

        # -- read channel: an AND-OR multiplexer over the decoded register -------------
        read_hit = {reg.name: Signal(name=f"read_{reg.name.lower()}") for reg in rmap}
        m.d.comb += [hit.eq(bus.araddr[2:] == rmap[name].offset >> 2)
                     for name, hit in read_hit.items()]
        selected = Const(0, 32)
        for name, hit in read_hit.items():
            selected = selected | (hit.replicate(32) & read_value[name])
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(selected),   # 0 when unmapped
                         bus.rresp.eq(Mux(Cat(*read_hit.values()).any(), OKAY, SLVERR))]

        # -- run control, counters, interrupts -----------------------------------------------
        start = Signal()
        m.d.comb += start.eq(start_request & ~self.busy)
        m.d.sync += self.start.eq(start)
        irq_set = Signal(32)
        with m.If(start):
            m.d.sync += [self.busy.eq(1), done.eq(0), error.eq(0), error_code.eq(0),
                         error_detail.eq(0), error_pc.eq(0), cycles.eq(0), instret.eq(0)]
            m.d.sync += [count.eq(0) for count in unit_counts]
            m.d.sync += [getattr(self, name.lower()).eq(stored[name]) for name in SAMPLED]
        with m.Elif(self.busy):
            m.d.sync += [cycles.eq(cycles + 1), instret.eq(instret + self.retire)]
            m.d.sync += [count.eq(count + self.unit_busy[i])
                         for i, count in enumerate(unit_counts)]
            with m.If(self.fail):
                m.d.sync += [self.busy.eq(0), error.eq(1),
                             error_code.eq(self.fail_code.as_value()),
                             error_detail.eq(self.fail_detail), error_pc.eq(self.fail_pc)]
                m.d.comb += irq_set.eq(place("IRQ_STATUS", ERROR=Const(1)))
            with m.Elif(self.finish):
                m.d.sync += [self.busy.eq(0), done.eq(1)]
                m.d.comb += irq_set.eq(place("IRQ_STATUS", DONE=Const(1)))
        irq_status = stored["IRQ_STATUS"]
        m.d.sync += irq_status.eq((irq_status & ~w1c_clear["IRQ_STATUS"]) | irq_set)
        m.d.comb += self.irq.eq((irq_status & stored["IRQ_ENABLE"]).any())
        return m
