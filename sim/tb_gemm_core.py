"""cocotb testbench of the GEMM core (``npugen.hw.gemm_core.GemmCore``).

Runs inside the simulator, launched by :mod:`npugen.sim.gemm_sim`.  The job file named
by ``NPUGEN_JOB`` holds the configuration, one or more tile programs (see
``npugen.golden.tile_program``) to run back to back without reset, the seed and the
idle/back-pressure probabilities.  The testbench is a scoreboard: stream sources
(cocotbext-axi) drive ``cmd``/``weight``/``act``/``quant``, a sink takes ``result``
with random back-pressure, and every received row is checked against the golden
row.  What was received and the cycle count go to ``NPUGEN_RESULT``.

Python wakes per stream transaction; the clock runs in the simulator (GPI clock).
"""

import os
import pickle
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
from cocotb.utils import get_sim_time
from cocotbext.axi.stream import define_stream

from npugen.golden.config import NPUConfig
from npugen.golden.precision import MODE_CODES
from npugen.hw.layouts import (activation_row_layout, quant_params_layout, tile_command_layout,
                               weight_row_layout)
from npugen.sim.payload import pack, unpack_lanes

AmaranthStreamBus, AmaranthStreamTransaction, AmaranthStreamSource, AmaranthStreamSink, _ = \
    define_stream("AmaranthStream", signals=["payload", "valid", "ready"])

CLOCK_NS = 10


def pause_pattern(rng: random.Random, probability: float, length: int = 4096):
    """An endless cycle of pause flags: ``True`` with ``probability`` per cycle."""
    pattern = [rng.random() < probability for _ in range(length)]
    while True:
        yield from pattern


class GemmCoreTB:
    """Owns the clock, reset and the stream models of one GemmCore instance."""

    def __init__(self, dut, config: NPUConfig, *, seed: int, idle: float, backpressure: float):
        self.dut = dut
        self.config = config
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        bus = lambda name: AmaranthStreamBus.from_prefix(dut, name, bus_separator="__")
        self.cmd = AmaranthStreamSource(bus("cmd"), dut.clk, dut.rst)
        self.weight = AmaranthStreamSource(bus("weight"), dut.clk, dut.rst)
        self.act = AmaranthStreamSource(bus("act"), dut.clk, dut.rst)
        self.quant = AmaranthStreamSource(bus("quant"), dut.clk, dut.rst)
        self.result = AmaranthStreamSink(bus("result"), dut.clk, dut.rst)
        rng = random.Random(seed)
        if idle > 0:
            for source in (self.cmd, self.weight, self.act, self.quant):
                source.set_pause_generator(pause_pattern(rng, idle))
        if backpressure > 0:
            self.result.set_pause_generator(pause_pattern(rng, backpressure))

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def enqueue(self, program: dict):
        cfg = self.config
        cmd_layout, q_layout = tile_command_layout(cfg), quant_params_layout(cfg)
        act_layout, w_layout = activation_row_layout(cfg), weight_row_layout(cfg)
        send = lambda source, word: source.send_nowait(AmaranthStreamTransaction(payload=word))
        for command in program["commands"]:
            send(self.cmd, pack(cmd_layout, command))
        for quant in program["quant"]:
            send(self.quant, pack(q_layout, quant))
        for row in program["weight_rows"]:
            send(self.weight, pack(w_layout, row))
        for row in program["act_rows"]:
            send(self.act, pack(act_layout, row))


def _now_cycles() -> float:
    return get_sim_time("ns") / CLOCK_NS


