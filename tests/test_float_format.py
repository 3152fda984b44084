"""The floating-point format structs: layout, caching and the classification methods."""

import re

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data
from amaranth.sim import Simulator

from npugen.golden.floating import BFLOAT16, FLOAT32, TENSORFLOAT32, FloatFormat, special_values
from npugen.hw.float_format import BF16, FP16, FP32, TF32, FloatStruct, float_struct


def test_layouts():
    for struct, fmt in ((BF16, BFLOAT16), (TF32, TENSORFLOAT32), (FP32, FLOAT32)):
        layout = data.Layout.cast(struct)
        assert layout.size == fmt.width
        assert [(name, field.offset, field.width) for name, field in layout] == [
            ("fraction", 0, fmt.man_bits), ("exponent", fmt.man_bits, fmt.exp_bits),
            ("sign", fmt.width - 1, 1)]
        assert issubclass(struct, FloatStruct) and struct.float_format is fmt
    assert (BF16.__name__, FP16.__name__) == ("BF16", "FP16")
    assert float_struct(FloatFormat(8, 7)) is BF16          # cached by widths
    assert float_struct(FloatFormat(4, 3)).__name__ == "E4M3"


def test_rejects():
    with pytest.raises(TypeError, match=r"^fmt must be a FloatFormat, not 'bf16'$"):
        float_struct("bf16")
    with pytest.raises(ValueError, match=re.escape("subnormals must be one of 'ieee', 'ftz', not 'x'")):
        Signal(BF16).is_zero("x")


def test_quiet_nan_constant():
    assert BF16.quiet_nan().as_value().value == 0x7FC0
    assert FP32.quiet_nan().as_value().value == 0x7FC00000


def test_classification_methods():
    value = Signal(BF16)
    outs = {name: Signal(name=name) for name in ("nan", "inf", "sub", "zero", "zero_ftz")}
    sig, sig_ftz, eff = Signal(8), Signal(8), Signal(8)
    m = Module()
    m.d.comb += [outs["nan"].eq(value.is_nan()), outs["inf"].eq(value.is_inf()),
                 outs["sub"].eq(value.is_subnormal()), outs["zero"].eq(value.is_zero()),
                 outs["zero_ftz"].eq(value.is_zero("ftz")), sig.eq(value.significand()),
                 sig_ftz.eq(value.significand("ftz")), eff.eq(value.effective_exponent())]

    async def testbench(ctx):
        for bits in special_values(BFLOAT16):
            ctx.set(value.as_value(), bits)
            e, f = (bits >> 7) & 0xFF, bits & 0x7F
            assert ctx.get(outs["nan"]) == BFLOAT16.is_nan(bits)
            assert ctx.get(outs["inf"]) == BFLOAT16.is_inf(bits)
            assert ctx.get(outs["sub"]) == BFLOAT16.is_subnormal(bits)
            assert ctx.get(outs["zero"]) == (e == 0 and f == 0)
            assert ctx.get(outs["zero_ftz"]) == (e == 0)
            assert ctx.get(sig) == (f | (0x80 if e else 0))
            assert ctx.get(sig_ftz) == ((f | 0x80) if e else 0)
            assert ctx.get(eff) == max(e, 1)

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
