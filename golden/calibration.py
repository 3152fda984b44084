"""Post-training quantization: calibrated ranges, quantized weights, integer layers.

Three steps turn a float layer ``y = act(x @ w + b)`` into the NPU's integer layer:

1. **Activation ranges** from a calibration sample (:func:`calibrate_range`,
   :func:`activation_quant`): ``minmax``, ``percentile`` or ``entropy`` (KL divergence,
   as TensorRT), per tensor or per channel.
2. **Weights** (:func:`quantize_weights`): INT8 (symmetric, ``[-127, 127]``), INT4
   (symmetric, ``[-7, 7]``) or binary (``±1`` with ``α = mean|w|``), per output channel
   or per tensor, through :mod:`~npugen.golden.quant`, :mod:`~npugen.golden.int4` and
   :mod:`~npugen.golden.binary`.
3. **The layer** (:func:`quantize_layer`): the int32 bias in accumulator units, the Q31
   multiplier and shift per output channel (``quantize_multiplier`` of
   ``s_acc / s_out``), the output zero point and clamp; a fused ReLU is the clamp at
   the output zero point.  :meth:`QuantizedLayer.forward` runs it on the golden GEMM of
   its mode (``qgemm``, ``qgemm_int4``, ``xnor_popcount_gemm`` + ``requantize``).

Ranges
------
``symmetric=True`` gives ``(-T, T)`` with a threshold ``T`` of ``|x|``; otherwise
``(lo, hi)``.  ``minmax``: ``T = max|x|``, ``(min x, max x)``.  ``percentile`` with
``p``: ``T`` = the ``p``-th percentile of ``|x|``, ``(lo, hi)`` = the ``(100 - p)``-th and
``p``-th percentiles of ``x`` (NumPy's linear interpolation).  ``entropy``: ``T`` from
:func:`entropy_threshold`; the asymmetric range is ``(max(min x, -T), min(max x, T))``.
Quantization parameters follow from the range with ``choose_qparams`` (which widens an
asymmetric range to include 0).

Entropy calibration (TensorRT's, Migacz 2017)
---------------------------------------------
1. Histogram ``h`` of ``|x|`` over ``[0, max|x|]`` in ``bins = 2048`` equal bins of width
   ``w``.  Exact zeros are left out: 0 is representable at every threshold, and a
   ReLU output's spike at 0 would otherwise dominate the divergence (NVIDIA's toolkit
   patches the same effect by overwriting bin 0 with bin 1).
2. For every candidate ``i`` from ``start_bin = 128`` to ``bins`` (threshold ``i·w``, the
   upper edge of bin ``i - 1``):

   * reference ``P = h[0:i]`` with the clipped outliers ``sum(h[i:])`` added to
     ``P[i-1]``;
   * candidate ``Q``: ``h[0:i]`` (without the outliers) merged into ``levels = 128``
     groups, group ``j`` holding bins ``floor(j·i/levels)`` to
     ``floor((j+1)·i/levels) - 1``, then expanded back: each group's total is spread in
     equal parts over the group's non-empty bins, empty bins stay 0;
   * ``P`` and ``Q`` normalized to sum 1;
     ``KL(P‖Q) = Σ_{P_k > 0} P_k · ln(P_k / Q_k)``, and ``+∞`` when some ``P_k > 0`` has
     ``Q_k = 0`` (the outliers land in an empty bin), as ``scipy.stats.entropy``.

3. ``T = i·w`` for the ``i`` of smallest divergence; among equal divergences the largest
   ``i`` (the least clipping).  ``T = 0`` when ``x`` is all zero.  (The talk quotes the
   centre of bin ``i - 1``, half a bin lower; the upper edge is what NVIDIA's PyTorch
   quantization toolkit returns.)

Binary activations
------------------
A binary activation holds the codes 0 and 1 for the real values 0 and ``scale`` (zero
point 0), so a value becomes 1 from ``scale / 2`` up (a tie rounds as the quantizer
rounds: half to even in :meth:`TensorQuant.quantize`, half up in the requantizer); on
the NPU's binary lanes code 1 is +1 and code 0 is −1, and the layer folds the offset
into its bias (see :func:`quantize_layer`).  The requantizer of the producing layer
writes these codes directly with the clamp ``[0, 1]``, which also applies a ReLU.  The
scale ``β`` starts at the ``hi`` of the calibrated range and is refined by Lloyd's
iteration for this two-level quantizer, ``β ← mean(x[x ≥ β/2])``, until it no longer
changes (at most 100 steps); no step raises the squared error
``Σ (x − β·[x ≥ β/2])²``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .binary import binarize_activations, binarize_weights, pack_bits, xnor_popcount_gemm
from .gemm import qgemm
from .int4 import INT4_MAX, INT4_MIN, choose_int4_qparams, qgemm_int4, quantize_int4
from .quant import (
    _float_array,
    choose_qparams,
    dequantize,
    quantize,
    quantize_multiplier,
    requantize,
)

__all__ = ["METHODS", "PRECISIONS", "entropy_divergences", "entropy_threshold",
           "calibrate_range", "TensorQuant", "activation_quant", "QuantizedWeights",
           "quantize_weights", "QuantizedLayer", "quantize_layer"]

#: Calibration methods.
METHODS = ("minmax", "percentile", "entropy")
#: Precisions of weights and activations (the NPU's GEMM modes).
PRECISIONS = ("int8", "int4", "binary")

_ACT_RANGE = {"int8": (-128, 127), "int4": (INT4_MIN, INT4_MAX), "binary": (0, 1)}
_WEIGHT_QMAX = {"int8": 127, "int4": INT4_MAX, "binary": 1}


# -- argument checks ---------------------------------------------------------------------


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _data(name, x):
    arr = _float_array(name, x).astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def _int_param(name, value, lo, hi=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bound}, not {value}")
    return int(value)


def _percentile(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"percentile must be a number in (50, 100], not {value!r}")
    if not 50.0 < float(value) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], not {value!r}")
    return float(value)


def _axis(axis, ndim):
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer or None, not {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim - 1}] for a {ndim}-D array, "
                         f"not {axis}")
    return int(axis) % ndim


# -- entropy calibration -------------------------------------------------------------------


def entropy_divergences(hist, *, levels=128, start_bin=128):
    """``KL(P‖Q)`` of every candidate ``i`` in ``start_bin .. len(hist)`` (module docstring).

    Returns a float64 array whose entry ``j`` belongs to the candidate
    ``i = start_bin + j``; ``+inf`` where ``Q`` misses mass of ``P``.
    """
    h = _data("hist", hist)
    if h.ndim != 1 or (h < 0).any():
        raise ValueError("hist must be a 1-D array of non-negative counts")
    levels = _int_param("levels", levels, 1)
    start_bin = _int_param("start_bin", start_bin, levels)
    if start_bin > h.size:
        raise ValueError(f"start_bin must not exceed the {h.size} bins of hist, not {start_bin}")
    nonzero = h > 0
    mass = np.concatenate([[0.0], np.cumsum(h)])           # mass[i] = sum(h[:i])
    filled = np.concatenate([[0], np.cumsum(nonzero)])     # non-empty bins in h[:i]
    out = np.empty(h.size - start_bin + 1)
    for j, i in enumerate(range(start_bin, h.size + 1)):
        p = h[:i].copy()
        p[-1] += mass[-1] - mass[i]
        edges = np.arange(levels + 1) * i // levels
        group = np.repeat(np.arange(levels), np.diff(edges))
        total = mass[edges[1:]] - mass[edges[:-1]]
        count = filled[edges[1:]] - filled[edges[:-1]]
        q = np.where(nonzero[:i], (total / np.maximum(count, 1))[group], 0.0)
        if q.sum() == 0:
            out[j] = np.inf
            continue
        p /= p.sum()
        q /= q.sum()
        used = p > 0
        if (q[used] == 0).any():
            out[j] = np.inf
        else:
            out[j] = float(np.sum(p[used] * np.log(p[used] / q[used])))
    return out


def entropy_threshold(x, *, bins=2048, levels=128, start_bin=128):
    """TensorRT's KL-divergence threshold of ``|x|`` (the module docstring's algorithm)."""
    a = np.abs(_data("x", x)).ravel()
    bins = _int_param("bins", bins, 1)
    levels = _int_param("levels", levels, 1)
    start_bin = _int_param("start_bin", start_bin, levels, bins)
    amax = float(a.max())
    if amax == 0.0:
        return 0.0
    hist, _ = np.histogram(a[a > 0], bins=bins, range=(0.0, amax))
    divergences = entropy_divergences(hist, levels=levels, start_bin=start_bin)
    best = divergences.size - 1 - int(np.argmin(divergences[::-1]))
    return (start_bin + best) * amax / bins


def _per_channel(x, axis, fn):
    """``fn`` applied to each slice of ``x`` along ``axis`` (all of ``x`` when None)."""
    if axis is None:
        return np.asarray(fn(x.ravel()), dtype=np.float64)
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    return np.array([fn(row) for row in moved], dtype=np.float64)


def calibrate_range(x, method="minmax", *, symmetric=False, axis=None, percentile=99.99,
                    bins=2048, levels=128, start_bin=128):
    """Real range ``(lo, hi)`` of the data ``x`` by ``method`` (module docstring).

    ``axis=None`` gives float64 scalars, an integer ``axis`` one value per index along it
    (per channel).  ``percentile`` (in (50, 100]) is used by ``percentile``; ``bins``,
    ``levels`` and ``start_bin`` by ``entropy``.
    """
    method = _choice("method", method, METHODS)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be a bool, not {symmetric!r}")
    x = _data("x", x)
    axis = _axis(axis, x.ndim)
    if method == "percentile":
        p = _percentile(percentile)
    if method == "entropy":
        bins = _int_param("bins", bins, 1)
        levels = _int_param("levels", levels, 1)
        start_bin = _int_param("start_bin", start_bin, levels, bins)
    lo = _per_channel(x, axis, np.min)
    hi = _per_channel(x, axis, np.max)
    if method == "minmax":
        t = np.maximum(-lo, hi)
    elif method == "percentile":
        t = _per_channel(np.abs(x), axis, lambda v: np.percentile(v, p))
        if not symmetric:
            lo = _per_channel(x, axis, lambda v: np.percentile(v, 100.0 - p))
            hi = _per_channel(x, axis, lambda v: np.percentile(v, p))
    else:
        t = _per_channel(x, axis, lambda v: entropy_threshold(
            v, bins=bins, levels=levels, start_bin=start_bin))
        lo, hi = np.maximum(lo, -t), np.minimum(hi, t)
    if symmetric:
        lo, hi = -t, t
    return np.asarray(lo, dtype=np.float64)[()], np.asarray(hi, dtype=np.float64)[()]


# -- activations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorQuant:
    """Per-tensor quantization of an activation: ``real = (code - zero_point) · scale``.

    ``precision`` fixes the codes: int8 ``[-128, 127]``, int4 ``[-8, 7]``, binary
    ``{0, 1}`` (zero point 0).
    """
    precision: str
    scale: float
    zero_point: int

    def __post_init__(self):
        _choice("precision", self.precision, PRECISIONS)
        scale = self.scale
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real) \
                or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite positive number, not {scale!r}")
        object.__setattr__(self, "scale", float(np.float32(scale)))
        lo, hi = _ACT_RANGE[self.precision]
        zp = _int_param("zero_point", self.zero_point, lo, hi)
        if self.precision == "binary" and zp != 0:
            raise ValueError(f"zero_point of a binary activation must be 0, not {zp}")
        object.__setattr__(self, "zero_point", zp)

    @property
    def qmin(self) -> int:
        return _ACT_RANGE[self.precision][0]

    @property
    def qmax(self) -> int:
        return _ACT_RANGE[self.precision][1]

    def quantize(self, x) -> np.ndarray:
        """Codes of ``x`` (round half to even, clamp) as int8."""
        q = quantize(np.asarray(x, dtype=np.float32), np.float32(self.scale), self.zero_point,
                     qmin=self.qmin, qmax=self.qmax)
        return np.asarray(q, dtype=np.int8)

    def dequantize(self, q) -> np.ndarray:
        return dequantize(np.asarray(q), np.float32(self.scale), self.zero_point)

    def relu_min(self) -> int:
        """The lowest code after a fused ReLU: the code of 0."""
        return max(self.qmin, self.zero_point)


def _lloyd_binary(x, beta):
    """Two-level (0, β) Lloyd iteration from ``beta``; 1.0 for all-zero data."""
    if beta <= 0:
        return 1.0
    for _ in range(100):
        upper = x[x >= beta / 2]
        new = float(upper.mean()) if upper.size else beta
        if new == beta:
            break
        beta = new
    return beta


def activation_quant(x, precision="int8", method="minmax", **options) -> TensorQuant:
    """Calibrate a per-tensor :class:`TensorQuant` on the sample ``x``.

    int8 and int4 are asymmetric (``choose_qparams`` / ``choose_int4_qparams`` of the
    calibrated range); binary needs non-negative data (a ReLU output) and refines
    ``scale = hi`` by Lloyd's iteration (module docstring).  ``options`` go to
    :func:`calibrate_range`.
    """
    precision = _choice("precision", precision, PRECISIONS)
    if "axis" in options or "symmetric" in options:
        raise ValueError("activation_quant calibrates one asymmetric range per tensor; "
                         "it takes no axis or symmetric option")
    if precision == "binary" and float(np.min(_data("x", x))) < 0:
        raise ValueError(f"binary activations need non-negative data (a ReLU output), "
                         f"found {float(np.min(x))!r}")
    lo, hi = calibrate_range(x, method, **options)
    span = np.array([lo, hi], dtype=np.float64)
    if precision == "int8":
        scale, zp = choose_qparams(span, symmetric=False)
    elif precision == "int4":
        scale, zp = choose_int4_qparams(span, symmetric=False)
    else:
        scale, zp = _lloyd_binary(np.asarray(x, dtype=np.float64).ravel(), float(hi)), 0
    return TensorQuant(precision, float(scale), int(zp))


# -- weights ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedWeights:
    """Weight codes (int8 array: int8 ``[-127, 127]``, int4 ``[-7, 7]``, binary ``±1``)
    and their float32 scales, one per index of ``axis`` (a scalar when ``axis`` is None);
    ``real ≈ codes · scale``.
    """
    precision: str
    codes: np.ndarray
    scale: np.ndarray
    axis: int | None

    def dequantize(self) -> np.ndarray:
        scale = self.scale
        if self.axis is not None:
            shape = [1] * self.codes.ndim
            shape[self.axis] = -1
            scale = scale.reshape(shape)
        return self.codes.astype(np.float32) * scale

    def channel_scale(self, n) -> np.ndarray:
        """The scales as an ``(n,)`` float64 array (a per-tensor scale repeated)."""
        return np.broadcast_to(np.asarray(self.scale, dtype=np.float64), (n,)).copy()


def quantize_weights(w, precision="int8", *, axis=-1, method="minmax", **options):
    """Symmetric weight quantization per output channel (``axis``) or per tensor (None).

    int8 and int4 take the threshold ``T`` of ``method`` (:func:`calibrate_range` with
    ``symmetric=True``; ``options`` go there) and ``scale = T / qmax``; values beyond
    ``T`` clamp.  Binary is XNOR-Net's ``α = mean|w|`` with the signs of ``w``
    (``binarize_weights``) and takes no method but ``minmax``.
    """
    precision = _choice("precision", precision, PRECISIONS)
    method = _choice("method", method, METHODS)
    w = _data("w", w)
    axis = _axis(axis, w.ndim)
    if precision == "binary":
        if method != "minmax" or options:
            raise ValueError(f"binary weights use α = mean|w| and take method 'minmax' "
                             f"without options, not {method!r}")
        if axis is None:
            return QuantizedWeights("binary", binarize_activations(w),
                                    np.float32(np.abs(w).mean()), None)
        signs, alpha = binarize_weights(w, axis=axis)
        return QuantizedWeights("binary", signs, alpha, axis)
    lo, hi = calibrate_range(w, method, symmetric=True, axis=axis, **options)
    span = np.stack([lo, hi])
    if precision == "int8":
        scale, _ = choose_qparams(span, symmetric=True, axis=None if axis is None else 1)
        codes = quantize(w, scale.astype(np.float64), np.zeros(scale.shape, np.int32),
                         qmin=-127, qmax=127, axis=axis)
    else:
        scale, _ = choose_int4_qparams(span, symmetric=True, axis=None if axis is None else 1)
        codes = quantize_int4(w, scale.astype(np.float64), np.zeros(scale.shape, np.int32),
                              axis=axis)
    return QuantizedWeights(precision, np.asarray(codes, dtype=np.int8), scale, axis)


# -- layers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedLayer:
    """One GEMM layer in integers: ``out = requantize(Σ_k (a − za)·w + bias)``.

    ``mode`` is the NPU's GEMM mode (the precision of ``input``); ``weights.codes`` is
    ``(K, N)`` (or a convolution kernel whose last axis is N).  ``bias``, ``multiplier``
    (Q31) and ``shift`` are int32 ``(N,)``; ``out_min``/``out_max`` the output clamp
    (``output.relu_min()`` with a fused ReLU).  ``real_multiplier`` is
    ``s_acc / s_out`` before :func:`~npugen.golden.quant.quantize_multiplier`.
    """
    mode: str
    weights: QuantizedWeights
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    input: TensorQuant
    output: TensorQuant
    out_min: int
    out_max: int
    relu: bool
    real_multiplier: np.ndarray

    def forward(self, a) -> np.ndarray:
        """Output codes (int8, ``(M, N)``) of input codes ``a`` (int8, ``(M, K)``)."""
        a = np.asarray(a)
        w = self.weights.codes
        if w.ndim != 2:
            raise ValueError(f"forward needs (K, N) weights, not shape {w.shape}")
        if a.ndim != 2 or a.shape[1] != w.shape[0]:
            raise ValueError(f"a must have shape (M, {w.shape[0]}), not {a.shape}")
        if a.dtype != np.int8:
            raise TypeError(f"a must be an int8 array of codes, not {a.dtype}")
        if self.mode == "int8":
            return qgemm(a, w, a_zero_point=self.input.zero_point, bias=self.bias,
                         multiplier=self.multiplier, shift=self.shift,
                         out_zero_point=self.output.zero_point, out_min=self.out_min,
                         out_max=self.out_max)
        if self.mode == "int4":
            return qgemm_int4(a, w, a_zero_point=self.input.zero_point, bias=self.bias,
                              multiplier=self.multiplier, shift=self.shift,
                              out_zero_point=self.output.zero_point, out_min=self.out_min,
                              out_max=self.out_max)
        return requantize(self.accumulate(a), self.multiplier, self.shift, bias=self.bias,
                          out_zero_point=self.output.zero_point, out_min=self.out_min,
                          out_max=self.out_max).astype(np.int8)

    def accumulate(self, a) -> np.ndarray:
        """Binary mode: ``2·popcount(XNOR(a, w)) − K`` of input codes (1 → +1, 0 → −1)."""
        if self.mode != "binary":
            raise ValueError(f"accumulate is the binary mode's product, not {self.mode!r}'s")
        a = np.asarray(a)
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError("binary input codes must be 0 or 1")
        k = a.shape[1]
        a_packed = pack_bits(2 * a.astype(np.int8) - 1, axis=1)
        w_packed = pack_bits(self.weights.codes, axis=0)
        return xnor_popcount_gemm(a_packed, w_packed, k)

    def report(self) -> dict:
        """Scales and integer parameters, for logs."""
        return {"mode": self.mode, "weight_precision": self.weights.precision,
                "input_scale": self.input.scale, "input_zero_point": self.input.zero_point,
                "output_scale": self.output.scale, "output_zero_point": self.output.zero_point,
                "out_min": self.out_min, "out_max": self.out_max, "relu": self.relu,
                "weight_scale": np.asarray(self.weights.scale, dtype=np.float64).tolist(),
                "bias": self.bias.tolist(), "multiplier": self.multiplier.tolist(),
                "shift": self.shift.tolist()}


def _raise_scales(w, weights, floor):
    """``weights`` with every channel scale below ``floor`` raised to it (codes redone)."""
    n = floor.size
    scale = weights.channel_scale(n).astype(np.float32)
    low = scale < floor
    scale[low] = floor[low].astype(np.float32)
    up = scale < floor                      # float32 rounding went below the floor
    scale[up] = np.nextafter(scale[up], np.float32(np.inf))
    codes = weights.codes.copy()
    if weights.precision != "binary":
        qmax = _WEIGHT_QMAX[weights.precision]
        redone = quantize(w[..., low], scale[low].astype(np.float64),
                          np.zeros(int(low.sum()), np.int32), qmin=-qmax, qmax=qmax, axis=-1)
        codes[..., low] = np.asarray(redone, dtype=np.int8)
    return QuantizedWeights(weights.precision, codes, scale, codes.ndim - 1)


_MODE_WEIGHTS = {"int8": PRECISIONS, "int4": ("int4",), "binary": ("binary",)}


def quantize_layer(w, b, input_quant, output_quant, *, relu=False, weights=None,
                   weight_precision=None, axis=-1, weight_method="minmax"):
    """Integer parameters of ``y = act(x @ w + b)`` for the NPU.

    ``w`` is ``(..., N)`` float weights with the output channel on ``axis`` (for the
    GEMM form ``(K, N)``), ``b`` ``(N,)`` or None; ``input_quant``/``output_quant`` are
    the calibrated :class:`TensorQuant` of ``x`` and ``y``.  The mode is
    ``input_quant.precision``; the weights are quantized in ``weight_precision`` (the
    mode's precision by default; the int8 mode also takes int4 or binary weights, whose
    codes fit its int8 lanes) unless ``weights`` passes a :class:`QuantizedWeights`.

    Accumulator unit per channel: ``s_acc = s_in · s_w``, except in binary mode where
    the ±1 product of an input code ``c`` (real ``c · s_in``) counts ``(2c − 1)`` and
    ``s_acc = s_in · α / 2``; the offset enters the bias as ``Σ_k sign(w_k)``.  Then
    ``bias = round_half_even(b / s_acc)`` (+ that offset) and
    ``(multiplier, shift) = quantize_multiplier(s_acc / s_out)``.  ``relu`` clamps
    below at the output's code of 0.

    A channel whose weights are (nearly) all zero, e.g. a dead unit, would get a scale so
    small that its bias leaves int32 or its multiplier the shift range; its weight scale
    is raised to the smallest that keeps ``|bias| ≤ 2**30`` accumulator units and the
    multiplier at least ``2**-30`` (its codes are redone with that scale).
    """
    if not isinstance(input_quant, TensorQuant) or not isinstance(output_quant, TensorQuant):
        raise TypeError("input_quant and output_quant must be TensorQuant objects")
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be a bool, not {relu!r}")
    mode = input_quant.precision
    if weights is None:
        weight_precision = mode if weight_precision is None else weight_precision
        _choice("weight_precision", weight_precision, PRECISIONS)
        if weight_precision not in _MODE_WEIGHTS[mode]:
            raise ValueError(f"weight_precision {weight_precision!r} does not run in the "
                             f"{mode} mode of the input; it needs "
                             f"{', '.join(repr(p) for p in _MODE_WEIGHTS[mode])}")
        weights = quantize_weights(w, weight_precision, axis=axis, method=weight_method)
    elif not isinstance(weights, QuantizedWeights):
        raise TypeError(f"weights must be a QuantizedWeights, not {type(weights).__name__}")
    elif weights.precision not in _MODE_WEIGHTS[mode]:
        raise ValueError(f"weights in {weights.precision} do not run in the {mode} mode")
    codes = weights.codes
    n = codes.shape[-1] if weights.axis is None else codes.shape[weights.axis]
    if weights.axis is not None and weights.axis != codes.ndim - 1:
        raise ValueError(f"the output channel must be the last axis of the weights, "
                         f"not axis {weights.axis}")
    w = _data("w", w)
    if w.shape != codes.shape:
        raise ValueError(f"w must have the shape {codes.shape} of the weight codes, "
                         f"not {w.shape}")
    bias = np.zeros(n) if b is None else _data("b", b)
    if bias.shape != (n,):
        raise ValueError(f"b must have shape ({n},), not {bias.shape}")
    s_in = float(np.float32(input_quant.scale))
    s_out = float(np.float32(output_quant.scale))
    unit = 2.0 if mode == "binary" else 1.0       # s_acc = s_in · s_w / unit
    floor = np.maximum(np.abs(bias) / 2.0 ** 30, s_out * 2.0 ** -30) * unit / s_in
    s_w = weights.channel_scale(n)
    if (s_w < floor).any():
        weights = _raise_scales(w, weights, floor)
        codes, s_w = weights.codes, weights.channel_scale(n)
    s_acc = s_in * s_w / unit
    offset = np.zeros(n, dtype=np.int64)
    if mode == "binary":
        offset = codes.reshape(-1, n).sum(axis=0, dtype=np.int64)
    q_bias = np.rint(bias / s_acc) + offset
    real = s_acc / s_out
    multiplier, shift = quantize_multiplier(real)
    out_min = output_quant.relu_min() if relu else output_quant.qmin
    return QuantizedLayer(mode, weights, q_bias.astype(np.int32),
                          np.asarray(multiplier, dtype=np.int32),
                          np.asarray(shift, dtype=np.int32), input_quant, output_quant,
                          out_min, output_quant.qmax, bool(relu), real)
