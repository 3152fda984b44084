"""Tests of npugen.golden.conv against the ONNX reference (ConvInteger exactly,
QLinearConv within one LSB) and an independent direct-loop convolution."""

import numpy as np
import pytest
from onnx import TensorProto

from onnx_ref import onnx_run
from npugen.golden.conv import ConvGeometry, conv2d_integer, qconv2d
from npugen.golden.quant import quantize_multiplier, requantize, requantize_float

SEED_BASE = 0xC0_0000


def onnx_attrs(geom):
    top, bottom, left, right = geom.padding
    return dict(pads=[top, left, bottom, right], strides=list(geom.stride),
                dilations=list(geom.dilation), group=geom.groups)


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def oihw(w):
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def direct_conv(x, w, zp, geom):
    """Python-integer loops over every output and tap (padding taps skipped)."""
    top, _, left, _ = geom.padding
    out = np.zeros(geom.out_shape, dtype=object)
    cg, og = geom.c_in_group, geom.c_out_group
    for n in range(geom.n):
        for oy in range(geom.h_out):
            for ox in range(geom.w_out):
                for co in range(geom.c_out):
                    g = co // og
                    total = 0
                    for ky in range(geom.kh):
                        iy = oy * geom.stride[0] - top + ky * geom.dilation[0]
                        if not 0 <= iy < geom.h:
                            continue
                        for kx in range(geom.kw):
                            ix = ox * geom.stride[1] - left + kx * geom.dilation[1]
                            if not 0 <= ix < geom.w:
                                continue
                            for c in range(cg):
                                total += (int(x[n, iy, ix, g * cg + c]) - zp) * int(w[ky, kx, c, co])
                    out[n, oy, ox, co] = total
    return out


# (x shape NHWC, w shape, stride, padding, dilation, groups)
CASES = [
    ((1, 5, 5, 3), (3, 3, 3, 4), 1, 1, 1, 1),
    ((2, 7, 6, 4), (3, 3, 2, 6), (2, 1), (1, 0, 2, 1), (1, 2), 2),
    ((1, 8, 8, 6), (3, 3, 1, 6), 1, 1, 1, 6),             # depthwise
    ((1, 9, 7, 4), (3, 3, 1, 8), 2, (2, 1), 1, 4),        # depthwise, multiplier 2
    ((1, 6, 6, 5), (1, 1, 5, 7), 1, 0, 1, 1),             # pointwise
    ((1, 10, 9, 2), (2, 3, 2, 3), (3, 2), (0, 3, 1, 0), (2, 3), 1),
    ((3, 4, 4, 8), (4, 4, 4, 4), 1, 2, 1, 2),
]


