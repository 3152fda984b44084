"""INT4 quantization and packing (two values per byte, low nibble first).

INT4 values are signed in [-8, 7] — the ONNX ``QuantizeLinear`` int4 range — for
activations (with a zero point) and weights (symmetric, zero point 0).  The GEMM
accumulates in int32 and requantizes exactly like INT8 (``golden.quant.requantize``),
with the output clamp usually [-8, 7].
"""

from __future__ import annotations

import numpy as np

from .gemm import matmul_integer
from .quant import choose_qparams, quantize, requantize

__all__ = ["INT4_MIN", "INT4_MAX", "choose_int4_qparams", "quantize_int4", "pack_int4",
           "unpack_int4", "qgemm_int4"]

INT4_MIN, INT4_MAX = -8, 7


def choose_int4_qparams(x, *, symmetric, axis=None):
    """Scale and zero point for int4 (symmetric: [-7, 7], zero point 0; else [-8, 7])."""
    if symmetric:
        return choose_qparams(x, symmetric=True, axis=axis, qmax=INT4_MAX)
    return choose_qparams(x, symmetric=False, axis=axis, qmin=INT4_MIN, qmax=INT4_MAX)


def quantize_int4(x, scale, zero_point=0, *, axis=None):
    """Quantize to int4 values held in an int8 array."""
    q = quantize(x, scale, zero_point, qmin=INT4_MIN, qmax=INT4_MAX, axis=axis)
    return np.asarray(q, dtype=np.int8)


def _check_int4(name, values):
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {values.dtype}")
    if values.size and (values.min() < INT4_MIN or values.max() > INT4_MAX):
        bad = values[(values < INT4_MIN) | (values > INT4_MAX)].flat[0]
        raise ValueError(f"{name} must hold int4 values in [-8, 7], found {int(bad)}")
    return values.astype(np.int64)


def pack_int4(values, *, axis=-1, pad=0):
    """Pack int4 values two per byte along ``axis`` (element 2j → low nibble of byte j).

    An odd length is padded with ``pad``.  Returns int8 bytes.
    """
    values = np.moveaxis(_check_int4("values", values), axis, -1)
    _check_int4("pad", np.asarray([pad]))
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.full(values.shape[:-1] + (1,), pad)], axis=-1)
    lo, hi = values[..., 0::2] & 0xF, values[..., 1::2] & 0xF
    packed = (lo | (hi << 4)).astype(np.uint8).view(np.int8)
    return np.moveaxis(packed, -1, axis)


def unpack_int4(packed, count, *, axis=-1):
    """Inverse of :func:`pack_int4`: the first ``count`` int4 values along ``axis``."""
    packed = np.moveaxis(np.asarray(packed), axis, -1)
    if packed.dtype not in (np.int8, np.uint8):
        raise TypeError(f"packed must be int8 or uint8 bytes, not {packed.dtype}")
    if not 0 <= count <= 2 * packed.shape[-1]:
        raise ValueError(f"count must be in 0..{2 * packed.shape[-1]}, not {count}")
    raw = packed.view(np.uint8).astype(np.int64)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    values = np.where(nibbles >= 8, nibbles - 16, nibbles)[..., :count].astype(np.int8)
    return np.moveaxis(values, -1, axis)


def qgemm_int4(a, w, *, a_zero_point=0, bias=0, multiplier, shift, out_zero_point=0,
               out_min=INT4_MIN, out_max=INT4_MAX, acc_bits=32, output="int4"):
    """INT4 GEMM: ``requantize(Σ (a − za)·w + bias)`` with int4 operands (unpacked).

    ``output="int4"`` returns the requantized values (clamped to ``[out_min, out_max]``,
    by default the int4 range) as int8; ``output="int32"`` the accumulators + bias.
    """
    a = _check_int4("a", a)
    w = _check_int4("w", w)
    if not INT4_MIN <= int(a_zero_point) <= INT4_MAX:
        raise ValueError(f"a_zero_point must be in [-8, 7], not {a_zero_point}")
    if output not in ("int4", "int32"):
        raise ValueError(f"output must be 'int4' or 'int32', not {output!r}")
    acc = matmul_integer(a.astype(np.int8), w.astype(np.int8), int(a_zero_point), 0,
                         acc_bits=acc_bits)
    total = _wrap(acc + np.asarray(bias, dtype=np.int64), acc_bits)
    if output == "int32":
        return total
    return np.asarray(requantize(total, multiplier, shift, out_zero_point=out_zero_point,
                                 out_min=out_min, out_max=out_max), dtype=np.int8)


def _wrap(values, bits):
    half = 1 << (bits - 1)
    return (np.asarray(values, dtype=np.int64) + half) % (1 << bits) - half
