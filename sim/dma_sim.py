"""The NPU's DMA on Verilator: test harness, LOAD/STORE reference, host side of the runs.

:class:`DmaHarness` puts :class:`~npugen.hw.dma_read.InstructionFetch`,
:class:`~npugen.hw.dma_read.LoadEngine` and :class:`~npugen.hw.dma_write.StoreEngine`
behind one AXI4 manager port ``m_axi`` (reads through :class:`~npugen.hw.dma_read.ReadMux`),
with an OUT scratchpad the testbench fills through ``out_wr_*``, an ``events`` vector
(one bit per thing that happened in a cycle, so the monitor wakes cheaply) and cycle
and beat counters.  :func:`run_dma` builds (or reuses) the model of a configuration,
runs the phases of :mod:`npugen.sim.tb_dma` and returns what the testbench observed.

:func:`load_words` and :func:`store_writes` are the reference: LOAD and STORE exactly
as ``docs/ISA.md`` states them, word by word, stopping at the first error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from npugen.golden.config import NPUConfig
from npugen.hw.axi import AXI4Signature, connect_channels
from npugen.hw.dma_read import (InstructionFetch, LoadEngine, ReadMux, act_lanes,
                                fetch_item_layout, load_word_bits)
from npugen.hw.dma_write import StoreEngine
from npugen.hw.isa import NPUError, load_layout, store_layout

from . import runner
from .jobs import run_testbench

__all__ = ["TOPLEVEL", "EVENTS", "DmaHarness", "encode", "target_lanes", "load_words",
           "store_writes", "SparseBytes", "build_dma", "run_dma"]

TOPLEVEL = "npu_dma"

#: Bits of ``DmaHarness.events``.
EVENTS = {"wr_en": 0, "load_done": 1, "load_error": 2, "store_done": 3, "store_error": 4,
          "load_accept": 5, "store_accept": 6, "instr": 7}

_TARGETS = ("ACT", "WGT", "WIDX", "PARAM")


class DmaHarness(wiring.Component):
    """Fetch, load and store engines on one AXI4 port, for the cocotb testbench."""

    def __init__(self, config):
        NPUConfig.check(config)
        self._config = config
        super().__init__({
            "read_base": In(32), "read_limit": In(32),
            "write_base": In(32), "write_limit": In(32),
            "fetch_start": In(1), "fetch_start_addr": In(32), "fetch_flush": In(1),
            "fetch_idle": Out(1), "instr": Out(stream.Signature(fetch_item_layout())),
            "load_cmd": In(stream.Signature(load_layout)), "load_abort": In(1),
            "load_busy": Out(1), "load_error": Out(8),
            "wr_en": Out(1), "wr_target": Out(2), "wr_addr": Out(16),
            "wr_data": Out(load_word_bits(config)),
            "store_cmd": In(stream.Signature(store_layout)), "store_abort": In(1),
            "store_busy": Out(1), "store_error": Out(8),
            "out_wr_en": In(1), "out_wr_addr": In(16), "out_wr_data": In(32 * config.cols),
            "events": Out(len(EVENTS)), "cycles": Out(32), "r_beats": Out(32),
            "w_beats": Out(32),
            "m_axi": Out(AXI4Signature(addr_width=32, data_width=config.axi_data_bits,
                                       id_width=1)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.fetch = fetch = InstructionFetch(cfg)
        m.submodules.load = load = LoadEngine(cfg)
        m.submodules.store = store = StoreEngine(cfg)
        m.submodules.mux = mux = ReadMux(cfg)
        m.submodules.out = out = Memory(shape=32 * cfg.cols, depth=cfg.out_sp_depth, init=[])
        wiring.connect(m, fetch=fetch.bus, mux=mux.fetch)
        wiring.connect(m, load=load.bus, mux=mux.load)

        axi = self.m_axi
        connect_channels(m, axi, mux.bus)
        connect_channels(m, axi, store.bus)

        wr = out.write_port()
        rd = out.read_port()
        m.d.comb += [wr.en.eq(self.out_wr_en), wr.addr.eq(self.out_wr_addr),
                     wr.data.eq(self.out_wr_data),
                     rd.en.eq(store.rd_en), rd.addr.eq(store.rd_addr),
                     store.rd_data.eq(rd.data)]

        wiring.connect(m, wiring.flipped(self.instr), fetch.instr)
        wiring.connect(m, wiring.flipped(self.load_cmd), load.cmd)
        wiring.connect(m, wiring.flipped(self.store_cmd), store.cmd)
        m.d.comb += [
            fetch.start.eq(self.fetch_start), fetch.start_addr.eq(self.fetch_start_addr),
            fetch.flush.eq(self.fetch_flush), self.fetch_idle.eq(fetch.idle),
            fetch.read_base.eq(self.read_base), fetch.read_limit.eq(self.read_limit),
            load.read_base.eq(self.read_base), load.read_limit.eq(self.read_limit),
            store.write_base.eq(self.write_base), store.write_limit.eq(self.write_limit),
            load.abort.eq(self.load_abort), store.abort.eq(self.store_abort),
            self.load_busy.eq(load.busy), self.load_error.eq(load.error),
            self.store_busy.eq(store.busy), self.store_error.eq(store.error),
            self.wr_en.eq(load.wr_en), self.wr_target.eq(load.wr_target),
            self.wr_addr.eq(load.wr_addr), self.wr_data.eq(load.wr_data),
        ]
        happened = {
            "wr_en": load.wr_en, "load_done": load.done, "load_error": load.error_valid,
            "store_done": store.done, "store_error": store.error_valid,
            "load_accept": load.cmd.valid & load.cmd.ready,
            "store_accept": store.cmd.valid & store.cmd.ready,
            "instr": self.instr.valid & self.instr.ready,
        }
        for name, bit in EVENTS.items():
            m.d.comb += self.events[bit].eq(happened[name])
        m.d.sync += [
            self.cycles.eq(self.cycles + 1),
            self.r_beats.eq(self.r_beats + (axi.rvalid & axi.rready)),
            self.w_beats.eq(self.w_beats + (axi.wvalid & axi.wready)),
        ]
        return m


# ---- instructions ----------------------------------------------------------------------

def encode(layout, fields: dict) -> int:
    """The 256-bit instruction of ``layout`` (``hw/isa.py``) with ``fields``; the opcode
    is set from the layout (LOAD 1, STORE 2) unless given."""
    opcode = {id(load_layout): 1, id(store_layout): 2}.get(id(layout), 0)
    fields = {"opcode": opcode, **fields}
    word = 0
    for name, field in layout:
        value = int(fields.get(name, 0))
        width = field.shape.width if hasattr(field.shape, "width") else len(field.shape)
        word |= (value & ((1 << width) - 1)) << field.offset
    unknown = set(fields) - {name for name, _ in layout}
    if unknown:
        raise ValueError(f"fields must be fields of the layout, not {sorted(unknown)!r}")
    return word


def target_lanes(config, target: int) -> int:
    """Lanes of a word of LOAD target ``target`` (0 ACT, 1 WGT, 2 WIDX, 3 PARAM)."""
    return act_lanes(config) if target == 0 else config.cols


# ---- reference -------------------------------------------------------------------------

class SparseBytes:
    """Byte-addressed host memory in 4 KB blocks (unwritten bytes read as 0)."""

    def __init__(self, blocks: dict[int, bytes] | None = None):
        self.blocks = {a: bytearray(b) for a, b in (blocks or {}).items()}

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.blocks.get((a >> 12) << 12, bytes(4096))[a & 0xFFF]
                     for a in range(addr, addr + length))

    def write(self, addr: int, data: bytes) -> None:
        for k, byte in enumerate(data):
            a = addr + k
            self.blocks.setdefault((a >> 12) << 12, bytearray(4096))[a & 0xFFF] = byte


def _word_addresses(f):
    """``(o, i, scratchpad word, host address)`` of every word of LOAD/STORE ``f``."""
    for o in range(f["outer_count"]):
        for i in range(f["inner_count"]):
            yield (o, i, (f["sp_addr"] + o * f["inner_count"] + i) & 0xFFFF,
                   f["addr"] + o * f["outer_stride"] + i * f["inner_stride"])


def load_words(config, memory: SparseBytes, f: dict, read_base: int, read_limit: int):
    """LOAD ``f`` (a dict of fields) as ``docs/ISA.md`` defines it.

    Returns ``(words, error)``: ``(target, sp address, word)`` of every word written in
    order (word: lane j at bits ``[j·w, (j+1)·w)``, ``w`` 8 or 32), and the NPUError
    code that stopped it (0 if none).  A word is checked (window first, then PARAM
    alignment) before it is read; the words before a failing one are written.
    """
    target = f["target"]
    lane_bytes = 4 if target == 3 else 1
    width = 8 * lane_bytes
    count = target_lanes(config, target)
    pad = f["pad"] & ((1 << width) - 1) if lane_bytes == 1 else f["pad"] & 0xFFFFFFFF
    words = []
    for o, i, sp, a in _word_addresses(f):
        values = []
        if f["inner_lo"] <= i < f["inner_hi"] and f["outer_lo"] <= o < f["outer_hi"]:
            lanes = [a + j * f["lane_stride"] for j in range(f["lanes"])]
            if any(la < read_base or la + lane_bytes > read_limit for la in lanes):
                return words, int(NPUError.BAD_HOST_ADDRESS.value)
            if lane_bytes == 4 and any(la % 4 for la in lanes):
                return words, int(NPUError.MISALIGNED.value)
            values = [int.from_bytes(memory.read(la, lane_bytes), "little") for la in lanes]
        word = 0
        for j in range(count):
            word |= (values[j] if j < len(values) else pad) << (j * width)
        words.append((target, sp, word))
    return words, 0


def store_writes(config, out_words: dict[int, int], f: dict, write_base: int,
                 write_limit: int):
    """STORE ``f`` as ``docs/ISA.md`` defines it: ``(writes, error)`` with the
    ``(address, bytes)`` written in order and the NPUError code that stopped it."""
    e = f["elem_bytes"]
    writes = []
    for _, _, sp, a in _word_addresses(f):
        nbytes = f["lanes"] * e
        if a < write_base or a + nbytes > write_limit:
            return writes, int(NPUError.BAD_HOST_ADDRESS.value)
        if e == 4 and a % 4:
            return writes, int(NPUError.MISALIGNED.value)
        word = out_words.get(sp, 0)
        lanes = [(word >> (32 * j)) & 0xFFFFFFFF for j in range(f["lanes"])]
        data = b"".join(lane.to_bytes(4, "little") if e == 4 else bytes([lane & 0xFF])
                        for lane in lanes)
        writes.append((a, data))
    return writes, 0


# ---- build and run -----------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _verilog(config: NPUConfig) -> str:
    return verilog.convert(DmaHarness(config), name=TOPLEVEL, emit_src=False)


def build_dma(config: NPUConfig, *, waves: bool = False) -> Path:
    """Build (or reuse) the Verilator model of the DMA harness of ``config``."""
    return runner.build(_verilog(config), TOPLEVEL, config.config_hash(), waves=waves)


@dataclass
class DmaRun:
    """What the testbench observed: one record per phase, and the final memory."""
    phases: list[dict]
    memory: dict[int, bytes]
    work_dir: Path


def run_dma(config: NPUConfig, phases: list[dict], *, seed: int, pattern: str = "none",
            memory: dict[int, bytes] | None = None, cmd_idle: float = 0.0,
            waves: bool = False, work_dir: Path | None = None) -> DmaRun:
    """Run ``phases`` (see :mod:`npugen.sim.tb_dma`) on the model of ``config``, with
    host ``memory`` (4 KB blocks), AXI pauses ``pattern`` (``tb_dma.PATTERNS``) and a
    probability ``cmd_idle`` of an idle cycle on the command streams."""
    job = {"config": config.to_dict(), "seed": seed, "pattern": pattern,
           "memory": memory or {}, "cmd_idle": cmd_idle, "phases": phases}
    result, failure, work_dir = run_testbench(build_dma(config, waves=waves), TOPLEVEL,
                                              "npugen.sim.tb_dma", "run_phases", job,
                                              seed=seed, waves=waves, work_dir=work_dir,
                                              prefix="dma-")
    if failure is not None:
        raise failure
    return DmaRun(result["phases"], result["memory"], work_dir)
