"""Quantized 2-D convolution (NHWC), bit-exact with the NPU's lowering of it.

:func:`conv2d_integer` is ONNX ``ConvInteger`` in NHWC layout with an accumulator of
``acc_bits`` bits; :func:`qconv2d` adds the int32 bias per output channel and
requantizes with :func:`npugen.golden.quant.requantize` (per-channel ``multiplier`` and
``shift``), exactly as :func:`npugen.golden.gemm.qgemm` does for a GEMM.

Layouts: activations ``x`` ``[N, H, W, C_in]`` int8 with zero point ``x_zero_point``;
weights ``w`` ``[kh, kw, C_in / groups, C_out]`` symmetric int8; output
``[N, H_out, W_out, C_out]``.  Padding taps hold the zero point (effective value 0).
``groups`` splits the input and output channels into that many independent
convolutions (``groups = C_in = C_out`` is depthwise).
"""

from __future__ import annotations

import numbers

import numpy as np

from .gemm import _int8_operand, _requant_params
from .quant import _int_array, _int_scalar, requantize

__all__ = ["ConvGeometry", "conv_geometry", "conv2d_integer", "qconv2d"]


def _pair(name, value, *, minimum):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or
            any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value)):
        raise TypeError(f"{name} must be an integer or a pair of integers, not {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {tuple(value)!r}")
    return int(value[0]), int(value[1])


def _padding(value):
    """``(top, bottom, left, right)`` from an int, ``(ph, pw)`` or a 4-tuple."""
    if isinstance(value, (tuple, list)) and len(value) == 4:
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value):
            raise TypeError(f"padding must be integers, not {value!r}")
        if min(value) < 0:
            raise ValueError(f"padding must not be negative, not {tuple(value)!r}")
        return tuple(int(v) for v in value)
    ph, pw = _pair("padding", value, minimum=0)
    return ph, ph, pw, pw


class ConvGeometry:
    """Shapes of one convolution: input, kernel, stride, padding, dilation, groups."""

    def __init__(self, x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1):
        if len(x_shape) != 4:
            raise ValueError(f"x must be a 4-D array [N, H, W, C_in], not shape {tuple(x_shape)}")
        if len(w_shape) != 4:
            raise ValueError(f"w must be a 4-D array [kh, kw, C_in/groups, C_out], "
                             f"not shape {tuple(w_shape)}")
        self.n, self.h, self.w, self.c_in = (int(v) for v in x_shape)
        self.kh, self.kw, self.c_in_group, self.c_out = (int(v) for v in w_shape)
        if min(self.n, self.h, self.w, self.c_in) < 1:
            raise ValueError(f"x must not be empty, not shape {tuple(x_shape)}")
        if min(self.kh, self.kw, self.c_in_group, self.c_out) < 1:
            raise ValueError(f"w must not be empty, not shape {tuple(w_shape)}")
        self.stride = _pair("stride", stride, minimum=1)
        self.dilation = _pair("dilation", dilation, minimum=1)
        self.padding = _padding(padding)
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
            raise TypeError(f"groups must be an integer, not {groups!r}")
        if groups < 1 or self.c_in % groups or self.c_out % groups:
            raise ValueError(f"groups must be a positive divisor of C_in ({self.c_in}) and "
                             f"C_out ({self.c_out}), not {groups!r}")
        self.groups = int(groups)
        if self.c_in_group != self.c_in // self.groups:
            raise ValueError(f"w must have C_in/groups = {self.c_in // self.groups} input "
                             f"channels, not {self.c_in_group} (shape {tuple(w_shape)})")
        self.c_out_group = self.c_out // self.groups
        top, bottom, left, right = self.padding
        span_h = (self.kh - 1) * self.dilation[0] + 1
        span_w = (self.kw - 1) * self.dilation[1] + 1
        padded_h, padded_w = self.h + top + bottom, self.w + left + right
        if padded_h < span_h or padded_w < span_w:
            raise ValueError(f"the dilated kernel ({span_h}×{span_w}) does not fit the padded "
                             f"input ({padded_h}×{padded_w})")
        self.h_out = (padded_h - span_h) // self.stride[0] + 1
        self.w_out = (padded_w - span_w) // self.stride[1] + 1

    @property
    def out_shape(self):
        return self.n, self.h_out, self.w_out, self.c_out

    @property
    def macs(self) -> int:
        """Multiply-accumulates (padding taps included, as the NPU performs them)."""
        return self.n * self.h_out * self.w_out * self.c_out * self.kh * self.kw * self.c_in_group