def case_id(case):
    x, w, s, p, d, g = case
    return f"x{'x'.join(map(str, x))}-w{'x'.join(map(str, w))}-s{s}-p{p}-d{d}-g{g}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_conv2d_integer_matches_onnx_and_direct_loops(case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    seed = SEED_BASE + sum(x_shape) * 31 + sum(w_shape)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, x_shape).astype(np.int8)
    w = rng.integers(-128, 128, w_shape).astype(np.int8)
    zp = int(rng.integers(-128, 128))
    geom = ConvGeometry(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    got = conv2d_integer(x, w, zp, stride=stride, padding=padding, dilation=dilation,
                         groups=groups)
    assert got.shape == geom.out_shape and got.dtype == np.int64
    expect = onnx_run("ConvInteger", {"x": nchw(x), "w": oihw(w),
                                      "x_zero_point": np.asarray(zp, np.int8)},
                      TensorProto.INT32, **onnx_attrs(geom))
    np.testing.assert_array_equal(got, expect.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(got, direct_conv(x, w, zp, geom))


def test_conv2d_integer_wraps_at_acc_bits():
    x = np.full((1, 3, 3, 64), -128, np.int8)
    w = np.full((3, 3, 64, 2), -128, np.int8)
    exact = 9 * 64 * 255 * 128
    wide = conv2d_integer(x, w, 127, padding=0, acc_bits=64)
    assert wide[0, 0, 0, 0] == exact
    narrow = conv2d_integer(x, w, 127, acc_bits=18)
    assert narrow[0, 0, 0, 0] == (exact + (1 << 17)) % (1 << 18) - (1 << 17)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_qconv2d_vs_qlinearconv_within_one_lsb(case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    seed = SEED_BASE + 1000 + sum(x_shape) * 31 + sum(w_shape)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    geom = ConvGeometry(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)
    x = rng.integers(-128, 128, x_shape).astype(np.int8)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    zp = int(rng.integers(-30, 31))
    c_out = w_shape[3]
    bias = rng.integers(-2000, 2000, c_out).astype(np.int32)
    x_scale = np.float32(rng.uniform(0.01, 0.05))
    w_scale = rng.uniform(0.002, 0.02, c_out).astype(np.float32)
    acc = conv2d_integer(x, w, zp, stride=stride, padding=padding, dilation=dilation,
                         groups=groups)
    y_scale = np.float32(x_scale * float(np.median(w_scale)) * float(np.std(acc)) / 40)
    y_zp = int(rng.integers(-10, 11))
    real = (x_scale * w_scale) / y_scale                # float32, as the reference forms it
    expect = onnx_run("QLinearConv", {
        "x": nchw(x), "x_scale": np.asarray(x_scale), "x_zero_point": np.asarray(zp, np.int8),
        "w": oihw(w), "w_scale": w_scale, "w_zero_point": np.zeros(c_out, np.int8),
        "y_scale": np.asarray(y_scale), "y_zero_point": np.asarray(y_zp, np.int8), "B": bias,
    }, TensorProto.INT8, **onnx_attrs(geom)).transpose(0, 2, 3, 1)
    # The reference's single rounding is requantize_float of the same accumulators.
    single = requantize_float(acc, real, bias=bias, out_zero_point=y_zp)
    np.testing.assert_array_equal(single, expect)
    m0, shift = quantize_multiplier(real)
    got = qconv2d(x, w, x_zero_point=zp, bias=bias, multiplier=m0, shift=shift,
                  out_zero_point=y_zp, stride=stride, padding=padding, dilation=dilation,
                  groups=groups)
    assert got.dtype == np.int8 and got.shape == geom.out_shape
    diff = got.astype(np.int32) - expect.astype(np.int32)
    # Integer (two roundings, ties away) vs float (one rounding, ties to even): at most
    # one LSB apart, and only for values next to a tie.
    assert np.abs(diff).max() <= 1
    print(f"{np.count_nonzero(diff)} of {diff.size} outputs differ by one")
    assert np.count_nonzero(diff) <= max(2, diff.size // 20)


def test_qconv2d_is_requantize_of_conv_plus_bias():
    seed = SEED_BASE + 2000
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, 6, 5, 4)).astype(np.int8)
    w = rng.integers(-127, 128, (3, 2, 4, 3)).astype(np.int8)
    bias = rng.integers(-(1 << 20), 1 << 20, 3)
    mult = rng.integers(1 << 30, 1 << 31, 3)
    shift = rng.integers(-12, -4, 3)
    kwargs = dict(stride=(1, 2), padding=(1, 1, 0, 1), dilation=1, groups=1)
    acc = conv2d_integer(x, w, -3, **kwargs)
    raw = qconv2d(x, w, x_zero_point=-3, bias=bias, multiplier=mult, shift=shift,
                  out_zero_point=4, output="int32", **kwargs)
    assert raw.dtype == np.int32
    np.testing.assert_array_equal(raw, acc + bias)
    out = qconv2d(x, w, x_zero_point=-3, bias=bias, multiplier=mult, shift=shift,
                  out_zero_point=4, out_min=-5, out_max=90, **kwargs)
    np.testing.assert_array_equal(out, requantize(acc, mult, shift, bias=bias, out_zero_point=4,
                                                  out_min=-5, out_max=90))


X = np.zeros((1, 4, 4, 4), np.int8)
W = np.zeros((3, 3, 4, 2), np.int8)


@pytest.mark.parametrize("kwargs, exc, regex", [
    (dict(x=X.astype(np.int16)), TypeError, r"^x must be an int8 NumPy array, not int16$"),
    (dict(w=[[1]]), TypeError, r"^w must be an int8 NumPy array, not list$"),
    (dict(x=X[0]), ValueError, r"^x must be a 4-D array \[N, H, W, C_in\], not shape \(4, 4, 4\)$"),
    (dict(stride=0), ValueError, r"^stride must be at least 1, not \(0, 0\)$"),
    (dict(stride=1.5), TypeError, r"^stride must be an integer or a pair of integers, not 1\.5$"),
    (dict(dilation=(1, 0)), ValueError, r"^dilation must be at least 1, not \(1, 0\)$"),
    (dict(padding=-1), ValueError, r"^padding must be at least 0, not \(-1, -1\)$"),
    (dict(padding=(0, 0, -1, 0)), ValueError, r"^padding must not be negative, not \(0, 0, -1, 0\)$"),
    (dict(groups=3), ValueError, r"^groups must be a positive divisor of C_in \(4\) and C_out "
                                 r"\(2\), not 3$"),
    (dict(groups=2), ValueError, r"^w must have C_in/groups = 2 input channels, not 4 "
                                 r"\(shape \(3, 3, 4, 2\)\)$"),
    (dict(dilation=2), ValueError, r"^the dilated kernel \(5×5\) does not fit the padded "
                                   r"input \(4×4\)$"),
    (dict(x_zero_point=128), ValueError, r"^x_zero_point must be in \[-128, 127\], found 128$"),
    (dict(w=np.full((3, 3, 4, 2), -128, np.int8)), ValueError,
     r"^w must be symmetric int8 in \[-127, 127\], found -128$"),
    (dict(shift=31), ValueError, r"^shift must be in \[-31, 30\], found 31$"),
    (dict(bias=np.zeros(3, np.int32)), ValueError,
     r"^bias must be a scalar or have shape \(2,\), not \(3,\)$"),
    (dict(out_min=5, out_max=4), ValueError,
     r"^out_min must not exceed out_max, not out_min=5, out_max=4$"),
    (dict(output="int4"), ValueError, r"^output must be 'int8' or 'int32', not 'int4'$"),
])
def test_qconv2d_bad_arguments(kwargs, exc, regex):
    args = dict(x=X, w=W, x_zero_point=0, bias=0, multiplier=1 << 30, shift=-3,
                out_zero_point=0)
    args.update(kwargs)
    with pytest.raises(exc, match=regex):
        qconv2d(args.pop("x"), args.pop("w"), **args)
