"""Lowering of one quantized GEMM onto the GEMM core's tile operations.

A GEMM ``Y = requant(A·W + bias)`` with A: M×K (zero point ``a_zero_point``) and
W: K×N (symmetric) in one precision mode is cut into tiles of ``acc_depth`` rows ×
``rows·pack`` (K) × ``cols`` (N), where ``pack`` is 1 (int8), 2 (int4) or 8 (binary)
values per 8-bit lane.  The tile order is M tile → N tile → K tile, so the accumulator
buffer holds one M×``cols`` output tile while its K tiles stream through the array.
Short edges are padded: K with zero weights and zero-point activations (binary: with
+1 bits on both sides, which the core must mask — ``k_valid`` says how many are real);
padded output columns are computed and dropped.

2:4 jobs (``sparsity="2:4"``, int8 only, a configuration with ``sparse_2_4``) cover
``2·rows`` of K per tile.  The weights, padded in K to whole tiles with zeros, are
compressed by :class:`~npugen.golden.sparse_formats.NMMatrix` (which rejects a group of
4 with more than 2 non-zeros): compressed row ``kt·rows + r`` (slot ``r % 2`` of group
``kt·rows/2 + r // 2``) is weight row r of K tile kt, its values in ``value`` and its
2-bit positions in ``weight_index_rows``.  An activation row carries the tile's
``2·rows`` values.  The expected results are the dense ``qgemm`` of the same (pruned)
weights.  On a configuration with ``sparse_2_4`` every program carries index rows
(zeros for dense tiles) and activation rows are ``2·rows`` lanes wide (dense modes
leave the upper ``rows`` lanes zero).

This module is the executable contract of the core's streams: the cocotb testbench
drives exactly these rows and expects exactly these results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .binary import pack_bits
from .gemm import matmul_integer
from .int4 import pack_int4
from .precision import PACK, SPARSE_K_FACTOR, VALUE_RANGE, check_sparsity, integer_mode_code
from .quant import requantize
from .sparse_formats import NMMatrix

__all__ = ["GemmJob", "TileCommand", "QuantTile", "TileProgram", "lower_gemm", "assemble",
           "result_origins", "ideal_cycles", "random_gemm_job"]

#: Weight value range per mode (int8 weights are symmetric).
WEIGHT_RANGE = {"int8": (-127, 127), "int4": (-8, 7), "binary": (-1, 1)}


@dataclass
class GemmJob:
    """One quantized GEMM: operands (unpacked values) and per-channel requantization."""

    a: np.ndarray                 # M×K values of the mode (binary: ±1)
    w: np.ndarray                 # K×N values of the mode (int8 in [-127, 127])
    a_zero_point: int = 0
    bias: np.ndarray | None = None        # N int32
    multiplier: np.ndarray | None = None  # N Q31 int32
    shift: np.ndarray | None = None       # N, TFLite convention
    out_zero_point: int = 0
    out_min: int = -128
    out_max: int = 127
    raw: bool = False             # acc + bias (sign-extended) instead of requantized values
    mode: str = "int8"
    sparsity: str | None = None   # "2:4": w is 2:4 sparse and runs compressed (int8 only)

    def __post_init__(self):
        integer_mode_code(self.mode)
        check_sparsity(self.sparsity, self.mode)
        self.a = np.asarray(self.a)
        self.w = np.asarray(self.w)
        for name, values in (("a", self.a), ("w", self.w)):
            if not np.issubdtype(values.dtype, np.integer):
                raise TypeError(f"{name} must hold integers, not {values.dtype}")
        if self.a.ndim != 2 or self.w.ndim != 2:
            raise ValueError(f"a and w must be matrices, not shapes {self.a.shape} and {self.w.shape}")
        if self.a.shape[1] != self.w.shape[0]:
            raise ValueError(f"a is {self.a.shape[0]}×{self.a.shape[1]} but w is "
                             f"{self.w.shape[0]}×{self.w.shape[1]}: inner dimensions differ")
        for name, values, (lo, hi) in (("a", self.a, VALUE_RANGE[self.mode]),
                                       ("w", self.w, WEIGHT_RANGE[self.mode])):
            if values.size and (values.min() < lo or values.max() > hi):
                raise ValueError(f"{name} must hold {self.mode} values in [{lo}, {hi}]")
            if self.mode == "binary" and values.size and not np.isin(values, (-1, 1)).all():
                raise ValueError(f"{name} must hold only -1 and +1 in binary mode")
        zp_lo, zp_hi = (0, 0) if self.mode == "binary" else VALUE_RANGE[self.mode]
        if not zp_lo <= self.a_zero_point <= zp_hi:
            raise ValueError(f"a_zero_point must be in [{zp_lo}, {zp_hi}] for {self.mode}, "
                             f"not {self.a_zero_point}")
        n = self.w.shape[1]
        self.bias = _per_channel(self.bias, n, 0, "bias", -(1 << 31), (1 << 31) - 1)
        self.multiplier = _per_channel(self.multiplier, n, 1 << 30, "multiplier", 0,
                                       (1 << 31) - 1)
        self.shift = _per_channel(self.shift, n, 0, "shift", -31, 30)
        for name in ("out_zero_point", "out_min", "out_max"):
            value = getattr(self, name)
            if not -128 <= value <= 127:
                raise ValueError(f"{name} must be in [-128, 127], not {value}")
        if self.out_min > self.out_max:
            raise ValueError(f"out_min ({self.out_min}) must not exceed out_max ({self.out_max})")
        if self.sparsity is not None:
            self.compressed_weights()   # the packer rejects weights that are not 2:4

    def compressed_weights(self) -> NMMatrix:
        """The 2:4 compressed weights (``ValueError`` naming the group if not 2:4)."""
        n, m = (int(v) for v in self.sparsity.split(":"))
        return NMMatrix.from_dense(self.w, n=n, m=m)

    @property
    def shape(self):
        """(M, K, N)."""
        return self.a.shape[0], self.a.shape[1], self.w.shape[1]

    @property
    def macs(self):
        m, k, n = self.shape
        return m * k * n

    def reference(self, acc_bits: int = 32) -> np.ndarray:
        """The kernel-level golden result (M×N int64 holding output or int32 values)."""
        acc = matmul_integer(self.a.astype(np.int8), self.w.astype(np.int8), self.a_zero_point,
                             0, acc_bits=acc_bits)
        return _finish(acc, self.bias, self.multiplier, self.shift, self, acc_bits)


def _per_channel(value, n, default, name, lo, hi):
    if value is None:
        return np.full(n, default, dtype=np.int64)
    raw = np.asarray(value)
    if not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {raw.dtype}")
    try:
        arr = np.broadcast_to(raw.astype(np.int64), (n,)).copy()
    except ValueError:
        raise ValueError(f"{name} must be a scalar or one value per output channel ({n}), "
                         f"not shape {raw.shape}") from None
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)][0]
        raise ValueError(f"{name} must be in [{lo}, {hi}], found {int(bad)}")
    return arr


def _wrap(values, bits):
    half = 1 << (bits - 1)
    return (np.asarray(values, dtype=np.int64) + half) % (1 << bits) - half


def _finish(acc, bias, multiplier, shift, job, acc_bits):
    """Add the bias into the accumulator (wrapping at ``acc_bits``), then requantize."""
    total = _wrap(acc.astype(np.int64) + bias.astype(np.int64), acc_bits)
    if job.raw:
        return total
    return requantize(total, multiplier, shift, out_zero_point=job.out_zero_point,
                      out_min=job.out_min, out_max=job.out_max).astype(np.int64)


@dataclass
class TileCommand:
    """Fields of the core's ``cmd`` stream."""
    m_rows: int
    first: bool
    last: bool
    a_zero_point: int
    mode: int
    k_valid: int
    sparse: bool = False


