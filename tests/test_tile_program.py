"""Tests of npugen.golden.tile_program (lowering a GEMM onto the core's streams) and
npugen.golden.perf_model.

The core's semantics are re-implemented here in plain NumPy, working only on the
program's streams: decode each tile's lanes per mode, mask the binary padding with
``k_valid``, accumulate over K tiles per ``first``/``last``, add the bias wrapped at
``acc_bits`` and requantize.  That simulation must reproduce ``result_rows`` exactly.
"""

import math

import numpy as np
import pytest

from npugen.golden.config import NPUConfig
from npugen.golden.int4 import unpack_int4
from npugen.golden.binary import unpack_bits
from npugen.golden.perf_model import gemm_cycles, result_latency, tile_rows
from npugen.golden.precision import INTEGER_MODES as MODES, MODE_CODES, PACK, k_per_tile
from npugen.golden.quant import requantize
from npugen.golden.tile_program import (
    GemmJob,
    assemble,
    ideal_cycles,
    lower_gemm,
    random_gemm_job,
    result_origins,
)

SEED_BASE = 0x7113_0000


def wrap(values, bits):
    half = 1 << (bits - 1)
    return (np.asarray(values, dtype=np.int64) + half) % (1 << bits) - half


# -- an independent model of the core --------------------------------------------------


def decode_lanes(lanes, mode, axis):
    """Values held by 8-bit lanes (int8 numbers) along ``axis``, unpacked by hand."""
    raw = np.asarray(lanes, dtype=np.int64) & 0xFF
    raw = np.moveaxis(raw, axis, -1)
    if mode == "int8":
        values = np.where(raw >= 128, raw - 256, raw)
    elif mode == "int4":
        nib = np.stack([raw & 0xF, raw >> 4], axis=-1)
        values = np.where(nib >= 8, nib - 16, nib).reshape(raw.shape[:-1] + (-1,))
    else:
        bits = np.stack([(raw >> i) & 1 for i in range(8)], axis=-1)
        values = np.where(bits == 1, 1, -1).reshape(raw.shape[:-1] + (-1,))
    return np.moveaxis(values, -1, axis)


def simulate_core(config, program, *, mask_binary=True):
    """Execute the program's streams as the core does; return (result rows, raw accs)."""
    R, C = config.rows, config.cols
    weights = iter(program.weight_rows)
    acts = iter(program.act_rows)
    quants = iter(program.quant)
    results, raw_accs = [], []
    acc = None
    for cmd in program.commands:
        mode = MODES[cmd.mode]
        w_tile = np.array([next(weights) for _ in range(R)])          # R × C lanes
        a_tile = np.array([next(acts) for _ in range(cmd.m_rows)])    # m_rows × R lanes
        assert w_tile.shape == (R, C) and a_tile.shape == (cmd.m_rows, R)
        w = decode_lanes(w_tile, mode, axis=0)                        # k_tile × C
        a = decode_lanes(a_tile, mode, axis=1)                        # m_rows × k_tile
        if mode == "binary":
            # 2·popcount(XNOR(a, w) & valid) − k_valid, from the bits themselves.
            valid = np.arange(w.shape[0]) < (cmd.k_valid if mask_binary else w.shape[0])
            agree = (a[:, :, None] == w[None, :, :]) & valid[None, :, None]
            part = 2 * agree.sum(axis=1) - int(valid.sum())
        else:
            part = (a - cmd.a_zero_point) @ w
        acc = part if cmd.first else acc + part
        acc = wrap(acc, config.acc_bits)
        if cmd.last:
            q = next(quants)
            total = wrap(acc + q.bias, config.acc_bits)
            raw_accs.extend(acc)
            if q.raw:
                results.extend(total)
            else:
                results.extend(np.asarray(requantize(total, q.multiplier, q.shift,
                                                     out_zero_point=q.out_zero_point,
                                                     out_min=q.out_min, out_max=q.out_max),
                                          dtype=np.int64))
    for stream in (weights, acts, quants):
        assert next(stream, None) is None, "stream not fully consumed"
    return results, raw_accs


