"""Run NPU programs on the Verilator model of the whole NPU and check them.

The host side of :mod:`npugen.sim.tb_npu`.  A :class:`NPURun` is what the host does for
one program: memory segments to write, the program address, the read and write windows.
:func:`run_npu` builds (or reuses) the model of the configuration, executes the runs back
to back without a reset and returns, per run, the NPU's status registers and the host
memory before and after.  :func:`check_compiled` runs compiled kernels
(``npugen.golden.compiler``) and compares every output with the golden model, the
instruction-level model and the memory outside the destination regions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npugen.golden.config import NPUConfig

from . import runner
from .jobs import run_job

__all__ = ["TOPLEVEL", "PATTERNS", "NPURun", "NPURecord", "KernelResult", "build_npu", "run_npu",
           "program_run", "memory_size", "run_kernels"]

TOPLEVEL = "npu_top"

#: Bus patterns of the testbench (idle and back-pressure on the AXI channels).
PATTERNS = ("none", "idle", "backpressure", "both", "heavy")


@functools.lru_cache(maxsize=4)
def _verilog(config: NPUConfig) -> str:
    from npugen.flows.verilog import generate_verilog
    return generate_verilog(config, TOPLEVEL, top="npu")


def build_npu(config: NPUConfig, *, waves: bool = False) -> Path:
    """Build (or reuse) the Verilator model of the NPU of ``config``."""
    return runner.build(_verilog(config), TOPLEVEL, "npu-" + config.config_hash(), waves=waves)


@dataclass
class NPURun:
    """One program as the host starts it."""
    segments: list[tuple[int, bytes]]
    prog_addr: int
    read_window: tuple[int, int]
    write_window: tuple[int, int]
    timeout_cycles: int = 200_000

    def as_dict(self) -> dict:
        return {"segments": [(int(a), bytes(b)) for a, b in self.segments],
                "prog_addr": int(self.prog_addr),
                "read_window": tuple(map(int, self.read_window)),
                "write_window": tuple(map(int, self.write_window)),
                "timeout_cycles": int(self.timeout_cycles)}


@dataclass
class NPURecord:
    """What the NPU did for one run, read back through its registers and memory."""
    status: int
    error: int
    error_detail: int
    error_pc: int
    cycles: int
    instret: int
    unit_busy: dict
    irq_after_clear: int
    before: bytes = field(repr=False)
    after: bytes = field(repr=False)

    @property
    def done(self) -> bool:
        return bool(self.status & 0b010) and not self.status & 0b101

    @property
    def failed(self) -> bool:
        return bool(self.status & 0b100) and not self.status & 0b001

    def changed_bytes(self) -> np.ndarray:
        """Addresses of the bytes the run changed."""
        before = np.frombuffer(self.before, dtype=np.uint8)
        after = np.frombuffer(self.after, dtype=np.uint8)
        return np.flatnonzero(before != after)

    def read(self, address: int, length: int) -> bytes:
        return self.after[address:address + length]


def run_npu(config: NPUConfig, runs: list[NPURun], *, mem_size: int, seed: int,
            pattern: str = "none", read_faults=(), write_faults=(), waves: bool = False,
            work_dir: Path | None = None) -> tuple[dict, list[NPURecord]]:
    """Execute ``runs`` in order on the NPU model; return the ID registers and records."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    build_dir = build_npu(config, waves=waves)
    result, failure, work_dir = run_job(
        build_dir, TOPLEVEL, "npugen.sim.tb_npu", config, [r.as_dict() for r in runs],
        seed=seed, idle=0.0, backpressure=0.0, fault=None, testcase="run_programs",
        waves=waves, work_dir=work_dir, prefix="npu-",
        extra={"mem_size": mem_size, "pattern": pattern,
               "read_faults": [tuple(r) for r in read_faults],
               "write_faults": [tuple(r) for r in write_faults]})
    records = []
    for raw in result["runs"]:
        records.append(NPURecord(
            status=raw["STATUS"], error=raw["ERROR"] & 0xFF, error_detail=raw["ERROR"] >> 8 & 0xFF,
            error_pc=raw["ERROR_PC"], cycles=raw["cycles"], instret=raw["INSTRET"],
            unit_busy={unit: raw[f"{unit.upper()}_BUSY"]
                       for unit in ("load", "compute", "vector", "store")},
            irq_after_clear=raw["irq_after_clear"], before=raw["before"], after=raw["after"]))
    if failure is not None or len(records) != len(runs):
        raise failure or runner.SimulationFailed(
            f"{len(records)} of {len(runs)} runs finished; see {work_dir}")
    return result["ident"], records


@dataclass
class KernelResult:
    """One compiled kernel run on the RTL, compared three ways."""
    program: object               # npugen.golden.compiler.CompiledProgram
    record: NPURecord
    outputs: dict                 # from the RTL's host memory
    model_outputs: dict           # from the instruction-level model
    model_status: str
    stray_writes: int             # changed bytes outside the destination regions

    @property
    def match(self) -> bool:
        expected = self.program.expected
        return (self.record.done and self.model_status == "done" and self.stray_writes == 0
                and all(np.array_equal(self.outputs[name], expected[name]) and
                        np.array_equal(self.model_outputs[name], expected[name])
                        for name in expected))

    @property
    def utilization(self) -> float:
        return self.program.ideal_cycles / self.record.cycles if self.record.cycles else 0.0


def program_run(program, *, fill: int = 0xA5, timeout_cycles: int | None = None) -> NPURun:
    """The host's part of running ``program``: its memory image, address and windows."""
    image = program.memory(fill)
    if timeout_cycles is None:
        timeout_cycles = 20 * program.ideal_cycles + 200_000
    return NPURun(segments=[(program.base, bytes(image.data))], prog_addr=program.prog_addr,
                  read_window=program.read_window, write_window=program.write_window,
                  timeout_cycles=timeout_cycles)


def memory_size(programs) -> int:
    """Host memory (a power of two) holding every program's image."""
    top = max(p.base + p.size for p in programs)
    return 1 << max(16, (top - 1).bit_length())


def run_kernels(config: NPUConfig, programs: list, *, seed: int, pattern: str = "none",
                fill: int = 0xA5, waves: bool = False,
                work_dir: Path | None = None) -> list[KernelResult]:
    """Run compiled kernels back to back on the RTL; compare with golden and model."""
    from npugen.golden.npu_model import HostMemory

    runs = [program_run(p, fill=fill) for p in programs]
    _, records = run_npu(config, runs, mem_size=memory_size(programs), seed=seed,
                         pattern=pattern, waves=waves, work_dir=work_dir)
    results = []
    for program, record in zip(programs, records):
        memory = HostMemory(program.base, program.size,
                            data=bytearray(record.read(program.base, program.size)))
        model_result, model_memory = program.run(fill=fill)
        changed = record.changed_bytes()
        allowed = np.zeros(changed.shape, dtype=bool)
        for lo, hi in program.destinations:
            allowed |= (changed >= lo) & (changed < hi)
        results.append(KernelResult(
            program=program, record=record, outputs=program.extract(memory),
            model_outputs=program.extract(model_memory), model_status=model_result.status,
            stray_writes=int(np.count_nonzero(~allowed))))
    return results
