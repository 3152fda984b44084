"""cocotb smoke test of the simulator runner: an 8-bit counter with enable.

The design under test has ports ``clk``, ``rst``, ``en`` and ``count``; ``count``
increments on each rising edge of ``clk`` while ``en`` is high and wraps at 256.
Inputs are driven and outputs sampled on falling edges, so exactly one rising edge
lies between two samples.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge


async def reset(dut):
    """Start the clock and hold reset for two cycles, with the counter disabled."""
    Clock(dut.clk, 10, unit="ns", impl="gpi").start()
    dut.en.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2, edge_type=FallingEdge)
    dut.rst.value = 0


@cocotb.test()
async def counts_only_when_enabled(dut):
    await reset(dut)
    await FallingEdge(dut.clk)
    assert int(dut.count.value) == 0

    dut.en.value = 1
    for expected in range(1, 6):
        await FallingEdge(dut.clk)
        assert int(dut.count.value) == expected

    dut.en.value = 0
    await ClockCycles(dut.clk, 3, edge_type=FallingEdge)
    assert int(dut.count.value) == 5


@cocotb.test()
async def wraps_at_256(dut):
    await reset(dut)
    dut.en.value = 1
    await ClockCycles(dut.clk, 258, edge_type=FallingEdge)
    assert int(dut.count.value) == 2
