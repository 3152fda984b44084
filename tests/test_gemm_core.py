"""GEMM core RTL on Verilator (cocotb), bit-exact against the golden model.

Each test lowers golden GEMM jobs to tile programs, runs them back to back without
reset on the simulated core with random stream idles and back-pressure, and compares
every output with ``GemmJob.reference``.  Seeds are printed; rerun one with
``pytest -k 'seed_value'``.
"""

import numpy as np
import pytest

from npugen.golden.config import NPUConfig, PRESETS
from npugen.golden.perf_model import gemm_cycles
from npugen.golden.precision import PACK
from npugen.golden.tile_program import GemmJob, random_gemm_job
from npugen.hw.gemm_core import CoreError
from npugen.sim.gemm_sim import run_gemm_jobs

#: A design without the packed modes (no int4 or popcount logic).
INT8_ONLY = NPUConfig(rows=2, cols=2, acc_depth=16, out_fifo_depth=16, modes=("int8",))


def random_shapes(rng, config, count, mode="int8"):
    """Shapes that straddle the tile edges: K around the lane packing and multiples of
    the tile's K, M/N around C."""
    R, C, pack = config.rows, config.cols, PACK[mode]
    shapes = []
    for _ in range(count):
        m = int(rng.choice([1, 2, C - 1, C + 1, int(rng.integers(1, 3 * C + 2))]))
        k = int(rng.choice([1, pack - 1, pack, pack + 1, R * pack - 1, R * pack + 1,
                            2 * R * pack + 1, int(rng.integers(1, 4 * R * pack + 2))]))
        n = int(rng.choice([1, C - 1, C + 1, int(rng.integers(1, 3 * C + 2))]))
        shapes.append((max(m, 1), max(k, 1), max(n, 1)))
    return shapes


def check(run):
    for i, (got, want) in enumerate(zip(run.outputs, run.expected)):
        assert np.array_equal(got, want), (
            f"job {i}: {np.count_nonzero(got != want)} outputs differ; work dir {run.work_dir}")
    assert run.match


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_gemms_back_to_back_tiny(seed, tmp_path):
    print(f"seed={seed}")
    config = PRESETS["tiny"]
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, m, k, n, raw=bool(rng.random() < 0.3))
            for m, k, n in random_shapes(rng, config, 6)]
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.3, backpressure=0.3, work_dir=tmp_path)
    check(run)


@pytest.mark.parametrize("seed", [21])
def test_random_gemms_default(seed, tmp_path):
    print(f"seed={seed}")
    config = PRESETS["default"]
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, m, k, n) for m, k, n in random_shapes(rng, config, 3)]
    jobs.append(random_gemm_job(rng, 19, 3 * config.rows + 5, config.cols + 3, raw=True))
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.2, backpressure=0.4, work_dir=tmp_path)
    check(run)


def test_extremes_and_wraparound(tmp_path):
    """All ±127/-128 operands, large K, zero points at both rails, raw int32 output."""
    seed = 31
    print(f"seed={seed}")
    config = PRESETS["tiny"]
    rng = np.random.default_rng(seed)
    jobs = []
    for a_zp in (-128, 127):
        job = random_gemm_job(rng, 5, 37, 3, extremes=True, raw=True)
        job.a_zero_point = a_zp
        jobs.append(job)
    # Saturating requantization: huge accumulators, left shift, clamps at both rails.
    a = np.full((3, 9), -128)
    w = np.full((9, 3), 127)
    w[:, 1] = -127
    jobs.append(GemmJob(a, w, a_zero_point=127, bias=[1 << 30, -(1 << 30), 0],
                        multiplier=[(1 << 31) - 1] * 3, shift=[30, 30, -31],
                        out_zero_point=-5, out_min=-100, out_max=90))
    # ReLU as a clamp at the output zero point.
    job = random_gemm_job(rng, 4, 6, 5)
    job.out_min, job.out_max = job.out_zero_point, 127
    jobs.append(job)
    run = run_gemm_jobs(config, jobs, seed=seed, backpressure=0.5, work_dir=tmp_path)
    check(run)


def test_accumulator_wraps_at_acc_bits(tmp_path):
    """An 18-bit accumulator wraps exactly like the golden model's."""
    seed = 41
    print(f"seed={seed}")
    config = NPUConfig(rows=2, cols=3, acc_bits=18, acc_depth=16, out_fifo_depth=16)
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, 20, 23, 4, extremes=True, raw=True),
            random_gemm_job(rng, 3, 40, 3, extremes=True)]
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.1, work_dir=tmp_path)
    check(run)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 9, 5), (70, 4, 4), (17, 16, 16)])
