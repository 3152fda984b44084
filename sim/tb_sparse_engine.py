"""cocotb testbench of the sparse engine (``npugen.hw.sparse_engine.SparseEngine``).

Runs inside the simulator, launched by :mod:`npugen.sim.spmm_sim`.  The job file named
by ``NPUGEN_JOB`` holds the configuration, one or more sparse-engine programs (see
``npugen.golden.spmm.lower_spmm``) to run back to back without reset, the seed and the
idle/back-pressure probabilities.  Stream sources (cocotbext-axi) drive
``cmd``/``act``/``nz``/``quant``, a sink takes ``result`` with random back-pressure, and
every received row is checked against the golden row (scoreboard).  What was received
and the cycle count go to ``NPUGEN_RESULT``.

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
from npugen.hw.sparse_engine import (SpmmError, spmm_act_layout, spmm_command_layout,
                                     spmm_nz_layout, spmm_quant_layout)
from npugen.sim.payload import pack, unpack_lanes

AmaranthStreamBus, AmaranthStreamTransaction, AmaranthStreamSource, AmaranthStreamSink, _ = \
    define_stream("AmaranthStream", signals=["payload", "valid", "ready"])

CLOCK_NS = 10


def pause_pattern(rng: random.Random, probability: float, length: int = 4096):
    """An endless cycle of pause flags: ``True`` with ``probability`` per cycle."""
    pattern = [rng.random() < probability for _ in range(length)]
    while True:
        yield from pattern


class SparseEngineTB:
    """Owns the clock, reset and the stream models of one SparseEngine instance."""

    def __init__(self, dut, config: NPUConfig, *, seed: int, idle: float, backpressure: float):
        self.dut = dut
        self.config = config
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        bus = lambda name: AmaranthStreamBus.from_prefix(dut, name, bus_separator="__")
        self.cmd = AmaranthStreamSource(bus("cmd"), dut.clk, dut.rst)
        self.act = AmaranthStreamSource(bus("act"), dut.clk, dut.rst)
        self.nz = AmaranthStreamSource(bus("nz"), dut.clk, dut.rst)
        self.quant = AmaranthStreamSource(bus("quant"), dut.clk, dut.rst)
        self.result = AmaranthStreamSink(bus("result"), dut.clk, dut.rst)
        rng = random.Random(seed)
        if idle > 0:
            for source in (self.cmd, self.act, self.nz, self.quant):
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
        layouts = ((self.cmd, spmm_command_layout(cfg), "commands"),
                   (self.quant, spmm_quant_layout(cfg), "quant"),
                   (self.nz, spmm_nz_layout(cfg), "nz_beats"),
                   (self.act, spmm_act_layout(cfg), "act_rows"))
        for source, layout, key in layouts:
            for item in program[key]:
                source.send_nowait(AmaranthStreamTransaction(payload=pack(layout, item)))


def _now_cycles() -> float:
    return get_sim_time("ns") / CLOCK_NS


def _load_job():
    with open(os.environ["NPUGEN_JOB"], "rb") as f:
        job = pickle.load(f)
    return job, NPUConfig.from_dict(job["config"])


@cocotb.test()
async def run_programs(dut):
    """Run every program of the job back to back and score the result rows."""
    job, cfg = _load_job()
    dut._log.info("seed=%d idle=%.2f backpressure=%.2f programs=%d", job["seed"], job["idle"],
                  job["backpressure"], len(job["programs"]))
    tb = SparseEngineTB(dut, cfg, seed=job["seed"], idle=job["idle"],
                        backpressure=job["backpressure"])
    await tb.reset()

    expected = [row for program in job["programs"] for row in program["result_rows"]]
    start = _now_cycles()
    for program in job["programs"]:
        tb.enqueue(program)

    beats = sum(len(p["act_rows"]) + len(p["nz_beats"]) + len(p["result_rows"])
                for p in job["programs"])
    slack = 1.0 / max(0.05, (1 - job["idle"]) * (1 - job["backpressure"]))
    timeout_cycles = int(beats * slack * 4) + 2000

    received, mismatches = [], []

    async def collect():
        for index, want in enumerate(expected):
            beat = await tb.result.recv()
            got = unpack_lanes(int(beat.payload), 32, cfg.rows)
            received.append(got)
            if got != list(want):
                mismatches.append(index)
                if len(mismatches) <= 5:
                    dut._log.error("result row %d: got %s, expected %s", index, got, list(want))
    await with_timeout(collect(), timeout_cycles * CLOCK_NS, "ns")
    cycles = _now_cycles() - start

    await ClockCycles(dut.clk, 32)
    extra = tb.result.count()
    error, busy = int(dut.error.value), int(dut.busy.value)
    with open(os.environ["NPUGEN_RESULT"], "wb") as f:
        pickle.dump({"rows": received, "cycles": int(round(cycles)), "error": error,
                     "busy": busy, "extra_rows": extra, "mismatches": len(mismatches)}, f)
    assert not mismatches, \
        f"{len(mismatches)} of {len(expected)} result rows differ (seed={job['seed']})"
    assert extra == 0, f"{extra} unexpected result rows"
    assert error == 0, f"engine reported error {SpmmError(error).name}"
    assert busy == 0, "engine still busy after its last result"


def _channel_of_beat(program, beat):
    return sum(b["last"] for b in program["nz_beats"][:beat])


def _first_beat(program, minimum):
    for i, b in enumerate(program["nz_beats"]):
        if b["count"] >= minimum:
            return i
    raise ValueError(f"the program has no nz beat with {minimum} entries to corrupt")


def _index_out_of_range(p):
    i = _first_beat(p, 1)
    p["nz_beats"][i]["index"][p["nz_beats"][i]["count"] - 1] = p["commands"][0]["k"]
    return _channel_of_beat(p, i)


def _unsorted(p):
    i = _first_beat(p, 2)
    index = p["nz_beats"][i]["index"]
    index[0], index[1] = index[1], index[0]
    return _channel_of_beat(p, i)


def _duplicate(p):
    i = _first_beat(p, 2)
    p["nz_beats"][i]["index"][1] = p["nz_beats"][i]["index"][0]
    return _channel_of_beat(p, i)


def _too_many(p):
    i = _first_beat(p, 0)
    p["nz_beats"][i]["count"] = len(p["nz_beats"][i]["index"]) + 1
    return _channel_of_beat(p, i)


def _pointer_past_end(p):
    # The command's nnz (the CSR's last pointer) is one short of the entries streamed:
    # the last entry lies past the end of the value array.
    p["commands"][0]["nnz"] -= 1
    return p["commands"][0]["n_cols"]


def _pointer_short(p):
    p["commands"][0]["nnz"] += 1
    return p["commands"][0]["n_cols"]


def _bad_shape(p):
    p["commands"][0]["k"] = 0
    return 0


def _bad_clamp(p):
    p["commands"][0].update(out_min=10, out_max=-10)
    return 0


def _bad_shift(p):
    p["quant"][0]["shift"] = 31
    return 0


#: Malformed inputs: how to corrupt a program (returns how many result rows may still
#: legitimately come out before the fault), and the error expected.
FAULTS = {
    "index_out_of_range": (_index_out_of_range, SpmmError.BAD_INDEX),
    "unsorted_indices": (_unsorted, SpmmError.BAD_ORDER),
    "duplicate_index": (_duplicate, SpmmError.BAD_ORDER),
    "too_many_entries": (_too_many, SpmmError.BAD_COUNT),
    "pointer_past_end": (_pointer_past_end, SpmmError.BAD_POINTER),
    "pointer_short": (_pointer_short, SpmmError.BAD_POINTER),
    "bad_shape": (_bad_shape, SpmmError.BAD_SHAPE),
    "bad_clamp": (_bad_clamp, SpmmError.BAD_CLAMP),
    "bad_shift": (_bad_shift, SpmmError.BAD_SHIFT),
}


@cocotb.test()
async def rejects_malformed_input(dut):
    """Malformed compressed input sets ``error``; nothing wrong ever leaves the engine."""
    job, cfg = _load_job()
    corrupt, code = FAULTS[job["fault"]]
    tb = SparseEngineTB(dut, cfg, seed=job["seed"], idle=0.0, backpressure=0.0)
    await tb.reset()
    program = job["programs"][0]
    good_rows = corrupt(program)
    tb.enqueue(program)
    await ClockCycles(dut.clk, 2 * (len(program["act_rows"]) + len(program["nz_beats"])) + 100)
    error = int(dut.error.value)
    received = []
    while not tb.result.empty():
        beat = tb.result.recv_nowait()
        received.append(unpack_lanes(int(beat.payload), 32, cfg.rows))
    consumed_all = tb.nz.empty() and tb.act.empty() and tb.cmd.empty()
    with open(os.environ["NPUGEN_RESULT"], "wb") as f:
        pickle.dump({"error": error, "results": len(received), "good_rows": good_rows,
                     "busy": int(dut.busy.value), "consumed_all": consumed_all}, f)
    assert error == code, f"error is {error}, expected {int(code)} ({code.name}) for {job['fault']}"
    assert received == [list(r) for r in program["result_rows"][:len(received)]], \
        "a result row differs from the golden model"
    assert len(received) <= good_rows, \
        f"{len(received)} result rows came out, only {good_rows} precede the fault"
