"""Seeded random kernels compiled for the NPU: the benchmarks', the demo's and the tests'.

Each function draws operands and realistic quantization parameters from ``rng`` and
returns the :class:`~npugen.golden.compiler.CompiledProgram` (which carries the golden
outputs).  The same seed gives the same program.
"""

from __future__ import annotations

import numpy as np

from .attention import AttentionParams
from .bf16_gemm import random_bf16
from .compiler import compile_attention, compile_bf16_gemm, compile_conv2d, compile_gemm
from .tile_program import random_gemm_job

__all__ = ["gemm_program", "conv_program", "attention_program"]


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def gemm_program(config, rng: np.random.Generator, *, m: int, k: int, n: int,
                 dtype: str = "int8", sparsity: str | None = None, base: int = 0):
    """A random M×K×N GEMM (``dtype`` int8/int4/binary, optional 2:4 weights; bf16 with
    FP32 results)."""
    m, k, n = (_positive(name, v) for name, v in (("m", m), ("k", k), ("n", n)))
    if dtype == "bf16":
        if sparsity is not None:
            raise ValueError(f"sparsity must be None with dtype 'bf16', not {sparsity!r}")
        return compile_bf16_gemm(config, random_bf16(rng, (m, k)), random_bf16(rng, (k, n)),
                                 base=base)
    job = random_gemm_job(rng, m, k, n, mode=dtype, sparsity=sparsity)
    return compile_gemm(config, job, base=base)


def conv_program(config, rng: np.random.Generator, *, h: int, w: int, cin: int, cout: int,
                 kernel: int = 3, stride: int = 1, padding: int = 0, dilation: int = 1,
                 groups: int = 1, batch: int = 1, base: int = 0):
    """A random int8 conv2d layer: NHWC input ``batch×h×w×cin``, ``kernel×kernel`` taps."""
    for name, value in (("h", h), ("w", w), ("cin", cin), ("cout", cout), ("kernel", kernel),
                        ("stride", stride), ("dilation", dilation), ("groups", groups),
                        ("batch", batch)):
        _positive(name, value)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, not {padding!r}")
    if cin % groups or cout % groups:
        raise ValueError(f"groups must divide cin and cout, not groups={groups} with "
                         f"cin={cin}, cout={cout}")
    x = rng.integers(-128, 128, (batch, h, w, cin)).astype(np.int8)
    weights = rng.integers(-127, 128, (kernel, kernel, cin // groups, cout)).astype(np.int8)
    # Scale the products of a K-long dot product back to int8 (about 2^-9 .. 2^-12).
    return compile_conv2d(
        config, x, weights, x_zero_point=int(rng.integers(-20, 21)),
        bias=rng.integers(-5000, 5000, cout), multiplier=rng.integers(1 << 30, 1 << 31, cout),
        shift=rng.integers(-12, -8, cout), out_zero_point=int(rng.integers(-10, 11)),
        stride=stride, padding=padding, dilation=dilation, groups=groups, base=base)


def attention_program(config, rng: np.random.Generator, *, seq: int, dim: int, heads: int = 1,
                      kv_seq: int | None = None, base: int = 0):
    """A random int8 attention block: ``heads`` heads of ``dim``, queries ``seq`` long."""
    seq, dim, heads = _positive("seq", seq), _positive("dim", dim), _positive("heads", heads)
    kv_seq = seq if kv_seq is None else _positive("kv_seq", kv_seq)
    q = rng.integers(-127, 128, (seq, heads * dim)).astype(np.int8)
    k = rng.integers(-127, 128, (kv_seq, heads * dim)).astype(np.int8)
    v = rng.integers(-127, 128, (kv_seq, heads * dim)).astype(np.int8)
    params = AttentionParams.from_scales(q_scale=float(rng.uniform(0.005, 0.03)),
                                         k_scale=float(rng.uniform(0.005, 0.03)),
                                         v_scale=float(rng.uniform(0.01, 0.05)),
                                         out_scale=float(rng.uniform(0.01, 0.05)), head_dim=dim,
                                         out_zero_point=int(rng.integers(-10, 11)))
    return compile_attention(config, q, k, v, params, heads=heads, base=base)
