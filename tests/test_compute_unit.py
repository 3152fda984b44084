# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.compute_unit.ComputeUnit`.

The unit runs on the real :class:`~npugen.hw.scratchpad.Scratchpads`.  The testbench
fills ACT, WGT, WIDX and PARAM through the LoadEngine port with the words of
``golden.tile_program.lower_gemm`` (the GEMM core's stream contract, laid out as
docs/ISA.md places a MATMUL's operands), issues MATMUL instructions, records every OUT
write and status pulse, and compares OUT with the golden results bit for bit.

Cycle convention (tests/cycle_sim.py): in a cycle the inputs are set and the outputs
read, then ``await ctx.tick()``.
"""

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Fragment, Module
from amaranth.lib import wiring

from cycle_sim import simulate
from npugen.golden.config import NPUConfig, PRESETS
from npugen.golden.npu_perf import Timing
from npugen.golden.perf_model import result_latency
from npugen.golden.precision import mode_code, k_per_tile
from npugen.golden.tile_program import lower_gemm, random_gemm_job
from npugen.hw.compute_unit import ComputeUnit
from npugen.hw.gemm_core import CoreError
from npugen.hw.isa import LoadTarget, NPUError, Opcode, matmul_layout
from npugen.hw.scratchpad import Scratchpads, act_lanes

TINY = PRESETS["tiny"]


class Harness(Elaboratable):
    """A ComputeUnit wired to the scratchpads, as in the NPU top."""

    def __init__(self, config):
        self.sp = Scratchpads(config)
        self.cu = ComputeUnit(config)

    def elaborate(self, platform):
        m = Module()
        m.submodules.sp = self.sp
        m.submodules.cu = self.cu
        wiring.connect(m, act=self.cu.act_rd, sp=self.sp.act_rd)
        wiring.connect(m, wgt=self.cu.wgt_rd, sp=self.sp.wgt_rd)
        wiring.connect(m, param=self.cu.param_rd, sp=self.sp.param_rd)
        wiring.connect(m, out=self.cu.out_wr, sp=self.sp.out_wr_compute)
        return m


def pack(values, bits):
    """Little-endian lanes of ``bits`` bits (two's complement) in one integer."""
    word = 0
    for j, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (bits * j)
    return word


def lanes(word, bits, count):
    """The signed lanes of ``word``."""
    out = []
    for j in range(count):
        v = (word >> (bits * j)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


@dataclass
class Matmul:
    """One MATMUL: its instruction fields, scratchpad words and expected OUT rows."""
    fields: dict
    act: list            # ACT words from act_addr
    wgt: list            # WGT words from wgt_addr
    widx: list           # WIDX words (bytes, index in the low 2 bits) from wgt_addr
    param: list          # 3 PARAM words from param_addr
    expected: list       # OUT rows (cols int32 lanes) from out_addr
    name: str = ""

    @property
    def m_rows(self):
        return self.fields["m_rows"]

    @property
    def k_tiles(self):
        return self.fields["k_tiles"]

    def instruction(self):
        return matmul_layout.const({"opcode": Opcode.MATMUL.value, **self.fields}).as_value().value


def make_matmul(config, job, *, act_addr, wgt_addr, out_addr, param_addr, rng, name=""):
    """The MATMUL computing ``job`` (M ≤ acc_depth, N ≤ cols) from the given addresses."""
    program = lower_gemm(config, job)
    M, K, N = job.shape
    assert M <= config.acc_depth and N <= config.cols
    k_tiles = len(program.commands)
    k_tile = k_per_tile(config, job.mode, job.sparsity)
    quant = program.quant[0]
    widx = []
    if config.sparse_2_4:
        # Garbage in the upper 6 bits of every index byte: the scratchpad keeps 2 bits.
        widx = [pack([(int(i) & 3) | (rng.randrange(64) << 2) for i in row], 8)
                for row in program.weight_index_rows]
    fields = {
        "mode": mode_code(job.mode), "sparse": int(job.sparsity is not None),
        "raw": int(job.raw), "m_rows": M, "k_tiles": k_tiles,
        "k_valid_last": K - (k_tiles - 1) * k_tile,
        "act_addr": act_addr, "wgt_addr": wgt_addr, "out_addr": out_addr,
        "param_addr": param_addr, "a_zero_point": job.a_zero_point,
        "out_zero_point": quant.out_zero_point, "out_min": quant.out_min,
        "out_max": quant.out_max,
    }
    return Matmul(
        fields=fields,
        act=[pack(row, 8) for row in program.act_rows],
        wgt=[pack(row, 8) for row in program.weight_rows],
        widx=widx,
        param=[pack(quant.bias, 32), pack(quant.multiplier, 32), pack(quant.shift, 32)],
        expected=[[int(v) for v in row] for row in program.result_rows],
        name=name)


@dataclass
class Trace:
    accepted: list = field(default_factory=list)      # cycle of each cmd handshake
    done: list = field(default_factory=list)          # cycles of done pulses
    reads_done: list = field(default_factory=list)
    writes: list = field(default_factory=list)        # (cycle, addr, lanes)
    errors: list = field(default_factory=list)        # (cycle, error, detail, index)
    busy: list = field(default_factory=list)          # busy of every cycle
    out: dict = field(default_factory=dict)           # OUT words read back at the end
    cycles: int = 0


class Bench:
    """Drives a Harness: scratchpad loads, MATMUL issue, status recording."""

    def __init__(self, config):
        self.config = config
        self.harness = Harness(config)
        self.trace = Trace()
        self.cycle = 0

    # -- per-cycle recording ------------------------------------------------------------

    def sample(self, ctx):
        cu = self.harness.cu
        t = self.trace
        if ctx.get(cu.out_wr.valid) and ctx.get(cu.out_wr.ready):
            t.writes.append((self.cycle, ctx.get(cu.out_wr.addr),
                             lanes(ctx.get(cu.out_wr.data.as_value()), 32, self.config.cols)))
        if ctx.get(cu.done):
            t.done.append(self.cycle)
        if ctx.get(cu.reads_done):
            t.reads_done.append(self.cycle)
        if ctx.get(cu.error_valid):
            t.errors.append((self.cycle, ctx.get(cu.error), ctx.get(cu.error_detail),
                             ctx.get(cu.error_index)))
        t.busy.append(ctx.get(cu.busy))

    async def tick(self, ctx):
        self.sample(ctx)
        await ctx.tick()
        self.cycle += 1

    # -- actions --------------------------------------------------------------------------

    async def load(self, ctx, target, addr, words):
        port = self.harness.sp.load_wr
        for i, word in enumerate(words):
            ctx.set(port.target, target)
            ctx.set(port.addr, addr + i)
            ctx.set(port.data, word)
            ctx.set(port.en, 1)
            await self.tick(ctx)
        ctx.set(port.en, 0)

    async def load_matmul(self, ctx, mm):
        f = mm.fields
        await self.load(ctx, LoadTarget.ACT, f["act_addr"], mm.act)
        await self.load(ctx, LoadTarget.WGT, f["wgt_addr"], mm.wgt)
        if mm.widx:
            await self.load(ctx, LoadTarget.WIDX, f["wgt_addr"], mm.widx)
        await self.load(ctx, LoadTarget.PARAM, f["param_addr"], mm.param)

    async def issue(self, ctx, instruction, *, timeout=1000):
        cmd = self.harness.cu.cmd
        ctx.set(cmd.payload.as_value(), instruction)
        ctx.set(cmd.valid, 1)
        for _ in range(timeout):
            if ctx.get(cmd.ready):
                self.trace.accepted.append(self.cycle)
                await self.tick(ctx)
                ctx.set(cmd.valid, 0)
                return
            await self.tick(ctx)
        raise AssertionError("MATMUL not accepted")

    async def idle(self, ctx, cycles):
        for _ in range(cycles):
            await self.tick(ctx)

    async def wait_done(self, ctx, count, *, timeout):
        for _ in range(timeout):
            if len(self.trace.done) >= count:
                return
            await self.tick(ctx)
        raise AssertionError(f"only {len(self.trace.done)} of {count} MATMULs done "
                             f"after {timeout} cycles")

    async def read_out(self, ctx, addrs):
        port = self.harness.sp.out_rd_store
        for addr in addrs:
            ctx.set(port.addr, addr)
            ctx.set(port.en, 1)
            await ctx.tick()
            ctx.set(port.en, 0)
            self.trace.out[addr] = lanes(ctx.get(port.data.as_value()), 32, self.config.cols)

    def run(self, script):
        async def testbench(ctx):
            await script(ctx, self)
            self.trace.cycles = self.cycle

        simulate(self.harness, testbench)
        return self.trace


def check_results(bench, matmuls):
    for mm in matmuls:
        base = mm.fields["out_addr"]
        for m, want in enumerate(mm.expected):
            got = bench.trace.out[base + m]
            assert got == want, f"{mm.name}: OUT row {m} is {got}, expected {want}"


def check_writes_in_range(trace, matmuls):
    """Every OUT write lands in its MATMUL's rows, in order, exactly once."""
    expected = [mm.fields["out_addr"] + m for mm in matmuls for m in range(mm.m_rows)]
    assert [addr for _, addr, _ in trace.writes] == expected


def random_matmuls(config, rng, count, *, seed):
    """Random MATMULs of every built mode (and 2:4), packed into disjoint ranges."""
    py = random.Random(seed)
    kinds = [(mode, None) for mode in config.modes]
    if config.sparse_2_4:
        kinds.append(("int8", "2:4"))
    out = []
    act = wgt = outp = param = 0
    for i in range(count):
        mode, sparsity = kinds[i % len(kinds)] if i < len(kinds) else py.choice(kinds)
        k_tile = k_per_tile(config, mode, sparsity)
        m = py.choice([1, 2, config.rows, 2 * config.rows + 1, py.randint(1, 3 * config.rows + 4)])
        k = py.choice([1, k_tile - 1, k_tile, k_tile + 1, py.randint(1, 3 * k_tile + 1)])
        k = max(k, 1)
        n = py.randint(1, config.cols)
        job = random_gemm_job(rng, m, k, n, mode=mode, sparsity=sparsity,
                              raw=py.random() < 0.3, extremes=py.random() < 0.2)
        k_tiles = math.ceil(k / k_tile)
        mm = make_matmul(config, job, act_addr=act, wgt_addr=wgt, out_addr=outp,
                         param_addr=param, rng=py, name=f"matmul {i} ({mode}, {sparsity})")
        out.append(mm)
        act += k_tiles * m + py.randint(0, 3)
        wgt += k_tiles * config.rows + py.randint(0, 3)
        outp += m + py.randint(0, 3)
        param += 3 + py.randint(0, 2)
    assert act <= config.act_sp_depth and wgt <= config.wgt_sp_depth
    assert outp <= config.out_sp_depth and param <= config.param_sp_depth
    return out


# -------------------------------------------------------------------- parameters / ports

def test_bad_parameters():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 'tiny'$"):
        ComputeUnit("tiny")
    with pytest.raises(TypeError, match=r"^pe_module must be None or a Verilog module name, "
                                        r"not 3$"):
        ComputeUnit(TINY, pe_module=3)
    with pytest.raises(ValueError, match=r"^pe_module must be None or a Verilog module name, "
                                         r"not '1pe'$"):
        ComputeUnit(TINY, pe_module="1pe")


def test_ports_and_elaboration():
    cu = ComputeUnit(TINY, pe_module="npu_pe")
    assert cu.pe_module == "npu_pe" and cu.config is TINY
    assert len(cu.act_rd.data.as_value()) == 8 * act_lanes(TINY)
    assert len(cu.out_wr.data.as_value()) == 32 * TINY.cols
    assert len(cu.cmd.payload.as_value()) == 256
    pe = cu.pe_component()
    assert pe.modes == TINY.modes and pe.sparse == TINY.sparse_2_4
    Fragment.get(pe, None)
    Fragment.get(cu, None)


# -------------------------------------------------------------------- results

@pytest.mark.parametrize("seed", [101, 102, 103])
def test_random_matmuls_tiny(seed):
    """MATMULs of every mode back to back (two in flight), random gaps; OUT bit-exact."""
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    py = random.Random(seed)
    config = TINY
    matmuls = random_matmuls(config, rng, 7, seed=seed)
    gaps = [py.choice([0, 0, 0, 1, 5, 40]) for _ in matmuls]

    async def script(ctx, bench):
        for mm in matmuls:
            await bench.load_matmul(ctx, mm)
        for mm, gap in zip(matmuls, gaps):
            await bench.issue(ctx, mm.instruction())
            await bench.idle(ctx, gap)
        await bench.wait_done(ctx, len(matmuls), timeout=5000)
        await bench.idle(ctx, 3)
        await bench.read_out(ctx, [mm.fields["out_addr"] + i for mm in matmuls
                                   for i in range(mm.m_rows)])

    bench = Bench(config)
    trace = bench.run(script)
    check_results(bench, matmuls)
    check_writes_in_range(trace, matmuls)
    assert trace.errors == []
    assert len(trace.done) == len(trace.reads_done) == len(matmuls)
    for i, (rd, done) in enumerate(zip(trace.reads_done, trace.done)):
        assert rd < done, f"matmul {i}: reads_done at {rd}, done at {done}"
        assert trace.accepted[i] < rd
    # The last result row of each MATMUL is written the cycle before its done pulse.
    last_writes = [w[0] for w in trace.writes]
    ends = np.cumsum([mm.m_rows for mm in matmuls]) - 1
    assert [last_writes[e] + 1 for e in ends] == trace.done
    assert trace.busy[-1] == 0


def run_back_to_back(config, jobs, *, seed, act_stride, wgt_stride, out_stride):
    """Load a MATMUL per job (its operands ``*_stride`` words after the previous one's),
    issue them one after the other, wait for every ``done`` and check the results."""
    matmuls = [make_matmul(config, job, act_addr=act_stride * i, wgt_addr=wgt_stride * i,
                           out_addr=out_stride * i, param_addr=3 * i, rng=random.Random(seed),
                           name=f"matmul {i}")
               for i, job in enumerate(jobs)]

    async def script(ctx, bench):
        for mm in matmuls:
            await bench.load_matmul(ctx, mm)
        for mm in matmuls:
            await bench.issue(ctx, mm.instruction())
        await bench.wait_done(ctx, len(matmuls), timeout=2000)
        await bench.read_out(ctx, [out_stride * i + r for i, mm in enumerate(matmuls)
                                   for r in range(mm.m_rows)])

    bench = Bench(config)
    trace = bench.run(script)
    check_results(bench, matmuls)
    return trace


def test_two_in_flight_and_backlog():
    """A third MATMUL waits until the first is done; the second is accepted at once."""
    seed = 111
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, 9, 5, 2) for _ in range(3)]
    trace = run_back_to_back(TINY, jobs, seed=seed, act_stride=40, wgt_stride=10,
                             out_stride=16)
    assert trace.accepted[1] == trace.accepted[0] + 1
    assert trace.accepted[2] == trace.done[0]     # the cycle after the last write


# -------------------------------------------------------------------- throughput


def test_short_one_tile_matmuls_wait_for_their_requantization_beat():
    """Tiny (2 rows): two back-to-back one-tile MATMULs of 3 rows finish
    ``Timing.quant_reload`` cycles apart (the next beat is read once the previous one is
    taken and checked a cycle after it is offered), not ``2·rows + 1``; 7-row ones 7
    cycles apart (their rows)."""
    seed = 115
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = TINY
    for m_rows, period in ((3, Timing().quant_reload), (7, 7)):
        jobs = [random_gemm_job(rng, m_rows, config.rows, config.cols) for _ in range(2)]
        trace = run_back_to_back(config, jobs, seed=seed, act_stride=8, wgt_stride=2,
                                 out_stride=8)
        assert trace.done[1] - trace.done[0] == period, m_rows


def test_default_preset_throughput():
    """Default preset: MATMULs run at one activation row per cycle; operand fetch,
    weight preload of the next MATMUL and result draining are hidden."""
    seed = 121
    print(f"seed={seed}")
    config = PRESETS["default"]
    rng = np.random.default_rng(seed)
    py = random.Random(seed)
    R = config.rows
    shapes = [(48, 4 * R, config.cols, None), (40, 3 * 2 * R - 3, 5, "2:4"),
              (33, 2 * R + 1, config.cols, None)]
    matmuls = []
    act = wgt = out = 0
    for i, (m, k, n, sparsity) in enumerate(shapes):
        job = random_gemm_job(rng, m, k, n, sparsity=sparsity, raw=i == 2)
        mm = make_matmul(config, job, act_addr=act, wgt_addr=wgt, out_addr=out,
                         param_addr=4 * i, rng=py, name=f"matmul {i}")
        act += mm.m_rows * mm.k_tiles
        wgt += R * mm.k_tiles
        out += mm.m_rows
        matmuls.append(mm)

    async def script(ctx, bench):
        for mm in matmuls:
            await bench.load_matmul(ctx, mm)
        for mm in matmuls:
            await bench.issue(ctx, mm.instruction())
        await bench.wait_done(ctx, len(matmuls), timeout=3000)
        await bench.read_out(ctx, range(out))

    bench = Bench(config)
    trace = bench.run(script)
    check_results(bench, matmuls)
    rows = [mm.m_rows * mm.k_tiles for mm in matmuls]
    total = trace.done[-1] - trace.accepted[0]
    per_matmul = [trace.done[0] - trace.accepted[0]] + [
        b - a for a, b in zip(trace.done, trace.done[1:])]
    print(f"rows m_rows*k_tiles={rows} cycles per MATMUL={per_matmul} total={total} "
          f"(sum rows {sum(rows)})")
    # Fill once: the first weight tile (rows) and the operand reads (3), then one row per
    # cycle, then the pipeline latency of the last row.
    overhead = R + 3 + result_latency(config)
    assert total == sum(rows) + overhead, (total, sum(rows), overhead)
    assert sum(rows) / total >= 0.9
    # In steady state a MATMUL costs exactly its rows.
    assert per_matmul[1:] == rows[1:]


# -------------------------------------------------------------------- errors and abort

def bad_shift_param(mm, value):
    shifts = lanes(mm.param[2], 32, 2)
    shifts[-1] = value
    mm.param[2] = pack(shifts, 32)


@pytest.mark.parametrize("case, detail", [
    ("shift_67", CoreError.BAD_SHIFT),          # would wrap to 3 if truncated to 6 bits
    ("shift_31", CoreError.BAD_SHIFT),
    ("shift_-32", CoreError.BAD_SHIFT),
    ("shift_-2147483648", CoreError.BAD_SHIFT),
    ("int4_zero_point", CoreError.BAD_ZERO_POINT),
    ("sparse_index", CoreError.BAD_SPARSE_INDEX),
    # Several data errors: BAD_ZERO_POINT, then BAD_SPARSE_INDEX, then BAD_SHIFT.
    ("int4_zero_point+shift_40", CoreError.BAD_ZERO_POINT),
    ("sparse_index+shift_40", CoreError.BAD_SPARSE_INDEX),
])
@pytest.mark.parametrize("position", [0, 1])
def test_core_error_then_reuse(case, detail, position):
    """A faulty MATMUL (oldest or second in flight) reports CORE with the core's code
    and its age, the unit is idle the next cycle, and a following MATMUL is exact."""
    seed = 131
    print(f"seed={seed}")
    config = TINY
    rng = np.random.default_rng(seed)
    py = random.Random(seed)
    good = [make_matmul(config, random_gemm_job(rng, 20, 9, 2), act_addr=0, wgt_addr=0,
                        out_addr=0, param_addr=0, rng=py, name="good 0")]
    # One K tile, so that the fault shows while the good MATMUL's rows are in flight.
    faults = case.split("+")
    if "int4_zero_point" in faults:
        job = random_gemm_job(rng, 5, 4, 2, mode="int4")
    elif "sparse_index" in faults:
        job = random_gemm_job(rng, 5, 4, 2, sparsity="2:4")
    else:
        job = random_gemm_job(rng, 5, 2, 2)
    bad = make_matmul(config, job, act_addr=200, wgt_addr=100, out_addr=100,
                      param_addr=10, rng=py, name="bad")
    for fault in faults:
        if fault.startswith("shift_"):
            bad_shift_param(bad, int(fault[len("shift_"):]))
        elif fault == "int4_zero_point":
            bad.fields["a_zero_point"] = -9
        else:
            # Group 0 of tile 0, column 0: both slots point at position 1.
            bad.widx[0] = (bad.widx[0] & ~3) | 1
            bad.widx[1] = (bad.widx[1] & ~3) | 1
    after = make_matmul(config, random_gemm_job(rng, 7, 6, 2, mode="int8"), act_addr=400,
                        wgt_addr=300, out_addr=300, param_addr=30, rng=py, name="after")
    order = [bad] if position == 0 else [good[0], bad]

    async def script(ctx, bench):
        for mm in order + [after]:
            await bench.load_matmul(ctx, mm)
        for mm in order:
            await bench.issue(ctx, mm.instruction())
        for _ in range(2000):
            if bench.trace.errors:
                break
            await bench.tick(ctx)
        await bench.idle(ctx, 5)
        await bench.issue(ctx, after.instruction())
        await bench.wait_done(ctx, len(bench.trace.done) + 1, timeout=2000)
        await bench.read_out(ctx, [300 + r for r in range(after.m_rows)])

    bench = Bench(config)
    trace = bench.run(script)
    assert len(trace.errors) == 1, trace.errors
    cycle, code, got_detail, index = trace.errors[0]
    assert code == NPUError.CORE and got_detail == detail
    assert index == position
    assert trace.busy[cycle + 1] == 0
    assert not [w for w in trace.writes if 100 <= w[1] < 100 + bad.m_rows]
    check_results(bench, [after])
    assert len(trace.done) == 1      # `after` only: the aborted MATMULs never finish


def test_error_index_counts_from_the_oldest_unreported_matmul():
    """``error_index`` counts from the oldest MATMUL whose ``done`` has not pulsed before
    the error cycle.  The second MATMUL's bad 2:4 index (in its last K tile) is found
    earlier or later as its rows vary, so the error lands before, on and after the
    first MATMUL's ``done``."""
    seed = 161
    print(f"seed={seed}")
    config = TINY
    rng = np.random.default_rng(seed)
    py = random.Random(seed)
    pairs = []
    for m2 in range(14, 26):
        first = make_matmul(config, random_gemm_job(rng, 12, 2, 2), act_addr=0, wgt_addr=0,
                            out_addr=0, param_addr=0, rng=py)
        second = make_matmul(config, random_gemm_job(rng, m2, 8, 2, sparsity="2:4"),
                             act_addr=100, wgt_addr=100, out_addr=100, param_addr=10, rng=py)
        for row in (2, 3):                       # tile 1, column 0: indices 1 and 1
            second.widx[row] = (second.widx[row] & ~3) | 1
        pairs.append((first, second))
    windows = []

    async def script(ctx, bench):
        for first, second in pairs:
            await bench.load_matmul(ctx, first)
            await bench.load_matmul(ctx, second)
            start = bench.cycle
            await bench.issue(ctx, first.instruction())
            await bench.issue(ctx, second.instruction())
            for _ in range(300):
                if len(bench.trace.errors) > len(windows):
                    break
                await bench.tick(ctx)
            await bench.idle(ctx, 3)
            windows.append(start)

    bench = Bench(config)
    trace = bench.run(script)
    assert len(trace.errors) == len(pairs)
    offsets = []          # error cycle − done cycle of the first MATMUL (None: no done)
    for start, (cycle, code, detail, index) in zip(windows, trace.errors):
        assert (code, detail) == (NPUError.CORE, CoreError.BAD_SPARSE_INDEX)
        done = [d for d in trace.done if start <= d <= cycle + 3]
        assert len(done) <= 1
        reported_before = sum(d < cycle for d in done)
        assert index == 1 - reported_before, (start, cycle, done, index)
        offsets.append(cycle - done[0] if done else None)
    print(f"error cycle - done cycle: {offsets}")
    assert None in offsets and 0 in offsets and max(o for o in offsets if o is not None) > 0


#: A tall array (weights take longer to shift in than the PARAM reads).
TALL = NPUConfig(rows=8, cols=2, acc_depth=16, out_fifo_depth=32, sparse_2_4=True,
                 axi_data_bits=32, act_sp_depth=64, wgt_sp_depth=64, out_sp_depth=64,
                 param_sp_depth=16)


@pytest.mark.parametrize("faults, detail", [
    (("sparse_index", "shift"), CoreError.BAD_SPARSE_INDEX),
    (("shift",), CoreError.BAD_SHIFT),
])
def test_sparse_index_reported_before_shift(faults, detail):
    """A one-tile 2:4 MATMUL with a bad index and a bad shift reports the index (the
    order of docs/ISA.md), although its PARAM words are read before its weights are in."""
    seed = 151
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    py = random.Random(seed)
    job = random_gemm_job(rng, 3, 2 * TALL.rows, 2, sparsity="2:4")
    bad = make_matmul(TALL, job, act_addr=0, wgt_addr=0, out_addr=0, param_addr=0, rng=py)
    if "shift" in faults:
        bad_shift_param(bad, -33)
    if "sparse_index" in faults:
        # Group 3 (rows 6 and 7), column 1: indices 2 then 1.
        for row, index in ((6, 2), (7, 1)):
            bad.widx[row] = (bad.widx[row] & ~(3 << 8)) | (index << 8)

    async def script(ctx, bench):
        await bench.load_matmul(ctx, bad)
        await bench.issue(ctx, bad.instruction())
        for _ in range(200):
            if bench.trace.errors:
                break
            await bench.tick(ctx)

    bench = Bench(TALL)
    trace = bench.run(script)
    assert [(e[1], e[2]) for e in trace.errors] == [(NPUError.CORE, detail)]
    assert trace.writes == []


def test_abort_mid_matmul_then_reuse():
    seed = 141
    print(f"seed={seed}")
    config = TINY
    rng = np.random.default_rng(seed)
    py = random.Random(seed)
    long = [make_matmul(config, random_gemm_job(rng, 60, 20, 2), act_addr=700 * i,
                        wgt_addr=100 * i, out_addr=100 * i, param_addr=8 * i, rng=py,
                        name=f"long {i}") for i in range(2)]
    after = make_matmul(config, random_gemm_job(rng, 11, 5, 2, raw=True), act_addr=1500,
                        wgt_addr=300, out_addr=300, param_addr=40, rng=py, name="after")

    async def script(ctx, bench):
        for mm in long + [after]:
            await bench.load_matmul(ctx, mm)
        for mm in long:
            await bench.issue(ctx, mm.instruction())
        await bench.idle(ctx, 150)
        ctx.set(bench.harness.cu.abort, 1)
        await bench.tick(ctx)
        ctx.set(bench.harness.cu.abort, 0)
        abort_cycle = bench.cycle
        await bench.idle(ctx, 200)
        assert bench.trace.busy[abort_cycle] == 0
        bench.writes_after_abort = [w for w in bench.trace.writes if w[0] >= abort_cycle]
        await bench.issue(ctx, after.instruction())
        await bench.wait_done(ctx, 1, timeout=1000)
        await bench.read_out(ctx, [300 + r for r in range(after.m_rows)])

    bench = Bench(config)
    trace = bench.run(script)
    assert bench.writes_after_abort == []
    assert trace.done and len(trace.done) == 1 and trace.errors == []
    check_results(bench, [after])
