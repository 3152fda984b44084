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

import cocotb
from cocotb.triggers import ClockCycles

from npugen.golden.precision import MODE_CODES
from npugen.hw.layouts import (activation_row_layout, quant_params_layout, tile_command_layout,
                               weight_row_layout)
from npugen.hw.gemm_core import CoreError
from npugen.sim.streams import StreamTB, load_job, run_and_score, write_result


def gemm_core_tb(dut, config, *, seed, idle, backpressure) -> StreamTB:
    return StreamTB(dut, {"cmd": (tile_command_layout(config), "commands"),
                          "quant": (quant_params_layout(config), "quant"),
                          "weight": (weight_row_layout(config), "weight_rows"),
                          "act": (activation_row_layout(config), "act_rows")},
                    seed=seed, idle=idle, backpressure=backpressure)


@cocotb.test()
async def run_programs(dut):
    """Run every program of the job back to back and score the result rows."""
    job, cfg = load_job()
    tb = gemm_core_tb(dut, cfg, seed=job["seed"], idle=job["idle"],
                      backpressure=job["backpressure"])
    await run_and_score(tb, job, lanes=cfg.cols, drain_cycles=cfg.rows + cfg.cols + 16,
                        margin=20 * (cfg.rows + cfg.cols) + 2000,
                        error_name=lambda code: CoreError(code).name)


#: Malformed inputs the core must reject: how to corrupt a program, the expected code.
FAULTS = {
    "bad_rows": (lambda p: p["commands"].insert(0, dict(p["commands"][0], m_rows=0)), 1),
    "bad_shift": (lambda p: p["quant"][0]["shift"].__setitem__(0, 31), 2),
    "bad_clamp": (lambda p: p["quant"][0].update(out_min=10, out_max=-10), 3),
    "mode_not_built": (lambda p: p["commands"][0].update(mode=MODE_CODES["int4"]), 4),
    "bad_k": (lambda p: p["commands"][0].update(k_valid=0), 5),
    "bad_zero_point": (lambda p: p["commands"][0].update(mode=MODE_CODES["int4"],
                                                         a_zero_point=8), 6),
    # 2:4: a design without it, a mode other than int8, a group whose two indices
    # repeat or decrease (the first tile must be a 2:4 tile for the last two).
    "sparse_not_built": (lambda p: p["commands"][0].update(sparse=1), 4),
    "sparse_not_int8": (lambda p: p["commands"][0].update(sparse=1, mode=MODE_CODES["int4"]), 4),
    "duplicate_sparse_index": (lambda p: p["weight_rows"][1]["index"].__setitem__(
        0, p["weight_rows"][0]["index"][0]), 7),
    "decreasing_sparse_index": (lambda p: (p["weight_rows"][0]["index"].__setitem__(0, 3),
                                           p["weight_rows"][1]["index"].__setitem__(0, 1)), 7),
}


@cocotb.test()
async def rejects_malformed_input(dut):
    """A malformed command or parameter set sets ``error``; the core stops, emits nothing."""
    job, cfg = load_job()
    corrupt, code = FAULTS[job["fault"]]
    tb = gemm_core_tb(dut, cfg, seed=job["seed"], idle=0.0, backpressure=0.0)
    await tb.reset()
    program = job["programs"][0]
    corrupt(program)
    tb.enqueue(program)
    await ClockCycles(dut.clk, 4 * (cfg.rows + cfg.cols) + len(program["act_rows"]) + 50)
    error = int(dut.error.value)
    write_result({"error": error, "results": tb.result.count(), "busy": int(dut.busy.value)})
    assert error == code, f"error is {error}, expected {code} for {job['fault']}"
    assert tb.result.count() == 0, "a result row left a core in error"
    assert not tb.sources["act"].empty(), "the core kept consuming activations after the error"
