"""Post-training quantization: calibrated ranges, weight quantization, integer layers."""

import math

import numpy as np
import pytest

from npugen.golden.calibration import (
    METHODS,
    QuantizedWeights,
    TensorQuant,
    activation_quant,
    calibrate_range,
    entropy_divergences,
    entropy_threshold,
    quantize_layer,
    quantize_weights,
)
from npugen.golden.gemm import qgemm
from npugen.golden.quant import choose_qparams, quantize, quantize_multiplier, requantize

SEED_BASE = 0xCA11_0000


# -- an independent model of the entropy calibration, written from the docstring --------


def ref_divergences(hist, levels, start_bin):
    out = []
    for i in range(start_bin, len(hist) + 1):
        p = [float(v) for v in hist[:i]]
        p[-1] += float(sum(hist[i:]))
        q = [0.0] * i
        for j in range(levels):
            lo, hi = j * i // levels, (j + 1) * i // levels
            members = [k for k in range(lo, hi) if hist[k] > 0]
            for k in members:
                q[k] = float(sum(hist[lo:hi])) / len(members)
        if sum(q) == 0:
            out.append(math.inf)
            continue
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pk, qk in zip(p, q):
            if pk > 0:
                if qk == 0:
                    kl = math.inf
                    break
                kl += pk / sp * math.log((pk / sp) / (qk / sq))
        out.append(kl)
    return out


@pytest.mark.parametrize("seed", [SEED_BASE + i for i in range(4)])
def test_divergences_match_reference(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(12, 40))
    levels = int(rng.integers(2, 6))
    start = int(rng.integers(levels, bins))
    hist = rng.integers(0, 20, bins)
    hist[rng.random(bins) < 0.3] = 0          # empty bins, some of them at the top
    got = entropy_divergences(hist, levels=levels, start_bin=start)
    want = ref_divergences(list(hist), levels, start)
    assert len(got) == bins - start + 1
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_divergence_cases():
    # Uniform over exactly `levels` bins: merging changes nothing, KL is 0.
    assert entropy_divergences(np.ones(128)).tolist() == [0.0]
    # Clipped outliers landing in an empty bin: Q misses them, the divergence is infinite.
    hist = np.array([4, 4, 0, 1])
    assert entropy_divergences(hist, levels=1, start_bin=3)[0] == math.inf
    # Two levels over 4 bins [1, 3, 2, 2]: Q = [2, 2, 2, 2] → KL(P‖uniform).
    p = np.array([1, 3, 2, 2]) / 8
    assert entropy_divergences([1, 3, 2, 2], levels=2, start_bin=4)[0] == pytest.approx(
        float(np.sum(p * np.log(p / 0.25))), rel=1e-12)


@pytest.mark.parametrize("seed", [SEED_BASE + 10, SEED_BASE + 11])
def test_entropy_threshold_of_gaussian_with_outliers(seed):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, 50_000)
    x[:20] = rng.choice([-1, 1], 20) * rng.uniform(30, 60, 20)   # rare, far outliers
    t = entropy_threshold(x)
    amax = np.abs(x).max()
    assert 2.5 < t < 8.0 < amax
    # The threshold is a bin edge at or above start_bin.
    k = t / (amax / 2048)
    assert k == pytest.approx(round(k)) and 128 <= round(k) <= 2048
    lo, hi = calibrate_range(x, "entropy")
    assert (lo, hi) == (-t, t)
    lo, hi = calibrate_range(np.abs(x), "entropy")
    assert (lo, hi) == (np.abs(x).min(), t)
    # minmax keeps the outliers: the scale is 7-20 × coarser.
    assert calibrate_range(x, "minmax", symmetric=True) == (-amax, amax)


def test_entropy_threshold_without_outliers_is_the_maximum():
    x = np.linspace(0.001, 1.0, 20_480)        # exactly 10 values per bin
    assert entropy_threshold(x) == pytest.approx(1.0)
    assert entropy_threshold(np.zeros(10)) == 0.0


def test_entropy_ignores_exact_zeros():
    rng = np.random.default_rng(SEED_BASE + 12)
    print(f"seed={SEED_BASE + 12}")
    x = np.maximum(rng.normal(size=20_000), 0.0)        # half the values exactly 0
    assert entropy_threshold(x) == entropy_threshold(x[x > 0])


