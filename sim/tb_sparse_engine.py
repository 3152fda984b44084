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

import cocotb
from cocotb.triggers import ClockCycles

from npugen.hw.sparse_engine import (SpmmError, spmm_act_layout, spmm_command_layout,
                                     spmm_nz_layout, spmm_quant_layout)
from npugen.sim.payload import unpack_lanes
from npugen.sim.streams import StreamTB, load_job, run_and_score, write_result


def sparse_engine_tb(dut, config, *, seed, idle, backpressure) -> StreamTB:
    return StreamTB(dut, {"cmd": (spmm_command_layout(config), "commands"),
                          "quant": (spmm_quant_layout(config), "quant"),
                          "nz": (spmm_nz_layout(config), "nz_beats"),
                          "act": (spmm_act_layout(config), "act_rows")},
                    seed=seed, idle=idle, backpressure=backpressure)


@cocotb.test()
async def run_programs(dut):
    """Run every program of the job back to back and score the result rows."""
    job, cfg = load_job()
    tb = sparse_engine_tb(dut, cfg, seed=job["seed"], idle=job["idle"],
                          backpressure=job["backpressure"])
    await run_and_score(tb, job, lanes=cfg.rows, drain_cycles=32, margin=2000,
                        error_name=lambda code: SpmmError(code).name)


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
    job, cfg = load_job()
    corrupt, code = FAULTS[job["fault"]]
    tb = sparse_engine_tb(dut, cfg, seed=job["seed"], idle=0.0, backpressure=0.0)
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
    consumed_all = all(tb.sources[name].empty() for name in ("nz", "act", "cmd"))
    write_result({"error": error, "results": len(received), "good_rows": good_rows,
                  "busy": int(dut.busy.value), "consumed_all": consumed_all})
    assert error == code, f"error is {error}, expected {int(code)} ({code.name}) for {job['fault']}"
    assert received == [list(r) for r in program["result_rows"][:len(received)]], \
        "a result row differs from the golden model"
    assert len(received) <= good_rows, \
        f"{len(received)} result rows came out, only {good_rows} precede the fault"
