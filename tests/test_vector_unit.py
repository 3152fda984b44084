# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.vector_unit.VectorUnit`.

A harness gives the unit an OUT scratchpad (a ``lib.memory.Memory`` with the unit's
read port, its write port behind a ``wr_ready`` that the test stalls at random, and a
second read port to read the memory back).  Commands run back to back; afterwards the
whole memory must equal the golden model (``npugen.golden.vector.vector_op`` applied
instruction by instruction, rows gathered from the memory and written back in order).
Seeds are printed; every random choice derives from them.  The last tests cover
``QuantizedMultiplier``, the requantizer stages the unit shares.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal, unsigned
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

import cycle_sim
from cycle_sim import run_cycles
from npugen.golden.config import NPUConfig, PRESETS
from npugen.golden.quant import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier
from npugen.golden.vector import (VECTOR_OPS, max_turn, pack_words, softmax_exp,
                                  softmax_multiplier, stage_sum, vector_op)
from npugen.hw.isa import Opcode, VectorOp
from npugen.hw.requantizer import MBQM_LATENCY, QuantizedMultiplier
from npugen.hw.vector_unit import DIVIDER_STEPS, VectorUnit, vector_cycles

#: The unit's configurations build bf16 (TO_BF16 and TO_BF16_RELU exist only then),
#: except ``INT_ONLY``.
INT_ONLY = PRESETS["tiny"]
TINY = INT_ONLY.replace(modes=INT_ONLY.modes + ("bf16",))
WIDE = NPUConfig(rows=2, cols=8, acc_depth=16, out_fifo_depth=16, modes=("int8", "bf16"),
                 out_sp_depth=64)
#: A column count that is not a power of two.
ODD = WIDE.replace(cols=3, spmm_lanes=3)
EXTREMES = [INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX]


# -- harness ----------------------------------------------------------------------------


class Harness(Elaboratable):
    """The unit with an OUT scratchpad of ``config.out_sp_depth`` words."""

    def __init__(self, config, init):
        self.config = config
        self.init = list(init)
        self.dut = VectorUnit(config)
        self.wr_ready = Signal()
        self.peek_addr = Signal(16)
        self.peek_data = Signal(config.cols * 32)

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        m.submodules.dut = dut
        m.submodules.mem = mem = Memory(shape=unsigned(self.config.cols * 32),
                                        depth=self.config.out_sp_depth, init=self.init)
        rd = mem.read_port()
        peek = mem.read_port()
        wr = mem.write_port()
        m.d.comb += [
            rd.addr.eq(dut.rd_addr), rd.en.eq(dut.rd_en), dut.rd_data.eq(rd.data),
            peek.addr.eq(self.peek_addr), self.peek_data.eq(peek.data),
            wr.addr.eq(dut.wr_addr), wr.data.eq(dut.wr_data),
            wr.en.eq(dut.wr_valid & self.wr_ready), dut.wr_ready.eq(self.wr_ready),
        ]
        return m


def to_word(lanes):
    return sum((int(v) & 0xFFFF_FFFF) << (32 * j) for j, v in enumerate(lanes))


def to_lanes(word, cols):
    out = []
    for j in range(cols):
        v = (word >> (32 * j)) & 0xFFFF_FFFF
        out.append(v - (1 << 32) if v >> 31 else v)
    return out


def simulate(config, init, commands, *, seed, stall=0.0, abort_at=None, max_cycles=200_000):
    """Run ``commands`` back to back; returns a dict with the final memory (lane lists),
    per-command (accept, done) cycles, the accepted writes ``(cycle, addr)`` and
    the cycles where ``busy`` was high."""
    rng = random.Random(seed)
    h = Harness(config, [to_word(w) for w in init])
    dut = h.dut
    cols = config.cols
    result = {"accepted": [], "done": [], "writes": [], "busy": [], "memory": None}
    abort_at = set(abort_at or ())

    async def testbench(ctx):
        queue = list(commands)
        cycle = 0
        while (queue or ctx.get(dut.busy)) and cycle < max_cycles:
            ready = int(rng.random() >= stall)
            ctx.set(h.wr_ready, ready)
            ctx.set(dut.abort, int(cycle in abort_at))
            if queue:
                ctx.set(dut.cmd.payload, dict(queue[0], opcode=Opcode.VECTOR.value))
                ctx.set(dut.cmd.valid, 1)
            else:
                ctx.set(dut.cmd.valid, 0)
            if ctx.get(dut.done):
                result["done"].append(cycle)
            if ctx.get(dut.busy):
                result["busy"].append(cycle)
            if ctx.get(dut.wr_valid) and ready:
                result["writes"].append((cycle, ctx.get(dut.wr_addr)))
            if queue and ctx.get(dut.cmd.ready):
                result["accepted"].append(cycle)
                queue.pop(0)
            await ctx.tick()
            cycle += 1
        assert cycle < max_cycles, "the unit did not finish"
        # A done pulse may come in the cycle busy falls.
        if ctx.get(dut.done):
            result["done"].append(cycle)
        ctx.set(dut.cmd.valid, 0)
        for _ in range(4):
            assert not ctx.get(dut.wr_valid) and not ctx.get(dut.busy)
            await ctx.tick()
        memory = []
        for addr in range(config.out_sp_depth):
            ctx.set(h.peek_addr, addr)
            await ctx.tick()
            memory.append(to_lanes(ctx.get(h.peek_data), cols))
        result["memory"] = memory
        result["cycles"] = cycle

    cycle_sim.simulate(h, testbench)
    return result


