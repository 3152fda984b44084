# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.accumulator.AccumulatorBuffer`.

Cycle convention: in cycle ``t`` the inputs are set and the outputs read, then
``await ctx.tick()`` moves to cycle ``t + 1``.  A row presented in cycle ``t`` has its
result on ``sum``/``valid_out``/``tag_out`` in cycle ``t + LATENCY``.

The tests never depend on what a ``last`` row leaves in the buffer: the next row to
revisit that address after a ``last`` always starts with ``first``.
"""

import random

import pytest
from amaranth.hdl import Fragment, unsigned

from cycle_sim import run_cycles
from npugen.golden.config import NPUConfig
from npugen.hw.accumulator import LATENCY, AccumulatorBuffer

SEEDS = [0xACC_0001, 0xACC_0002, 0xACC_0003]
CONFIG = NPUConfig(rows=2, cols=3, acc_depth=16)


def wrap(value, bits):
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


def row(addr, psum, *, first=0, last=0, tag=0):
    return {"valid_in": 1, "addr": addr, "psum": list(psum), "first": first, "last": last,
            "tag_in": tag}


def bubble(cols, *, addr=0, psum=None, first=0, last=0, tag=0):
    """An idle cycle; the other inputs may carry garbage that must be ignored."""
    return {"valid_in": 0, "addr": addr, "psum": list(psum or [0] * cols),
            "first": first, "last": last, "tag_in": tag}


def simulate(dut, cycles, cols):
    """Drive one input dict per cycle (then LATENCY bubbles); outputs of every cycle."""
    def read(ctx):
        total = ctx.get(dut.sum)
        return {"valid_out": ctx.get(dut.valid_out), "tag_out": ctx.get(dut.tag_out),
                "sum": [total[c] for c in range(cols)]}
    return run_cycles(dut, cycles + [bubble(cols)] * LATENCY, read)


def expected_outputs(cycles, cols, acc_bits):
    """Per cycle t + LATENCY: (valid_out, tag_out, sum or None) from first/accumulate/last."""
    mem = {}
    out = []
    for c in cycles:
        if not c["valid_in"]:
            out.append((0, c["tag_in"], None))
            continue
        if c["first"]:
            total = [wrap(p, acc_bits) for p in c["psum"]]
        else:
            total = [wrap(p + s, acc_bits) for p, s in zip(c["psum"], mem[c["addr"]])]
        if c["last"]:
            mem.pop(c["addr"], None)
            out.append((1, c["tag_in"], total))
        else:
            mem[c["addr"]] = total
            out.append((0, c["tag_in"], None))
    return out


def check(trace, cycles, cols, acc_bits):
    for t, (valid, tag, total) in enumerate(expected_outputs(cycles, cols, acc_bits)):
        got = trace[t + LATENCY]
        assert got["valid_out"] == valid, f"row of cycle {t}"
        assert got["tag_out"] == tag, f"row of cycle {t}"
        if valid:
            assert got["sum"] == total, f"row of cycle {t}"


def test_latency_and_ports():
    dut = AccumulatorBuffer(CONFIG, tag_shape=unsigned(5))
    assert dut.latency == LATENCY == 2
    assert dut.tag_in.shape() == unsigned(5) and dut.tag_out.shape() == unsigned(5)
    Fragment.get(dut, None)


def test_first_accumulate_last():
    cols = CONFIG.cols
    cycles = [
        row(3, [1, 2, 3], first=1),
        row(5, [100, -200, 300], first=1),
        bubble(cols),
        row(3, [10, 20, 30]),
        row(5, [-1, -1, -1]),
        row(3, [-1000, 0, 7], last=1, tag=1),
        row(5, [0, 0, 0], last=1),
        row(3, [4, 5, 6], first=1, last=1, tag=1),   # a one-tile sum: first and last
        bubble(cols),
    ]
    dut = AccumulatorBuffer(CONFIG)
    trace = simulate(dut, cycles, cols)
    assert [t["valid_out"] for t in trace] == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert trace[7]["sum"] == [-989, 22, 40] and trace[7]["tag_out"] == 1
    assert trace[8]["sum"] == [99, -201, 299] and trace[8]["tag_out"] == 0
    assert trace[9]["sum"] == [4, 5, 6] and trace[9]["tag_out"] == 1
    check(trace, cycles, cols, CONFIG.acc_bits)


def test_first_discards_old_contents():
    cols = CONFIG.cols
    cycles = [
        row(7, [11, 12, 13], first=1),
        row(7, [1, 1, 1]),
        row(7, [50, 60, 70], first=1),     # restart: 24, 25, 26 forgotten
        row(7, [1, 2, 3], last=1),
    ]
    trace = simulate(AccumulatorBuffer(CONFIG), cycles, cols)
    assert trace[5]["valid_out"] == 1 and trace[5]["sum"] == [51, 62, 73]


def test_revisit_on_next_cycle():
    # M = 1: the same address every cycle; each row must see the sum of the previous
    # one, which is not in the memory yet (forwarded).
    cols = CONFIG.cols
    psums = [[k, -2 * k, 3 * k + 1] for k in range(1, 9)]
    cycles = [row(9, p, first=int(i == 0), last=int(i == len(psums) - 1))
              for i, p in enumerate(psums)]
    trace = simulate(AccumulatorBuffer(CONFIG), cycles, cols)
    assert trace[len(psums) + 1]["valid_out"] == 1
    assert trace[len(psums) + 1]["sum"] == [sum(p[c] for p in psums) for c in range(cols)]
    assert sum(t["valid_out"] for t in trace) == 1


def test_revisit_two_apart_and_bubbles_do_not_write():
    # Two interleaved addresses (revisit two cycles later) and bubbles carrying
    # garbage addresses, data and flags that must not touch the buffer.
    cols = CONFIG.cols
    cycles = [
        row(0, [1, 1, 1], first=1),
        row(1, [2, 2, 2], first=1),
        bubble(cols, addr=0, psum=[1000, 1000, 1000], first=1),
        row(0, [3, 3, 3]),
        bubble(cols, addr=1, psum=[-5, -5, -5], last=1, tag=1),
        row(1, [4, 4, 4]),
        row(0, [5, 5, 5], last=1),
        row(1, [6, 6, 6], last=1),
    ]
    trace = simulate(AccumulatorBuffer(CONFIG), cycles, cols)
    assert trace[6]["valid_out"] == 0     # the bubble with last=1 gives no output
    assert trace[8]["sum"] == [9, 9, 9] and trace[9]["sum"] == [12, 12, 12]
    check(trace, cycles, cols, CONFIG.acc_bits)


def test_revisit_one_two_and_three_apart():
    # Address 4 revisited 2, 1 and 3 rows later (forwarded from the row before the
    # previous one, from the previous one, then read back from the memory), and
    # restarted with `first` one and two rows after a `last` row.
    cols = CONFIG.cols
    cycles = [
        row(4, [1, 2, 3], first=1),
        row(6, [7, 7, 7], first=1),
        row(4, [10, 10, 10]),               # two apart: 11, 12, 13
        row(4, [100, 100, 100]),            # one apart: 111, 112, 113
        row(6, [1, 1, 1]),
        bubble(cols, addr=4, psum=[9, 9, 9]),
        row(4, [1000, 0, 0]),               # three apart, from the memory
        row(4, [5, 5, 5], last=1, tag=1),   # 1116, 117, 118, not written back
        row(6, [0, 0, 0], last=1),          # 8, 8, 8
        row(4, [1, 1, 1], first=1),         # restart two rows after a last row
        row(4, [2, 2, 2], last=1, tag=1),   # 3, 3, 3
        row(4, [3, 3, 3], first=1, last=1), # restart right after a last row
    ]
    trace = simulate(AccumulatorBuffer(CONFIG), cycles, cols)
    assert [t["sum"] for t in trace if t["valid_out"]] == \
        [[1116, 117, 118], [8, 8, 8], [3, 3, 3], [3, 3, 3]]
    check(trace, cycles, cols, CONFIG.acc_bits)


@pytest.mark.parametrize("acc_bits", [32, 18])
def test_wrap(acc_bits):
    config = CONFIG.replace(acc_bits=acc_bits)
    hi, lo = (1 << (acc_bits - 1)) - 1, -(1 << (acc_bits - 1))
    cols = config.cols
    cycles = [
        row(2, [hi, lo, hi], first=1),
        row(2, [1, -1, hi]),
        row(2, [0, 0, 2], last=1),
    ]
    trace = simulate(AccumulatorBuffer(config), cycles, cols)
    assert trace[4]["valid_out"] == 1
    assert trace[4]["sum"] == [lo, hi, wrap(2 * hi + 2, acc_bits)] == [lo, hi, 0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("acc_bits", [32, 18])
def test_random_stream(seed, acc_bits):
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = CONFIG.replace(acc_bits=acc_bits)
    cols, depth = config.cols, config.acc_depth
    hi = (1 << (acc_bits - 1)) - 1
    tag_shape = unsigned(6)
    open_rows = set()
    cycles = []
    prev_addr = None
    # A few "hot" addresses make next-cycle and short-distance revisits frequent.
    hot = rng.sample(range(depth), 3)
    for _ in range(300):
        tag = rng.randrange(64)
        if rng.random() < 0.15:
            cycles.append(bubble(cols, addr=rng.randrange(depth),
                                 psum=[rng.randint(-hi - 1, hi) for _ in range(cols)],
                                 first=rng.randint(0, 1), last=rng.randint(0, 1), tag=tag))
            continue
        r = rng.random()
        if prev_addr is not None and r < 0.3:
            addr = prev_addr
        elif r < 0.7:
            addr = rng.choice(hot)
        else:
            addr = rng.randrange(depth)
        first = int(addr not in open_rows or rng.random() < 0.1)
        last = int(rng.random() < 0.25)
        if last:
            open_rows.discard(addr)
        else:
            open_rows.add(addr)
        cycles.append(row(addr, [rng.randint(-hi - 1, hi) for _ in range(cols)],
                          first=first, last=last, tag=tag))
        prev_addr = addr
    trace = simulate(AccumulatorBuffer(config, tag_shape=tag_shape), cycles, cols)
    check(trace, cycles, cols, acc_bits)
    # The stream exercised the interesting cases.
    valid = [c for c in cycles if c["valid_in"]]
    assert sum(c["last"] for c in valid) > 20
    assert sum(1 for a, b in zip(cycles, cycles[1:]) if a["valid_in"] and b["valid_in"]
               and a["addr"] == b["addr"] and not a["last"] and not b["first"]) > 10
