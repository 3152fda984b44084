"""Golden sparse kernels equal the dense kernels; the sparse engine's stream contract."""

import numpy as np
import pytest

from npugen.golden.config import NPUConfig, PRESETS
from npugen.golden.gemm import matmul_integer, qgemm
from npugen.golden.pruning import prune_magnitude, prune_n_m
from npugen.golden.sparse_formats import BitmaskMatrix, CSRMatrix, NMMatrix
from npugen.golden.spmm import (RESULT_LATENCY, assemble_spmm, dense_reference, channel_beats, lower_spmm,
                                sparse_qgemm, spmm_cycles, spmm_integer, weight_csr)
from npugen.golden.tile_program import random_gemm_job

SEEDS = [301, 302, 303, 304]


def pruned_weights(rng, k, n, density):
    w = rng.integers(-127, 128, size=(k, n)).astype(np.int8)
    return prune_magnitude(w, 1.0 - density).weights


def formats(w):
    return {"csr": weight_csr(w), "bitmask": BitmaskMatrix.from_dense(w)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("density", [0.0, 0.01, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("acc_bits", [32, 18])
def test_sparse_kernels_equal_dense(seed, density, acc_bits):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    m, k, n = (int(v) for v in rng.integers(1, 40, size=3))
    a = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    w = pruned_weights(rng, k, n, density)
    w[:, rng.integers(n)] = 0
    w[rng.integers(k), :] = 0
    a_zp = int(rng.integers(-128, 128))
    want = matmul_integer(a, w, a_zp, 0, acc_bits=acc_bits)
    for name, packed in formats(w).items():
        assert np.array_equal(spmm_integer(a, packed, a_zp, acc_bits=acc_bits), want), name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 4, 13])
def test_nm_kernel_equals_dense(seed, k):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(5, k)).astype(np.int8)
    w = prune_n_m(rng.integers(-127, 128, size=(k, 7)).astype(np.int8)).weights
    got = spmm_integer(a, NMMatrix.from_dense(w), -7)
    assert np.array_equal(got, matmul_integer(a, w, -7, 0))


def test_wraps_like_the_accumulator():
    a = np.full((1, 64), -128, dtype=np.int8)
    w = np.full((64, 1), -127, dtype=np.int8)
    got = spmm_integer(a, weight_csr(w), 127, acc_bits=18)
    assert np.array_equal(got, matmul_integer(a, w, 127, 0, acc_bits=18))
    assert got[0, 0] != 255 * 127 * 64


def test_explicit_zeros_are_harmless():
    w = np.array([[0, 2], [3, 0]], dtype=np.int8)
    packed = CSRMatrix((2, 2), [0, 2, 3], [0, 1, 0], [0, 3, 2])   # Wᵀ with a stored zero
    a = np.array([[1, 2]], dtype=np.int8)
    assert np.array_equal(spmm_integer(a, packed), matmul_integer(a, w))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("output", ["int8", "int32"])
def test_sparse_qgemm_equals_qgemm(seed, output):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    job = random_gemm_job(rng, 9, 21, 6)
    w = pruned_weights(rng, 21, 6, 0.3).astype(np.int8)
    kwargs = dict(a_zero_point=job.a_zero_point, bias=job.bias, multiplier=job.multiplier,
                  shift=job.shift, out_zero_point=job.out_zero_point, out_min=job.out_min,
                  out_max=job.out_max, output=output)
    a = job.a.astype(np.int8)
    want = qgemm(a, w, **kwargs)
    for packed in formats(w).values():
        got = sparse_qgemm(a, packed, **kwargs)
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_kernel_rejects_mismatched_k():
    with pytest.raises(ValueError, match=r"^a has 3 columns but the weights have K = 4$"):
        spmm_integer(np.zeros((2, 3), np.int8), weight_csr(np.zeros((4, 2), np.int8)))


def test_kernel_rejects_unknown_format():
    with pytest.raises(TypeError, match=r"^w_sparse must be a CSRMatrix"):
        spmm_integer(np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8))


