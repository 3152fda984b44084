"""cocotb testbench of the whole NPU (``npugen.hw.npu.NPU``) as a host sees it.

The host memory is a cocotbext-axi ``AxiRam`` on the NPU's AXI4 master; the registers
are driven by an ``AxiLiteMaster`` on its AXI4-Lite slave.  The job (``NPUGEN_JOB``,
see :mod:`npugen.sim.jobs`) holds ``runs``: each writes its memory segments, programs
the windows and ``PROG_ADDR``, starts the NPU, waits for the interrupt and records the
status registers and the whole host memory before and after.  Runs follow each other
without a reset, so a run after an error checks that the NPU takes a new program.

Bus patterns (``pattern`` in the job) put idle cycles on the subordinate's outputs
(R, B: the memory answers late) and back-pressure on its inputs (AR, AW, W: the memory
accepts late), on the memory and the register bus alike.  Read or write *faults* make
the memory answer SLVERR inside given address ranges.
"""

import logging
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, with_timeout
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite

from npugen.golden import regmap
from npugen.sim.streams import (CLOCK_NS, load_job, now_cycles, pause_pattern, reset_dut,
                                write_result)

#: Pause probabilities (subordinate outputs, subordinate inputs) per bus pattern.
PATTERNS = {
    "none": (0.0, 0.0),
    "idle": (0.3, 0.0),
    "backpressure": (0.0, 0.3),
    "both": (0.2, 0.2),
    "heavy": (0.6, 0.5),
}


def _in_ranges(address, length, ranges):
    return any(address < hi and lo < address + length for lo, hi in ranges)


def _faulty(read_ranges, write_ranges):
    """Patch an ``AxiRam``'s interfaces so accesses inside the ranges answer SLVERR."""

    class FaultyRead(AxiRamRead):
        async def _read(self, address, length):
            if _in_ranges(address, length, read_ranges):
                raise OSError(f"read fault at {address:#x}")
            return await super()._read(address, length)

    class FaultyWrite(AxiRamWrite):
        async def _write(self, address, data):
            if _in_ranges(address, len(data), write_ranges):
                raise OSError(f"write fault at {address:#x}")
            await super()._write(address, data)

    return FaultyRead, FaultyWrite


class NPUTB:
    """Clock, reset, host memory and register master of one NPU model."""

    def __init__(self, dut, *, mem_size, seed, pattern, read_faults=(), write_faults=()):
        self.dut = dut
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        bus = AxiBus.from_prefix(dut, "m_axi_")
        self.ram = AxiRam(bus, dut.clk, dut.rst, size=mem_size)
        if read_faults or write_faults:
            read_cls, write_cls = _faulty([tuple(r) for r in read_faults],
                                          [tuple(r) for r in write_faults])
            self.ram.read_if.__class__ = read_cls
            self.ram.write_if.__class__ = write_cls
        self.csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        for logger in (self.ram.read_if.log, self.ram.write_if.log, self.csr.write_if.log,
                       self.csr.read_if.log):
            logger.setLevel(logging.WARNING)
        late, slow = PATTERNS[pattern]
        rng = random.Random(seed)
        if late:
            for channel in (self.ram.read_if.r_channel, self.ram.write_if.b_channel,
                            self.csr.read_if.r_channel, self.csr.write_if.b_channel):
                channel.set_pause_generator(pause_pattern(rng, late))
        if slow:
            for channel in (self.ram.read_if.ar_channel, self.ram.write_if.aw_channel,
                            self.ram.write_if.w_channel, self.csr.read_if.ar_channel,
                            self.csr.write_if.aw_channel, self.csr.write_if.w_channel):
                channel.set_pause_generator(pause_pattern(rng, slow))
        self.offsets = {reg.name: reg.offset for reg in regmap.REGISTERS}

    async def reset(self):
        await reset_dut(self.dut)

    async def read_reg(self, name):
        return await self.csr.read_dword(self.offsets[name])

    async def write_reg(self, name, value):
        await self.csr.write_dword(self.offsets[name], value)

    async def execute(self, run: dict) -> dict:
        """One program: load, configure, start, wait for the interrupt, record."""
        for address, blob in run["segments"]:
            self.ram.write(address, bytes(blob))
        before = self.ram.read(0, self.ram.size)
        await self.write_reg("READ_BASE", run["read_window"][0])
        await self.write_reg("READ_LIMIT", run["read_window"][1])
        await self.write_reg("WRITE_BASE", run["write_window"][0])
        await self.write_reg("WRITE_LIMIT", run["write_window"][1])
        await self.write_reg("PROG_ADDR", run["prog_addr"])
        await self.write_reg("IRQ_ENABLE", 0b11)
        start = now_cycles()
        await self.write_reg("CTRL", 1)
        if not int(self.dut.irq.value):
            await with_timeout(RisingEdge(self.dut.irq), run["timeout_cycles"] * CLOCK_NS, "ns")
        observed = now_cycles() - start
        record = {name: await self.read_reg(name) for name in
                  ("STATUS", "ERROR", "ERROR_PC", "CYCLES_LO", "CYCLES_HI", "INSTRET",
                   "LOAD_BUSY", "COMPUTE_BUSY", "VECTOR_BUSY", "STORE_BUSY", "IRQ_STATUS")}
        record["cycles"] = record.pop("CYCLES_LO") | record.pop("CYCLES_HI") << 32
        record["observed_cycles"] = int(round(observed))
        await self.write_reg("IRQ_STATUS", 0b11)
        record["irq_after_clear"] = int(self.dut.irq.value)
        record["before"] = before
        record["after"] = self.ram.read(0, self.ram.size)
        return record


@cocotb.test()
async def run_programs(dut):
    """Execute every run of the job in order; record registers and memory images."""
    job, _ = load_job()
    dut._log.info("seed=%d pattern=%s runs=%d", job["seed"], job["pattern"], len(job["programs"]))
    tb = NPUTB(dut, mem_size=job["mem_size"], seed=job["seed"], pattern=job["pattern"],
               read_faults=job.get("read_faults", ()), write_faults=job.get("write_faults", ()))
    await tb.reset()
    ident = {name: await tb.read_reg(name) for name in ("ID", "VERSION")}
    records = []
    try:
        for run in job["programs"]:
            records.append(await tb.execute(run))
    finally:
        write_result({"ident": ident, "runs": records})
