"""Quantized matrix multiplication, bit-exact with the NPU's INT8 datapath.

:func:`matmul_integer` is ONNX ``MatMulInteger`` with an accumulator of configurable
width; :func:`qgemm` is the NPU's INT8 GEMM: asymmetric int8 activations, symmetric
int8 weights, an int32 bias per output channel, and the integer requantizer of
:mod:`npugen.golden.quant`.
"""

from __future__ import annotations

import numpy as np

from .quant import INT32_MAX, INT32_MIN, SHIFT_MAX, SHIFT_MIN, _int_array, _int_scalar, requantize

__all__ = ["matmul_integer", "qgemm"]

_OUTPUTS = ("int8", "int32")


def _operand(name, value, dims):
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, not {arr.dtype}")
    if arr.dtype.itemsize > 4:
        raise TypeError(f"{name} must have an integer dtype of at most 32 bits, not {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array {dims}, not shape {arr.shape}")
    return arr


def _zero_point(name, value, operand, operand_name, length, what):
    info = np.iinfo(operand.dtype)
    zp = _int_array(name, value, info.min, info.max, f"{operand.dtype} ")
    if zp.ndim != 0 and zp.shape != (length,):
        raise ValueError(f"{name} must be a scalar or have shape ({length},) ({what} of "
                         f"{operand_name}), not {zp.shape}")
    return zp


def _per_channel(name, value, n, lo, hi, kind=""):
    arr = _int_array(name, value, lo, hi, kind)
    if arr.ndim != 0 and arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), not {arr.shape}")
    return arr


def _int8_operand(name, value):
    """``value`` if it is an int8 NumPy array; a TypeError naming ``name`` otherwise."""
    dtype = getattr(value, "dtype", None)
    if not isinstance(value, np.ndarray) or dtype != np.int8:
        got = dtype if dtype is not None else type(value).__name__
        raise TypeError(f"{name} must be an int8 NumPy array, not {got}")
    return value


def _int8_out_params(out_zero_point, out_min, out_max):
    """The int8 output zero point and clamp ``[out_min, out_max]``, checked."""
    out_zero_point = _int_scalar("out_zero_point", out_zero_point, -128, 127)
    out_min = _int_scalar("out_min", out_min, -128, 127)
    out_max = _int_scalar("out_max", out_max, -128, 127)
    if out_min > out_max:
        raise ValueError(f"out_min must not exceed out_max, not out_min={out_min}, "
                         f"out_max={out_max}")
    return out_zero_point, out_min, out_max


def _requant_params(n, bias, multiplier, shift, out_zero_point, out_min, out_max):
    """The checked requantization of ``n`` output channels: ``bias`` (int32),
    ``multiplier`` (Q31 in ``[0, 2**31 - 1]``) and ``shift`` (``[-31, 30]``) as scalars or
    ``(n,)`` arrays, then :func:`_int8_out_params`."""
    return (_per_channel("bias", bias, n, INT32_MIN, INT32_MAX, "int32 "),
            _per_channel("multiplier", multiplier, n, 0, INT32_MAX),
            _per_channel("shift", shift, n, SHIFT_MIN, SHIFT_MAX),
            *_int8_out_params(out_zero_point, out_min, out_max))


def _wrap_u64(values, bits):
    """Sign-extend the low ``bits`` bits of uint64 ``values`` into int64."""
    unused = np.uint64(64 - bits)
    return (values << unused).view(np.int64) >> (64 - bits)


def _check_acc_bits(acc_bits, lo):
    return _int_scalar("acc_bits", acc_bits, lo, 64)


def _matmul_wrapped(a, b, za, zb, acc_bits):
    da = a.astype(np.int64) - (za[:, None] if za.ndim else za)
    db = b.astype(np.int64) - zb
    # Unsigned arithmetic wraps modulo 2**64 by definition, so the low acc_bits bits
    # are exact for any K, however large the sum.
    product = np.matmul(np.ascontiguousarray(da).view(np.uint64),
                        np.ascontiguousarray(db).view(np.uint64))
    return _wrap_u64(product, acc_bits)


