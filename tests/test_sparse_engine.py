"""Sparse engine RTL on Verilator (cocotb), bit-identical to the dense golden path.

Each test prunes the weights of golden GEMM jobs, lowers them to the sparse engine's
streams (CSR of Wᵀ), runs them back to back without reset with random stream idles and
back-pressure, and compares every output with the dense ``qgemm`` result
(``npugen.golden.spmm.dense_reference``).  Seeds are printed; rerun one with ``pytest -k 'seed_value'``.
"""

import numpy as np
import pytest

from npugen.golden.config import NPUConfig, PRESETS
from npugen.golden.pruning import prune_magnitude
from npugen.golden.spmm import RESULT_LATENCY, spmm_cycles, weight_csr
from npugen.golden.tile_program import random_gemm_job
from npugen.hw.sparse_engine import SpmmError
from npugen.sim.spmm_sim import run_spmm_jobs

#: Three lanes and three rows (not powers of two), an 18-bit accumulator that wraps,
#: and a 4-deep result FIFO that back-pressure fills.
ODD = NPUConfig(rows=3, cols=4, spmm_lanes=3, acc_bits=18, acc_depth=32, out_fifo_depth=4)


def sparse_job(rng, m, k, n, density, *, zero_rows=True, zero_cols=True, **kwargs):
    """A random GEMM whose weights are pruned to ``density``, with all-zero lines."""
    job = random_gemm_job(rng, m, k, n, **kwargs)
    w = prune_magnitude(job.w, 1.0 - density).weights
    if zero_cols and n > 1:
        w[:, rng.integers(n)] = 0
    if zero_rows and k > 1:
        w[rng.integers(k), :] = 0
    job.w = w
    if m > 1:
        job.a[rng.integers(m), :] = job.a_zero_point     # an all-zero activation row
    return job


def edge_shapes(rng, config, count):
    """Shapes around the engine's edges: K in {1, acc_depth, ...}, M around rows."""
    V, D = config.rows, config.acc_depth
    shapes = []
    for _ in range(count):
        m = int(rng.choice([1, V - 1, V + 1, int(rng.integers(1, 4 * V + 2))]))
        k = int(rng.choice([1, 2, D, D - 1, int(rng.integers(1, D + 1))]))
        n = int(rng.choice([1, 2, int(rng.integers(1, 12))]))
        shapes.append((max(m, 1), k, n))
    return shapes


def check(run):
    for i, (got, want) in enumerate(zip(run.outputs, run.expected)):
        assert np.array_equal(got, want), (
            f"job {i}: {np.count_nonzero(got != want)} outputs differ; work dir {run.work_dir}")
    assert run.match


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0, "random"])
def test_densities_tiny(density, tmp_path):
    seed = {0.0: 401, 0.01: 402, 0.5: 403, 1.0: 404, "random": 405}[density]
    print(f"seed={seed}")
    config = PRESETS["tiny"]
    rng = np.random.default_rng(seed)
    jobs = []
    for m, k, n in edge_shapes(rng, config, 5):
        d = float(rng.random()) if density == "random" else density
        jobs.append(sparse_job(rng, m, k, n, d, raw=bool(rng.random() < 0.3)))
    run = run_spmm_jobs(config, jobs, seed=seed, idle=0.3, backpressure=0.3, work_dir=tmp_path)
    check(run)


def test_densities_default(tmp_path):
    seed = 411
    print(f"seed={seed}")
    config = PRESETS["default"]
    rng = np.random.default_rng(seed)
    jobs = [sparse_job(rng, m, k, n, d)
            for (m, k, n), d in zip(edge_shapes(rng, config, 4), (0.01, 0.5, 1.0, rng.random()))]
    jobs.append(sparse_job(rng, 17, 70, 20, 0.0, raw=True))
    run = run_spmm_jobs(config, jobs, seed=seed, idle=0.2, backpressure=0.4, work_dir=tmp_path)
    check(run)


def test_odd_lanes_wrap_and_full_fifo(tmp_path):
    """Three lanes, 18-bit wrap with extreme operands, heavy back-pressure on 4 FIFO slots."""
    seed = 421
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    jobs = [sparse_job(rng, m, k, n, float(rng.random()), extremes=True, raw=True)
            for m, k, n in edge_shapes(rng, ODD, 3)]
    jobs += [sparse_job(rng, 7, 32, 9, 0.6, extremes=True), sparse_job(rng, 4, 5, 6, 1.0)]
    run = run_spmm_jobs(ODD, jobs, seed=seed, idle=0.2, backpressure=0.7, work_dir=tmp_path)
    check(run)


