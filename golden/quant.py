"""Quantization and integer requantization, bit-exact with the NPU.

Two families live here:

* affine quantization of float tensors (:func:`choose_qparams`, :func:`quantize`,
  :func:`dequantize`), following ONNX ``QuantizeLinear``/``DequantizeLinear``;
* the integer-only requantizer of TFLite/gemmlowp (:func:`quantize_multiplier`,
  :func:`saturating_rounding_doubling_high_mul`, :func:`rounding_divide_by_pot`,
  :func:`multiply_by_quantized_multiplier`, :func:`requantize`), which the hardware
  implements, plus :func:`requantize_float`, the single-rounding rule of the ONNX
  ``QLinearMatMul`` reference.

All integer arithmetic is done on ``int64`` NumPy arrays holding ``int32`` values, so
every function is vectorised and broadcasts per channel (scale, multiplier and shift
arrays of shape ``(N,)`` apply along the last axis of an ``(M, N)`` array).  The
semantics, including every tie and saturation case, are described in
``docs/NUMERICS.md``.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "SHIFT_MIN",
    "SHIFT_MAX",
    "choose_qparams",
    "quantize",
    "dequantize",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "requantize",
    "requantize_float",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
#: Smallest accepted shift: a right shift by 31 bits.
SHIFT_MIN = -31
#: Largest accepted shift: a left shift by 30 bits (``1 << 31`` overflows int32).
SHIFT_MAX = 30

# -- validation helpers ---------------------------------------------------------------


def _int_array(name, value, lo, hi, kind=""):
    """``value`` as an int64 array after checking it holds integers in ``[lo, hi]``."""
    arr = np.asarray(value)
    if arr.dtype == object and all(isinstance(v, numbers.Integral)
                                   and not isinstance(v, (bool, np.bool_)) for v in arr.flat):
        # Python ints too large for any NumPy integer type.
        for v in arr.flat:
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be {kind}in [{lo}, {hi}], found {v}")
        arr = arr.astype(np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {arr.dtype} values")
    if arr.size:
        out = (arr < lo) | (arr > hi)
        if out.any():
            bad = arr.flat[np.flatnonzero(out)[0]]
            raise ValueError(f"{name} must be {kind}in [{lo}, {hi}], found {int(bad)}")
    return np.asarray(arr, dtype=np.int64)


def _int_scalar(name, value, lo, hi):
    """``value`` as a Python int after checking it is an integer in ``[lo, hi]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], found {value}")
    return value


def _float_array(name, value):
    """``value`` as a floating array (integer input becomes float64)."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, not {arr.dtype} values")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _positive_finite(name, arr):
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise ValueError(
            f"{name} must be finite and positive, found {float(arr.flat[np.flatnonzero(bad)[0]])!r}")


def _check_broadcast(name, arr, ref_name, ref):
    try:
        np.broadcast_shapes(arr.shape, ref.shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {arr.shape} does not broadcast against "
            f"{ref_name} of shape {ref.shape}") from None


def _check_range(qmin, qmax):
    qmin = _int_scalar("qmin", qmin, INT32_MIN, INT32_MAX)
    qmax = _int_scalar("qmax", qmax, INT32_MIN, INT32_MAX)
    if qmin >= qmax:
        raise ValueError(f"qmin must be less than qmax, not qmin={qmin}, qmax={qmax}")
    return qmin, qmax


def _normalize_axis(axis, ndim):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer or None, not {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim - 1}] for a {ndim}-D array, "
                         f"found {axis}")
    return int(axis) % ndim


def _per_axis(name, arr, x_shape, axis):
    """Reshape a per-tensor or per-axis parameter to broadcast against ``x_shape``."""
    if axis is None:
        if arr.ndim != 0:
            raise ValueError(f"{name} must be a scalar when axis is None, "
                             f"not an array of shape {arr.shape}")
        return arr
    if arr.shape != (x_shape[axis],):
        raise ValueError(f"{name} must have shape ({x_shape[axis]},) to match axis {axis} "
                         f"of x, not {arr.shape}")
    shape = [1] * len(x_shape)
    shape[axis] = x_shape[axis]
    return arr.reshape(shape)


def _code_dtype(qmin, qmax):
    for dtype in (np.int8, np.uint8, np.int16, np.uint16):
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    return np.int32


def _wrap(values, bits):
    """Two's-complement wrap of int64 ``values`` to ``bits`` bits, sign-extended."""
    values = np.asarray(values, dtype=np.int64)
    if bits == 64:
        return values
    unused = 64 - bits
    return (values.view(np.uint64) << np.uint64(unused)).view(np.int64) >> unused