# -- golden execution ----------------------------------------------------------------


def command(op, *, count=1, src=0, dst=0, n_words=1, n_valid=None, src_stride=None,
            dst_stride=None, multiplier=0, shift=0, zero_point=0, src_b=0,
            lo=INT32_MIN, hi=INT32_MAX, cols):
    stride = n_words if src_stride is None else src_stride
    return {"op": VECTOR_OPS.index(op), "count": count, "src": src, "dst": dst,
            "n_words": n_words, "n_valid": n_words * cols if n_valid is None else n_valid,
            "src_stride": stride, "dst_stride": stride if dst_stride is None else dst_stride,
            "multiplier": multiplier, "shift": shift, "zero_point": zero_point,
            "src_b": src_b, "lo": lo, "hi": hi}


def gather(memory, base, stride, count, n_words):
    return np.array([sum((memory[base + r * stride + w] for w in range(n_words)), [])
                     for r in range(count)], dtype=np.int64)


def golden(memory, cmd, cols):
    """``memory`` (lists of lanes) after ``cmd``, as the ISA defines it."""
    memory = [list(w) for w in memory]
    op = VECTOR_OPS[cmd["op"]]
    count, n_words = cmd["count"], cmd["n_words"]
    a = gather(memory, cmd["src"], cmd["src_stride"], count, n_words)
    b = (gather(memory, cmd["src_b"], cmd["src_stride"], count, n_words)
         if op in ("add", "sub", "max") else None)
    out = vector_op(op, a, b, n_valid=cmd["n_valid"], multiplier=cmd["multiplier"],
                    shift=cmd["shift"], zero_point=cmd["zero_point"], lo=cmd["lo"],
                    hi=cmd["hi"])
    for r in range(count):
        base = cmd["dst"] + r * cmd["dst_stride"]
        if op == "rowmax":
            memory[base] = [int(out[r, 0])] * cols
        elif op.startswith(("pack", "to_bf16")):
            d_words = pack_words(cmd["op"], n_words)
            row = list(out[r]) + [0] * (d_words * cols - out.shape[1])
            for w in range(d_words):
                memory[base + w] = [int(v) for v in row[w * cols:(w + 1) * cols]]
        else:
            for w in range(n_words):
                memory[base + w] = [int(v) for v in out[r, w * cols:(w + 1) * cols]]
    return memory


def expected_memory(init, commands, cols):
    memory = [list(w) for w in init]
    for cmd in commands:
        memory = golden(memory, cmd, cols)
    return memory


def check_memory(got, want, commands):
    bad = [a for a in range(len(want)) if got[a] != want[a]]
    assert not bad, (f"{len(bad)} words differ, first at {bad[0]}: got {got[bad[0]]}, "
                     f"want {want[bad[0]]}; commands {commands}")


# -- random programs ----------------------------------------------------------------


def random_values(rng, n):
    regime = rng.random()
    if regime < 0.4:
        return [rng.randint(-3000, 3000) for _ in range(n)]
    if regime < 0.7:
        return [rng.randint(INT32_MIN, INT32_MAX) for _ in range(n)]
    if regime < 0.85:
        return [rng.choice(EXTREMES) for _ in range(n)]
    return [rng.randint(-(1 << 20), 1 << 20) for _ in range(n)]


def random_params(rng, op):
    params = {}
    if op == "softmax" or (op == "requant" and rng.random() < 0.3):
        if rng.random() < 0.8:
            # Spreads of about 1…20 in real units for one of the value regimes.
            span = rng.choice([3000, 1 << 20, 1 << 31])
            scale = min(10 ** rng.uniform(0, 1.3) / span, 10.0)
            params["multiplier"], params["shift"] = softmax_multiplier(scale)
        else:
            params["multiplier"] = rng.choice([0, 1, INT32_MAX, rng.randint(0, INT32_MAX)])
            params["shift"] = rng.randint(-31, 30)
    else:
        params["multiplier"] = rng.choice([rng.randint(1 << 30, INT32_MAX),
                                           rng.randint(0, INT32_MAX), 0, INT32_MAX])
        params["shift"] = rng.choice([rng.randint(-31, 30), rng.randint(-12, 2), -31, 30])
    params["zero_point"] = rng.randint(-128, 127)
    if rng.random() < 0.3:
        params["lo"], params["hi"] = INT32_MIN, INT32_MAX
    elif rng.random() < 0.5:
        params["lo"], params["hi"] = -128, 127
    else:
        lo, hi = sorted(rng.choice([rng.randint(INT32_MIN, INT32_MAX), rng.randint(-500, 500),
                                    *EXTREMES]) for _ in range(2))
        params["lo"], params["hi"] = lo, hi
    return params