# -- lowering ----------------------------------------------------------------------------


def random_case(rng, mode, *, rows=None, cols=None):
    rows = rows or int(rng.integers(2, 5))
    cols = cols or int(rng.integers(2, 5))
    acc_bits = int(rng.choice([18, 24, 32]))
    config = NPUConfig(rows=rows, cols=cols, acc_depth=16, acc_bits=acc_bits)
    k_tile = rows * PACK[mode]
    k = max(1, k_tile * int(rng.integers(1, 4)) + int(rng.integers(-2, 3)))
    m = int(rng.integers(1, 40))
    n = int(rng.integers(1, 3 * cols + 2))
    job = random_gemm_job(rng, m, k, n, raw=bool(rng.random() < 0.3),
                          extremes=bool(rng.random() < 0.3), mode=mode)
    return config, job


def padded_operands(config, job):
    """A and W padded to whole tiles as the lowering documents it."""
    M, K, N = job.shape
    k_tile = config.rows * PACK[job.mode]
    kp, np_ = math.ceil(K / k_tile) * k_tile, math.ceil(N / config.cols) * config.cols
    pad_a = 1 if job.mode == "binary" else job.a_zero_point
    pad_w = 1 if job.mode == "binary" else 0
    a = np.full((M, kp), pad_a, np.int64)
    a[:, :K] = job.a
    w = np.full((kp, np_), pad_w, np.int64)
    w[:K, :N] = job.w
    return a, w


CASES = [(mode, i) for mode in MODES for i in range(8)]


@pytest.mark.parametrize("mode, i", CASES, ids=[f"{m}-{i}" for m, i in CASES])
def test_lower_gemm_streams_and_core_semantics(mode, i):
    seed = SEED_BASE + 16 * MODE_CODES[mode] + i
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config, job = random_case(rng, mode)
    R, C, depth = config.rows, config.cols, config.acc_depth
    M, K, N = job.shape
    print(f"config={R}x{C} acc_bits={config.acc_bits} shape={job.shape} raw={job.raw}")
    k_tile = k_per_tile(config, mode)
    assert k_tile == R * PACK[mode]
    k_tiles, n_tiles, m_tiles = math.ceil(K / k_tile), math.ceil(N / C), math.ceil(M / depth)
    program = lower_gemm(config, job)

    # Stream sizes.
    assert len(program.commands) == m_tiles * n_tiles * k_tiles
    assert len(program.weight_rows) == R * len(program.commands)
    assert len(program.act_rows) == sum(c.m_rows for c in program.commands)
    assert len(program.act_rows) == M * n_tiles * k_tiles
    assert len(program.quant) == m_tiles * n_tiles == sum(c.last for c in program.commands)
    assert len(program.result_rows) == M * n_tiles
    assert all(len(row) == C for row in program.weight_rows)
    assert all(len(row) == R for row in program.act_rows)
    assert all(len(row) == C for row in program.result_rows)
    lanes = np.concatenate([np.ravel(r) for r in program.weight_rows + program.act_rows])
    assert lanes.min() >= -128 and lanes.max() <= 127

    # Command fields, k_valid and the lanes of every tile against the padded operands.
    a_pad, w_pad = padded_operands(config, job)
    tail = K - (k_tiles - 1) * k_tile
    w_rows, a_rows = iter(program.weight_rows), iter(program.act_rows)
    index = 0
    for m0 in range(0, M, depth):
        m_rows = min(depth, M - m0)
        for nt in range(n_tiles):
            for kt in range(k_tiles):
                cmd = program.commands[index]
                index += 1
                assert (cmd.m_rows, cmd.first, cmd.last) == (m_rows, kt == 0, kt == k_tiles - 1)
                assert cmd.mode == MODE_CODES[mode]
                assert cmd.a_zero_point == job.a_zero_point
                assert cmd.k_valid == (tail if kt == k_tiles - 1 else k_tile)
                ks = slice(kt * k_tile, (kt + 1) * k_tile)
                w_tile = np.array([next(w_rows) for _ in range(R)]).astype(np.int8)
                a_tile = np.array([next(a_rows) for _ in range(m_rows)]).astype(np.int8)
                w_expect = w_pad[ks, nt * C:(nt + 1) * C]
                a_expect = a_pad[m0:m0 + m_rows, ks]
                if mode == "int8":
                    w_got, a_got = w_tile, a_tile
                elif mode == "int4":
                    w_got = unpack_int4(w_tile, k_tile, axis=0)
                    a_got = unpack_int4(a_tile, k_tile, axis=1)
                else:
                    w_got = unpack_bits(w_tile, k_tile, axis=0)
                    a_got = unpack_bits(a_tile, k_tile, axis=1)
                np.testing.assert_array_equal(w_got, w_expect)
                np.testing.assert_array_equal(a_got, a_expect)
    assert index == len(program.commands)

    # Quant tiles: per-channel parameters, padded columns with zeros.
    for j, q in enumerate(program.quant):
        nt = j % n_tiles
        cols = slice(nt * C, min((nt + 1) * C, N))
        width = cols.stop - cols.start
        for name in ("bias", "multiplier", "shift"):
            got = np.asarray(getattr(q, name))
            assert got.shape == (C,)
            np.testing.assert_array_equal(got[:width], getattr(job, name)[cols])
            assert (got[width:] == 0).all()
        assert (q.out_zero_point, q.out_min, q.out_max, q.raw) == \
            (job.out_zero_point, job.out_min, job.out_max, job.raw)

    # The core model on the streams reproduces the expected rows and the reference.
    rows, accs = simulate_core(config, program)
    for t, (got, expect) in enumerate(zip(rows, program.result_rows)):
        np.testing.assert_array_equal(got, expect, err_msg=f"result row {t}")
    out = assemble(config, job, rows)
    np.testing.assert_array_equal(out, job.reference(config.acc_bits))
    np.testing.assert_array_equal(assemble(config, job, program.result_rows), out)
    if mode == "binary" and K % k_tile:
        # Without the k_valid mask the +1 padding on both sides would be counted.
        _, unmasked = simulate_core(config, program, mask_binary=False)
        assert not np.array_equal(np.array(unmasked), np.array(accs))


