"""Pieces shared by the NPU's DMA engines (``dma_read.py``, ``dma_write.py``).

* :class:`BusPortSignature`: the base of the read and write port signatures (their bus
  width, equality and repr).
* :class:`AddressChannel`: an AR or AW channel driven from registers; :func:`issue_bursts`
  feeds it the bursts a :class:`~npugen.hw.dma_read.BurstPlanner` closes.
* :class:`WordWalk`: the word sequencer's walk over the words ``(o, i)`` of a LOAD or
  STORE with their host addresses, and the window check of a word.
* :func:`report_errors` and :func:`track_busy`: an engine's ``error``/``error_valid`` and
  ``busy`` outputs.

All of it is logic added to the caller's module; none of it adds latency of its own.
"""

from amaranth.hdl import Mux, Signal, signed
from amaranth.lib import wiring

from npugen.golden.config import NPUConfig

from .axi import BURST_INCR
from .isa import NPUError

__all__ = ["MAX_BURST_BEATS", "MAX_OUTSTANDING", "HOST_BITS", "ADDR_BITS", "ID_BITS",
           "DESC_DEPTH", "check_config", "log2", "min_", "BusPortSignature",
           "AddressChannel", "issue_bursts", "WordWalk", "stop_on", "report_errors",
           "track_busy"]

#: Longest burst (beats).
MAX_BURST_BEATS = 16
#: Bursts a read or write engine keeps outstanding at most.
MAX_OUTSTANDING = 8
#: Bits of the exact (signed) host address arithmetic: 32-bit base + two 16×32-bit terms
#: (the window distances of :class:`WordWalk` take one more).
HOST_BITS = 50
#: AXI address and ID bits of the DMA ports.
ADDR_BITS = 32
ID_BITS = 1
#: Depth of an engine's descriptor FIFO (between its sequencer and its data side).
DESC_DEPTH = 32


def check_config(component, config):
    """``NPUConfig.check(config)`` for the constructor of ``component``."""
    try:
        NPUConfig.check(config)
    except TypeError:
        component._MustUse__silence = True  # rejected, never elaborated: not "unused"
        raise


def log2(value):
    """``log2`` of a power of two."""
    return value.bit_length() - 1


def min_(a, b):
    """The smaller of two unsigned values."""
    return Mux(a < b, a, b)


class BusPortSignature(wiring.Signature):
    """An AXI4 manager port of the bus width of ``config`` with ``members(data_width)``;
    subclasses name the channels.  Equal to a port of the same class and width."""

    def __init__(self, config, members):
        NPUConfig.check(config)
        self._data_width = config.axi_data_bits
        super().__init__(members(self._data_width))

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return type(other) is type(self) and self.data_width == other.data_width

    def __repr__(self):
        return f"{type(self).__name__}(data_width={self.data_width})"


class AddressChannel:
    """The AR (``prefix`` ``"ar"``) or AW channel of ``bus`` driven from registers.

    ``valid``, ``addr`` and ``len`` (beats − 1) are registers the caller sets; a request
    stays offered until the handshake, which clears ``valid`` (a request set in the same
    cycle wins).  The ID is ``axi_id``, the size ``size`` (log2 bytes), the burst INCR.
    ``free``: a new request may be registered this cycle.
    """

    def __init__(self, m, bus, prefix, *, axi_id, size):
        self.valid = Signal(name=f"{prefix}_valid")
        self.addr = Signal(ADDR_BITS, name=f"{prefix}_addr")
        self.len = Signal(8, name=f"{prefix}_len")
        ready = getattr(bus, f"{prefix}ready")
        m.d.comb += [getattr(bus, f"{prefix}id").eq(axi_id),
                     getattr(bus, f"{prefix}addr").eq(self.addr),
                     getattr(bus, f"{prefix}len").eq(self.len),
                     getattr(bus, f"{prefix}size").eq(size),
                     getattr(bus, f"{prefix}burst").eq(BURST_INCR),
                     getattr(bus, f"{prefix}valid").eq(self.valid)]
        self.taken = self.valid & ready
        self.free = ~self.valid | ready
        with m.If(self.taken):
            m.d.sync += self.valid.eq(0)


def issue_bursts(m, planner, channel, *, finished, drop):
    """Registers each burst ``planner`` closes as ``channel``'s request, keeping at most
    :data:`MAX_OUTSTANDING` bursts whose last response (``finished``) has not arrived;
    ``drop`` forgets the planner's open burst.  Returns the count of those bursts."""
    bursts = Signal(range(MAX_OUTSTANDING + 1), name="bursts")
    m.d.comb += [planner.close_ok.eq(channel.free & (bursts < MAX_OUTSTANDING)),
                 planner.drop.eq(drop)]
    with m.If(planner.close):
        m.d.sync += [channel.valid.eq(1), channel.addr.eq(planner.close_addr),
                     channel.len.eq(planner.close_len)]
    m.d.sync += bursts.eq(bursts + planner.close - finished)
    return bursts