def test_percentile_exact():
    x = np.arange(0, 1001, dtype=np.float64)          # 0, 1, ..., 1000
    assert calibrate_range(x, "percentile", percentile=99.0) == (10.0, 990.0)
    assert calibrate_range(x - 500, "percentile", percentile=90.0) == (-400.0, 400.0)
    # |x| of -1000..1000 holds 0 once and every k twice: its 99th percentile is 990.
    y = np.arange(-1000, 1001, dtype=np.float64)
    assert calibrate_range(y, "percentile", percentile=99.0, symmetric=True) == (-990.0, 990.0)
    assert calibrate_range(y, "percentile", percentile=100.0) == (-1000.0, 1000.0)


def test_minmax_and_per_channel():
    x = np.array([[-1.0, 2.0, 0.5], [3.0, -4.0, 0.25]])
    assert calibrate_range(x, "minmax") == (-4.0, 3.0)
    assert calibrate_range(x, "minmax", symmetric=True) == (-4.0, 4.0)
    lo, hi = calibrate_range(x, "minmax", axis=1)
    assert lo.tolist() == [-1.0, -4.0, 0.25] and hi.tolist() == [3.0, 2.0, 0.5]
    lo, hi = calibrate_range(x, "minmax", axis=0, symmetric=True)
    assert lo.tolist() == [-2.0, -4.0] and hi.tolist() == [2.0, 4.0]
    rng = np.random.default_rng(SEED_BASE + 13)
    print(f"seed={SEED_BASE + 13}")
    z = rng.normal(size=(4000, 3)) * [1.0, 2.0, 4.0]
    for method in METHODS:
        lo, hi = calibrate_range(z, method, axis=1, percentile=99.5)
        for c in range(3):
            assert (lo[c], hi[c]) == calibrate_range(z[:, c], method, percentile=99.5)


def test_activation_quant():
    x = np.linspace(0.0, 6.0, 601)                 # a ReLU output
    q = activation_quant(x, "int8")
    scale, zp = choose_qparams(np.array([0.0, 6.0]), symmetric=False)
    assert (q.scale, q.zero_point) == (float(scale), int(zp)) == (float(np.float32(6 / 255)), -128)
    assert q.relu_min() == -128 and (q.qmin, q.qmax) == (-128, 127)
    codes = q.quantize(x)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    np.testing.assert_allclose(q.dequantize(codes), x, atol=q.scale / 2 + 1e-6)
    q4 = activation_quant(x, "int4", "percentile", percentile=90.0)
    assert q4.zero_point == -8 and q4.scale == pytest.approx(5.4 / 15)
    assert q4.quantize(x).max() == 7
    # Binary: Lloyd's fixed point β = mean(x[x >= β/2]); for a uniform [0, 6], β = 4.
    qb = activation_quant(x, "binary")
    assert (qb.zero_point, qb.qmin, qb.qmax) == (0, 0, 1)
    assert qb.scale == pytest.approx(4.0, abs=0.02)
    assert qb.scale == pytest.approx(x[x >= qb.scale / 2].mean(), rel=1e-6)
    assert qb.quantize([0.0, 1.9, 2.1, 9.0]).tolist() == [0, 0, 1, 1]
    assert activation_quant(np.zeros(5), "binary").scale == 1.0
    # Squared error at the fixed point is below that of the starting point (hi = 6).
    def sq_err(beta):
        return float(np.sum((x - beta * (x >= beta / 2)) ** 2))
    assert sq_err(qb.scale) < sq_err(6.0)
    signed = activation_quant(np.array([-2.0, 1.0]), "int8")
    assert signed.zero_point == 42 and signed.relu_min() == 42   # -128 + 2 / (3 / 255)


def test_weights_int8_int4_per_channel_and_tensor():
    rng = np.random.default_rng(SEED_BASE + 20)
    print(f"seed={SEED_BASE + 20}")
    w = rng.normal(size=(50, 6)) * np.array([0.1, 1, 2, 3, 4, 5])
    q = quantize_weights(w, "int8")
    assert q.codes.dtype == np.int8 and q.codes.shape == w.shape and q.axis == 1
    scale = np.abs(w).max(axis=0) / 127
    np.testing.assert_allclose(q.scale, scale.astype(np.float32), rtol=0)
    assert np.array_equal(q.codes, quantize(w, q.scale.astype(np.float64), np.zeros(6, np.int32),
                                            qmin=-127, qmax=127, axis=1))
    assert (np.abs(q.codes).max(axis=0) == 127).all()
    np.testing.assert_allclose(q.dequantize(), w, atol=float(scale.max()) / 2 * 1.0001)
    t = quantize_weights(w, "int8", axis=None)
    assert t.scale.shape == () and t.scale == np.float32(np.abs(w).max() / 127)
    q4 = quantize_weights(w, "int4")
    assert q4.codes.min() >= -7 and q4.codes.max() <= 7
    assert (np.abs(q4.codes).max(axis=0) == 7).all()
    np.testing.assert_allclose(q4.scale, (np.abs(w).max(axis=0) / 7).astype(np.float32))
    clipped = quantize_weights(w, "int8", method="percentile", percentile=99.0)
    assert (clipped.scale < q.scale).all()


