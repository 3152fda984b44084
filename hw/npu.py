"""The NPU top: registers, controller, DMA engines, vector and compute units, scratchpads.

::

    s_axil ──► RegisterFile ──► irq
                 │ start, PROG_ADDR, windows     ▲ finish, fail, retire, unit_busy
                 ▼                               │
    InstructionFetch ──instr──► Controller ──cmd/done/busy/abort/error──► the four units
         │                                                               │
         └─► ReadMux ◄── LoadEngine ──► ACT, WGT, WIDX, PARAM ──► ComputeUnit ──┐
               │                                                                │
          m_axi AR/R        StoreEngine ◄── OUT ◄── (compute first) ◄───────────┘
                                 │           ▲ └──► VectorUnit ──┘
                            m_axi AW/W/B     └───────────────────┘

Each unit's command goes through a :class:`~.stream_slice.StreamSlice` (a register
stage: a command issued in cycle t reaches the unit at t + 1; no combinational path from
the controller's dispatch decision into a unit); the controller and the ``*_BUSY``
counters see a unit busy while its command waits in the slice, and ``abort`` empties
the slices.

One clock domain (``sync``: Verilog ``clk`` and the synchronous, active-high ``rst``).
Ports: ``s_axil`` (AXI4-Lite subordinate, 12 address bits), ``m_axi`` (AXI4 manager,
``axi_data_bits`` wide, 1-bit IDs: reads of ID 0 fetch instructions, ID 1 load data;
writes use ID 0), ``irq``.  In Verilog the members are ``s_axil__awaddr`` …,
``m_axi__arvalid`` …, so cocotbext-axi finds them with ``AxiLiteBus.from_prefix(dut,
"s_axil_")`` and ``AxiBus.from_prefix(dut, "m_axi_")``.
"""

from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, AXI4Signature, connect_channels
from .compute_unit import ComputeUnit, PEModuleMixin
from .controller import UNIT_KINDS, Controller
from .dma_read import InstructionFetch, LoadEngine, ReadMux
from .dma_write import StoreEngine
from .registers import RegisterFile
from .scratchpad import Scratchpads
from .stream_slice import StreamSlice
from .vector_unit import VectorUnit

__all__ = ["NPU", "REGISTER_ADDR_BITS"]

#: Address bits of the register interface.
REGISTER_ADDR_BITS = 12


