"""Run sparse GEMMs on the Verilator model of the sparse engine.

The host side of :mod:`npugen.sim.tb_sparse_engine`: lowers golden GEMM jobs (their
weights compressed as the CSR of ``Wᵀ``) to sparse-engine programs, builds (or reuses)
the model for the configuration, runs the cocotb testbench and returns what the RTL
produced, assembled into output matrices, next to the dense golden results.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path


from npugen.golden.config import NPUConfig
from npugen.golden.spmm import SpmmProgram, assemble_spmm, dense_reference, lower_spmm
from npugen.golden.tile_program import GemmJob

from . import runner
from .gemm_sim import GemmRun
from .jobs import run_job

__all__ = ["TOPLEVEL", "SpmmRun", "sparse_engine_verilog", "build_engine", "run_spmm_jobs"]

TOPLEVEL = "npu_sparse_engine"


@functools.lru_cache(maxsize=8)
def sparse_engine_verilog(config: NPUConfig, name: str = TOPLEVEL) -> str:
    """Verilog of the sparse engine of ``config`` (no source locations: reproducible)."""
    from amaranth.back import verilog

    from npugen.hw.sparse_engine import SparseEngine
    return verilog.convert(SparseEngine(config), name=name, emit_src=False)


def build_engine(config: NPUConfig, *, waves: bool = False) -> Path:
    """Build (or reuse) the Verilator model of the sparse engine of ``config``."""
    return runner.build(sparse_engine_verilog(config), TOPLEVEL, config.config_hash(),
                        waves=waves)


def _program_dict(program: SpmmProgram) -> dict:
    return {key: getattr(program, key)
            for key in ("commands", "act_rows", "nz_beats", "quant", "result_rows")}


@dataclass
class SpmmRun(GemmRun):
    """What one simulation produced; ``expected`` are the dense golden outputs."""
    beats: int = 0                # nz beats streamed (work cycles of the engine)


def run_spmm_jobs(config: NPUConfig, jobs: list[GemmJob], *, seed: int, idle: float = 0.0,
                  backpressure: float = 0.0, waves: bool = False,
                  testcase: str = "run_programs", fault: str | None = None,
                  work_dir: Path | None = None):
    """Simulate ``jobs`` back to back (no reset between them) on the sparse engine.

    Returns an :class:`SpmmRun`.  With ``testcase="rejects_malformed_input"`` the first
    job is corrupted as ``fault`` names (see ``tb_sparse_engine.FAULTS``) and the
    testbench's raw record (a dict) is returned instead.
    """
    programs = [lower_spmm(config, job) for job in jobs]
    build_dir = build_engine(config, waves=waves)
    result, failure, work_dir = run_job(
        build_dir, TOPLEVEL, "npugen.sim.tb_sparse_engine", config,
        [_program_dict(p) for p in programs],
        seed=seed, idle=idle, backpressure=backpressure, fault=fault, testcase=testcase,
        waves=waves, work_dir=work_dir, prefix="spmm-")
    if testcase != "run_programs":
        return result
    outputs, expected, offset = [], [], 0
    for job, program in zip(jobs, programs):
        count = len(program.result_rows)
        outputs.append(assemble_spmm(config, job, result["rows"][offset:offset + count],
                                     program))
        expected.append(dense_reference(job, config.acc_bits))
        offset += count
    run = SpmmRun(outputs, expected, result["cycles"], result["mismatches"], work_dir,
                  beats=sum(len(p.nz_beats) for p in programs))
    if failure is not None and run.match:
        raise failure  # the scoreboard agreed but another check (error, busy) failed
    return run
