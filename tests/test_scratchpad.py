# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.scratchpad.Scratchpads`.

Cycle convention (tests/cycle_sim.py): in a cycle the inputs are set and the outputs
read, then ``await ctx.tick()``.  A read presented in cycle t has its word in t + 1.
"""

import random

import pytest
from amaranth.hdl import signed
from amaranth.lib import data

from cycle_sim import simulate
from npugen.golden.config import NPUConfig, PRESETS
from npugen.hw.isa import LoadTarget
from npugen.hw.scratchpad import (ScratchpadLoadSignature, ScratchpadReadSignature,
                                  ScratchpadWriteSignature, Scratchpads, act_lanes,
                                  load_data_bits)

TINY = PRESETS["tiny"]
#: No 2:4 sparsity (no WIDX), odd lane counts, the smallest depths.
DENSE = NPUConfig(rows=3, cols=5, acc_depth=16, out_fifo_depth=4, axi_data_bits=32,
                  act_sp_depth=64, wgt_sp_depth=64, out_sp_depth=64, param_sp_depth=16)


def mask(bits):
    return (1 << bits) - 1


def test_bad_parameters():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not None$"):
        Scratchpads(None)
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 'tiny'$"):
        ScratchpadLoadSignature("tiny")
    with pytest.raises(TypeError, match=r"^data_shape must be a shape, not 'wide'$"):
        ScratchpadReadSignature("wide")
    with pytest.raises(TypeError, match=r"^data_shape must be a shape, not 1\.5$"):
        ScratchpadWriteSignature(1.5)


def test_signatures():
    word = data.ArrayLayout(signed(32), 2)
    assert ScratchpadReadSignature(word) == ScratchpadReadSignature(word)
    assert ScratchpadReadSignature(word) != ScratchpadReadSignature(64)
    assert ScratchpadReadSignature(64) != ScratchpadWriteSignature(64)
    assert ScratchpadLoadSignature(TINY) == ScratchpadLoadSignature(PRESETS["tiny"])
    assert ScratchpadLoadSignature(TINY) != ScratchpadLoadSignature(DENSE)
    assert repr(ScratchpadWriteSignature(64)) == "ScratchpadWriteSignature(64)"
    assert repr(ScratchpadLoadSignature(DENSE)) == f"ScratchpadLoadSignature({DENSE!r})"
    members = ScratchpadWriteSignature(8).members
    assert set(members) == {"addr", "data", "valid", "ready"}
    assert load_data_bits(TINY) == max(8 * act_lanes(TINY), 32 * TINY.cols) == 64
    assert load_data_bits(NPUConfig(rows=16, cols=2, sparse_2_4=True)) == 256
    sp = Scratchpads(TINY)
    assert len(sp.act_rd.data.as_value()) == 8 * act_lanes(TINY) == 32
    assert len(sp.wgt_rd.data.as_value()) == 10 * TINY.cols
    assert sp.read_latency == 1


@pytest.mark.parametrize("config", [TINY, DENSE], ids=["tiny", "dense"])
def test_load_targets_and_compute_reads(config):
    """Each target gets its lanes (the rest of the load data is ignored, WIDX keeps 2
    bits per lane); reads return the word one cycle later and hold while ``en`` is low."""
    seed = 0x5C_0001
    print(f"seed={seed}")
    rng = random.Random(seed)
    dut = Scratchpads(config)
    C = config.cols
    W = load_data_bits(config)
    targets = [LoadTarget.ACT, LoadTarget.WGT, LoadTarget.PARAM]
    if config.sparse_2_4:
        targets.append(LoadTarget.WIDX)
    depth = {LoadTarget.ACT: config.act_sp_depth, LoadTarget.WGT: config.wgt_sp_depth,
             LoadTarget.WIDX: config.wgt_sp_depth, LoadTarget.PARAM: config.param_sp_depth}
    kept = {LoadTarget.ACT: lambda d: d & mask(8 * act_lanes(config)),
            LoadTarget.WGT: lambda d: d & mask(8 * C),
            LoadTarget.PARAM: lambda d: d & mask(32 * C),
            LoadTarget.WIDX: lambda d: sum(((d >> (8 * c)) & 3) << (2 * c) for c in range(C))}
    writes = []
    for _ in range(60):
        target = rng.choice(targets)
        addr = rng.choice([0, depth[target] - 1, rng.randrange(8)])
        writes.append((target, addr, rng.getrandbits(W)))
    model = {t: {} for t in targets}
    for target, addr, word in writes:
        model[target][addr] = kept[target](word)

    async def testbench(ctx):
        for target, addr, word in writes:
            ctx.set(dut.load_wr.target, target)
            ctx.set(dut.load_wr.addr, addr)
            ctx.set(dut.load_wr.data, word)
            ctx.set(dut.load_wr.en, 1)
            await ctx.tick()
        ctx.set(dut.load_wr.en, 0)
        ctx.set(dut.load_wr.data, mask(W))
        # A disabled write changes nothing.
        ctx.set(dut.load_wr.addr, 0)
        await ctx.tick()
        for addr in sorted({a for t in targets for a in model[t]}):
            for port in (dut.act_rd, dut.wgt_rd, dut.param_rd):
                ctx.set(port.addr, addr)
                ctx.set(port.en, 1)
            await ctx.tick()
            for port in (dut.act_rd, dut.wgt_rd, dut.param_rd):
                ctx.set(port.en, 0)
                ctx.set(port.addr, addr + 1)      # ignored while en is low
            def expect(target):
                # Only words inside the scratchpad's depth (the address is truncated).
                return model[target].get(addr, 0) if addr < depth[target] else None

            for _ in range(2):
                checks = [(dut.act_rd.data, expect(LoadTarget.ACT)),
                          (dut.param_rd.data, expect(LoadTarget.PARAM))]
                if config.sparse_2_4:
                    checks += [(dut.wgt_rd.data.value, expect(LoadTarget.WGT)),
                               (dut.wgt_rd.data.index, expect(LoadTarget.WIDX))]
                else:
                    checks.append((dut.wgt_rd.data, expect(LoadTarget.WGT)))
                for view, want in checks:
                    if want is not None:
                        assert ctx.get(view.as_value()) == want, (addr, view)
                await ctx.tick()

    simulate(dut, testbench)


def test_out_arbitration_and_read_ports():
    """Compute writes win; the vector write waits (ready low) and lands next cycle; both
    OUT read ports see the memory independently; a read in the cycle of a write to the
    same word returns the old word."""
    dut = Scratchpads(TINY)
    C = TINY.cols
    cw, vw = dut.out_wr_compute, dut.out_wr_vector
    vr, sr = dut.out_rd_vector, dut.out_rd_store

    def word(*values):
        return sum((v & mask(32)) << (32 * j) for j, v in enumerate(values))

    async def testbench(ctx):
        # Cycle 0: both request address 5; compute wins.
        ctx.set(cw.addr, 5)
        ctx.set(cw.data.as_value(), word(1, -1))
        ctx.set(cw.valid, 1)
        ctx.set(vw.addr, 5)
        ctx.set(vw.data.as_value(), word(7, 7))
        ctx.set(vw.valid, 1)
        assert ctx.get(cw.ready) == 1 and ctx.get(vw.ready) == 0
        await ctx.tick()
        # Cycle 1: the vector request (still valid) goes to 6 now; compute idle.
        ctx.set(cw.valid, 0)
        ctx.set(vw.addr, 6)
        assert ctx.get(vw.ready) == 1
        # Same cycle: both read ports read 6 (old word) and 5 (compute's word).
        ctx.set(vr.addr, 6)
        ctx.set(vr.en, 1)
        ctx.set(sr.addr, 5)
        ctx.set(sr.en, 1)
        await ctx.tick()
        ctx.set(vw.valid, 0)
        assert ctx.get(vr.data.as_value()) == 0
        assert ctx.get(sr.data.as_value()) == word(1, -1)
        # Cycle 2: read the new word at 6 on the store port, 5 on the vector port.
        ctx.set(vr.addr, 5)
        ctx.set(sr.addr, 6)
        await ctx.tick()
        assert ctx.get(vr.data.as_value()) == word(1, -1)
        assert ctx.get(sr.data.as_value()) == word(7, 7)
        # Compute alone, ready with no vector request.
        ctx.set(cw.addr, 6)
        ctx.set(cw.data.as_value(), word(3, 4))
        ctx.set(cw.valid, 1)
        ctx.set(vr.en, 0)
        ctx.set(sr.en, 0)
        assert ctx.get(cw.ready) == 1
        await ctx.tick()
        ctx.set(cw.valid, 0)
        assert ctx.get(sr.data.as_value()) == word(7, 7)     # held: en low
        ctx.set(sr.en, 1)
        await ctx.tick()
        assert ctx.get(sr.data.as_value()) == word(3, 4)
        assert C == 2

    simulate(dut, testbench)
