"""Run the cocotb testbench of the register file on its Verilator model.

The host side of :mod:`npugen.sim.tb_registers`: generates the register file of a
configuration as its own Verilog top (``npu_registers``), builds (or reuses) the model
and runs one cocotb test with a seed and a bus pattern.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

from amaranth.back import verilog

from npugen.golden.config import NPUConfig

from . import runner

__all__ = ["TOPLEVEL", "TESTCASES", "registers_verilog", "build_registers", "run_registers"]

TOPLEVEL = "npu_registers"
#: The cocotb tests of :mod:`npugen.sim.tb_registers`.
TESTCASES = ("reset_values_and_access", "byte_strobes_and_unaligned_addresses",
             "run_sequencing", "counters_wide", "irq_behaviour", "independent_aw_w",
             "bus_patterns")


@functools.lru_cache(maxsize=4)
def registers_verilog(config: NPUConfig) -> str:
    """Verilog of :class:`~npugen.hw.registers.RegisterFile` as top module ``npu_registers``."""
    from npugen.hw.registers import RegisterFile
    return verilog.convert(RegisterFile(config), name=TOPLEVEL, emit_src=False)


def build_registers(config: NPUConfig) -> Path:
    """Build (or reuse) the Verilator model of the register file of ``config``."""
    return runner.build(registers_verilog(config), TOPLEVEL, config.config_hash())


def run_registers(config: NPUConfig, testcase: str, *, seed: int, pattern: str = "none",
                  work_dir: Path) -> Path:
    """Run cocotb test ``testcase`` with ``seed`` and bus ``pattern``; return results.xml.

    Raises :class:`runner.SimulationFailed` when the test fails.
    """
    if testcase not in TESTCASES:
        raise ValueError(f"testcase must be one of {', '.join(TESTCASES)}, not {testcase!r}")
    from .tb_registers import PATTERNS
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    build_dir = build_registers(config)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job = work_dir / "job.pkl"
    with open(job, "wb") as f:
        pickle.dump({"config": config.to_dict(), "seed": seed, "pattern": pattern}, f)
    return runner.run(build_dir, TOPLEVEL, "npugen.sim.tb_registers", testcase=testcase,
                      env={"NPUGEN_JOB": str(job)}, seed=seed, test_dir=work_dir)
