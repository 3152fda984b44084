# amaranth: UnusedElaboratable=no

"""Amaranth-simulator tests of :class:`npugen.hw.systolic_array.SystolicArray`.

Cycle convention: in cycle ``t`` the inputs are set and ``psum`` is read, then
``await ctx.tick()`` moves to cycle ``t + 1``.  The activation row presented in cycle
``t`` must appear on ``psum`` in cycle ``t + latency``.

Weight-tile schedule used here (the array's double-buffering contract): tile 0's R
weight rows are pulsed in cycles 0..R-1 and its swap row comes in cycle R.  For every
later tile k, its weight rows are pulsed in the R cycles starting ``R`` cycles after
the swap row of tile k-1, and its own swap row comes as soon as both tile k-1 has
issued all its rows and one cycle has passed since the last pulse.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment

from cycle_sim import run_cycles
from npugen.golden.precision import SPARSE_MODE_CODE
from npugen.hw.systolic_array import SystolicArray

SEEDS = [0x5A_0001, 0x5A_0002, 0x5A_0003]
SIZES = [(2, 2), (3, 4), (4, 3), (1, 3), (3, 1)]


def random_tile(rng, rows, cols, m):
    w = np.array([[rng.randint(-128, 127) for _ in range(cols)] for _ in range(rows)])
    a = np.array([[rng.randint(-256, 255) for _ in range(rows)] for _ in range(m)])
    return w, a


def build_schedule(rows, cols, tiles, rng, *, tail=0):
    """Per-cycle inputs and, per cycle, the weight matrix the presented row must use.

    ``tiles`` is a list of ``(W, A)``; rows of a tile are issued back to back from its
    swap row.  Cycles between tiles carry random activations that must still use the
    previous tile's weights; before the first swap only zero activations are sent.
    """
    swaps, shifts = [], []
    swap = rows
    shift_start = 0
    for k, (w, a) in enumerate(tiles):
        if k:
            shift_start = swaps[-1] + rows
            swap = max(swaps[-1] + len(tiles[k - 1][1]), shift_start + rows)
        swaps.append(swap)
        shifts.append(shift_start)
    end = swaps[-1] + len(tiles[-1][1]) + tail

    cycles, weights = [], []
    current = np.zeros((rows, cols), dtype=np.int64)
    for t in range(end):
        cycle = {"act": [0] * rows, "swap": 0, "w_row": [rng.randint(-128, 127)
                                                          for _ in range(cols)],
                 "w_shift": 0}
        for k, (w, a) in enumerate(tiles):
            if shifts[k] <= t < shifts[k] + rows:
                cycle["w_shift"] = 1
                cycle["w_row"] = [int(v) for v in w[t - shifts[k]]]
            if t == swaps[k]:
                cycle["swap"] = 1
                current = w
            if swaps[k] <= t < swaps[k] + len(a):
                cycle["act"] = [int(v) for v in a[t - swaps[k]]]
        if t >= swaps[0] and not any(swaps[k] <= t < swaps[k] + len(tiles[k][1])
                                     for k in range(len(tiles))):
            cycle["act"] = [rng.randint(-256, 255) for _ in range(rows)]
        cycles.append(cycle)
        weights.append(current)
    return cycles, weights, swaps, shifts


def run(dut, cycles, idle=None):
    """Drive ``cycles`` then idle for ``latency`` cycles; return psum of every cycle."""
    if idle is None:
        idle = {"act": [0] * dut.rows, "swap": 0, "w_row": [0] * dut.cols, "w_shift": 0}
    return run_cycles(dut, cycles + [idle] * (dut.latency + 1),
                      lambda ctx: [ctx.get(dut.psum)[c] for c in range(dut.cols)])


def check(dut, cycles, weights, trace):
    for t, (cycle, w) in enumerate(zip(cycles, weights)):
        expected = (np.array(cycle["act"], dtype=np.int64) @ w).tolist()
        assert trace[t + dut.latency] == expected, f"row presented in cycle {t}"


# -- constructor ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 0, "cols": 2}, r"^rows must be an integer in 1\.\.64, not 0$"),
    ({"rows": 65, "cols": 2}, r"^rows must be an integer in 1\.\.64, not 65$"),
    ({"rows": True, "cols": 2}, r"^rows must be an integer in 1\.\.64, not True$"),
    ({"rows": 2, "cols": 2.0}, r"^cols must be an integer in 1\.\.64, not 2\.0$"),
    ({"rows": 2, "cols": -1}, r"^cols must be an integer in 1\.\.64, not -1$"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SystolicArray(**kwargs)


@pytest.mark.parametrize("rows, cols", SIZES)
def test_properties(rows, cols):
    dut = SystolicArray(rows=rows, cols=cols)
    assert (dut.rows, dut.cols, dut.latency) == (rows, cols, rows + cols + 2)
    Fragment.get(dut, None)


# -- behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("rows, cols", SIZES)
def test_weight_rows_land_in_pulse_order(rows, cols):
    # Unit activations read the active weights back row by row: after R pulses,
    # shadow row r holds the r-th pulsed row.
    seed = SEEDS[0]
    print(f"seed={seed}")
    rng = random.Random(seed)
    w, _ = random_tile(rng, rows, cols, 0)
    eye = np.eye(rows, dtype=np.int64)
    dut = SystolicArray(rows=rows, cols=cols)
    cycles, weights, _, _ = build_schedule(rows, cols, [(w, eye)], rng)
    trace = run(dut, cycles)
    swap = rows
    for r in range(rows):
        assert trace[swap + r + dut.latency] == w[r].tolist(), f"weight row {r}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rows, cols", SIZES)
def test_single_tile(rows, cols, seed):
    print(f"seed={seed}")
    rng = random.Random(seed)
    tile = random_tile(rng, rows, cols, rng.randint(1, 3 * rows + 2))
    dut = SystolicArray(rows=rows, cols=cols)
    cycles, weights, _, _ = build_schedule(rows, cols, [tile], rng, tail=3)
    trace = run(dut, cycles)
    check(dut, cycles, weights, trace)
    # The tile's rows against numpy directly.
    w, a = tile
    got = np.array([trace[rows + i + dut.latency] for i in range(len(a))])
    np.testing.assert_array_equal(got, a @ w)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rows, cols", SIZES)
def test_back_to_back_tiles(rows, cols, seed):
    # Tile 0 has exactly 2R rows, the fewest that let tile 1 follow with no gap: its
    # weights shift in while tile 0 computes and the switch happens between two
    # consecutive rows.  Later tiles have random lengths (short ones leave a gap in
    # which the previous weights must stay in use while the next ones shift in).
    print(f"seed={seed}")
    rng = random.Random(seed)
    lengths = [2 * rows] + [rng.randint(1, 3 * rows) for _ in range(3)]
    tiles = [random_tile(rng, rows, cols, m) for m in lengths]
    dut = SystolicArray(rows=rows, cols=cols)
    cycles, weights, swaps, shifts = build_schedule(rows, cols, tiles, rng, tail=2)
    assert swaps[1] == swaps[0] + lengths[0]           # no gap between tiles 0 and 1
    assert swaps[1] == shifts[1] + rows                # swap right after the last pulse
    assert shifts[1] == swaps[0] + rows                # pulses start R after the swap
    trace = run(dut, cycles)
    check(dut, cycles, weights, trace)
    # The wavefront boundary: the last row of tile 0 and the first of tile 1.
    (w0, a0), (w1, a1) = tiles[0], tiles[1]
    assert trace[swaps[1] - 1 + dut.latency] == (a0[-1] @ w0).tolist()
    assert trace[swaps[1] + dut.latency] == (a1[0] @ w1).tolist()


@pytest.mark.parametrize("rows, cols", [(2, 2), (3, 4)])
def test_same_activation_across_the_switch(rows, cols):
    # One activation vector repeated across the tile boundary: only the weights
    # change, so the result row changes exactly at the first row of the new tile.
    seed = SEEDS[1]
    print(f"seed={seed}")
    rng = random.Random(seed)
    vec = np.array([rng.randint(-256, 255) for _ in range(rows)])
    w0 = random_tile(rng, rows, cols, 0)[0]
    w1 = np.clip(-w0 - 1, -128, 127)
    assert (vec @ w0).tolist() != (vec @ w1).tolist()
    tiles = [(w0, np.tile(vec, (2 * rows, 1))), (w1, np.tile(vec, (2 * rows, 1)))]
    dut = SystolicArray(rows=rows, cols=cols)
    cycles, weights, swaps, _ = build_schedule(rows, cols, tiles, rng)
    trace = run(dut, cycles)
    check(dut, cycles, weights, trace)
    out = [trace[swaps[0] + i + dut.latency] for i in range(4 * rows)]
    assert out[:2 * rows] == [(vec @ w0).tolist()] * (2 * rows)
    assert out[2 * rows:] == [(vec @ w1).tolist()] * (2 * rows)


# -- precision modes ------------------------------------------------------------------

MODES = ("int8", "int4", "binary")
CODE = {"int8": 0, "int4": 1, "binary": 2, "int8 2:4": SPARSE_MODE_CODE}
#: Names of the mode codes travelling through the array (code 4: int8 with 2:4 weights).
CODE_NAMES = {code: name for name, code in CODE.items()}


def sext(value, bits):
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def wrap32(value):
    return sext(value, 32)


def lane_contribution(mode, act, w):
    """One PE's contribution for an activation bus value and a weight lane (PE docstring)."""
    if mode == "int8":
        return sext(act, 9) * sext(w, 8)
    if mode == "int8 2:4":
        return sext(act >> (9 * ((w >> 8) & 3)), 9) * sext(w, 8)
    if mode == "int4":
        return sext(act, 5) * sext(w, 4) + sext(act >> 5, 5) * sext(w >> 4, 4)
    return 2 * bin(~(act ^ w) & 0xFF & (act >> 8)).count("1")


