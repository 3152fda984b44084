# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.controller.Controller`.

The controller runs against behavioural models written here (the test environment):
an instruction fetch (a byte-addressed program memory with a read window, optional AXI
errors, random stalls, a few cycles of draining after ``flush``) and the four units
(commands take a per-instruction number of cycles; the compute model keeps two MATMULs
in flight, reports ``reads_done`` before ``done``; any unit can be told to fail).  A
reference in Python (the ranges table of docs/ISA.md) checks at every dispatch that no
instruction of another unit still in flight conflicts with it, and that dispatch is in
program order.

Cycle convention (tests/cycle_sim.py): in a cycle the inputs are set and the outputs
read, then ``await ctx.tick()``.
"""

import random
from dataclasses import dataclass, field

import pytest
from amaranth.lib import data

from cycle_sim import simulate
from npugen.golden.config import NPUConfig, PRESETS
from npugen.hw.controller import Controller, UnitControlSignature, UNIT_KINDS
from npugen.hw.dma_read import fetch_item_layout
from npugen.hw.isa import (LoadTarget, NPUError, Opcode, VectorOp, load_layout,
                           matmul_layout, store_layout, vector_layout)
from npugen.hw.scratchpad import act_lanes

TINY = PRESETS["tiny"]
#: int8 and bf16, no 2:4, small scratchpads.
SMALL = NPUConfig(rows=2, cols=3, acc_depth=16, out_fifo_depth=4, modes=("int8", "bf16"),
                  axi_data_bits=32, act_sp_depth=64, wgt_sp_depth=64, out_sp_depth=64,
                  param_sp_depth=16)
BASE = 0x1000


# ------------------------------------------------------------------------ encoding

def value(member):
    """The integer of an enum member (or of an integer)."""
    return getattr(member, "value", member)


def encode(layout, **fields):
    return layout.const(fields).as_value().value


def LOAD(target=LoadTarget.ACT, sp=0, n=1, outer=1, lanes=1, addr=0x8000, **kw):
    return encode(load_layout, opcode=Opcode.LOAD.value, target=value(target), sp_addr=sp,
                  inner_count=n, outer_count=outer, lanes=lanes, addr=addr, **kw)


def STORE(sp=0, n=1, outer=1, lanes=1, elem_bytes=4, addr=0x9000, **kw):
    return encode(store_layout, opcode=Opcode.STORE.value, elem_bytes=elem_bytes, sp_addr=sp,
                  inner_count=n, outer_count=outer, lanes=lanes, addr=addr, **kw)


def MATMUL(act=0, wgt=0, out=0, param=0, m_rows=1, k_tiles=1, k_valid_last=1, **kw):
    return encode(matmul_layout, opcode=Opcode.MATMUL.value, act_addr=act, wgt_addr=wgt,
                  out_addr=out, param_addr=param, m_rows=m_rows, k_tiles=k_tiles,
                  k_valid_last=k_valid_last, **{"out_min": -128, "out_max": 127, **kw})


def VECTOR(op=VectorOp.ADD, count=1, src=0, dst=0, n_words=1, **kw):
    fields = {"n_valid": 1, "multiplier": 1 << 30, **kw}
    return encode(vector_layout, opcode=Opcode.VECTOR.value, op=value(op), count=count, src=src,
                  dst=dst, n_words=n_words, **fields)


FENCE = Opcode.FENCE.value
END = Opcode.END.value


def opcode(bits):
    return bits & 0xFF


# ------------------------------------------------------------------------ ISA reference

SPS = ("ACT", "WGT", "WIDX", "PARAM", "OUT")
OPCODES = {op.value for op in Opcode}


def isa_ranges(config, bits):
    """(reads, writes): lists of (scratchpad, start, end) as docs/ISA.md tabulates them."""
    op = Opcode(opcode(bits)) if opcode(bits) in OPCODES else None
    if op == Opcode.LOAD:
        f = data.Const(load_layout, bits)
        return [], [(SPS[f.target], f.sp_addr, f.sp_addr + f.outer_count * f.inner_count)]
    if op == Opcode.STORE:
        f = data.Const(store_layout, bits)
        return [("OUT", f.sp_addr, f.sp_addr + f.outer_count * f.inner_count)], []
    if op == Opcode.MATMUL:
        f = data.Const(matmul_layout, bits)
        wgt = (f.wgt_addr, f.wgt_addr + f.k_tiles * config.rows)
        return ([("ACT", f.act_addr, f.act_addr + f.k_tiles * f.m_rows), ("WGT", *wgt),
                 ("WIDX", *wgt), ("PARAM", f.param_addr, f.param_addr + 3)],
                [("OUT", f.out_addr, f.out_addr + f.m_rows)])
    if op == Opcode.VECTOR:
        f = data.Const(vector_layout, bits)
        reads = [("OUT", f.src, f.src + (f.count - 1) * f.src_stride + f.n_words)]
        if f.op in (VectorOp.ADD.value, VectorOp.SUB.value):
            reads.append(("OUT", f.src_b, f.src_b + (f.count - 1) * f.src_stride + f.n_words))
        d_words = 1 if f.op == VectorOp.ROWMAX.value else f.n_words
        return reads, [("OUT", f.dst, f.dst + (f.count - 1) * f.dst_stride + d_words)]
    return [], []


def overlaps(a, b):
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


KIND = {Opcode.LOAD.value: "load", Opcode.STORE.value: "store",
        Opcode.VECTOR.value: "vector", Opcode.MATMUL.value: "compute"}


# ------------------------------------------------------------------------ models

@dataclass
class Job:
    index: int
    bits: int
    accepted: int
    done_at: float
    reads_at: float = None
    error_at: float = None
    error: tuple = None         # (code, detail) for the compute model: (NPUError, core code)


class UnitModel:
    """A unit: accepts when it has room, pulses done (and reads_done), can fail."""

    def __init__(self, kind, port):
        self.kind = kind
        self.port = port
        self.capacity = 2 if kind == "compute" else 1
        self.jobs = []
        self.failed = False
        self.abort_left = 0
        self.pulses = {}

    def drive(self, ctx, cycle):
        p = self.port
        live = not self.failed
        ready = len(self.jobs) < self.capacity and live and self.abort_left == 0
        done = live and bool(self.jobs) and self.jobs[0].done_at == cycle
        reads = live and any(job.reads_at == cycle for job in self.jobs)
        err = next((j for j in self.jobs if j.error_at == cycle), None) if live else None
        ctx.set(p.cmd.ready, ready)
        ctx.set(p.busy, bool(self.jobs) or self.failed or self.abort_left > 0)
        ctx.set(p.done, done)
        if self.kind == "compute":
            ctx.set(p.reads_done, reads)
        if self.kind != "vector":
            ctx.set(p.error_valid, err is not None)
            if err is not None:
                ctx.set(p.error, err.error[0])
                if self.kind == "compute":
                    ctx.set(p.error_detail, err.error[1])
                    ctx.set(p.error_index, self.jobs.index(err))
        self.pulses = {"ready": ready, "done": done, "reads": reads, "err": err}

    def update(self, ctx, cycle, bench):
        p = self.port
        if self.pulses["done"]:
            bench.complete(self.kind, self.jobs.pop(0), cycle)
        if self.pulses["reads"]:
            bench.reads_done(next(j for j in self.jobs if j.reads_at == cycle), cycle)
        if self.pulses["err"] is not None:
            self.failed = True
            bench.event("error", self.kind, cycle)
        if ctx.get(p.cmd.valid) and self.pulses["ready"]:
            bits = ctx.get(p.cmd.payload.as_value())
            self.jobs.append(bench.dispatch(self.kind, bits, cycle, self.jobs))
        if self.abort_left:
            self.abort_left -= 1
        if ctx.get(p.abort):
            # Like the DMA engines: drop the work, then stay busy for a few cycles (and
            # for as long as `abort` stays high).
            bench.aborted_units.add(self.kind)
            bench.abort_cycles.add(cycle)
            self.abort_left = 3
            self.jobs.clear()
            self.failed = False


class FetchModel:
    """Instruction fetch: program memory, read window, AXI errors, stalls, flush drain."""

    def __init__(self, dut, rng):
        self.dut = dut
        self.rng = rng
        self.mem = {}
        self.window = (0, 0)
        self.axi_errors = set()
        self.stall = 0.0
        self.active = False
        self.pc = 0
        self.drain = 0
        self.flushing = False
        self.presenting = False

    def item(self):
        lo, hi = self.window
        if not (lo <= self.pc and self.pc + 32 <= hi):
            return 0, NPUError.BAD_HOST_ADDRESS
        if self.pc in self.axi_errors:
            return 0, NPUError.AXI_READ_ERROR
        return self.mem.get(self.pc, 0), NPUError.NONE

    def drive(self, ctx):
        instr = self.dut.instr
        if self.active and (self.presenting or self.rng.random() >= self.stall):
            bits, fault = self.item()
            ctx.set(instr.valid, 1)
            ctx.set(instr.payload, {"bits": bits, "pc": self.pc, "fault": fault})
            self.presenting = True
        else:
            ctx.set(instr.valid, 0)
            self.presenting = False
        ctx.set(self.dut.fetch_idle, not self.active and self.drain == 0)

    def update(self, ctx, bench):
        dut = self.dut
        if self.presenting and ctx.get(dut.instr.ready):
            _, fault = self.item()
            bench.fetched.append(self.pc)
            self.presenting = False
            if fault != NPUError.NONE:
                self.active = False
            else:
                self.pc += 32
        if ctx.get(dut.fetch_start):
            assert not self.active and self.drain == 0, "fetch started while busy"
            self.active = True
            self.pc = ctx.get(dut.fetch_addr)
            bench.fetch_starts.append(self.pc)
        if ctx.get(dut.fetch_flush):
            if not self.flushing:
                self.drain = 3 if self.active else 0
            self.flushing = True
            self.active = False
            self.presenting = False
        else:
            self.flushing = False
        if self.drain:
            self.drain -= 1


@dataclass
class Outcome:
    result: str = None                  # "finish" or "fail"
    code: int = None
    detail: int = None
    pc: int = None
    end_cycle: int = None
    retired: int = 0
    dispatched: list = field(default_factory=list)     # program indices in dispatch order
    times: dict = field(default_factory=dict)          # index → {"dispatch", "reads", "done"}
    aborted: set = field(default_factory=set)
    errors: list = field(default_factory=list)


class Bench:
    """The controller and its models; runs programs one after the other (no reset)."""

    def __init__(self, config, *, seed=0, stall=0.0):
        self.config = config
        self.dut = Controller(config)
        self.rng = random.Random(seed)
        self.fetch = FetchModel(self.dut, self.rng)
        self.fetch.stall = stall
        self.units = {kind: UnitModel(kind, getattr(self.dut, kind)) for kind in UNIT_KINDS}
        self.cycle = 0
        self.fetched = []
        self.fetch_starts = []
        self.aborted_units = set()
        self.abort_cycles = set()
        self.outcome = None
        self.program = []
        self.spec = {}
        self.inflight = []     # reference: [index, kind, reads, writes, reads_active]

    # -- reference bookkeeping --------------------------------------------------------------

    def event(self, kind, what, cycle):
        if self.outcome is not None and kind == "error":
            self.outcome.errors.append((what, cycle))

    def dispatch(self, kind, bits, cycle, jobs):
        out = self.outcome
        assert out is not None and out.result is None, f"{kind} dispatched outside a run"
        expected = [i for i, b in enumerate(self.program)
                    if opcode(b) in KIND and i not in out.dispatched]
        index = expected[0]
        assert bits == self.program[index], f"dispatch out of order at cycle {cycle}"
        assert KIND[opcode(bits)] == kind
        reads, writes = isa_ranges(self.config, bits)
        for other, okind, oreads, owrites, oactive in self.inflight:
            if okind == kind:
                continue
            hazards = [(a, b) for a in reads for b in owrites if overlaps(a, b)]
            hazards += [(a, b) for a in writes for b in owrites if overlaps(a, b)]
            if oactive:
                hazards += [(a, b) for a in writes for b in oreads if overlaps(a, b)]
            assert not hazards, (f"instruction {index} dispatched at {cycle} conflicts with "
                                 f"instruction {other} in flight: {hazards}")
        self.inflight.append([index, kind, reads, writes, True])
        out.dispatched.append(index)
        out.times[index] = {"dispatch": cycle}
        spec = self.spec.get(index, {})
        duration = spec.get("duration", 4)
        job = Job(index, bits, cycle, cycle + duration)
        if kind == "compute":
            prev = jobs[-1] if jobs else None
            start = max(cycle + 1, prev.reads_at + 1 if prev else 0)
            job.reads_at = start + spec.get("reads", 3)
            job.done_at = max(job.reads_at + duration, prev.done_at + 1 if prev else 0)
        if "error" in spec:
            after, code, *detail = spec["error"]
            job.error_at = cycle + after
            job.error = (code, detail[0] if detail else 0)
        return job

    def reads_done(self, job, cycle):
        self.outcome.times[job.index]["reads"] = cycle
        for entry in self.inflight:
            if entry[0] == job.index:
                entry[4] = False

    def complete(self, kind, job, cycle):
        self.outcome.times[job.index]["done"] = cycle
        self.inflight = [e for e in self.inflight if e[0] != job.index]

    # -- cycles -----------------------------------------------------------------------------

    async def step(self, ctx):
        dut = self.dut
        self.fetch.drive(ctx)
        for unit in self.units.values():
            unit.drive(ctx, self.cycle)
        out = self.outcome
        aborting = any(ctx.get(u.port.abort) for u in self.units.values())
        for unit in self.units.values():
            assert not (ctx.get(unit.port.cmd.valid) and aborting), "dispatch during abort"
        if out is not None:
            if ctx.get(dut.retire):
                assert not (ctx.get(dut.finish) or ctx.get(dut.fail))
                out.retired += 1
            if ctx.get(dut.finish) or ctx.get(dut.fail):
                assert out.result is None, "second finish/fail pulse"
                assert not any(u.jobs or u.abort_left for u in self.units.values()), \
                    "finish/fail while a unit is busy"
                assert not self.fetch.active and self.fetch.drain == 0
                out.result = "finish" if ctx.get(dut.finish) else "fail"
                out.code = ctx.get(dut.fail_code)
                out.detail = ctx.get(dut.fail_detail)
                out.pc = ctx.get(dut.fail_pc)
                out.end_cycle = self.cycle
        for unit in self.units.values():
            unit.update(ctx, self.cycle, self)
        self.fetch.update(ctx, self)
        await ctx.tick()
        self.cycle += 1

    async def run_program(self, ctx, program, *, prog_addr=BASE, window=None, spec=None,
                          axi_errors=(), timeout=3000):
        """Run one program to its finish/fail pulse; return its :class:`Outcome`."""
        origin = prog_addr & ~31
        self.fetch.mem = {origin + 32 * i: bits for i, bits in enumerate(program)}
        self.fetch.window = window or (origin, origin + 32 * len(program))
        self.fetch.axi_errors = set(axi_errors)
        self.program = list(program)
        self.spec = spec or {}
        self.inflight = []
        self.aborted_units = set()
        self.abort_cycles = set()
        self.outcome = Outcome()
        ctx.set(self.dut.prog_addr, prog_addr)
        ctx.set(self.dut.start, 1)
        await self.step(ctx)
        ctx.set(self.dut.start, 0)
        for _ in range(timeout):
            if self.outcome.result is not None:
                break
            await self.step(ctx)
        else:
            raise AssertionError(f"program neither finished nor failed in {timeout} cycles")
        for _ in range(6):          # nothing happens after the end
            await self.step(ctx)
        outcome = self.outcome
        outcome.aborted = set(self.aborted_units)
        assert len(self.abort_cycles) <= 1, f"abort is not a one-cycle pulse: {self.abort_cycles}"
        self.outcome = None
        assert ctx.get(self.dut.busy) == 0
        return outcome

    def run(self, script):
        simulate(self.dut, script)


def run_programs(config, runs, *, seed=0, stall=0.0):
    """Run ``[(program, kwargs), ...]`` back to back; return the outcomes."""
    bench = Bench(config, seed=seed, stall=stall)
    outcomes = []

    async def script(ctx):
        for program, kwargs in runs:
            outcomes.append(await bench.run_program(ctx, program, **kwargs))

    bench.run(script)
    return outcomes


def assert_finished(out, program):
    assert out.result == "finish", out
    executed = [i for i, b in enumerate(program) if opcode(b) in KIND]
    assert out.dispatched == executed
    assert out.retired == len(program)
    assert all("done" in out.times[i] for i in executed)


def run_finished(program, spec):
    """Run ``program`` alone on TINY with the unit timings ``spec``; check that it
    finished and return its outcome."""
    out, = run_programs(TINY, [(program, {"spec": spec})])
    assert_finished(out, program)
    return out


# ------------------------------------------------------------------------ parameters

def test_bad_parameters():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 8$"):
        Controller(8)
    with pytest.raises(ValueError, match=r"^kind must be one of load, store, vector, compute, "
                                         r"not 'dma'$"):
        UnitControlSignature("dma")


def test_signatures_and_ports():
    assert UnitControlSignature("load") == UnitControlSignature("load")
    assert UnitControlSignature("load") != UnitControlSignature("store")
    assert repr(UnitControlSignature("compute")) == "UnitControlSignature('compute')"
    assert set(UnitControlSignature("vector").members) == {"cmd", "done", "busy", "abort"}
    assert set(UnitControlSignature("compute").members) == {
        "cmd", "done", "busy", "abort", "error", "error_valid", "error_detail",
        "error_index", "reads_done"}
    dut = Controller(TINY)
    assert dut.config is TINY
    assert len(dut.instr.payload.as_value()) == fetch_item_layout().size == 256 + 32 + 8


# ------------------------------------------------------------------------ hazards

def test_load_after_matmul_waits_for_reads_and_disjoint_ranges_overlap():
    program = [
        LOAD(LoadTarget.ACT, sp=100, n=10),                  # 0: long, disjoint
        MATMUL(act=0, m_rows=10, k_tiles=4, out=0),          # 1: ACT [0, 40), OUT [0, 10)
        LOAD(LoadTarget.ACT, sp=20, n=10),                   # 2: WAR on ACT [20, 30)
        STORE(sp=20, n=4),                                   # 3: disjoint OUT
        STORE(sp=5, n=2),                                    # 4: RAW on OUT [5, 7)
        END,
    ]
    spec = {0: {"duration": 15}, 1: {"reads": 30, "duration": 40}, 3: {"duration": 3}}
    t = run_finished(program, spec).times
    assert t[1]["dispatch"] < t[0]["done"]                 # MATMUL runs beside the LOAD
    assert t[2]["dispatch"] > t[1]["reads"]                # the LOAD waits for the reads...
    assert t[2]["dispatch"] < t[1]["done"]                 # ...not for the results
    assert t[3]["dispatch"] < t[1]["done"]                 # disjoint STORE overlaps
    assert t[4]["dispatch"] > t[1]["done"]                 # RAW on OUT
    assert t[2]["dispatch"] - t[1]["reads"] <= 4           # and not much later


def test_out_hazards_between_compute_vector_and_store():
    program = [
        MATMUL(out=0, m_rows=8),                                   # 0: OUT [0, 8)
        VECTOR(VectorOp.ADD, src=4, src_b=30, dst=16, n_words=2),  # 1: RAW on OUT [4, 6)
        STORE(sp=16, n=2),                                         # 2: RAW on the VECTOR
        MATMUL(out=17, m_rows=1),                                  # 3: WAR on the STORE
        VECTOR(VectorOp.CLAMP, src=40, dst=17, n_words=1),         # 4: WAW on MATMUL 3
        MATMUL(out=40, m_rows=2),                                  # 5: WAR on VECTOR 4
        VECTOR(VectorOp.CLAMP, src=60, dst=50, n_words=2),         # 6
        MATMUL(out=51, m_rows=1),                                  # 7: WAW on VECTOR 6
        END,
    ]
    spec = {0: {"duration": 30}, 1: {"duration": 20}, 2: {"duration": 20},
            3: {"duration": 15}, 4: {"duration": 12}, 6: {"duration": 25}}
    t = run_finished(program, spec).times
    assert t[1]["dispatch"] > t[0]["done"]
    assert t[2]["dispatch"] > t[1]["done"]
    assert t[3]["dispatch"] > t[2]["done"]
    assert t[4]["dispatch"] > t[3]["done"]
    assert t[5]["dispatch"] > t[4]["done"]
    assert t[7]["dispatch"] > t[6]["done"]


def test_matmul_waits_for_loads_of_its_operands():
    program = [
        LOAD(LoadTarget.WGT, sp=6, n=2),                   # 0
        MATMUL(wgt=4, k_tiles=2, m_rows=2, out=0),         # 1: WGT [4, 8): RAW on 0
        LOAD(LoadTarget.WIDX, sp=7, n=1),                  # 2: WAR on WIDX [4, 8)
        LOAD(LoadTarget.PARAM, sp=9, n=2),                 # 3
        MATMUL(param=8, out=4, wgt=20),                    # 4: PARAM [8, 11): RAW on 3
        LOAD(LoadTarget.ACT, sp=3, n=1),                   # 5: disjoint from every read
        END,
    ]
    spec = {0: {"duration": 20}, 1: {"reads": 15, "duration": 10}, 3: {"duration": 25}}
    t = run_finished(program, spec).times
    assert t[1]["dispatch"] > t[0]["done"]
    assert t[2]["dispatch"] > t[1]["reads"]
    assert t[4]["dispatch"] > t[3]["done"]
    assert t[5]["dispatch"] > t[3]["done"]            # in order behind LOAD 3 only
    assert t[5]["dispatch"] < t[4]["done"]


def test_two_matmuls_in_flight_then_wait():
    program = [MATMUL(out=0), MATMUL(out=1), MATMUL(out=2), END]
    spec = {i: {"reads": 10, "duration": 20} for i in range(3)}
    t = run_finished(program, spec).times
    assert t[1]["dispatch"] < t[0]["done"]
    assert t[2]["dispatch"] > t[0]["done"]


def test_fence_and_end():
    program = [LOAD(n=1), STORE(n=1), MATMUL(out=9), FENCE, LOAD(sp=50), END]
    spec = {0: {"duration": 20}, 1: {"duration": 35}, 2: {"duration": 10}, 4: {"duration": 2}}
    out = run_finished(program, spec)
    t = out.times
    assert t[4]["dispatch"] > max(t[i]["done"] for i in range(3))
    assert t[1]["dispatch"] < t[0]["done"]
    assert out.end_cycle > t[4]["done"]


@pytest.mark.parametrize("seed", [201, 202, 203])
def test_random_programs_keep_order_and_hazards(seed):
    """Random instructions on small ranges (many conflicts), random latencies and fetch
    stalls: in-order dispatch, no conflict in flight, FENCE, END, exact retire count."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    runs = []
    for _ in range(3):
        program, spec = [], {}
        for i in range(rng.randint(8, 20)):
            kind = rng.choice(["load", "load", "store", "matmul", "matmul", "vector", "fence"])
            a = lambda: rng.randrange(12)
            if kind == "load":
                bits = LOAD(rng.choice(list(LoadTarget)), sp=a(), n=rng.randint(1, 4))
            elif kind == "store":
                bits = STORE(sp=a(), n=rng.randint(1, 3))
            elif kind == "matmul":
                bits = MATMUL(act=a(), wgt=a(), out=a(), param=a(), m_rows=rng.randint(1, 3),
                              k_tiles=rng.randint(1, 2))
            elif kind == "vector":
                src = a()
                bits = VECTOR(rng.choice([VectorOp.ADD, VectorOp.CLAMP]), src=src, dst=src,
                              src_b=a() + 20, n_words=rng.randint(1, 3))
            else:
                bits = FENCE
            program.append(bits)
            spec[i] = {"duration": rng.randint(1, 15), "reads": rng.randint(1, 8)}
        program.append(END)
        runs.append((program, {"spec": spec}))
    outcomes = run_programs(TINY, runs, seed=seed, stall=0.3)
    for (program, _), out in zip(runs, outcomes):
        assert_finished(out, program)
        for i, bits in enumerate(program):
            if bits == FENCE:
                before = [j for j in out.times if j < i]
                after = [j for j in out.times if j > i]
                if before and after:
                    assert min(out.times[j]["dispatch"] for j in after) > \
                        max(out.times[j]["done"] for j in before)


