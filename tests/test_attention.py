"""Tests of npugen.golden.attention: the integer pipeline step by step, structural
properties, and closeness to float attention with a derived tolerance."""

import math

import numpy as np
import pytest

from npugen.golden.attention import (AttentionParams, attention_head, attention_probabilities,
                                     attention_scores, multi_head_attention)
from npugen.golden.quant import quantize_multiplier, requantize
from npugen.golden.vector import (SOFTMAX_POLY_B, SOFTMAX_POLY_C, SOFTMAX_SCALE,
                                  integer_softmax, softmax_multiplier)

SEED_BASE = 0xA77E_0000


def quantized_case(rng, sq, sk, d, dv):
    """Float Q, K, V, their symmetric int8 codes and per-tensor scales."""
    qf, kf, vf = rng.normal(size=(sq, d)), rng.normal(size=(sk, d)), rng.normal(size=(sk, dv))
    scales = [float(np.abs(t).max()) / 127 for t in (qf, kf, vf)]
    codes = [np.round(t / s).astype(np.int8) for t, s in zip((qf, kf, vf), scales)]
    return codes, scales


def seeded_case(seed, sq, sk, d, dv, *, out_scale=None, out_ratio=1.0, **params):
    """:func:`quantized_case` from ``seed`` (printed), the attention parameters of its
    scales (output scale ``out_scale``, else ``out_ratio`` times V's scale) and the random
    generator, to draw more from."""
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    (q, k, v), scales = quantized_case(rng, sq, sk, d, dv)
    if out_scale is None:
        out_scale = out_ratio * scales[2]
    params = AttentionParams.from_scales(q_scale=scales[0], k_scale=scales[1],
                                         v_scale=scales[2], out_scale=out_scale, head_dim=d,
                                         **params)
    return (q, k, v), scales, params, rng


def float_attention(q, k, v, q_scale, k_scale, v_scale):
    """Softmax attention in float64 on the dequantized int8 operands."""
    s = (q.astype(np.float64) @ k.T.astype(np.float64)) * (q_scale * k_scale / math.sqrt(q.shape[1]))
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, p @ (v.astype(np.float64) * v_scale)


def test_params_from_scales():
    params = AttentionParams.from_scales(q_scale=0.02, k_scale=0.05, v_scale=0.1,
                                         out_scale=0.01, head_dim=16, out_zero_point=-3)
    assert (params.softmax_multiplier, params.softmax_shift) == \
        softmax_multiplier(0.02 * 0.05 / 4)
    assert (params.out_multiplier, params.out_shift) == quantize_multiplier(0.1 / 128 / 0.01)
    assert (params.out_zero_point, params.out_min, params.out_max) == (-3, -128, 127)


def test_pipeline_steps():
    (q, k, v), _, params, _ = seeded_case(SEED_BASE + 1, 9, 13, 6, 5, out_scale=0.01,
                                          out_zero_point=4)
    out, scores, probs, acc = attention_head(q, k, v, params, intermediates=True)
    np.testing.assert_array_equal(scores, q.astype(np.int64) @ k.T.astype(np.int64))
    np.testing.assert_array_equal(probs, integer_softmax(scores, 13, params.softmax_multiplier,
                                                         params.softmax_shift))
    np.testing.assert_array_equal(acc, probs.astype(np.int64) @ v.astype(np.int64))
    np.testing.assert_array_equal(out, requantize(acc, params.out_multiplier, params.out_shift,
                                                  out_zero_point=4))
    assert out.dtype == np.int8 and out.shape == (9, 5)
    np.testing.assert_array_equal(attention_probabilities(scores, params), probs)


def test_scores_wrap_at_acc_bits():
    q = np.full((1, 64), -127, np.int8)
    k = np.full((2, 64), -127, np.int8)
    assert attention_scores(q, k, acc_bits=16)[0, 0] == \
        (64 * 127 * 127 + (1 << 15)) % (1 << 16) - (1 << 15)


