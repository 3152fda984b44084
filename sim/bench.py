"""Benchmarks on the simulated RTL: cycles, utilization and a bit-exact check.

``npugen bench gemm`` lands here.  A random GEMM (seeded) runs on the Verilator model
of the configuration; the JSON record holds the measured cycles, the ideal
``⌈M·K·N / (R·C)⌉``, utilization = ideal / cycles, the analytic model's prediction and
whether every output equals the golden model.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm

from npugen.golden.config import NPUConfig
from npugen.golden.perf_model import gemm_cycles
from npugen.golden.tile_program import ideal_cycles, random_gemm_job

from .gemm_sim import build_core, run_gemm_jobs

__all__ = ["bench_gemm", "DTYPES"]

#: Data types ``bench_gemm`` accepts, per built mode.
DTYPES = ("int8",)


def bench_gemm(config: NPUConfig, *, m: int, k: int, n: int, seed: int = 1,
               dtype: str = "int8", waves: bool = False, progress: bool | None = None) -> dict:
    """Run one M×K×N GEMM on the simulated array and return the benchmark record."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype not in config.modes:
        raise ValueError(f"dtype {dtype!r} is not built in this configuration (modes: "
                         f"{', '.join(config.modes)})")
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if progress is None:
        progress = sys.stderr.isatty()

    steps = tqdm(total=2, desc="build model", disable=not progress, file=sys.stderr,
                 leave=False)
    started = time.monotonic()
    build_core(config, waves=waves)
    steps.update()
    steps.set_description("simulate")
    job = random_gemm_job(np.random.default_rng(seed), m, k, n)
    run = run_gemm_jobs(config, [job], seed=seed, waves=waves)
    steps.update()
    steps.close()

    ideal = ideal_cycles(config, m, k, n)
    record = {
        "kernel": "gemm",
        "dtype": dtype,
        "m": m, "k": k, "n": n,
        "rows": config.rows, "cols": config.cols,
        "config_hash": config.config_hash(),
        "seed": seed,
        "macs": job.macs,
        "cycles": run.cycles,
        "ideal_cycles": ideal,
        "utilization": round(ideal / run.cycles, 6),
        "macs_per_cycle": round(job.macs / run.cycles, 4),
        "model_cycles": gemm_cycles(config, m, k, n),
        "match": bool(run.match),
        "mismatching_rows": run.mismatching_rows,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    if waves:
        record["waves"] = str(run.work_dir)
    return record