# -- the engine's streams -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_program_results_assemble_to_reference(seed, preset):
    print(f"seed={seed}")
    config = PRESETS[preset]
    rng = np.random.default_rng(seed)
    m, k, n = int(rng.integers(1, 30)), int(rng.integers(1, 40)), int(rng.integers(1, 20))
    job = random_gemm_job(rng, m, k, n, raw=bool(rng.random() < 0.3))
    job.w = pruned_weights(rng, k, n, float(rng.random()))
    program = lower_spmm(config, job)
    V, P = config.rows, config.spmm_lanes
    blocks = -(-m // V)
    nnz = weight_csr(job.w).row_nnz()
    assert len(program.commands) == blocks
    assert len(program.act_rows) == blocks * k
    assert len(program.nz_beats) == blocks * int(channel_beats(nnz, P).sum())
    assert len(program.quant) == len(program.result_rows) == blocks * n
    assert all(len(r) == V for r in program.act_rows + program.result_rows)
    # Every stored entry of every channel is streamed once per block, in K order.
    per_block = program.nz_beats[:len(program.nz_beats) // blocks]
    entries, channel = [[] for _ in range(n)], 0
    for beat in per_block:
        assert 0 <= beat["count"] <= P
        entries[channel] += list(zip(beat["index"][:beat["count"]], beat["value"][:beat["count"]]))
        channel += beat["last"]
    assert channel == n
    for c in range(n):
        want = [(kk, int(job.w[kk, c])) for kk in np.flatnonzero(job.w[:, c])]
        assert entries[c] == want
    assert np.array_equal(assemble_spmm(config, job, program.result_rows, program),
                          dense_reference(job, config.acc_bits))
    assert np.array_equal(dense_reference(job, config.acc_bits), job.reference(config.acc_bits))


def test_all_zero_channel_is_one_empty_last_beat():
    config = PRESETS["tiny"]
    job = random_gemm_job(np.random.default_rng(1), 2, 5, 3)
    job.w = np.zeros((5, 3), dtype=np.int64)
    job.w[1, 1] = 7
    beats = lower_spmm(config, job).nz_beats
    assert [(b["count"], b["last"]) for b in beats] == [(0, 1), (1, 1), (0, 1)]


def test_lowering_limits():
    config = PRESETS["tiny"]
    job = random_gemm_job(np.random.default_rng(1), 2, 65, 3)
    with pytest.raises(ValueError, match=r"^K = 65 exceeds the sparse engine's activation "
                                         r"buffer \(acc_depth = 64\)$"):
        lower_spmm(config, job)
    job = random_gemm_job(np.random.default_rng(1), 2, 6, 3)
    with pytest.raises(ValueError, match=r"^w_csr must be the CSR of the job's Wᵀ \(3×6\)$"):
        lower_spmm(config, job, weight_csr(np.zeros((6, 3), np.int8)))


def test_channel_beats():
    assert channel_beats([0, 1, 8, 9, 16], 8).tolist() == [1, 1, 1, 2, 2]


def test_cycle_model_rules():
    """Hand-computed timelines of the model's rules."""
    config = NPUConfig(rows=2, cols=2, spmm_lanes=2, acc_depth=16, out_fifo_depth=16)
    # One block, K = 3, channels of 0, 3 and 4 entries: 1 + 2 + 2 = 5 beats from cycle 4.
    assert spmm_cycles(config, 2, 3, [0, 3, 4]) == 4 + 5 - 1 + RESULT_LATENCY
    # Two blocks, compute-bound: block 1 follows block 0 without a gap.
    assert spmm_cycles(config, 4, 3, [16]) == 4 + 2 * 8 - 1 + RESULT_LATENCY
    # Three blocks, load-bound (K = 10 > 1 beat): a block every K + 1 cycles.
    assert spmm_cycles(config, 6, 10, [1]) == 2 * 11 + 11 + RESULT_LATENCY