def exp_relative_error():
    """Largest relative error of the softmax's i-exp over its whole internal domain."""
    p = np.arange(-1023, 1)
    approx = (p + SOFTMAX_POLY_B) ** 2 + SOFTMAX_POLY_C
    exact = np.exp(p * SOFTMAX_SCALE)
    ratio = approx / exact
    return float(np.abs(ratio / ratio[-1] - 1).max())   # the common factor cancels


@pytest.mark.parametrize("sq, sk, d, dv", [(8, 16, 16, 16), (12, 64, 32, 8), (5, 7, 8, 8),
                                           (4, 128, 64, 16)])
def test_close_to_float_attention(sq, sk, d, dv):
    ratio = 1.5                                        # an output range of 1.5× V's
    (q, k, v), (sq_, sk_, sv_), params, _ = seeded_case(SEED_BASE + 100 + sk + d, sq, sk, d,
                                                        dv, out_ratio=ratio)
    out_scale = ratio * sv_
    out, _, probs, _ = attention_head(q, k, v, params, intermediates=True)
    p_float, out_float = float_attention(q, k, v, sq_, sk_, sv_)
    # Probabilities: floor((e·R) >> 41) loses less than one unit of 1/128; the i-exp
    # polynomial's relative error ε (measured over its whole domain, < 0.4 %) and the
    # rounding of t to 1/1024 of ln 2 (relative ≤ ln2/2048 < 0.034 %) change each
    # normalized probability by at most 2·(ε + 0.00034)·p; the floor of l >> z loses
    # less than 1 of e, against a row sum above 2^22 (l at p = 0): 128·S_k/2^22 at most.
    eps = exp_relative_error()
    assert eps < 0.004
    rel = 2 * (eps + math.log(2) / 2048)
    slack = 128 * sk / 2 ** 22
    err = probs - 128 * p_float
    assert (err >= -1 - rel * 128 * p_float - slack).all()
    assert (err <= rel * 128 * p_float + slack).all()
    # Output: the real value of acc is Σ P/128·v·S_v, off from the float attention by at
    # most Σ |P/128 − p|·|v|·S_v; the requantizer rounds twice (≤ 1 LSB).
    bound = (np.abs(probs / 128 - p_float) @ (np.abs(v.astype(np.float64)) * sv_)) / out_scale + 1
    assert (np.abs(out - out_float / out_scale) <= bound + 1e-9).all()
    # And with the probability bound alone (a data-independent tolerance).
    worst = (sk * (1 + slack) + rel * 128) / 128 * float(np.abs(v).max()) * sv_ / out_scale + 1
    assert np.abs(out - out_float / out_scale).max() <= worst
    print(f"max |out - float| = {np.abs(out - out_float / out_scale).max():.3f} LSB, "
          f"tolerance {worst:.1f}")


def test_structural_properties():
    (q, k, v), _, params, rng = seeded_case(SEED_BASE + 200, 10, 24, 8, 6)
    out, _, probs, _ = attention_head(q, k, v, params, intermediates=True)
    # Probabilities are in [0, 127]; a row sums to at most 128 and loses less than one
    # unit per key to the floor.
    assert probs.min() >= 0 and probs.max() <= 127
    sums = probs.sum(axis=1)
    assert (sums <= 128).all() and (sums > 128 - 24).all()
    # Permuting keys and values together changes nothing; permuting queries permutes rows.
    perm = rng.permutation(24)
    np.testing.assert_array_equal(attention_head(q, k[perm], v[perm], params), out)
    qperm = rng.permutation(10)
    np.testing.assert_array_equal(attention_head(q[qperm], k, v, params), out[qperm])
    # Constant values: the output is requantize(c · Σ P).
    const = np.full_like(v, 50)
    expect = requantize(50 * sums[:, None].astype(np.int64).repeat(6, axis=1),
                        params.out_multiplier, params.out_shift)
    np.testing.assert_array_equal(attention_head(q, k, const, params), expect)
    # One dominant key gets probability 127 and the output is (almost) its value row.
    qd = np.zeros((1, 8), np.int8)
    qd[0, 0] = 127
    kd = np.zeros((24, 8), np.int8)
    kd[3, 0] = 127
    big = AttentionParams(params.softmax_multiplier, params.softmax_shift + 6,
                          params.out_multiplier, params.out_shift)
    _, _, pd, acc = attention_head(qd, kd, v, big, intermediates=True)
    assert pd[0, 3] == 127 and pd[0].sum() == 127
    np.testing.assert_array_equal(acc[0], 127 * v[3].astype(np.int64))


