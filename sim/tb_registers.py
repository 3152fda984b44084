"""cocotb testbench of the register file (``npugen.hw.registers.RegisterFile``).

Runs inside the simulator, launched by :mod:`npugen.sim.registers_sim`.  The job file
named by ``NPUGEN_JOB`` holds the configuration, the seed and a bus ``pattern`` (see
:data:`PATTERNS`).  A cocotbext-axi ``AxiLiteMaster`` drives the AXI4-Lite port; the
testbench drives the NPU-side inputs (``finish``, ``fail``, ``retire``, ``unit_busy``)
and is a scoreboard against :class:`npugen.golden.regmap.RegisterFileModel`: every
response (data and OKAY/SLVERR) and the ``irq`` output are compared with the model fed
the same accesses and the same input cycles.  Monitors record each ``start`` pulse with
the sampled window/program outputs, and each BUSY interval.

Python wakes per bus transaction and per input segment; the clock runs in the simulator.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, with_timeout
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from npugen.golden.regmap import ERROR_CODES, OKAY, SLVERR, RegisterFileModel
from npugen.sim.streams import CLOCK_NS, load_job, pause_pattern, reset_dut

#: Cycles one register access may take under the heaviest pattern before the test fails.
ACCESS_TIMEOUT_CYCLES = 5000
#: Sampled outputs of a START, in register-name order.
SAMPLED_PORTS = ("prog_addr", "read_base", "read_limit", "write_base", "write_limit")


def _bursts(rng, busy, length=4096):
    """Pause runs of 1..12 cycles separated by 1..12 free cycles (``busy`` = share paused)."""
    pattern = []
    while len(pattern) < length:
        pattern += [True] * rng.randint(1, 12) if rng.random() < busy else []
        pattern += [False] * rng.randint(1, 12)
    while True:
        yield from pattern


#: Bus patterns: channel → pause generator factory (``rng`` → generator).  Pauses on
#: AW/W/AR are idle cycles of the manager; on B/R they are back-pressure (ready low).
PATTERNS = {
    "none": {},
    "random": {ch: (lambda rng: pause_pattern(rng, 0.5)) for ch in ("aw", "w", "b", "ar", "r")},
    "bursty": {ch: (lambda rng: _bursts(rng, 0.6)) for ch in ("aw", "w", "b", "ar", "r")},
    "aw_late": {"aw": lambda rng: pause_pattern(rng, 0.85)},
    "w_late": {"w": lambda rng: pause_pattern(rng, 0.85)},
    "backpressure": {"b": lambda rng: pause_pattern(rng, 0.8),
                     "r": lambda rng: pause_pattern(rng, 0.8)},
}


def _cycles(t0, t1):
    cycles = (t1 - t0) / CLOCK_NS
    assert cycles == int(cycles), f"times {t0}, {t1} are not whole cycles apart"
    return int(cycles)


class RegistersTB:
    """Clock, reset, the AXI4-Lite master, the model and the monitors."""

    def __init__(self, dut, config, *, seed, pattern="none"):
        self.dut = dut
        self.config = config
        self.rng = random.Random(seed)
        self.model = RegisterFileModel(config)
        self.offsets = {reg.name: reg.offset for reg in self.model.map}
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axil_"), dut.clk, dut.rst)
        self.set_pattern(pattern)
        for name in ("finish", "fail", "fail_code", "fail_detail", "fail_pc", "retire",
                     "unit_busy"):
            getattr(dut, name).value = 0
        self.starts = []        # (time, {port: value}) of every start pulse
        self.busy_spans = []    # (rise, fall) times of BUSY
        cocotb.start_soon(self._watch_start())
        cocotb.start_soon(self._watch_busy())

    def channels(self):
        w, r = self.axil.write_if, self.axil.read_if
        return {"aw": w.aw_channel, "w": w.w_channel, "b": w.b_channel,
                "ar": r.ar_channel, "r": r.r_channel}

    def set_pattern(self, pattern):
        for name, channel in self.channels().items():
            factory = PATTERNS[pattern].get(name)
            channel.set_pause_generator(factory(self.rng) if factory else None)

    async def reset(self):
        await reset_dut(self.dut)

    async def _watch_start(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.start)
            rise = get_sim_time("ns")
            self.starts.append((rise, {p: int(getattr(dut, p).value) for p in SAMPLED_PORTS}))
            await FallingEdge(dut.start)
            width = _cycles(rise, get_sim_time("ns"))
            assert width == 1, f"start pulse of {width} cycles"

    async def _watch_busy(self):
        while True:
            await RisingEdge(self.dut.busy)
            rise = get_sim_time("ns")
            await FallingEdge(self.dut.busy)
            self.busy_spans.append((rise, get_sim_time("ns")))

    # -- bus accesses, each checked against the model --------------------------------------

    async def _timed(self, coro):
        return await with_timeout(coro, ACCESS_TIMEOUT_CYCLES * CLOCK_NS, "ns")

    async def read(self, offset, length=4, *, check=True):
        """Read ``length`` bytes at byte ``offset``; compare with the model; return the value."""
        resp = await self._timed(self.axil.read(offset, length))
        value = int.from_bytes(resp.data, "little")
        if check:
            word, want_resp = self.model.read(offset)
            shift = 8 * (offset % 4)
            want = (word >> shift) & ((1 << 8 * length) - 1) if want_resp == OKAY else 0
            assert (value, int(resp.resp)) == (want, want_resp), (
                f"read {offset:#05x}: got {value:#x} resp {int(resp.resp)}, "
                f"expected {want:#x} resp {want_resp}")
        return value

    async def write(self, offset, value, length=4):
        """Write ``length`` bytes of ``value`` at byte ``offset`` (strobes from the
        address); apply it to the model and compare the response."""
        data = (value & ((1 << 8 * length) - 1)).to_bytes(length, "little")
        resp = await self._timed(self.axil.write(offset, data))
        lane = offset % 4
        want = self.model.write(offset & ~3, value << 8 * lane,
                                ((1 << length) - 1) << lane)
        assert int(resp.resp) == want, (
            f"write {offset:#05x} = {value:#x}: got resp {int(resp.resp)}, expected {want}")
        self.check_irq()

    async def read_reg(self, name):
        return await self.read(self.offsets[name])

    async def write_reg(self, name, value):
        await self.write(self.offsets[name], value)

    def check_irq(self):
        got = int(self.dut.irq.value)
        assert got == self.model.irq, f"irq is {got}, the model says {self.model.irq}"

    async def check_all(self):
        """Read every register and compare with the model."""
        for reg in self.model.map:
            await self.read(reg.offset)
        self.check_irq()

    # -- the NPU side ----------------------------------------------------------------------

    async def align(self):
        """Resume just after a clock edge (inputs set now are sampled from the next)."""
        await RisingEdge(self.dut.clk)
        return get_sim_time("ns")

    async def segment(self, cycles, *, unit_busy=0, retire=0):
        """Hold ``unit_busy``/``retire`` for ``cycles`` cycles (the caller is aligned)."""
        self.dut.unit_busy.value = unit_busy
        self.dut.retire.value = retire
        await ClockCycles(self.dut.clk, cycles)
        self.model.step(cycles, unit_busy=unit_busy, retire=bool(retire))
        self.dut.unit_busy.value = 0
        self.dut.retire.value = 0

    async def end_run(self, *, fail=None, unit_busy=0, retire=0):
        """Pulse ``finish`` (or ``fail`` = (code, detail, pc)) for one cycle (aligned)."""
        dut = self.dut
        dut.unit_busy.value = unit_busy
        dut.retire.value = retire
        if fail is None:
            dut.finish.value = 1
        else:
            dut.fail.value = 1
            dut.fail_code.value, dut.fail_detail.value, dut.fail_pc.value = fail
        await RisingEdge(dut.clk)
        self.model.step(1, unit_busy=unit_busy, retire=bool(retire), finish=fail is None,
                        fail=fail)
        for name in ("finish", "fail", "fail_code", "fail_detail", "fail_pc", "retire",
                     "unit_busy"):
            getattr(dut, name).value = 0
        await ReadOnly()
        self.check_irq()
        await RisingEdge(dut.clk)

    async def start_run(self):
        """Write CTRL.START; return the time of the edge that set BUSY."""
        starts = len(self.starts)
        await self.write_reg("CTRL", 1)
        assert len(self.starts) == starts + 1, "no start pulse after CTRL.START"
        when, sampled = self.starts[-1]
        want = {name.lower(): value for name, value in self.model.sampled.items()}
        assert sampled == want, f"sampled outputs {sampled}, expected {want}"
        return when

    async def catch_up(self, since):
        """Step the model over the cycles from the edge ``since`` to now (inputs idle);
        leave the testbench aligned."""
        now = await self.align()
        if now > since:
            self.model.step(_cycles(since, now))
        return now


async def _tb(dut, *, pattern=None):
    job, config = load_job()
    pattern = job.get("pattern", "none") if pattern is None else pattern
    dut._log.info("seed=%d pattern=%s", job["seed"], pattern)
    tb = RegistersTB(dut, config, seed=job["seed"], pattern=pattern)
    await tb.reset()
    return tb


def _random_word(rng):
    return rng.choice([0, 0xFFFFFFFF, 0x80000000, 1, rng.getrandbits(32), rng.getrandbits(32)])


@cocotb.test()
async def reset_values_and_access(dut):
    """Every register's reset value (the ID block from the configuration); every offset
    of the 4 KiB space read (unmapped: SLVERR, data 0); every register written
    (RO/unmapped: SLVERR and nothing changes; RW: stored within its fields; WO: OKAY,
    reads as 0)."""
    tb = await _tb(dut, pattern="none")
    await tb.check_all()
    assert tb.model.read(tb.offsets["ID"])[0] == 0x4E505547
    mapped = {reg.offset for reg in tb.model.map}
    for offset in range(0, 1 << 12, 4):
        if offset not in mapped:
            await tb.read(offset)
    assert tb.model.read(0x050) == (0, SLVERR)

    for reg in tb.model.map:
        if reg.name == "CTRL":
            await tb.write(reg.offset, 0xFFFFFFFE)   # all but START: no effect
        else:
            await tb.write(reg.offset, _random_word(tb.rng))
            await tb.write(reg.offset, 0xFFFFFFFF)
        await tb.check_all()
    for offset in (0x050, 0x054, 0x0FC, 0x130, 0x200, 0xFFC,
                   *tb.rng.sample([o for o in range(0, 1 << 12, 4) if o not in mapped], 16)):
        await tb.write(offset, 0xFFFFFFFF)
    await tb.check_all()
    assert not tb.starts, "a write other than CTRL.START started the NPU"


@cocotb.test()
async def byte_strobes_and_unaligned_addresses(dut):
    """Byte and half-word writes (AXI strobes) merge into RW registers and act only on
    their bytes of W1C and CTRL; byte reads at unaligned addresses read the word."""
    tb = await _tb(dut, pattern="none")
    rw = [reg for reg in tb.model.map if reg.access == "RW"]
    for _ in range(120):
        reg = tb.rng.choice(rw)
        length = tb.rng.choice([1, 1, 2, 4])
        lane = tb.rng.randrange(0, 5 - length) if length < 4 else 0
        if length == 2:
            lane = tb.rng.choice([0, 2])
        await tb.write(reg.offset + lane, tb.rng.getrandbits(8 * length), length)
        await tb.read(reg.offset + tb.rng.randrange(4), 1)
        await tb.read(reg.offset)
    # CTRL.START is bit 0: a write that strobes only byte 1 does not start.
    await tb.write(tb.offsets["CTRL"] + 1, 0xFF, 1)
    assert not tb.starts
    await tb.check_all()


@cocotb.test()
async def run_sequencing(dut):
    """START pulses once and samples the windows; writes during the run and a second
    START change nothing of it; counters follow the inputs; finish and fail end runs
    with DONE / ERROR, codes, irq and W1C; START clears DONE/ERROR and the counters."""
    tb = await _tb(dut, pattern="none")
    rng = tb.rng
    await tb.write_reg("IRQ_ENABLE", 0b11)
    codes = list(ERROR_CODES.values())
    for run in range(6):
        for name in ("PROG_ADDR", "READ_BASE", "READ_LIMIT", "WRITE_BASE", "WRITE_LIMIT"):
            await tb.write_reg(name, rng.getrandbits(32))
        await tb.check_all()
        since = await tb.start_run()
        # While running: STATUS says BUSY, the program registers may change without
        # touching the sampled outputs, START is ignored.
        await tb.write_reg("PROG_ADDR", rng.getrandbits(32))
        await tb.write_reg("READ_LIMIT", rng.getrandbits(32))
        await tb.write_reg("CTRL", 1)
        since = await tb.catch_up(since)
        await tb.read_reg("STATUS")
        await tb.read_reg("ERROR")
        await tb.catch_up(since)
        for _ in range(rng.randint(1, 6)):
            await tb.segment(rng.randint(1, 40), unit_busy=rng.getrandbits(4),
                             retire=rng.getrandbits(1))
        fail = None
        if run % 2:
            fail = (rng.choice(codes[1:]), rng.getrandbits(8), rng.getrandbits(32))
        await tb.end_run(fail=fail, unit_busy=rng.getrandbits(4), retire=rng.getrandbits(1))
        assert len(tb.starts) == run + 1, f"{len(tb.starts)} start pulses after {run + 1} runs"
        rise, fall = tb.busy_spans[-1]
        assert tb.model.cycles == _cycles(rise, fall), \
            f"model counts {tb.model.cycles} cycles, BUSY was high for {_cycles(rise, fall)}"
        for port in ("finish", "fail", "retire"):   # outside a run the inputs do nothing
            getattr(dut, port).value = 1
        dut.unit_busy.value = 0xF
        await ClockCycles(dut.clk, 5)
        for port in ("finish", "fail", "retire", "unit_busy"):
            getattr(dut, port).value = 0
        await tb.check_all()
        status = tb.model.values["STATUS"]
        assert status == (0b100 if fail else 0b010), f"STATUS {status:#x} after run {run}"
        assert tb.model.irq == 1
        if run % 3 == 2:   # leave the interrupt pending into the next run
            continue
        await tb.write_reg("IRQ_STATUS", 0b11)
        await tb.check_all()
        assert int(dut.irq.value) == 0


@cocotb.test()
async def counters_wide(dut):
    """CYCLES is 64 bits: a run whose counter passes 2^32 (the counter is preset
    through the simulator) reads back the carried high word; INSTRET and a unit counter
    wrap at 2^32."""
    tb = await _tb(dut, pattern="none")
    await tb.catch_up(await tb.start_run())
    near = (1 << 32) - 7
    dut.cycles.value = near
    dut.instret.value = (1 << 32) - 3
    dut.load_busy.value = (1 << 32) - 2
    await RisingEdge(dut.clk)
    # The edge just taken counted one cycle on top of the preset values.
    tb.model.cycles = near + 1
    tb.model.values["INSTRET"] = (1 << 32) - 3
    tb.model.values["LOAD_BUSY"] = (1 << 32) - 2
    await tb.segment(20, unit_busy=0b0001, retire=1)
    await tb.end_run()
    want = near + 1 + 20 + 1
    hi = await tb.read_reg("CYCLES_HI")
    lo = await tb.read_reg("CYCLES_LO")
    assert (hi << 32 | lo) == want and hi == 1, f"CYCLES {hi:#x}:{lo:#010x}, expected {want:#x}"
    assert await tb.read_reg("INSTRET") == 17
    assert await tb.read_reg("LOAD_BUSY") == 18
    await tb.check_all()
    # A new START clears the high word too.
    await tb.catch_up(await tb.start_run())
    await tb.end_run()
    await tb.check_all()
    assert await tb.read_reg("CYCLES_HI") == 0


@cocotb.test()
async def irq_behaviour(dut):
    """irq = |(IRQ_STATUS & IRQ_ENABLE) for every enable; W1C clears one bit at a time;
    a new event in the cycle of a W1C clear of the same bit wins."""
    tb = await _tb(dut, pattern="none")
    await tb.catch_up(await tb.start_run())
    await tb.end_run()
    for enable in (0b00, 0b01, 0b10, 0b11, 0b00):
        await tb.write_reg("IRQ_ENABLE", enable)
        await tb.read_reg("IRQ_STATUS")
    await tb.start_run()
    await tb.catch_up(tb.starts[-1][0])
    await tb.end_run(fail=(ERROR_CODES["CORE"], 3, 0x1000))
    for enable in (0b01, 0b10, 0b11):
        await tb.write_reg("IRQ_ENABLE", enable)
    await tb.write_reg("IRQ_STATUS", 0b01)      # clears DONE only
    await tb.read_reg("IRQ_STATUS")
    await tb.write_reg("IRQ_STATUS", 0b00)      # writing 0 changes nothing
    await tb.write_reg("IRQ_STATUS", 0b10)
    await tb.check_all()

    # Race a W1C clear of DONE against a new DONE: sweep the finish pulse across the
    # write.  The clear acts at the edge that raises BVALID, the event at the edge that
    # samples finish; the bit ends set unless the clear came after the event, and set
    # when both are at the same edge.
    outcomes, coincided = set(), False
    for delay in range(8):
        await tb.write_reg("IRQ_STATUS", 0b11)
        await tb.start_run()
        await tb.catch_up(tb.starts[-1][0])
        await tb.end_run()                       # DONE pending
        await tb.start_run()
        since = await tb.catch_up(tb.starts[-1][0])
        bvalid_rise = cocotb.start_soon(_time_of(RisingEdge(dut.axil__bvalid)))
        clear = cocotb.start_soon(tb.axil.write(tb.offsets["IRQ_STATUS"],
                                                (0b01).to_bytes(4, "little")))
        if delay:
            await ClockCycles(dut.clk, delay)
        set_edge = since + (delay + 1) * CLOCK_NS
        dut.finish.value = 1
        await RisingEdge(dut.clk)
        dut.finish.value = 0
        resp = await with_timeout(clear, ACCESS_TIMEOUT_CYCLES * CLOCK_NS, "ns")
        clear_edge = await bvalid_rise
        assert int(resp.resp) == OKAY
        if delay:
            tb.model.step(delay)
        if clear_edge <= set_edge:
            tb.model.write(tb.offsets["IRQ_STATUS"], 0b01)
            tb.model.step(1, finish=True)
        else:
            tb.model.step(1, finish=True)
            tb.model.write(tb.offsets["IRQ_STATUS"], 0b01)
        coincided |= clear_edge == set_edge
        outcomes.add(tb.model.values["IRQ_STATUS"] & 1)
        await tb.check_all()
    assert coincided, "no finish pulse met the W1C clear in the same cycle"
    assert outcomes == {0, 1}, f"the sweep saw only IRQ_STATUS.DONE in {outcomes}"


async def _time_of(trigger):
    await trigger
    return get_sim_time("ns")


@cocotb.test()
async def independent_aw_w(dut):
    """W is accepted (and held) while AW is still idle, and AW while W is idle; the write
    completes correctly once the other half arrives."""
    tb = await _tb(dut, pattern="none")
    channels = tb.channels()
    for late, early in (("aw", "w"), ("w", "aw")):
        channels[late].set_pause_generator(iter([True] * 30 + [False]))
        value = tb.rng.getrandbits(32)
        task = cocotb.start_soon(tb.write(tb.offsets["READ_BASE"], value))
        await ClockCycles(dut.clk, 10)
        assert int(getattr(dut, f"axil__{late}valid").value) == 0, f"{late} not held back"
        assert int(getattr(dut, f"axil__{early}ready").value) == 0, \
            f"{early} was not taken while {late} was idle"
        assert int(dut.axil__bvalid.value) == 0
        await task
        await tb.read_reg("READ_BASE")
        assert tb.model.values["READ_BASE"] == value
        channels[late].set_pause_generator(None)


@cocotb.test()
async def bus_patterns(dut):
    """A random register workload under the job's bus pattern: sequential accesses, then
    a stream of writes concurrent with a stream of reads of other registers; every
    response and the irq output scored against the model."""
    tb = await _tb(dut)
    rng, rmap = tb.rng, tb.model.map
    mapped = {reg.offset for reg in rmap}
    unmapped = [o for o in range(0, 1 << 12, 4) if o not in mapped]
    rw = [reg.offset for reg in rmap if reg.access == "RW"]
    ro = [reg.offset for reg in rmap if reg.access == "RO"]
    irq = [tb.offsets["IRQ_ENABLE"], tb.offsets["IRQ_STATUS"]]

    # An event to clear later, so IRQ_STATUS has bits set.
    await tb.start_run()
    await tb.catch_up(tb.starts[-1][0])
    await tb.end_run(fail=(ERROR_CODES["BAD_FIELD"], 0x03, 0x40))
    await tb.start_run()
    await tb.catch_up(tb.starts[-1][0])
    await tb.segment(rng.randint(1, 9), unit_busy=rng.getrandbits(4), retire=1)
    await tb.end_run()

    for _ in range(250):
        kind = rng.random()
        if kind < 0.45:
            await tb.read(rng.choice(sorted(mapped)))
        elif kind < 0.5:
            await tb.read(rng.choice(unmapped))
        elif kind < 0.75:
            await tb.write(rng.choice(rw), _random_word(rng))
        elif kind < 0.85:
            await tb.write(rng.choice(irq), rng.getrandbits(2))
        elif kind < 0.92:
            await tb.write(rng.choice(ro), _random_word(rng))
        else:
            await tb.write(rng.choice(unmapped), _random_word(rng))

    # Concurrent phase: writes to some RW registers (and refused ones) while reads go to
    # registers those writes cannot change.
    targets = [tb.offsets[n] for n in ("PROG_ADDR", "READ_BASE", "WRITE_LIMIT")]
    readable = [o for o in sorted(mapped) if o not in targets]

    async def writer():
        for _ in range(80):
            kind = rng.random()
            offset = rng.choice(targets) if kind < 0.7 else \
                rng.choice(ro) if kind < 0.85 else rng.choice(unmapped)
            await tb.write(offset, _random_word(rng))

    async def reader():
        for _ in range(80):
            await tb.read(rng.choice(readable) if rng.random() < 0.9 else rng.choice(unmapped))

    tasks = [cocotb.start_soon(writer()), cocotb.start_soon(reader())]
    for task in tasks:
        await task
    await tb.check_all()
    assert len(tb.starts) == 2
