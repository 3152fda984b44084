"""Lowering of one quantized GEMM onto the GEMM core's tile operations.

A GEMM ``Y = requant(A·W + bias)`` with A: M×K int8 (zero point ``a_zero_point``),
W: K×N int8 (symmetric) is cut into tiles of ``acc_depth`` rows × ``rows`` (K) ×
``cols`` (N).  The tile order is M tile → N tile → K tile, so the accumulator buffer
holds one M×``cols`` output tile while its K tiles stream through the array.  Short
edges are padded: weights with 0 (the padding never contributes) and activations with
the zero point; padded output columns are computed and dropped.

This module is the executable contract of the core's streams: the cocotb testbench
drives exactly these rows and expects exactly these results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .gemm import matmul_integer
from .quant import requantize

__all__ = ["GemmJob", "TileCommand", "QuantTile", "TileProgram", "lower_gemm",
           "assemble", "result_origins", "ideal_cycles", "random_gemm_job"]


@dataclass
class GemmJob:
    """One quantized GEMM: operands and per-output-channel requantization."""

    a: np.ndarray                 # M×K int8
    w: np.ndarray                 # K×N int8 in [-127, 127]
    a_zero_point: int = 0
    bias: np.ndarray | None = None        # N int32
    multiplier: np.ndarray | None = None  # N Q31 int32
    shift: np.ndarray | None = None       # N, TFLite convention
    out_zero_point: int = 0
    out_min: int = -128
    out_max: int = 127
    raw: bool = False             # int32 output (acc + bias) instead of int8

    def __post_init__(self):
        self.a = np.asarray(self.a)
        self.w = np.asarray(self.w)
        if self.a.ndim != 2 or self.w.ndim != 2:
            raise ValueError(f"a and w must be matrices, not shapes {self.a.shape} and {self.w.shape}")
        if self.a.shape[1] != self.w.shape[0]:
            raise ValueError(f"a is {self.a.shape[0]}×{self.a.shape[1]} but w is "
                             f"{self.w.shape[0]}×{self.w.shape[1]}: inner dimensions differ")
        if self.a.min(initial=0) < -128 or self.a.max(initial=0) > 127:
            raise ValueError("a must hold int8 values in [-128, 127]")
        if self.w.min(initial=0) < -127 or self.w.max(initial=0) > 127:
            raise ValueError("w must be symmetric int8 in [-127, 127]")
        if not -128 <= self.a_zero_point <= 127:
            raise ValueError(f"a_zero_point must be in [-128, 127], not {self.a_zero_point}")
        n = self.w.shape[1]
        self.bias = _per_channel(self.bias, n, 0, "bias")
        self.multiplier = _per_channel(self.multiplier, n, 1 << 30, "multiplier")
        self.shift = _per_channel(self.shift, n, 0, "shift")
        for name in ("out_zero_point", "out_min", "out_max"):
            value = getattr(self, name)
            if not -128 <= value <= 127:
                raise ValueError(f"{name} must be in [-128, 127], not {value}")
        if self.out_min > self.out_max:
            raise ValueError(f"out_min ({self.out_min}) must not exceed out_max ({self.out_max})")

    @property
    def shape(self):
        """(M, K, N)."""
        return self.a.shape[0], self.a.shape[1], self.w.shape[1]

    @property
    def macs(self):
        m, k, n = self.shape
        return m * k * n

    def reference(self, acc_bits: int = 32) -> np.ndarray:
        """The kernel-level golden result (M×N int64 holding int8 or int32 values)."""
        acc = matmul_integer(self.a.astype(np.int32), self.w.astype(np.int32), self.a_zero_point, 0,
                             acc_bits=acc_bits)
        return _finish(acc, self.bias, self.multiplier, self.shift, self)


def _per_channel(value, n, default, name):
    if value is None:
        return np.full(n, default, dtype=np.int64)
    arr = np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)).copy()
    return arr


def _finish(acc, bias, multiplier, shift, job):
    if job.raw:
        total = acc.astype(np.int64) + bias.astype(np.int64)
        return ((total + (1 << 31)) % (1 << 32)) - (1 << 31)
    return requantize(acc, multiplier, shift, bias=bias, out_zero_point=job.out_zero_point,
                      out_min=job.out_min, out_max=job.out_max).astype(np.int64)


@dataclass
class TileCommand:
    """Fields of the core's ``cmd`` stream."""
    m_rows: int
    first: bool
    last: bool
    a_zero_point: int


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
    act_rows: list[np.ndarray] = field(default_factory=list)      # each: rows lanes
    quant: list[QuantTile] = field(default_factory=list)
    result_rows: list[np.ndarray] = field(default_factory=list)   # each: cols lanes

    def extend(self, other: "TileProgram") -> None:
        for name in ("commands", "weight_rows", "act_rows", "quant", "result_rows"):
            getattr(self, name).extend(getattr(other, name))


