"""cocotb testbench of the NPU's DMA (``npugen.sim.dma_sim.DmaHarness``).

Runs inside the simulator, launched by :func:`npugen.sim.dma_sim.run_dma`.  Host memory
is a cocotbext-axi ``AxiRam`` over a sparse 4 GB memory that answers SLVERR inside
configurable error ranges (nothing is read or written there); its five channels get
the pause pattern of the job (:data:`PATTERNS`).  The job is a list of *phases*, run
one after the other without reset; each phase may set the windows, the error ranges
and OUT words, then runs concurrently

* ``loads``: LOAD instructions (field dicts) on ``load_cmd``;
* ``stores``: STORE instructions on ``store_cmd``;
* ``fetch``: ``{"start", "count", "hold"}``: start the fetch unit, take ``count`` items
  (or up to a fault), then, with ``hold``, stop taking for ``hold`` cycles so the
  prefetch buffer fills; flush and wait until the unit is idle;
* ``abort``: ``{"unit": "load"|"store", "after_beats": n}``: pulse that unit's abort
  once ``n`` R (load) or W (store) beats of the phase have passed;

and waits until everything was accepted and the units are idle.  A monitor records
every scratchpad write, done, error and accepted command with its cycle and the beat
counters.  The record of each phase and the final memory go to ``NPUGEN_RESULT``; the
pytest side compares them with the reference (:mod:`npugen.sim.dma_sim`).

Python wakes once per clock in the monitor (one read of ``events``) and per
transaction in the bus models.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
from cocotbext.axi import AxiBus, AxiRam
from cocotbext.axi.sparse_memory import SparseMemory

from npugen.hw.isa import load_layout, store_layout
from npugen.sim.dma_sim import EVENTS, encode
from npugen.sim.streams import (CLOCK_NS, AmaranthStreamBus, AmaranthStreamSink,
                                AmaranthStreamSource, AmaranthStreamTransaction, load_job,
                                pause_pattern, reset_dut, write_result)


def bursty_pattern(rng: random.Random, start: float = 0.08, longest: int = 12,
                   length: int = 4096):
    """Pause runs of 1..``longest`` cycles, one starting with probability ``start``."""
    pattern = []
    while len(pattern) < length:
        if rng.random() < start:
            pattern += [True] * rng.randint(1, longest)
        else:
            pattern.append(False)
    while True:
        yield from pattern


#: AXI pause patterns: channel → pause generator factory (aw, w, ar are the RAM's
#: ready; b and r its valid).
PATTERNS = {
    "none": {},
    "random": {ch: (lambda rng: pause_pattern(rng, 0.3)) for ch in ("aw", "w", "b", "ar", "r")},
    "bursty": {ch: bursty_pattern for ch in ("aw", "w", "b", "ar", "r")},
    "slow_data": {"r": lambda rng: pause_pattern(rng, 0.6),
                  "w": lambda rng: pause_pattern(rng, 0.6)},
    "slow_addr": {"ar": lambda rng: pause_pattern(rng, 0.7),
                  "aw": lambda rng: pause_pattern(rng, 0.7),
                  "b": lambda rng: pause_pattern(rng, 0.5)},
}


class FaultyMemory(SparseMemory):
    """Sparse memory that refuses (raises, so the RAM answers SLVERR) any access that
    touches one of ``error_ranges`` (half-open byte ranges)."""

    def __init__(self, size):
        super().__init__(size)
        self.error_ranges = []

    def _check(self, address, length):
        for lo, hi in self.error_ranges:
            if address < hi and address + length > lo:
                raise ValueError(f"bus error at 0x{address:08x}")

    def read(self, address, length, **kwargs):
        self._check(address, length)
        return super().read(address, length, **kwargs)

    def write(self, address, data, **kwargs):
        self._check(address, len(data))
        return super().write(address, data, **kwargs)


class DmaTB:
    """Clock, reset, host memory, command sources, the instruction sink and a monitor."""

    def __init__(self, dut, config, job):
        self.dut = dut
        self.config = config
        rng = random.Random(job["seed"])
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        self.memory = FaultyMemory(2 ** 32)
        for block, content in job["memory"].items():
            self.memory.write(block, content)
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst,
                          size=2 ** 32, mem=self.memory)
        channels = {"aw": self.ram.write_if.aw_channel, "w": self.ram.write_if.w_channel,
                    "b": self.ram.write_if.b_channel, "ar": self.ram.read_if.ar_channel,
                    "r": self.ram.read_if.r_channel}
        for name, factory in PATTERNS[job["pattern"]].items():
            channels[name].set_pause_generator(factory(rng))
        bus = lambda name: AmaranthStreamBus.from_prefix(dut, name, bus_separator="__")
        self.loads = AmaranthStreamSource(bus("load_cmd"), dut.clk, dut.rst)
        self.stores = AmaranthStreamSource(bus("store_cmd"), dut.clk, dut.rst)
        self.instr = AmaranthStreamSink(bus("instr"), dut.clk, dut.rst)
        idle = job.get("cmd_idle", 0.0)
        if idle:
            self.loads.set_pause_generator(pause_pattern(rng, idle))
            self.stores.set_pause_generator(pause_pattern(rng, idle))
        self.record = None
        self.partial = None
        for name in ("load_abort", "store_abort", "fetch_start", "fetch_flush", "out_wr_en"):
            getattr(dut, name).value = 0

    async def reset(self):
        await reset_dut(self.dut)

    async def monitor(self):
        """Record every event of the cycle into the current phase's record."""
        dut = self.dut
        bits = {name: 1 << bit for name, bit in EVENTS.items()}
        while True:
            await RisingEdge(dut.clk)
            events = int(dut.events.value)
            if not events or self.record is None:
                continue
            rec = self.record
            cycle = int(dut.cycles.value)
            beats = (int(dut.r_beats.value), int(dut.w_beats.value))
            if events & bits["wr_en"]:
                rec["writes"].append((int(dut.wr_target.value), int(dut.wr_addr.value),
                                      int(dut.wr_data.value), cycle))
            for name in ("load_done", "store_done", "load_accept", "store_accept"):
                if events & bits[name]:
                    rec[name].append((cycle, *beats))
            if events & bits["load_error"]:
                rec["load_errors"].append((int(dut.load_error.value), cycle))
            if events & bits["store_error"]:
                rec["store_errors"].append((int(dut.store_error.value), cycle))

    async def pulse(self, signal, value=None, address_signal=None):
        if address_signal is not None:
            address_signal.value = value
        signal.value = 1
        await RisingEdge(self.dut.clk)
        signal.value = 0

    async def write_out(self, words: dict):
        dut = self.dut
        for sp, word in sorted(words.items()):
            dut.out_wr_addr.value = sp
            dut.out_wr_data.value = word
            dut.out_wr_en.value = 1
            await RisingEdge(dut.clk)
        dut.out_wr_en.value = 0

    async def run_fetch(self, spec: dict, rec: dict):
        dut = self.dut
        self.instr.clear()
        await self.pulse(dut.fetch_start, spec["start"], dut.fetch_start_addr)
        items = rec["fetched"]
        while len(items) < spec["count"]:
            beat = await self.instr.recv()
            word = int(beat.payload)
            item = (word & ((1 << 256) - 1), (word >> 256) & 0xFFFFFFFF, word >> 288)
            items.append(item)
            if item[2]:
                break
        if spec.get("hold"):
            self.instr.pause = True
            await ClockCycles(dut.clk, spec["hold"])
        await self.pulse(dut.fetch_flush)
        self.instr.clear()
        self.instr.pause = False
        while not int(dut.fetch_idle.value):
            await RisingEdge(dut.clk)

    async def run_abort(self, spec: dict, start_beats):
        dut = self.dut
        index = 0 if spec["unit"] == "load" else 1
        counter = dut.r_beats if index == 0 else dut.w_beats
        while int(counter.value) - start_beats[index] < spec["after_beats"]:
            await RisingEdge(dut.clk)
        await self.pulse(dut.load_abort if index == 0 else dut.store_abort)

    async def run_phase(self, phase: dict) -> dict:
        dut = self.dut
        rec = {name: [] for name in ("writes", "load_done", "store_done", "load_accept",
                                     "store_accept", "load_errors", "store_errors",
                                     "fetched")}
        for prefix in ("read", "write"):
            window = phase.get(f"{prefix}_window")
            if window is not None:
                getattr(dut, f"{prefix}_base").value = window[0]
                getattr(dut, f"{prefix}_limit").value = window[1]
        if "errors" in phase:
            self.memory.error_ranges = [tuple(r) for r in phase["errors"]]
        if phase.get("out"):
            await self.write_out(phase["out"])
        await RisingEdge(dut.clk)
        rec["start"] = (int(dut.cycles.value), int(dut.r_beats.value), int(dut.w_beats.value))
        self.record = rec
        for fields in phase.get("loads", []):
            self.loads.send_nowait(AmaranthStreamTransaction(payload=encode(load_layout, fields)))
        for fields in phase.get("stores", []):
            self.stores.send_nowait(
                AmaranthStreamTransaction(payload=encode(store_layout, fields)))
        tasks = []
        if "fetch" in phase:
            tasks.append(cocotb.start_soon(self.run_fetch(phase["fetch"], rec)))
        if "abort" in phase:
            tasks.append(cocotb.start_soon(self.run_abort(phase["abort"], rec["start"][1:])))
        n_loads, n_stores = len(phase.get("loads", [])), len(phase.get("stores", []))

        async def settle():
            for task in tasks:
                await task
            quiet = 0
            while quiet < 4:       # idle for a few cycles: nothing left to happen
                await RisingEdge(dut.clk)
                busy = int(dut.load_busy.value) or int(dut.store_busy.value)
                pending = (len(rec["load_accept"]) < n_loads and not rec["load_errors"]
                           and "abort" not in phase) or \
                    (len(rec["store_accept"]) < n_stores and not rec["store_errors"]
                     and "abort" not in phase)
                quiet = 0 if busy or pending or not self.loads.idle() or \
                    not self.stores.idle() else quiet + 1

        self.partial = rec
        await with_timeout(settle(), phase.get("timeout", 200_000) * CLOCK_NS, "ns")
        self.partial = None
        self.record = None
        rec["end"] = (int(dut.cycles.value), int(dut.r_beats.value), int(dut.w_beats.value))
        rec["busy"] = (int(dut.load_busy.value), int(dut.store_busy.value))
        return rec


@cocotb.test()
async def run_phases(dut):
    """Run every phase of the job and write what happened."""
    job, config = load_job()
    dut._log.info("seed=%d pattern=%s phases=%d", job["seed"], job["pattern"],
                  len(job["phases"]))
    tb = DmaTB(dut, config, job)
    await tb.reset()
    cocotb.start_soon(tb.monitor())
    records = []
    try:
        for phase in job["phases"]:
            records.append(await tb.run_phase(phase))
    finally:
        if tb.partial is not None:     # the phase that failed, as far as it got
            tb.partial["incomplete"] = True
            records.append(tb.partial)
        write_result({"phases": records,
                      "memory": {block: bytes(content)
                                 for block, content in tb.memory.segs.items()}})