@pytest.mark.parametrize("mode", MODES)
def test_lower_gemm_k_edges(mode):
    # K exactly one tile, one tile plus one, one less than two tiles; N = 1; M = depth + 1.
    seed = SEED_BASE + 200 + MODE_CODES[mode]
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig(rows=3, cols=2, acc_depth=16)
    k_tile = 3 * PACK[mode]
    for k in (1, k_tile - 1, k_tile, k_tile + 1, 2 * k_tile - 1):
        job = random_gemm_job(rng, 17, k, 1, mode=mode, raw=True)
        program = lower_gemm(config, job)
        assert [c.k_valid for c in program.commands] == \
            [min(k_tile, k - kt * k_tile) for kt in range(math.ceil(k / k_tile))] * 2
        assert [c.m_rows for c in program.commands] == \
            [16] * math.ceil(k / k_tile) + [1] * math.ceil(k / k_tile)
        rows, _ = simulate_core(config, program)
        np.testing.assert_array_equal(assemble(config, job, rows), job.reference())


def test_result_origins_and_assemble_errors():
    config = NPUConfig(rows=2, cols=3, acc_depth=16)
    job = GemmJob(np.zeros((18, 4), int), np.zeros((4, 5), int))
    origins = result_origins(config, job)
    assert origins[:16] == [(m, 0) for m in range(16)]
    assert origins[16:32] == [(m, 3) for m in range(16)]
    assert origins[32:] == [(16, 0), (17, 0), (16, 3), (17, 3)]
    with pytest.raises(ValueError, match=r"^expected 36 result rows, got 35$"):
        assemble(config, job, [np.zeros(3)] * 35)