def lower_gemm(config, job: GemmJob) -> TileProgram:
    """Cut ``job`` into tile operations for the GEMM core of ``config``."""
    R, C, depth = config.rows, config.cols, config.acc_depth
    M, K, N = job.shape
    k_tiles, n_tiles = math.ceil(K / R), math.ceil(N / C)
    a = np.full((M, k_tiles * R), job.a_zero_point, dtype=np.int64)
    a[:, :K] = job.a
    w = np.zeros((k_tiles * R, n_tiles * C), dtype=np.int64)
    w[:K, :N] = job.w
    pad = n_tiles * C - N
    bias = np.concatenate([job.bias, np.zeros(pad, np.int64)])
    multiplier = np.concatenate([job.multiplier, np.zeros(pad, np.int64)])
    shift = np.concatenate([job.shift, np.zeros(pad, np.int64)])
    acc = matmul_integer(a.astype(np.int32), w.astype(np.int32), job.a_zero_point, 0,
                         acc_bits=config.acc_bits)
    expected = _finish(acc, bias, multiplier, shift, job)

    program = TileProgram()
    for m0 in range(0, M, depth):
        m_rows = min(depth, M - m0)
        for nt in range(n_tiles):
            n0 = nt * C
            for kt in range(k_tiles):
                k0 = kt * R
                last = kt == k_tiles - 1
                program.commands.append(TileCommand(m_rows, kt == 0, last, job.a_zero_point))
                program.weight_rows.extend(w[k0:k0 + R, n0:n0 + C])
                program.act_rows.extend(a[m0:m0 + m_rows, k0:k0 + R])
                if last:
                    program.quant.append(QuantTile(
                        bias[n0:n0 + C], multiplier[n0:n0 + C], shift[n0:n0 + C],
                        job.out_zero_point, job.out_min, job.out_max, job.raw))
                    program.result_rows.extend(expected[m0:m0 + m_rows, n0:n0 + C])
    return program


def assemble(config, job: GemmJob, rows) -> np.ndarray:
    """Place result rows (in program order) back into the M×N output matrix."""
    program_origin = result_origins(config, job)
    M, _, N = job.shape
    out = np.zeros((M, N), dtype=np.int64)
    rows = list(rows)
    if len(rows) != len(program_origin):
        raise ValueError(f"expected {len(program_origin)} result rows, got {len(rows)}")
    for row, (m, n0) in zip(rows, program_origin):
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


def ideal_cycles(config, m: int, k: int, n: int) -> int:
    """⌈M·K·N / (R·C)⌉: cycles of a perfectly utilised array."""
    return math.ceil(m * k * n / config.pes)


def random_gemm_job(rng: np.random.Generator, m: int, k: int, n: int, *,
                    raw: bool = False, extremes: bool = False) -> GemmJob:
    """A random GEMM with nonzero zero points and realistic requantization parameters.

    ``extremes`` draws operands only from {-128, 127} (activations) and {-127, 127}
    (weights) to exercise the widest products and sums.
    """
    if extremes:
        a = rng.choice(np.array([-128, 127]), size=(m, k))
        w = rng.choice(np.array([-127, 127]), size=(k, n))
    else:
        a = rng.integers(-128, 128, size=(m, k))
        w = rng.integers(-127, 128, size=(k, n))
    a_zp = int(rng.integers(-128, 128))
    bias = rng.integers(-(1 << 20), 1 << 20, size=n)
    # Real multipliers spanning typical requantization scales (about 2^-14 .. 2^-4).
    multiplier = rng.integers(1 << 30, (1 << 31) - 1, size=n, endpoint=True)
    shift = rng.integers(-14, -3, size=n, endpoint=True)
    out_zp = int(rng.integers(-128, 128))
    out_min, out_max = sorted(int(v) for v in rng.integers(-128, 128, size=2))
    if rng.random() < 0.5:
        out_min, out_max = -128, 127
    return GemmJob(a, w, a_zp, bias, multiplier, shift, out_zp, out_min, out_max, raw)
