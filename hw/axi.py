"""AXI4 and AXI4-Lite port signatures (manager side; ``.flip()`` for the subordinate).

Members carry the AMBA signal names without the channel prefix split, so an Amaranth
port ``m_axi`` becomes Verilog ports ``m_axi__awaddr`` … and cocotbext-axi finds them
with ``AxiBus.from_prefix(dut, "m_axi_")``.  Optional AXI signals that the NPU does not
use (lock, cache, prot, qos, region, user) are left out; the bus models tolerate that.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4Signature", "AXI4LiteSignature", "RESP_OKAY", "RESP_SLVERR", "RESP_DECERR",
           "BURST_INCR", "connect_channels"]

RESP_OKAY = 0b00
RESP_SLVERR = 0b10
RESP_DECERR = 0b11
BURST_INCR = 0b01


def connect_channels(m, bus, channels):
    """Joins ``channels`` (a manager-side port with some of the members of the manager
    port ``bus``, e.g. only its read channels) to ``bus`` in ``m``: each output of
    ``channels`` drives the member of ``bus`` of the same name, each input is driven by
    it.  Combinational."""
    for name, member in channels.signature.members.items():
        outer, inner = getattr(bus, name), getattr(channels, name)
        m.d.comb += outer.eq(inner) if member.flow == Out else inner.eq(outer)


def _check(name, value, allowed):
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def _check_range(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, manager side: ``addr_width`` address bits, 32 or 64 data bits."""

    def __init__(self, *, addr_width, data_width=32):
        _check_range("addr_width", addr_width, 1, 64)
        _check("data_width", data_width, (32, 64))
        self._addr_width = addr_width
        self._data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return (isinstance(other, AXI4LiteSignature) and self.addr_width == other.addr_width
                and self.data_width == other.data_width)

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


class AXI4Signature(wiring.Signature):
    """AXI4 (full), manager side: bursts, IDs of ``id_width`` bits."""

    def __init__(self, *, addr_width=32, data_width, id_width=1):
        _check_range("addr_width", addr_width, 12, 64)
        _check("data_width", data_width, (32, 64, 128, 256, 512, 1024))
        _check_range("id_width", id_width, 1, 16)
        self._addr_width = addr_width
        self._data_width = data_width
        self._id_width = id_width
        super().__init__({
            "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8),
            "awsize": Out(3), "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8),
            "arsize": Out(3), "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    @property
    def id_width(self):
        return self._id_width

    def __eq__(self, other):
        return (isinstance(other, AXI4Signature) and self.addr_width == other.addr_width
                and self.data_width == other.data_width and self.id_width == other.id_width)

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
                f"id_width={self.id_width})")
