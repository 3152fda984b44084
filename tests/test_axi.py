"""Tests of npugen.hw.axi: the AXI port signatures and ``connect_channels``."""

import pytest
from amaranth.hdl import Elaboratable, Module

from cycle_sim import run_cycles
from npugen.golden.config import PRESETS
from npugen.hw.axi import AXI4LiteSignature, AXI4Signature, connect_channels
from npugen.hw.dma_read import ReadPortSignature
from npugen.hw.dma_write import WritePortSignature


@pytest.mark.parametrize("make, regex", [
    (lambda: AXI4LiteSignature(addr_width=0), r"^addr_width must be an integer in 1\.\.64, not 0$"),
    (lambda: AXI4LiteSignature(addr_width=True),
     r"^addr_width must be an integer in 1\.\.64, not True$"),
    (lambda: AXI4LiteSignature(addr_width=12, data_width=16),
     r"^data_width must be one of 32, 64, not 16$"),
    (lambda: AXI4Signature(addr_width=11, data_width=32),
     r"^addr_width must be an integer in 12\.\.64, not 11$"),
    (lambda: AXI4Signature(data_width=48),
     r"^data_width must be one of 32, 64, 128, 256, 512, 1024, not 48$"),
    (lambda: AXI4Signature(data_width=64, id_width=17),
     r"^id_width must be an integer in 1\.\.16, not 17$"),
    (lambda: AXI4Signature(data_width=64, id_width="1"),
     r"^id_width must be an integer in 1\.\.16, not '1'$"),
])
def test_bad_parameters(make, regex):
    with pytest.raises(ValueError, match=regex):
        make()


def test_equality_and_repr():
    assert AXI4Signature(data_width=64) == AXI4Signature(addr_width=32, data_width=64, id_width=1)
    assert AXI4Signature(data_width=64) != AXI4Signature(data_width=64, id_width=2)
    assert AXI4LiteSignature(addr_width=12) != AXI4LiteSignature(addr_width=12, data_width=64)
    assert repr(AXI4Signature(data_width=128, id_width=4)) == \
        "AXI4Signature(addr_width=32, data_width=128, id_width=4)"
    assert repr(AXI4LiteSignature(addr_width=12)) == \
        "AXI4LiteSignature(addr_width=12, data_width=32)"
    tiny = PRESETS["tiny"]
    assert ReadPortSignature(tiny) == ReadPortSignature(PRESETS["tiny"])
    assert ReadPortSignature(tiny) != WritePortSignature(tiny)
    assert ReadPortSignature(tiny) != ReadPortSignature(PRESETS["default"])
    assert repr(WritePortSignature(tiny)) == "WritePortSignature(data_width=32)"


class _Joined(Elaboratable):
    """An AXI4 port with the read and the write channels of the DMA joined to it."""

    def __init__(self):
        config = PRESETS["tiny"]
        self.bus = AXI4Signature(data_width=config.axi_data_bits).create()
        self.reads = ReadPortSignature(config).create()
        self.writes = WritePortSignature(config).create()

    def elaborate(self, platform):
        m = Module()
        connect_channels(m, self.bus, self.reads)
        connect_channels(m, self.bus, self.writes)
        return m


def test_connect_channels_follows_the_flow():
    dut = _Joined()
    drive = [{("reads", "araddr"): 0x1234, ("reads", "arvalid"): 1, ("bus", "rdata"): 0xCAFE,
              ("bus", "rvalid"): 1, ("writes", "wstrb"): 0b1010, ("bus", "bresp"): 2},
             {("reads", "araddr"): 0x40, ("bus", "arready"): 1, ("writes", "awlen"): 7,
              ("bus", "wready"): 1}]

    def apply(ctx, cycle):
        for (port, name), value in cycle.items():
            ctx.set(getattr(getattr(dut, port), name), value)

    def read(ctx):
        return {(port, name): ctx.get(getattr(getattr(dut, port), name)) for port, name in (
            ("bus", "araddr"), ("bus", "arvalid"), ("reads", "rdata"), ("reads", "rvalid"),
            ("bus", "wstrb"), ("writes", "bresp"), ("reads", "arready"), ("bus", "awlen"),
            ("writes", "wready"), ("bus", "rready"))}

    first, second = run_cycles(dut, drive, read, drive=apply)
    assert first == {("bus", "araddr"): 0x1234, ("bus", "arvalid"): 1, ("reads", "rdata"): 0xCAFE,
                     ("reads", "rvalid"): 1, ("bus", "wstrb"): 0b1010, ("writes", "bresp"): 2,
                     ("reads", "arready"): 0, ("bus", "awlen"): 0, ("writes", "wready"): 0,
                     ("bus", "rready"): 0}
    assert second[("bus", "araddr")] == 0x40 and second[("reads", "arready")] == 1
    assert second[("bus", "awlen")] == 7 and second[("writes", "wready")] == 1