def test_lower_gemm_mode_not_built():
    config = NPUConfig(rows=2, cols=2, acc_depth=16, modes=("int8",))
    job = GemmJob(np.zeros((1, 2), int), np.zeros((2, 2), int), mode="int4")
    with pytest.raises(ValueError, match=r"^mode 'int4' is not built in this configuration "
                                         r"\(modes: int8\)$"):
        lower_gemm(config, job)
    with pytest.raises(ValueError, match=r"^mode must be one of the built modes \['int8'\], "
                                         r"not 'binary'$"):
        ideal_cycles(config, 1, 1, 1, "binary")


A2 = np.zeros((2, 3), int)
W2 = np.zeros((3, 4), int)


@pytest.mark.parametrize("kwargs, message", [
    (dict(a=A2, w=W2, mode="int2"), r"^mode must be one of int8, int4, binary, not 'int2'$"),
    (dict(a=A2[0], w=W2), r"^a and w must be matrices, not shapes \(3,\) and \(3, 4\)$"),
    (dict(a=A2, w=W2[None]), r"^a and w must be matrices, not shapes \(2, 3\) and \(1, 3, 4\)$"),
    (dict(a=A2, w=W2[:2]), r"^a is 2×3 but w is 2×4: inner dimensions differ$"),
    (dict(a=A2 - 129, w=W2), r"^a must hold int8 values in \[-128, 127\]$"),
    (dict(a=A2, w=W2 - 128), r"^w must hold int8 values in \[-127, 127\]$"),
    (dict(a=A2 + 8, w=W2, mode="int4"), r"^a must hold int4 values in \[-8, 7\]$"),
    (dict(a=A2, w=W2 - 9, mode="int4"), r"^w must hold int4 values in \[-8, 7\]$"),
    (dict(a=A2 + 1, w=W2 + 2, mode="binary"), r"^w must hold binary values in \[-1, 1\]$"),
    (dict(a=A2, w=W2 + 1, mode="binary"), r"^a must hold only -1 and \+1 in binary mode$"),
    (dict(a=A2 + 1, w=W2, mode="binary"), r"^w must hold only -1 and \+1 in binary mode$"),
    (dict(a=A2, w=W2, a_zero_point=128), r"^a_zero_point must be in \[-128, 127\] for int8, "
                                         r"not 128$"),
    (dict(a=A2, w=W2, a_zero_point=-9, mode="int4"),
     r"^a_zero_point must be in \[-8, 7\] for int4, not -9$"),
    (dict(a=A2 + 1, w=W2 + 1, a_zero_point=1, mode="binary"),
     r"^a_zero_point must be in \[0, 0\] for binary, not 1$"),
    (dict(a=A2, w=W2, out_zero_point=128), r"^out_zero_point must be in \[-128, 127\], not 128$"),
    (dict(a=A2, w=W2, out_min=-129), r"^out_min must be in \[-128, 127\], not -129$"),
    (dict(a=A2, w=W2, out_max=200), r"^out_max must be in \[-128, 127\], not 200$"),
    (dict(a=A2, w=W2, out_min=5, out_max=4), r"^out_min \(5\) must not exceed out_max \(4\)$"),
])
def test_gemm_job_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GemmJob(**kwargs)


def test_gemm_job_defaults():
    job = GemmJob(np.ones((2, 3), int), np.ones((3, 4), int), mode="int4")
    assert job.shape == (2, 3, 4) and job.macs == 24
    assert job.bias.tolist() == [0] * 4 and job.multiplier.tolist() == [1 << 30] * 4
    assert job.shift.tolist() == [0] * 4
    # 3 * 0.5 = 1.5 rounds to 2.
    assert job.reference().tolist() == [[2] * 4] * 2
    job = GemmJob(np.ones((2, 3), int), -np.ones((3, 4), int), mode="binary", raw=True,
                  bias=[1, 2, 3, 4])
    assert job.reference().tolist() == [[-2, -1, 0, 1]] * 2