def mixed_tile(rng, mode, rows, cols, m):
    """A tile of ``mode``: weight lanes, activation bus rows, psum_top per row, and the
    expected output rows computed with numpy from the unpacked values."""
    garbage = rng.integers(0, 1 << 16, (m, rows))
    if mode == "int8":
        w = rng.integers(-128, 128, (rows, cols))
        a = rng.integers(-256, 256, (m, rows))
        lanes = w
        bus = (a & 0x1FF) | ((garbage << 9) & 0xFE00)
        top = np.zeros(m, np.int64)
        expect = a @ w
    elif mode == "int4":
        w = rng.integers(-8, 8, (2 * rows, cols))
        a = rng.integers(-15, 16, (m, 2 * rows))
        ends = rng.random((m, 2 * rows)) < 0.3
        a = np.where(ends, rng.choice([-15, 15], (m, 2 * rows)), a)
        lanes = np.vectorize(lambda v: sext(v, 8))((w[0::2] & 0xF) | ((w[1::2] & 0xF) << 4))
        bus = (a[:, 0::2] & 31) | ((a[:, 1::2] & 31) << 5) | ((garbage << 10) & 0xFC00)
        top = np.zeros(m, np.int64)
        expect = a @ w
    else:
        k = 8 * rows
        w = rng.choice([-1, 1], (k, cols))
        a = rng.choice([-1, 1], (m, k))
        # Whole tiles, a single element, and random partial masks.
        k_valid = rng.integers(1, k + 1, m)
        k_valid[0] = k
        if m > 1:
            k_valid[1] = 1
        bits_w = (w > 0).astype(np.int64)
        lanes = np.vectorize(lambda v: sext(v, 8))(
            sum(bits_w[i::8] << i for i in range(8)))
        bits_a = (a > 0).astype(np.int64)
        # Bits past k_valid hold garbage: they must be masked, whatever they are.
        noise = rng.integers(0, 2, (m, k))
        valid = np.arange(k)[None, :] < k_valid[:, None]
        bits_a = np.where(valid, bits_a, noise)
        signs = sum(bits_a[:, i::8] << i for i in range(8))
        mask = sum(valid[:, i::8].astype(np.int64) << i for i in range(8))
        bus = signs | (mask << 8)
        top = -k_valid
        expect = np.array([a[i, :k_valid[i]] @ w[:k_valid[i]] for i in range(m)])
    return {"mode": mode, "w": lanes.astype(np.int64), "bus": bus.astype(np.int64),
            "top": top.astype(np.int64), "expect": expect.astype(np.int64)}


