"""Cycle-by-cycle driving of an Amaranth component in the Amaranth simulator.

Shared by the unit tests of the hardware blocks.  Convention: in cycle ``t`` the inputs
are set and the outputs read, then ``await ctx.tick()`` moves to cycle ``t + 1``.
"""

from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

__all__ = ["simulate", "run_cycles", "run_operand_pairs"]


def simulate(dut, *testbenches):
    """Run the async ``testbenches`` (``add_testbench``) on ``dut`` in its own ``sync``
    domain (also when it has no registers) until they return."""
    top = Module()
    top.domains.sync = ClockDomain()
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-8)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


def run_cycles(dut, cycles, read, *, drive=None):
    """Apply one entry of ``cycles`` per clock and return ``read(ctx)`` of every cycle.

    An entry is a dict of port name → value, or whatever ``drive(ctx, entry)`` applies.
    The component runs in its own ``sync`` domain (also when it has no registers).
    """
    trace = []

    async def testbench(ctx):
        for cycle in cycles:
            if drive is None:
                for name, value in cycle.items():
                    ctx.set(getattr(dut, name), value)
            else:
                drive(ctx, cycle)
            trace.append(read(ctx))
            await ctx.tick()

    simulate(dut, testbench)
    return trace


def run_operand_pairs(dut, pairs, valid):
    """Drive an FP unit's ``operands`` one pair per cycle (then idle past its latency);
    return ``(result.valid, result)`` of every cycle."""
    idle = [(0, 0)] * (dut.latency + 2)

    def drive(ctx, entry):
        (a, b), v = entry
        ctx.set(dut.operands.payload.a.as_value(), a)
        ctx.set(dut.operands.payload.b.as_value(), b)
        ctx.set(dut.operands.valid, v)

    return run_cycles(dut, list(zip(pairs + idle, valid + [0] * len(idle))),
                      lambda ctx: (ctx.get(dut.result.valid),
                                   ctx.get(dut.result.payload.as_value())),
                      drive=drive)