def test_cycle_count_matches_model(shape, tmp_path):
    """Uninterrupted streams take exactly the analytic model's cycles (M > acc_depth too)."""
    config = PRESETS["tiny"] if shape[0] != 17 else PRESETS["default"]
    run = run_gemm_jobs(config, [random_gemm_job(np.random.default_rng(1), *shape)], seed=1,
                        work_dir=tmp_path)
    check(run)
    assert run.cycles == gemm_cycles(config, *shape)


def test_back_to_back_tiles_pay_fill_once(tmp_path):
    """64×256×64 on the default preset: utilization ≥ 0.9, fill and drain paid once."""
    config = PRESETS["default"]
    m, k, n = 64, 256, 64
    run = run_gemm_jobs(config, [random_gemm_job(np.random.default_rng(7), m, k, n)], seed=7,
                        work_dir=tmp_path)
    check(run)
    ideal = m * k * n // config.pes
    assert run.cycles - ideal <= 2 * (config.rows + config.cols) + 16
    assert ideal / run.cycles >= 0.9


@pytest.mark.parametrize("fault, code", [("bad_rows", 1), ("bad_shift", 2), ("bad_clamp", 3),
                                         ("mode_not_built", 4), ("bad_k", 5),
                                         ("bad_zero_point", 6)])
def test_malformed_input_sets_error_and_stops(fault, code, tmp_path):
    # An int8-only design refuses int4; the others run on the tiny preset.
    config = INT8_ONLY if fault == "mode_not_built" else PRESETS["tiny"]
    job = random_gemm_job(np.random.default_rng(3), 4, 4, 4)
    result = run_gemm_jobs(config, [job], seed=3, testcase="rejects_malformed_input",
                           fault=fault, work_dir=tmp_path)
    assert result["error"] == code
    assert result["results"] == 0


@pytest.mark.parametrize("seed", [61, 62])
def test_modes_switch_back_to_back(seed, tmp_path):
    """int8, int4 and binary jobs interleaved without reset, K around the packing."""
    print(f"seed={seed}")
    config = PRESETS["tiny"]
    rng = np.random.default_rng(seed)
    jobs = []
    for mode in ("int4", "binary", "int8", "binary", "int4"):
        for m, k, n in random_shapes(rng, config, 2, mode):
            jobs.append(random_gemm_job(rng, m, k, n, mode=mode, raw=bool(rng.random() < 0.3),
                                        extremes=bool(rng.random() < 0.3)))
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.25, backpressure=0.35,
                        work_dir=tmp_path)
    check(run)


@pytest.mark.parametrize("mode", ["int4", "binary"])
def test_packed_modes_default_preset(mode, tmp_path):
    seed = 71
    print(f"seed={seed}")
    config = PRESETS["default"]
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, m, k, n, mode=mode) for m, k, n in
            random_shapes(rng, config, 2, mode)]
    jobs.append(random_gemm_job(rng, 11, 8 * PACK[mode] + 3, 9, mode=mode, extremes=True))
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.1, backpressure=0.3, work_dir=tmp_path)
    check(run)


@pytest.mark.parametrize("mode", ["int4", "binary"])
def test_packed_mode_cycles_match_model(mode, tmp_path):
    config = PRESETS["tiny"]
    shape = (9, 4 * config.rows * PACK[mode] + 1, 3)
    run = run_gemm_jobs(config, [random_gemm_job(np.random.default_rng(4), *shape, mode=mode)],
                        seed=4, work_dir=tmp_path)
    check(run)
    assert run.cycles == gemm_cycles(config, *shape, mode)


# -- 2:4 structured sparsity ----------------------------------------------------------------

def sparse_ks(config):
    """K around the group of 4 and the 2:4 tile (2·rows)."""
    kt = 2 * config.rows
    return [1, 3, 4, 5, kt - 1, kt, kt + 1, 2 * kt + 3]


@pytest.mark.parametrize("seed", [81, 82])
def test_sparse_gemms_between_dense_modes_tiny(seed, tmp_path):
    """2:4 jobs (K edges, nonzero zero points) back to back with int8, int4 and binary."""
    print(f"seed={seed}")
    config = PRESETS["tiny"]
    rng = np.random.default_rng(seed)
    jobs = []
    for k in sparse_ks(config):
        m, n = int(rng.integers(1, 3 * config.cols + 2)), int(rng.integers(1, 2 * config.cols + 2))
        jobs.append(random_gemm_job(rng, m, k, n, sparsity="2:4", raw=bool(rng.random() < 0.3),
                                    extremes=bool(rng.random() < 0.3)))
        mode = str(rng.choice(config.modes))
        (m, k, n), = random_shapes(rng, config, 1, mode)
        jobs.append(random_gemm_job(rng, m, k, n, mode=mode))
    assert any(job.a_zero_point != 0 for job in jobs if job.sparsity)
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.3, backpressure=0.35, work_dir=tmp_path)
    check(run)