def test_multi_head_is_concatenated_heads():
    seed = SEED_BASE + 300
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (7, 12)).astype(np.int8)
    k = rng.integers(-127, 128, (9, 12)).astype(np.int8)
    v = rng.integers(-127, 128, (9, 6)).astype(np.int8)
    params = AttentionParams.from_scales(q_scale=0.01, k_scale=0.02, v_scale=0.03,
                                         out_scale=0.02, head_dim=4)
    out = multi_head_attention(q, k, v, params, heads=3)
    assert out.shape == (7, 6)
    for h in range(3):
        np.testing.assert_array_equal(
            out[:, 2 * h:2 * h + 2],
            attention_head(q[:, 4 * h:4 * h + 4], k[:, 4 * h:4 * h + 4], v[:, 2 * h:2 * h + 2],
                           params))
    np.testing.assert_array_equal(multi_head_attention(q, k, v, params, heads=1),
                                  attention_head(q, k, v, params))


Q = np.zeros((3, 4), np.int8)
P = AttentionParams(1 << 30, 0, 1 << 30, -7)


@pytest.mark.parametrize("call, exc, regex", [
    (lambda: attention_head(Q.astype(np.int16), Q, Q, P), TypeError,
     r"^q must be an int8 NumPy array, not int16$"),
    (lambda: attention_head(Q, Q[:, :3], Q, P), ValueError,
     r"^k must have 4 columns like q, not shape \(3, 3\)$"),
    (lambda: attention_head(Q, Q, Q[:2], P), ValueError,
     r"^v must have 3 rows like k, not shape \(2, 4\)$"),
    (lambda: attention_head(Q, np.full((3, 4), -128, np.int8), Q, P), ValueError,
     r"^k must be symmetric int8 in \[-127, 127\], found -128$"),
    (lambda: attention_head(Q[:0], Q, Q, P), ValueError,
     r"^q must be a non-empty 2-D array, not shape \(0, 4\)$"),
    (lambda: attention_head(Q, Q, Q, "params"), TypeError,
     r"^params must be an AttentionParams, not 'params'$"),
    (lambda: multi_head_attention(Q, Q, Q, P, heads=3), ValueError,
     r"^heads must divide the width of q \(4\) and of v \(4\), not 3$"),
    (lambda: multi_head_attention(Q, Q, Q, P, heads=0), ValueError,
     r"^heads must be a positive integer, not 0$"),
    (lambda: AttentionParams(1 << 31, 0, 0, 0), ValueError,
     r"^softmax_multiplier must be in \[0, 2147483647\], found 2147483648$"),
    (lambda: AttentionParams(0, 0, 0, -32), ValueError, r"^out_shift must be in \[-31, 30\], found -32$"),
    (lambda: AttentionParams(0, 0, 0, 0, out_min=3, out_max=2), ValueError,
     r"^out_min must not exceed out_max, not out_min=3, out_max=2$"),
    (lambda: AttentionParams.from_scales(q_scale=0, k_scale=1, v_scale=1, out_scale=1,
                                         head_dim=4), ValueError,
     r"^q_scale must be finite and positive, not 0$"),
    (lambda: AttentionParams.from_scales(q_scale=1, k_scale=1, v_scale=1, out_scale=1,
                                         head_dim=0), ValueError,
     r"^head_dim must be a positive integer, not 0$"),
])
def test_bad_arguments(call, exc, regex):
    with pytest.raises(exc, match=regex):
        call()
