"""Sparse × dense matrix multiplication: golden kernels and the sparse engine's program.

Kernels
-------
:func:`spmm_integer` computes ``Σ_k (a[m, k] - a_zero_point) · w[k, n]`` visiting only
the stored entries of a compressed weight matrix (CSR of ``Wᵀ``, bitmask or N:M); it
equals :func:`npugen.golden.gemm.matmul_integer` on the dense weights bit for bit,
including the wrap at ``acc_bits``.  :func:`sparse_qgemm` adds the bias and the
requantizer and equals :func:`npugen.golden.gemm.qgemm`.

The sparse engine's stream contract
-----------------------------------
:func:`lower_spmm` turns a :class:`~npugen.golden.tile_program.GemmJob` into the streams
of ``npugen.hw.sparse_engine.SparseEngine`` (``V = rows``, ``P = spmm_lanes``):

* M is cut into blocks of ``V`` rows (the last block padded with the activation zero
  point; its padded results are dropped on reassembly).  One ``cmd`` per block.
* ``act``: ``K`` beats per block, beat ``k`` = ``A[m0:m0+V, k]``.
* ``nz``: the CSR of ``Wᵀ`` (one compressed row per output channel ``n``), each
  channel's entries dealt into beats of up to ``P`` (index, value) pairs; the beat that
  ends a channel has ``last`` set, and an all-zero channel is a single empty ``last``
  beat.  The ``nnz`` of the command is the CSR's ``indptr[-1]``.
* ``quant``: one beat per channel per block (bias, Q31 multiplier, shift).
* ``result``: one row per channel per block: ``V`` int32 lanes (rows ``m0..m0+V-1`` of
  output column ``n``; int8 results sign-extended, ``raw`` gives ``acc + bias``).

:func:`spmm_cycles` predicts the engine's cycles for uninterrupted streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .gemm import qgemm
from .quant import requantize
from .sparse_formats import BitmaskMatrix, CSRMatrix, NMMatrix

__all__ = ["weight_csr", "dense_reference", "spmm_integer", "sparse_qgemm", "SpmmProgram", "lower_spmm",
           "assemble_spmm", "channel_beats", "spmm_cycles", "RESULT_LATENCY"]

#: Cycles from the last ``nz`` beat issued to its result row taken from ``result`` as
#: the testbench measures it: activation read, products, lane sum, accumulate, the
#: eleven requantizer stages (``npugen.hw.requantizer.LATENCY``), the result FIFO and the
#: stream hand-over.
RESULT_LATENCY = 17


def weight_csr(w, *, zero_point=0) -> CSRMatrix:
    """The CSR of ``Wᵀ`` for a K×N weight matrix: one compressed row per output channel."""
    return CSRMatrix.from_dense(np.asarray(w).T, zero_point=zero_point)


def dense_reference(job, acc_bits: int = 32) -> np.ndarray:
    """The dense path's result for a ``GemmJob``: :func:`~npugen.golden.gemm.qgemm`
    (``output="int32"`` when ``job.raw``), as an int64 M×N array.

    The bias is added into the ``acc_bits`` accumulator and wraps with it, as in the
    hardware's requantizer; sparse results must equal this bit for bit.
    """
    out = qgemm(np.asarray(job.a).astype(np.int8), np.asarray(job.w).astype(np.int8),
                a_zero_point=job.a_zero_point, bias=job.bias, multiplier=job.multiplier,
                shift=job.shift, out_zero_point=job.out_zero_point, out_min=job.out_min,
                out_max=job.out_max, acc_bits=acc_bits,
                output="int32" if job.raw else "int8")
    return out.astype(np.int64)


def _wrap(values, bits):
    values = np.asarray(values, dtype=np.int64)
    unused = 64 - bits
    return (values.view(np.uint64) << np.uint64(unused)).view(np.int64) >> unused


def _entries(w_sparse, k_dim):
    """(k, n, value - zero_point) of every stored entry, and (K, N)."""
    if isinstance(w_sparse, CSRMatrix):
        N, K = w_sparse.shape
        return (w_sparse.indices, w_sparse.row_of_entries(),
                w_sparse.values - w_sparse.zero_point, K, N)
    if isinstance(w_sparse, BitmaskMatrix):
        K, N = w_sparse.shape
        k, n = np.nonzero(w_sparse.bits())
        return k, n, w_sparse.values - w_sparse.zero_point, K, N
    if isinstance(w_sparse, NMMatrix):
        K, N = w_sparse.shape
        groups = math.ceil(K / w_sparse.m)
        slot = np.arange(groups * w_sparse.n) // w_sparse.n
        k = slot[:, None] * w_sparse.m + w_sparse.indices
        n = np.broadcast_to(np.arange(N), k.shape)
        v = w_sparse.values - w_sparse.zero_point
        inside = k < K      # slots in the padding of a short group hold the zero point
        return k[inside], n[inside], v[inside], K, N
    raise TypeError(f"w_sparse must be a CSRMatrix (of Wᵀ), BitmaskMatrix or NMMatrix, "
                    f"not {type(w_sparse).__name__}")


def spmm_integer(a, w_sparse, a_zero_point=0, *, acc_bits=32) -> np.ndarray:
    """``(a - a_zero_point) @ W`` from the stored entries of ``w_sparse`` only.

    ``a`` is M×K (integer codes); ``w_sparse`` is a :class:`CSRMatrix` of ``Wᵀ`` (N×K,
    see :func:`weight_csr`), a :class:`BitmaskMatrix` or an :class:`NMMatrix` of W (K×N).
    Each stored entry contributes the column ``a[:, k] - a_zero_point`` times its
    effective value to output column ``n``; work is proportional to the entries stored.
    The sum wraps modulo ``2**acc_bits`` and is returned sign-extended (int64).
    """
    a = np.asarray(a)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer) or a.ndim != 2:
        raise TypeError(f"a must be a 2-D integer array, not {a.dtype} of shape {a.shape}")
    if isinstance(acc_bits, bool) or not isinstance(acc_bits, int) or not 2 <= acc_bits <= 64:
        raise ValueError(f"acc_bits must be an integer in [2, 64], not {acc_bits!r}")
    k, n, v, K, N = _entries(w_sparse, a.shape[1])
    if a.shape[1] != K:
        raise ValueError(f"a has {a.shape[1]} columns but the weights have K = {K}")
    da = a.astype(np.int64) - int(a_zero_point)
    acc = np.zeros((a.shape[0], N), dtype=np.int64)
    # Visit the entries channel by channel (|products| < 2**16: int64 is exact for any
    # K below 2**47, and the final wrap equals the accumulator's modular wrap).
    order = np.argsort(n, kind="stable")
    k, n, v = k[order], n[order], v[order]
    bounds = np.searchsorted(n, np.arange(N + 1))
    for col in range(N):
        lo, hi = bounds[col], bounds[col + 1]
        if hi > lo:
            acc[:, col] = da[:, k[lo:hi]] @ v[lo:hi]
    return _wrap(acc, acc_bits)


def sparse_qgemm(a, w_sparse, *, a_zero_point, bias, multiplier, shift, out_zero_point,
                 out_min=-128, out_max=127, acc_bits=32, output="int8") -> np.ndarray:
    """:func:`~npugen.golden.gemm.qgemm` with a compressed weight operand.

    Same arguments and result as ``qgemm`` (which validates them); the accumulation
    visits only the stored entries.
    """
    if output not in ("int8", "int32"):
        raise ValueError(f"output must be 'int8' or 'int32', not {output!r}")
    acc = spmm_integer(a, w_sparse, a_zero_point, acc_bits=64)
    n = acc.shape[1]
    bias = np.broadcast_to(np.asarray(bias, dtype=np.int64), (n,))
    acc = _wrap(acc + bias, acc_bits)
    if output == "int32":
        return acc.astype(np.int32 if acc_bits <= 32 else np.int64)
    return np.asarray(requantize(acc, multiplier, shift, out_zero_point=out_zero_point,
                                 out_min=out_min, out_max=out_max), dtype=np.int8)


# -- the sparse engine's streams -------------------------------------------------------------


def channel_beats(nnz_per_channel, lanes) -> np.ndarray:
    """``nz`` beats of every channel: ``max(1, ⌈nnz / lanes⌉)``."""
    nnz = np.asarray(nnz_per_channel, dtype=np.int64)
    return np.maximum(1, -(-nnz // lanes))


@dataclass
class SpmmProgram:
    """The five input streams of the sparse engine and the rows it must produce."""
    commands: list[dict] = field(default_factory=list)
    act_rows: list[list[int]] = field(default_factory=list)
    nz_beats: list[dict] = field(default_factory=list)
    quant: list[dict] = field(default_factory=list)
    result_rows: list[list[int]] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)   # (m0, n) of each row

    def extend(self, other: "SpmmProgram") -> None:
        for name in ("commands", "act_rows", "nz_beats", "quant", "result_rows", "origins"):
            getattr(self, name).extend(getattr(other, name))


def _check_fits(config, job):
    M, K, N = job.shape
    if K > config.acc_depth:
        raise ValueError(f"K = {K} exceeds the sparse engine's activation buffer "
                         f"(acc_depth = {config.acc_depth})")
    if N >= 1 << 16:
        raise ValueError(f"N = {N} exceeds the sparse engine's channel count (at most 65535)")


def lower_spmm(config, job, w_csr: CSRMatrix | None = None) -> SpmmProgram:
    """The sparse engine's streams for ``job`` (a ``GemmJob``).

    ``w_csr`` is the compressed weight operand, by default :func:`weight_csr` of
    ``job.w``; it must hold the same matrix (explicit zeros are allowed and cost work).
    """
    _check_fits(config, job)
    V, P = config.rows, config.spmm_lanes
    M, K, N = job.shape
    if w_csr is None:
        w_csr = weight_csr(job.w)
    if w_csr.shape != (N, K) or not np.array_equal(w_csr.to_dense().T, job.w):
        raise ValueError(f"w_csr must be the CSR of the job's Wᵀ ({N}×{K})")
    blocks = math.ceil(M / V)
    a = np.full((blocks * V, K), job.a_zero_point, dtype=np.int64)
    a[:M] = job.a
    expected = sparse_qgemm(
        a.astype(np.int8), w_csr, a_zero_point=job.a_zero_point, bias=job.bias,
        multiplier=job.multiplier, shift=job.shift, out_zero_point=job.out_zero_point,
        out_min=job.out_min, out_max=job.out_max, acc_bits=config.acc_bits,
        output="int32" if job.raw else "int8").astype(np.int64)

    nz = []
    for n in range(N):
        lo, hi = int(w_csr.indptr[n]), int(w_csr.indptr[n + 1])
        beats = max(1, math.ceil((hi - lo) / P))
        for b in range(beats):
            s, e = lo + b * P, min(hi, lo + (b + 1) * P)
            index = [int(i) for i in w_csr.indices[s:e]] + [0] * (P - (e - s))
            value = [int(v) for v in w_csr.values[s:e]] + [0] * (P - (e - s))
            nz.append({"count": e - s, "last": int(b == beats - 1),
                       "index": index, "value": value})
    quant = [{"bias": int(job.bias[n]), "multiplier": int(job.multiplier[n]),
              "shift": int(job.shift[n])} for n in range(N)]

    program = SpmmProgram()
    for blk in range(blocks):
        m0 = blk * V
        program.commands.append({
            "k": K, "n_cols": N, "nnz": int(w_csr.indptr[-1]),
            "a_zero_point": int(job.a_zero_point), "out_zero_point": int(job.out_zero_point),
            "out_min": int(job.out_min), "out_max": int(job.out_max), "raw": int(job.raw)})
        program.act_rows.extend([int(x) for x in a[m0:m0 + V, k]] for k in range(K))
        program.nz_beats.extend(nz)
        program.quant.extend(quant)
        program.result_rows.extend([int(x) for x in expected[m0:m0 + V, n]] for n in range(N))
        program.origins.extend((m0, n) for n in range(N))
    return program


def assemble_spmm(config, job, rows, program: SpmmProgram | None = None) -> np.ndarray:
    """Place result rows (in program order) into the M×N output matrix."""
    if program is None:
        program = lower_spmm(config, job)
    rows = list(rows)
    if len(rows) != len(program.origins):
        raise ValueError(f"expected {len(program.origins)} result rows, got {len(rows)}")
    M, _, N = job.shape
    out = np.zeros((M, N), dtype=np.int64)
    for row, (m0, n) in zip(rows, program.origins):
        height = min(config.rows, M - m0)
        out[m0:m0 + height, n] = np.asarray(row)[:height]
    return out


def spmm_cycles(config, m: int, k: int, nnz_per_channel) -> int:
    """Cycles of the sparse engine from the first input offered to the last result taken.

    Exact for streams that never pause and a sink that never back-pressures (as
    :func:`npugen.golden.perf_model.gemm_cycles` is for the GEMM core).  ``m``, ``k``
    are the GEMM's M and K; ``nnz_per_channel`` the stored entries of each of the N
    output channels.  The replayed rules:

    * a block command is accepted when the loader is idle and its bank is free (the
      block two before it has issued its last beat); the loader writes one activation
      column per cycle (K cycles) and the bank is usable the cycle after;
    * a block issues one ``nz`` beat per cycle (``channel_beats`` per channel), from
      the cycle its bank is full and the previous block has issued its last beat;
    * the last beat's result is taken :data:`RESULT_LATENCY` cycles after it issued.
    """
    blocks = math.ceil(m / config.rows)
    beats = int(channel_beats(nnz_per_channel, config.spmm_lanes).sum())
    loaded, issued = [], []          # cycle a block's cmd is accepted; its last issue
    for b in range(blocks):
        accept = 0 if b == 0 else loaded[-1] + k + 1
        if b >= 2:
            accept = max(accept, issued[b - 2] + 1)
        loaded.append(accept)
        start = accept + k + 1
        if b >= 1:
            start = max(start, issued[-1] + 1)
        issued.append(start + beats - 1)
    return issued[-1] + RESULT_LATENCY