def matmul_integer(a, b, a_zero_point=0, b_zero_point=0, *, acc_bits=32):
    """``sum_k (a[m, k] - a_zero_point) * (b[k, n] - b_zero_point)`` in an ``acc_bits`` accumulator.

    ``a`` is ``(M, K)`` and ``b`` is ``(K, N)``, of any integer dtype up to 32 bits
    (int8 and uint8 as in ONNX ``MatMulInteger``).  ``a_zero_point`` is a scalar or one
    value per row ``(M,)``; ``b_zero_point`` a scalar or one value per column ``(N,)``;
    each must be representable in its operand's dtype.  The sum wraps modulo
    ``2**acc_bits`` (two's complement, ``acc_bits`` in ``[2, 64]``) and is returned
    sign-extended in an int64 array.  Because the wrap is modular, the result does not
    depend on the order of accumulation or on folding the zero points into a bias.
    """
    a = _operand("a", a, "(M, K)")
    b = _operand("b", b, "(K, N)")
    if b.shape[0] != a.shape[1]:
        raise ValueError(f"b must have {a.shape[1]} rows to match the columns of a, "
                         f"not shape {b.shape}")
    za = _zero_point("a_zero_point", a_zero_point, a, "a", a.shape[0], "one per row")
    zb = _zero_point("b_zero_point", b_zero_point, b, "b", b.shape[1], "one per column")
    acc_bits = _check_acc_bits(acc_bits, 2)
    return _matmul_wrapped(a, b, za, zb, acc_bits)


def qgemm(a, w, *, a_zero_point, bias, multiplier, shift, out_zero_point,
          out_min=-128, out_max=127, acc_bits=32, output="int8"):
    """The NPU's INT8 GEMM: ``requantize(a @ w + bias)`` with int8 operands.

    ``a`` is an ``(M, K)`` int8 array of activations with ``a_zero_point`` in
    ``[-128, 127]``; ``w`` is a ``(K, N)`` int8 array of symmetric weights in
    ``[-127, 127]`` (zero point 0).  ``bias`` (int32), ``multiplier`` (Q31 ``m0`` in
    ``[0, 2**31 - 1]``) and ``shift`` (``[-31, 30]``) are scalars or one value per
    output channel ``(N,)``.

    The bias is added into the accumulator, and the sum of products plus bias wraps
    modulo ``2**acc_bits`` (``acc_bits`` in ``[16, 64]``).  ``output="int32"`` returns
    that accumulator (np.int32, or np.int64 when ``acc_bits > 32``);
    ``output="int8"`` (which needs ``acc_bits <= 32``) sign-extends it to int32 and
    returns :func:`~npugen.golden.quant.requantize` with ``out_zero_point`` and the
    clamp ``[out_min, out_max]`` (a subrange of int8) as an np.int8 array.
    """
    if not isinstance(output, str) or output not in _OUTPUTS:
        raise ValueError(f"output must be 'int8' or 'int32', not {output!r}")
    a = _int8_operand("a", a)
    w = _int8_operand("w", w)
    if a.ndim != 2:
        raise ValueError(f"a must be a 2-D array (M, K), not shape {a.shape}")
    if w.ndim != 2:
        raise ValueError(f"w must be a 2-D array (K, N), not shape {w.shape}")
    if w.shape[0] != a.shape[1]:
        raise ValueError(f"w must have {a.shape[1]} rows to match the columns of a, "
                         f"not shape {w.shape}")
    _int_array("w", w, -127, 127, "symmetric int8 ")
    n = w.shape[1]
    za = np.asarray(_int_scalar("a_zero_point", a_zero_point, -128, 127))
    bias, multiplier, shift, out_zero_point, out_min, out_max = _requant_params(
        n, bias, multiplier, shift, out_zero_point, out_min, out_max)
    acc_bits = _check_acc_bits(acc_bits, 16)
    if output == "int8" and acc_bits > 32:
        raise ValueError(f"acc_bits must be at most 32 for output='int8', not {acc_bits}")

    acc = _matmul_wrapped(a, w, za, np.asarray(0), 64)
    acc = _wrap_u64(acc.view(np.uint64) + bias.view(np.uint64), acc_bits)
    if output == "int32":
        return acc.astype(np.int32 if acc_bits <= 32 else np.int64)
    out = requantize(acc, multiplier, shift, out_zero_point=out_zero_point,
                     out_min=out_min, out_max=out_max)
    return np.asarray(out, dtype=np.int8)
