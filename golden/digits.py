"""The digits networks: a small MLP and a LeNet-style CNN, float and quantized inference.

Data: the 8×8 handwritten digits that ship inside scikit-learn
(``sklearn.datasets.load_digits``, 1 797 images, pixels 0..16; no download).  The
network input is ``pixel / 16`` in ``[0, 1]``.  The split is fixed by index: the
**test split** is the 360 images whose index is a multiple of 5, the **training split**
the other 1 437; the **calibration sample** is the first 200 images of the training
split.  scikit-learn is needed only to load the images (the ``models`` extra).

Architectures (weights in ``golden/data/digits_<kind>.npz``, written by
``scripts/train_digits.py``; FC weights ``(K, N)``, convolution kernels
``[kh, kw, C_in, C_out]``, activations NHWC, flattened in (h, w, c) order):

* ``mlp``: fc1 64→64 ReLU, fc2 64→32 ReLU, fc3 32→10.
* ``cnn``: conv1 3×3 1→8 (padding 1) ReLU, 2×2 max pool, conv2 3×3 8→16 (padding 1)
  ReLU, 2×2 max pool, fc1 64→32 ReLU, fc2 32→10.

Quantized inference (:func:`quantize_network`) runs every layer on the golden kernels
of the NPU: FC layers through :class:`~npugen.golden.calibration.QuantizedLayer`
(``qgemm``, ``qgemm_int4``, ``xnor_popcount_gemm``), convolutions through
``npugen.golden.conv.qconv2d`` (int8 and int4 mode: the arithmetic is the same, int4
only packs) or, in binary mode, ``conv2d_integer`` of the 0/1 codes:
``2·popcount(XNOR) − K = 2·Σ c·t − Σ t`` exactly, padding taps being code 0 (bit 0,
i.e. −1, the real value 0).  Max pooling works on the codes (quantization is monotone,
so it commutes with requantization).  Activations are per tensor (the NPU has one
activation zero point), weights per output channel; ReLU is the requantizer's clamp.

A variant is a precision (the NPU mode of the layers), optionally applied to the
weights only (the layers then run in int8 mode with int4 or ±1 codes), with the first
and last layers kept in int8 or not, and optional pruning (``"2:4"`` along K, for
convolutions in groups of 4 input channels of one kernel tap, :func:`prune_2_4`; or an
unstructured fraction of each layer by magnitude) applied to the float weights before
quantization.  No variant is retrained, except that ``int8-2:4-finetuned`` starts from
the committed 2:4 network that ``scripts/train_digits.py`` fine-tuned with fixed masks.

Test-split accuracy (360 images; :func:`accuracy_report`, ``python -m
npugen.golden.digits``):

| variant | mlp | cnn |
|---|---|---|
| float | 97.50 % | 98.06 % |
| float-2:4-finetuned | 97.22 % | 98.06 % |
| int8 | 97.78 % | 98.06 % |
| int8-percentile | 97.50 % | 98.33 % |
| int8-entropy | 97.78 % | 98.06 % |
| int8-2:4 | 82.22 % | 78.61 % |
| int8-2:4-finetuned | 97.22 % | 98.61 % |
| int8-sparse50 | 88.06 % | 87.50 % |
| int4 | 96.94 % | 97.22 % |
| int4-all-layers | 97.22 % | 95.28 % |
| int4-weights | 97.50 % | 98.06 % |
| binary | 85.56 % | 33.06 % |
| binary-weights | 93.06 % | 46.94 % |
| bf16 | 97.50 % | 98.06 % |

``int8`` calibrates activations by min/max, ``-percentile`` at 99.99 %, ``-entropy``
by KL divergence.  ``int8-2:4`` prunes the dense weights to 2:4 in one shot,
``int8-2:4-finetuned`` quantizes the 2:4 network fine-tuned with fixed masks
(``digits_<kind>_2of4.npz``); ``int8-sparse50`` prunes 50 % of every layer's weights by
magnitude.  ``int4`` and ``binary`` run the hidden layers in that NPU mode (both
operands) and keep the first and last layers in int8; ``int4-all-layers`` does not;
``-weights`` quantizes only the weights (activations int8, int8 mode).  Binary
post-training quantization without retraining costs the MLP 12 points and the CNN most
of its accuracy (its 8 and 16 channels leave little to average over); one-shot 2:4 and
50 % pruning cost 10 to 20 points, which fine-tuning with the masks fixed recovers.

BF16 inference (:func:`bf16_network`, :class:`BF16Network`) runs every layer in the
NPU's bf16 MAC mode and replicates it bit for bit:

* weights and biases: the trained float32 values rounded to BF16 (nearest even); the
  input: ``pixel / 16`` in BF16 (exact: multiples of 1/16 in [0, 1]);
* every FC layer and convolution is a :func:`~npugen.golden.bf16_gemm.bf16_gemm` with
  FP32 sums in the array's fixed order, K tiles of ``rows / 2`` elements: FC layers K
  in order, zero-padded to whole tiles; convolutions (stride 1, padding 1, padding taps
  +0) one K tile group per kernel tap in (ky, kx) order, each tap's channels
  zero-padded to whole tiles;
* the bias is folded into the GEMM as one extra K tile: activation 1.0, weight the
  bias in BF16, alone in its tile, so that ``y = fp32(Σ + b)`` (the last addition of
  the fixed order);
* ReLU, 2×2 max pooling and the rounding of the FP32 results to the next layer's BF16
  operands (nearest even, subnormals kept, canonical NaN 0x7FC0) are the NPU's VECTOR
  MAX on the FP32 bit patterns followed by TO_BF16_RELU: pooling first compares the
  bit patterns as int32, which orders non-negative floats correctly and puts every
  negative value below every non-negative one, so after the ReLU the result is the
  float max pooling of the ReLU outputs (for every value but NaN); rounding to BF16 is
  monotone, so pooling before or after it is the same;
* the logits are FP32 (bit patterns); the prediction is their argmax.

The accuracy report's ``bf16`` row uses the summation order of ``rows = 8`` (the
default preset); other row counts change the order and may change single logits' last
bits, very rarely a prediction.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .calibration import (
    METHODS,
    PRECISIONS,
    QuantizedLayer,
    TensorQuant,
    activation_quant,
    quantize_layer,
)
from .conv import conv2d_integer, qconv2d
from .bf16_gemm import bf16_gemm
from .floating import fp32_to_bf16_bits
from .model_zoo import ModelBuilder, ModelTable
from .pruning import prune_magnitude, prune_n_m
from .quant import requantize

__all__ = ["KINDS", "VARIANTS", "TEST_SIZE", "CALIBRATION_SIZE", "SPARSE_SUFFIX", "LayerSpec",
           "load_digits_split", "DigitsNetwork", "load_network", "conv2d_float", "maxpool2x2",
           "prune_2_4",
           "QuantizedNetwork", "quantize_network", "accuracy_report", "format_report",
           "layer_table", "ARCHITECTURES", "WEIGHT_SHAPES", "DATA_DIR", "BF16Network",
           "bf16_network", "bf16_fc_operands", "bf16_conv_operands", "BF16_REPORT_ROWS",
           "ONE_BF16"]

#: Rows (the summation order) of the ``bf16`` row of :func:`accuracy_report`.
BF16_REPORT_ROWS = 8
#: BF16 1.0: the activation of the bias K tile.
ONE_BF16 = 0x3F80

#: Network kinds.
KINDS = ("mlp", "cnn")
#: Images in the test split and in the calibration sample.
TEST_SIZE = 360
CALIBRATION_SIZE = 200
#: Where the trained float weights live.
DATA_DIR = Path(__file__).resolve().parent / "data"
#: File name suffix of the 2:4-pruned, fine-tuned networks.
SPARSE_SUFFIX = "_2of4"


class LayerSpec(NamedTuple):
    """One compute layer: name, ``fc``/``conv``, fused ReLU, 2×2 max pool after it."""
    name: str
    kind: str
    relu: bool
    pool: bool


ARCHITECTURES = {
    "mlp": (LayerSpec("fc1", "fc", True, False), LayerSpec("fc2", "fc", True, False),
            LayerSpec("fc3", "fc", False, False)),
    "cnn": (LayerSpec("conv1", "conv", True, True), LayerSpec("conv2", "conv", True, True),
            LayerSpec("fc1", "fc", True, False), LayerSpec("fc2", "fc", False, False)),
}

#: Shapes of the trained parameters (weights; the bias is ``(N,)``).
WEIGHT_SHAPES = {
    "mlp": {"fc1": (64, 64), "fc2": (64, 32), "fc3": (32, 10)},
    "cnn": {"conv1": (3, 3, 1, 8), "conv2": (3, 3, 8, 16), "fc1": (64, 32), "fc2": (32, 10)},
}

#: The variants of :func:`accuracy_report`: name → :func:`quantize_network` options
#: (``network: "2:4"`` takes the 2:4 fine-tuned weights instead of the dense ones).
VARIANTS = {
    "int8": {"precision": "int8"},
    "int8-percentile": {"precision": "int8", "method": "percentile"},
    "int8-entropy": {"precision": "int8", "method": "entropy"},
    "int8-2:4": {"precision": "int8", "sparsity": "2:4"},
    "int8-2:4-finetuned": {"precision": "int8", "sparsity": "2:4", "network": "2:4"},
    "int8-sparse50": {"precision": "int8", "sparsity": 0.5},
    "int4": {"precision": "int4"},
    "int4-all-layers": {"precision": "int4", "first_last_int8": False},
    "int4-weights": {"precision": "int4", "weights_only": True},
    "binary": {"precision": "binary"},
    "binary-weights": {"precision": "binary", "weights_only": True},
}


def _kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


# -- data ------------------------------------------------------------------------------


def load_digits_split():
    """``(x_train, y_train, x_test, y_test)``: images ``(n, 8, 8)`` float64 in [0, 1].

    Needs scikit-learn (the data set is bundled with it).  Test: indices ``i % 5 == 0``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data set needs scikit-learn: "
                          "pip install 'npugen[models]'") from None
    data = load_digits()
    x = data.images.astype(np.float64) / 16.0
    y = data.target.astype(np.int64)
    test = np.arange(len(y)) % 5 == 0
    return x[~test], y[~test], x[test], y[test]