def random_command(rng, op, cols, depth):
    """A valid VECTOR instruction (ISA checks) on a memory of ``depth`` words."""
    for _ in range(1000):
        n_words = rng.randint(1, 4) if not op.startswith("pack") else rng.randint(1, 18)
        count = rng.randint(1, 3)
        src_stride = n_words + rng.choice([0, 0, 1, 3])
        # A BF16 conversion (two words written per word) never runs in place.
        in_place = rng.random() < 0.35 and not op.startswith("to_bf16")
        d_words = pack_words(VECTOR_OPS.index(op), n_words)
        if in_place:
            dst_stride = src_stride
        else:
            dst_stride = rng.choice([d_words, d_words + 1, max(d_words - 1, 0),
                                     rng.randint(0, 2 * d_words)])
        src_extent = (count - 1) * src_stride + n_words
        dst_extent = (count - 1) * dst_stride + d_words
        src = rng.randint(0, depth - src_extent)
        regions = [(src, src_extent)]
        src_b = 0
        if op in ("add", "sub", "max"):
            src_b = rng.randint(0, depth - src_extent)
            regions.append((src_b, src_extent))
        # The destination overlaps no source range unless it is that range itself.
        dst = rng.choice([r[0] for r in regions]) if in_place else \
            rng.randint(0, depth - dst_extent)
        if any(dst < s + e and s < dst + dst_extent and not (in_place and dst == s)
               for s, e in regions):
            continue
        n_valid = rng.choice([n_words * cols, rng.randint(1, n_words * cols), 1])
        cmd = command(op, count=count, src=src, dst=dst, n_words=n_words, n_valid=n_valid,
                      src_stride=src_stride, dst_stride=dst_stride, src_b=src_b, cols=cols,
                      **random_params(rng, op))
        return cmd
    raise AssertionError("no layout found")


def small_case(seed):
    """TINY with a 64-word OUT scratchpad, and random contents for it from ``seed``
    (printed)."""
    print(f"seed={seed}")
    config = TINY.replace(out_sp_depth=64)
    return config, random_memory(random.Random(seed), config.cols, 64)


def random_memory(rng, cols, depth):
    return [random_values(rng, cols) for _ in range(depth)]


def run_and_check(config, init, commands, *, seed, stall):
    result = simulate(config, init, commands, seed=seed, stall=stall)
    want = expected_memory(init, commands, config.cols)
    check_memory(result["memory"], want, commands)
    assert len(result["accepted"]) == len(result["done"]) == len(commands)
    for accepted, done in zip(result["accepted"], result["done"]):
        assert done > accepted
    return result


@pytest.mark.parametrize("seed, stall", [(0x7EC_0001, 0.0), (0x7EC_0002, 0.4),
                                         (0x7EC_0003, 0.7)])
def test_random_programs_tiny(seed, stall):
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = TINY.replace(out_sp_depth=64)
    init = random_memory(rng, config.cols, config.out_sp_depth)
    ops = list(VECTOR_OPS) * 2
    rng.shuffle(ops)
    commands = [random_command(rng, op, config.cols, config.out_sp_depth) for op in ops]
    run_and_check(config, init, commands, seed=seed, stall=stall)


def test_random_programs_without_bf16():
    """A unit built without the bf16 mode runs every other operation as before."""
    seed = 0x7EC_0004
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = INT_ONLY.replace(out_sp_depth=64)
    init = random_memory(rng, config.cols, config.out_sp_depth)
    ops = [op for op in VECTOR_OPS if not op.startswith("to_bf16")] * 2
    rng.shuffle(ops)
    commands = [random_command(rng, op, config.cols, config.out_sp_depth) for op in ops]
    run_and_check(config, init, commands, seed=seed, stall=0.3)


@pytest.mark.parametrize("seed, config", [(0x7EC_0011, WIDE), (0x7EC_0012, ODD)],
                         ids=["cols8", "cols3"])