@dataclass
class QuantTile:
    """Fields of the core's ``quant`` stream (one beat per output tile)."""
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    out_zero_point: int
    out_min: int
    out_max: int
    raw: bool


@dataclass
class TileProgram:
    """The four input streams of the core and the result rows it must produce."""
    commands: list[TileCommand] = field(default_factory=list)
    weight_rows: list[np.ndarray] = field(default_factory=list)   # each: cols lanes
    #: 2-bit group positions of the weight rows (configurations with ``sparse_2_4``).
    weight_index_rows: list[np.ndarray] = field(default_factory=list)
    act_rows: list[np.ndarray] = field(default_factory=list)      # each: rows lanes
    quant: list[QuantTile] = field(default_factory=list)
    result_rows: list[np.ndarray] = field(default_factory=list)   # each: cols lanes


def _pack_lanes(values, mode):
    """Pack values along the last axis into 8-bit lanes (int8 numbers) of ``mode``."""
    if mode == "int8":
        return values.astype(np.int64)
    if mode == "int4":
        return pack_int4(values, axis=-1).astype(np.int64)
    return pack_bits(values, axis=-1).astype(np.int64)


def lower_gemm(config, job: GemmJob) -> TileProgram:
    """Cut ``job`` into tile operations for the GEMM core of ``config``."""
    R, C, depth = config.rows, config.cols, config.acc_depth
    mode = job.mode
    if mode not in config.modes:
        raise ValueError(f"mode {mode!r} is not built in this configuration "
                         f"(modes: {', '.join(config.modes)})")
    sparse = job.sparsity is not None
    if sparse and not config.sparse_2_4:
        raise ValueError(f"sparsity {job.sparsity!r} needs a configuration with sparse_2_4")
    M, K, N = job.shape
    factor = SPARSE_K_FACTOR if sparse else 1
    k_tile = R * PACK[mode] * factor
    k_tiles, n_tiles = math.ceil(K / k_tile), math.ceil(N / C)
    pad_a = 1 if mode == "binary" else job.a_zero_point
    pad_w = 1 if mode == "binary" else 0
    a = np.full((M, k_tiles * k_tile), pad_a, dtype=np.int64)
    a[:, :K] = job.a
    w = np.full((k_tiles * k_tile, n_tiles * C), pad_w, dtype=np.int64)
    w[:K, :N] = job.w
    lanes = R * factor                                   # act lanes per row of a tile
    a_lanes = _pack_lanes(a, mode)                       # M × (k_tiles·lanes)
    if sparse:
        packed = NMMatrix.from_dense(w)                  # (k_tiles·R) × (n_tiles·C)
        w_lanes, w_index = packed.values, packed.indices
    else:
        w_lanes = _pack_lanes(w.T, mode).T               # (k_tiles·R) × (n_tiles·C)
        w_index = np.zeros_like(w_lanes)
    row_lanes = R * SPARSE_K_FACTOR if config.sparse_2_4 else R
    pad = n_tiles * C - N
    bias = np.concatenate([job.bias, np.zeros(pad, np.int64)])
    multiplier = np.concatenate([job.multiplier, np.zeros(pad, np.int64)])
    shift = np.concatenate([job.shift, np.zeros(pad, np.int64)])
    padded = GemmJob(a[:, :K], w[:K, :], job.a_zero_point,
                     bias, multiplier, shift, job.out_zero_point, job.out_min, job.out_max,
                     job.raw, mode)
    expected = padded.reference(config.acc_bits)

    program = TileProgram()
    code = integer_mode_code(mode)
    for m0 in range(0, M, depth):
        m_rows = min(depth, M - m0)
        for nt in range(n_tiles):
            n0 = nt * C
            for kt in range(k_tiles):
                last = kt == k_tiles - 1
                k_valid = min(k_tile, K - kt * k_tile)
                program.commands.append(TileCommand(m_rows, kt == 0, last, job.a_zero_point,
                                                    code, k_valid, sparse))
                program.weight_rows.extend(w_lanes[kt * R:(kt + 1) * R, n0:n0 + C])
                if config.sparse_2_4:
                    program.weight_index_rows.extend(w_index[kt * R:(kt + 1) * R, n0:n0 + C])
                act = np.zeros((m_rows, row_lanes), dtype=np.int64)
                act[:, :lanes] = a_lanes[m0:m0 + m_rows, kt * lanes:(kt + 1) * lanes]
                program.act_rows.extend(act)
                if last:
                    program.quant.append(QuantTile(
                        bias[n0:n0 + C], multiplier[n0:n0 + C], shift[n0:n0 + C],
                        job.out_zero_point, job.out_min, job.out_max, job.raw))
                    program.result_rows.extend(expected[m0:m0 + m_rows, n0:n0 + C])
    return program


