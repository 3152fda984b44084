"""BF16 GEMM with FP32 accumulation in the NPU's fixed order, and its operand layout.

``C = A · W`` for BF16 ``A`` (M×K) and ``W`` (K×N), computed as the systolic array
does in bf16 mode (see ``docs/ISA.md``, MATMUL):

* every product ``p = fp32(a · w)`` is the float32 product of the two BF16 values
  (exact unless it leaves float32's normal range; then rounded once, to nearest even,
  with IEEE subnormals);
* K is cut into tiles of ``k_tile`` elements; tile ``t`` gives
  ``s_t = (((+0 + p₀) + p₁) + …)`` in k order, every addition rounded to float32;
* ``acc = s_0``, then ``acc = fp32(acc + s_t)`` for t = 1, 2, …

NaNs are canonical (0x7FC00000).  Everything runs on NumPy float32 arithmetic and
``ml_dtypes.bfloat16`` (:mod:`npugen.golden.floating`), which are IEEE-754 with round
to nearest even: the order above is the only thing this module adds.

Operand layout on the NPU's 8-bit lanes: BF16 element j of an activation row is lanes
2j (low byte) and 2j+1 (high byte); weight row j of a tile is the two weight rows 2j
(low bytes) and 2j+1 (high bytes).
"""

from __future__ import annotations

import numpy as np

from .floating import (BFLOAT16, bf16_product_fp32, bf16_to_bits, fp32_accumulate, fp32_to_bits,
                       special_values)

__all__ = ["bf16_gemm", "bf16_tile_sum", "split_bytes", "join_bytes", "random_bf16"]


def _bits16(name, values):
    values = np.asarray(values)
    if values.dtype.kind not in "iu" or values.size and (values.min() < 0 or
                                                         values.max() > 0xFFFF):
        raise ValueError(f"{name} must hold 16-bit BF16 encodings (integers 0..65535)")
    return values.astype(np.uint16)


def bf16_tile_sum(a_bits, w_bits, k_valid=None) -> np.ndarray:
    """FP32 sums of one K tile: ``(((+0 + p₀) + p₁) + …)`` over ``k < k_valid``.

    ``a_bits`` M×k, ``w_bits`` k×N (BF16 encodings); returns M×N float32.
    """
    a = _bits16("a_bits", a_bits)
    w = _bits16("w_bits", w_bits)
    k = a.shape[1] if k_valid is None else k_valid
    products = bf16_product_fp32(a[:, :k, None], w[None, :k, :])     # M, k, N
    return fp32_accumulate(np.moveaxis(products, 1, 0))


def bf16_gemm(a_bits, w_bits, k_tile: int) -> np.ndarray:
    """``A · W`` in the NPU's order (module docstring): FP32 encodings (uint32), M×N."""
    a = _bits16("a_bits", a_bits)
    w = _bits16("w_bits", w_bits)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0] or a.shape[1] == 0:
        raise ValueError(f"a_bits and w_bits must be M×K and K×N with K ≥ 1, not "
                         f"{a.shape} and {w.shape}")
    if isinstance(k_tile, bool) or not isinstance(k_tile, int) or k_tile < 1:
        raise ValueError(f"k_tile must be a positive integer, not {k_tile!r}")
    acc = None
    for k0 in range(0, a.shape[1], k_tile):
        s = bf16_tile_sum(a[:, k0:k0 + k_tile], w[k0:k0 + k_tile])
        if acc is None:
            acc = s
        else:
            with np.errstate(all="ignore"):
                acc = (acc + s).astype(np.float32)
    return fp32_to_bits(acc)


def split_bytes(bits, axis: int) -> np.ndarray:
    """BF16 encodings → bytes, each element becoming (low, high) along ``axis``."""
    bits = _bits16("bits", bits)
    pair = np.stack([bits & 0xFF, bits >> 8], axis=axis + 1 if axis >= 0 else axis)
    shape = list(bits.shape)
    shape[axis] *= 2
    return pair.reshape(shape).astype(np.uint8)


def join_bytes(lanes, axis: int) -> np.ndarray:
    """The inverse of :func:`split_bytes`: pairs of bytes along ``axis`` → BF16 encodings."""
    lanes = np.asarray(lanes).astype(np.int64) & 0xFF
    lanes = np.moveaxis(lanes, axis, -1)
    joined = lanes[..., 0::2] | (lanes[..., 1::2] << 8)
    return np.moveaxis(joined, -1, axis).astype(np.uint16)


def random_bf16(rng: np.random.Generator, shape, *, specials: float = 0.0,
                spread: int = 4) -> np.ndarray:
    """Random BF16 encodings: normal values times ``2**e`` with ``|e| ≤ spread``, and a
    ``specials`` fraction drawn from the special classes (zeros, subnormals, extremes,
    ±∞, NaNs) so the FP corner cases occur inside GEMMs."""
    if not 0.0 <= specials <= 1.0:
        raise ValueError(f"specials must be a fraction in [0, 1], not {specials!r}")
    values = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, shape))
    bits = bf16_to_bits(values.astype(np.float32))
    pick = rng.random(shape) < specials
    pool = np.array(special_values(BFLOAT16), dtype=np.uint16)
    bits[pick] = rng.choice(pool, int(pick.sum()))
    return bits