def test_random_programs_wide(seed, config):
    print(f"seed={seed}")
    rng = random.Random(seed)
    init = random_memory(rng, config.cols, config.out_sp_depth)
    ops = list(VECTOR_OPS) * 2
    rng.shuffle(ops)
    commands = [random_command(rng, op, config.cols, config.out_sp_depth) for op in ops]
    run_and_check(config, init, commands, seed=seed, stall=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0x7EC_0100 + i for i in range(12)])
def test_random_programs_long(seed):
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = rng.choice([TINY.replace(out_sp_depth=64), WIDE, ODD])
    init = random_memory(rng, config.cols, config.out_sp_depth)
    ops = list(VECTOR_OPS) * 4
    rng.shuffle(ops)
    commands = [random_command(rng, op, config.cols, config.out_sp_depth) for op in ops]
    run_and_check(config, init, commands, seed=seed, stall=rng.choice([0.0, 0.3, 0.8]))


# -- directed programs ----------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY.replace(out_sp_depth=64), WIDE],
                         ids=["cols2", "cols8"])
def test_softmax_in_place_partial_rows(config):
    """In-place SOFTMAX and ROWMAX with n_valid not a multiple of cols, rows adjacent;
    masked lanes hold values that would change the maximum."""
    seed = 0x7EC_0021
    print(f"seed={seed}")
    rng = random.Random(seed)
    cols = config.cols
    init = [[rng.randint(-5000, 5000) for _ in range(cols)] for _ in range(64)]
    n_words, n_valid = 3, 2 * cols + 1
    for r in range(4):
        init[r * n_words + 2] = [INT32_MAX] * cols
        init[r * n_words + 2][0] = rng.randint(-5000, 5000)
    multiplier, shift = softmax_multiplier(0.01)
    commands = [
        command("rowmax", count=4, src=0, dst=40, n_words=n_words, n_valid=n_valid,
                dst_stride=1, cols=cols),
        command("softmax", count=4, src=0, dst=0, n_words=n_words, n_valid=n_valid,
                multiplier=multiplier, shift=shift, cols=cols),
        command("softmax", count=2, src=20, dst=20, n_words=1, n_valid=1,
                multiplier=multiplier, shift=shift, cols=cols),
        command("rowmax", count=3, src=30, dst=30, n_words=2, n_valid=cols + 1, cols=cols),
    ]
    result = run_and_check(config, init, commands, seed=seed, stall=0.25)
    memory = result["memory"]
    for r in range(4):
        row = sum(memory[r * n_words:(r + 1) * n_words], [])
        assert all(v == 0 for v in row[n_valid:]) and 0 < sum(row) <= 128
    assert memory[20] == [127] + [0] * (cols - 1)
    assert all(memory[40 + r] == [max(sum(init[r * n_words:(r + 1) * n_words], [])[:n_valid])]
               * cols for r in range(4))


def extreme_memory(rng, cols, depth):
    return [[rng.choice(EXTREMES) for _ in range(cols)] for _ in range(depth)]


@pytest.mark.parametrize("seed", [0x7EC_0031, 0x7EC_0032])
def test_extreme_values(seed):
    """INT32_MIN/MAX everywhere: wrapping ADD/SUB, saturating REQUANT, the bound on d."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = TINY.replace(out_sp_depth=64)
    cols = config.cols
    init = extreme_memory(rng, cols, 64)
    commands = [
        command("add", count=4, src=0, src_b=8, dst=16, n_words=2, cols=cols),
        command("sub", count=4, src=0, src_b=8, dst=24, n_words=2, cols=cols),
        command("sub", count=4, src=8, src_b=0, dst=8, n_words=2, cols=cols),
        command("clamp", count=2, src=32, dst=36, n_words=2, lo=INT32_MIN + 1,
                hi=INT32_MAX - 1, cols=cols),
        command("clamp", count=2, src=40, dst=40, n_words=2, lo=INT32_MAX, hi=INT32_MAX,
                cols=cols),
        command("requant", count=2, src=44, dst=48, n_words=2, multiplier=INT32_MAX,
                shift=30, zero_point=127, cols=cols),
        command("requant", count=2, src=44, dst=52, n_words=2, multiplier=INT32_MAX,
                shift=-31, zero_point=-128, lo=-128, hi=127, cols=cols),
        command("requant", count=1, src=56, dst=56, n_words=4, multiplier=1 << 30,
                shift=0, zero_point=1, lo=INT32_MIN, hi=INT32_MAX, cols=cols),
        command("softmax", count=2, src=0, dst=60, n_words=2, dst_stride=2,
                multiplier=1, shift=5, cols=cols),
        command("softmax", count=2, src=8, dst=32, n_words=2, multiplier=INT32_MAX,
                shift=30, cols=cols),
        command("softmax", count=1, src=44, dst=44, n_words=2, multiplier=0, shift=0,
                cols=cols),
        command("rowmax", count=4, src=0, dst=36, n_words=2, dst_stride=1, n_valid=3,
                cols=cols),
    ]
    run_and_check(config, init, commands, seed=seed, stall=0.5)


@pytest.mark.parametrize("seed", [0x7EC_0035, 0x7EC_0036])
def test_comparisons_near_the_bounds(seed):
    """CLAMP and MAX compare 32-bit values by 16-bit halves: values whose upper half
    equals the bound's (or the other operand's) and whose lower half is just below, at or
    just above it, on both sides of zero."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = TINY.replace(out_sp_depth=64)
    cols = config.cols
    lo, hi = -0x0001_8000 + rng.randrange(-4, 4), 0x0002_7FFF + rng.randrange(-4, 4)

    def near(bound):
        return [bound + d for d in (-0x1_0000, -0x8000, -1, 0, 1, 0x8000, 0x1_0000)
                if INT32_MIN <= bound + d <= INT32_MAX]

    values = near(lo) + near(hi) + near(0) + near(-0x1_0000) + EXTREMES
    init = [[rng.choice(values) for _ in range(cols)] for _ in range(config.out_sp_depth)]
    for w in range(8, 16):    # MAX operands that share their upper half
        init[w + 8] = [(v & ~0xFFFF) | rng.randrange(0x1_0000) for v in init[w]]
        init[w + 8] = [v - (1 << 32) if v > INT32_MAX else v for v in init[w + 8]]
    commands = [
        command("clamp", count=4, src=0, dst=40, n_words=2, lo=lo, hi=hi, cols=cols),
        command("max", count=4, src=8, src_b=16, dst=48, n_words=2, cols=cols),
        command("max", count=4, src=16, src_b=8, dst=56, n_words=2, cols=cols),
    ]
    run_and_check(config, init, commands, seed=seed, stall=0.3)


