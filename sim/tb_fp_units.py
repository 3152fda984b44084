"""cocotb scoreboard of the floating-point units (``npugen.sim.fp_sim.FloatLanes``).

Runs inside the simulator, launched by :func:`npugen.sim.fp_sim.run_lanes`.  The job
file named by ``NPUGEN_JOB`` holds the operand pairs, the expected results of every
bank (from the golden model) and the configuration.  Each cycle the driver puts
``lanes`` pairs on the wide ``a``/``b`` words; the monitor takes a bank's result word
whenever its ``valid`` is high, so the pipeline latency is observed rather than assumed;
the checker compares every lane with the golden result.  Results and the cycle count go
to ``NPUGEN_RESULT``.  The clock runs in the simulator; Python wakes once per cycle, and
every wake moves ``lanes`` pairs per bank.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from npugen.sim.fp_sim import pack_words, unpack_words

CLOCK_NS = 10


@cocotb.test()
async def run_lanes(dut):
    """Stream every operand pair through every bank; score each result."""
    with np.load(os.environ["NPUGEN_JOB"]) as job:
        meta = json.loads(str(job["meta"]))
        a, b = job["a"], job["b"]
        expected = {bank["name"]: job[f"expected_{bank['name']}"] for bank in meta["banks"]}
    lanes, stride = meta["lanes"], meta["stride"]
    names = [bank["name"] for bank in meta["banks"]]
    dut._log.info("seed=%d op=%s e=%d m=%d banks=%s pairs=%d lanes=%d", meta["seed"], meta["op"],
                  meta["exp_bits"], meta["man_bits"], ",".join(names), meta["count"], lanes)

    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0

    words_a, words_b = pack_words(a, lanes, stride), pack_words(b, lanes, stride)
    cycles_in = len(words_a)
    ports = [(name, getattr(dut, f"{name}_y"), getattr(dut, f"{name}_valid")) for name in names]
    received = {name: [] for name in names}
    drain = max(bank["latency"] for bank in meta["banks"]) + 2
    for t in range(cycles_in + drain):
        # Monitor first: what the banks show now belongs to pairs driven earlier.
        for name, y, valid in ports:
            if int(valid.value):
                received[name].append(y.value.to_unsigned())
        if t < cycles_in:
            dut.a.value = words_a[t]
            dut.b.value = words_b[t]
            dut.valid.value = 1
        else:
            dut.valid.value = 0
        await RisingEdge(dut.clk)

    outputs, report = {}, []
    for name in names:
        got = unpack_words(received[name], lanes, stride)
        outputs[name] = got
        want = expected[name]
        if len(got) != len(want):
            report.append(f"bank {name}: {len(got)} results for {len(want)} pairs")
            continue
        bad = np.nonzero(got != want)[0]
        for i in bad[:5]:
            dut._log.error("bank %s pair %d: %#x op %#x = %#x, expected %#x", name, i,
                           int(a[i]), int(b[i]), int(got[i]), int(want[i]))
        if len(bad):
            report.append(f"bank {name}: {len(bad)} of {len(want)} results differ")
    np.savez(os.environ["NPUGEN_RESULT"], cycles=np.array(cycles_in + drain), **outputs)
    assert not report, "; ".join(report) + f" (seed={meta['seed']})"