def test_weights_binary():
    w = np.array([[0.5, -2.0], [-1.5, 0.0], [1.0, 4.0]])
    q = quantize_weights(w, "binary")
    assert q.codes.tolist() == [[1, -1], [-1, 1], [1, 1]]
    np.testing.assert_allclose(q.scale, [1.0, 2.0])
    t = quantize_weights(w, "binary", axis=None)
    assert t.scale == np.float32(1.5) and np.array_equal(t.codes, q.codes)
    np.testing.assert_allclose(q.dequantize(), [[1, -2], [-1, 2], [1, 2]])


def float_layer(rng, m, k, n):
    x = np.maximum(rng.normal(1.0, 1.0, (m, k)), 0.0)
    w = rng.normal(0.0, 1.0 / math.sqrt(k), (k, n))
    b = rng.normal(0.0, 0.3, n)
    return x, w, b


@pytest.mark.parametrize("relu", [False, True])
def test_int8_layer(relu):
    seed = SEED_BASE + 30 + relu
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x, w, b = float_layer(rng, 64, 40, 7)
    y = x @ w + b
    if relu:
        y = np.maximum(y, 0)
    qin, qout = activation_quant(x, "int8"), activation_quant(y, "int8")
    layer = quantize_layer(w, b, qin, qout, relu=relu)
    s_acc = np.float64(np.float32(qin.scale)) * layer.weights.scale.astype(np.float64)
    assert layer.mode == "int8" and layer.relu == relu
    np.testing.assert_array_equal(layer.bias, np.rint(b / s_acc).astype(np.int32))
    m0, shift = quantize_multiplier(s_acc / np.float64(np.float32(qout.scale)))
    assert np.array_equal(layer.multiplier, m0) and np.array_equal(layer.shift, shift)
    assert layer.out_min == (qout.zero_point if relu else -128) and layer.out_max == 127
    a = qin.quantize(x)
    out = layer.forward(a)
    assert np.array_equal(out, qgemm(a, layer.weights.codes, a_zero_point=qin.zero_point,
                                     bias=layer.bias, multiplier=m0, shift=shift,
                                     out_zero_point=qout.zero_point, out_min=layer.out_min))
    err = np.abs(qout.dequantize(out) - y)
    assert err.max() < 4 * qout.scale and err.mean() < qout.scale
    assert set(layer.report()) >= {"input_scale", "weight_scale", "bias", "multiplier", "shift"}


def test_int4_layer_equals_int8_kernel_on_the_same_codes():
    seed = SEED_BASE + 40
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x, w, b = float_layer(rng, 32, 24, 5)
    y = np.maximum(x @ w + b, 0)
    qin, qout = activation_quant(x, "int4"), activation_quant(y, "int4")
    layer = quantize_layer(w, b, qin, qout, relu=True)
    a = qin.quantize(x)
    assert a.min() >= -8 and a.max() <= 7
    out = layer.forward(a)
    same = qgemm(a, layer.weights.codes, a_zero_point=qin.zero_point, bias=layer.bias,
                 multiplier=layer.multiplier, shift=layer.shift,
                 out_zero_point=qout.zero_point, out_min=layer.out_min, out_max=layer.out_max)
    assert np.array_equal(out, same)
    assert np.abs(qout.dequantize(out) - y).mean() < qout.scale