@pytest.mark.parametrize("mode", MODES)
def test_random_gemm_job_ranges(mode):
    seed = SEED_BASE + 300 + MODE_CODES[mode]
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    for extremes in (False, True):
        job = random_gemm_job(rng, 5, 40, 6, mode=mode, extremes=extremes)
        assert job.mode == mode and job.shape == (5, 40, 6)
        if mode == "binary":
            assert set(np.unique(job.a)) <= {-1, 1} and set(np.unique(job.w)) <= {-1, 1}
            assert job.a_zero_point == 0
        lo, hi = {"int8": (-128, 127), "int4": (-8, 7), "binary": (-1, 1)}[mode]
        assert job.a.min() >= lo and job.a.max() <= hi


# -- cycle figures -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_ideal_cycles(mode):
    config = NPUConfig(rows=4, cols=3, acc_depth=16)
    per_cycle = 4 * 3 * PACK[mode]
    for m, k, n in [(1, 1, 1), (16, 32, 3), (7, 65, 11), (100, 256, 24)]:
        assert ideal_cycles(config, m, k, n, mode) == math.ceil(m * k * n / per_cycle)
    assert ideal_cycles(config, 12, 8 * 4, 3, mode) == 12 * 8 * 4 * 3 // per_cycle


def test_gemm_cycles_single_tile():
    config = NPUConfig(rows=4, cols=3, acc_depth=16)
    for m in (1, 5, 16):
        # Hand-over + R weight cycles, m rows, then the result latency.
        assert gemm_cycles(config, m, 4, 3) == 1 + 4 + m - 1 + result_latency(config)
        assert gemm_cycles(config, m, 8, 3, "int4") == gemm_cycles(config, m, 4, 3)
        assert gemm_cycles(config, m, 32, 3, "binary") == gemm_cycles(config, m, 4, 3)
    assert result_latency(config) == 4 + 3 + 18


@pytest.mark.parametrize("mode", MODES)
def test_gemm_cycles_monotonic_in_m(mode):
    config = NPUConfig(rows=3, cols=2, acc_depth=16)
    for k, n in [(5, 2), (24, 5), (50, 1)]:
        cycles = [gemm_cycles(config, m, k, n, mode) for m in range(1, 50)]
        assert all(b > a for a, b in zip(cycles, cycles[1:])), (k, n)
        assert all(c >= ideal_cycles(config, m, k, n, mode)
                   for m, c in zip(range(1, 50), cycles))
        # Monotonic in N and K too (non-decreasing).
        by_n = [gemm_cycles(config, 20, k, nn, mode) for nn in range(1, 10)]
        by_k = [gemm_cycles(config, 20, kk, n, mode) for kk in range(1, 60)]
        assert by_n == sorted(by_n) and by_k == sorted(by_k)


def test_gemm_cycles_packed_modes_cut_k_tiles():
    config = NPUConfig(rows=4, cols=4, acc_depth=16)
    for m, k, n in [(1, 1, 1), (9, 17, 5), (16, 64, 8), (40, 100, 9), (33, 256, 4)]:
        int8_tiles = len(tile_rows(config, m, k, n))
        assert len(tile_rows(config, m, k, n, "int4")) == \
            len(tile_rows(config, m, math.ceil(k / 2), n))
        assert len(tile_rows(config, m, k, n, "binary")) == \
            len(tile_rows(config, m, math.ceil(k / 8), n))
        assert gemm_cycles(config, m, 2 * k, n, "int4") == gemm_cycles(config, m, k, n)
        assert gemm_cycles(config, m, 8 * k, n, "binary") == gemm_cycles(config, m, k, n)
        assert gemm_cycles(config, m, k, n, "int4") <= gemm_cycles(config, m, k, n)
        assert gemm_cycles(config, m, k, n, "binary") <= gemm_cycles(config, m, k, n, "int4")
        if k % (4 * 8) == 0:
            # Whole binary K tiles: int4 needs exactly half the int8 tiles, binary an eighth.
            k_tiles = k // 4
            assert int8_tiles == math.ceil(m / 16) * math.ceil(n / 4) * k_tiles
            assert len(tile_rows(config, m, k, n, "int4")) * 2 == int8_tiles
            assert len(tile_rows(config, m, k, n, "binary")) * 8 == int8_tiles
            assert gemm_cycles(config, m, k, n, "int4") < gemm_cycles(config, m, k, n)


