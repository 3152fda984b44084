"""Benchmarks on the simulated RTL: cycles, utilization and a bit-exact check.

``npugen bench gemm`` lands here.  A random GEMM (seeded) runs on the Verilator model
of the configuration in one precision mode; the JSON record holds the measured cycles,
the ideal ``⌈M·K·N / (R·C·pack)⌉`` (pack = 1 int8, 2 int4, 8 binary MACs per PE and
cycle), utilization = ideal / cycles, ``macs`` (one per multiply-accumulate of the
mode), the analytic model's prediction and whether every output equals the golden
model.

``--sparsity 2:4`` prunes the random weights to 2:4 (N:M magnitude pruning), runs the
job with compressed weights (a tile covers ``2·rows`` of K) and adds ``dense_cycles``
(the same GEMM dense, ``perf_model.gemm_cycles``, equal to the RTL) and ``speedup =
dense_cycles / cycles``; ``ideal_cycles`` is then ``⌈M·K·N / (2·R·C)⌉``.
"""

from __future__ import annotations

import time

import numpy as np

from npugen.golden.config import NPUConfig
from npugen.golden.perf_model import gemm_cycles
from npugen.golden.tile_program import ideal_cycles, random_gemm_job

from .gemm_sim import build_core, run_gemm_jobs
from .progress import progress_steps

__all__ = ["bench_gemm", "DTYPES", "bench_spmm", "bench_spmm_sweep", "SWEEP_DENSITIES",
           "plot_spmm_sweep"]

#: Data types ``bench_gemm`` accepts, per built mode.
DTYPES = ("int8", "int4", "binary")


