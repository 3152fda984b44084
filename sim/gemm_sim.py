"""Run GEMMs on the Verilator model of the GEMM core and collect results and cycles.

The host side of :mod:`npugen.sim.tb_gemm_core`: lowers golden GEMM jobs to tile
programs, builds (or reuses) the model for the configuration, runs the cocotb
testbench and returns what the RTL produced, assembled into output matrices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npugen.golden.config import NPUConfig
from npugen.golden.tile_program import GemmJob, TileProgram, assemble, lower_gemm

from . import runner
from .jobs import run_job

__all__ = ["TOPLEVEL", "GemmRun", "build_core", "run_gemm_jobs"]

TOPLEVEL = "npu_gemm_core"


@functools.lru_cache(maxsize=8)
def _verilog(config: NPUConfig) -> str:
    from npugen.flows.verilog import generate_verilog
    return generate_verilog(config, TOPLEVEL, top="gemm_core")


def build_core(config: NPUConfig, *, waves: bool = False) -> Path:
    """Build (or reuse) the Verilator model of the GEMM core of ``config``."""
    return runner.build(_verilog(config), TOPLEVEL, config.config_hash(), waves=waves)


def _program_dict(program: TileProgram) -> dict:
    as_ints = lambda rows: [[int(v) for v in row] for row in rows]
    weight_rows = as_ints(program.weight_rows)
    if program.weight_index_rows:   # 2:4 built: {"value", "index"} weight rows
        weight_rows = [{"value": values, "index": index} for values, index in
                       zip(weight_rows, as_ints(program.weight_index_rows))]
    return {
        "commands": [{"m_rows": c.m_rows, "first": int(c.first), "last": int(c.last),
                      "a_zero_point": c.a_zero_point, "mode": c.mode, "k_valid": c.k_valid,
                      "sparse": int(c.sparse)}
                     for c in program.commands],
        "quant": [{"bias": [int(v) for v in q.bias], "multiplier": [int(v) for v in q.multiplier],
                   "shift": [int(v) for v in q.shift], "out_zero_point": q.out_zero_point,
                   "out_min": q.out_min, "out_max": q.out_max, "raw": int(q.raw)}
                  for q in program.quant],
        "weight_rows": weight_rows,
        "act_rows": as_ints(program.act_rows),
        "result_rows": as_ints(program.result_rows),
    }


@dataclass
class GemmRun:
    """What one simulation produced."""
    outputs: list[np.ndarray]     # one M×N matrix per job, from the RTL's result rows
    expected: list[np.ndarray]    # the golden outputs of the same jobs
    cycles: int                   # first input offered → last result row taken
    mismatching_rows: int
    work_dir: Path

    @property
    def match(self) -> bool:
        return self.mismatching_rows == 0 and all(
            np.array_equal(o, e) for o, e in zip(self.outputs, self.expected))


def run_gemm_jobs(config: NPUConfig, jobs: list[GemmJob], *, seed: int, idle: float = 0.0,
                  backpressure: float = 0.0, waves: bool = False,
                  testcase: str = "run_programs", fault: str | None = None,
                  work_dir: Path | None = None) -> GemmRun:
    """Simulate ``jobs`` back to back (no reset between them) on the RTL of ``config``.

    With ``testcase="rejects_malformed_input"`` the first job is corrupted as ``fault``
    names (see ``tb_gemm_core.FAULTS``) and the testbench's raw record is returned.
    """
    programs = [lower_gemm(config, job) for job in jobs]
    build_dir = build_core(config, waves=waves)
    result, failure, work_dir = run_job(
        build_dir, TOPLEVEL, "npugen.sim.tb_gemm_core", config,
        [_program_dict(p) for p in programs],
        seed=seed, idle=idle, backpressure=backpressure, fault=fault, testcase=testcase,
        waves=waves, work_dir=work_dir, prefix="gemm-")
    if testcase != "run_programs":
        return result
    outputs, expected, offset = [], [], 0
    for job, program in zip(jobs, programs):
        count = len(program.result_rows)
        outputs.append(assemble(config, job, result["rows"][offset:offset + count]))
        expected.append(job.reference(config.acc_bits))
        offset += count
    run = GemmRun(outputs, expected, result["cycles"], result["mismatches"], work_dir)
    if failure is not None and run.match:
        raise failure  # the scoreboard agreed but another check (error, busy) failed
    return run