def build_mixed_schedule(rows, cols, tiles, rng, *, tail=2):
    """As :func:`build_schedule`, with a mode and psum_top on every cycle.

    Cycles between tiles carry random bus values, modes and psum_top values that must
    use the previous tile's weight lanes.  Returns the cycles, per cycle the expected
    psum row (from the per-lane contributions) and the swap cycles.
    """
    swaps, shifts = [], []
    swap, shift_start = rows, 0
    for k, tile in enumerate(tiles):
        if k:
            shift_start = swaps[-1] + rows
            swap = max(swaps[-1] + len(tiles[k - 1]["bus"]), shift_start + rows)
        swaps.append(swap)
        shifts.append(shift_start)
    end = swaps[-1] + len(tiles[-1]["bus"]) + tail

    cycles, expected = [], []
    current = np.zeros((rows, cols), dtype=np.int64)
    for t in range(end):
        cycle = {"act": [0] * rows, "mode": 0, "swap": 0, "psum_top": 0,
                 "w_row": [int(v) for v in rng.integers(-128, 128, cols)], "w_shift": 0}
        busy = False
        for k, tile in enumerate(tiles):
            if shifts[k] <= t < shifts[k] + rows:
                cycle["w_shift"] = 1
                cycle["w_row"] = [int(v) for v in tile["w"][t - shifts[k]]]
            if t == swaps[k]:
                cycle["swap"] = 1
                current = tile["w"]
            if swaps[k] <= t < swaps[k] + len(tile["bus"]):
                i = t - swaps[k]
                busy = True
                cycle["act"] = [int(v) for v in tile["bus"][i]]
                cycle["mode"] = CODE[tile["mode"]]
                cycle["psum_top"] = int(tile["top"][i])
        if t >= swaps[0] and not busy:
            cycle["act"] = [int(v) for v in rng.integers(0, 1 << 16, rows)]
            cycle["mode"] = int(rng.integers(0, 3))
            cycle["psum_top"] = int(rng.integers(-(1 << 31), 1 << 31))
        mode = CODE_NAMES[cycle["mode"]]
        expected.append([wrap32(sum(lane_contribution(mode, cycle["act"][r], int(current[r][c]))
                                    for r in range(rows)) + cycle["psum_top"])
                         for c in range(cols)])
        cycles.append(cycle)
    return cycles, expected, swaps