def _result(values):
    """int32 result: an array, or a NumPy scalar when the inputs were scalars."""
    return np.asarray(values, dtype=np.int32)[()]


# -- affine quantization --------------------------------------------------------------


def choose_qparams(x, *, symmetric, axis=None, qmin=None, qmax=None):
    """Scale and zero point covering the range of ``x``.

    ``symmetric=True`` (weights) gives zero point 0 and the range ``[-qmax, qmax]``;
    ``qmin``/``qmax`` default to ``[-127, 127]`` so that int8 weights never use -128,
    and an explicit ``qmin`` must equal ``-qmax``.  ``symmetric=False`` (activations)
    defaults to ``[-128, 127]`` and widens the observed range to include 0, so the
    real value 0 is exactly the code ``zero_point``.

    ``axis=None`` gives per-tensor parameters (arrays of shape ``()``); an integer
    ``axis`` gives one scale and zero point per index along that axis.  A channel
    whose range is all zero gets scale 1.0 and zero point ``clip(0, qmin, qmax)``;
    no scale is ever smaller than the smallest normal float32, so quantization never
    divides by zero.  Returns ``(scale, zero_point)`` as float32 and int32 arrays.
    """
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be a bool, not {symmetric!r}")
    if symmetric:
        qmax = 127 if qmax is None else qmax
        qmin = -qmax if qmin is None else qmin
        qmin, qmax = _check_range(qmin, qmax)
        if qmin != -qmax:
            raise ValueError(f"symmetric quantization needs qmin == -qmax, "
                             f"not qmin={qmin}, qmax={qmax}")
    else:
        qmin, qmax = _check_range(-128 if qmin is None else qmin,
                                  127 if qmax is None else qmax)
    x = _float_array("x", x).astype(np.float64)
    if x.size == 0:
        raise ValueError("x must not be empty")
    if not np.isfinite(x).all():
        raise ValueError("x must be finite to choose quantization parameters")
    if axis is None:
        reduce = None
    else:
        axis = _normalize_axis(axis, x.ndim)
        reduce = tuple(i for i in range(x.ndim) if i != axis)
    lo = np.minimum(x.min(axis=reduce), 0.0)
    hi = np.maximum(x.max(axis=reduce), 0.0)
    if symmetric:
        span = np.maximum(-lo, hi) / qmax
    else:
        span = (hi - lo) / (float(qmax) - float(qmin))
    scale = span.astype(np.float32)
    scale = np.where(span == 0, np.float32(1.0),
                     np.maximum(scale, np.finfo(np.float32).tiny)).astype(np.float32)
    if symmetric:
        zero_point = np.zeros(scale.shape, dtype=np.int32)
    else:
        zp = np.rint(qmin - lo / scale.astype(np.float64))
        zp = np.where(span == 0, 0.0, zp)
        zero_point = np.clip(zp, qmin, qmax).astype(np.int32)
    return np.asarray(scale), np.asarray(zero_point)


def quantize(x, scale, zero_point, *, qmin=-128, qmax=127, axis=None):
    """``clip(round_half_even(x / scale) + zero_point, qmin, qmax)``, as ONNX ``QuantizeLinear``.

    The division happens in the promoted floating type of ``x`` and ``scale`` (float32
    for float32 inputs, like the ONNX reference).  ``axis=None`` needs scalar
    ``scale``/``zero_point``; otherwise they have one entry per index along ``axis``.
    The result has the smallest of int8, uint8, int16, uint16, int32 that holds
    ``[qmin, qmax]``.
    """
    qmin, qmax = _check_range(qmin, qmax)
    x = _float_array("x", x)
    if not np.isfinite(x).all():
        raise ValueError("x must be finite")
    if axis is not None:
        axis = _normalize_axis(axis, x.ndim)
    scale = _float_array("scale", scale)
    _positive_finite("scale", scale)
    zero_point = _int_array("zero_point", zero_point, qmin, qmax)
    scale = _per_axis("scale", scale, x.shape, axis)
    zero_point = _per_axis("zero_point", zero_point, x.shape, axis)
    with np.errstate(over="ignore"):
        rounded = np.rint(x / scale)
    # Clip before the integer conversion so that huge quotients cannot overflow it.
    rounded = np.clip(rounded, float(qmin) - float(qmax) - 1, float(qmax) - float(qmin) + 1)
    codes = np.clip(rounded.astype(np.int64) + zero_point, qmin, qmax)
    return codes.astype(_code_dtype(qmin, qmax))