def test_binary_layer():
    seed = SEED_BASE + 50
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x, w, b = float_layer(rng, 40, 37, 6)          # K = 37: not a multiple of 8
    qin = activation_quant(x, "binary", "percentile", percentile=90.0)
    y = np.maximum(qin.dequantize(qin.quantize(x)) @ quantize_weights(w, "binary").dequantize()
                   + b, 0)
    qout = activation_quant(y, "int8")
    layer = quantize_layer(w, b, qin, qout, relu=True)
    c = qin.quantize(x)
    t = layer.weights.codes.astype(np.int64)
    # XNOR-popcount of the codes (1 → +1, 0 → −1) plus Σ_k t_k is twice c @ t.
    acc = layer.accumulate(c)
    assert np.array_equal(acc + t.sum(axis=0), 2 * (c.astype(np.int64) @ t))
    s_acc = np.float32(qin.scale) * layer.weights.scale.astype(np.float64) / 2
    assert np.array_equal(layer.bias, np.rint(b / s_acc) + t.sum(axis=0))
    want = requantize(2 * (c.astype(np.int64) @ t), layer.multiplier, layer.shift,
                      bias=np.rint(b / s_acc).astype(np.int64),
                      out_zero_point=qout.zero_point, out_min=layer.out_min)
    assert np.array_equal(layer.forward(c), want)
    # Error: the bias rounded to half an accumulator unit, the output to half a step.
    err = np.abs(qout.dequantize(layer.forward(c)) - y).max(axis=0)
    assert (err <= s_acc / 2 + qout.scale / 2 + 1e-6).all()
    # A binary-output layer: clamp [0, 1] codes, i.e. the next layer's input bits.
    qbin = activation_quant(y, "binary")
    to_bits = quantize_layer(w, b, qin, qbin, relu=True)
    assert (to_bits.out_min, to_bits.out_max) == (0, 1)
    assert set(np.unique(to_bits.forward(c))) <= {0, 1}


@pytest.mark.parametrize("mode", ["int8", "int4", "binary"])
def test_dead_channels_get_a_usable_scale(mode):
    # Channel 1 is dead (weights ~0) with a bias, channel 2 dead without one: their
    # scales rise to the floor, so bias and multiplier fit and the output is the bias.
    rng = np.random.default_rng(SEED_BASE + 70)
    print(f"seed={SEED_BASE + 70}")
    x = np.maximum(rng.normal(1.0, 1.0, (30, 12)), 0.0)
    w = rng.normal(0.0, 0.3, (12, 3))
    w[:, 1] = 1e-40
    w[:, 2] = 0.0
    b = np.array([0.2, 0.7, 0.0])
    y = np.maximum(x @ w + b, 0)
    qin, qout = activation_quant(x, mode), activation_quant(y, "int8")
    layer = quantize_layer(w, b, qin, qout, relu=True)
    s_in, s_out = np.float32(qin.scale), np.float32(qout.scale)
    unit = 2 if mode == "binary" else 1
    floor = np.maximum(np.abs(b) / 2 ** 30, s_out * 2.0 ** -30) * unit / s_in
    assert (layer.weights.scale[1:] >= floor[1:]).all()
    assert layer.weights.scale[0] == quantize_weights(w[:, :1], mode).scale[0]
    if mode != "binary":
        assert not layer.weights.codes[:, 1:].any()
    assert np.abs(layer.bias.astype(np.int64)).max() <= 2 ** 30 + 12
    out = qout.dequantize(layer.forward(qin.quantize(x)))
    np.testing.assert_allclose(out[:, 1], 0.7, atol=float(s_out) / 2 + 1e-6)
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-6)


def test_weight_only_variants_run_in_int8_mode():
    rng = np.random.default_rng(SEED_BASE + 60)
    print(f"seed={SEED_BASE + 60}")
    x, w, b = float_layer(rng, 16, 20, 4)
    qin, qout = activation_quant(x, "int8"), activation_quant(x @ w + b, "int8")
    for precision, bound in (("int4", 7), ("binary", 1)):
        layer = quantize_layer(w, b, qin, qout, weight_precision=precision)
        assert layer.mode == "int8" and layer.weights.precision == precision
        assert np.abs(layer.weights.codes).max() == bound
        assert layer.forward(qin.quantize(x)).shape == (16, 4)