def run_mixed(dut, cycles):
    return run(dut, cycles, {"act": [0] * dut.rows, "mode": 0, "swap": 0, "psum_top": 0,
                             "w_row": [0] * dut.cols, "w_shift": 0})


@pytest.mark.parametrize("seed", SEEDS)
def test_mixed_mode_tiles_back_to_back(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    rows, cols = 3, 4
    # The first tiles have 2R rows so each follows the previous one with no gap: the
    # mode changes between two consecutive rows together with the weights.  Then a
    # random order with random lengths (gaps carry random modes on old weights).
    order = ["int8", "int4", "binary", "int8", "binary", "int4"]
    order += [str(m) for m in rng.choice(MODES, 4)]
    lengths = [2 * rows] * 6 + [int(v) for v in rng.integers(1, 3 * rows + 1, 4)]
    tiles = [mixed_tile(rng, mode, rows, cols, m) for mode, m in zip(order, lengths)]
    dut = SystolicArray(rows=rows, cols=cols, modes=MODES)
    assert dut.latency == rows + cols + 2
    cycles, expected, swaps = build_mixed_schedule(rows, cols, tiles, rng)
    for k in range(1, 6):
        assert swaps[k] == swaps[k - 1] + 2 * rows
    trace = run_mixed(dut, cycles)
    for t, row in enumerate(expected):
        assert trace[t + dut.latency] == row, f"row presented in cycle {t}"
    # Every tile's rows against numpy on the unpacked operands.
    for k, tile in enumerate(tiles):
        got = np.array([trace[swaps[k] + i + dut.latency] for i in range(len(tile["bus"]))])
        np.testing.assert_array_equal(got, tile["expect"], err_msg=f"tile {k} ({tile['mode']})")


def test_psum_top_ignored_without_binary():
    # Without binary mode the top partial sums are zero whatever psum_top holds.
    seed = SEEDS[2]
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    rows, cols = 2, 3
    tiles = [mixed_tile(rng, mode, rows, cols, 2 * rows) for mode in ("int4", "int8", "int4")]
    dut = SystolicArray(rows=rows, cols=cols, modes=("int8", "int4"))
    cycles, _, swaps = build_mixed_schedule(rows, cols, tiles, rng)
    for cycle in cycles:
        cycle["psum_top"] = int(rng.integers(-(1 << 31), 1 << 31))
        cycle["act"] = [v & 0x3FF for v in cycle["act"]]
        cycle["mode"] = min(cycle["mode"], 1)
    trace = run_mixed(dut, cycles)
    for k, tile in enumerate(tiles):
        got = np.array([trace[swaps[k] + i + dut.latency] for i in range(len(tile["bus"]))])
        np.testing.assert_array_equal(got, tile["expect"], err_msg=f"tile {k} ({tile['mode']})")


# -- 2:4 structured sparsity ------------------------------------------------------------

def sparse_tile(rng, rows, cols, m):
    """A 2:4 tile: rows 2g and 2g+1 hold two weights of group g (4 K elements) at random
    positions; the bus of both rows carries the group's 4 activations."""
    k = 2 * rows
    values = rng.integers(-128, 128, (rows, cols))
    index = rng.integers(0, 4, (rows, cols))
    a = rng.integers(-256, 256, (m, k))
    a[0] = rng.choice([-256, 255], k)
    dense = np.zeros((k, cols), np.int64)
    for r in range(rows):
        for c in range(cols):
            dense[4 * (r // 2) + index[r, c], c] += values[r, c]
    bus = np.array([[sum(int(a[i, 4 * (r // 2) + j] & 0x1FF) << (9 * j) for j in range(4))
                     for r in range(rows)] for i in range(m)], dtype=object)
    return {"mode": "int8 2:4", "w": (values & 0xFF) | (index << 8), "bus": bus,
            "top": np.zeros(m, np.int64), "expect": a @ dense}


def test_sparse_parameters():
    dut = SystolicArray(rows=4, cols=3, sparse=True)
    assert dut.sparse and dut.act.shape().elem_shape.width == 36
    assert dut.w_row.shape().elem_shape.width == 10
    with pytest.raises(ValueError, match=r"^sparse needs an even number of rows, not 3$"):
        SystolicArray(rows=3, cols=2, sparse=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_sparse_tiles_between_dense_modes(seed):
    """2:4 tiles interleaved with every dense mode back to back; dense tiles carry garbage
    in the weight index bits and must ignore it."""
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    rows, cols = 4, 3
    order = ["int8 2:4", "int8", "int8 2:4", "int4", "int8 2:4", "binary", "int8 2:4"]
    lengths = [2 * rows] * 4 + [int(v) for v in rng.integers(1, 3 * rows + 1, 3)]
    tiles = [sparse_tile(rng, rows, cols, m) if mode == "int8 2:4" else
             mixed_tile(rng, mode, rows, cols, m) for mode, m in zip(order, lengths)]
    dut = SystolicArray(rows=rows, cols=cols, modes=MODES, sparse=True)
    cycles, expected, swaps = build_mixed_schedule(rows, cols, tiles, rng)
    for cycle in cycles:
        cycle["w_row"] = [v & 0x3FF for v in cycle["w_row"]]
        cycle["act"] = [int(v) for v in cycle["act"]]
    trace = run_mixed(dut, cycles)
    for t, row in enumerate(expected):
        assert trace[t + dut.latency] == row, f"row presented in cycle {t}"
    for k, tile in enumerate(tiles):
        got = np.array([trace[swaps[k] + i + dut.latency] for i in range(len(tile["bus"]))])
        np.testing.assert_array_equal(got, tile["expect"], err_msg=f"tile {k} ({tile['mode']})")