def assemble(config, job: GemmJob, rows) -> np.ndarray:
    """Place result rows (in program order) back into the M×N output matrix."""
    origins = result_origins(config, job)
    M, _, N = job.shape
    out = np.zeros((M, N), dtype=np.int64)
    rows = list(rows)
    if len(rows) != len(origins):
        raise ValueError(f"expected {len(origins)} result rows, got {len(rows)}")
    for row, (m, n0) in zip(rows, origins):
        width = min(config.cols, N - n0)
        out[m, n0:n0 + width] = np.asarray(row)[:width]
    return out


def result_origins(config, job: GemmJob) -> list[tuple[int, int]]:
    """The (m, n0) origin of every result row of ``lower_gemm(config, job)``."""
    M, _, N = job.shape
    origins = []
    for m0 in range(0, M, config.acc_depth):
        m_rows = min(config.acc_depth, M - m0)
        for n0 in range(0, N, config.cols):
            origins.extend((m0 + i, n0) for i in range(m_rows))
    return origins


def ideal_cycles(config, m: int, k: int, n: int, mode: str = "int8", sparsity=None) -> int:
    """⌈M·K·N / (R·C·pack)⌉: cycles of a perfectly utilised array in ``mode``.

    With 2:4 weights the array covers twice the K per cycle: ⌈M·K·N / (2·R·C)⌉ (dense
    multiply-accumulates, half of them with a zero weight, are not performed).
    """
    peak = config.peak_macs_per_cycle(mode)
    if check_sparsity(sparsity, mode):
        if not config.sparse_2_4:
            raise ValueError(f"sparsity {sparsity!r} needs a configuration with sparse_2_4")
        peak *= SPARSE_K_FACTOR
    return math.ceil(m * k * n / peak)