def test_back_to_back_and_cycle_counts():
    """With wr_ready high every command takes exactly ``vector_cycles``; the next one is
    accepted in the cycle of the previous one's done pulse; busy spans accept to done."""
    seed = 0x7EC_0041
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = WIDE
    cols = config.cols
    init = random_memory(rng, cols, config.out_sp_depth)
    multiplier, shift = softmax_multiplier(0.05)
    commands = [
        command("softmax", count=2, src=0, dst=40, n_words=4, n_valid=27,
                multiplier=multiplier, shift=shift, cols=cols),
        command("clamp", count=3, src=0, dst=20, n_words=3, lo=-7, hi=7, cols=cols),
        command("requant", count=2, src=0, dst=30, n_words=4, multiplier=1 << 30,
                shift=-3, zero_point=5, cols=cols),
        command("add", count=2, src=0, src_b=8, dst=50, n_words=3, cols=cols),
        command("rowmax", count=5, src=0, dst=58, n_words=4, n_valid=9, src_stride=5,
                dst_stride=1, cols=cols),
        command("sub", count=1, src=1, src_b=2, dst=63, n_words=1, cols=cols),
        command("softmax", count=1, src=10, dst=10, n_words=2, n_valid=16,
                multiplier=multiplier, shift=shift, cols=cols),
        command("max", count=2, src=0, src_b=4, dst=20, n_words=2, cols=cols),
        command("pack_int4", count=2, src=0, dst=30, n_words=3, n_valid=10,
                dst_stride=2, cols=cols),
        command("pack_binary", count=1, src=0, dst=36, n_words=9, n_valid=40, cols=cols),
        command("to_bf16", count=2, src=0, dst=40, n_words=3, n_valid=20, dst_stride=6,
                cols=cols),
        command("to_bf16_relu", count=3, src=4, dst=20, n_words=1, src_stride=2,
                dst_stride=3, cols=cols),
    ]
    result = run_and_check(config, init, commands, seed=seed, stall=0.0)
    accepted, done, busy = result["accepted"], result["done"], set(result["busy"])
    for i, cmd in enumerate(commands):
        want = vector_cycles(config, cmd["op"], count=cmd["count"], n_words=cmd["n_words"],
                             n_valid=cmd["n_valid"])
        assert done[i] - accepted[i] == want, (i, VECTOR_OPS[cmd["op"]])
        assert all(c in busy for c in range(accepted[i] + 1, done[i]))
        assert accepted[i] not in busy and done[i] not in busy
        if i + 1 < len(commands):
            assert accepted[i + 1] == done[i]
    # Streaming ops run one word per cycle; SOFTMAX rows (8 lanes) cost 3·n_words + 56
    # at most.
    assert vector_cycles(config, VectorOp.CLAMP, count=3, n_words=3, n_valid=1) == 9 + 9
    assert vector_cycles(config, VectorOp.REQUANT, count=3, n_words=3, n_valid=1) == 9 + 18
    assert vector_cycles(config, VectorOp.ROWMAX, count=3, n_words=3, n_valid=9) == 6 + 15
    assert vector_cycles(config, VectorOp.SOFTMAX, count=2, n_words=4,
                         n_valid=32) == 2 * (3 * 4 + 56) + 11
    assert DIVIDER_STEPS == 26


