"""DMA read side of the NPU: instruction fetch, LOAD engine, burst planning, read mux.

All blocks are AXI4 read managers of the full bus width (``axi_data_bits``): INCR bursts
of at most 16 beats that never cross a 4 KB boundary, several bursts outstanding, R beats
consumed in order.  Read ID 0 fetches instructions, ID 1 loads data (:class:`ReadMux`).

:class:`LoadEngine` executes LOAD (``docs/ISA.md``) as a pipeline::

    cmd ─► word sequencer ─► register stage ─► BurstPlanner ─► AR register ─► bus.ar
           (exact host                          │  descriptor FIFO
            addresses,                          ▼
            window, align) ──────────────────── R consumer (a piece = one beat × one segment a cycle) ─► wr_*

* The **sequencer** walks the words ``(o, i)`` with exact (50-bit) host addresses.  A
  word outside the windows is a pad word (nothing is read).  A read word is checked
  before anything of it is requested: every lane inside ``[read_base, read_limit)``
  (else BAD_HOST_ADDRESS), and for PARAM every lane 4-aligned (else MISALIGNED; the
  window is checked first).  A word becomes byte *segments*: one when the lanes are
  contiguous (``lane_stride`` = lane bytes, or one lane) or broadcast (``lane_stride``
  0: lane 0 is read once and copied), one per lane for a gather.  Segments pass a two-entry
  register stage (:func:`skid_stage`) to the planner: one a cycle, a cycle of latency.
* The **planner** joins segments into bursts: a segment whose first beat is the last
  beat of the open burst shares it (*shared*), one starting at the next beat extends
  the burst; a long segment spans several bursts.  A burst is closed (issued) when a
  segment does not fit, in a cycle that adds nothing to it, or at 16 beats / 4 KB.
* The **consumer** takes one beat per segment piece, rotates it to the segment's place
  in the word and writes the word (lanes ≥ ``lanes`` and pad words get ``pad``).

Throughput: aligned contiguous words whose size is a multiple of the bus width (or
divides it) stream at one beat per cycle (one word per cycle for words smaller than a
beat); an unaligned stream pays one extra cycle per beat shared by two words; a gather
takes a cycle per lane.  Latency: the first SP write of a LOAD follows the first R beat
by one cycle; ``done`` pulses the cycle after the last ``wr_en``.

Errors: a failing word travels as a *fault* descriptor behind the words before it, so
those are written first; then ``error_valid`` pulses and the unit is idle.  An R beat
with SLVERR/DECERR reports AXI_READ_ERROR at once, writes nothing more, drains the
outstanding beats and goes idle.  ``abort`` drops everything not yet on the bus, keeps
an AR handshake already offered, drains the outstanding beats and goes idle.
"""

from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import RESP_OKAY
from .dma_common import (ADDR_BITS, DESC_DEPTH, HOST_BITS, ID_BITS, MAX_BURST_BEATS,
                         MAX_OUTSTANDING, AddressChannel, BusPortSignature, WordWalk,
                         check_config, issue_bursts, log2, min_, report_errors, stop_on,
                         track_busy)
from .isa import INSTRUCTION_BITS, LoadTarget, NPUError, load_layout

__all__ = ["ReadPortSignature", "ReadMux", "BurstPlanner", "InstructionFetch", "LoadEngine",
           "segment_queue", "skid_stage", "offer_segment", "fetch_item_layout", "load_word_bits",
           "MAX_BURST_BEATS", "MAX_OUTSTANDING", "FETCH_DEPTH", "FETCH_ID", "LOAD_ID",
           "HOST_BITS"]

#: Instructions the fetch unit buffers ahead.
FETCH_DEPTH = 8
#: Read IDs of the two managers behind :class:`ReadMux`.
FETCH_ID = 0
LOAD_ID = 1

_PAGE_BYTES = 4096
_INSTR_BYTES = INSTRUCTION_BITS // 8


def rotate_left_bytes(value, amount, nbytes):
    """``value`` (``nbytes`` bytes) rotated towards the MSB by ``amount`` bytes:
    byte ``q`` of the result is byte ``(q - amount) mod nbytes`` of ``value``."""
    stage = value
    for k in range(log2(nbytes)):
        stage = Mux(amount[k], stage.rotate_left(8 << k), stage)
    return stage


def act_lanes(config):
    """Lanes (int8) of an ACT word: ``rows``, ``2·rows`` with ``sparse_2_4``."""
    return config.rows * (2 if config.sparse_2_4 else 1)