def conv_geometry(x_shape, w_shape, **kwargs) -> ConvGeometry:
    return ConvGeometry(x_shape, w_shape, **kwargs)


def _conv_sum(x, w, geom, x_zero_point):
    """Exact int64 sums (no wrap) of the convolution of effective values."""
    top, bottom, left, right = geom.padding
    eff = x.astype(np.int64) - x_zero_point
    padded = np.zeros((geom.n, geom.h + top + bottom, geom.w + left + right, geom.c_in),
                      dtype=np.int64)
    padded[:, top:top + geom.h, left:left + geom.w, :] = eff
    sh, sw = geom.stride
    dh, dw = geom.dilation
    G, cg, og = geom.groups, geom.c_in_group, geom.c_out_group
    out = np.zeros((geom.n, geom.h_out, geom.w_out, G, og), dtype=np.int64)
    wk = w.astype(np.int64).reshape(geom.kh, geom.kw, cg, G, og)
    for ky in range(geom.kh):
        for kx in range(geom.kw):
            y0, x0 = ky * dh, kx * dw
            tap = padded[:, y0:y0 + sh * (geom.h_out - 1) + 1:sh,
                         x0:x0 + sw * (geom.w_out - 1) + 1:sw, :]
            tap = tap.reshape(geom.n, geom.h_out, geom.w_out, G, cg)
            out += np.einsum("nhwgc,cgo->nhwgo", tap, wk[ky, kx])
    return out.reshape(geom.out_shape)


def _wrap(values, bits):
    half = 1 << (bits - 1)
    return (np.asarray(values, dtype=np.int64) + half) % (1 << bits) - half


def conv2d_integer(x, w, x_zero_point=0, *, stride=1, padding=0, dilation=1, groups=1,
                   acc_bits=32):
    """``Σ (x − x_zero_point)·w`` over each output's taps, wrapped at ``acc_bits`` (int64).

    ``x`` ``[N, H, W, C_in]`` int8, ``w`` ``[kh, kw, C_in/groups, C_out]`` int8 (any
    value, zero point 0).  Padding taps contribute 0.  ``stride``, ``dilation`` are an
    int or ``(h, w)``; ``padding`` an int, ``(h, w)`` or ``(top, bottom, left, right)``.
    """
    x = _int8_operand("x", x)
    w = _int8_operand("w", w)
    geom = ConvGeometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    zp = _int_scalar("x_zero_point", x_zero_point, -128, 127)
    acc_bits = _int_scalar("acc_bits", acc_bits, 2, 64)
    total = _conv_sum(x, w, geom, zp)
    return total if acc_bits == 64 else _wrap(total, acc_bits)


def qconv2d(x, w, *, x_zero_point, bias, multiplier, shift, out_zero_point, out_min=-128,
            out_max=127, stride=1, padding=0, dilation=1, groups=1, acc_bits=32,
            output="int8"):
    """The NPU's quantized convolution: ``requantize(conv2d_integer(x, w) + bias)``.

    Weights are symmetric int8 in ``[-127, 127]``.  ``bias`` (int32), ``multiplier``
    (Q31 in ``[0, 2**31 - 1]``) and ``shift`` (``[-31, 30]``) are scalars or one value
    per output channel.  The bias joins the accumulator and wraps with it at
    ``acc_bits`` (≤ 32).  ``output="int8"`` returns the requantized int8 tensor
    ``[N, H_out, W_out, C_out]``; ``output="int32"`` the accumulators plus bias (int32).
    """
    if not isinstance(output, str) or output not in ("int8", "int32"):
        raise ValueError(f"output must be 'int8' or 'int32', not {output!r}")
    x = _int8_operand("x", x)
    w = _int8_operand("w", w)
    geom = ConvGeometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    _int_array("w", w, -127, 127, "symmetric int8 ")
    zp = _int_scalar("x_zero_point", x_zero_point, -128, 127)
    bias, multiplier, shift, out_zero_point, out_min, out_max = _requant_params(
        geom.c_out, bias, multiplier, shift, out_zero_point, out_min, out_max)
    acc_bits = _int_scalar("acc_bits", acc_bits, 16, 32)
    total = _wrap(_conv_sum(x, w, geom, zp) + bias, acc_bits)
    if output == "int32":
        return total.astype(np.int32)
    out = requantize(total, multiplier, shift, out_zero_point=out_zero_point,
                     out_min=out_min, out_max=out_max)
    return np.asarray(out, dtype=np.int8)