@pytest.mark.parametrize("preset, shape, density", [
    ("tiny", (1, 1, 1), 1.0), ("tiny", (9, 30, 3), 0.3), ("tiny", (4, 3, 20), 0.1),
    ("tiny", (17, 20, 9), 0.0), ("default", (20, 40, 11), 0.5), ("default", (16, 8, 30), 1.0),
])
def test_cycle_count_matches_model(preset, shape, density, tmp_path):
    """Uninterrupted streams take exactly the model's cycles (load- and compute-bound)."""
    config = PRESETS[preset]
    job = sparse_job(np.random.default_rng(1), *shape, density, zero_rows=False,
                     zero_cols=False)
    run = run_spmm_jobs(config, [job], seed=1, work_dir=tmp_path)
    check(run)
    m, k, _ = shape
    assert run.cycles == spmm_cycles(config, m, k, weight_csr(job.w).row_nnz())


def test_zero_work_costs_nothing(tmp_path):
    """All-zero K rows of W are free; all-zero channels cost one cycle each."""
    config = PRESETS["default"]
    rng = np.random.default_rng(431)
    dense = sparse_job(rng, 8, 64, 16, 1.0, zero_rows=False, zero_cols=False)
    sparse = sparse_job(rng, 8, 64, 16, 1.0, zero_rows=False, zero_cols=False)
    sparse.w[1::2, :] = 0       # half the K rows gone
    empty = sparse_job(rng, 8, 64, 16, 0.0, zero_rows=False, zero_cols=False)
    cycles = []
    for job in (dense, sparse, empty):
        run = run_spmm_jobs(config, [job], seed=431, work_dir=tmp_path / str(len(cycles)))
        check(run)
        cycles.append(run.cycles)
    overhead = 64 + RESULT_LATENCY           # activation load, pipeline and hand-over
    assert cycles[0] - overhead == 16 * 8      # 57..64 non-zeros per channel: 8 beats
    assert cycles[1] - overhead == 16 * 4      # 32 non-zeros per channel: 4 beats
    assert cycles[2] - overhead == 16 * 1      # empty channels: one beat each


@pytest.mark.parametrize("fault", ["index_out_of_range", "unsorted_indices", "duplicate_index",
                                   "too_many_entries", "pointer_past_end", "pointer_short",
                                   "bad_shape", "bad_clamp", "bad_shift"])
def test_malformed_input_sets_error_and_stops(fault, tmp_path):
    seed = 441
    print(f"seed={seed}")
    config = PRESETS["tiny"]
    job = sparse_job(np.random.default_rng(seed), 4, 12, 6, 0.6)
    result = run_spmm_jobs(config, [job], seed=seed, testcase="rejects_malformed_input",
                           fault=fault, work_dir=tmp_path)
    from npugen.sim.tb_sparse_engine import FAULTS
    assert result["error"] == FAULTS[fault][1] != SpmmError.NONE
    assert result["results"] <= result["good_rows"]
    assert not result["consumed_all"], "the engine kept consuming input after the error"


def test_bench_goals(tmp_path):
    """The benchmark's goals: efficiency ≥ 0.7 at density 0.25, speedup ≥ 0.95 when dense."""
    from npugen.sim.bench import bench_spmm
    config = PRESETS["default"]
    quarter = bench_spmm(config, density=0.25, seed=3, progress=False)
    full = bench_spmm(config, density=1.0, seed=3, progress=False)
    for record in (quarter, full):
        assert record["match"] and record["cycles"] == record["model_cycles"]
        assert record["dense_cycles"] == record["dense_baseline"]["cycles"]
    assert quarter["efficiency"] >= 0.7
    assert full["speedup"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(450, 466))
@pytest.mark.parametrize("preset", ["tiny", "default", "odd"])
def test_random_long(preset, seed, tmp_path):
    print(f"seed={seed}")
    config = ODD if preset == "odd" else PRESETS[preset]
    rng = np.random.default_rng(seed)
    jobs = [sparse_job(rng, m, k, n, float(rng.choice([0.0, 0.01, rng.random(), 1.0])),
                       raw=bool(rng.random() < 0.2), extremes=bool(rng.random() < 0.2))
            for m, k, n in edge_shapes(rng, config, 8)]
    run = run_spmm_jobs(config, jobs, seed=seed, idle=float(rng.uniform(0, 0.6)),
                        backpressure=float(rng.uniform(0, 0.8)), work_dir=tmp_path)
    check(run)
