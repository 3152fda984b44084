"""Integer (int8) scaled dot-product attention, exactly as the NPU program computes it.

One head, with symmetric int8 ``Q`` ``[S_q, d]``, ``K`` ``[S_k, d]``, ``V`` ``[S_k, d_v]``
(zero points 0) of per-tensor scales ``S_q``, ``S_k``, ``S_v``:

1. ``scores = Q·Kᵀ``: int32 (the accumulator, wrapped at ``acc_bits``; a raw MATMUL);
2. ``P = integer_softmax(scores)`` (:func:`npugen.golden.vector.integer_softmax`, the
   VECTOR SOFTMAX) with the multiplier of the input scale ``S_q·S_k/√d``: int8
   probabilities in ``[0, 127]`` of scale 1/128;
3. ``acc = P·V``: int32 (a MATMUL with ``P`` as activations, zero point 0, and ``V`` as
   weights);
4. ``out = requantize(acc, out_multiplier, out_shift) + out_zero_point`` clamped: int8
   of scale ``S_out``, the multiplier encoding ``S_v / (128·S_out)``.

Multi-head attention splits the last axis of ``Q``, ``K`` and ``V`` into ``heads``
equal parts, runs each head with the same parameters and concatenates the outputs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .gemm import _int8_operand, _int8_out_params, matmul_integer
from .quant import INT32_MAX, SHIFT_MAX, SHIFT_MIN, _int_scalar, quantize_multiplier, requantize
from .vector import integer_softmax, softmax_multiplier

__all__ = ["AttentionParams", "attention_scores", "attention_probabilities",
           "attention_head", "multi_head_attention", "PROBABILITY_SCALE"]

#: Scale of the int8 probabilities of the integer softmax.
PROBABILITY_SCALE = 1 / 128


@dataclass(frozen=True)
class AttentionParams:
    """Integer parameters of an attention: softmax and output requantization.

    ``softmax_multiplier``/``softmax_shift`` map the scores' scale to the softmax's
    internal scale (:func:`npugen.golden.vector.softmax_multiplier`); ``out_multiplier``
    (Q31) / ``out_shift`` requantize ``P·V`` to the output scale; the output is clamped
    to ``[out_min, out_max]`` after adding ``out_zero_point``.
    """
    softmax_multiplier: int
    softmax_shift: int
    out_multiplier: int
    out_shift: int
    out_zero_point: int = 0
    out_min: int = -128
    out_max: int = 127

    def __post_init__(self):
        _int_scalar("softmax_multiplier", self.softmax_multiplier, 0, INT32_MAX)
        _int_scalar("softmax_shift", self.softmax_shift, SHIFT_MIN, SHIFT_MAX)
        _int_scalar("out_multiplier", self.out_multiplier, 0, INT32_MAX)
        _int_scalar("out_shift", self.out_shift, SHIFT_MIN, SHIFT_MAX)
        _int8_out_params(self.out_zero_point, self.out_min, self.out_max)

    @classmethod
    def from_scales(cls, *, q_scale, k_scale, v_scale, out_scale, head_dim,
                    out_zero_point=0, out_min=-128, out_max=127) -> "AttentionParams":
        """Parameters for real scales: softmax input ``S_q·S_k/√d``, output ``S_v/(128·S_out)``."""
        for name, value in (("q_scale", q_scale), ("k_scale", k_scale), ("v_scale", v_scale),
                            ("out_scale", out_scale)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                    not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and positive, not {value!r}")
        if isinstance(head_dim, bool) or not isinstance(head_dim, numbers.Integral) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive integer, not {head_dim!r}")
        sm, ss = softmax_multiplier(float(q_scale) * float(k_scale) / math.sqrt(head_dim))
        om, os_ = quantize_multiplier(float(v_scale) * PROBABILITY_SCALE / float(out_scale))
        return cls(sm, ss, om, os_, out_zero_point, out_min, out_max)


def _operand(name, value):
    value = _int8_operand(name, value)
    if value.ndim != 2 or 0 in value.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, not shape {value.shape}")
    if value.min() < -127:
        raise ValueError(f"{name} must be symmetric int8 in [-127, 127], found {int(value.min())}")
    return value


def _check(q, k, v):
    q, k, v = _operand("q", q), _operand("k", k), _operand("v", v)
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k must have {q.shape[1]} columns like q, not shape {k.shape}")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"v must have {k.shape[0]} rows like k, not shape {v.shape}")
    return q, k, v


def _params(params):
    if not isinstance(params, AttentionParams):
        raise TypeError(f"params must be an AttentionParams, not {params!r}")
    return params


def attention_scores(q, k, *, acc_bits=32):
    """``Q·Kᵀ`` in an ``acc_bits`` accumulator (int64 ``[S_q, S_k]``)."""
    q, k = _operand("q", q), _operand("k", k)
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k must have {q.shape[1]} columns like q, not shape {k.shape}")
    return matmul_integer(q, np.ascontiguousarray(k.T), acc_bits=acc_bits)


def attention_probabilities(scores, params):
    """The int8 probabilities ``[0, 127]`` (scale 1/128) of integer scores, row by row."""
    params = _params(params)
    scores = np.asarray(scores)
    return integer_softmax(scores, scores.shape[-1], params.softmax_multiplier,
                           params.softmax_shift)


def attention_head(q, k, v, params, *, acc_bits=32, intermediates=False):
    """One attention head: int8 ``[S_q, d_v]`` (see the module docstring for the steps).

    With ``intermediates=True`` returns ``(out, scores, probabilities, acc)``.
    """
    q, k, v = _check(q, k, v)
    params = _params(params)
    scores = attention_scores(q, k, acc_bits=acc_bits)
    probs = attention_probabilities(scores, params)
    acc = matmul_integer(probs.astype(np.int8), v, acc_bits=acc_bits)
    out = np.asarray(requantize(acc, params.out_multiplier, params.out_shift,
                                out_zero_point=params.out_zero_point, out_min=params.out_min,
                                out_max=params.out_max), dtype=np.int8)
    if intermediates:
        return out, scores, probs, acc
    return out


def multi_head_attention(q, k, v, params, *, heads, acc_bits=32):
    """``heads`` attention heads over equal slices of the last axis, concatenated.

    ``q`` ``[S_q, heads·d]``, ``k`` ``[S_k, heads·d]``, ``v`` ``[S_k, heads·d_v]`` →
    int8 ``[S_q, heads·d_v]``; head h uses columns ``[h·d, (h+1)·d)`` (and
    ``[h·d_v, (h+1)·d_v)`` of ``v`` and of the output).
    """
    q, k, v = _check(q, k, v)
    if isinstance(heads, bool) or not isinstance(heads, numbers.Integral) or heads < 1:
        raise ValueError(f"heads must be a positive integer, not {heads!r}")
    if q.shape[1] % heads or v.shape[1] % heads:
        raise ValueError(f"heads must divide the width of q ({q.shape[1]}) and of v "
                         f"({v.shape[1]}), not {heads}")
    d, dv = q.shape[1] // heads, v.shape[1] // heads
    return np.concatenate([
        attention_head(q[:, h * d:(h + 1) * d], k[:, h * d:(h + 1) * d],
                       v[:, h * dv:(h + 1) * dv], params, acc_bits=acc_bits)
        for h in range(heads)], axis=1)