# ------------------------------------------------------------------------ static errors

def static_error_cases(config):
    """(instruction, code, detail) of every static check of docs/ISA.md on ``config``."""
    C, R = config.cols, config.rows
    A = act_lanes(config)
    E = NPUError
    L, S, M, V = (Opcode.LOAD.value, Opcode.STORE.value, Opcode.MATMUL.value,
                  Opcode.VECTOR.value)
    cases = [
        (0x00, E.ILLEGAL_OPCODE, 0x00),
        (0x06, E.ILLEGAL_OPCODE, 0x06),
        (0xFF, E.ILLEGAL_OPCODE, 0xFF),
        # LOAD
        (LOAD(4), E.ILLEGAL_OPCODE, L),
        (LOAD(15, n=0), E.ILLEGAL_OPCODE, L),
        (LOAD(n=0), E.BAD_FIELD, L),
        (LOAD(outer=0), E.BAD_FIELD, L),
        (LOAD(lanes=0), E.BAD_FIELD, L),
        (LOAD(LoadTarget.ACT, lanes=A + 1), E.BAD_FIELD, L),
        (LOAD(LoadTarget.WGT, lanes=C + 1), E.BAD_FIELD, L),
        (LOAD(LoadTarget.PARAM, lanes=C + 1), E.BAD_FIELD, L),
        (LOAD(LoadTarget.ACT, sp=config.act_sp_depth - 3, n=2, outer=2), E.BAD_SP_ADDRESS, L),
        (LOAD(LoadTarget.WGT, sp=config.wgt_sp_depth, n=1), E.BAD_SP_ADDRESS, L),
        (LOAD(LoadTarget.PARAM, sp=0, n=0xFFFF, outer=0xFFFF), E.BAD_SP_ADDRESS, L),
        (LOAD(LoadTarget.PARAM, sp=config.param_sp_depth - 1, n=2, lanes=0),
         E.BAD_FIELD, L),                                   # BAD_FIELD comes first
        # STORE
        (STORE(elem_bytes=2), E.BAD_FIELD, S),
        (STORE(elem_bytes=0), E.BAD_FIELD, S),
        (STORE(n=0), E.BAD_FIELD, S),
        (STORE(outer=0), E.BAD_FIELD, S),
        (STORE(lanes=0), E.BAD_FIELD, S),
        (STORE(lanes=C + 1), E.BAD_FIELD, S),
        (STORE(sp=config.out_sp_depth - 4, n=5), E.BAD_SP_ADDRESS, S),
        # MATMUL
        (MATMUL(mode=3), E.BAD_FIELD if "bf16" in config.modes else E.FEATURE_NOT_BUILT, M),
        (MATMUL(m_rows=0), E.BAD_FIELD, M),
        (MATMUL(m_rows=config.acc_depth + 1), E.BAD_FIELD, M),
        (MATMUL(k_tiles=0), E.BAD_FIELD, M),
        (MATMUL(k_valid_last=0), E.BAD_FIELD, M),
        (MATMUL(k_valid_last=R + 1), E.BAD_FIELD, M),
        (MATMUL(out_min=5, out_max=4), E.BAD_FIELD, M),
        (MATMUL(act=config.act_sp_depth - 5, m_rows=3, k_tiles=2), E.BAD_SP_ADDRESS, M),
        (MATMUL(wgt=config.wgt_sp_depth - 2 * R + 1, k_tiles=2), E.BAD_SP_ADDRESS, M),
        (MATMUL(param=config.param_sp_depth - 2), E.BAD_SP_ADDRESS, M),
        (MATMUL(out=config.out_sp_depth - 1, m_rows=2), E.BAD_SP_ADDRESS, M),
        (MATMUL(out=0xFFFF, m_rows=0xFFFF, k_tiles=0xFFFF, act=0xFFFF), E.BAD_FIELD, M),
        # VECTOR
        (VECTOR(11), E.ILLEGAL_OPCODE, V),
        (VECTOR(15, count=0), E.ILLEGAL_OPCODE, V),
        (VECTOR(count=0), E.BAD_FIELD, V),
        (VECTOR(n_words=0), E.BAD_FIELD, V),
        (VECTOR(VectorOp.SOFTMAX, n_valid=0), E.BAD_FIELD, V),
        (VECTOR(VectorOp.ROWMAX, n_words=2, n_valid=2 * C + 1, dst=10), E.BAD_FIELD, V),
        (VECTOR(VectorOp.REQUANT, shift=31), E.BAD_FIELD, V),
        (VECTOR(VectorOp.SOFTMAX, shift=-32), E.BAD_FIELD, V),
        (VECTOR(VectorOp.REQUANT, multiplier=-1), E.BAD_FIELD, V),
        (VECTOR(VectorOp.CLAMP, lo=1, hi=0), E.BAD_FIELD, V),
        (VECTOR(VectorOp.REQUANT, lo=-3, hi=-4), E.BAD_FIELD, V),
        # The field checks apply to every op, also to fields it does not use.
        (VECTOR(VectorOp.ADD, src=0, src_b=8, dst=8, n_valid=0), E.BAD_FIELD, V),
        (VECTOR(VectorOp.SUB, src=0, src_b=8, dst=8, n_valid=C + 1), E.BAD_FIELD, V),
        (VECTOR(VectorOp.CLAMP, shift=100), E.BAD_FIELD, V),
        (VECTOR(VectorOp.ROWMAX, multiplier=-5), E.BAD_FIELD, V),
        (VECTOR(VectorOp.ADD, src=0, src_b=8, dst=8, lo=9, hi=-9), E.BAD_FIELD, V),
        # Destination against sources: overlap without being identical, or identical
        # with rows that overlap each other.
        (VECTOR(VectorOp.CLAMP, src=0, dst=1, n_words=2), E.BAD_FIELD, V),
        (VECTOR(VectorOp.CLAMP, count=2, src=0, dst=0, src_stride=2, dst_stride=3),
         E.BAD_FIELD, V),
        (VECTOR(VectorOp.ADD, src=0, dst=0, src_b=1, n_words=2), E.BAD_FIELD, V),
        (VECTOR(VectorOp.CLAMP, count=2, src=0, dst=0, src_stride=1, dst_stride=1,
                n_words=2), E.BAD_FIELD, V),
        (VECTOR(VectorOp.ROWMAX, count=2, src=4, dst=4), E.BAD_FIELD, V),
        (VECTOR(VectorOp.MAX, src=0, dst=0, src_b=1, n_words=2), E.BAD_FIELD, V),
        (VECTOR(VectorOp.PACK_INT4, count=2, src=0, dst=0, src_stride=1, dst_stride=1,
                n_words=3), E.BAD_FIELD, V),
        (VECTOR(VectorOp.PACK_BINARY, src=0, dst=1, n_words=9), E.BAD_FIELD, V),
        # A BF16 conversion writes 2·n_words words: identical or overlapping → BAD_FIELD;
        # without the bf16 mode it is not built.
        *([(VECTOR(VectorOp.TO_BF16, src=0, dst=0, n_words=2), E.BAD_FIELD, V),
           (VECTOR(VectorOp.TO_BF16_RELU, src=4, dst=1, n_words=2), E.BAD_FIELD, V),
           (VECTOR(VectorOp.TO_BF16, src=0, dst=config.out_sp_depth - 3, n_words=2),
            E.BAD_SP_ADDRESS, V)] if "bf16" in config.modes else
          [(VECTOR(VectorOp.TO_BF16, src=0, dst=8, n_words=2), E.FEATURE_NOT_BUILT, V),
           (VECTOR(VectorOp.TO_BF16_RELU, src=0, dst=0, n_words=2), E.FEATURE_NOT_BUILT,
            V)]),
        (VECTOR(VectorOp.PACK_BINARY, src=0, dst=config.out_sp_depth - 1, n_words=9),
         E.BAD_SP_ADDRESS, V),
        (VECTOR(VectorOp.MAX, src=0, src_b=config.out_sp_depth - 1, dst=4, n_words=2),
         E.BAD_SP_ADDRESS, V),
        (VECTOR(VectorOp.PACK_INT4, src=0, dst=config.out_sp_depth - 1, n_words=3),
         E.BAD_SP_ADDRESS, V),
        (VECTOR(VectorOp.SUB, count=2, src=0, dst=10, src_b=10, src_stride=1, dst_stride=1,
                n_words=2), E.BAD_FIELD, V),
        (VECTOR(VectorOp.CLAMP, src=config.out_sp_depth - 1, dst=0, n_words=2),
         E.BAD_SP_ADDRESS, V),
        (VECTOR(VectorOp.SUB, src=0, src_b=config.out_sp_depth - 1, dst=4, n_words=2),
         E.BAD_SP_ADDRESS, V),
        (VECTOR(VectorOp.CLAMP, count=3, src=0, dst=8, dst_stride=config.out_sp_depth // 2),
         E.BAD_SP_ADDRESS, V),
        (VECTOR(VectorOp.CLAMP, count=0xFFFF, src=1, src_stride=0xFFFF, dst=5),
         E.BAD_FIELD, V),                    # the exact (wide) ranges overlap
    ]
    if config.sparse_2_4:
        cases += [
            (MATMUL(mode=1, sparse=1), E.FEATURE_NOT_BUILT, M),
            (MATMUL(mode=3, sparse=1), E.FEATURE_NOT_BUILT, M),
            (MATMUL(sparse=1, k_valid_last=2 * R + 1), E.BAD_FIELD, M),
            (MATMUL(mode=1, k_valid_last=2 * R + 1), E.BAD_FIELD, M),
            (MATMUL(mode=2, k_valid_last=8 * R + 1), E.BAD_FIELD, M),
            (LOAD(LoadTarget.WIDX, sp=config.wgt_sp_depth - 1, n=2), E.BAD_SP_ADDRESS, L),
        ]
    if "bf16" in config.modes:
        cases += [(MATMUL(mode=3, raw=1, k_valid_last=R // 2 + 1), E.BAD_FIELD, M),
                  (MATMUL(mode=3, raw=1, sparse=1), E.FEATURE_NOT_BUILT, M)]
    if not config.sparse_2_4:
        cases += [
            (LOAD(LoadTarget.WIDX), E.FEATURE_NOT_BUILT, L),
            (LOAD(LoadTarget.WIDX, n=0), E.FEATURE_NOT_BUILT, L),
            (MATMUL(sparse=1), E.FEATURE_NOT_BUILT, M),
            (MATMUL(mode=1), E.FEATURE_NOT_BUILT, M),
            (MATMUL(mode=2, k_valid_last=0), E.FEATURE_NOT_BUILT, M),
        ]
    return cases


def valid_edge_cases(config):
    """Instructions at the edge of every check that must run."""
    C, R = config.cols, config.rows
    cases = [
        LOAD(LoadTarget.ACT, sp=config.act_sp_depth - 4, n=2, outer=2, lanes=act_lanes(config)),
        LOAD(LoadTarget.PARAM, sp=config.param_sp_depth - 1, lanes=C),
        STORE(sp=config.out_sp_depth - 5, n=5, lanes=C, elem_bytes=1),
        MATMUL(act=config.act_sp_depth - 6, m_rows=3, k_tiles=2, k_valid_last=R,
               wgt=config.wgt_sp_depth - 2 * R, param=config.param_sp_depth - 3,
               out=config.out_sp_depth - 3, out_min=7, out_max=7),
        MATMUL(m_rows=config.acc_depth),
        VECTOR(VectorOp.CLAMP, count=2, src=3, dst=3, src_stride=2, dst_stride=2, n_words=2),
        VECTOR(VectorOp.ROWMAX, count=2, src=0, dst=0, src_stride=3, dst_stride=3, n_words=3,
               n_valid=3 * C),
        VECTOR(VectorOp.ROWMAX, count=3, src=0, dst=0, src_stride=1, dst_stride=1,
               n_words=3, n_valid=3 * C),                  # ROWMAX writes one word a row
        VECTOR(VectorOp.ADD, count=2, src=0, src_b=8, dst=8, src_stride=2, dst_stride=2,
               n_words=2, n_valid=2 * C, lo=-9, hi=9, shift=-31, multiplier=0),
        VECTOR(VectorOp.REQUANT, shift=-31, lo=-1, hi=-1, src=config.out_sp_depth - 1,
               dst=config.out_sp_depth - 1),
        VECTOR(VectorOp.SOFTMAX, shift=30, n_valid=1, src=0, dst=20, multiplier=0),
        VECTOR(VectorOp.PACK_INT4, count=2, src=0, dst=0, src_stride=2, dst_stride=2,
               n_words=3),                                # PACK_INT4 writes ceil(3/2) a row
        VECTOR(VectorOp.PACK_BINARY, src=0, dst=config.out_sp_depth - 2, n_words=16),
        VECTOR(VectorOp.MAX, count=2, src=0, src_b=8, dst=8, src_stride=2, dst_stride=2,
               n_words=2),
    ]
    if config.sparse_2_4:
        cases += [MATMUL(sparse=1, k_valid_last=2 * R), MATMUL(mode=1, k_valid_last=2 * R),
                  MATMUL(mode=2, k_valid_last=8 * R),
                  LOAD(LoadTarget.WIDX, sp=config.wgt_sp_depth - 1, lanes=C)]
    if "bf16" in config.modes:
        cases += [MATMUL(mode=3, raw=1, k_valid_last=R // 2)]
    return cases


def golden_check(config, bits):
    """``(code, detail)`` of ``golden.npu_model.check_instruction`` (or ``None``)."""
    from npugen.golden.isa import IllegalInstruction, decode
    from npugen.golden.npu_model import check_instruction
    try:
        instr = decode(bits.to_bytes(32, "little"))
    except IllegalInstruction:
        return NPUError.ILLEGAL_OPCODE.value, opcode(bits)
    found = check_instruction(config, instr)
    return None if found is None else (int(found[0]), found[1])


@pytest.mark.parametrize("config", [TINY, SMALL], ids=["tiny", "small"])
def test_static_errors(config):
    """Every static check gives its code and detail with the instruction's address; the
    instruction before it completes, nothing after it is dispatched; then valid edge
    cases run — all back to back, each run a new START without reset."""
    cases = static_error_cases(config)
    runs = []
    for bad, _, _ in cases:
        program = [LOAD(sp=1, n=1), bad, LOAD(sp=2), END]
        runs.append((program, {"spec": {0: {"duration": 12}}}))
    edges = valid_edge_cases(config)
    runs += [([bits, END], {}) for bits in edges]
    # The golden model's static checks agree with every expectation.
    for bad, code, detail in cases:
        assert golden_check(config, bad) == (code.value, detail), f"instruction {bad:#x}"
    for bits in edges:
        assert golden_check(config, bits) is None, f"instruction {bits:#x}"
    outcomes = run_programs(config, runs)
    for (bad, code, detail), out in zip(cases, outcomes):
        what = f"instruction {bad:#x}"
        assert (out.result, NPUError(out.code), out.detail, out.pc) == \
            ("fail", code, detail, BASE + 32), what
        assert out.dispatched == [0], what
        assert out.times[0]["done"] < out.end_cycle, what      # the LOAD before completed
        assert out.retired == 1, what
        assert not out.aborted, what
    for bits, out in zip(edges, outcomes[len(cases):]):
        assert_finished(out, [bits, END])


# ------------------------------------------------------------------------ fetch faults

def test_fetch_faults_and_prefetch_past_end():
    good = [LOAD(sp=0), LOAD(sp=1), STORE(sp=0)]
    runs = [
        # The window ends after three instructions: the fourth is a fault (detail 0).
        (good, {"spec": {2: {"duration": 20}}}),
        # An AXI error on the second instruction's read.
        (good + [END], {"axi_errors": [BASE + 32]}),
        # Running into zeroed memory: opcode 0 is illegal.
        (good, {"window": (BASE, BASE + 0x400)}),
        # END followed by a fault and an AXI error: both prefetched, never reached.
        (good + [END], {"axi_errors": [BASE + 4 * 32], "window": (BASE, BASE + 4 * 32)}),
    ]
    out = run_programs(TINY, runs, stall=0.2, seed=5)
    assert (out[0].result, NPUError(out[0].code), out[0].detail, out[0].pc) == \
        ("fail", NPUError.BAD_HOST_ADDRESS, 0, BASE + 96)
    assert out[0].dispatched == [0, 1, 2] and out[0].retired == 3
    assert out[0].times[2]["done"] < out[0].end_cycle
    assert (out[1].result, NPUError(out[1].code), out[1].detail, out[1].pc) == \
        ("fail", NPUError.AXI_READ_ERROR, 0, BASE + 32)
    assert out[1].dispatched == [0]
    assert (out[2].result, NPUError(out[2].code), out[2].detail, out[2].pc) == \
        ("fail", NPUError.ILLEGAL_OPCODE, 0, BASE + 96)
    assert_finished(out[3], good + [END])


def test_misaligned_prog_addr_then_restart():
    program = [LOAD(), END]
    bench = Bench(TINY)
    outcomes = []

    async def script(ctx):
        outcomes.append(await bench.run_program(ctx, program, prog_addr=BASE + 0x10))
        assert bench.fetch_starts == [] and bench.fetched == []
        outcomes.append(await bench.run_program(ctx, program))

    bench.run(script)
    bad, good = outcomes
    assert bench.fetch_starts == [BASE]
    assert (bad.result, NPUError(bad.code), bad.detail, bad.pc) == \
        ("fail", NPUError.MISALIGNED, 0, BASE + 0x10)
    assert bad.dispatched == [] and bad.retired == 0
    assert_finished(good, program)


# ------------------------------------------------------------------------ unit errors

def test_unit_errors_abort_and_restart():
    E = NPUError
    long_matmul = {"reads": 30, "duration": 40}
    runs = [
        # 0: a LOAD fails at run time; the MATMUL in flight is aborted, nothing after it
        #    is dispatched.
        ([LOAD(sp=0), MATMUL(out=0), LOAD(sp=9), STORE(sp=30), END],
         {"spec": {1: long_matmul, 2: {"duration": 10, "error": (3, E.BAD_HOST_ADDRESS)}}}),
        # 1: a STORE fails.
        ([STORE(sp=0), END], {"spec": {0: {"duration": 10, "error": (2, E.MISALIGNED)}}}),
        # 2: the second of two MATMULs in flight fails (error_index 1).
        ([MATMUL(out=0), MATMUL(out=1), END],
         {"spec": {0: long_matmul, 1: {"error": (2, E.CORE, 6)}}}),
        # 3: the oldest MATMUL fails (error_index 0).
        ([MATMUL(out=0), MATMUL(out=1), END],
         {"spec": {0: {**long_matmul, "error": (5, E.CORE, 2)}}}),
        # 4: a static error is pending (the LOAD before it runs) when the LOAD fails:
        #    the older error wins.
        ([LOAD(sp=0), 0x77, END],
         {"spec": {0: {"duration": 30, "error": (15, E.AXI_READ_ERROR)}}}),
        # 5: END is waiting when the LOAD before it fails.
        ([LOAD(sp=0), END], {"spec": {0: {"duration": 30, "error": (20, E.BAD_HOST_ADDRESS)}}}),
        # 6: a clean run afterwards.
        ([LOAD(sp=0), MATMUL(out=0), STORE(sp=0), END], {}),
    ]
    out = run_programs(TINY, runs)
    expect = [(E.BAD_HOST_ADDRESS, Opcode.LOAD.value, BASE + 64),
              (E.MISALIGNED, Opcode.STORE.value, BASE),
              (E.CORE, 6, BASE + 32),
              (E.CORE, 2, BASE),
              (E.AXI_READ_ERROR, Opcode.LOAD.value, BASE),
              (E.BAD_HOST_ADDRESS, Opcode.LOAD.value, BASE)]
    for i, (code, detail, pc) in enumerate(expect):
        assert (out[i].result, NPUError(out[i].code), out[i].detail, out[i].pc) == \
            ("fail", code, detail, pc), i
        assert out[i].aborted == set(UNIT_KINDS), i
    assert out[0].dispatched == [0, 1, 2]
    assert "done" not in out[0].times[1]          # the MATMUL was aborted
    assert out[0].retired == 1                    # only the first LOAD completed
    assert out[4].dispatched == [0] and out[4].retired == 0
    assert_finished(out[6], runs[6][0])