def dequantize(q, scale, zero_point, *, axis=None):
    """``(q - zero_point) * scale`` in the floating type of ``scale`` (float32 normally).

    ``q - zero_point`` is formed exactly in integers first; this equals ONNX
    ``DequantizeLinear`` for codes of up to 24 bits.
    """
    q = _int_array("q", q, INT32_MIN, INT32_MAX, "int32 ")
    if axis is not None:
        axis = _normalize_axis(axis, q.ndim)
    scale = _float_array("scale", scale)
    _positive_finite("scale", scale)
    zero_point = _int_array("zero_point", zero_point, INT32_MIN, INT32_MAX, "int32 ")
    scale = _per_axis("scale", scale, q.shape, axis)
    zero_point = _per_axis("zero_point", zero_point, q.shape, axis)
    return (q - zero_point).astype(scale.dtype) * scale


# -- integer requantization -----------------------------------------------------------


def quantize_multiplier(real):
    """Split a real multiplier into a Q31 mantissa and a power of two, like TFLite.

    Returns ``(m0, shift)`` with ``real == m0 * 2**(shift - 31)`` up to the rounding of
    ``m0``: ``m0`` is in ``[2**30, 2**31)`` (or 0 when ``real`` is 0) and ``shift`` is a
    signed left shift (negative means a right shift).  As in TFLite
    ``QuantizeMultiplier``, the frexp mantissa is rounded half away from zero and a
    mantissa that rounds up to ``2**31`` becomes ``2**30`` with ``shift + 1``.

    Unlike TFLite, which silently turns multipliers needing a shift below -31 into
    zero, multipliers whose shift falls outside ``[-31, 30]`` are rejected, as are
    negative and non-finite ones.  Scalars give Python ints; arrays give int32 arrays.
    """
    arr = _float_array("real multiplier", real).astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        value = float(arr.flat[np.flatnonzero(bad)[0]])
        raise ValueError(f"real multiplier must be finite and non-negative, found {value!r}")
    mantissa, exponent = np.frexp(arr)
    # mantissa * 2**31 is exact and at least 2**30, so adding 0.5 and flooring is an
    # exact round-half-away-from-zero (std::round) of a non-negative number.
    m0 = np.floor(mantissa * float(1 << 31) + 0.5).astype(np.int64)
    carry = m0 == (1 << 31)
    m0 = np.where(carry, m0 >> 1, m0)
    shift = exponent.astype(np.int64) + carry
    zero = arr == 0
    m0 = np.where(zero, 0, m0)
    shift = np.where(zero, 0, shift)
    out = (shift < SHIFT_MIN) | (shift > SHIFT_MAX)
    if out.any():
        i = np.flatnonzero(out)[0]
        raise ValueError(
            f"real multiplier {float(arr.flat[i])!r} needs shift {int(shift.flat[i])}, "
            f"outside the supported range [{SHIFT_MIN}, {SHIFT_MAX}]")
    if arr.ndim == 0:
        return int(m0), int(shift)
    return m0.astype(np.int32), shift.astype(np.int32)


def _trunc_div_pow2(values, bits):
    """C++ ``values / (1 << bits)``: division truncating toward zero."""
    return np.where(values >= 0, values >> bits, -((-values) >> bits))


def _srdhm(a, b):
    ab = a * b  # |a*b| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = _trunc_div_pow2(ab + nudge, 31)
    return np.where((a == b) & (a == INT32_MIN), INT32_MAX, high)


def _rdbpot(x, exponent):
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def _mbqm(x, m0, shift):
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = _wrap(x * (np.int64(1) << left), 32)
    return _rdbpot(_srdhm(shifted, m0), right)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2**31)`` on int32.

    The product gets a nudge of ``2**30`` (``1 - 2**30`` when negative) and is divided
    by ``2**31`` truncating toward zero, exactly as the C++.  The net effect is
    ``floor((a * b + 2**30) / 2**31)``: exact halves round toward +infinity (so
    ``-0.5`` becomes 0).  The single overflow, ``INT32_MIN * INT32_MIN``, saturates to
    ``INT32_MAX``.
    """
    a = _int_array("a", a, INT32_MIN, INT32_MAX, "int32 ")
    b = _int_array("b", b, INT32_MIN, INT32_MAX, "int32 ")
    _check_broadcast("b", b, "a", a)
    return _result(_srdhm(a, b))


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero.

    ``exponent`` is in ``[0, 31]``; exponent 0 returns ``x`` unchanged.
    """
    x = _int_array("x", x, INT32_MIN, INT32_MAX, "int32 ")
    exponent = _int_array("exponent", exponent, 0, 31)
    _check_broadcast("exponent", exponent, "x", x)
    return _result(_rdbpot(x, exponent))