def load_word_bits(config):
    """Width of ``LoadEngine.wr_data``: the widest scratchpad word a LOAD writes."""
    return max(act_lanes(config) * 8, config.cols * 32)


def fetch_item_layout():
    """One fetched instruction: its bits, its byte address and a fault code (NONE if
    the bits are valid)."""
    return data.StructLayout({"bits": unsigned(INSTRUCTION_BITS), "pc": unsigned(32),
                              "fault": NPUError})


class ReadPortSignature(BusPortSignature):
    """The AR and R channels of AXI4 (manager side) at the bus width of ``config``:
    ``arid araddr arlen arsize arburst arvalid arready`` and
    ``rid rdata rresp rlast rvalid rready``, named as in :class:`~npugen.hw.axi.AXI4Signature`."""

    def __init__(self, config):
        super().__init__(config, lambda data_width: {
            "arid": Out(ID_BITS), "araddr": Out(ADDR_BITS), "arlen": Out(8),
            "arsize": Out(3), "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
            "rid": In(ID_BITS), "rdata": In(data_width), "rresp": In(2),
            "rlast": In(1), "rvalid": In(1), "rready": Out(1),
        })


class ReadMux(wiring.Component):
    """Merges the ``fetch`` (ARID 0) and ``load`` (ARID 1) read managers onto ``bus``.

    AR requests are granted round-robin when both wait; a request offered on ``bus`` is
    held until accepted.  R beats go to the manager their RID names.  No added latency.
    """

    def __init__(self, config):
        check_config(self, config)
        super().__init__({"fetch": In(ReadPortSignature(config)),
                          "load": In(ReadPortSignature(config)),
                          "bus": Out(ReadPortSignature(config))})

    def elaborate(self, platform):
        m = Module()
        fetch, load, bus = self.fetch, self.load, self.bus
        locked = Signal()          # bus.ar offered last cycle and not taken
        held = Signal()            # the grant while locked (1: load)
        last = Signal()            # the last granted manager, for round-robin
        grant = Signal()
        with m.If(locked):
            m.d.comb += grant.eq(held)
        with m.Elif(fetch.arvalid & load.arvalid):
            m.d.comb += grant.eq(~last)
        with m.Else():
            m.d.comb += grant.eq(load.arvalid)
        for name in ("araddr", "arlen", "arsize", "arburst", "arvalid"):
            m.d.comb += getattr(bus, name).eq(
                Mux(grant, getattr(load, name), getattr(fetch, name)))
        m.d.comb += [
            bus.arid.eq(Mux(grant, LOAD_ID, FETCH_ID)),
            fetch.arready.eq(bus.arready & ~grant),
            load.arready.eq(bus.arready & grant),
        ]
        m.d.sync += [locked.eq(bus.arvalid & ~bus.arready), held.eq(grant)]
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += last.eq(grant)

        to_load = bus.rid == LOAD_ID
        for port in (fetch, load):
            m.d.comb += [port.rid.eq(bus.rid), port.rdata.eq(bus.rdata),
                         port.rresp.eq(bus.rresp), port.rlast.eq(bus.rlast)]
        m.d.comb += [
            fetch.rvalid.eq(bus.rvalid & ~to_load),
            load.rvalid.eq(bus.rvalid & to_load),
            bus.rready.eq(Mux(to_load, load.rready, fetch.rready)),
        ]
        return m