def test_sparse_gemms_default_preset(tmp_path):
    seed = 91
    print(f"seed={seed}")
    config = PRESETS["default"]
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, 19, k, 11, sparsity="2:4", extremes=k == 17)
            for k in (5, 16, 17, 45)]
    jobs.insert(2, random_gemm_job(rng, 9, 21, 10, mode="int4"))
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.15, backpressure=0.4, work_dir=tmp_path)
    check(run)


@pytest.mark.parametrize("preset, shape", [("tiny", (9, 4 * 4 + 1, 3)),
                                           ("default", (40, 3 * 16 + 5, 9))])
def test_sparse_cycles_match_model(preset, shape, tmp_path):
    config = PRESETS[preset]
    job = random_gemm_job(np.random.default_rng(8), *shape, sparsity="2:4")
    run = run_gemm_jobs(config, [job], seed=8, work_dir=tmp_path)
    check(run)
    assert run.cycles == gemm_cycles(config, *shape, "int8", "2:4")


@pytest.mark.parametrize("fault", ["sparse_not_built", "sparse_not_int8",
                                   "duplicate_sparse_index", "decreasing_sparse_index"])
def test_malformed_sparse_input_sets_error_and_stops(fault, tmp_path):
    """A 2:4 job the design cannot run (BAD_MODE) or 2:4 weights with a group whose
    indices repeat or decrease (BAD_SPARSE_INDEX): error, no result, nothing consumed."""
    config = INT8_ONLY if fault == "sparse_not_built" else PRESETS["tiny"]
    sparsity = "2:4" if fault.endswith("index") else None
    job = random_gemm_job(np.random.default_rng(3), 4, 8, 4, sparsity=sparsity)
    result = run_gemm_jobs(config, [job], seed=3, testcase="rejects_malformed_input",
                           fault=fault, work_dir=tmp_path)
    code = CoreError.BAD_SPARSE_INDEX if sparsity else CoreError.BAD_MODE
    assert result["error"] == code
    assert result["results"] == 0


def test_bench_sparse_goal_default_preset():
    """`npugen bench gemm --sparsity 2:4` on 64×256×64: speedup ≥ 1.8 over dense, exact."""
    from npugen.sim.bench import bench_gemm
    record = bench_gemm(PRESETS["default"], m=64, k=256, n=64, seed=0, sparsity="2:4",
                        progress=False)
    print({key: record[key] for key in ("cycles", "dense_cycles", "speedup", "match")})
    assert record["match"] and record["sparsity"] == "2:4"
    assert record["cycles"] == record["model_cycles"]
    assert record["dense_cycles"] == gemm_cycles(PRESETS["default"], 64, 256, 64)
    assert record["speedup"] >= 1.8


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_random_gemms_long(preset, seed, tmp_path):
    print(f"seed={seed}")
    config = PRESETS[preset]
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(10):
        mode = str(rng.choice(config.modes + ("int8 2:4",)))
        sparsity = "2:4" if mode == "int8 2:4" else None
        mode = "int8" if sparsity else mode
        (m, k, n), = random_shapes(rng, config, 1, mode)
        jobs.append(random_gemm_job(rng, m, k, n, mode=mode, raw=bool(rng.random() < 0.2),
                                    extremes=bool(rng.random() < 0.2), sparsity=sparsity))
    run = run_gemm_jobs(config, jobs, seed=seed, idle=float(rng.uniform(0, 0.6)),
                        backpressure=float(rng.uniform(0, 0.7)), work_dir=tmp_path)
    check(run)


@pytest.mark.slow
def test_large_preset(tmp_path):
    seed = 51
    print(f"seed={seed}")
    config = PRESETS["large"]
    rng = np.random.default_rng(seed)
    jobs = [random_gemm_job(rng, 70, 80, 40), random_gemm_job(rng, 5, 33, 33, raw=True)]
    run = run_gemm_jobs(config, jobs, seed=seed, idle=0.2, backpressure=0.2, work_dir=tmp_path)
    check(run)


def test_waveforms_on_request(tmp_path):
    """``waves=True`` builds a tracing model and leaves a waveform in the run directory."""
    config = PRESETS["tiny"]
    run = run_gemm_jobs(config, [random_gemm_job(np.random.default_rng(2), 3, 3, 3)], seed=2,
                        waves=True, work_dir=tmp_path)
    check(run)
    dumps = list(tmp_path.glob("dump.fst")) + list(tmp_path.glob("dump.vcd"))
    assert dumps and dumps[0].stat().st_size > 1000, f"no waveform in {tmp_path}"