class WordWalk:
    """The words ``(o, i)`` of the LOAD or STORE in ``cmd`` (a register of ``layout``),
    in order: scratchpad word ``sp``, host address ``addr`` (modulo 2**32; ``row`` is
    the address of word ``(o, 0)``) and the exact signed distances (:data:`HOST_BITS`
    + 1 bits) ``lo`` = ``addr − base`` and ``hi`` = ``limit − extent − addr`` from the
    word to the ends of the window ``[base, limit)``: the window check of a word is two
    sign bits.  They are kept like the address (one addition per word), so the check
    costs no wide arithmetic in the cycle that uses it."""

    def __init__(self, layout):
        self.cmd = Signal(layout, name="cmd")
        self.o = Signal(16, name="o")
        self.i = Signal(16, name="i")
        self.sp = Signal(16, name="sp")
        self.row = Signal(ADDR_BITS, name="row")
        self.addr = Signal(ADDR_BITS, name="addr")
        self.lo_row = Signal(signed(HOST_BITS + 1), name="lo_row")
        self.lo = Signal(signed(HOST_BITS + 1), name="lo")
        self.hi_row = Signal(signed(HOST_BITS + 1), name="hi_row")
        self.hi = Signal(signed(HOST_BITS + 1), name="hi")
        # i == inner_count - 1 and o == outer_count - 1 (the counts are ≥ 1), registers,
        # set from equalities with the counts minus 2 (registers too).
        self.last_i = Signal(name="last_i")
        self.last_o = Signal(name="last_o")
        self.inner_m2 = Signal(16, name="inner_m2")
        self.outer_m2 = Signal(16, name="outer_m2")

    def start(self, payload, base, limit, extent=0):
        """The statements that begin the instruction ``payload`` at its first word, in
        the window ``[base, limit)`` for words of ``extent`` bytes (or see
        :meth:`set_extent`)."""
        lo = payload.addr - base
        hi = limit - extent - payload.addr
        return [self.cmd.eq(payload), self.o.eq(0), self.i.eq(0),
                self.last_i.eq(payload.inner_count == 1),
                self.last_o.eq(payload.outer_count == 1),
                self.inner_m2.eq(payload.inner_count - 2),
                self.outer_m2.eq(payload.outer_count - 2),
                self.sp.eq(payload.sp_addr), self.row.eq(payload.addr),
                self.addr.eq(payload.addr), self.lo_row.eq(lo), self.lo.eq(lo),
                self.hi_row.eq(hi), self.hi.eq(hi)]

    def set_extent(self, extent):
        """The statements that give the words ``extent`` bytes (after a :meth:`start`
        without an extent, before the first word)."""
        return [self.hi_row.eq(self.hi_row - extent), self.hi.eq(self.hi - extent)]

    def advance(self, m):
        """Moves to the next word; after the last one the FSM goes to ``IDLE``."""
        cmd = self.cmd
        m.d.sync += self.sp.eq(self.sp + 1)
        with m.If(self.last_i):
            m.d.sync += [self.o.eq(self.o + 1), self.i.eq(0),
                         self.last_i.eq(cmd.inner_count == 1),
                         self.last_o.eq(self.o == self.outer_m2),
                         self.row.eq(self.row + cmd.outer_stride),
                         self.addr.eq(self.row + cmd.outer_stride),
                         self.lo_row.eq(self.lo_row + cmd.outer_stride),
                         self.lo.eq(self.lo_row + cmd.outer_stride),
                         self.hi_row.eq(self.hi_row - cmd.outer_stride),
                         self.hi.eq(self.hi_row - cmd.outer_stride)]
            with m.If(self.last_o):
                m.next = "IDLE"
        with m.Else():
            m.d.sync += [self.i.eq(self.i + 1), self.addr.eq(self.addr + cmd.inner_stride),
                         self.last_i.eq(self.i == self.inner_m2),
                         self.lo.eq(self.lo + cmd.inner_stride),
                         self.hi.eq(self.hi - cmd.inner_stride)]

    def fault(self, aligned):
        """The NPUError code of the current word: BAD_HOST_ADDRESS unless its bytes are
        inside the window, else MISALIGNED unless ``aligned``, else NONE."""
        window_ok = ~self.lo[-1] & ~self.hi[-1]
        return Mux(~window_ok, NPUError.BAD_HOST_ADDRESS.value,
                   Mux(~aligned, NPUError.MISALIGNED.value, NPUError.NONE.value))


def stop_on(m, flush):
    """In an FSM state: go to ``IDLE`` when ``flush`` (abort or error)."""
    with m.If(flush):
        m.next = "IDLE"


def report_errors(m, engine, *, fault, code, bus_error, bus_code):
    """Drives ``engine.error``/``error_valid`` (registered, one-cycle pulse): ``code`` on
    ``fault``, ``bus_code`` on ``bus_error`` (which wins); nothing during ``abort``."""
    m.d.sync += engine.error_valid.eq(0)
    with m.If(fault & ~engine.abort):
        m.d.sync += [engine.error_valid.eq(1), engine.error.as_value().eq(code)]
    with m.If(bus_error & ~engine.abort):
        m.d.sync += [engine.error_valid.eq(1), engine.error.eq(bus_code)]


def track_busy(m, engine, *, clear, draining, offered=None):
    """Drives ``engine.busy``: an instruction was accepted on ``engine.cmd`` and its
    ``done`` has not pulsed, or the engine is ``draining``; ``clear`` forgets them all.
    ``offered``, if given, is ``engine.cmd.valid & engine.cmd.ready`` except in cycles
    with ``clear`` (a shorter path when ``ready`` depends on ``clear``)."""
    instrs = Signal(range(4 * DESC_DEPTH), name="instrs")
    accepted = engine.cmd.valid & engine.cmd.ready if offered is None else offered
    with m.If(clear):
        m.d.sync += instrs.eq(0)
    with m.Else():
        m.d.sync += instrs.eq(instrs + accepted - engine.done)
    m.d.comb += engine.busy.eq((instrs != 0) | draining)