# -- float inference ----------------------------------------------------------------------


def conv2d_float(x, w, b, padding):
    """Float convolution (NHWC, ``w`` ``[kh, kw, C_in, C_out]``, stride 1), for reference."""
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, w, optimize=True) + b


def maxpool2x2(x):
    """2×2 max pooling with stride 2 of an NHWC array (float values or codes)."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"maxpool2x2 needs an even height and width, not {h}×{w}")
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _input(kind, x):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(f"images must have shape (n, 8, 8), not {x.shape}")
    return x.reshape(len(x), 64) if kind == "mlp" else x[..., None]


@dataclass(frozen=True)
class DigitsNetwork:
    """Trained float weights of one network and its metadata."""
    kind: str
    params: dict
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        _kind(self.kind)
        for name, shape in WEIGHT_SHAPES[self.kind].items():
            for key, want in ((f"{name}.w", shape), (f"{name}.b", shape[-1:])):
                got = np.shape(self.params.get(key))
                if key not in self.params or got != want:
                    raise ValueError(f"parameter {key} of the {self.kind} must have shape "
                                     f"{want}, not {got if key in self.params else 'missing'}")

    @property
    def specs(self):
        return ARCHITECTURES[self.kind]

    def forward(self, x, *, trace=False):
        """Logits ``(n, 10)`` of images ``(n, 8, 8)``; with ``trace`` also the input of
        every compute layer (after the previous layer's ReLU and pooling)."""
        h = _input(self.kind, x)
        inputs = []
        for spec in self.specs:
            w, b = self.params[f"{spec.name}.w"], self.params[f"{spec.name}.b"]
            if spec.kind == "fc":
                h = h.reshape(len(h), -1)
            inputs.append(h)
            h = h @ w + b if spec.kind == "fc" else conv2d_float(h, w, b, 1)
            if spec.relu:
                h = np.maximum(h, 0.0)
            if spec.pool:
                h = maxpool2x2(h)
        return (h, inputs) if trace else h

    def predict(self, x):
        return np.argmax(self.forward(x), axis=1)


def load_network(kind, *, sparse=False, path=None) -> DigitsNetwork:
    """The committed float network ``kind``, its 2:4 fine-tuned version with ``sparse``,
    or the ``.npz`` at ``path``."""
    _kind(kind)
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be a bool, not {sparse!r}")
    if path is None:
        path = DATA_DIR / f"digits_{kind}{SPARSE_SUFFIX if sparse else ''}.npz"
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        params = {key: data[key].astype(np.float64) for key in data.files if key != "meta"}
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    if meta.get("kind", kind) != kind:
        raise ValueError(f"{path} holds a {meta['kind']} network, not a {kind}")
    return DigitsNetwork(kind, params, meta)


# -- quantized inference ------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedNetwork:
    """A digits network in integers: input quantization and one
    :class:`~npugen.golden.calibration.QuantizedLayer` per compute layer."""
    kind: str
    specs: tuple
    input_quant: TensorQuant
    layers: tuple
    options: dict

    def forward(self, x) -> np.ndarray:
        """int8 logit codes ``(n, 10)`` of float images ``(n, 8, 8)``."""
        return self.forward_codes(self.input_quant.quantize(_input(self.kind, x)))

    def forward_codes(self, codes) -> np.ndarray:
        """The integer network on input codes (``(n, 64)`` MLP, ``(n, 8, 8, 1)`` CNN)."""
        h = np.asarray(codes, dtype=np.int8)
        for spec, layer in zip(self.specs, self.layers):
            if spec.kind == "fc":
                h = layer.forward(h.reshape(len(h), -1))
            else:
                h = _conv_layer(layer, h)
            if spec.pool:
                h = maxpool2x2(h)
        return h

    def predict(self, x):
        return np.argmax(self.forward(x), axis=1)

    def report(self) -> list:
        """Per-layer scales, zero points, multipliers and shifts."""
        return [{"layer": spec.name, **layer.report()}
                for spec, layer in zip(self.specs, self.layers)]


def _conv_layer(layer: QuantizedLayer, codes):
    w = layer.weights.codes
    if layer.mode != "binary":
        return qconv2d(codes, w, x_zero_point=layer.input.zero_point, bias=layer.bias,
                       multiplier=layer.multiplier, shift=layer.shift,
                       out_zero_point=layer.output.zero_point, out_min=layer.out_min,
                       out_max=layer.out_max, padding=1)
    # XNOR-popcount over the taps (padding taps are code 0, i.e. -1): 2·Σ c·t − Σ t.
    acc = 2 * conv2d_integer(codes, w, 0, padding=1, acc_bits=64) \
        - w.reshape(-1, w.shape[-1]).sum(axis=0, dtype=np.int64)
    out = requantize(acc, layer.multiplier, layer.shift, bias=layer.bias,
                     out_zero_point=layer.output.zero_point, out_min=layer.out_min,
                     out_max=layer.out_max)
    return np.asarray(out, dtype=np.int8)


def prune_2_4(w):
    """``(pruned, mask)`` of float weights pruned to 2:4 along K, in the compiler's layout.

    FC weights ``(K, N)``: groups of 4 consecutive rows (``prune_n_m``).  Convolution
    kernels ``[kh, kw, C_in, C_out]``: groups of 4 consecutive input channels of one
    kernel tap, because the compiler's K tiles are one tap × channels padded per tap
    (``docs/ARCHITECTURE.md``); a tap with fewer than 4 channels is never pruned.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 2:
        result = prune_n_m(w, 2, 4)
        return result.weights, result.mask
    if w.ndim != 4:
        raise ValueError(f"w must be (K, N) or [kh, kw, C_in, C_out], not shape {w.shape}")
    taps = w.reshape(-1, w.shape[2], w.shape[3])
    results = [prune_n_m(tap, 2, 4) for tap in taps]
    pruned = np.stack([r.weights for r in results]).reshape(w.shape)
    mask = np.stack([r.mask for r in results]).reshape(w.shape)
    return pruned, mask


def _prune(w, sparsity):
    """``w`` pruned to 2:4 (:func:`prune_2_4`) or an unstructured fraction of the layer."""
    if sparsity == "2:4":
        return prune_2_4(w)[0]
    return prune_magnitude(w.reshape(-1, w.shape[-1]), sparsity).weights.reshape(w.shape)


def quantize_network(net: DigitsNetwork, calibration, precision="int8", *, weights_only=False,
                     first_last_int8=None, sparsity=None, method="minmax", percentile=99.99):
    """Calibrate ``net`` on the images ``calibration`` and quantize it.

    ``precision`` is the NPU mode of the layers (int8, int4, binary); with
    ``weights_only`` only the weights take it and every layer runs in int8 mode.
    ``first_last_int8`` (default: True unless ``precision`` is int8) keeps the first
    and the last layer in int8.  ``sparsity``: None, ``"2:4"`` or a fraction in [0, 1]
    of unstructured magnitude pruning, applied per layer to the float weights.
    ``method`` calibrates the activations (``percentile`` uses ``percentile``); weights
    take min/max per output channel.  The logits are int8.
    """
    if not isinstance(net, DigitsNetwork):
        raise TypeError(f"net must be a DigitsNetwork, not {type(net).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not isinstance(weights_only, bool):
        raise TypeError(f"weights_only must be a bool, not {weights_only!r}")
    if first_last_int8 is None:
        first_last_int8 = precision != "int8"
    if not isinstance(first_last_int8, bool):
        raise TypeError(f"first_last_int8 must be a bool or None, not {first_last_int8!r}")
    if sparsity is not None and sparsity != "2:4" and (
            isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real)
            or not 0.0 <= sparsity <= 1.0):
        raise ValueError(f"sparsity must be None, '2:4' or a fraction in [0, 1], "
                         f"not {sparsity!r}")
    if sparsity is not None and not (precision == "int8" or weights_only):
        raise ValueError(f"sparsity needs int8 layers (the sparse modes are int8), "
                         f"not precision {precision!r}")

    logits, inputs = net.forward(calibration, trace=True)
    specs = net.specs
    last = len(specs) - 1
    modes, weight_precisions = [], []
    for i in range(len(specs)):
        edge = first_last_int8 and i in (0, last)
        layer_precision = "int8" if edge else precision
        modes.append("int8" if weights_only else layer_precision)
        weight_precisions.append(layer_precision)
    options = {"method": method}
    if method == "percentile":
        options["percentile"] = percentile
    quants = [activation_quant(inputs[i], modes[i], **options) for i in range(len(specs))]
    quants.append(activation_quant(logits, "int8", **options))
    layers = []
    for i, spec in enumerate(specs):
        w, b = net.params[f"{spec.name}.w"], net.params[f"{spec.name}.b"]
        if sparsity is not None:
            w = _prune(w, sparsity)
        layers.append(quantize_layer(w, b, quants[i], quants[i + 1], relu=spec.relu,
                                     weight_precision=weight_precisions[i]))
    chosen = {"precision": precision, "weights_only": weights_only,
              "first_last_int8": first_last_int8, "sparsity": sparsity, **options}
    return QuantizedNetwork(net.kind, specs, quants[0], tuple(layers), chosen)


# -- bf16 inference ------------------------------------------------------------------------


def _tiles_of(k, k_tile):
    return -(-k // k_tile)


def bf16_fc_operands(a_bits, w_bits, b_bits, k_tile):
    """``(A, W)`` of an FC layer as the NPU multiplies them (BF16 encodings, uint16):
    K zero-padded to whole tiles of ``k_tile``, then the bias tile (A: 1.0, W: the bias
    in its first row, zeros after)."""
    a_bits, w_bits = np.asarray(a_bits, np.uint16), np.asarray(w_bits, np.uint16)
    m, k = a_bits.shape
    n = w_bits.shape[1]
    kp = _tiles_of(k, k_tile) * k_tile
    a = np.zeros((m, kp + k_tile), dtype=np.uint16)
    a[:, :k] = a_bits
    a[:, kp] = ONE_BF16
    w = np.zeros((kp + k_tile, n), dtype=np.uint16)
    w[:k] = w_bits
    w[kp] = b_bits
    return a, w


def bf16_conv_operands(x_bits, w_bits, b_bits, k_tile):
    """``(A, W)`` of a 3×3 convolution (stride 1, padding 1) as the NPU multiplies them:
    rows = output pixels (n, y, x), K = per kernel tap (ky, kx) its channels zero-padded
    to whole tiles of ``k_tile``, then the bias tile (as :func:`bf16_fc_operands`)."""
    x_bits, w_bits = np.asarray(x_bits, np.uint16), np.asarray(w_bits, np.uint16)
    n, h, wd, cin = x_bits.shape
    kh, kw, _, cout = w_bits.shape
    cp = _tiles_of(cin, k_tile) * k_tile
    xp = np.zeros((n, h + 2, wd + 2, cp), dtype=np.uint16)
    xp[:, 1:h + 1, 1:wd + 1, :cin] = x_bits
    cols = [xp[:, ky:ky + h, kx:kx + wd, :] for ky in range(kh) for kx in range(kw)]
    a = np.concatenate(cols + [np.zeros((n, h, wd, k_tile), np.uint16)], axis=3)
    a = a.reshape(n * h * wd, -1)
    a[:, kh * kw * cp] = ONE_BF16
    w = np.zeros((kh * kw, cp, cout), dtype=np.uint16)
    w[:, :cin] = w_bits.reshape(kh * kw, cin, cout)
    w = np.concatenate([w.reshape(-1, cout), np.zeros((k_tile, cout), np.uint16)])
    w[kh * kw * cp] = b_bits
    return a, w


def _relu_to_bf16(fp32_bits, relu):
    """TO_BF16(_RELU) of FP32 bit patterns (uint32, any shape) → BF16 encodings."""
    from .vector import to_bf16_bytes
    flat = np.asarray(fp32_bits, np.uint32).view(np.int32).reshape(1, -1)
    raw = to_bf16_bytes(flat, relu=relu).astype(np.uint16)
    return (raw[0, 0::2] | raw[0, 1::2] << 8).reshape(np.shape(fp32_bits))


@dataclass(frozen=True)
class BF16Network:
    """A digits network in BF16 as the NPU runs it (module docstring): per layer the
    weights ``w`` and bias ``b`` as BF16 encodings; ``rows`` fixes the summation order
    (K tiles of ``rows / 2``)."""
    kind: str
    specs: tuple
    weights: tuple
    biases: tuple
    rows: int

    @property
    def k_tile(self) -> int:
        return self.rows // 2

    def input_bits(self, x) -> np.ndarray:
        """BF16 encodings of ``pixel / 16`` (``(n, 64)`` MLP, ``(n, 8, 8, 1)`` CNN)."""
        return fp32_to_bf16_bits(_input(self.kind, x).astype(np.float32))

    def forward_bits(self, bits, *, trace=False) -> np.ndarray:
        """FP32 logit encodings ``(n, 10)`` (uint32) of BF16 input encodings; with
        ``trace`` also each layer's output (BF16 encodings, FP32 for the last)."""
        h = np.asarray(bits, dtype=np.uint16)
        outputs = []
        last = len(self.specs) - 1
        for i, (spec, w, b) in enumerate(zip(self.specs, self.weights, self.biases)):
            if spec.kind == "fc":
                h = h.reshape(len(h), -1)
                a, wa = bf16_fc_operands(h, w, b, self.k_tile)
                y = bf16_gemm(a, wa, self.k_tile)
            else:
                a, wa = bf16_conv_operands(h, w, b, self.k_tile)
                y = bf16_gemm(a, wa, self.k_tile).reshape(h.shape[:3] + (w.shape[-1],))
            if spec.pool:      # int32 max of the FP32 bit patterns (VECTOR MAX)
                y = maxpool2x2(y.view(np.int32)).view(np.uint32)
            h = y if i == last else _relu_to_bf16(y, spec.relu)
            outputs.append(h)
        return (h, outputs) if trace else h

    def forward(self, x) -> np.ndarray:
        """FP32 logits ``(n, 10)`` (float32) of float images ``(n, 8, 8)``."""
        return self.forward_bits(self.input_bits(x)).view(np.float32)

    def predict(self, x):
        return np.argmax(self.forward(x), axis=1)


def bf16_network(net: DigitsNetwork, rows: int = BF16_REPORT_ROWS) -> BF16Network:
    """``net`` with weights and biases rounded to BF16, summed in the order of an array
    of ``rows`` rows (an even number, 2..64)."""
    if not isinstance(net, DigitsNetwork):
        raise TypeError(f"net must be a DigitsNetwork, not {type(net).__name__}")
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or \
            not 2 <= rows <= 64 or rows % 2:
        raise ValueError(f"rows must be an even integer in 2..64, not {rows!r}")
    weights, biases = [], []
    for spec in ARCHITECTURES[net.kind]:
        weights.append(fp32_to_bf16_bits(net.params[f"{spec.name}.w"].astype(np.float32)))
        biases.append(fp32_to_bf16_bits(net.params[f"{spec.name}.b"].astype(np.float32)))
    return BF16Network(net.kind, ARCHITECTURES[net.kind], tuple(weights), tuple(biases),
                       int(rows))


def accuracy_report(kinds=KINDS, variants=None) -> dict:
    """Test-split accuracy of the float network and of each variant (:data:`VARIANTS`),
    and of BF16 inference (``bf16``, :func:`bf16_network` with :data:`BF16_REPORT_ROWS`;
    always with the default ``variants``, else when ``"bf16"`` is among them).

    Returns ``{kind: {"float": acc, variant: acc, ...}}`` (fractions of 1).
    """
    bf16 = variants is None or "bf16" in variants
    if variants is not None:
        variants = [name for name in variants if name != "bf16"]
    x_train, _, x_test, y_test = load_digits_split()
    calibration = x_train[:CALIBRATION_SIZE]
    names = list(VARIANTS) if variants is None else list(variants)
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {name!r}")
    report = {}
    for kind in kinds:
        nets = {"dense": load_network(kind)}
        row = {"float": float(np.mean(nets["dense"].predict(x_test) == y_test))}
        if any("network" in VARIANTS[name] for name in names):
            nets["2:4"] = load_network(kind, sparse=True)
            row["float-2:4-finetuned"] = float(np.mean(nets["2:4"].predict(x_test) == y_test))
        for name in names:
            options = dict(VARIANTS[name])
            net = nets[options.pop("network", "dense")]
            qnet = quantize_network(net, calibration, **options)
            row[name] = float(np.mean(qnet.predict(x_test) == y_test))
        if bf16:
            bnet = bf16_network(nets["dense"], BF16_REPORT_ROWS)
            row["bf16"] = float(np.mean(bnet.predict(x_test) == y_test))
        report[kind] = row
    return report


def format_report(report) -> str:
    """A Markdown table of :func:`accuracy_report` (percent)."""
    kinds = list(report)
    columns = list(report[kinds[0]])
    lines = ["| variant | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for column in columns:
        cells = " | ".join(f"{100 * report[k][column]:.2f} %" for k in kinds)
        lines.append(f"| {column} | {cells} |")
    return "\n".join(lines)


# -- layer tables ---------------------------------------------------------------------------


def layer_table(kind) -> ModelTable:
    """The network ``kind`` as a :class:`~npugen.golden.model_zoo.ModelTable`."""
    _kind(kind)
    b = ModelBuilder(f"digits-{kind}", (1, 8, 8))
    for spec in ARCHITECTURES[kind]:
        shape = WEIGHT_SHAPES[kind][spec.name]
        activation = "relu" if spec.relu else None
        if spec.kind == "fc":
            b.fc(spec.name, shape[-1], activation=activation)
        else:
            b.conv(spec.name, shape[-1], shape[:2], padding=1, activation=activation)
        if spec.pool:
            b.pool(f"{spec.name}_pool", "maxpool", 2)
    return b.build()


if __name__ == "__main__":  # pragma: no cover
    print(format_report(accuracy_report()))
