"""Run sparse GEMMs on the Verilator model of the sparse engine.

The host side of :mod:`npugen.sim.tb_sparse_engine`: lowers golden GEMM jobs (their
weights compressed as the CSR of ``Wᵀ``) to sparse-engine programs, builds (or reuses)
the model for the configuration, runs the cocotb testbench and returns what the RTL
produced, assembled into output matrices, next to the dense golden results.
"""

from __future__ import annotations

import functools
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npugen.golden.config import NPUConfig
from npugen.golden.spmm import SpmmProgram, assemble_spmm, dense_reference, lower_spmm
from npugen.golden.tile_program import GemmJob

from . import runner

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
class SpmmRun:
    """What one simulation produced."""
    outputs: list[np.ndarray]     # one M×N matrix per job, from the RTL's result rows
    expected: list[np.ndarray]    # the dense golden outputs (qgemm, dense_reference)
    cycles: int                   # first input offered → last result row taken
    beats: int                    # nz beats streamed (work cycles of the engine)
    mismatching_rows: int
    work_dir: Path

    @property
    def match(self) -> bool:
        return self.mismatching_rows == 0 and all(
            np.array_equal(o, e) for o, e in zip(self.outputs, self.expected))


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
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="spmm-", dir=build_dir))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job_file, result_file = work_dir / "job.pkl", work_dir / "result.pkl"
    with open(job_file, "wb") as f:
        pickle.dump({"config": config.to_dict(), "seed": seed, "idle": idle,
                     "backpressure": backpressure, "fault": fault,
                     "programs": [_program_dict(p) for p in programs]}, f)
    failure = None
    try:
        runner.run(build_dir, TOPLEVEL, "npugen.sim.tb_sparse_engine", testcase=testcase,
                   env={"NPUGEN_JOB": str(job_file), "NPUGEN_RESULT": str(result_file)},
                   waves=waves, seed=seed, test_dir=work_dir)
    except runner.SimulationFailed as e:
        failure = e
    if testcase != "run_programs":
        if failure:
            raise failure
        with open(result_file, "rb") as f:
            return pickle.load(f)
    if not result_file.exists():
        raise failure or runner.SimulationFailed(f"no results in {work_dir}")
    with open(result_file, "rb") as f:
        result = pickle.load(f)
    outputs, expected, offset = [], [], 0
    for job, program in zip(jobs, programs):
        count = len(program.result_rows)
        outputs.append(assemble_spmm(config, job, result["rows"][offset:offset + count],
                                     program))
        expected.append(dense_reference(job, config.acc_bits))
        offset += count
    run = SpmmRun(outputs, expected, result["cycles"],
                  sum(len(p.nz_beats) for p in programs), result["mismatches"], work_dir)
    if failure is not None and run.match:
        raise failure  # the scoreboard agreed but another check (error, busy) failed
    return run