@cocotb.test()
async def run_programs(dut):
    """Run every program of the job back to back and score the result rows."""
    with open(os.environ["NPUGEN_JOB"], "rb") as f:
        job = pickle.load(f)
    cfg = NPUConfig.from_dict(job["config"])
    dut._log.info("seed=%d idle=%.2f backpressure=%.2f programs=%d", job["seed"], job["idle"],
                  job["backpressure"], len(job["programs"]))
    tb = GemmCoreTB(dut, cfg, seed=job["seed"], idle=job["idle"],
                    backpressure=job["backpressure"])
    await tb.reset()

    expected = [row for program in job["programs"] for row in program["result_rows"]]
    start = _now_cycles()
    for program in job["programs"]:
        tb.enqueue(program)

    # Generous bound: every input beat and result row, slowed by the pause rates.
    beats = sum(len(p["act_rows"]) + len(p["weight_rows"]) + len(p["result_rows"])
                for p in job["programs"])
    slack = 1.0 / max(0.05, (1 - job["idle"]) * (1 - job["backpressure"]))
    timeout_cycles = int(beats * slack * 4) + 20 * (cfg.rows + cfg.cols) + 2000

    received, mismatches = [], []
    async def collect():
        for index, want in enumerate(expected):
            beat = await tb.result.recv()
            got = unpack_lanes(int(beat.payload), 32, cfg.cols)
            received.append(got)
            if got != list(want):
                mismatches.append(index)
                if len(mismatches) <= 5:
                    dut._log.error("result row %d: got %s, expected %s", index, got, list(want))
    await with_timeout(collect(), timeout_cycles * CLOCK_NS, "ns")
    cycles = _now_cycles() - start

    # Nothing more must come out, and the core must go idle without error.
    await ClockCycles(dut.clk, cfg.rows + cfg.cols + 16)
    extra = tb.result.count()
    error, busy = int(dut.error.value), int(dut.busy.value)
    with open(os.environ["NPUGEN_RESULT"], "wb") as f:
        pickle.dump({"rows": received, "cycles": int(round(cycles)), "error": error,
                     "busy": busy, "extra_rows": extra, "mismatches": len(mismatches)}, f)
    assert not mismatches, f"{len(mismatches)} of {len(expected)} result rows differ (seed={job['seed']})"
    assert extra == 0, f"{extra} unexpected result rows"
    assert error == 0, f"core reported error {error}"
    assert busy == 0, "core still busy after its last result"


#: Malformed inputs the core must reject: how to corrupt a program, the expected code.
FAULTS = {
    "bad_rows": (lambda p: p["commands"].insert(0, dict(p["commands"][0], m_rows=0)), 1),
    "bad_shift": (lambda p: p["quant"][0]["shift"].__setitem__(0, 31), 2),
    "bad_clamp": (lambda p: p["quant"][0].update(out_min=10, out_max=-10), 3),
    "mode_not_built": (lambda p: p["commands"][0].update(mode=MODE_CODES["int4"]), 4),
    "bad_k": (lambda p: p["commands"][0].update(k_valid=0), 5),
    "bad_zero_point": (lambda p: p["commands"][0].update(mode=MODE_CODES["int4"],
                                                         a_zero_point=8), 6),
}


@cocotb.test()
async def rejects_malformed_input(dut):
    """A malformed command or parameter set sets ``error``; the core stops, emits nothing."""
    with open(os.environ["NPUGEN_JOB"], "rb") as f:
        job = pickle.load(f)
    cfg = NPUConfig.from_dict(job["config"])
    corrupt, code = FAULTS[job["fault"]]
    tb = GemmCoreTB(dut, cfg, seed=job["seed"], idle=0.0, backpressure=0.0)
    await tb.reset()
    program = job["programs"][0]
    corrupt(program)
    tb.enqueue(program)
    await ClockCycles(dut.clk, 4 * (cfg.rows + cfg.cols) + len(program["act_rows"]) + 50)
    error = int(dut.error.value)
    with open(os.environ["NPUGEN_RESULT"], "wb") as f:
        pickle.dump({"error": error, "results": tb.result.count(),
                     "busy": int(dut.busy.value)}, f)
    assert error == code, f"error is {error}, expected {code} for {job['fault']}"
    assert tb.result.count() == 0, "a result row left a core in error"
    assert not tb.act.empty(), "the core kept consuming activations after the error"