def test_bad_arguments():
    x = np.ones(10)
    with pytest.raises(ValueError, match=r"^method must be one of minmax, percentile, "
                                         r"entropy, not 'kl'$"):
        calibrate_range(x, "kl")
    with pytest.raises(ValueError, match=r"^percentile must be in \(50, 100\], not 40$"):
        calibrate_range(x, "percentile", percentile=40)
    with pytest.raises(TypeError, match=r"^percentile must be a number in \(50, 100\], "
                                        r"not '99'$"):
        calibrate_range(x, "percentile", percentile="99")
    with pytest.raises(ValueError, match=r"^x must not be empty$"):
        calibrate_range([], "minmax")
    with pytest.raises(ValueError, match=r"^x must be finite$"):
        calibrate_range([1.0, np.nan], "minmax")
    with pytest.raises(TypeError, match=r"^x must hold real numbers, not bool values$"):
        calibrate_range(np.array([True]), "minmax")
    with pytest.raises(ValueError, match=r"^axis must be in \[-1, 0\] for a 1-D array, not 1$"):
        calibrate_range(x, axis=1)
    with pytest.raises(TypeError, match=r"^symmetric must be a bool, not 1$"):
        calibrate_range(x, symmetric=1)
    with pytest.raises(ValueError, match=r"^start_bin must be in \[128, 2048\], not 4096$"):
        calibrate_range(x, "entropy", start_bin=4096)
    with pytest.raises(ValueError, match=r"^levels must be at least 1, not 0$"):
        entropy_threshold(x, levels=0)
    with pytest.raises(ValueError, match=r"^start_bin must not exceed the 4 bins of hist, "
                                         r"not 5$"):
        entropy_divergences([1, 1, 1, 1], levels=2, start_bin=5)
    with pytest.raises(ValueError, match=r"^hist must be a 1-D array of non-negative counts$"):
        entropy_divergences([1, -1], levels=1, start_bin=1)
    with pytest.raises(ValueError, match=r"^precision must be one of int8, int4, binary, "
                                         r"not 'int2'$"):
        activation_quant(x, "int2")
    with pytest.raises(ValueError, match=r"^binary activations need non-negative data "
                                         r"\(a ReLU output\), found -1.0$"):
        activation_quant([-1.0, 1.0], "binary")
    with pytest.raises(ValueError, match=r"^activation_quant calibrates one asymmetric range "
                                         r"per tensor; it takes no axis or symmetric option$"):
        activation_quant(np.ones((2, 2)), axis=0)
    with pytest.raises(ValueError, match=r"^scale must be a finite positive number, not 0.0$"):
        TensorQuant("int8", 0.0, 0)
    with pytest.raises(ValueError, match=r"^zero_point must be in \[-8, 7\], not 9$"):
        TensorQuant("int4", 1.0, 9)
    with pytest.raises(ValueError, match=r"^zero_point of a binary activation must be 0, "
                                         r"not 1$"):
        TensorQuant("binary", 1.0, 1)
    with pytest.raises(ValueError, match=r"^binary weights use α = mean\|w\| and take method "
                                         r"'minmax' without options, not 'entropy'$"):
        quantize_weights(np.ones((2, 2)), "binary", method="entropy")
    q8 = TensorQuant("int8", 0.1, 0)
    q4 = TensorQuant("int4", 0.1, 0)
    w = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"^weight_precision 'int8' does not run in the int4 "
                                         r"mode of the input; it needs 'int4'$"):
        quantize_layer(w, None, q4, q4, weight_precision="int8")
    with pytest.raises(ValueError, match=r"^b must have shape \(2,\), not \(3,\)$"):
        quantize_layer(w, np.ones(3), q8, q8)
    with pytest.raises(ValueError, match=r"^w must have the shape \(3, 2\) of the weight "
                                         r"codes, not \(2, 2\)$"):
        quantize_layer(np.ones((2, 2)), None, q8, q8, weights=quantize_weights(w))
    with pytest.raises(TypeError, match=r"^input_quant and output_quant must be TensorQuant "
                                        r"objects$"):
        quantize_layer(w, None, 0.1, q8)
    with pytest.raises(TypeError, match=r"^weights must be a QuantizedWeights, not ndarray$"):
        quantize_layer(w, None, q8, q8, weights=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"^the output channel must be the last axis of the "
                                         r"weights, not axis 0$"):
        quantize_layer(w, None, q8, q8, weights=QuantizedWeights(
            "int8", np.ones((3, 2), np.int8), np.ones(3, np.float32), 0))
    layer = quantize_layer(w, None, q8, q8)
    with pytest.raises(ValueError, match=r"^a must have shape \(M, 3\), not \(2, 2\)$"):
        layer.forward(np.zeros((2, 2), np.int8))
    with pytest.raises(TypeError, match=r"^a must be an int8 array of codes, not int64$"):
        layer.forward(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"^accumulate is the binary mode's product, "
                                         r"not 'int8''s$"):
        layer.accumulate(np.zeros((2, 3), np.int8))