def test_tile_rows_matches_lower_gemm():
    seed = SEED_BASE + 400
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    for mode in MODES:
        config, job = random_case(rng, mode)
        program = lower_gemm(config, job)
        assert tile_rows(config, *job.shape, mode) == [c.m_rows for c in program.commands]


# -- 2:4 structured sparsity ----------------------------------------------------------------


def simulate_sparse_core(config, program):
    """Execute a 2:4-capable core's streams: a 2:4 tile's row r holds slot r % 2 of group
    r // 2 (value and index), an activation row 2·rows values.  Returns the result rows."""
    R, C = config.rows, config.cols
    weights, indices = iter(program.weight_rows), iter(program.weight_index_rows)
    acts, quants = iter(program.act_rows), iter(program.quant)
    results, acc = [], None
    for cmd in program.commands:
        w_tile = np.array([next(weights) for _ in range(R)])
        i_tile = np.array([next(indices) for _ in range(R)])
        a_tile = np.array([next(acts) for _ in range(cmd.m_rows)])
        assert a_tile.shape == (cmd.m_rows, 2 * R)
        assert i_tile.min() >= 0 and i_tile.max() <= 3
        if cmd.sparse:
            assert cmd.mode == MODE_CODES["int8"] and 1 <= cmd.k_valid <= 2 * R
            # Indices of a group strictly increase (what the core checks).
            assert (i_tile[0::2] < i_tile[1::2]).all()
            w = np.zeros((2 * R, C), np.int64)
            for r in range(R):
                w[4 * (r // 2) + i_tile[r], np.arange(C)] += w_tile[r]
            part = (a_tile - cmd.a_zero_point) @ w
        else:
            assert (i_tile == 0).all() and (a_tile[:, R:] == 0).all()
            mode = MODES[cmd.mode]
            w = decode_lanes(w_tile, mode, axis=0)
            a = decode_lanes(a_tile[:, :R], mode, axis=1)
            assert mode != "binary"
            part = (a - cmd.a_zero_point) @ w
        acc = wrap(part if cmd.first else acc + part, config.acc_bits)
        if cmd.last:
            q = next(quants)
            total = wrap(acc + q.bias, config.acc_bits)
            results.extend(total if q.raw else np.asarray(
                requantize(total, q.multiplier, q.shift, out_zero_point=q.out_zero_point,
                           out_min=q.out_min, out_max=q.out_max), dtype=np.int64))
    for stream in (weights, indices, acts, quants):
        assert next(stream, None) is None, "stream not fully consumed"
    return results


SPARSE_KS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33]


@pytest.mark.parametrize("k", SPARSE_KS)
def test_lower_gemm_sparse_k_edges(k):
    seed = SEED_BASE + 500 + k
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig(rows=4, cols=3, acc_depth=16, modes=("int8", "int4"), sparse_2_4=True)
    job = random_gemm_job(rng, int(rng.integers(1, 40)), k, int(rng.integers(1, 8)),
                          raw=bool(rng.random() < 0.3), extremes=bool(rng.random() < 0.3),
                          sparsity="2:4")
    program = lower_gemm(config, job)
    k_tile = 2 * config.rows
    k_tiles = math.ceil(k / k_tile)
    assert all(c.sparse and c.mode == MODE_CODES["int8"] for c in program.commands)
    assert [c.k_valid for c in program.commands[:k_tiles]] == \
        [min(k_tile, k - i * k_tile) for i in range(k_tiles)]
    assert len(program.weight_rows) == len(program.weight_index_rows) == \
        len(program.commands) * config.rows
    got = simulate_sparse_core(config, program)
    assert np.array_equal(np.array(got), np.array(program.result_rows))
    assert np.array_equal(assemble(config, job, program.result_rows), job.reference())
    assert tile_rows(config, *job.shape, "int8", "2:4") == [c.m_rows for c in program.commands]


def test_dense_jobs_on_a_sparse_configuration():
    seed = SEED_BASE + 600
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig(rows=2, cols=2, acc_depth=16, modes=("int8", "int4"), sparse_2_4=True)
    for mode in ("int8", "int4"):
        job = random_gemm_job(rng, 5, 11, 3, mode=mode)
        program = lower_gemm(config, job)
        assert not any(c.sparse for c in program.commands)
        assert np.array_equal(simulate_sparse_core(config, program), program.result_rows)
        assert np.array_equal(assemble(config, job, program.result_rows), job.reference())
    # Without sparse_2_4 a program carries no index rows and rows-wide activations.
    program = lower_gemm(config.replace(sparse_2_4=False), job)
    assert program.weight_index_rows == [] and len(program.act_rows[0]) == config.rows


def test_random_sparse_job_is_2_4_and_keeps_dense_draws():
    seed = SEED_BASE + 700
    print(f"seed={seed}")
    job = random_gemm_job(np.random.default_rng(seed), 6, 22, 5, sparsity="2:4")
    w = np.zeros((24, 5), np.int64)
    w[:22] = job.w
    assert (np.count_nonzero(w.reshape(6, 4, 5), axis=1) <= 2).all()
    assert job.sparsity == "2:4" and job.compressed_weights().nnz == np.count_nonzero(job.w)
    dense = random_gemm_job(np.random.default_rng(seed), 6, 22, 5)
    assert np.array_equal(dense.a, job.a) and dense.a_zero_point == job.a_zero_point


def test_sparse_errors():
    w = np.zeros((8, 2), int)
    w[1:4, 1] = [1, -2, 3]
    with pytest.raises(ValueError, match=r"^group 0 \(K 0\.\.3\) of column 1 has 3 non-zeros; "
                                         r"2:4 sparsity allows at most 2$"):
        GemmJob(np.zeros((1, 8), int), w, sparsity="2:4")
    with pytest.raises(ValueError, match=r"^2:4 sparsity needs mode 'int8', not 'int4'$"):
        GemmJob(np.zeros((1, 8), int), np.zeros((8, 2), int), mode="int4", sparsity="2:4")
    with pytest.raises(ValueError, match=r"^sparsity must be None or one of 2:4, not '1:4'$"):
        GemmJob(np.zeros((1, 8), int), np.zeros((8, 2), int), sparsity="1:4")
    job = GemmJob(np.zeros((1, 8), int), np.zeros((8, 2), int), sparsity="2:4")
    dense_config = NPUConfig(rows=2, cols=2, acc_depth=16)
    message = r"^sparsity '2:4' needs a configuration with sparse_2_4$"
    with pytest.raises(ValueError, match=message):
        lower_gemm(dense_config, job)
    with pytest.raises(ValueError, match=message):
        gemm_cycles(dense_config, 1, 8, 2, "int8", "2:4")
    with pytest.raises(ValueError, match=message):
        ideal_cycles(dense_config, 1, 8, 2, "int8", "2:4")
    with pytest.raises(ValueError, match=r"^2:4 sparsity needs mode 'int8', not 'int4'$"):
        k_per_tile(dense_config, "int4", "2:4")


def test_sparse_cycles_halve_the_k_tiles():
    config = NPUConfig.preset("default")
    assert k_per_tile(config, "int8", "2:4") == 2 * config.rows
    for m, k, n in [(64, 256, 64), (5, 17, 9), (600, 48, 8)]:
        assert gemm_cycles(config, m, 2 * k, n, "int8", "2:4") == gemm_cycles(config, m, k, n)
        assert ideal_cycles(config, m, k, n, "int8", "2:4") == math.ceil(m * k * n / 128)
    dense = gemm_cycles(config, 64, 256, 64)
    assert dense / gemm_cycles(config, 64, 256, 64, "int8", "2:4") >= 1.8
