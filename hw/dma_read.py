"""DMA read side of the NPU: instruction fetch, LOAD engine, burst planning, read mux.

All blocks are AXI4 read managers of the full bus width (``axi_data_bits``): INCR bursts
of at most 16 beats that never cross a 4 KB boundary, several bursts outstanding, R beats
consumed in order.  Read ID 0 fetches instructions, ID 1 loads data (:class:`ReadMux`).

:class:`LoadEngine` executes LOAD (``docs/ISA.md``) as a pipeline::

    cmd ─► word sequencer ─► register stage ─► BurstPlanner ─► AR register ─► bus.ar
           (exact host                          │  descriptor FIFO
            addresses,                          ▼
            window, align) ──────────────────── R consumer (a piece = one beat × one segment a cycle) ─► wr_*

* The **sequencer** walks the words ``(o, i)`` with their host addresses and the exact
  (51-bit) distances to the read window's ends (:class:`~npugen.hw.dma_common.WordWalk`:
  the window check is two sign bits).  A word outside the windows (registered flags)
  is a pad word (nothing is read).  A read word is checked
  before anything of it is requested: every lane inside ``[read_base, read_limit)``
  (else BAD_HOST_ADDRESS), and for PARAM every lane 4-aligned (else MISALIGNED; the
  window is checked first).  A word becomes byte *segments*: one when the lanes are
  contiguous (``lane_stride`` = lane bytes, or one lane) or broadcast (``lane_stride``
  0: lane 0 is read once and copied), one per lane for a gather.  Segments pass an
  input register and a two-entry register stage (:func:`planner_stage`, which also
  precomputes their beats, burst room and limits) to the planner: one a cycle, two
  cycles of latency.  The sequencer's registers follow the offered command while idle
  (only its state waits for the handshake).
* The **planner** joins segments into bursts: a segment whose first beat is the last
  beat of the open burst shares it (*shared*), one starting at the next beat extends
  the burst; a long segment spans several bursts.  A burst is closed (issued) when a
  segment does not fit, in a cycle that adds nothing to it, or at 16 beats / 4 KB.
* The **consumer** takes one beat per segment piece, rotates it to the segment's place
  in the word and writes the word (lanes ≥ ``lanes`` and pad words get ``pad``) from a
  formatting register stage.  Its descriptor FIFO is written through a register, has a
  registered output and holds byte masks derived from each descriptor, so a piece is
  consumed 3 cycles after it is planned at the earliest.  The planner side sees
  ``abort`` and errors a cycle late (what it takes then is dropped).

Throughput: aligned contiguous words whose size is a multiple of the bus width (or
divides it) stream at one beat per cycle (one word per cycle for words smaller than a
beat); an unaligned stream pays one extra cycle per beat shared by two words; a gather
takes a cycle per lane.  Latency: the first SP write of a LOAD follows the first R beat
by two cycles (the word is formatted in a register stage after its last piece);
``done`` pulses the cycle after the last ``wr_en``.

Errors: a failing word travels as a *fault* descriptor behind the words before it, so
those are written first; then ``error_valid`` pulses and the unit is idle.  An R beat
with SLVERR/DECERR reports AXI_READ_ERROR at once, writes nothing more, drains the
outstanding beats and goes idle.  ``abort`` drops everything not yet on the bus, keeps
an AR handshake already offered, drains the outstanding beats and goes idle.
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .axi import RESP_OKAY
from .dma_common import (ADDR_BITS, DESC_DEPTH, HOST_BITS, ID_BITS, MAX_BURST_BEATS,
                         MAX_OUTSTANDING, AddressChannel, BusPortSignature, WordWalk,
                         check_config, issue_bursts, log2, min_, report_errors, stop_on,
                         track_busy)
from .isa import INSTRUCTION_BITS, LoadTarget, NPUError, load_layout

__all__ = ["ReadPortSignature", "ReadMux", "BurstPlanner", "InstructionFetch", "LoadEngine",
           "segment_queue", "planner_stage", "segment_layout", "describe_segment",
           "fetch_item_layout", "load_word_bits",
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


def segment_layout(data_bytes, len_bits):
    """A byte segment as :class:`BurstPlanner` takes it (see :func:`describe_segment`):
    ``start`` (its first byte), its first beat ``b0`` = ``start[lb:]`` and ``b0p1``,
    ``b0m1`` (``b0 ± 1``), its last beat ``b1``, ``nb`` = ``b1 - b0``, and for a burst
    opened at ``b0`` (``b0 + 1``) its room ``room0`` (``room1``: beats up to 16 and to the
    4 KB page end) and its last beat ``lim0`` (``lim1``)."""
    beat_bits = ADDR_BITS - log2(data_bytes)
    # ``beats`` = ``nb + 1``; ``fits0``: the segment fits a burst opened at ``b0``,
    # ``fits1``: its beats after ``b0`` fit a burst opened at ``b0 + 1``; ``same``
    # (``next``): ``b0`` is (follows) the last beat of the previous segment; ``nb0``:
    # ``nb == 0``; ``croom0``, ``clim0`` (``croom1``, ``clim1``): room and last beat of
    # the burst after ``lim0`` (``lim1``), where the segment continues when it does not
    # fit.
    return data.StructLayout({
        "croom0": unsigned(5), "clim0": unsigned(beat_bits),
        "croom1": unsigned(5), "clim1": unsigned(beat_bits),
        "start": unsigned(ADDR_BITS), "b0p1": unsigned(beat_bits), "nb0": unsigned(1),
        "same": unsigned(1), "next": unsigned(1),
        "b1": unsigned(beat_bits), "nb": unsigned(len_bits + 1),
        "beats": unsigned(len_bits + 1), "room0": unsigned(5), "room1": unsigned(5),
        "fits0": unsigned(1), "fits1": unsigned(1),
        "lim0": unsigned(beat_bits), "lim1": unsigned(beat_bits),
    })


def _sixteen_after(beat, page_bits):
    """A burst that starts after beat ``beat`` may take 16 beats (the page does not end
    within them)."""
    r = ~beat[:page_bits]                        # beats left in the page after ``beat``
    return r[4:].any() | (r == 0)


def _room_after(beat, page_bits, k=0):
    """``(room, limit)`` of a burst that starts after beat ``beat + k``: its beats (≤ 16,
    up to the page end) and its last beat; each figure one adder from ``beat`` (no
    chained adders)."""
    s = (beat + k)[:len(beat)] if k else beat
    is16 = _sixteen_after(s, page_bits)
    page_end = Cat(Const((1 << page_bits) - 1, page_bits), s[page_bits:])
    return (Mux(is16, MAX_BURST_BEATS, (~s[:page_bits])[:4]),
            Mux(is16, (beat + (k + MAX_BURST_BEATS))[:len(beat)], page_end))


def segment_beats(data_bytes, len_bits, start, length):
    """``b1 - b0`` of the segment ``[start, start + length)``: its beats after the first."""
    lb = log2(data_bytes)
    return ((Value.cast(start)[:lb] + length - 1) >> lb)[:len_bits + 1]


def describe_segment(m, data_bytes, len_bits, start, length, prev_b1, nb=None,
                     prev_b1p1=None):
    """The :func:`segment_layout` value of the segment ``[start, start + length)``
    (``length`` ≥ 1), computed in ``m`` (no registers); ``prev_b1`` is the last beat of
    the data segment before it (``prev_b1p1``, if given, is ``prev_b1 + 1``); ``nb``, if
    given, is its :func:`segment_beats`."""
    lb = log2(data_bytes)
    page_bits = log2(_PAGE_BYTES // data_bytes)
    seg = Signal(segment_layout(data_bytes, len_bits))
    b0 = Value.cast(start)[lb:ADDR_BITS]
    if nb is None:
        nb = segment_beats(data_bytes, len_bits, start, length)
    low = b0[:page_bits]
    is16 = ~(low[4:].all() & low[:4].any())      # b0 at most 16 beats before the page end
    page_end = Cat(Const((1 << page_bits) - 1, page_bits), b0[page_bits:])
    room1, lim1 = _room_after(b0, page_bits)
    room0 = Mux(is16, MAX_BURST_BEATS, MAX_BURST_BEATS - low[:4])
    lim0 = Signal(len(b0))
    m.d.comb += lim0.eq(Mux(is16, b0 + (MAX_BURST_BEATS - 1), page_end))
    # The burst after lim0 (lim1): after b0 + 15 (b0 + 16), or the first 16 beats of the
    # next page when lim0 (lim1) is the page end.
    is16_1 = _sixteen_after(b0, page_bits)
    # Whether the segment fits a burst that ends at the page end (room 16 − low[:4] from
    # b0, 15 − low[:4] after it): one narrow sum beside the room logic.
    small = (nb + low[:4])[4:] == 0
    next_page = Cat(Const(MAX_BURST_BEATS - 1, page_bits), b0[page_bits:] + 1)
    croom0, clim0 = (Mux(is16, a, b) for a, b in
                     zip(_room_after(b0, page_bits, MAX_BURST_BEATS - 1),
                         (MAX_BURST_BEATS, next_page)))
    croom1, clim1 = (Mux(is16_1, a, b) for a, b in
                     zip(_room_after(b0, page_bits, MAX_BURST_BEATS),
                         (MAX_BURST_BEATS, next_page)))
    m.d.comb += [
        seg.croom0.eq(croom0), seg.clim0.eq(clim0), seg.croom1.eq(croom1),
        seg.clim1.eq(clim1),
        seg.start.eq(start), seg.b0p1.eq(b0 + 1), seg.same.eq(b0 == prev_b1),
        seg.next.eq(b0 == (prev_b1 + 1 if prev_b1p1 is None else prev_b1p1)[:len(b0)]),
        seg.b1.eq(b0 + nb),
        seg.nb.eq(nb), seg.nb0.eq(nb == 0), seg.beats.eq(nb + 1),
        seg.room0.eq(room0), seg.fits0.eq(Mux(is16, nb < MAX_BURST_BEATS, small)),
        seg.lim0.eq(lim0),
        seg.room1.eq(room1), seg.fits1.eq(Mux(is16_1, nb <= MAX_BURST_BEATS, small)),
        seg.lim1.eq(lim1),
    ]
    return seg


class BurstPlanner(wiring.Component):
    """Groups byte segments, offered in order, into INCR bursts of ``data_bytes`` beats.

    An item (``seg_valid``/``seg_ready``) is a segment ``seg`` (a :func:`segment_layout`
    value, ``seg_data``) or a marker without bytes that only keeps its place in the
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
    further burst.  The segment arrives precomputed (:func:`describe_segment`, done in
    a register stage by :func:`planner_stage`) and the open burst is kept as its last
    beat, its limit and its room, so that a cycle only compares registers and adds
    narrow beat counts.
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
        self._len_bits = len_bits
        self._max_segments = max_segments
        super().__init__({
            "seg_valid": In(1), "seg_ready": Out(1), "seg_data": In(1),
            "seg": In(segment_layout(data_bytes, len_bits)), "seg_close": In(1),
            "shared": Out(1), "desc_ok": In(1),
            "close": Out(1), "close_ok": In(1), "close_addr": Out(ADDR_BITS),
            "close_len": Out(8), "close_final": Out(1), "drop": In(1),
        })

    @property
    def data_bytes(self):
        return self._bytes

    @property
    def len_bits(self):
        return self._len_bits

    def elaborate(self, platform):
        m = Module()
        lb = log2(self._bytes)
        page_bits = log2(_PAGE_BYTES // self._bytes)
        beat_bits = ADDR_BITS - lb
        count_bits = self._len_bits + 1
        seg = self.seg
        max_segs = self._max_segments

        is_open = Signal()
        joinable = Signal()                    # is_open, not forced, not max_segments
        force = Signal()                       # the open burst takes nothing more
        blast = Signal(beat_bits)              # the open burst's last beat,
        blim = Signal(beat_bits)               # the last beat it may reach,
        broom = Signal(5)                      # blim - blast,
        bcount = Signal(5)                     # its beats,
        bfull = Signal(5)                      # bcount + broom
        baddr = Signal(ADDR_BITS)
        cont = Signal()                        # a segment continues into a new burst:
        left = Signal(count_bits)              # its beats after blim,
        cend = Signal(beat_bits)               # its last beat
        cforce = Signal()
        segments = Signal(range(max_segs + 1))   # segments in the open burst
        one_more = segments != max_segs - 1      # room for another after this one

        # A continuation opens the next burst at blim + 1 (it never joins the open one):
        # its room and last beat are registers set with blim (from the segment's
        # precomputed figures, or from themselves for a continuation's continuation).
        room_c = Signal(5)
        lim_c = Signal(beat_bits)
        croom_next, clim_next = _room_after(lim_c, page_bits)

        # While the burst can take a segment, blast is the last beat of the previous
        # segment: ``same``/``next`` (precomputed) compare the segment with it.
        shared = Signal()
        m.d.comb += shared.eq(joinable & seg.same)
        adjacent = seg.next
        active = cont | (self.seg_valid & self.desc_ok & self.seg_data)
        covered = ~cont & shared & seg.nb0
        can_append = ~cont & joinable & (shared | adjacent) & (broom != 0)
        need = Mux(cont, left, Mux(shared, seg.nb, seg.beats))
        room = Mux(cont, room_c, Mux(shared, seg.room1, seg.room0))
        lim = Mux(cont, lim_c, Mux(shared, seg.lim1, seg.lim0))
        last = Mux(cont, cend, seg.b1)
        item_close = Mux(cont, cforce, self.seg_close)
        app_fits = Mux(shared, seg.nb <= broom, seg.beats <= broom)
        new_fits = Mux(cont, left <= room_c, Mux(shared, seg.fits1, seg.fits0))

        merged = Signal()
        opened = Signal()
        closing = Signal()
        m.d.comb += [
            self.seg_ready.eq(~cont & self.desc_ok & (
                ~self.seg_data | covered | can_append | ~is_open | self.close_ok)),
            self.shared.eq(shared & self.seg_data),
            self.close.eq(closing),
            self.close_addr.eq(baddr),
            self.close_len.eq(bcount - 1),
            self.close_final.eq(force),
        ]
        with m.If(self.drop):
            m.d.sync += [is_open.eq(0), joinable.eq(0), cont.eq(0), force.eq(0)]
        with m.Else():
            with m.If(active):
                with m.If(covered):
                    m.d.comb += merged.eq(1)
                    m.d.sync += [force.eq(item_close), segments.eq(segments + 1),
                                 joinable.eq(~item_close & one_more)]
                with m.Elif(can_append):
                    m.d.comb += merged.eq(1)
                    m.d.sync += [segments.eq(segments + 1), cend.eq(last),
                                 cforce.eq(item_close), cont.eq(~app_fits),
                                 left.eq(need - broom),
                                 force.eq(app_fits & item_close),
                                 joinable.eq(~(app_fits & item_close) & one_more)]
                    with m.If(app_fits):
                        m.d.sync += [blast.eq(last), broom.eq(broom - need),
                                     bcount.eq(bcount + need)]
                    with m.Else():
                        m.d.sync += [blast.eq(blim), broom.eq(0), bcount.eq(bfull)]
                with m.Elif(~is_open | self.close_ok):
                    m.d.comb += [opened.eq(1), closing.eq(is_open)]
                    m.d.sync += [is_open.eq(1), segments.eq(1), blim.eq(lim), bfull.eq(room),
                                 room_c.eq(Mux(cont, croom_next,
                                               Mux(shared, seg.croom1, seg.croom0))),
                                 lim_c.eq(Mux(cont, clim_next,
                                              Mux(shared, seg.clim1, seg.clim0))),
                                 baddr.eq(Mux(cont, Cat(Const(0, lb), blim + 1),
                                              Mux(shared, Cat(Const(0, lb), seg.b0p1),
                                                  seg.start))),
                                 cont.eq(~new_fits), left.eq(need - room), cend.eq(last),
                                 cforce.eq(item_close),
                                 force.eq(new_fits & item_close),
                                 joinable.eq(~(new_fits & item_close) & Const(max_segs > 1))]
                    with m.If(new_fits):
                        m.d.sync += [blast.eq(last), broom.eq(room - need),
                                     bcount.eq(need)]
                    with m.Else():
                        m.d.sync += [blast.eq(lim), broom.eq(0), bcount.eq(room)]
            with m.If(is_open & ~merged & ~opened & self.close_ok):
                m.d.comb += closing.eq(1)
                m.d.sync += [is_open.eq(0), joinable.eq(0), force.eq(0)]
        return m


def segment_queue(m, data_bytes, desc_layout, *, reset, buffered=False):
    """An engine's :class:`BurstPlanner` (``data_bytes`` beats) and its descriptor FIFO
    (:data:`~npugen.hw.dma_common.DESC_DEPTH` entries of ``desc_layout``, reset by
    ``reset``), added to ``m`` as ``planner`` and ``descriptors``.  A burst joins at most
    half as many segments as the FIFO holds (see :class:`BurstPlanner`).  A ``buffered``
    FIFO has a registered output (a descriptor is readable a cycle later)."""
    m.submodules.planner = planner = BurstPlanner(data_bytes, 9, DESC_DEPTH // 2)
    fifo = SyncFIFOBuffered if buffered else SyncFIFO
    descriptors = fifo(width=desc_layout.size, depth=DESC_DEPTH)
    m.submodules.descriptors = ResetInserter(reset)(descriptors)
    return planner, descriptors


def planner_stage(m, planner, descriptors, *, valid, data, start, length, close, desc, flush,
                  extra=None, write_stage=False):
    """Offers a segment ``[start, start + length)`` (a marker without bytes unless
    ``data``; ``close`` ends its burst) to ``planner`` and its descriptor ``desc`` to the
    FIFO ``descriptors`` through an input register (which adds the segment's beat count,
    :func:`segment_beats`) and a two-entry register stage (a skid buffer) that
    precomputes the rest of the segment (:func:`describe_segment`): no combinational
    path joins the producer, the segment arithmetic and the planner.  The planner and
    the FIFO take the stage's head in the same cycle; ``desc.shared`` is set from the
    planner on the way.  Returns ``ready`` (an AND of two registers): the input register
    takes the item when ``valid & ready``.  One item a cycle, two cycles of latency;
    ``flush`` empties the registers and nothing is taken during it.  ``extra(desc)``,
    if given, is written to the FIFO above the descriptor (figures derived from it, so
    that the reader has them in a register).  With ``write_stage``
    the descriptor reaches the FIFO through a register (a cycle later; the FIFO's write
    enable, which fans out to every storage cell, is then a register too)."""
    raw = [Value.cast(data), Value.cast(start), Value.cast(length), Value.cast(close),
           Value.cast(desc)]
    # The input register: the item and its beat count.
    nb_in = segment_beats(planner.data_bytes, planner.len_bits, start, length)
    packed_in = Cat(*raw, nb_in)
    pre = Signal(len(packed_in), name="pre")
    pre_valid = Signal(name="pre_valid")
    fields, at = [], 0
    for value in [*raw, nb_in]:
        fields.append(pre[at:at + len(value)])
        at += len(value)
    data, start, length, _, _, nb = fields
    raw = fields[:-1]
    valid_in, valid = valid, pre_valid
    packed = Cat(*raw)
    prev_b1 = Signal(ADDR_BITS - log2(planner.data_bytes))   # of the last data segment
    prev_b1p1 = Signal.like(prev_b1)                         # and its successor
    seg = describe_segment(m, planner.data_bytes, planner.len_bits, start, length, prev_b1,
                           nb=nb, prev_b1p1=prev_b1p1)
    skid = Signal(len(packed))
    skid_seg = Signal.like(seg)
    skid_valid = Signal()
    head = Signal(len(packed))
    head_seg = Signal.like(seg)
    head_valid = Signal()
    fields, at = [], 0
    for value in raw:
        fields.append(head[at:at + len(value)])
        at += len(value)
    h_data, _, _, h_close, h_desc = fields

    accept = valid & ~skid_valid
    ready = ~pre_valid | ~skid_valid          # the input register is empty or moves on
    with m.If(flush):
        m.d.sync += pre_valid.eq(0)
    with m.Elif(ready):
        m.d.sync += [pre_valid.eq(valid_in), pre.eq(packed_in)]
    taken = head_valid & planner.seg_ready
    with m.If(accept & Value.cast(data)):
        m.d.sync += [prev_b1.eq(seg.b1), prev_b1p1.eq(seg.b1 + 1)]
    with m.If(flush):
        m.d.sync += [head_valid.eq(0), skid_valid.eq(0)]
    with m.Elif(~head_valid | taken):
        m.d.sync += [head_valid.eq(skid_valid | accept), skid_valid.eq(0),
                     head.eq(Mux(skid_valid, skid, packed)),
                     head_seg.eq(Mux(skid_valid, skid_seg, seg))]
    with m.Elif(accept):
        m.d.sync += skid_valid.eq(1)
    with m.If(~skid_valid):     # the skid's data follow the input while it is empty
        m.d.sync += [skid.eq(packed), skid_seg.eq(seg)]

    out_desc = Signal.like(desc)
    m.d.comb += [
        planner.seg_valid.eq(head_valid & ~flush), planner.seg_data.eq(h_data),
        planner.seg.eq(head_seg), planner.seg_close.eq(h_close),
        out_desc.eq(h_desc), out_desc.shared.eq(planner.shared),
    ]
    if write_stage:
        # The write a cycle later.  Room is a register: two free entries (the pending
        # write and one more) a cycle earlier leave one now, as one item a cycle is taken.
        w_pending = Signal(name="desc_w_pending")
        w_desc = Signal.like(desc, name="desc_w_reg")
        room = Signal(name="desc_room")
        m.d.sync += [w_pending.eq(taken & ~flush), w_desc.eq(out_desc),
                     room.eq(descriptors.level + w_pending <= descriptors.depth - 2)]
        m.d.comb += planner.desc_ok.eq(room)
    else:
        w_pending, w_desc = taken & ~flush, out_desc
        m.d.comb += planner.desc_ok.eq(descriptors.w_rdy)
    m.d.comb += [
        descriptors.w_data.eq(Cat(w_desc, extra(w_desc)) if extra else w_desc),
        descriptors.w_en.eq(w_pending),
    ]
    return ready


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
        next_page = Signal(21)      # pc_req[12:] + 1
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
        # after each issue, so no burst is issued in the cycle after one.  Both figures
        # are clamped to ``per_burst`` (a power of two) with narrow logic: one subtraction
        # ``read_limit - pc_req`` gives the window check and the window's room.
        issued = Signal()
        stale = Signal()
        in_window = Signal()
        to_window = Signal(range(per_burst + 1))
        pb = log2(per_burst)
        to_limit = Signal(signed(34))           # bytes from pc_req to read_limit
        m.d.comb += to_limit.eq(self.read_limit - pc_req)
        page_room = Mux(pc_req[5 + pb:12].all(), per_burst - pc_req[5:5 + pb], per_burst)
        # min(page_room, window room): the low bits of to_limit (early out of the carry
        # chain) are compared with page_room while its high bits settle; page_room ≤
        # per_burst, so a window room of per_burst or more leaves page_room.
        near_room = min_(page_room, to_limit[5:5 + pb])
        page_tail = Signal()                    # the burst may reach the page end:
        tail_room = Signal(pb + 1)              # with this many instructions
        m.d.sync += [
            page_tail.eq(pc_req[5 + pb:12].all()),
            tail_room.eq(per_burst - pc_req[5:5 + pb]),
            in_window.eq((pc_req >= self.read_base) & ~to_limit[-1] & to_limit[5:].any()),
            to_window.eq(Mux(to_limit[5 + pb:].any(), page_room, near_room)),
            stale.eq(issued | self.start),
        ]
        # Buffer slots neither filled nor requested (FETCH_DEPTH - level - inflight), kept
        # as a register so that the burst length is a narrow minimum of two registers.
        space = Signal(range(FETCH_DEPTH + 1), init=FETCH_DEPTH)
        count = Signal(range(per_burst + 1))
        m.d.comb += count.eq(min_(to_window, space))
        # pc_req[5:12] + count and count == tail_room, with both choices of the minimum
        # computed beside its comparison (timing).
        window_first = to_window < space
        in_page = Signal(7)
        m.d.comb += in_page.eq(Mux(window_first, pc_req[5:12] + to_window,
                                   pc_req[5:12] + space))
        to_page_end = page_tail & Mux(window_first, to_window == tail_room, space == tail_room)
        can_issue = running & ~stale & ~fault_pending & ar.free & ~self.flush & ~self.start
        with m.If(can_issue):
            with m.If(~in_window):
                m.d.sync += fault_pending.eq(1)
            with m.Elif((to_window != 0) & (space != 0)):       # count != 0
                m.d.comb += issued.eq(1)
                m.d.sync += [ar.valid.eq(1), ar.addr.eq(pc_req[:32]),
                             ar.len.eq(count * per_instr - 1),
                             pc_req[5:12].eq(in_page)]
                # A burst ends at the page end at the latest: the page number only steps.
                with m.If(to_page_end):
                    m.d.sync += [pc_req[12:].eq(next_page), next_page.eq(next_page + 1)]

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
        # (With nothing in flight, space != 0 is the buffer's w_rdy, from a register.)
        with m.Elif(fault_pending & (inflight == 0) & ~discard & (space != 0)):
            m.d.comb += [push.eq(1), item.pc.eq(pc_req[:32]),
                         item.fault.eq(NPUError.BAD_HOST_ADDRESS)]
            m.d.sync += [fault_pending.eq(0), running.eq(0)]
        m.d.comb += [fifo.w_en.eq(push & ~clear), fifo.w_data.eq(item.as_value())]
        with m.If(pushed_fault):
            m.d.sync += [running.eq(0), discard.eq(1)]

        with m.If(clear):
            m.d.sync += space.eq(FETCH_DEPTH)
        with m.Else():
            m.d.sync += space.eq(space - Mux(issued, count, 0) - (push & ~delivered) +
                                 (fifo.r_en & fifo.r_rdy))
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
                m.d.sync += [pc_req.eq(self.start_addr), pc_out.eq(self.start_addr),
                             next_page.eq(self.start_addr[12:] + 1)]
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
            "kind": unsigned(2), "pos0": unsigned(8), "end": unsigned(10),
            "rot": signed(10), "pieces": unsigned(9), "shared": unsigned(1),
            "last_word": unsigned(1),
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
        # The FIFO also holds masks of word bytes and lanes derived from each descriptor
        # (see the R consumer).
        mask_layout = data.StructLayout({"seg": unsigned(word_bytes),
                                         "window": unsigned(nbytes + word_bytes),
                                         "lanes": unsigned(word_bytes),
                                         "one": unsigned(1), "two": unsigned(1)})
        entry_layout = data.StructLayout({"desc": desc_layout, "masks": mask_layout})
        # The planner side (stage, planner, descriptor FIFO) and the sequencer see the
        # flush a cycle later (``late_flush``, a register: no path from the consumer's
        # error logic to the planner's state); what they take in between is dropped then.
        late_flush = Signal()
        m.d.sync += late_flush.eq(flush)
        planner, desc_fifo = segment_queue(m, nbytes, entry_layout, reset=late_flush,
                                           buffered=True)

        def masks(d):
            """A segment's word bytes [pos0, end), the word bytes of its first beat
            [rot, rot + nbytes) (from -nbytes), the lanes < lanes (none for a pad) and
            whether it has one or two pieces."""
            d = desc_layout(d)
            return Cat(Cat(*((d.pos0 <= p) & (d.end > p) for p in range(word_bytes))),
                       Cat(*((d.rot <= p) & (d.rot > p - nbytes)
                             for p in range(-nbytes, word_bytes))),
                       Cat(*((d.kind != _PAD) & (d.lanes > lane)
                             for lane in range(word_bytes))),
                       d.pieces == 0, d.pieces == 1)

        # ---- bursts committed to the bus -------------------------------------------
        bus = self.bus
        r_fire = bus.rvalid & bus.rready
        ar = AddressChannel(m, bus, "ar", axi_id=LOAD_ID, size=lb)
        issue_bursts(m, planner, ar, finished=r_fire & bus.rlast, drop=late_flush)
        # Beats requested and not received; a closed burst's beats are added a cycle
        # later (``new_beats``, a register), before its first R beat can arrive.
        beats = Signal(range(MAX_OUTSTANDING * MAX_BURST_BEATS + 1))
        new_beats = Signal(range(MAX_BURST_BEATS + 1))
        m.d.sync += [new_beats.eq(Mux(planner.close, planner.close_len + 1, 0)),
                     beats.eq(beats + new_beats - r_fire)]

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
        in_lanes = Signal()                    # the FSM is in LANES
        last_lane = Signal()                   # j == lanes - 1

        lane_e = Mux(lane_bytes4, 4, 1)
        # Whether i and o are inside the windows: registers kept with the walk.
        i_in = Signal()
        o_in = Signal()
        in_windows = i_in & o_in

        def step():
            """The walk moves to the next word."""
            walk.advance(m)
            i_next, o_next = i + 1, o + 1
            with m.If(walk.last_i):
                m.d.sync += [i_in.eq((cmd.inner_lo == 0) & (cmd.inner_hi != 0)),
                             o_in.eq((o_next >= cmd.outer_lo) & (o_next < cmd.outer_hi))]
            with m.Else():
                m.d.sync += i_in.eq((i_next >= cmd.inner_lo) & (i_next < cmd.inner_hi))
        fault = walk.fault(aligned=~lane_bytes4 | ((addr[:2] == 0) & ~lane_misaligned))

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
        st_ready = planner_stage(m, planner, desc_fifo, valid=seg_valid,
                                 data=seg_kind == _SEG, start=seg_start, length=seg_len,
                                 close=0, desc=desc, flush=late_flush, extra=masks,
                                 write_stage=True)
        take = seg_valid & st_ready

        # On abort or error (flush) the sequencer stops where it is, a cycle later
        # (late_flush, a register: no path from the consumer to the walk); the stage
        # drops what it takes in that cycle too.
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~draining & ~flush)
                # The walk's registers follow the offered command in every IDLE cycle
                # (unused until it is accepted): only the state depends on the handshake.
                p = self.cmd.payload
                param = p.target == LoadTarget.PARAM
                m.d.sync += [*walk.start(p, self.read_base, self.read_limit),
                             i_in.eq((p.inner_lo == 0) & (p.inner_hi != 0)),
                             o_in.eq((p.outer_lo == 0) & (p.outer_hi != 0)),
                             lane_bytes4.eq(param),
                             lanes.eq(p.lanes), stride.eq(p.lane_stride),
                             extent.eq((p.lanes - 1) * p.lane_stride + Mux(param, 4, 1))]
                with m.If(self.cmd.valid & self.cmd.ready):
                    m.next = "SETUP"
            with m.State("SETUP"):
                e = lane_e
                contiguous = (stride == e) | (lanes == 1)
                m.d.sync += [
                    bcast.eq((stride == 0) & (lanes != 1)),
                    gather.eq(~contiguous & (stride != 0)),
                    *walk.set_extent(extent),
                    lane_misaligned.eq(lane_bytes4 & (lanes != 1) & (stride[:2] != 0)),
                ]
                m.next = "WORD"
                stop_on(m, late_flush)
            with m.State("WORD"):
                m.d.comb += [seg_valid.eq(1), seg_last_word.eq(1)]
                with m.If(~in_windows):
                    m.d.comb += seg_kind.eq(_PAD)
                with m.Elif(fault != NPUError.NONE.value):
                    m.d.comb += [seg_kind.eq(_FAULT), seg_code.eq(fault)]
                with m.Else():
                    m.d.comb += [seg_kind.eq(_SEG), seg_last_word.eq(~gather)]
                with m.If(take):
                    with m.If(seg_kind == _FAULT):
                        m.next = "FAULTED"
                    with m.Elif((seg_kind == _SEG) & gather):
                        m.d.sync += [j.eq(1), lane_addr.eq(addr[:32] + stride),
                                     in_lanes.eq(1), last_lane.eq(lanes == 2)]
                        m.next = "LANES"
                    with m.Else():
                        step()
                stop_on(m, late_flush)
            with m.State("LANES"):
                m.d.comb += [seg_valid.eq(1), seg_kind.eq(_SEG), seg_last_word.eq(last_lane)]
                with m.If(take):
                    m.d.sync += [j.eq(j + 1), lane_addr.eq(lane_addr + stride),
                                 last_lane.eq(j + 2 == lanes)]
                    with m.If(last_lane):
                        m.d.sync += in_lanes.eq(0)
                        m.next = "WORD"
                        step()
                stop_on(m, late_flush)
            with m.State("FAULTED"):
                stop_on(m, late_flush)

        with m.If(late_flush):
            m.d.sync += in_lanes.eq(0)
        # The segment's bytes depend on registers only (not on the FSM state or the
        # word's checks): a gather word's lanes, or the word.
        m.d.comb += [
            seg_start.eq(Mux(in_lanes, lane_addr, addr[:32])),
            seg_len.eq(Mux(in_lanes | bcast | gather, lane_e, extent)),
            seg_pos0.eq(Mux(in_lanes, Mux(lane_bytes4, j << 2, j), 0)),
        ]
        m.d.comb += [
            desc.kind.eq(seg_kind), desc.pos0.eq(seg_pos0), desc.end.eq(seg_pos0 + seg_len),
            desc.rot.eq(seg_pos0 - seg_start[:lb]),
            desc.pieces.eq((seg_start[:lb] + seg_len - 1) >> lb),
            desc.last_word.eq(seg_last_word),
            desc.last_instr.eq(seg_last_word & walk.last_i & walk.last_o),
            desc.sp.eq(sp), desc.target.eq(cmd.target), desc.lanes.eq(lanes),
            desc.bcast.eq(bcast), desc.pad.eq(cmd.pad), desc.code.eq(seg_code),
        ]

        # ---- R consumer ----------------------------------------------------------------
        entry = Signal(entry_layout)
        m.d.comb += entry.eq(desc_fifo.r_data)
        head = entry.desc
        have = desc_fifo.r_rdy & ~draining
        first = Signal(init=1)
        k = Signal(9)              # the piece (beat) of the segment after the first
        k_last = Signal()          # after the first piece: piece k is the segment's last
        window = Signal(nbytes + word_bytes)     # word bytes -nbytes .. word_bytes - 1
        beat_reg = Signal(8 * nbytes)
        word = Signal(8 * word_bytes)

        # A segment's beat k covers word bytes [rot + k·nbytes, rot + (k+1)·nbytes) (rot
        # may be negative); its piece writes those inside the segment [pos0, end).  The
        # masks come from the FIFO (its output is a register): no arithmetic here.
        seg_mask = entry.masks.seg
        first_window = entry.masks.window
        cur_window = Mux(first, first_window, window)
        en = Signal(word_bytes)
        reuse = Signal()           # the piece's beat is the one already taken
        beat = Signal(8 * nbytes)
        rotated = Signal(8 * nbytes)
        m.d.comb += [
            en.eq(cur_window[nbytes:] & seg_mask),
            reuse.eq(first & head.shared),
            beat.eq(Mux(reuse, beat_reg, bus.rdata)),
            rotated.eq(rotate_left_bytes(beat, head.rot[:lb], nbytes)),
        ]
        merged = Signal(8 * word_bytes)
        for p in range(word_bytes):
            q = p % nbytes
            m.d.comb += merged[8 * p:8 * p + 8].eq(
                Mux(en[p], rotated[8 * q:8 * q + 8], word[8 * p:8 * p + 8]))

        piece = have & (head.kind == _SEG) & (reuse | bus.rvalid)
        # Whether this piece is the segment's last, from registers (the FIFO's output
        # flag for the first piece, k_last, set a piece ahead, for the others).
        seg_done = Mux(first, entry.masks.one, k_last)
        emit = Signal()
        fmt_valid = Signal()       # a word in the formatting stage (see below)
        fault_seen = Signal()
        read_error = Signal()
        with m.If(piece):
            m.d.sync += word.eq(merged)
            with m.If(~reuse):
                m.d.comb += bus.rready.eq(1)
                m.d.sync += beat_reg.eq(bus.rdata)
                m.d.comb += read_error.eq(bus.rresp != RESP_OKAY)
            with m.If(seg_done):
                # (Popped on a read error too: the FIFO is reset a cycle later.)
                m.d.comb += [desc_fifo.r_en.eq(1), emit.eq(head.last_word & ~read_error)]
                m.d.sync += first.eq(1)
            with m.Else():
                m.d.sync += [first.eq(0), k.eq(Mux(first, 1, k + 1)),
                             k_last.eq(Mux(first, entry.masks.two, k + 1 == head.pieces)),
                             window.eq(cur_window << nbytes)]
        with m.Elif(have & (head.kind == _PAD)):
            m.d.comb += [desc_fifo.r_en.eq(1), emit.eq(1)]
        with m.Elif(have & (head.kind == _FAULT) & ~fmt_valid & ~self.wr_en):
            # Reported once the last word before it is written and its done is out.
            m.d.comb += [desc_fifo.r_en.eq(1), fault_seen.eq(1)]
        with m.If(draining):
            m.d.comb += bus.rready.eq(1)

        kill = Signal()            # abort or read error: no more writes or done pulses
        write = emit & ~kill
        # Word formatting, a cycle after the word's last piece (a register stage: the
        # word register holds the merged word then): lanes < lanes from the word (lane 0
        # for a broadcast), the rest pad.
        fmt_last = Signal()
        fmt = Signal(data.StructLayout({"lanes": unsigned(word_bytes), "bcast": unsigned(1),
                                        "pad": unsigned(8), "target": unsigned(2),
                                        "sp": unsigned(16)}))
        # (The fields follow the head in every cycle: they matter only with fmt_valid.)
        m.d.sync += [fmt_valid.eq(write), fmt_last.eq(head.last_instr),
                     fmt.lanes.eq(entry.masks.lanes), fmt.bcast.eq(head.bcast),
                     fmt.pad.eq(head.pad), fmt.target.eq(head.target), fmt.sp.eq(head.sp)]
        lane_on = fmt.lanes                    # lane < lanes, none for a pad word
        byte_word = Signal(8 * word_bytes)
        for lane in range(word_bytes):
            value = Mux(fmt.bcast, word[:8], word[8 * lane:8 * lane + 8])
            m.d.comb += byte_word[8 * lane:8 * lane + 8].eq(Mux(lane_on[lane], value, fmt.pad))
        param_word = Signal(32 * cfg.cols)
        pad32 = fmt.pad.as_signed()
        for lane in range(cfg.cols):
            value = Mux(fmt.bcast, word[:32], word[32 * lane:32 * lane + 32])
            m.d.comb += param_word[32 * lane:32 * lane + 32].eq(
                Mux(lane_on[lane], value, pad32))
        wr_last = Signal()
        m.d.sync += [self.wr_en.eq(fmt_valid), wr_last.eq(fmt_valid & fmt_last),
                     self.done.eq(self.wr_en & wr_last & ~kill)]
        with m.If(fmt_valid):
            m.d.sync += [self.wr_addr.eq(fmt.sp), self.wr_target.as_value().eq(fmt.target),
                         self.wr_data.eq(Mux(fmt.target == LoadTarget.PARAM,
                                             param_word, byte_word))]

        # ---- errors, abort, drain, busy ----------------------------------------------
        report_errors(m, self, fault=fault_seen, code=head.code, bus_error=read_error,
                      bus_code=NPUError.AXI_READ_ERROR)
        m.d.comb += [kill.eq(self.abort | read_error), flush.eq(kill | fault_seen)]
        with m.If(flush):
            m.d.sync += [draining.eq(1), first.eq(1)]
        # While draining every R beat is taken: the last one is in when beats == rvalid.
        with m.Elif(draining & Mux(bus.rvalid, beats == 1, beats == 0) & ~planner.close &
                    (new_beats == 0)):
            m.d.sync += draining.eq(0)
        # cmd.ready is ~draining & ~flush in IDLE; without flush (it clears the count).
        track_busy(m, self, clear=flush, draining=draining,
                   offered=self.cmd.valid & ~draining & fsm.ongoing("IDLE"))
        return m
