import random

import pytest
from amaranth.sim import Simulator

from npugen.hw.axi_ram import AxiRam


def test_burst_reads_and_strobed_writes():
    """Random bursts: writes with random strobes, read back against a byte model."""
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    depth, width = 32, 64
    init = [rng.getrandbits(width) for _ in range(depth - 4)]
    model = init + [0] * 4
    dut = AxiRam(data_width=width, depth=depth, init=init)
    bus = dut.bus
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def wait(ctx, signal):
        while not ctx.get(signal):
            await ctx.tick()

    async def address(ctx, channel, addr, length, ident):
        """One handshake on the address channel ``channel`` ("aw" or "ar")."""
        for name, value in (("addr", addr), ("len", length - 1), ("id", ident), ("valid", 1)):
            ctx.set(getattr(bus, channel + name), value)
        await wait(ctx, getattr(bus, channel + "ready"))
        await ctx.tick()
        ctx.set(getattr(bus, channel + "valid"), 0)

    async def bench(ctx):
        for _ in range(12):
            start, length = rng.randrange(depth), rng.randrange(1, 6)
            ident = rng.randrange(2)
            if rng.random() < 0.5:
                await address(ctx, "aw", start * 8 + depth * 8 * rng.randrange(3), length,
                              ident)
                for beat in range(length):
                    data, strobe = rng.getrandbits(width), rng.getrandbits(width // 8)
                    ctx.set(bus.wdata, data)
                    ctx.set(bus.wstrb, strobe)
                    ctx.set(bus.wlast, beat == length - 1)
                    ctx.set(bus.wvalid, 1)
                    await wait(ctx, bus.wready)
                    await ctx.tick()
                    addr = (start + beat) % depth
                    mask = sum(0xFF << (8 * i) for i in range(width // 8) if strobe >> i & 1)
                    model[addr] = (model[addr] & ~mask) | (data & mask)
                ctx.set(bus.wvalid, 0)
                ctx.set(bus.bready, 1)
                await wait(ctx, bus.bvalid)
                assert ctx.get(bus.bid) == ident and ctx.get(bus.bresp) == 0
                await ctx.tick()
                ctx.set(bus.bready, 0)
            else:
                await address(ctx, "ar", start * 8, length, ident)
                for beat in range(length):
                    ctx.set(bus.rready, rng.random() < 0.7)
                    while not (ctx.get(bus.rvalid) and ctx.get(bus.rready)):
                        await ctx.tick()
                        ctx.set(bus.rready, rng.random() < 0.7)
                    assert ctx.get(bus.rdata) == model[(start + beat) % depth], (start, beat)
                    assert ctx.get(bus.rlast) == (beat == length - 1)
                    assert ctx.get(bus.rid) == ident and ctx.get(bus.rresp) == 0
                    await ctx.tick()
                ctx.set(bus.rready, 0)
        for addr in range(depth):
            ctx.set(dut.scan_addr, addr)
            await ctx.tick()
            assert ctx.get(dut.scan_data) == model[addr]

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("kwargs, message", [
    (dict(data_width=32, depth=24), r"^depth must be a power of two of at least 2, not 24$"),
    (dict(data_width=32, depth=True), r"^depth must be a power of two of at least 2, not True$"),
    (dict(data_width=32, depth=2, init=[1, 2, 3]), r"^init must hold at most depth=2 words, not 3$"),
    (dict(data_width=32, depth=2, init=[1 << 32]), r"^init words must be integers in 0\.\.2\*\*32-1, not 4294967296$"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AxiRam(**kwargs)
