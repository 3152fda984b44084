"""DMA write side of the NPU: the STORE engine (OUT scratchpad → host memory).

:class:`StoreEngine` executes STORE (``docs/ISA.md``) as a pipeline::

    cmd ─► word sequencer ─► register stage ─► BurstPlanner ─► AW register ─► bus.aw
           (exact host                          │ descriptor FIFO   └─► burst lengths, done flags
            addresses,                          ▼
            window, align) ──────────────────── OUT read ─► word FIFO ─► beat assembler ─► bus.w
                                                                        bus.b ─► done

* The **sequencer** walks the words ``(o, i)`` with their host addresses and the exact
  distances to the write window's ends (:class:`~npugen.hw.dma_common.WordWalk`) and
  checks each word before anything of it is written: all its ``lanes·elem_bytes``
  bytes inside ``[write_base, write_limit)`` (else BAD_HOST_ADDRESS), and for int32 the
  address 4-aligned (else MISALIGNED; the window is checked first).  A good word is one
  byte segment (lanes are contiguous in host memory).  Segments pass an input register
  and a two-entry register stage (:func:`~npugen.hw.dma_read.planner_stage`) to the
  planner: one a cycle, two cycles of latency.
* The **planner** (:class:`~npugen.hw.dma_read.BurstPlanner`) joins consecutive
  segments into INCR bursts (≤ 16 beats, never across 4 KB); two words that meet inside
  a beat share it.  Bursts never span two instructions.
* The **OUT read** fetches each word once (``rd_en``, data the next cycle) into a small
  FIFO; the **beat assembler** cuts the word's bytes (the low
  byte of each lane for int8) into beats with their strobes (a piece rotates one chunk
  of the word; the next chunk and the last rotated one are registers), merging the
  shared beat of two words, and sends
  a beat only once its burst is closed (its length, and so ``wlast``, is known; the
  oldest unsent burst's length and its "last beat next" flag are registers in front of
  the length FIFO, loaded in the cycle after the burst closes, as the FIFO would be).
  Only the instruction's bytes have their strobe set.
* B responses arrive in order; the last burst of an instruction pulses ``done``.

Throughput: one beat per cycle for words of a beat or more (an unaligned stream pays a
cycle per shared beat), one word per cycle for smaller ones.  Latency: the first OUT
read 4 cycles after the command is accepted, its first W beat 3 cycles later at the
earliest; ``done`` pulses the cycle after the B response of the instruction's last burst.  A fault
is reported a cycle after it reaches the word FIFO's head with nothing outstanding.

Errors: a failing word travels as a *fault* descriptor behind the words before it; they
are written and acknowledged, then ``error_valid`` pulses and the unit is idle.  A B
response with SLVERR/DECERR reports AXI_WRITE_ERROR at once; then, as after ``abort``,
every burst already closed is completed (its AW and all W beats, with the real data),
the outstanding responses are taken and the unit goes idle; nothing else is written.
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import RESP_OKAY
from .dma_common import (ADDR_BITS, ID_BITS, MAX_OUTSTANDING, AddressChannel,
                         BusPortSignature, WordWalk, check_config, issue_bursts, log2,
                         report_errors, stop_on, track_busy)
from .dma_read import planner_stage, rotate_left_bytes, segment_queue
from .isa import NPUError, store_layout

__all__ = ["WritePortSignature", "StoreEngine", "WRITE_ID"]

#: AXI ID of every write.
WRITE_ID = 0

_WORD_FIFO_DEPTH = 3
_SEG, _FAULT = 0, 1


class WritePortSignature(BusPortSignature):
    """The AW, W and B channels of AXI4 (manager side) at the bus width of ``config``:
    ``awid awaddr awlen awsize awburst awvalid awready``, ``wdata wstrb wlast wvalid
    wready``, ``bid bresp bvalid bready``, named as in :class:`~npugen.hw.axi.AXI4Signature`."""

    def __init__(self, config):
        super().__init__(config, lambda data_width: {
            "awid": Out(ID_BITS), "awaddr": Out(ADDR_BITS), "awlen": Out(8),
            "awsize": Out(3), "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8),
            "wlast": Out(1), "wvalid": Out(1), "wready": In(1),
            "bid": In(ID_BITS), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        })


class StoreEngine(wiring.Component):
    """Executes STORE instructions (see the module docstring for the pipeline).

    Ports: ``cmd`` (``store_layout``, validated by the controller), ``write_base``,
    ``write_limit``; OUT read port ``rd_addr``/``rd_en``/``rd_data`` (``cols`` int32,
    data the cycle after ``rd_en``); ``done``, ``busy``, ``abort``, ``error``,
    ``error_valid``; ``bus`` (AXI write manager, ID 0).
    """

    def __init__(self, config):
        check_config(self, config)
        self._config = config
        super().__init__({
            "cmd": In(stream.Signature(store_layout)),
            "write_base": In(32), "write_limit": In(32),
            "rd_addr": Out(16), "rd_en": Out(1), "rd_data": In(32 * config.cols),
            "done": Out(1), "busy": Out(1), "abort": In(1),
            "error": Out(NPUError), "error_valid": Out(1),
            "bus": Out(WritePortSignature(config)),
        })

    @staticmethod
    def _desc_layout(lb):
        return data.StructLayout({
            "kind": unsigned(1), "sp": unsigned(16), "off": unsigned(lb), "end": unsigned(10),
            "strb0": unsigned(1 << lb), "strb1": unsigned(1 << lb), "last0": unsigned(1),
            "last1": unsigned(1),
            "shared": unsigned(1), "int32": unsigned(1), "last_instr": unsigned(1),
            "code": unsigned(8),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nbytes = cfg.axi_data_bits // 8
        lb = log2(nbytes)
        word_bits = 32 * cfg.cols
        desc_layout = self._desc_layout(lb)
        entry_layout = data.StructLayout({"desc": desc_layout, "word": unsigned(word_bits)})

        draining = Signal()
        flush = Signal()            # drop the work not yet committed to the bus
        clear = Signal()            # forget everything (the drain is over)
        planner, desc_fifo = segment_queue(m, nbytes, desc_layout, reset=clear)
        word_fifo = SyncFIFO(width=entry_layout.size, depth=_WORD_FIFO_DEPTH)
        m.submodules.words = ResetInserter(clear)(word_fifo)
        burst_fifo = SyncFIFO(width=8, depth=MAX_OUTSTANDING)          # awlen per burst
        m.submodules.burst_lengths = ResetInserter(clear)(burst_fifo)
        flag_fifo = SyncFIFO(width=1, depth=MAX_OUTSTANDING)           # last of instruction
        m.submodules.done_flags = flag_fifo

        # ---- bursts committed to the bus -------------------------------------------
        bus = self.bus
        b_fire = bus.bvalid & bus.bready
        aw = AddressChannel(m, bus, "aw", axi_id=WRITE_ID, size=lb)
        bursts = issue_bursts(m, planner, aw, finished=b_fire, drop=flush)  # B not received
        m.d.comb += [
            burst_fifo.w_data.eq(planner.close_len),
            flag_fifo.w_en.eq(planner.close), flag_fifo.w_data.eq(planner.close_final),
        ]

        # ---- word sequencer ----------------------------------------------------------
        walk = WordWalk(store_layout)
        sp, addr = walk.sp, walk.addr
        int32 = Signal()
        nbytes_word = Signal(9)
        fault = walk.fault(aligned=~int32 | (addr[:2] == 0))

        seg_valid = Signal()
        seg_end = Signal(10)        # the word's end, in bytes from its first beat's start
        m.d.comb += seg_end.eq(addr[:lb] + nbytes_word)
        seg_kind = Signal()
        seg_code = Signal(8)
        seg_last = (seg_kind == _SEG) & walk.last_i & walk.last_o
        desc = Signal(desc_layout)
        # A register stage between the sequencer and the planner (timing).
        st_ready = planner_stage(m, planner, desc_fifo, valid=seg_valid,
                                 data=seg_kind == _SEG, start=addr[:32], length=nbytes_word,
                                 close=seg_last, desc=desc, flush=flush)
        take = seg_valid & st_ready

        # On abort or error (flush) the sequencer stops where it is.
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~draining & ~flush)
                # The walk's registers follow the offered command in every IDLE cycle
                # (unused until it is accepted): only the state depends on the handshake.
                p = self.cmd.payload
                size = Mux(p.elem_bytes == 4, p.lanes << 2, p.lanes)
                m.d.sync += [*walk.start(p, self.write_base, self.write_limit, size),
                             int32.eq(p.elem_bytes == 4), nbytes_word.eq(size)]
                with m.If(self.cmd.valid & self.cmd.ready):
                    m.next = "WORD"
            with m.State("WORD"):
                m.d.comb += seg_valid.eq(1)
                with m.If(fault != NPUError.NONE.value):
                    m.d.comb += [seg_kind.eq(_FAULT), seg_code.eq(fault)]
                with m.If(take):
                    with m.If(seg_kind == _FAULT):
                        m.next = "FAULTED"
                    with m.Else():
                        walk.advance(m)
                stop_on(m, flush)
            with m.State("FAULTED"):
                stop_on(m, flush)

        m.d.comb += [
            desc.kind.eq(seg_kind), desc.sp.eq(sp), desc.off.eq(addr[:lb]),
            desc.end.eq(seg_end), desc.int32.eq(int32), desc.last_instr.eq(seg_last),
            desc.strb0.eq(Cat(*((addr[:lb] <= q) & (seg_end > q) for q in range(nbytes)))),
            desc.strb1.eq(Cat(*(seg_end > q + nbytes for q in range(nbytes)))),
            desc.last0.eq(seg_end <= nbytes), desc.last1.eq(seg_end <= 2 * nbytes),
            desc.code.eq(seg_code),
        ]

        # ---- OUT read: one word per descriptor into the word FIFO --------------------
        in_flight = Signal()
        flight_desc = Signal(desc_layout)
        issue = desc_fifo.r_rdy & (word_fifo.level + in_flight < _WORD_FIFO_DEPTH) & ~clear
        head_desc = Signal(desc_layout)
        m.d.comb += head_desc.eq(desc_fifo.r_data)
        m.d.comb += [desc_fifo.r_en.eq(issue), self.rd_en.eq(issue & (head_desc.kind == _SEG)),
                     self.rd_addr.eq(head_desc.sp)]
        m.d.sync += in_flight.eq(issue)
        with m.If(issue):
            m.d.sync += flight_desc.eq(head_desc)
        entry_in = Signal(entry_layout)
        m.d.comb += [entry_in.desc.eq(flight_desc), entry_in.word.eq(self.rd_data),
                     # (during clear the FIFO is reset: a write then is lost anyway)
                     word_fifo.w_en.eq(in_flight), word_fifo.w_data.eq(entry_in)]

        # ---- beat assembler ----------------------------------------------------------
        entry = Signal(entry_layout)
        m.d.comb += entry.eq(word_fifo.r_data)
        d = entry.desc
        # The bytes to write: the whole word (int32) or the low byte of every lane (int8).
        low_bytes = Cat(*(entry.word[32 * j:32 * j + 8] for j in range(cfg.cols)))
        packed = Mux(d.int32, entry.word, low_bytes)
        chunk_count = (4 * cfg.cols + nbytes - 1) // nbytes + 1
        chunks = [packed[8 * nbytes * c:8 * nbytes * (c + 1)] for c in range(chunk_count)]
        chunks = [Const(0, 8 * nbytes) if len(c) == 0 else
                  Cat(c, Const(0, 8 * nbytes - len(c))) for c in chunks]

        first = Signal(init=1)
        remaining = Signal(10)
        buf_data = Signal(8 * nbytes)
        buf_strb = Signal(nbytes)
        buf_valid = Signal()
        buf_seg_last = Signal()    # the buffered beat ends its segment (may be shared)
        sent = Signal(8)           # beats of the current burst already sent

        seg_piece = word_fifo.r_rdy & (d.kind == _SEG)
        merge = first & d.shared
        # Beat k of the segment holds bytes [k·nbytes − off, (k+1)·nbytes − off) of the
        # packed word: byte q is byte q − off of chunk k (q ≥ off) or of chunk k − 1.  The
        # chunks after the current one shift through ``tail``; chunk k − 1 rotated by off
        # is kept from the previous piece (``prev_rot``), so a piece rotates one chunk.
        tail = Signal(8 * nbytes * (chunk_count - 1))
        prev_rot = Signal(8 * nbytes)
        cur = Signal(8 * nbytes)
        cur_rot = Signal(8 * nbytes)
        window = Signal(8 * nbytes)
        m.d.comb += [cur.eq(Mux(first, chunks[0], tail[:8 * nbytes])),
                     cur_rot.eq(rotate_left_bytes(cur, d.off, nbytes)),
                     window.eq(Cat(*(Mux(d.off <= q, cur_rot[8 * q:8 * q + 8],
                                         Mux(first, 0, prev_rot[8 * q:8 * q + 8]))
                                     for q in range(nbytes))))]
        # The strobes of the beat and whether it ends the segment: precomputed in the
        # descriptor for its first two beats, in registers from the third one.
        rest_strb = Signal(nbytes)
        rest_last = Signal()
        rem = Signal(10)           # segment end, in bytes from this beat's start
        m.d.comb += rem.eq(Mux(first, d.end, remaining))
        strb = Signal(nbytes)
        m.d.comb += strb.eq(Mux(first, d.strb0, rest_strb))
        piece_last = Mux(first, d.last0, rest_last)

        # A buffered beat that ends its segment is final unless the next segment (at the
        # word FIFO's head or in the OUT read) merges into it; with no next segment
        # anywhere, once it is the last beat of its (closed) burst.  A next segment in
        # the descriptor FIFO is waited for (it moves on in a cycle; the descriptor FIFO's
        # memory never drives the send decision).
        # The length of the oldest burst not fully sent is a register in front of the
        # length FIFO (h_valid, h_len) with h_last = (sent == h_len) kept a beat ahead,
        # so wlast and the send decision read no FIFO and compare nothing.  When the
        # head is (or becomes) free it takes the FIFO's first entry, or a burst closing
        # in the same cycle when the FIFO is empty (no added latency).
        h_valid = Signal()
        h_len = Signal(8)
        h_last = Signal()
        burst_known = h_valid
        is_last = h_valid & h_last
        next_desc = Signal(desc_layout)
        m.d.comb += next_desc.eq(Mux(word_fifo.r_rdy, d.as_value(), flight_desc.as_value()))
        next_merges = (next_desc.kind == _SEG) & next_desc.shared
        tail_final = Mux(word_fifo.r_rdy | in_flight, ~next_merges,
                         is_last & ~desc_fifo.r_rdy)
        send = buf_valid & burst_known & (~buf_seg_last | tail_final)
        fire = send & bus.wready
        # A piece enters the buffer when it is free or sent (a head that does not merge
        # makes the buffered beat final: sent when its burst is known), or merges into
        # the buffered beat (which then waits for it).  No path from ``send``.
        go = seg_piece & Mux(merge, buf_valid, ~buf_valid | (burst_known & bus.wready))
        m.d.comb += [bus.wvalid.eq(send), bus.wdata.eq(buf_data), bus.wstrb.eq(buf_strb),
                     bus.wlast.eq(is_last)]
        head_free = ~h_valid | (fire & h_last)
        m.d.comb += burst_fifo.w_en.eq(planner.close & (burst_fifo.r_rdy | ~head_free))
        with m.If(head_free):
            with m.If(burst_fifo.r_rdy):
                m.d.comb += burst_fifo.r_en.eq(1)
                m.d.sync += [h_valid.eq(1), h_len.eq(burst_fifo.r_data),
                             h_last.eq(burst_fifo.r_data == 0)]
            with m.Elif(planner.close):
                m.d.sync += [h_valid.eq(1), h_len.eq(planner.close_len),
                             h_last.eq(planner.close_len == 0)]
            with m.Else():
                m.d.sync += h_valid.eq(0)
        with m.If(fire):
            m.d.sync += buf_valid.eq(0)
            with m.If(is_last):
                m.d.sync += sent.eq(0)
            with m.Else():
                m.d.sync += [sent.eq(sent + 1), h_last.eq(sent + 1 == h_len)]
        with m.If(go):
            new_data = Cat(*(Mux(strb[q], window[8 * q:8 * q + 8],
                                 Mux(merge, buf_data[8 * q:8 * q + 8], 0))
                             for q in range(nbytes)))
            m.d.sync += [buf_valid.eq(1), buf_data.eq(new_data),
                         buf_strb.eq(strb | Mux(merge, buf_strb, 0)),
                         buf_seg_last.eq(piece_last)]
            with m.If(piece_last):
                m.d.comb += word_fifo.r_en.eq(1)
                m.d.sync += first.eq(1)
            with m.Else():
                m.d.sync += [first.eq(0), remaining.eq(rem - nbytes), prev_rot.eq(cur_rot),
                             tail.eq(Mux(first, Cat(*chunks[1:]), tail[8 * nbytes:])),
                             rest_strb.eq(Mux(first, d.strb1, Cat(*(remaining > q + nbytes
                                                                   for q in range(nbytes))))),
                             rest_last.eq(Mux(first, d.last1, remaining <= 2 * nbytes))]

        # A fault descriptor is reported once everything before it is acknowledged, a
        # cycle after it is found so (a register: the FIFO's head never reaches the
        # planner's drop in one cycle).  Nothing changes in that cycle: nothing follows
        # the fault, no burst is open, and an abort or write error starts a drain.
        fault_seen = Signal()
        fault_ready = Signal()
        m.d.sync += fault_ready.eq(word_fifo.r_rdy & (d.kind == _FAULT) & ~buf_valid &
                                   (bursts == 0) & ~draining & ~flush)
        with m.If(fault_ready & ~draining):
            m.d.comb += [word_fifo.r_en.eq(1), fault_seen.eq(1)]

        # ---- B responses, done, errors -------------------------------------------------
        m.d.comb += [bus.bready.eq(1), flag_fifo.r_en.eq(b_fire)]
        write_error = b_fire & (bus.bresp != RESP_OKAY) & ~draining
        m.d.sync += [self.done.eq(b_fire & flag_fifo.r_data & (bus.bresp == RESP_OKAY) &
                                  ~draining & ~self.abort)]
        report_errors(m, self, fault=fault_seen, code=d.code, bus_error=write_error,
                      bus_code=NPUError.AXI_WRITE_ERROR)

        # Abort or write error: drop what is not committed, complete the closed bursts.
        m.d.comb += flush.eq(self.abort | write_error | fault_seen)
        with m.If(flush & ~fault_seen):
            m.d.sync += draining.eq(1)
        with m.If(draining & ~burst_fifo.r_rdy & ~h_valid & (bursts == 0)):
            m.d.comb += clear.eq(1)
            m.d.sync += draining.eq(0)
        with m.If(clear | fault_seen):
            m.d.sync += [first.eq(1), buf_valid.eq(0), sent.eq(0)]
        with m.If(clear):
            m.d.sync += h_valid.eq(0)
        # cmd.ready is ~draining & ~flush in IDLE; without flush (it clears the count).
        track_busy(m, self, clear=flush | clear, draining=draining,
                   offered=self.cmd.valid & ~draining & fsm.ongoing("IDLE"))
        return m