def bench_gemm(config: NPUConfig, *, m: int, k: int, n: int, seed: int = 1,
               dtype: str = "int8", sparsity: str | None = None, waves: bool = False,
               progress: bool | None = None) -> dict:
    """Run one M×K×N GEMM on the simulated array and return the benchmark record.

    ``sparsity="2:4"`` runs it with 2:4 pruned, compressed weights (see the module).
    """
    if sparsity is not None:
        if sparsity != "2:4":
            raise ValueError(f"sparsity must be None or '2:4', not {sparsity!r}")
        if dtype != "int8":
            raise ValueError(f"2:4 sparsity needs dtype 'int8', not {dtype!r}")
        if not config.sparse_2_4:
            raise ValueError("sparsity '2:4' needs a configuration with sparse_2_4 = true")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype not in config.modes:
        raise ValueError(f"dtype {dtype!r} is not built in this configuration (modes: "
                         f"{', '.join(config.modes)})")
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    started = time.monotonic()
    with progress_steps(["build model", "simulate"], progress) as advance:
        build_core(config, waves=waves)
        advance()
        job = random_gemm_job(np.random.default_rng(seed), m, k, n, mode=dtype,
                              sparsity=sparsity)
        run = run_gemm_jobs(config, [job], seed=seed, waves=waves)
        advance()

    ideal = ideal_cycles(config, m, k, n, dtype, sparsity)
    record = {
        "kernel": "gemm",
        "dtype": dtype,
        "sparsity": sparsity or "dense",
        "m": m, "k": k, "n": n,
        "rows": config.rows, "cols": config.cols,
        "config_hash": config.config_hash(),
        "seed": seed,
        "macs": job.macs,
        "cycles": run.cycles,
        "ideal_cycles": ideal,
        "utilization": round(ideal / run.cycles, 6),
        "macs_per_cycle": round(job.macs / run.cycles, 4),
        "model_cycles": gemm_cycles(config, m, k, n, dtype, sparsity),
        "match": bool(run.match),
        "mismatching_rows": run.mismatching_rows,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    if sparsity is not None:
        dense_cycles = gemm_cycles(config, m, k, n, dtype)
        record.update({
            "weight_nonzeros": int(np.count_nonzero(job.w)),
            "dense_cycles": dense_cycles,
            "dense_source": "npugen.golden.perf_model.gemm_cycles of the same dense GEMM "
                            "(equal to the simulated RTL, checked by tests/test_gemm_core.py)",
            "speedup": round(dense_cycles / run.cycles, 4),
        })
    if waves:
        record["waves"] = str(run.work_dir)
    return record


# -- sparse engine -------------------------------------------------------------------------

#: Densities of ``npugen bench spmm --sweep``.
SWEEP_DENSITIES = (0.1, 0.25, 0.5, 0.75, 1.0)


def bench_spmm(config: NPUConfig, *, density: float, m: int = 64, k: int = 256, n: int = 64,
               seed: int = 1, waves: bool = False, progress: bool | None = None) -> dict:
    """Run one M×K×N GEMM with weights pruned to ``density`` on the sparse engine.

    The weights of a random GEMM (seeded) are pruned by unstructured magnitude pruning
    to ``density`` and streamed as the CSR of ``Wᵀ``.  The record compares the sparse
    engine's measured cycles with the dense GEMM core of the same configuration on the
    same M×K×N (``npugen.golden.perf_model.gemm_cycles``, which equals the simulated RTL
    cycle for cycle): ``speedup = dense_cycles / cycles``, ``efficiency = speedup ×
    density`` (the achieved density).  ``ideal_cycles`` is the non-zero work at the
    engine's peak, ``⌈M·nnz / (spmm_lanes·rows)⌉``; ``utilization = ideal / cycles``.
    """
    from npugen.golden.pruning import prune_magnitude
    from npugen.golden.spmm import spmm_cycles, weight_csr

    from .spmm_sim import build_engine, run_spmm_jobs

    if isinstance(density, bool) or not isinstance(density, (int, float)) or \
            not 0.0 < density <= 1.0:
        raise ValueError(f"density must be a number in (0, 1], not {density!r}")
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if k > config.acc_depth:
        raise ValueError(f"k must be at most acc_depth = {config.acc_depth} (the sparse "
                         f"engine's activation buffer), not {k}")
    started = time.monotonic()
    with progress_steps(["build sparse engine", f"simulate density {density}"],
                        progress) as advance:
        build_engine(config, waves=waves)
        advance()
        rng = np.random.default_rng(seed)
        job = random_gemm_job(rng, m, k, n)          # int8 operands
        pruned = prune_magnitude(job.w, 1.0 - density)
        job.w = pruned.weights
        run = run_spmm_jobs(config, [job], seed=seed, waves=waves)
        advance()

    csr = weight_csr(job.w)
    nnz = csr.nnz
    achieved = nnz / (k * n)
    peak = config.spmm_lanes * config.rows
    ideal = max(1, -(-m * nnz // peak))
    dense_cycles = gemm_cycles(config, m, k, n)
    speedup = dense_cycles / run.cycles
    record = {
        "kernel": "spmm",
        "dtype": "int8",
        "m": m, "k": k, "n": n,
        "rows": config.rows, "cols": config.cols, "spmm_lanes": config.spmm_lanes,
        "config_hash": config.config_hash(),
        "seed": seed,
        "density": density,
        "achieved_density": round(achieved, 6),
        "pruning": pruned.report(),
        "format": "CSR of W^T (one compressed row of K indices per output channel)",
        "storage": csr.storage().to_dict(),
        "macs": m * k * n,
        "nonzero_macs": m * nnz,
        "peak_macs_per_cycle": peak,
        "cycles": run.cycles,
        "ideal_cycles": ideal,
        "utilization": round(ideal / run.cycles, 6),
        "model_cycles": spmm_cycles(config, m, k, csr.row_nnz()),
        "nz_beats": run.beats,
        "dense_baseline": {
            "engine": f"GEMM core of the same configuration ({config.rows}x{config.cols} "
                      f"weight-stationary systolic array, {config.pes} MACs/cycle)",
            "m": m, "k": k, "n": n,
            "cycles": dense_cycles,
            "source": "npugen.golden.perf_model.gemm_cycles (equal to the simulated RTL "
                      "for uninterrupted streams, checked by tests/test_gemm_core.py)",
        },
        "dense_cycles": dense_cycles,
        "speedup": round(speedup, 4),
        "efficiency": round(speedup * achieved, 4),
        "match": bool(run.match),
        "mismatching_rows": run.mismatching_rows,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    if waves:
        record["waves"] = str(run.work_dir)
    return record


def bench_spmm_sweep(config: NPUConfig, *, densities=SWEEP_DENSITIES, **kwargs) -> list[dict]:
    """:func:`bench_spmm` at every density (same seed, so the same dense operands)."""
    return [bench_spmm(config, density=d, **kwargs) for d in densities]


def plot_spmm_sweep(records: list[dict], path) -> None:
    """Write the speedup-vs-density curve of a sweep to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    density = [r["achieved_density"] for r in records]
    speedup = [r["speedup"] for r in records]
    first = records[0]
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(density, speedup, "o-", label="sparse engine (measured)")
    ideal_x = np.linspace(min(density), 1.0, 100)
    ax.plot(ideal_x, 1 / ideal_x, "--", color="gray", label="ideal 1 / density")
    ax.axhline(1.0, color="black", linewidth=0.8, label="dense GEMM core")
    for x, y in zip(density, speedup):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("weight density (non-zeros / entries)")
    ax.set_ylabel("speedup vs dense GEMM core (cycles)")
    ax.set_title(f"SpMM {first['m']}x{first['k']}x{first['n']}, {first['rows']}x{first['cols']} "
                 f"array, {first['spmm_lanes']} lanes")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