def multiply_by_quantized_multiplier(x, m0, shift):
    """TFLite ``MultiplyByQuantizedMultiplier``: ``x * m0 * 2**(shift - 31)``, rounded.

    A positive ``shift`` multiplies ``x`` by ``2**shift`` first; that product wraps
    modulo ``2**32`` to int32 (the C++ overflows there, and the NPU defines it as a
    wrap).  Then :func:`saturating_rounding_doubling_high_mul` by ``m0`` and, for a
    negative ``shift``, :func:`rounding_divide_by_pot` by ``-shift``.  ``shift`` is in
    ``[-31, 30]``; ``m0`` and ``shift`` broadcast against ``x`` (per channel).
    """
    x = _int_array("x", x, INT32_MIN, INT32_MAX, "int32 ")
    m0 = _int_array("m0", m0, INT32_MIN, INT32_MAX, "int32 ")
    shift = _int_array("shift", shift, SHIFT_MIN, SHIFT_MAX)
    _check_broadcast("m0", m0, "x", x)
    _check_broadcast("shift", shift, "x", x)
    return _result(_mbqm(x, m0, shift))


def _out_params(out_zero_point, out_min, out_max):
    out_zero_point = _int_scalar("out_zero_point", out_zero_point, INT32_MIN, INT32_MAX)
    out_min = _int_scalar("out_min", out_min, INT32_MIN, INT32_MAX)
    out_max = _int_scalar("out_max", out_max, INT32_MIN, INT32_MAX)
    if out_min > out_max:
        raise ValueError(f"out_min must not exceed out_max, not out_min={out_min}, "
                         f"out_max={out_max}")
    return out_zero_point, out_min, out_max


def _biased(acc, bias):
    acc = _int_array("acc", acc, INT32_MIN, INT32_MAX, "int32 ")
    bias = _int_array("bias", bias, INT32_MIN, INT32_MAX, "int32 ")
    _check_broadcast("bias", bias, "acc", acc)
    return acc, _wrap(acc + bias, 32)


def requantize(acc, m0, shift, *, bias=0, out_zero_point=0, out_min=-128, out_max=127):
    """Integer-only requantization of int32 accumulators (the NPU's default mode).

    ``clamp(MultiplyByQuantizedMultiplier(wrap32(acc + bias), m0, shift)
    + out_zero_point, out_min, out_max)``: the bias addition wraps modulo ``2**32``
    like the int32 accumulator; the zero point is added without wrapping, so a
    scaled value near ``INT32_MAX`` still clamps to ``out_max``.  ReLU is
    ``out_min = out_zero_point``.  ``m0`` is in ``[0, 2**31 - 1]`` and ``shift`` in
    ``[-31, 30]``; ``bias``, ``m0`` and ``shift`` broadcast per channel.  Returns int32.
    """
    out_zero_point, out_min, out_max = _out_params(out_zero_point, out_min, out_max)
    acc, total = _biased(acc, bias)
    m0 = _int_array("m0", m0, 0, INT32_MAX)
    shift = _int_array("shift", shift, SHIFT_MIN, SHIFT_MAX)
    _check_broadcast("m0", m0, "acc", acc)
    _check_broadcast("shift", shift, "acc", acc)
    scaled = _mbqm(total, m0, shift)
    return _result(np.clip(scaled + out_zero_point, out_min, out_max))


def requantize_float(acc, real_multiplier, *, bias=0, out_zero_point=0,
                     out_min=-128, out_max=127):
    """Single-rounding requantization, as the ONNX ``QLinearMatMul`` reference.

    ``clamp(round_half_even(wrap32(acc + bias) * real_multiplier + out_zero_point),
    out_min, out_max)`` evaluated in float64 (the type NumPy gives an int32 array times
    a float32 scale).  The zero point is added *before* rounding, so with an odd zero
    point exact ties go the other way than rounding first would.  Pass the multiplier
    exactly as the reference forms it, e.g. ``float32(a_scale * w_scale) / y_scale``
    in float32, for bit-identical results.  Returns int32.
    """
    out_zero_point, out_min, out_max = _out_params(out_zero_point, out_min, out_max)
    acc, total = _biased(acc, bias)
    real = _float_array("real_multiplier", real_multiplier).astype(np.float64)
    bad = ~np.isfinite(real) | (real < 0)
    if bad.any():
        raise ValueError(f"real_multiplier must be finite and non-negative, "
                         f"found {float(real.flat[np.flatnonzero(bad)[0]])!r}")
    _check_broadcast("real_multiplier", real, "acc", acc)
    with np.errstate(over="ignore"):
        scaled = np.rint(total.astype(np.float64) * real + out_zero_point)
    return _result(np.clip(scaled, out_min, out_max))