#: FP32 patterns for the BF16 conversions: zeros, ties (even/odd kept LSB), just above
#: and below a tie, subnormals, the largest normal (rounds to ∞), ∞, NaNs of both signs
#: (quiet, signalling, payloads that round), negative values.
FP32_SPECIALS = [0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x3F808000, 0x3F818000,
                 0x3F808001, 0x3F807FFF, 0xBF808000, 0xBF818000, 0x00000001, 0x00008000,
                 0x00018000, 0x007FFFFF, 0x807FFFFF, 0x80008000, 0x00800000, 0x7F7FFFFF,
                 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x7F800000, 0xFF800000, 0x7FC00000,
                 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF,
                 0x4049A000, 0xC0490FDB, 0x3EAAAAAB]


@pytest.mark.parametrize("config", [TINY.replace(out_sp_depth=64), WIDE, ODD],
                         ids=["cols2", "cols8", "cols3"])
def test_to_bf16_special_values(config):
    """TO_BF16 and TO_BF16_RELU on NaN, ∞, subnormal and tie patterns, with partial
    n_valid, against ``vector_op``; each conversion writes two words per word read."""
    seed = 0x7EC_0051
    print(f"seed={seed}")
    rng = random.Random(seed)
    cols, depth = config.cols, config.out_sp_depth
    values = [v - (1 << 32) if v >= 1 << 31 else v for v in FP32_SPECIALS]
    pool = values * (-(-16 * cols // len(values)))
    rng.shuffle(pool)
    init = [pool[w * cols:(w + 1) * cols] for w in range(16)] + \
        random_memory(rng, cols, depth - 16)
    commands = [
        command("to_bf16", count=2, src=0, dst=16, n_words=4, dst_stride=8, cols=cols),
        command("to_bf16_relu", count=2, src=8, dst=32, n_words=4, dst_stride=8,
                n_valid=3 * cols - 1, cols=cols),
        command("to_bf16_relu", count=4, src=0, dst=48, n_words=1, src_stride=1,
                dst_stride=2, n_valid=1, cols=cols),
    ]
    run_and_check(config, init, commands, seed=seed, stall=0.3)


def test_stalls_only_slow_down():
    """Heavy back-pressure: results are unchanged and the unit still finishes."""
    seed = 0x7EC_0051
    config, init = small_case(seed)
    cols = config.cols
    multiplier, shift = softmax_multiplier(0.02)
    commands = [command("requant", count=4, src=0, dst=20, n_words=5, multiplier=1 << 30,
                        shift=-1, cols=cols),
                command("softmax", count=2, src=40, dst=40, n_words=8, n_valid=13,
                        multiplier=multiplier, shift=shift, cols=cols)]
    fast = run_and_check(config, init, commands, seed=seed, stall=0.0)
    slow = run_and_check(config, init, commands, seed=seed, stall=0.9)
    assert slow["memory"] == fast["memory"]
    assert slow["done"][-1] > 3 * fast["done"][-1]


# -- abort --------------------------------------------------------------------------------


@pytest.mark.parametrize("op, abort_after, stall", [
    ("softmax", 3, 0.0),        # row 0, pass 1
    ("softmax", 23, 0.5),       # row 0, pass 2: e values partly written, some queued
    ("softmax", 40, 0.0),       # row 0, divider
    ("softmax", 55, 0.0),       # row 0, pass 3
    ("requant", 9, 0.6),        # results in the pipeline only
    ("requant", 20, 0.6),       # results in the pipeline and the write FIFO
    ("add", 3, 0.0),            # between the a and b reads of a word
])
def test_abort(op, abort_after, stall):
    """After abort the unit is idle the next cycle, writes nothing more, gives no done
    for the aborted command and then runs the next command correctly."""
    seed = 0x7EC_0061 + abort_after
    config, init = small_case(seed)
    cols = config.cols
    multiplier, shift = softmax_multiplier(0.03)
    first = command(op, count=3, src=0, dst=20, src_b=40, n_words=4, multiplier=multiplier,
                    shift=shift, cols=cols)
    second = command("clamp", count=2, src=40, dst=50, n_words=3, lo=-100, hi=100,
                     cols=cols)
    abort_cycle = abort_after     # the first command is accepted in cycle 0
    result = simulate(config, init, [first, second], seed=seed, stall=stall,
                      abort_at=[abort_cycle])
    assert result["accepted"] == [0, abort_cycle + 1]
    assert abort_cycle + 1 not in result["busy"]
    assert len(result["done"]) == 1 and result["done"][0] > abort_cycle + 1
    first_writes = [a for c, a in result["writes"] if c <= abort_cycle]
    late = [(c, a) for c, a in result["writes"] if abort_cycle < c and not 50 <= a < 56]
    assert not late, late
    assert all(20 <= a < 32 for a in first_writes)
    # The second command's result is exact; nothing outside the first one's dst changed.
    want = golden(init, second, cols)
    got = result["memory"]
    check_memory([got[a] for a in range(64) if not 20 <= a < 32],
                 [want[a] for a in range(64) if not 20 <= a < 32], [second])


def test_abort_while_idle_and_with_a_command():
    """An abort in the cycle a command is offered keeps it waiting; it then runs."""
    seed = 0x7EC_0071
    config, init = small_case(seed)
    cmd = command("clamp", count=2, src=0, dst=10, n_words=2, lo=-9, hi=9, cols=config.cols)
    result = simulate(config, init, [cmd], seed=seed, abort_at=[0, 1])
    assert result["accepted"] == [2]
    check_memory(result["memory"], golden(init, cmd, config.cols), [cmd])


def test_bad_parameters():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not None$"):
        VectorUnit(None)
    with pytest.raises(ValueError, match=r"^op must be a VectorOp or its code 0\.\.10, not 11$"):
        vector_cycles(TINY, 11, count=1, n_words=1, n_valid=1)
    with pytest.raises(ValueError, match=r"^count must be a positive integer, not 0$"):
        vector_cycles(TINY, 0, count=0, n_words=1, n_valid=1)
    with pytest.raises(TypeError, match=r"^n_words must be a positive integer, not 1\.0$"):
        vector_cycles(TINY, 0, count=1, n_words=1.0, n_valid=1)
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 'tiny'$"):
        vector_cycles("tiny", 0, count=1, n_words=1, n_valid=1)


@pytest.mark.parametrize("config", [TINY.replace(out_sp_depth=64), WIDE],
                         ids=["cols2", "cols8"])
def test_softmax_exp_pass(config):
    """After pass 2 of a row (stopped by an abort in the divider), ``dst`` holds the
    i-exp values ``e`` of the golden model, 0 beyond ``n_valid``; a full run then gives
    the golden probabilities on the same realistic data."""
    seed = 0x7EC_0081
    print(f"seed={seed}")
    rng = random.Random(seed)
    cols = config.cols
    scale = 0.004
    multiplier, shift = softmax_multiplier(scale)
    init = [[rng.randint(int(-6 / scale), int(6 / scale)) for _ in range(cols)]
            for _ in range(64)]
    n_words, n_valid = 3, 3 * cols - 1
    cmd = command("softmax", count=2, src=0, dst=8, n_words=n_words, n_valid=n_valid,
                  multiplier=multiplier, shift=shift, cols=cols)
    # Row 0: pass-1 reads in cycles 1…v, pass-2 reads end v + max_turn + n_words, then
    # the sum settles (stage_sum + 1 cycles) and the divider runs: stop in its middle.
    stop = (1 + n_words + max_turn(cols) + n_words + stage_sum(cols) + 1
            + DIVIDER_STEPS // 2)
    stopped = simulate(config, init, [cmd], seed=seed, abort_at=[stop])
    assert stopped["done"] == []
    got = sum(stopped["memory"][8:8 + n_words], [])
    x = np.array([sum(init[0:n_words], [])])
    want = [int(e) for e in softmax_exp(x, n_valid, multiplier, shift)[0]] + [0]
    assert got == want
    assert len(set(want)) > cols                # the data is not degenerate
    # The whole command on the same data.
    full = run_and_check(config, init, [cmd], seed=seed, stall=0.2)
    probabilities = sum(full["memory"][8:8 + n_words], [])
    assert sum(p > 0 for p in probabilities[:n_valid]) >= 3


# -- the shared multiplier stages ---------------------------------------------------------


def test_quantized_multiplier_component():
    """``QuantizedMultiplier`` (the requantizer's MBQM stages the unit shares): one lane
    set per cycle, result 7 cycles later, equal to the golden
    ``multiply_by_quantized_multiplier``."""
    seed = 0x7EC_0091
    print(f"seed={seed}")
    rng = random.Random(seed)
    lanes = 3
    dut = QuantizedMultiplier(lanes)
    assert dut.latency == MBQM_LATENCY == 7
    inputs = []
    for _ in range(60):
        inputs.append([(rng.choice([rng.randint(INT32_MIN, INT32_MAX), *EXTREMES]),
                        rng.choice([rng.randint(0, INT32_MAX), INT32_MIN, INT32_MAX, 0]),
                        rng.randint(-31, 30)) for _ in range(lanes)])
    check_quantized_multiplier(dut, lanes, inputs)


def check_quantized_multiplier(dut, lanes, inputs, x_in=lambda x, shift: x):
    """Runs rows of ``(x, multiplier, shift)`` per lane through ``dut`` (``x_in`` gives
    the x it is fed) and checks each result row against the golden
    MultiplyByQuantizedMultiplier, :data:`MBQM_LATENCY` cycles later."""
    cycles = [{"x": [x_in(v[0], v[2]) for v in row], "multiplier": [v[1] for v in row],
               "shift": [v[2] for v in row]} for row in inputs]
    cycles += [{"x": [0] * lanes, "multiplier": [0] * lanes, "shift": [0] * lanes}] * 8

    def read(ctx):
        result = ctx.get(dut.result)
        return [result[i] for i in range(lanes)]

    trace = run_cycles(dut, cycles, read)
    for t, row in enumerate(inputs):
        want = [int(multiply_by_quantized_multiplier(x, m, s)) for x, m, s in row]
        assert trace[t + MBQM_LATENCY] == want, (t, row)


def test_quantized_multiplier_without_left_shift():
    """With ``left_shift=False`` the caller's ``x << max(shift, 0)`` (wrapped, from
    ``shift_left_wrapped``) gives the golden result: the vector unit's use."""
    from npugen.hw.requantizer import shift_left_wrapped

    seed = 0x7EC_0092
    print(f"seed={seed}")
    rng = random.Random(seed)
    lanes = 2
    dut = QuantizedMultiplier(lanes, left_shift=False)
    inputs = [[(rng.choice([rng.randint(INT32_MIN, INT32_MAX), *EXTREMES]),
                rng.choice([rng.randint(0, INT32_MAX), INT32_MIN, INT32_MAX]),
                rng.randint(-31, 30)) for _ in range(lanes)] for _ in range(40)]

    def shifted(x, s):
        m = Module()
        value, amount, out = Signal(32), Signal(5), Signal(32)
        m.d.comb += out.eq(shift_left_wrapped(value, amount))
        got = []

        async def bench(ctx):
            ctx.set(value, x & 0xFFFF_FFFF)
            ctx.set(amount, max(s, 0))
            got.append(ctx.get(out))

        sim = Simulator(m)
        sim.add_testbench(bench)
        sim.run()
        assert got[0] == (x << max(s, 0)) & 0xFFFF_FFFF
        return got[0] - (1 << 32) if got[0] >> 31 else got[0]

    check_quantized_multiplier(dut, lanes, inputs, shifted)
    with pytest.raises(TypeError, match=r"^left_shift must be a bool, not 1$"):
        QuantizedMultiplier(lanes, left_shift=1)


@pytest.mark.parametrize("lanes, exc, message", [
    (0, ValueError, r"^lanes must be a positive integer, not 0$"),
    (2.0, TypeError, r"^lanes must be a positive integer, not 2\.0$"),
    (True, TypeError, r"^lanes must be a positive integer, not True$"),
])
def test_quantized_multiplier_bad_lanes(lanes, exc, message):
    with pytest.raises(exc, match=message):
        QuantizedMultiplier(lanes)


def test_norm_stages_are_the_exact_output():
    """The NORM stages (low bits of e on a DSP, high bits in LUTs, four cycles) give
    min(127, (e · R) >> 41) for random and extreme operands, one pair per cycle."""
    from npugen.hw.vector_unit import _E_BITS, _norm_stages

    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    e, recip = Signal(_E_BITS), Signal(DIVIDER_STEPS)
    m = Module()
    out = _norm_stages(m, e, recip, "norm")
    top_e, top_r = (1 << _E_BITS) - 1, (1 << DIVIDER_STEPS) - 1
    cases = [(0, 0), (top_e, top_r), (top_e, 1), (1, top_r), (1 << 18, top_r),
             ((1 << 18) - 1, top_r), (1 << 22, 1 << 19), ((1 << 22) - 1, 1 << 19)]
    cases += [(rng.getrandbits(_E_BITS), rng.getrandbits(DIVIDER_STEPS)) for _ in range(200)]
    cases += [(rng.getrandbits(_E_BITS), rng.getrandbits(rng.randint(18, DIVIDER_STEPS)))
              for _ in range(200)]
    sim = Simulator(m)
    sim.add_clock(1e-6)
    got = []

    async def bench(ctx):
        for a, b in cases + [(0, 0)] * 4:
            ctx.set(e, a)
            ctx.set(recip, b)
            await ctx.tick()
            got.append(ctx.get(out))

    sim.add_testbench(bench)
    sim.run()
    want = [min(127, (a * b) >> 41) for a, b in cases]
    assert got[3:3 + len(cases)] == want
    assert len(set(want)) > 20                   # the cases reach many outputs
