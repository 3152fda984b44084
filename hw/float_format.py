"""Floating-point encodings as ``data.Struct`` views (fraction, exponent, sign; LSB first).

``float_struct(fmt)`` returns the struct class of a :class:`~npugen.golden.floating.FloatFormat`
(one class per format, cached); :data:`BF16`, :data:`FP16`, :data:`TF32` and :data:`FP32`
are the named ones.  The methods classify an operand in hardware, following the
template of ``IEEE754Single`` in the Amaranth data documentation::

    a = Signal(BF16)
    m.d.comb += nan.eq(a.is_nan()), sig.eq(a.significand("ftz"))
"""

import functools

from amaranth.hdl import Cat, Const, Mux
from amaranth.lib import data

from npugen.golden.floating import (BFLOAT16, FLOAT16, FLOAT32, SUBNORMAL_POLICIES, TENSORFLOAT32,
                                    FloatFormat)

__all__ = ["FloatStruct", "float_struct", "BF16", "FP16", "TF32", "FP32"]


class FloatStruct(data.Struct):
    """Behaviour shared by every format struct; ``float_format`` is set on each subclass."""

    #: The :class:`FloatFormat` of the subclass (a class attribute, not a field).
    float_format = None

    def is_nan(self):
        return (self.exponent == self.float_format.exp_all_ones) & (self.fraction != 0)

    def is_inf(self):
        return (self.exponent == self.float_format.exp_all_ones) & (self.fraction == 0)

    def is_subnormal(self):
        """Exponent field 0 and a nonzero fraction (before any flushing)."""
        return (self.exponent == 0) & (self.fraction != 0)

    def is_zero(self, subnormals="ieee"):
        """A zero; with ``"ftz"`` subnormals count as zeros."""
        _check_policy(subnormals)
        if subnormals == "ftz":
            return self.exponent == 0
        return (self.exponent == 0) & (self.fraction == 0)

    def significand(self, subnormals="ieee"):
        """The significand with its hidden bit (``precision`` bits); 0 for flushed operands."""
        _check_policy(subnormals)
        normal = self.exponent != 0
        if subnormals == "ftz":
            return Mux(normal, Cat(self.fraction, Const(1, 1)), 0)
        return Cat(self.fraction, normal)

    def effective_exponent(self):
        """The biased exponent of the significand's weight: 1 for subnormals and zeros."""
        return Mux(self.exponent == 0, 1, self.exponent)

    @classmethod
    def quiet_nan(cls):
        """The canonical NaN: sign 0, exponent all ones, fraction MSB 1."""
        return cls.const({"sign": 0, "exponent": cls.float_format.exp_all_ones,
                          "fraction": 1 << (cls.float_format.man_bits - 1)})


def _check_policy(subnormals):
    if subnormals not in SUBNORMAL_POLICIES:
        raise ValueError(f"subnormals must be one of {', '.join(map(repr, SUBNORMAL_POLICIES))}, "
                         f"not {subnormals!r}")


@functools.cache
def float_struct(fmt: FloatFormat) -> type:
    """The ``data.Struct`` subclass of format ``fmt``."""
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat, not {fmt!r}")
    name = str(fmt).upper().replace(".", "_")
    return type(name, (FloatStruct,), {
        "__annotations__": {"fraction": fmt.man_bits, "exponent": fmt.exp_bits, "sign": 1},
        "__module__": __name__,
        "__qualname__": name,
        "float_format": fmt,
    })


BF16 = float_struct(BFLOAT16)
FP16 = float_struct(FLOAT16)
TF32 = float_struct(TENSORFLOAT32)
FP32 = float_struct(FLOAT32)
