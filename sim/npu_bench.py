"""Benchmarks of kernels on the whole simulated NPU, DMA included.

``npugen bench gemm|conv|attention`` land here (``npugen bench gemm --engine core``
measures the GEMM core alone, :mod:`npugen.sim.bench`).  A seeded random kernel is
compiled (:mod:`npugen.golden.workloads`), its memory image goes into the testbench's
host memory, and the NPU runs the program from START to DONE.  The record holds the
NPU's own cycle counter (``CYCLES``: START to DONE), the ideal ``⌈MACs / peak⌉`` of
the array in the mode, utilization = ideal / cycles, the busy cycles of each unit and
whether the outputs equal the golden model and the instruction-level model with no
byte written outside the destination regions.
"""

from __future__ import annotations

import time

import numpy as np

from npugen.golden import workloads
from npugen.golden.config import NPUConfig

from .npu_sim import build_npu, run_kernels
from .progress import progress_steps

__all__ = ["KERNELS", "compile_kernel", "bench_kernel", "kernel_record"]

#: Kernel name → the workload function that compiles a random instance.
KERNELS = {
    "gemm": workloads.gemm_program,
    "conv": workloads.conv_program,
    "attention": workloads.attention_program,
}


def compile_kernel(config: NPUConfig, kind: str, seed: int, **shape):
    """The compiled random instance of kernel ``kind`` with ``shape`` (seeded)."""
    try:
        make = KERNELS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(KERNELS)}, not {kind!r}") from None
    return make(config, np.random.default_rng(seed), **shape)


def kernel_record(result, *, kind: str, shape: dict, seed: int) -> dict:
    """The JSON record of one kernel run (:class:`npugen.sim.npu_sim.KernelResult`)."""
    program, record = result.program, result.record
    config = program.config
    return {
        "kernel": kind,
        "engine": "npu",
        **{("kernel_size" if key == "kernel" else key): value for key, value in shape.items()},
        "rows": config.rows, "cols": config.cols,
        "config_hash": config.config_hash(),
        "seed": seed,
        "macs": program.macs,
        "cycles": record.cycles,
        "ideal_cycles": program.ideal_cycles,
        "utilization": round(result.utilization, 6),
        "macs_per_cycle": round(program.macs / record.cycles, 4) if record.cycles else 0.0,
        "instructions": len(program.instructions),
        "instret": record.instret,
        "unit_busy_cycles": record.unit_busy,
        "match": bool(result.match),
        "status": "done" if record.done else f"error {record.error} (detail {record.error_detail}, "
                                             f"pc {record.error_pc:#x})",
        "stray_writes": result.stray_writes,
    }


def bench_kernel(config: NPUConfig, kind: str, *, seed: int = 0, pattern: str = "none",
                 waves: bool = False, progress: bool | None = None, **shape) -> dict:
    """Compile a random kernel ``kind`` of ``shape``, run it on the NPU model, return the record."""
    program = compile_kernel(config, kind, seed, **shape)
    started = time.monotonic()
    with progress_steps(["build NPU model", f"simulate {kind}"], progress) as advance:
        build_npu(config, waves=waves)
        advance()
        (result,) = run_kernels(config, [program], seed=seed, pattern=pattern, waves=waves)
        advance()
    record = kernel_record(result, kind=kind, shape=shape, seed=seed)
    record["wall_seconds"] = round(time.monotonic() - started, 2)
    return record