def random_gemm_job(rng: np.random.Generator, m: int, k: int, n: int, *,
                    raw: bool = False, extremes: bool = False, mode: str = "int8",
                    sparsity: str | None = None) -> GemmJob:
    """A random GEMM with nonzero zero points and realistic requantization parameters.

    ``extremes`` draws operands only from the ends of their ranges to exercise the
    widest products and sums.  int4 jobs clamp to [-8, 7] half of the time.
    ``sparsity="2:4"`` prunes the weights to 2:4 by magnitude (N:M pruning; a random
    quarter of the groups is pruned further, to one or no non-zero).
    """
    integer_mode_code(mode)
    check_sparsity(sparsity, mode)
    (a_lo, a_hi), (w_lo, w_hi) = VALUE_RANGE[mode], WEIGHT_RANGE[mode]
    if mode == "binary" or extremes:
        a = rng.choice(np.array([a_lo, a_hi]), size=(m, k))
        w = rng.choice(np.array([w_lo, w_hi]), size=(k, n))
    else:
        a = rng.integers(a_lo, a_hi, size=(m, k), endpoint=True)
        w = rng.integers(w_lo, w_hi, size=(k, n), endpoint=True)
    a_zp = 0 if mode == "binary" else int(rng.integers(a_lo, a_hi, endpoint=True))
    bias = rng.integers(-(1 << 20), 1 << 20, size=n)
    # Real multipliers spanning typical requantization scales (about 2^-14 .. 2^-4).
    multiplier = rng.integers(1 << 30, (1 << 31) - 1, size=n, endpoint=True)
    low_shift = {"int8": -14, "int4": -8, "binary": -6}[mode]
    shift = rng.integers(low_shift, -1, size=n, endpoint=True)
    out_zp = int(rng.integers(-128, 128))
    out_min, out_max = sorted(int(v) for v in rng.integers(-128, 128, size=2))
    if rng.random() < 0.5:
        out_min, out_max = -128, 127
    if mode == "int4" and rng.random() < 0.5:
        out_zp, out_min, out_max = int(rng.integers(-8, 8)), -8, 7
    if sparsity is not None:
        from .pruning import prune_n_m
        w = prune_n_m(w).weights
        groups = -(-k // 4)
        thin = np.repeat(rng.random(size=(groups, n)) < 0.25, 4, axis=0)[:k]
        w = np.where(thin & (rng.random(size=(k, n)) < 0.6), 0, w)
    return GemmJob(a, w, a_zp, bias, multiplier, shift, out_zp, out_min, out_max, raw, mode,
                   sparsity)
