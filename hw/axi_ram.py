"""An AXI4 subordinate memory in block RAM, preloaded with an image (a board's host memory).

:class:`AxiRam` serves the NPU's manager port from a ``lib.memory.Memory`` of
``depth`` words of ``data_width`` bits whose initial contents are ``init`` (words, word 0
at byte address 0).  Word address = byte address ÷ (data_width ÷ 8), modulo ``depth``
(``depth`` is a power of two; the NPU's read and write windows keep its accesses inside
the image).  Bursts are INCR of full-width beats (all the NPU issues; the size and burst
type fields are not checked); every response is OKAY and carries the request's ID.

Reads: one burst at a time.  AR is accepted when idle; each beat takes two cycles (the
block RAM read, then ``rvalid`` held with the data until ``rready``), so the first beat
is valid two cycles after AR is accepted.  Writes: one burst at a time; AW is accepted
when idle, then each W beat is written in the cycle it is accepted (``wstrb`` selects
the bytes), and after the beat with ``wlast`` ``bvalid`` is held until ``bready``.
Reads and writes proceed independently.

A second read port, ``scan_addr`` → ``scan_data`` (one cycle of latency), lets a checker
read the memory without the bus.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature, RESP_OKAY

__all__ = ["AxiRam"]


class AxiRam(wiring.Component):
    """AXI4 subordinate block RAM (see the module documentation).

    Parameters: ``data_width`` (32 … 1024 bits), ``depth`` (words, a power of two),
    ``init`` (at most ``depth`` initial words, the rest are 0), ``id_width`` (default 1).
    """

    def __init__(self, *, data_width, depth, init=(), id_width=1):
        try:
            init = self._check(data_width, depth, init)
        except (TypeError, ValueError):
            self._MustUse__silence = True  # rejected, never elaborated: not "unused"
            raise
        self._depth = depth
        self._init = init
        self._data_width = data_width
        super().__init__({
            "bus": In(AXI4Signature(addr_width=32, data_width=data_width, id_width=id_width)),
            "scan_addr": In(range(depth)),
            "scan_data": Out(data_width),
        })

    @staticmethod
    def _check(data_width, depth, init):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2 or \
                depth & (depth - 1):
            raise ValueError(f"depth must be a power of two of at least 2, not {depth!r}")
        init = list(init)
        if len(init) > depth:
            raise ValueError(f"init must hold at most depth={depth} words, not {len(init)}")
        for word in init:
            if isinstance(word, bool) or not isinstance(word, int) or \
                    not 0 <= word < (1 << data_width):
                raise ValueError(f"init words must be integers in 0..2**{data_width}-1, "
                                 f"not {word!r}")
        return init

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        bus, depth = self.bus, self._depth
        byte_bits = (self._data_width // 8).bit_length() - 1
        word_bits = depth.bit_length() - 1

        m.submodules.memory = memory = Memory(shape=self._data_width, depth=depth,
                                              init=self._init)
        rd = memory.read_port()
        scan = memory.read_port()
        wr = memory.write_port(granularity=8)
        m.d.comb += [scan.addr.eq(self.scan_addr), self.scan_data.eq(scan.data)]

        # -- reads -------------------------------------------------------------------------
        r_addr = Signal(word_bits)
        r_left = Signal(8)
        r_id = Signal.like(bus.arid)
        m.d.comb += [rd.addr.eq(r_addr), rd.en.eq(0), bus.rid.eq(r_id),
                     bus.rresp.eq(RESP_OKAY), bus.rdata.eq(rd.data),
                     bus.rlast.eq(r_left == 0)]
        with m.FSM(name="read"):
            with m.State("IDLE"):
                m.d.comb += bus.arready.eq(1)
                with m.If(bus.arvalid):
                    m.d.sync += [r_addr.eq(bus.araddr[byte_bits:byte_bits + word_bits]),
                                 r_left.eq(bus.arlen), r_id.eq(bus.arid)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += rd.en.eq(1)
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += bus.rvalid.eq(1)
                with m.If(bus.rready):
                    m.d.sync += [r_addr.eq(r_addr + 1), r_left.eq(r_left - 1)]
                    m.next = "FETCH"
                    with m.If(r_left == 0):
                        m.next = "IDLE"

        # -- writes ------------------------------------------------------------------------
        w_addr = Signal(word_bits)
        w_id = Signal.like(bus.awid)
        m.d.comb += [wr.addr.eq(w_addr), wr.data.eq(bus.wdata), bus.bid.eq(w_id),
                     bus.bresp.eq(RESP_OKAY)]
        with m.FSM(name="write"):
            with m.State("IDLE"):
                m.d.comb += bus.awready.eq(1)
                with m.If(bus.awvalid):
                    m.d.sync += [w_addr.eq(bus.awaddr[byte_bits:byte_bits + word_bits]),
                                 w_id.eq(bus.awid)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += bus.wready.eq(1)
                with m.If(bus.wvalid):
                    m.d.comb += wr.en.eq(bus.wstrb)
                    m.d.sync += w_addr.eq(w_addr + 1)
                    with m.If(bus.wlast):
                        m.next = "RESPOND"
            with m.State("RESPOND"):
                m.d.comb += bus.bvalid.eq(1)
                with m.If(bus.bready):
                    m.next = "IDLE"
        return m
