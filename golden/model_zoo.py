"""Layer tables of well-known networks: architecture only, no weights.

Each table lists the layers of one network for one image, with every tensor shape
resolved, so that MACs, weights and the GEMM shapes a cycle model needs follow from it.
Names: ``lenet5``, ``alexnet``, ``vgg16``, ``googlenet``, ``resnet50``,
``efficientnet-b4`` (:data:`MODEL_NAMES`), plus ``digits-mlp`` and ``digits-cnn`` (the
networks of :mod:`npugen.golden.digits`).  :func:`get_model` returns a
:class:`ModelTable`; :func:`load_model` also reads a table saved as JSON.

Counting convention (one for every network):

* **MACs** are the multiply-accumulates of convolution and fully connected layers for
  one image: ``out_h · out_w · (in_channels / groups) · kh · kw · out_channels`` for a
  convolution (every tap, including taps on zero padding), ``in · out`` for a fully
  connected layer.  Bias additions, pooling, activations, batch normalization (folded
  into the convolution before it), residual additions and the channel scaling of
  squeeze-and-excitation blocks carry no MACs.
* **Weights** are the multiplicative parameters of those layers (kernels and matrices);
  biases are counted apart (:attr:`ModelTable.biases`: one per output channel of a layer
  with a bias; a convolution followed by batch normalization gets one, as after
  folding) and batch-normalization statistics are not counted.

Architectures and the resulting totals (reference figures in brackets):

  name             MACs       weights    architecture
  ---------------  ---------  ---------  -----------------------------------------------
  lenet5           326.5 k    60.6 k     LeCun et al. 1998: 32×32 input, C3 with its
                   [341 k]    [60 k]     connection table, average-pool subsampling,
                                         the output layer as an 84→10 FC layer
  alexnet          724.4 M    61.0 M     Krizhevsky et al. 2012: 227×227, conv2/4/5 in
                   [724 M]    [61 M]     two groups
  vgg16            15.47 G    138.3 M    Simonyan & Zisserman 2014, configuration D
                   [15.5 G]   [138 M]
  googlenet        1.583 G    6.99 M     Szegedy et al. 2014, Table 1 (no auxiliary
                   [1.43 G]   [7 M]      classifiers); see below
  resnet50         3.86 G     25.50 M    He et al. 2015, stride on the first 1×1 of a
                   [3.9 G]    [25.5 M]   block (v1)
  efficientnet-b4  4.39 G     19.19 M    Tan & Le 2019, 380×380, width 1.4, depth 1.8,
                   [4.4 G]    [19 M]     squeeze-and-excitation as two 1×1 convolutions

The LeNet-5 reference of 341 k is the paper's count of *connections* (biases and the
inputs of the subsampling layers included: 122 304 + 5 880 + 151 600 + 2 000 + 48 120 +
10 164 + 840); multiply-accumulates by the convention above are 326 520 (−4.3 %).
GoogLeNet's 1.43 G reference does not follow from the published architecture: the
paper's own Table 1 sums to 1.586 G multiply-adds (this table: 1.583 G, the same module
by module within 1 M, except inception 5a: 51.1 M from the table's own filter counts
against the 54 M it prints); 1.43 G is that total without the 19 1×1
reduction convolutions (``conv2/3x3_reduce`` and the 3×3 and 5×5 reductions of every
inception module, the ``*_reduce`` layers, 156.4 M): 1.426 G, which
:meth:`ModelTable.macs_excluding` computes.  Decision: ``macs`` is always the full count
(1.583 G, the convention above, the one the cycle model needs: the reductions run on
the array like every other convolution); :data:`REFERENCE_EXCLUDES` names the layers a
reference figure leaves out, and :meth:`ModelTable.summary` reports that count as
``reference_macs`` (GoogLeNet: 1.426 G, within 0.3 % of 1.43 G).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYER_KINDS", "MODEL_NAMES", "REFERENCE_EXCLUDES", "GemmShape", "Layer", "ModelTable", "ModelBuilder",
           "get_model", "load_model"]

#: Layer kinds.  Only ``conv`` and ``fc`` carry MACs and weights.
LAYER_KINDS = ("conv", "fc", "maxpool", "avgpool", "add", "mul")
#: The reference networks (the digits networks come from :mod:`npugen.golden.digits`).
MODEL_NAMES = ("lenet5", "alexnet", "vgg16", "googlenet", "resnet50", "efficientnet-b4")
#: Layer-name suffixes that a network's reference MAC figure leaves out (GoogLeNet's
#: 1.43 G: the 1×1 reduction convolutions); ``macs`` always counts them.
REFERENCE_EXCLUDES = {"googlenet": "_reduce"}
_DIGITS = ("digits-mlp", "digits-cnn")
_ACTIVATIONS = (None, "relu", "relu6", "tanh", "sigmoid", "swish")


def _pos_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _pair(name, value, minimum):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, not {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise ValueError(f"{name} must hold integers of at least {minimum}, not {value!r}")
    return tuple(int(v) for v in pair)


def _shape(name, value):
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name} must be a (channels, height, width) triple, not {value!r}")
    return tuple(_pos_int(name, v) for v in value)


@dataclass(frozen=True)
class GemmShape:
    """One layer as GEMMs: ``groups`` independent products of ``(m × k) · (k × n)``.

    A convolution is lowered by im2col: ``m`` output pixels, ``k`` = input channels of a
    group times the kernel taps, ``n`` output channels of a group.  A fully connected
    layer has ``m`` = the batch.  ``macs == groups · m · k · n``.
    """
    m: int
    k: int
    n: int
    groups: int = 1

    @property
    def macs(self) -> int:
        return self.groups * self.m * self.k * self.n


@dataclass(frozen=True)
class Layer:
    """One layer with resolved shapes (``(channels, height, width)`` per image).

    ``conv``: kernel, stride, padding (symmetric, per side), dilation and groups as in
    ``torch.nn.Conv2d``.  ``fc``: flattens its input.  ``maxpool``/``avgpool``: window
    ``kernel``, ``stride`` and ``padding`` (``ceil_mode`` rounds the output size up, as
    Caffe).  ``add`` (residual) and ``mul`` (squeeze-and-excitation scaling) are
    elementwise.  ``activation`` is the function fused after a ``conv`` or ``fc``.
    """
    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    bias: bool = False
    activation: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, not {self.name!r}")
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LAYER_KINDS)}, not {self.kind!r}")
        object.__setattr__(self, "in_shape", _shape("in_shape", self.in_shape))
        object.__setattr__(self, "out_shape", _shape("out_shape", self.out_shape))
        object.__setattr__(self, "kernel", _pair("kernel", self.kernel, 1))
        object.__setattr__(self, "stride", _pair("stride", self.stride, 1))
        object.__setattr__(self, "padding", _pair("padding", self.padding, 0))
        object.__setattr__(self, "dilation", _pair("dilation", self.dilation, 1))
        _pos_int("groups", self.groups)
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be a bool, not {self.bias!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of "
                             f"{', '.join(str(a) for a in _ACTIVATIONS)}, not {self.activation!r}")
        if self.kind == "conv":
            cin, cout = self.in_shape[0], self.out_shape[0]
            if cin % self.groups or cout % self.groups:
                raise ValueError(f"groups must divide in_channels {cin} and out_channels "
                                 f"{cout}, not {self.groups}")
            expected = (cout,) + conv_output_size(self.in_shape[1:], self.kernel, self.stride,
                                                  self.padding, self.dilation)
            if self.out_shape != expected:
                raise ValueError(f"out_shape of conv layer {self.name!r} must be {expected}, "
                                 f"not {self.out_shape}")
        elif self.kind == "fc":
            if self.out_shape[1:] != (1, 1):
                raise ValueError(f"out_shape of fc layer {self.name!r} must be (n, 1, 1), "
                                 f"not {self.out_shape}")
            if self.groups != 1:
                raise ValueError(f"groups of fc layer {self.name!r} must be 1, not {self.groups}")

    @property
    def in_channels(self) -> int:
        return self.in_shape[0]

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    @property
    def gemm(self) -> GemmShape | None:
        """The layer as GEMMs for one image, or ``None`` for a layer without MACs."""
        if self.kind == "conv":
            kh, kw = self.kernel
            return GemmShape(self.out_shape[1] * self.out_shape[2],
                             self.in_channels // self.groups * kh * kw,
                             self.out_channels // self.groups, self.groups)
        if self.kind == "fc":
            return GemmShape(1, math.prod(self.in_shape), self.out_channels, 1)
        return None

    @property
    def macs(self) -> int:
        gemm = self.gemm
        return gemm.macs if gemm else 0

    @property
    def weights(self) -> int:
        gemm = self.gemm
        return gemm.groups * gemm.k * gemm.n if gemm else 0

    @property
    def biases(self) -> int:
        return self.out_channels if self.gemm and self.bias else 0

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "in_shape": list(self.in_shape),
               "out_shape": list(self.out_shape)}
        if self.kind in ("conv", "maxpool", "avgpool"):
            out.update(kernel=list(self.kernel), stride=list(self.stride),
                       padding=list(self.padding))
        if self.kind == "conv":
            out.update(dilation=list(self.dilation), groups=self.groups)
        if self.kind in ("conv", "fc"):
            out.update(bias=self.bias, activation=self.activation)
        return out


def conv_output_size(size, kernel, stride, padding, dilation=(1, 1), *, ceil_mode=False):
    """Output ``(height, width)`` of a convolution or pooling window over ``size``."""
    out = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        span = n + 2 * p - d * (k - 1) - 1
        if span < 0:
            raise ValueError(f"kernel {tuple(kernel)} with dilation {tuple(dilation)} does not "
                             f"fit the padded input {tuple(size)} (padding {tuple(padding)})")
        steps = -(-span // s) if ceil_mode else span // s
        if ceil_mode and steps * s >= n + p:
            steps -= 1  # the last window must start inside the input or its left padding
        out.append(steps + 1)
    return tuple(out)


@dataclass(frozen=True)
class ModelTable:
    """The layers of one network for one ``input_shape`` image."""
    name: str
    input_shape: tuple
    layers: tuple

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def biases(self) -> int:
        return sum(layer.biases for layer in self.layers)

    def compute_layers(self) -> tuple:
        """The layers that carry MACs (``conv`` and ``fc``), in order."""
        return tuple(layer for layer in self.layers if layer.gemm is not None)

    def gemms(self, batch=1) -> list:
        """``(layer name, GemmShape)`` of every compute layer for ``batch`` images."""
        batch = _pos_int("batch", batch)
        out = []
        for layer in self.compute_layers():
            g = layer.gemm
            out.append((layer.name, GemmShape(g.m * batch, g.k, g.n, g.groups)))
        return out

    def macs_excluding(self, suffix: str) -> int:
        """MACs of the layers whose name does not end with ``suffix``."""
        return sum(layer.macs for layer in self.layers if not layer.name.endswith(suffix))

    def summary(self) -> dict:
        """Totals; ``reference_macs`` (and the excluded suffix) for a network whose
        reference figure counts fewer layers (:data:`REFERENCE_EXCLUDES`)."""
        result = {"model": self.name, "input_shape": list(self.input_shape),
                  "macs": self.macs, "weights": self.weights, "biases": self.biases,
                  "compute_layers": len(self.compute_layers())}
        if self.name in REFERENCE_EXCLUDES:
            suffix = REFERENCE_EXCLUDES[self.name]
            result["reference_macs"] = self.macs_excluding(suffix)
            result["reference_excludes"] = f"*{suffix}"
        return result

    def to_dict(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, data) -> "ModelTable":
        if not isinstance(data, dict):
            raise TypeError(f"a model table must be a dict, not {type(data).__name__}")
        for key in ("name", "input_shape", "layers"):
            if key not in data:
                raise ValueError(f"a model table needs the key {key!r}")
        layers = []
        for i, entry in enumerate(data["layers"]):
            if not isinstance(entry, dict):
                raise TypeError(f"layer {i} must be a dict, not {type(entry).__name__}")
            fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry.items()}
            try:
                layers.append(Layer(**fields))
            except TypeError as exc:
                raise ValueError(f"layer {i}: {exc}") from None
        return cls(str(data["name"]), _shape("input_shape", data["input_shape"]), tuple(layers))


class ModelBuilder:
    """Builds a :class:`ModelTable` layer by layer, tracking the current shape.

    Every method takes an optional ``inp`` shape (default: the current one, i.e. the
    output of the previous layer), appends a layer, makes its output current and returns
    that shape, so branches (Inception, residual blocks) are written by passing ``inp``.
    """

    def __init__(self, name, input_shape):
        self.name = name
        self.input_shape = _shape("input_shape", input_shape)
        self.shape = self.input_shape
        self.layers = []

    def _add(self, layer):
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"layer name {layer.name!r} is used twice in {self.name}")
        self.layers.append(layer)
        self.shape = layer.out_shape
        return layer.out_shape

    def conv(self, name, out_channels, kernel, *, stride=1, padding=0, dilation=1, groups=1,
             bias=True, activation="relu", inp=None):
        inp = self.shape if inp is None else _shape("inp", inp)
        kernel, stride = _pair("kernel", kernel, 1), _pair("stride", stride, 1)
        padding, dilation = _pair("padding", padding, 0), _pair("dilation", dilation, 1)
        out = (_pos_int("out_channels", out_channels),) + conv_output_size(
            inp[1:], kernel, stride, padding, dilation)
        return self._add(Layer(name, "conv", inp, out, kernel, stride, padding, dilation,
                               groups, bias, activation))

    def fc(self, name, out_features, *, bias=True, activation=None, inp=None):
        inp = self.shape if inp is None else _shape("inp", inp)
        out = (_pos_int("out_features", out_features), 1, 1)
        return self._add(Layer(name, "fc", inp, out, bias=bias, activation=activation))

    def pool(self, name, kind, kernel, *, stride=None, padding=0, ceil_mode=False, inp=None):
        if kind not in ("maxpool", "avgpool"):
            raise ValueError(f"kind must be 'maxpool' or 'avgpool', not {kind!r}")
        inp = self.shape if inp is None else _shape("inp", inp)
        kernel = _pair("kernel", kernel, 1)
        stride = kernel if stride is None else _pair("stride", stride, 1)
        padding = _pair("padding", padding, 0)
        out = (inp[0],) + conv_output_size(inp[1:], kernel, stride, padding,
                                           ceil_mode=ceil_mode)
        return self._add(Layer(name, kind, inp, out, kernel, stride, padding))

    def global_pool(self, name, *, inp=None):
        inp = self.shape if inp is None else _shape("inp", inp)
        return self.pool(name, "avgpool", inp[1:], inp=inp)

    def elementwise(self, name, kind, a, b=None):
        """``add`` (residual: two equal shapes) or ``mul`` (``b`` is ``(c, 1, 1)``)."""
        a = _shape("a", a)
        b = a if b is None else _shape("b", b)
        if kind == "add" and a != b:
            raise ValueError(f"add needs equal shapes, not {a} and {b}")
        if kind == "mul" and (b[0] != a[0] or b[1:] not in ((1, 1), a[1:])):
            raise ValueError(f"mul needs a scale of shape ({a[0]}, 1, 1) or {a}, not {b}")
        return self._add(Layer(name, kind, a, a))

    def concat(self, shapes):
        """Channel concatenation of branch outputs (no layer: it costs no MACs)."""
        shapes = [_shape("shapes", s) for s in shapes]
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError(f"concat needs equal spatial sizes, not {shapes}")
        self.shape = (sum(s[0] for s in shapes),) + shapes[0][1:]
        return self.shape

    def build(self) -> ModelTable:
        return ModelTable(self.name, self.input_shape, tuple(self.layers))


# -- the networks -----------------------------------------------------------------------


def _lenet5():
    b = ModelBuilder("lenet5", (1, 32, 32))
    b.conv("c1", 6, 5, activation="tanh")
    s2 = b.pool("s2", "avgpool", 2)
    # C3's connection table (LeCun et al. 1998, Table I): maps 0-5 see 3 consecutive
    # maps of S2, maps 6-14 see 4, map 15 sees all 6.  Each part is a grouped
    # convolution over the gathered input maps (one group per output map).
    a = b.conv("c3_3inputs", 6, 5, groups=6, activation="tanh", inp=(18,) + s2[1:])
    c = b.conv("c3_4inputs", 9, 5, groups=9, activation="tanh", inp=(36,) + s2[1:])
    d = b.conv("c3_6inputs", 1, 5, activation="tanh", inp=s2)
    b.concat([a, c, d])
    b.pool("s4", "avgpool", 2)
    b.conv("c5", 120, 5, activation="tanh")
    b.fc("f6", 84, activation="tanh")
    b.fc("output", 10)
    return b.build()


def _alexnet():
    b = ModelBuilder("alexnet", (3, 227, 227))
    b.conv("conv1", 96, 11, stride=4)
    b.pool("pool1", "maxpool", 3, stride=2)
    b.conv("conv2", 256, 5, padding=2, groups=2)
    b.pool("pool2", "maxpool", 3, stride=2)
    b.conv("conv3", 384, 3, padding=1)
    b.conv("conv4", 384, 3, padding=1, groups=2)
    b.conv("conv5", 256, 3, padding=1, groups=2)
    b.pool("pool5", "maxpool", 3, stride=2)
    b.fc("fc6", 4096, activation="relu")
    b.fc("fc7", 4096, activation="relu")
    b.fc("fc8", 1000)
    return b.build()


def _vgg16():
    b = ModelBuilder("vgg16", (3, 224, 224))
    for stage, (count, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], 1):
        for i in range(1, count + 1):
            b.conv(f"conv{stage}_{i}", width, 3, padding=1)
        b.pool(f"pool{stage}", "maxpool", 2)
    b.fc("fc6", 4096, activation="relu")
    b.fc("fc7", 4096, activation="relu")
    b.fc("fc8", 1000)
    return b.build()


# GoogLeNet inception modules (Szegedy et al. 2014, Table 1):
# #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
_INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _inception(b, name, spec):
    n1, r3, n3, r5, n5, pp = spec
    x = b.shape
    o1 = b.conv(f"inception_{name}/1x1", n1, 1, inp=x)
    r = b.conv(f"inception_{name}/3x3_reduce", r3, 1, inp=x)
    o3 = b.conv(f"inception_{name}/3x3", n3, 3, padding=1, inp=r)
    r = b.conv(f"inception_{name}/5x5_reduce", r5, 1, inp=x)
    o5 = b.conv(f"inception_{name}/5x5", n5, 5, padding=2, inp=r)
    p = b.pool(f"inception_{name}/pool", "maxpool", 3, stride=1, padding=1, inp=x)
    op = b.conv(f"inception_{name}/pool_proj", pp, 1, inp=p)
    return b.concat([o1, o3, o5, op])


def _googlenet():
    b = ModelBuilder("googlenet", (3, 224, 224))
    b.conv("conv1/7x7_s2", 64, 7, stride=2, padding=3)
    b.pool("pool1/3x3_s2", "maxpool", 3, stride=2, ceil_mode=True)
    b.conv("conv2/3x3_reduce", 64, 1)
    b.conv("conv2/3x3", 192, 3, padding=1)
    b.pool("pool2/3x3_s2", "maxpool", 3, stride=2, ceil_mode=True)
    for name in ("3a", "3b"):
        _inception(b, name, _INCEPTION[name])
    b.pool("pool3/3x3_s2", "maxpool", 3, stride=2, ceil_mode=True)
    for name in ("4a", "4b", "4c", "4d", "4e"):
        _inception(b, name, _INCEPTION[name])
    b.pool("pool4/3x3_s2", "maxpool", 3, stride=2, ceil_mode=True)
    for name in ("5a", "5b"):
        _inception(b, name, _INCEPTION[name])
    b.global_pool("pool5/7x7_s1")
    b.fc("loss3/classifier", 1000)
    return b.build()


def _resnet50():
    b = ModelBuilder("resnet50", (3, 224, 224))
    b.conv("conv1", 64, 7, stride=2, padding=3)
    b.pool("pool1", "maxpool", 3, stride=2, padding=1)
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], 2):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 2 else 1
            x = b.shape
            name = f"res{stage}{chr(ord('a') + i)}"
            b.conv(f"{name}_branch2a", width, 1, stride=stride, inp=x)
            b.conv(f"{name}_branch2b", width, 3, padding=1)
            y = b.conv(f"{name}_branch2c", 4 * width, 1, activation=None)
            if i == 0:
                x = b.conv(f"{name}_branch1", 4 * width, 1, stride=stride, activation=None, inp=x)
            b.elementwise(f"{name}_add", "add", y, x)
    b.global_pool("pool5")
    b.fc("fc1000", 1000)
    return b.build()


def _make_divisible(value, divisor=8):
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


# EfficientNet-B0 stages: expansion, kernel, stride, input and output channels, repeats.
_EFFICIENTNET_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                    (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                    (6, 3, 1, 192, 320, 1)]


def _efficientnet(name, width, depth, resolution):
    b = ModelBuilder(name, (3, resolution, resolution))
    stem = _make_divisible(32 * width)
    b.conv("stem", stem, 3, stride=2, padding=1, bias=True, activation="swish")
    for stage, (expand, kernel, stride, cin, cout, repeats) in enumerate(_EFFICIENTNET_B0, 1):
        cin, cout = _make_divisible(cin * width), _make_divisible(cout * width)
        for i in range(math.ceil(repeats * depth)):
            x = b.shape
            prefix = f"stage{stage}_block{i}"
            in_c = x[0]
            hidden = _make_divisible(in_c * expand)
            if expand != 1:
                b.conv(f"{prefix}_expand", hidden, 1, activation="swish", inp=x)
            h = b.conv(f"{prefix}_depthwise", hidden, kernel, stride=stride if i == 0 else 1,
                       padding=kernel // 2, groups=hidden, activation="swish")
            squeeze = max(1, in_c // 4)
            s = b.global_pool(f"{prefix}_se_pool", inp=h)
            s = b.conv(f"{prefix}_se_reduce", squeeze, 1, activation="swish", inp=s)
            s = b.conv(f"{prefix}_se_expand", hidden, 1, activation="sigmoid", inp=s)
            b.elementwise(f"{prefix}_se_scale", "mul", h, s)
            y = b.conv(f"{prefix}_project", cout, 1, activation=None)
            if i > 0 and in_c == cout:
                b.elementwise(f"{prefix}_add", "add", y, x)
    b.conv("head", _make_divisible(1280 * width), 1, activation="swish")
    b.global_pool("pool")
    b.fc("classifier", 1000)
    return b.build()


_BUILDERS = {
    "lenet5": _lenet5,
    "alexnet": _alexnet,
    "vgg16": _vgg16,
    "googlenet": _googlenet,
    "resnet50": _resnet50,
    "efficientnet-b4": lambda: _efficientnet("efficientnet-b4", 1.4, 1.8, 380),
}


def get_model(name: str) -> ModelTable:
    """The layer table called ``name`` (:data:`MODEL_NAMES`, ``digits-mlp``, ``digits-cnn``)."""
    if name in _BUILDERS:
        return _BUILDERS[name]()
    if name in _DIGITS:
        from .digits import layer_table
        return layer_table(name.split("-", 1)[1])
    raise ValueError(f"model must be one of {', '.join(MODEL_NAMES + _DIGITS)}, not {name!r}")


def load_model(name_or_path) -> ModelTable:
    """A table by name, or from a JSON file written from :meth:`ModelTable.to_dict`."""
    if isinstance(name_or_path, str) and (name_or_path in _BUILDERS or name_or_path in _DIGITS):
        return get_model(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES + _DIGITS)} or a JSON "
                         f"file, not {str(name_or_path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"model file {str(path)!r} is not valid JSON: {exc}") from None
    return ModelTable.from_dict(data)