class BurstPlanner(wiring.Component):
    """Groups byte segments, offered in order, into INCR bursts of ``data_bytes`` beats.

    An item (``seg_valid``/``seg_ready``) is a segment ``[seg_start, seg_start +
    seg_len)`` (``seg_data``) or a marker without bytes that only keeps its place in the
    order.  When an item is accepted, ``shared`` tells whether its first beat is the last
    beat of the previous segment in the same burst (the consumer reuses that beat).  A
    segment with ``seg_close`` ends its burst.  ``close`` pulses with ``close_addr`` (the
    first segment byte, or the beat address when the burst continues a segment),
    ``close_len`` (beats − 1) and ``close_final`` (the burst holds the end of a
    ``seg_close`` segment) when a burst is final; it happens only with ``close_ok``.
    Items need ``desc_ok`` (room for their descriptor).  ``drop`` forgets the open burst.
    At most ``max_segments`` segments join one burst, so that a consumer holding twice
    as many descriptors always has the next burst requested while it works on one.
    One item per cycle; a segment longer than the room of its burst takes a cycle per
    further burst.
    """

    def __init__(self, data_bytes, len_bits, max_segments=16):
        for name, value, lo, hi in (("data_bytes", data_bytes, 4, 128),
                                    ("len_bits", len_bits, 1, 16),
                                    ("max_segments", max_segments, 1, 256)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi \
                    or (name == "data_bytes" and value & (value - 1)):
                self._MustUse__silence = True
                what = "a power of two" if name == "data_bytes" else "an integer"
                raise ValueError(f"{name} must be {what} in {lo}..{hi}, not {value!r}")
        self._bytes = data_bytes
        self._max_segments = max_segments
        super().__init__({
            "seg_valid": In(1), "seg_ready": Out(1), "seg_data": In(1),
            "seg_start": In(ADDR_BITS), "seg_len": In(len_bits), "seg_close": In(1),
            "shared": Out(1), "desc_ok": In(1),
            "close": Out(1), "close_ok": In(1), "close_addr": Out(ADDR_BITS),
            "close_len": Out(8), "close_final": Out(1), "drop": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        lb = log2(self._bytes)
        page_beats = _PAGE_BYTES // self._bytes
        beat_bits = ADDR_BITS - lb

        def limit(x):
            """Last beat a burst starting at beat ``x`` may reach."""
            room_ok = x[:log2(page_beats)] <= page_beats - MAX_BURST_BEATS
            return Mux(room_ok, x + (MAX_BURST_BEATS - 1), x | (page_beats - 1))[:beat_bits]

        is_open = Signal()
        force = Signal()                       # the open burst takes nothing more
        bstart = Signal(beat_bits)
        blast = Signal(beat_bits)
        blim = Signal(beat_bits)
        baddr = Signal(ADDR_BITS)
        cont = Signal()                        # a segment continues into a new burst
        cur = Signal(beat_bits)
        cend = Signal(beat_bits)
        cforce = Signal()
        segments = Signal(range(self._max_segments + 1))   # segments in the open burst
        full = segments == self._max_segments

        b0 = self.seg_start[lb:]
        b1 = (self.seg_start + self.seg_len - 1)[lb:ADDR_BITS]
        new_item = self.seg_valid & ~cont & self.desc_ok
        shared = Signal()
        m.d.comb += shared.eq(is_open & ~force & ~full & (b0 == blast))
        frm = Mux(cont, cur, b0 + shared)[:beat_bits]
        last = Mux(cont, cend, b1)
        active = cont | (new_item & self.seg_data)
        covered = ~cont & shared & (b1 == b0)
        can_append = is_open & ~force & (cont | ~full) & (frm == (blast + 1)[:beat_bits]) & \
            (frm <= blim)
        app_end = min_(last, blim)
        new_lim = limit(frm)
        new_end = min_(last, new_lim)
        item_close = Mux(cont, cforce, self.seg_close)

        merged = Signal()
        opened = Signal()
        closing = Signal()
        m.d.comb += [
            self.seg_ready.eq(~cont & self.desc_ok & (
                ~self.seg_data | covered | can_append | ~is_open | self.close_ok)),
            self.shared.eq(shared & self.seg_data),
            self.close.eq(closing),
            self.close_addr.eq(baddr),
            self.close_len.eq(blast - bstart),
            self.close_final.eq(force),
        ]
        with m.If(self.drop):
            m.d.sync += [is_open.eq(0), cont.eq(0), force.eq(0)]
        with m.Else():
            with m.If(active):
                with m.If(covered):
                    m.d.comb += merged.eq(1)
                    m.d.sync += [force.eq(force | item_close), segments.eq(segments + 1)]
                with m.Elif(can_append):
                    m.d.comb += merged.eq(1)
                    m.d.sync += [segments.eq(segments + ~cont), blast.eq(app_end),
                                 cont.eq(app_end != last), cur.eq(app_end + 1), cend.eq(last),
                                 cforce.eq(item_close),
                                 force.eq(force | ((app_end == last) & item_close))]
                with m.Elif(~is_open | self.close_ok):
                    m.d.comb += [opened.eq(1), closing.eq(is_open)]
                    m.d.sync += [is_open.eq(1), segments.eq(1), bstart.eq(frm),
                                 blast.eq(new_end),
                                 blim.eq(new_lim),
                                 baddr.eq(Mux(~cont & ~shared, self.seg_start, frm << lb)),
                                 cont.eq(new_end != last), cur.eq(new_end + 1),
                                 cend.eq(last), cforce.eq(item_close),
                                 force.eq((new_end == last) & item_close)]
            with m.If(is_open & ~merged & ~opened & self.close_ok):
                m.d.comb += closing.eq(1)
                m.d.sync += [is_open.eq(0), force.eq(0)]
        return m


def segment_queue(m, data_bytes, desc_layout, *, reset):
    """An engine's :class:`BurstPlanner` (``data_bytes`` beats) and its descriptor FIFO
    (:data:`~npugen.hw.dma_common.DESC_DEPTH` entries of ``desc_layout``, reset by
    ``reset``), added to ``m`` as ``planner`` and ``descriptors``.  A burst joins at most
    half as many segments as the FIFO holds (see :class:`BurstPlanner`)."""
    m.submodules.planner = planner = BurstPlanner(data_bytes, 9, DESC_DEPTH // 2)
    descriptors = SyncFIFO(width=desc_layout.size, depth=DESC_DEPTH)
    m.submodules.descriptors = ResetInserter(reset)(descriptors)
    return planner, descriptors


def skid_stage(m, *, valid, fields, taken, flush):
    """A two-entry register stage (skid buffer) from a producer to a consumer, so that
    no combinational path joins them.  ``fields`` are ``(source, destination)`` pairs:
    each destination holds the stage's head; ``valid`` offers the sources; ``taken``
    is the consumer taking the head.  Returns ``(ready, head_valid)``; ``ready`` is a
    register (the stage takes ``valid``).  One item per cycle, one cycle of latency;
    ``flush`` empties it."""
    packed = Cat(*[Value.cast(src) for src, _ in fields])
    head = Signal(len(packed))
    skid = Signal(len(packed))
    head_valid = Signal()
    skid_valid = Signal()
    accept = valid & ~skid_valid
    with m.If(flush):
        m.d.sync += [head_valid.eq(0), skid_valid.eq(0)]
    with m.Elif(~head_valid | taken):
        with m.If(skid_valid):
            m.d.sync += [head_valid.eq(1), head.eq(skid), skid_valid.eq(0)]
        with m.Else():
            m.d.sync += [head_valid.eq(accept), head.eq(packed)]
    with m.Elif(accept):
        m.d.sync += [skid_valid.eq(1), skid.eq(packed)]
    at = 0
    for src, dst in fields:
        width = len(Value.cast(src))
        m.d.comb += Value.cast(dst).eq(head[at:at + width])
        at += width
    return ~skid_valid, head_valid


def offer_segment(m, planner, descriptors, *, valid, data, start, length, close, desc, flush):
    """Offers a segment ``[start, start + length)`` (a marker without bytes unless
    ``data``; ``close`` ends its burst) to ``planner`` and its descriptor ``desc`` to the
    FIFO ``descriptors``: both take it in the same cycle, nothing is taken during
    ``flush``.  Sets ``desc.shared`` from the planner; returns the condition "taken"."""
    take = valid & planner.seg_ready
    m.d.comb += [
        planner.seg_valid.eq(valid & ~flush), planner.seg_data.eq(data),
        planner.seg_start.eq(start), planner.seg_len.eq(length), planner.seg_close.eq(close),
        planner.desc_ok.eq(descriptors.w_rdy), desc.shared.eq(planner.shared),
        descriptors.w_data.eq(desc), descriptors.w_en.eq(take & ~flush),
    ]
    return take


class InstructionFetch(wiring.Component):
    """Prefetches consecutive 256-bit instructions into a buffer of :data:`FETCH_DEPTH`.

    ``start`` (a pulse) begins at ``start_addr`` (32-byte aligned; the controller checks
    it); a running fetch or the drain of a flushed one is abandoned first.  Bursts of
    whole instructions (at most 16 beats, within a 4 KB page and the read window) are
    issued while the buffer has room for everything requested (not in the cycle after an
    issue: the window figures are registered).  An instruction not
    entirely inside ``[read_base, read_limit)`` is not read: once everything before it
    is delivered, an item with ``fault = BAD_HOST_ADDRESS`` and its ``pc`` is, and
    fetching stops.  An instruction with an SLVERR/DECERR beat is delivered with
    ``fault = AXI_READ_ERROR`` and fetching stops.  ``flush`` discards the buffer, stops
    and drains the outstanding beats; ``idle`` is high when no read is outstanding.
    Latency: an instruction is on ``instr`` the cycle after its last R beat.
    """

    def __init__(self, config):
        check_config(self, config)
        self._config = config
        super().__init__({
            "start": In(1), "start_addr": In(32), "flush": In(1), "idle": Out(1),
            "read_base": In(32), "read_limit": In(32),
            "instr": Out(stream.Signature(fetch_item_layout())),
            "bus": Out(ReadPortSignature(config)),
        })

    def elaborate(self, platform):
        m = Module()
        nbytes = self._config.axi_data_bits // 8
        lb = log2(nbytes)
        per_instr = _INSTR_BYTES // nbytes                 # beats per instruction
        per_burst = MAX_BURST_BEATS // per_instr           # instructions per burst
        layout = fetch_item_layout()

        clear = Signal()
        fifo = SyncFIFO(width=layout.size, depth=FETCH_DEPTH)
        m.submodules.buffer = ResetInserter(clear)(fifo)

        running = Signal()
        pending = Signal()          # a start waits for the old beats to drain
        discard = Signal()          # R beats are dropped
        fault_pending = Signal()    # the next pc is outside the window
        pc_req = Signal(33)         # next instruction to request
        pc_out = Signal(32)         # next instruction to deliver
        inflight = Signal(range(FETCH_DEPTH + 1))          # requested, not delivered
        outstanding = Signal(range(FETCH_DEPTH * per_instr + 1))   # beats not received
        beat = Signal(range(per_instr))
        bad = Signal()
        assembled = Signal(INSTRUCTION_BITS)

        bus = self.bus
        ar = AddressChannel(m, bus, "ar", axi_id=FETCH_ID, size=lb)

        # Issue: a burst of n instructions at pc_req.  The window check and the burst
        # length the page and the window allow are registered from pc_req (timing: the
        # 34-bit window arithmetic stays out of the issue logic); they are a cycle old
        # after each issue, so no burst is issued in the cycle after one.
        issued = Signal()
        stale = Signal()
        in_window = Signal()
        to_window = Signal(range(per_burst + 1))
        m.d.sync += [
            in_window.eq((pc_req >= self.read_base) &
                         (pc_req + _INSTR_BYTES <= self.read_limit)),
            to_window.eq(min_(min_((_PAGE_BYTES - pc_req[:12]) >> 5,
                                   (self.read_limit - pc_req)[5:]), per_burst)),
            stale.eq(issued | self.start),
        ]
        space = FETCH_DEPTH - fifo.level - inflight
        count = Signal(range(per_burst + 1))
        m.d.comb += count.eq(min_(to_window, space))
        can_issue = running & ~stale & ~fault_pending & ar.free & ~self.flush & ~self.start
        with m.If(can_issue):
            with m.If(~in_window):
                m.d.sync += fault_pending.eq(1)
            with m.Elif(count != 0):
                m.d.comb += issued.eq(1)
                m.d.sync += [ar.valid.eq(1), ar.addr.eq(pc_req[:32]),
                             ar.len.eq(count * per_instr - 1),
                             pc_req.eq(pc_req + (count << 5))]

        # R beats: assemble instructions, little-endian, first beat at bit 0.
        m.d.comb += bus.rready.eq(1)
        got = bus.rvalid
        item = Signal(layout)
        push = Signal()
        delivered = Signal()        # an instruction (not the window fault) is pushed
        pushed_fault = Signal()
        bits = Cat(assembled[8 * nbytes:], bus.rdata) if per_instr > 1 else bus.rdata
        bad_beat = bus.rresp != RESP_OKAY
        with m.If(got & ~discard):
            with m.If(beat == per_instr - 1):
                m.d.comb += [push.eq(1), delivered.eq(1), item.bits.eq(bits),
                             item.pc.eq(pc_out), pushed_fault.eq(bad | bad_beat)]
                m.d.comb += item.fault.as_value().eq(
                    Mux(bad | bad_beat, NPUError.AXI_READ_ERROR.value, NPUError.NONE.value))
                m.d.sync += [beat.eq(0), bad.eq(0), pc_out.eq(pc_out + _INSTR_BYTES)]
            with m.Else():
                m.d.sync += [beat.eq(beat + 1), bad.eq(bad | bad_beat)]
            if per_instr > 1:
                m.d.sync += assembled.eq(Cat(assembled[8 * nbytes:], bus.rdata))
        with m.Elif(fault_pending & (inflight == 0) & ~discard & fifo.w_rdy):
            m.d.comb += [push.eq(1), item.pc.eq(pc_req[:32]),
                         item.fault.eq(NPUError.BAD_HOST_ADDRESS)]
            m.d.sync += [fault_pending.eq(0), running.eq(0)]
        m.d.comb += [fifo.w_en.eq(push & ~clear), fifo.w_data.eq(item.as_value())]
        with m.If(pushed_fault):
            m.d.sync += [running.eq(0), discard.eq(1)]

        m.d.sync += [
            inflight.eq(inflight + Mux(issued, count, 0) - delivered),
            outstanding.eq(outstanding + Mux(issued, count * per_instr, 0) - got),
        ]
        m.d.comb += self.idle.eq((outstanding == 0) & ~ar.valid)

        # Start, flush, drain.
        with m.If(self.start | self.flush):
            m.d.comb += clear.eq(1)
            m.d.sync += [running.eq(0), fault_pending.eq(0), discard.eq(1), beat.eq(0),
                         bad.eq(0), inflight.eq(0), pending.eq(self.start)]
            with m.If(self.start):
                m.d.sync += [pc_req.eq(self.start_addr), pc_out.eq(self.start_addr)]
        with m.Elif(discard & (outstanding - got == 0) & ~ar.valid):
            m.d.sync += discard.eq(0)
            with m.If(pending):
                m.d.sync += [pending.eq(0), running.eq(1)]

        m.d.comb += [
            self.instr.valid.eq(fifo.r_rdy & ~clear),
            self.instr.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.instr.ready & ~clear),
        ]
        return m


#: Kinds of descriptors between the load sequencer and the R consumer.
_SEG, _PAD, _FAULT = 0, 1, 2


class LoadEngine(wiring.Component):
    """Executes LOAD instructions (see the module docstring for the pipeline).

    Ports: ``cmd`` (``load_layout``, validated by the controller), ``read_base``,
    ``read_limit``; scratchpad writes ``wr_target``/``wr_addr``/``wr_data``/``wr_en``
    (always accepted; ACT ``act_lanes`` bytes, WGT/WIDX ``cols`` bytes, PARAM ``cols``
    int32, lane j at the low end first); ``done``, ``busy``, ``abort``, ``error``,
    ``error_valid``; ``bus`` (AXI read manager).
    """

    def __init__(self, config):
        check_config(self, config)
        self._config = config
        super().__init__({
            "cmd": In(stream.Signature(load_layout)),
            "read_base": In(32), "read_limit": In(32),
            "wr_target": Out(LoadTarget), "wr_addr": Out(16),
            "wr_data": Out(load_word_bits(config)), "wr_en": Out(1),
            "done": Out(1), "busy": Out(1), "abort": In(1),
            "error": Out(NPUError), "error_valid": Out(1),
            "bus": Out(ReadPortSignature(config)),
        })

    @staticmethod
    def _desc_layout(lb):
        return data.StructLayout({
            "kind": unsigned(2), "off": unsigned(lb), "len": unsigned(9),
            "pos0": unsigned(8), "shared": unsigned(1), "last_word": unsigned(1),
            "last_instr": unsigned(1), "sp": unsigned(16), "target": unsigned(2),
            "lanes": unsigned(8), "bcast": unsigned(1), "pad": unsigned(8),
            "code": unsigned(8),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nbytes = cfg.axi_data_bits // 8
        lb = log2(nbytes)
        word_bytes = load_word_bits(cfg) // 8
        desc_layout = self._desc_layout(lb)

        draining = Signal()
        flush = Signal()
        planner, desc_fifo = segment_queue(m, nbytes, desc_layout, reset=flush)

        # ---- bursts committed to the bus -------------------------------------------
        bus = self.bus
        r_fire = bus.rvalid & bus.rready
        ar = AddressChannel(m, bus, "ar", axi_id=LOAD_ID, size=lb)
        issue_bursts(m, planner, ar, finished=r_fire & bus.rlast, drop=flush)
        beats = Signal(range(MAX_OUTSTANDING * MAX_BURST_BEATS + 1))
        m.d.sync += beats.eq(beats + Mux(planner.close, planner.close_len + 1, 0) - r_fire)

        # ---- word sequencer ----------------------------------------------------------
        walk = WordWalk(load_layout)
        cmd, o, i, sp, addr = walk.cmd, walk.o, walk.i, walk.sp, walk.addr
        lane_bytes4 = Signal()                 # PARAM: 4-byte lanes
        lanes = Signal(8)
        stride = Signal(16)
        bcast = Signal()
        gather = Signal()
        extent = Signal(25)                    # bytes from a word's address to its end
        lane_misaligned = Signal()
        j = Signal(8)
        lane_addr = Signal(32)

        lane_e = Mux(lane_bytes4, 4, 1)
        in_windows = ((i >= cmd.inner_lo) & (i < cmd.inner_hi) &
                      (o >= cmd.outer_lo) & (o < cmd.outer_hi))
        fault = walk.fault(self.read_base, self.read_limit, extent,
                           aligned=~lane_bytes4 | ((addr[:2] == 0) & ~lane_misaligned))

        seg_kind = Signal(2)
        seg_start = Signal(32)
        seg_len = Signal(9)
        seg_pos0 = Signal(8)
        seg_last_word = Signal()
        seg_code = Signal(8)
        seg_valid = Signal()
        desc = Signal(desc_layout)
        # A register stage between the sequencer and the planner (its address, window
        # and alignment logic never meets the planner's in one cycle).
        st_data = Signal()
        st_start = Signal(32)
        st_len = Signal(9)
        st_desc = Signal(desc_layout)
        st_take = Signal()
        st_ready, st_valid = skid_stage(
            m, valid=seg_valid,
            fields=[(seg_kind == _SEG, st_data), (seg_start, st_start), (seg_len, st_len),
                    (desc, st_desc)],
            taken=st_take, flush=flush)
        take = seg_valid & st_ready
        m.d.comb += st_take.eq(offer_segment(
            m, planner, desc_fifo, valid=st_valid, data=st_data, start=st_start,
            length=st_len, close=0, desc=st_desc, flush=flush))

        # On abort or error (flush) the sequencer stops where it is.
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~draining & ~flush)
                with m.If(self.cmd.valid & self.cmd.ready):
                    p = self.cmd.payload
                    m.d.sync += [*walk.start(p),
                                 lane_bytes4.eq(p.target == LoadTarget.PARAM),
                                 lanes.eq(p.lanes), stride.eq(p.lane_stride)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                e = lane_e
                contiguous = (stride == e) | (lanes == 1)
                m.d.sync += [
                    bcast.eq((stride == 0) & (lanes != 1)),
                    gather.eq(~contiguous & (stride != 0)),
                    extent.eq((lanes - 1) * stride + e),
                    lane_misaligned.eq(lane_bytes4 & (lanes != 1) & (stride[:2] != 0)),
                ]
                m.next = "WORD"
                stop_on(m, flush)
            with m.State("WORD"):
                m.d.comb += [seg_valid.eq(1), seg_start.eq(addr[:32]), seg_pos0.eq(0),
                             seg_last_word.eq(1)]
                with m.If(~in_windows):
                    m.d.comb += seg_kind.eq(_PAD)
                with m.Elif(fault != NPUError.NONE.value):
                    m.d.comb += [seg_kind.eq(_FAULT), seg_code.eq(fault)]
                with m.Else():
                    m.d.comb += [seg_kind.eq(_SEG),
                                 seg_len.eq(Mux(bcast, lane_e, Mux(gather, lane_e, extent))),
                                 seg_last_word.eq(~gather)]
                with m.If(take):
                    with m.If(seg_kind == _FAULT):
                        m.next = "FAULTED"
                    with m.Elif((seg_kind == _SEG) & gather):
                        m.d.sync += [j.eq(1), lane_addr.eq(addr[:32] + stride)]
                        m.next = "LANES"
                    with m.Else():
                        walk.advance(m)
                stop_on(m, flush)
            with m.State("LANES"):
                last_lane = j == lanes - 1
                m.d.comb += [seg_valid.eq(1), seg_kind.eq(_SEG), seg_start.eq(lane_addr),
                             seg_len.eq(lane_e),
                             seg_pos0.eq(Mux(lane_bytes4, j << 2, j)),
                             seg_last_word.eq(last_lane)]
                with m.If(take):
                    m.d.sync += [j.eq(j + 1), lane_addr.eq(lane_addr + stride)]
                    with m.If(last_lane):
                        m.next = "WORD"
                        walk.advance(m)
                stop_on(m, flush)
            with m.State("FAULTED"):
                stop_on(m, flush)

        m.d.comb += [
            desc.kind.eq(seg_kind), desc.off.eq(seg_start[:lb]), desc.len.eq(seg_len),
            desc.pos0.eq(seg_pos0), desc.last_word.eq(seg_last_word),
            desc.last_instr.eq(seg_last_word & walk.last_i & walk.last_o),
            desc.sp.eq(sp), desc.target.eq(cmd.target), desc.lanes.eq(lanes),
            desc.bcast.eq(bcast), desc.pad.eq(cmd.pad), desc.code.eq(seg_code),
        ]

        # ---- R consumer ----------------------------------------------------------------
        head = Signal(desc_layout)
        m.d.comb += head.eq(desc_fifo.r_data)
        have = desc_fifo.r_rdy & ~draining
        first = Signal(init=1)
        cursor = Signal(9)
        remaining = Signal(9)
        beat_reg = Signal(8 * nbytes)
        word = Signal(8 * word_bytes)

        pos = Signal(9)            # word byte of the piece's first byte
        rem = Signal(9)            # bytes of the segment still to place
        n = Signal(9)              # bytes this piece places
        end = Signal(10)
        reuse = Signal()           # the piece's beat is the one already taken
        beat = Signal(8 * nbytes)
        rotated = Signal(8 * nbytes)
        room = Mux(first, nbytes - head.off, nbytes)
        m.d.comb += [
            pos.eq(Mux(first, head.pos0, cursor)),
            rem.eq(Mux(first, head.len, remaining)),
            n.eq(min_(rem, room)),
            end.eq(pos + n),
            reuse.eq(first & head.shared),
            beat.eq(Mux(reuse, beat_reg, bus.rdata)),
            rotated.eq(rotate_left_bytes(beat, (head.pos0 - head.off)[:lb], nbytes)),
        ]
        merged = Signal(8 * word_bytes)
        for p in range(word_bytes):
            en = (pos <= p) & (end > p)
            q = p % nbytes
            m.d.comb += merged[8 * p:8 * p + 8].eq(
                Mux(en, rotated[8 * q:8 * q + 8], word[8 * p:8 * p + 8]))

        piece = have & (head.kind == _SEG) & (reuse | bus.rvalid)
        seg_done = n == rem
        emit = Signal()
        emit_pad = Signal()
        fault_seen = Signal()
        read_error = Signal()
        with m.If(piece):
            m.d.sync += word.eq(merged)
            with m.If(~reuse):
                m.d.comb += bus.rready.eq(1)
                m.d.sync += beat_reg.eq(bus.rdata)
                m.d.comb += read_error.eq(bus.rresp != RESP_OKAY)
            with m.If(seg_done):
                m.d.comb += [desc_fifo.r_en.eq(~read_error), emit.eq(head.last_word & ~read_error)]
                m.d.sync += first.eq(1)
            with m.Else():
                m.d.sync += [first.eq(0), cursor.eq(pos + n), remaining.eq(rem - n)]
        with m.Elif(have & (head.kind == _PAD)):
            m.d.comb += [desc_fifo.r_en.eq(1), emit.eq(1), emit_pad.eq(1)]
        with m.Elif(have & (head.kind == _FAULT) & ~self.wr_en):
            # Reported once the last word before it is written and its done is out.
            m.d.comb += [desc_fifo.r_en.eq(1), fault_seen.eq(1)]
        with m.If(draining):
            m.d.comb += bus.rready.eq(1)

        # Word formatting: lanes < lanes from the word (lane 0 for a broadcast), the rest pad.
        count = Mux(emit_pad, 0, head.lanes)
        byte_word = Signal(8 * word_bytes)
        for lane in range(word_bytes):
            value = Mux(head.bcast, merged[:8], merged[8 * lane:8 * lane + 8])
            m.d.comb += byte_word[8 * lane:8 * lane + 8].eq(Mux(count > lane, value, head.pad))
        param_word = Signal(32 * cfg.cols)
        pad32 = head.pad.as_signed()
        for lane in range(cfg.cols):
            value = Mux(head.bcast, merged[:32], merged[32 * lane:32 * lane + 32])
            m.d.comb += param_word[32 * lane:32 * lane + 32].eq(
                Mux(count > lane, value, pad32))
        kill = Signal()            # abort or read error: no more writes or done pulses
        write = emit & ~kill
        wr_last = Signal()
        m.d.sync += [self.wr_en.eq(write), wr_last.eq(write & head.last_instr),
                     self.done.eq(self.wr_en & wr_last & ~kill)]
        with m.If(write):
            m.d.sync += [self.wr_addr.eq(head.sp), self.wr_target.as_value().eq(head.target),
                         self.wr_data.eq(Mux(head.target == LoadTarget.PARAM,
                                             param_word, byte_word))]

        # ---- errors, abort, drain, busy ----------------------------------------------
        report_errors(m, self, fault=fault_seen, code=head.code, bus_error=read_error,
                      bus_code=NPUError.AXI_READ_ERROR)
        m.d.comb += [kill.eq(self.abort | read_error), flush.eq(kill | fault_seen)]
        with m.If(flush):
            m.d.sync += [draining.eq(1), first.eq(1)]
        with m.Elif(draining & (beats - r_fire == 0) & ~planner.close):
            m.d.sync += draining.eq(0)
        track_busy(m, self, clear=flush, draining=draining)
        return m
