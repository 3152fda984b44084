"""Binary (XNOR-popcount) quantization, bit packing and GEMM.

Values are ±1, stored as bits (1 → +1, 0 → −1), eight per byte, element ``8j + i`` in
bit ``i`` of byte ``j``.  For K elements ``dot(a, w) = 2·popcount(XNOR(a, w)) − K``;
padding bits up to the byte boundary are masked and never counted, whatever they hold.

Weights are binarized XNOR-Net style: ``w ≈ α·sign(w)`` with one ``α = mean|w|`` per
output channel; activations by their sign (0 counts as +1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["binarize_weights", "binarize_activations", "pack_bits", "unpack_bits",
           "xnor_popcount_gemm"]


def binarize_weights(w, *, axis=-1):
    """``(signs, alpha)``: ±1 int8 signs of ``w`` and ``α = mean|w|`` per index of ``axis``.

    ``axis`` is the output-channel axis (the last one for a K×N weight matrix).
    """
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0:
        raise ValueError("w must not be empty")
    if not np.isfinite(w).all():
        raise ValueError("w must be finite")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or \
            not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis must be in [{-w.ndim}, {w.ndim - 1}], not {axis!r}")
    axis = int(axis) % w.ndim
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    alpha = np.abs(w).mean(axis=reduce).astype(np.float32)
    return binarize_activations(w), alpha


def binarize_activations(x):
    """±1 signs of ``x`` as int8 (``x >= 0`` → +1)."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError("x must be finite")
    return np.where(x >= 0, 1, -1).astype(np.int8)


def _check_signs(name, signs):
    signs = np.asarray(signs)
    if signs.size and not np.isin(signs, (-1, 1)).all():
        bad = signs[~np.isin(signs, (-1, 1))].flat[0]
        raise ValueError(f"{name} must hold only -1 and +1, found {bad!r}")
    return signs


def pack_bits(signs, *, axis=-1, pad=0):
    """Pack ±1 values eight per byte along ``axis``; padding bits are set to ``pad`` (0/1)."""
    signs = np.moveaxis(_check_signs("signs", signs), axis, -1)
    if pad not in (0, 1):
        raise ValueError(f"pad must be 0 or 1, not {pad!r}")
    bits = (signs > 0).astype(np.uint8)
    extra = -bits.shape[-1] % 8
    if extra:
        bits = np.concatenate([bits, np.full(bits.shape[:-1] + (extra,), pad, np.uint8)],
                              axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little").view(np.int8)
    return np.moveaxis(packed, -1, axis)


def unpack_bits(packed, count, *, axis=-1):
    """Inverse of :func:`pack_bits`: the first ``count`` ±1 values along ``axis``."""
    packed = np.moveaxis(np.asarray(packed), axis, -1)
    if packed.dtype not in (np.int8, np.uint8):
        raise TypeError(f"packed must be int8 or uint8 bytes, not {packed.dtype}")
    if not 0 <= count <= 8 * packed.shape[-1]:
        raise ValueError(f"count must be in 0..{8 * packed.shape[-1]}, not {count}")
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[..., :count]
    return np.moveaxis(np.where(bits == 1, 1, -1).astype(np.int8), -1, axis)


def xnor_popcount_gemm(a_packed, w_packed, k):
    """``2·popcount(XNOR(a, w) & valid) − K`` for packed M×⌈K/8⌉ and ⌈K/8⌉×N operands."""
    a_packed = np.asarray(a_packed)
    w_packed = np.asarray(w_packed)
    for name, packed in (("a_packed", a_packed), ("w_packed", w_packed)):
        if packed.dtype not in (np.int8, np.uint8):
            raise TypeError(f"{name} must be int8 or uint8 bytes, not {packed.dtype}")
    nbytes = -(-k // 8)
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if a_packed.ndim != 2 or a_packed.shape[1] != nbytes:
        raise ValueError(f"a_packed must be M×{nbytes} bytes for k={k}, not {a_packed.shape}")
    if w_packed.ndim != 2 or w_packed.shape[0] != nbytes:
        raise ValueError(f"w_packed must be {nbytes}×N bytes for k={k}, not {w_packed.shape}")
    valid = np.zeros(nbytes * 8, dtype=np.uint8)
    valid[:k] = 1
    mask = np.packbits(valid, bitorder="little")
    a = a_packed.view(np.uint8)[:, :, None]
    w = w_packed.view(np.uint8)[None, :, :]
    agree = ~(a ^ w) & mask[None, :, None]
    matches = np.unpackbits(agree[..., None], axis=-1).sum(axis=(1, 3), dtype=np.int64)
    return 2 * matches - k
