"""Building blocks shared by the floating-point units: register placement, leading zeros.

A unit is written as a chain of combinational steps with a *boundary* after each one.
:class:`Stages` turns a boundary into pipeline registers or into plain wires, so the
pipeline depth is a parameter: a unit with ``latency`` L registers the first L
boundaries of its priority order and wires the others.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.floating import FloatFormat

from .float_format import float_struct

__all__ = ["FloatUnit", "operands_layout", "Stages", "wire", "leading_zeros", "less_than",
           "registered_boundaries", "check_unit_parameters"]


def operands_layout(fmt: FloatFormat) -> data.StructLayout:
    """The payload of an operand pair: ``a`` and ``b`` in format ``fmt``."""
    struct = float_struct(fmt)
    return data.StructLayout({"a": struct, "b": struct})


def registered_boundaries(latency, priority):
    """Which boundaries (in datapath order) are registers for ``latency``: the first
    ``latency`` entries of ``priority`` (boundary indices, most important first)."""
    chosen = set(priority[:latency])
    return [i in chosen for i in range(len(priority))]


def check_unit_parameters(fmt, latency, subnormals, max_latency, *, multiplier=None,
                          multipliers=()):
    """Validate the common parameters of the FP units (raises ``TypeError``/``ValueError``)."""
    from npugen.golden.floating import SUBNORMAL_POLICIES
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat, not {fmt!r}")
    if not isinstance(latency, int) or isinstance(latency, bool) or \
            not 0 <= latency <= max_latency:
        raise ValueError(f"latency must be an integer in 0..{max_latency}, not {latency!r}")
    if subnormals not in SUBNORMAL_POLICIES:
        raise ValueError(f"subnormals must be one of {', '.join(map(repr, SUBNORMAL_POLICIES))}, "
                         f"not {subnormals!r}")
    if multiplier is not None and multiplier not in multipliers:
        raise ValueError(f"multiplier must be one of {', '.join(map(repr, multipliers))}, "
                         f"not {multiplier!r}")


class FloatUnit(wiring.Component):
    """The shell of a pipelined two-operand floating-point unit.

    ``operands`` (``a``, ``b`` in ``fmt``) in, ``result`` out, one pair per cycle with
    no back-pressure; ``result.valid`` is ``operands.valid`` delayed by ``latency``.
    ``check`` validates the parameters before anything is built (a rejected unit is
    never elaborated, so it is not reported as unused).
    """

    def __init__(self, fmt: FloatFormat, latency: int, subnormals: str, check,
                 operand_fmt: FloatFormat | None = None):
        try:
            check()
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        self._fmt = fmt
        self._operand_fmt = fmt if operand_fmt is None else operand_fmt
        self._latency = latency
        self._subnormals = subnormals
        super().__init__({
            "operands": In(stream.Signature(operands_layout(self._operand_fmt),
                                            always_ready=True)),
            "result": Out(stream.Signature(float_struct(fmt), always_ready=True)),
        })

    @property
    def fmt(self) -> FloatFormat:
        return self._fmt

    @property
    def operand_fmt(self) -> FloatFormat:
        """Format of ``operands`` (``fmt`` unless the unit widens, see the multiplier)."""
        return self._operand_fmt

    @property
    def latency(self) -> int:
        return self._latency

    @property
    def subnormals(self) -> str:
        return self._subnormals


class Stages:
    """Registers (or wires) the values crossing each boundary of a datapath.

    Parameters
    ----------
    m : Module
        Where the registers and wires go.
    registered : sequence of bool
        For every boundary, in datapath order, whether it is a register stage.
    prefix : str
        Prefix of the generated signal names.
    """

    def __init__(self, m, registered, prefix):
        self._m = m
        self._registered = list(registered)
        self._prefix = prefix
        self._index = 0

    def cut(self, **values):
        """Carry ``values`` (Amaranth values or struct views) over the next boundary.

        Returns a namespace of signals with the same names, registered (``sync``) or
        assigned combinationally, as the boundary was configured.
        """
        if self._index >= len(self._registered):
            raise RuntimeError(f"{self._prefix}: more boundaries than the "
                               f"{len(self._registered)} configured")
        registered = self._registered[self._index]
        domain = self._m.d.sync if registered else self._m.d.comb
        out = {}
        for name, value in values.items():
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
            signal = Signal(shape, name=f"{self._prefix}{self._index}_{name}")
            domain += signal.eq(value)
            out[name] = signal
        self._index += 1
        return SimpleNamespace(**out)

    @property
    def done(self):
        """Every boundary has been used."""
        return self._index == len(self._registered)


def wire(m, value, name):
    """A combinational signal carrying ``value``.

    Amaranth does not share common subexpressions: an expression used in several
    places is generated (and simulated) once per use.  Values used more than once go
    through a wire.
    """
    shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
    signal = Signal(shape, name=name)
    m.d.comb += signal.eq(value)
    return signal


def leading_zeros(value):
    """The number of leading zeros of ``value`` (its width when it is zero), as a tree.

    Each level of the tree halves the width, so the logic depth is logarithmic in the
    width.  Returns an unsigned value wide enough for ``len(value)``.
    """
    value = Value.cast(value).as_unsigned()
    width = len(value)
    size = 1
    while size < width:
        size *= 2
    # Ones below the value make the padded word nonzero unless the value is zero.
    bits = Cat(Const((1 << (size - width)) - 1, size - width), value) if size > width else value

    def count(v):
        # (all zero, leading zeros modulo len(v)) of v, the count log2(len(v)) bits wide.
        if len(v) == 1:
            return ~v[0], Const(0, 0)
        half = len(v) // 2
        hi_zero, hi_count = count(v[half:])
        lo_zero, lo_count = count(v[:half])
        total = Mux(hi_zero, Cat(lo_count, Const(1, 1)), Cat(hi_count, Const(0, 1)))
        return hi_zero & lo_zero, total

    all_zero, total = count(bits)
    return Mux(all_zero, width, total).as_unsigned()[:width.bit_length()]


def less_than(value, constant):
    """``value < constant`` for an unsigned ``value`` and an integer ``constant``, as AND/OR
    logic decided bit by bit from the top: no comparator for synthesis to put on a carry
    chain (a comparison with a constant is a small LUT tree)."""
    value = Value.cast(value).as_unsigned()
    if constant >= 1 << len(value):
        return Const(1, 1)
    if constant <= 0:
        return Const(0, 1)
    top = len(value) - 1
    rest = less_than(value[:top], constant & ((1 << top) - 1)) if top else Const(0, 1)
    if constant >> top & 1:
        return ~value[top] | rest
    return ~value[top] & rest
