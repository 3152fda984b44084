# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.stream_slice.StreamSlice`.

Cycle convention (tests/cycle_sim.py): in a cycle the inputs are set and the outputs
read, then ``await ctx.tick()``.
"""

import os
import random
import re

import pytest
from amaranth.hdl import Value
from amaranth.lib import stream

from cycle_sim import simulate
from npugen.hw.isa import load_layout
from npugen.hw.stream_slice import StreamSlice

SEED = int(os.environ.get("NPUGEN_SEED", "20261122"))


def test_parameters():
    s = StreamSlice(8)
    assert s.shape == 8
    assert s.signature.members["i"].signature == stream.Signature(8).flip()
    assert s.signature.members["o"].signature == stream.Signature(8)
    assert StreamSlice(load_layout).o.payload.shape() == load_layout
    for bad in ("x", None, 1.5, -1, True):
        with pytest.raises(TypeError, match=rf"^shape must be a shape-castable object, "
                                            rf"not {re.escape(repr(bad))}$"):
            StreamSlice(bad)
    with pytest.raises(ValueError, match=r"^shape must be at least 1 bit wide, not 0$"):
        StreamSlice(0)


def _run(dut, cycles, drive):
    """Drive ``drive(ctx, t)`` in each of ``cycles`` cycles; record per cycle
    ``(i.valid, i.ready, i.payload, o.valid, o.ready, o.payload, clear)``."""
    trace = []

    async def testbench(ctx):
        for t in range(cycles):
            drive(ctx, t)
            trace.append((ctx.get(dut.i.valid), ctx.get(dut.i.ready),
                          ctx.get(Value.cast(dut.i.payload)),
                          ctx.get(dut.o.valid), ctx.get(dut.o.ready),
                          ctx.get(Value.cast(dut.o.payload)), ctx.get(dut.clear)))
            assert ctx.get(dut.full) == ctx.get(dut.o.valid)
            await ctx.tick()

    simulate(dut, testbench)
    return trace


@pytest.mark.parametrize("shape", [8, load_layout], ids=["8-bit", "load_layout"])
def test_random_traffic_in_order_one_cycle_later(shape):
    """Random valid (held until taken, payload stable) and ready: every item comes out
    once, in order, offered from the cycle after it was taken; ``i.ready`` is
    ``~o.valid`` in every cycle."""
    seed = SEED + (1 if shape == 8 else 2)
    print(f"seed={seed}")
    rng = random.Random(seed)
    dut = StreamSlice(shape)
    width = 8 if shape == 8 else load_layout.size
    items = [rng.getrandbits(width) for _ in range(200)]
    state = {"next": 0, "offer": False}

    def drive(ctx, t):
        payload = Value.cast(dut.i.payload)
        if not state["offer"] and state["next"] < len(items) and rng.random() < 0.7:
            state["offer"] = True
        ctx.set(dut.i.valid, state["offer"])
        ctx.set(payload, items[state["next"]] if state["offer"] else rng.getrandbits(width))
        ctx.set(dut.o.ready, rng.random() < 0.6)
        if state["offer"] and ctx.get(dut.i.ready):
            state["next"] += 1
            state["offer"] = False

    trace = _run(dut, 700, drive)
    taken = [(t, p) for t, (iv, ir, p, *_) in enumerate(trace) if iv and ir]
    given = [(t, p) for t, (_, _, _, ov, orr, p, _) in enumerate(trace) if ov and orr]
    assert [p for _, p in taken] == items
    assert [p for _, p in given] == items
    for t, (iv, ir, ip, ov, orr, op, clear) in enumerate(trace):
        assert ir == 1 - ov, t
    for (t_in, p), (t_out, _) in zip(taken, given):
        # offered from t_in + 1 until taken, with the payload
        assert t_out > t_in
        for t in range(t_in + 1, t_out + 1):
            assert trace[t][3] == 1 and trace[t][5] == p, (t_in, t)


def test_outputs_do_not_follow_inputs_in_the_same_cycle():
    """``i.ready``, ``o.valid``, ``o.payload`` and ``full`` do not change within a cycle
    whatever ``i.valid``, ``i.payload``, ``o.ready`` and ``clear`` do (registers only)."""
    dut = StreamSlice(8)
    seen = []

    async def testbench(ctx):
        for t, hold in enumerate([0, 0, 1, 0, 1, 0]):
            outputs = []
            for iv, p, orr, clear in ((0, 0, 0, 0), (1, 0x5A, 0, 0), (1, 0xA5, 1, 0),
                                      (0, 0x11, 1, 1), (1, 0x77 + t, hold, 0)):
                ctx.set(dut.i.valid, iv)
                ctx.set(dut.i.payload, p)
                ctx.set(dut.o.ready, orr)
                ctx.set(dut.clear, clear)
                outputs.append((ctx.get(dut.i.ready), ctx.get(dut.o.valid),
                                ctx.get(dut.o.payload), ctx.get(dut.full)))
            assert len(set(outputs)) == 1, (t, outputs)
            seen.append(outputs[0])
            await ctx.tick()

    simulate(dut, testbench)
    # The last setting of each cycle was kept: offered 0x77 + t, taken with o.ready = hold.
    assert seen == [(1, 0, 0, 0), (0, 1, 0x77, 1), (0, 1, 0x77, 1), (1, 0, 0x77, 0),
                    (0, 1, 0x7A, 1), (1, 0, 0x7A, 0)]


def test_clear_drops_the_entry_and_an_item_taken_with_it():
    dut = StreamSlice(8)
    # (i.valid, payload, o.ready, clear) per cycle
    cycles = [
        (1, 0x10, 0, 0),   # 0: 0x10 taken
        (0, 0x00, 0, 1),   # 1: held, cleared
        (0, 0x00, 1, 0),   # 2: empty: nothing offered
        (1, 0x20, 0, 1),   # 3: 0x20 taken in a cycle with clear: dropped
        (0, 0x00, 1, 0),   # 4: empty
        (1, 0x30, 0, 0),   # 5: 0x30 taken
        (0, 0x00, 1, 0),   # 6: 0x30 given
        (0, 0x00, 1, 0),   # 7: empty
    ]
    trace = _run(dut, len(cycles), lambda ctx, t: [
        ctx.set(dut.i.valid, cycles[t][0]), ctx.set(dut.i.payload, cycles[t][1]),
        ctx.set(dut.o.ready, cycles[t][2]), ctx.set(dut.clear, cycles[t][3])])
    assert [row[3] for row in trace] == [0, 1, 0, 0, 0, 0, 1, 0]      # o.valid
    assert [row[1] for row in trace] == [1, 0, 1, 1, 1, 1, 0, 1]      # i.ready
    assert trace[1][5] == 0x10 and trace[6][5] == 0x30