class NPU(PEModuleMixin, wiring.Component):
    """The whole NPU of ``config`` (see the module documentation).

    ``pe_module`` names the Verilog module every PE is instantiated as (generated once
    from :meth:`pe_component`, as ``flows/verilog.py`` does); ``None`` builds the PEs
    inline.
    """

    def __init__(self, config, *, pe_module=None):
        self._set_config(config, pe_module)
        super().__init__({
            "s_axil": In(AXI4LiteSignature(addr_width=REGISTER_ADDR_BITS)),
            "m_axi": Out(AXI4Signature(addr_width=32, data_width=config.axi_data_bits,
                                       id_width=1)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config

        m.submodules.registers = regs = RegisterFile(cfg)
        m.submodules.controller = ctrl = Controller(cfg)
        m.submodules.fetch = fetch = InstructionFetch(cfg)
        m.submodules.read_mux = read_mux = ReadMux(cfg)
        m.submodules.load = load = LoadEngine(cfg)
        m.submodules.store = store = StoreEngine(cfg)
        m.submodules.vector = vector = VectorUnit(cfg)
        m.submodules.compute = compute = ComputeUnit(cfg, pe_module=self._pe_module)
        m.submodules.scratchpads = sp = Scratchpads(cfg)

        # Host interfaces.
        wiring.connect(m, host=wiring.flipped(self.s_axil), registers=regs.axil)
        m.d.comb += self.irq.eq(regs.irq)
        wiring.connect(m, fetch=fetch.bus, mux=read_mux.fetch)
        wiring.connect(m, load=load.bus, mux=read_mux.load)
        connect_channels(m, self.m_axi, read_mux.bus)
        connect_channels(m, self.m_axi, store.bus)

        # Registers ↔ controller, fetch and DMA windows.
        m.d.comb += [
            ctrl.start.eq(regs.start),
            ctrl.prog_addr.eq(regs.prog_addr),
            regs.finish.eq(ctrl.finish),
            regs.fail.eq(ctrl.fail),
            regs.fail_code.eq(ctrl.fail_code),
            regs.fail_detail.eq(ctrl.fail_detail),
            regs.fail_pc.eq(ctrl.fail_pc),
            regs.retire.eq(ctrl.retire),
            fetch.start.eq(ctrl.fetch_start),
            fetch.start_addr.eq(ctrl.fetch_addr),
            fetch.flush.eq(ctrl.fetch_flush),
            ctrl.fetch_idle.eq(fetch.idle),
            fetch.read_base.eq(regs.read_base),
            fetch.read_limit.eq(regs.read_limit),
            load.read_base.eq(regs.read_base),
            load.read_limit.eq(regs.read_limit),
            store.write_base.eq(regs.write_base),
            store.write_limit.eq(regs.write_limit),
        ]
        wiring.connect(m, fetch=fetch.instr, controller=ctrl.instr)

        # Controller ↔ units: each command through a register slice (no combinational
        # path from the dispatch decision into a unit); a command in the slice counts as
        # busy, and abort drops it (the units refuse commands during abort).
        busy = {}
        for name, port, unit in (("load", ctrl.load, load), ("store", ctrl.store, store),
                                 ("vector", ctrl.vector, vector),
                                 ("compute", ctrl.compute, compute)):
            m.submodules[f"{name}_cmd"] = cmd = StreamSlice(UNIT_KINDS[name])
            wiring.connect(m, controller=port.cmd, slice=cmd.i)
            wiring.connect(m, slice=cmd.o, unit=unit.cmd)
            busy[name] = unit.busy | cmd.full
            m.d.comb += [port.done.eq(unit.done), port.busy.eq(busy[name]),
                         unit.abort.eq(port.abort), cmd.clear.eq(port.abort)]
            for member in ("error", "error_valid", "error_detail", "error_index",
                           "reads_done"):
                if member in port.signature.members:
                    m.d.comb += getattr(port, member).eq(getattr(unit, member))
        m.d.comb += regs.unit_busy.eq(Cat(busy["load"], busy["compute"], busy["vector"],
                                          busy["store"]))

        # Units ↔ scratchpads.
        m.d.comb += [
            sp.load_wr.target.eq(load.wr_target),
            sp.load_wr.addr.eq(load.wr_addr),
            sp.load_wr.data.eq(load.wr_data),
            sp.load_wr.en.eq(load.wr_en),
            sp.out_rd_store.addr.eq(store.rd_addr),
            sp.out_rd_store.en.eq(store.rd_en),
            store.rd_data.eq(sp.out_rd_store.data),
            sp.out_rd_vector.addr.eq(vector.rd_addr),
            sp.out_rd_vector.en.eq(vector.rd_en),
            vector.rd_data.eq(sp.out_rd_vector.data),
            sp.out_wr_vector.addr.eq(vector.wr_addr),
            sp.out_wr_vector.data.eq(vector.wr_data),
            sp.out_wr_vector.valid.eq(vector.wr_valid),
            vector.wr_ready.eq(sp.out_wr_vector.ready),
        ]
        wiring.connect(m, compute=compute.act_rd, scratchpads=sp.act_rd)
        wiring.connect(m, compute=compute.wgt_rd, scratchpads=sp.wgt_rd)
        wiring.connect(m, compute=compute.param_rd, scratchpads=sp.param_rd)
        wiring.connect(m, compute=compute.out_wr, scratchpads=sp.out_wr_compute)
        return m
