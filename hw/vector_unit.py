"""The vector unit: row operations of the VECTOR instruction on the OUT scratchpad.

Executes SOFTMAX, ROWMAX, ADD, SUB, CLAMP, REQUANT, MAX, PACK_INT4, PACK_BINARY and,
with the bf16 mode built, TO_BF16 and TO_BF16_RELU (docs/ISA.md, "VECTOR") on
``cols`` int32 lanes per cycle, bit-exact with ``npugen.golden.vector.vector_op``.

Structure: a sequencer issues at most one OUT read per cycle, each with a *tag* (what
to do with the word, where to write it); the word and its tag then flow down a fixed
pipeline whose results enter a write FIFO at a stage that depends on the operation::

    sequencer ─► OUT read ─► s1 ─► s2 ─► … ─► s13 ─► s14
                                │     │            │
      CLAMP, ADD, SUB, MAX, PACK, TO_BF16 write at s2; SOFTMAX normalize, ROWMAX at s3;
      REQUANT at s11; SOFTMAX exp at s13 ──► write FIFO ─► OUT write request

A read that will produce a write is issued only while a FIFO slot is guaranteed for
it (credit counter), so back-pressure on ``wr_ready`` only pauses the reads.  REQUANT
and the softmax exponent share one :class:`~npugen.hw.requantizer.QuantizedMultiplier`
(the requantizer's ``MultiplyByQuantizedMultiplier`` stages).

Cycle cost from a command accepted in cycle 0 to its ``done`` pulse, ``wr_ready``
always high (:func:`vector_cycles`; ``c = count``, ``n = n_words``,
``v = ceil(n_valid / cols)``):

* CLAMP, PACK_INT4, PACK_BINARY ``c·n + 6``, REQUANT ``c·n + 15``: one word per cycle,
  rows back to back (a packing operation writes one word per ``g`` = 2 or 8 words
  read, and at the end of each row); ADD, SUB, MAX ``2·c·n + 6`` (two reads per word
  on the one read port); TO_BF16, TO_BF16_RELU ``2·c·n + 6`` (each word is read twice,
  each read converts all lanes and writes one half of the bytes); ROWMAX
  ``c·v + 7`` (only the words holding valid elements are read).
* SOFTMAX ``c·(v + 2·n + 45) + 7``: per row, pass 1 (max) reads ``v`` words, 3 cycles
  for the maximum to settle, pass 2 (exp, sum, ``e`` written to ``dst``) reads ``n``
  words, 42 cycles for the sum to settle (15) and the restoring divider
  ``R = floor(2**48 / sum)`` (26 steps + 1), then pass 3 (normalize ``dst`` in place)
  reads ``n`` words; the next row's pass 1 overlaps the end of pass 3.
  With back-pressure on ``wr_ready`` the reads pause when the write FIFO is full.
* The tail (``+ 6`` … ``+ 15``) is the pipeline and write FIFO draining: ``done`` comes
  4 cycles after the last result enters the FIFO.
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from npugen.golden.vector import (DIVIDER_STEPS, PACK_BITS, SOFTMAX_OUT_MAX, SOFTMAX_OUT_SHIFT,
                                  SOFTMAX_POLY_B, SOFTMAX_POLY_C, SOFTMAX_Z_BITS,
                                  SOFTMAX_Z_LIMIT, vector_cycles)
from npugen.golden.vector import MBQM_LATENCY as _GOLDEN_MBQM_LATENCY
from npugen.golden.vector import STAGE_ELEMENTWISE as _STAGE_ELEMENTWISE
from npugen.golden.vector import STAGE_EXP as _STAGE_EXP
from npugen.golden.vector import STAGE_MAX as _STAGE_MAX
from npugen.golden.vector import STAGE_NORM as _STAGE_NORM
from npugen.golden.vector import STAGE_REQUANT as _STAGE_REQUANT
from npugen.golden.vector import STAGE_SUM as _STAGE_SUM
from npugen.golden.vector import SUM_MIN_LOG2 as _SUM_MIN_LOG2

from .isa import VectorOp, vector_layout
from .requantizer import MBQM_LATENCY, QuantizedMultiplier

__all__ = ["VectorUnit", "vector_cycles", "DIVIDER_STEPS", "FIFO_DEPTH"]

_INT32_MIN = -(1 << 31)

#: Bits of an exponent value ``e`` (``l < 2**23``) and of the row sum (``< 2**39``).
_E_BITS = 23
_SUM_BITS = 39
#: Low bits of ``e`` multiplied by ``R`` on a DSP (an 18 × 27 product: two MULT18X18D);
#: the ``_E_BITS - 18`` high bits are multiplied by shifted additions in LUTs.
_NORM_DSP_BITS = 18


def _norm_product(e, recip):
    """``e · recip`` (both unsigned) with only ``e``'s low :data:`_NORM_DSP_BITS` bits on a
    multiplier: the high bits' partial products are added in LUT logic.  A whole 23 × 27
    product takes four MULT18X18D on ECP5 (two of them for 5 × 18 and 5 × 9 bits); this
    form takes two, which keeps the default preset's NPU within the 156 of an ECP5-85F.
    Combinational."""
    low = e[:_NORM_DSP_BITS] * recip
    high = e[_NORM_DSP_BITS:]
    partial = [Mux(high[i], recip << i, 0) for i in range(len(high))]
    while len(partial) > 1:
        partial = [partial[i] + partial[i + 1] if i + 1 < len(partial) else partial[i]
                   for i in range(0, len(partial), 2)]
    return low + (partial[0] << _NORM_DSP_BITS)

# The pipeline stages, the divider and ``vector_cycles`` (the exact cycle count) live in
# ``npugen.golden.vector`` so that the golden cycle model needs no Amaranth; the
# multiplier's latency there must be the requantizer's.
if _GOLDEN_MBQM_LATENCY != MBQM_LATENCY:
    raise ImportError(f"npugen.golden.vector.MBQM_LATENCY ({_GOLDEN_MBQM_LATENCY}) differs "
                      f"from the requantizer's ({MBQM_LATENCY})")
_STAGES = _STAGE_SUM
#: Slots of the write FIFO: enough credits for one read per cycle through the longest
#: path (write at s13, FIFO output register, pop, credit returned).
FIFO_DEPTH = _STAGE_EXP + 5


class _Kind(enum.Enum, shape=4):
    """What the pipeline does with a word."""
    CLAMP = 0
    REQUANT = 1
    ADD_A = 2       # first operand of ADD/SUB: kept for the next word
    ADD_B = 3       # second operand: a ± b written
    MAX = 4         # SOFTMAX pass 1 and ROWMAX
    EXP = 5         # SOFTMAX pass 2
    NORM = 6        # SOFTMAX pass 3
    PACK = 7        # PACK_INT4, PACK_BINARY: bits gathered, a word written per group
    CONV = 8        # TO_BF16(_RELU): FP32 → BF16, half ``pos`` of the bytes written


def _tag_layout(cols):
    return data.StructLayout({
        "valid": 1,
        "kind": _Kind,
        "write": 1,
        "addr": 16,
        "first": 1,
        "last": 1,
        "lanes": cols,          # lanes holding valid elements (MAX, EXP, PACK)
        "pos": 3,               # PACK: the word's place in its output word's group;
                                # TO_BF16: the half of the bytes written
    })


class VectorUnit(wiring.Component):
    """The VECTOR instruction unit of one :class:`~npugen.golden.config.NPUConfig`.

    Ports
    -----
    cmd : In(stream of ``vector_layout``)
        A VECTOR instruction the controller has validated; accepted only while idle.
    rd_addr, rd_en : Out ; rd_data : In(cols·32)
        OUT read port; ``rd_data`` is the word of the address of the previous cycle's
        ``rd_en``.
    wr_addr, wr_data, wr_valid : Out ; wr_ready : In(1)
        OUT write request, taken when ``wr_valid & wr_ready``.
    done : Out(1)
        One-cycle pulse when an instruction's last write has been taken; ``busy`` is
        low from that cycle on and a new command may be accepted in it.
    busy : Out(1)
        From the cycle after a command is accepted up to its ``done``.
    abort : In(1)
        Drops all work (queued writes too) at once; the unit is idle the next cycle.
    """

    def __init__(self, config):
        from npugen.golden.config import NPUConfig
        NPUConfig.check(config)
        self._config = config
        cols = config.cols
        super().__init__({
            "cmd": In(stream.Signature(vector_layout)),
            "rd_addr": Out(16),
            "rd_en": Out(1),
            "rd_data": In(cols * 32),
            "wr_addr": Out(16),
            "wr_data": Out(cols * 32),
            "wr_valid": Out(1),
            "wr_ready": In(1),
            "done": Out(1),
            "busy": Out(1),
            "abort": In(1),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        # TO_BF16(_RELU) only with the bf16 mode built (the controller refuses them else).
        has_bf16 = "bf16" in self._config.modes
        conv_ops = (VectorOp.TO_BF16, VectorOp.TO_BF16_RELU) if has_bf16 else ()
        lanes32 = data.ArrayLayout(signed(32), cols)
        tag_layout = _tag_layout(cols)

        # ------------------------------------------------------------ instruction
        ins = Signal(vector_layout)
        is_softmax = Signal()
        bound = Signal(signed(33))          # -2**(31 - max(shift, 0))
        with m.If(self.cmd.valid & self.cmd.ready):
            shift = self.cmd.payload.shift
            m.d.sync += [
                ins.eq(self.cmd.payload),
                is_softmax.eq(self.cmd.payload.op == VectorOp.SOFTMAX),
                # SOFTMAX bounds d; for REQUANT the bound is below every int32.
                bound.eq(Const(_INT32_MIN, signed(33)) >>
                         Mux((self.cmd.payload.op == VectorOp.SOFTMAX) & (shift > 0),
                             shift.as_unsigned(), 0)[:5]),
            ]
        op = ins.op

        # ------------------------------------------------------------ write FIFO + credits
        abort = self.abort
        fifo_layout = data.StructLayout({"addr": 16, "data": cols * 32})
        fifo = ResetInserter(abort)(SyncFIFOBuffered(width=fifo_layout.size,
                                                      depth=FIFO_DEPTH))
        m.submodules.write_fifo = fifo
        fifo_out = fifo_layout(fifo.r_data)
        m.d.comb += [
            self.wr_valid.eq(fifo.r_rdy),
            self.wr_addr.eq(fifo_out.addr),
            self.wr_data.eq(fifo_out.data),
            fifo.r_en.eq(self.wr_ready),
        ]
        # Writes issued (as reads) and not yet taken from the FIFO.
        pending = Signal(range(FIFO_DEPTH + 1))
        credit = Signal()
        issue_write = Signal()
        popped = Signal()
        m.d.comb += [
            credit.eq(pending < FIFO_DEPTH),
            popped.eq(fifo.r_rdy & fifo.r_en),
        ]
        m.d.sync += pending.eq(pending + issue_write - popped)

        # ------------------------------------------------------------ sequencer
        rows_left = Signal(16)
        word = Signal(16)
        a_row = Signal(16)
        b_row = Signal(16)
        d_row = Signal(16)
        elems_left = Signal(17)             # valid elements from this word on
        phase_b = Signal()                  # ADD/SUB: the next read is operand b
        max_done = Signal()                 # row maximum known (set by the pipeline)
        sum_done = Signal()                 # row sum known (set by the pipeline)
        div_left = Signal(range(DIVIDER_STEPS + 1))
        remainder = Signal(_SUM_BITS + 1)
        quotient = Signal(DIVIDER_STEPS)
        recip = Signal(DIVIDER_STEPS)       # R = floor(2**48 / sum)
        row_max = Signal(signed(32))
        row_sum = Signal(_SUM_BITS)

        tag0 = Signal(tag_layout)           # the read issued this cycle
        last_word = Signal()
        valid_end = Signal()                # the last word holding valid elements
        m.d.comb += [
            last_word.eq(word == ins.n_words - 1),
            valid_end.eq(elems_left <= cols),
            tag0.first.eq(word == 0),
            tag0.lanes.eq(Cat(elems_left > j for j in range(cols))),
            self.rd_en.eq(tag0.valid),
        ]

        def next_word():
            m.d.sync += [word.eq(word + 1),
                         elems_left.eq(Mux(valid_end, 0, elems_left - cols))]

        def start_row():
            m.d.sync += [word.eq(0), elems_left.eq(ins.n_valid)]

        def next_row(more_state, end_state="DRAIN"):
            """Advance to the next row, or to ``end_state`` after the last one."""
            m.d.sync += [rows_left.eq(rows_left - 1),
                         a_row.eq(a_row + ins.src_stride),
                         b_row.eq(b_row + ins.src_stride),
                         d_row.eq(d_row + ins.dst_stride)]
            start_row()
            with m.If(rows_left == 1):
                m.next = end_state
            with m.Else():
                m.next = more_state

        def leave_on_abort():
            # The last assignment of the state wins over its other transitions.
            with m.If(abort):
                m.next = "IDLE"

        m.d.sync += self.done.eq(0)
        with m.FSM(name="sequencer") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~abort)
                with m.If(self.cmd.valid & ~abort):
                    p = self.cmd.payload
                    m.d.sync += [rows_left.eq(p.count), a_row.eq(p.src), b_row.eq(p.src_b),
                                 d_row.eq(p.dst), word.eq(0), elems_left.eq(p.n_valid),
                                 phase_b.eq(0), max_done.eq(0), sum_done.eq(0)]
                    with m.Switch(p.op):
                        with m.Case(VectorOp.SOFTMAX):
                            m.next = "SM_MAX"
                        with m.Case(VectorOp.ROWMAX, VectorOp.ADD, VectorOp.SUB,
                                    VectorOp.CLAMP, VectorOp.REQUANT, VectorOp.MAX,
                                    VectorOp.PACK_INT4, VectorOp.PACK_BINARY, *conv_ops):
                            m.next = "STREAM"
                        with m.Default():
                            m.next = "DRAIN"

            with m.State("STREAM"):
                # CLAMP, REQUANT, ADD, SUB, MAX, ROWMAX, PACK, TO_BF16: rows back to back.
                is_addsub = (op == VectorOp.ADD) | (op == VectorOp.SUB) | (op == VectorOp.MAX)
                # TO_BF16: every word read twice (phase_b: the second half of its bytes).
                is_conv = Cat(op == code for code in conv_ops).any() if has_bf16 else Const(0)
                is_double = is_addsub | is_conv
                is_rowmax = op == VectorOp.ROWMAX
                is_pack4 = op == VectorOp.PACK_INT4
                is_pack = is_pack4 | (op == VectorOp.PACK_BINARY)
                # PACK: word w of the row is part pos = w mod g of output word w // g.
                pos = Mux(is_pack4, word[:1], word[:3])
                pack_end = Mux(is_pack4, pos == 1, pos == 7) | last_word
                d_word = Mux(is_pack4, word >> 1, word >> 3)
                go = Signal()
                m.d.comb += [
                    go.eq(credit | (is_addsub & phase_b) | (is_pack & ~pack_end)),
                    tag0.valid.eq(go),
                    tag0.pos.eq(Mux(is_conv, phase_b, pos)),
                    tag0.addr.eq(Mux(is_rowmax, d_row, d_row + Mux(
                        is_pack, d_word, Mux(is_conv, Cat(phase_b, word), word)))),
                    tag0.last.eq(Mux(is_rowmax, valid_end, last_word)),
                    self.rd_addr.eq(Mux(phase_b & ~is_conv, b_row, a_row) + word),
                ]
                with m.Switch(op):
                    with m.Case(VectorOp.CLAMP):
                        m.d.comb += [tag0.kind.eq(_Kind.CLAMP), tag0.write.eq(1)]
                    with m.Case(VectorOp.REQUANT):
                        m.d.comb += [tag0.kind.eq(_Kind.REQUANT), tag0.write.eq(1)]
                    with m.Case(VectorOp.ROWMAX):
                        m.d.comb += [tag0.kind.eq(_Kind.MAX), tag0.write.eq(valid_end)]
                    with m.Case(VectorOp.PACK_INT4, VectorOp.PACK_BINARY):
                        m.d.comb += [tag0.kind.eq(_Kind.PACK), tag0.write.eq(pack_end)]
                    if has_bf16:
                        with m.Case(*conv_ops):
                            m.d.comb += [tag0.kind.eq(_Kind.CONV), tag0.write.eq(1)]
                    with m.Default():
                        m.d.comb += [tag0.kind.eq(Mux(phase_b, _Kind.ADD_B, _Kind.ADD_A)),
                                     tag0.write.eq(phase_b)]
                # A pair a, b holds one credit, taken with a.
                m.d.comb += issue_write.eq(go & Mux(is_addsub, ~phase_b, tag0.write))
                with m.If(go):
                    with m.If(is_double):
                        m.d.sync += phase_b.eq(~phase_b)
                    with m.If(~is_double | phase_b):
                        with m.If(Mux(is_rowmax, valid_end, last_word)):
                            next_row("STREAM")
                        with m.Else():
                            next_word()
                leave_on_abort()

            with m.State("SM_MAX"):
                # Pass 1: the maximum of the valid words.
                m.d.comb += [tag0.valid.eq(1), tag0.kind.eq(_Kind.MAX),
                             tag0.last.eq(valid_end), self.rd_addr.eq(a_row + word)]
                with m.If(valid_end):
                    start_row()
                    m.next = "SM_WAIT_MAX"
                with m.Else():
                    next_word()
                leave_on_abort()

            with m.State("SM_WAIT_MAX"):
                with m.If(max_done):
                    m.d.sync += max_done.eq(0)
                    m.next = "SM_EXP"
                leave_on_abort()

            with m.State("SM_EXP"):
                # Pass 2: e of every word written to dst, summed.
                m.d.comb += [tag0.valid.eq(credit), tag0.kind.eq(_Kind.EXP),
                             tag0.write.eq(1), tag0.last.eq(last_word),
                             tag0.addr.eq(d_row + word), self.rd_addr.eq(a_row + word),
                             issue_write.eq(credit)]
                with m.If(credit):
                    with m.If(last_word):
                        start_row()
                        m.next = "SM_WAIT_SUM"
                    with m.Else():
                        next_word()
                leave_on_abort()

            with m.State("SM_WAIT_SUM"):
                with m.If(sum_done):
                    m.d.sync += [sum_done.eq(0), div_left.eq(DIVIDER_STEPS),
                                 remainder.eq(1 << _SUM_MIN_LOG2), quotient.eq(0)]
                    m.next = "SM_DIV"
                leave_on_abort()

            with m.State("SM_DIV"):
                # Restoring division of 2**48 = 2**22 · 2**26 by the sum (> 2**22).
                doubled = remainder << 1
                fits = doubled >= row_sum
                with m.If(div_left != 0):
                    m.d.sync += [
                        remainder.eq(Mux(fits, doubled - row_sum, doubled)),
                        quotient.eq(Cat(fits, quotient)),
                        div_left.eq(div_left - 1),
                    ]
                with m.Elif(pending == 0):
                    # Pass 3 reads e back: every write of pass 2 has been taken.
                    m.d.sync += recip.eq(quotient)
                    m.next = "SM_NORM"
                leave_on_abort()

            with m.State("SM_NORM"):
                # Pass 3: out = min(127, (e · R) >> 41), in place in dst.
                m.d.comb += [tag0.valid.eq(credit), tag0.kind.eq(_Kind.NORM),
                             tag0.write.eq(1), tag0.last.eq(last_word),
                             tag0.addr.eq(d_row + word), self.rd_addr.eq(d_row + word),
                             issue_write.eq(credit)]
                with m.If(credit):
                    with m.If(last_word):
                        next_row("SM_MAX")
                    with m.Else():
                        next_word()
                leave_on_abort()

            with m.State("DRAIN"):
                with m.If(pending == 0):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
                leave_on_abort()
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        with m.If(abort):
            m.d.sync += [pending.eq(0), self.done.eq(0)]

        # ------------------------------------------------------------ pipeline
        tags = [None] + [Signal(tag_layout, name=f"tag_s{i}") for i in range(1, _STAGES + 1)]
        m.d.sync += tags[1].eq(tag0)
        m.d.sync += [tags[i].eq(tags[i - 1]) for i in range(2, _STAGES + 1)]
        with m.If(abort):
            m.d.sync += [tags[i].valid.eq(0) for i in range(1, _STAGES + 1)]

        def at(stage, *kinds):
            """The word at ``stage`` is valid and of one of ``kinds``."""
            tag = tags[stage]
            return tag.valid & Cat(tag.kind == kind for kind in kinds).any()

        x = Signal(lanes32)
        m.d.comb += x.eq(self.rd_data)

        # s1: CLAMP, ADD/SUB → v2.  MAX: maximum of the word's valid lanes → word_max.
        # NORM: e · R → product.  EXP, REQUANT: d = x - m (REQUANT: x) → diff.
        a_word = Signal(lanes32)
        v2 = Signal(lanes32)
        word_max = Signal(signed(32))
        product = Signal(data.ArrayLayout(unsigned(_E_BITS + DIVIDER_STEPS), cols))
        diff = Signal(data.ArrayLayout(signed(33), cols))
        lo, hi = ins.lo, ins.hi
        with m.If(at(1, _Kind.ADD_A)):
            m.d.sync += a_word.eq(x)
        subtract = op == VectorOp.SUB
        masked = [Mux(tags[1].lanes[j], x[j], _INT32_MIN) for j in range(cols)]
        while len(masked) > 1:
            masked = [Mux(masked[i] >= masked[i + 1], masked[i], masked[i + 1])
                      if i + 1 < len(masked) else masked[i]
                      for i in range(0, len(masked), 2)]
        m.d.sync += word_max.eq(masked[0])
        subtrahend = Mux(is_softmax, row_max, 0)
        # PACK: the valid lanes' low bits placed at part pos of the output word's bytes
        # (``packed``, cols·8 bits), lane j of the output word = byte j.
        packed = Signal(cols * 8)
        merged = Signal(cols * 8)
        with m.If(at(1, _Kind.PACK)):
            m.d.sync += packed.eq(merged)
        with m.Switch(Cat(op == VectorOp.PACK_INT4, tags[1].pos)):
            for code, bits in PACK_BITS.items():
                group = 8 // bits
                for part in range(group):
                    key = (part << 1) | (code == VectorOp.PACK_INT4.value)
                    with m.Case(key):
                        chunk = Cat(Mux(tags[1].lanes[j], x[j][:bits], 0)
                                    for j in range(cols))
                        width = cols * bits
                        m.d.comb += merged.eq(Cat(packed[:part * width], chunk) if part
                                              else chunk)
        # TO_BF16: each lane rounded to BF16 (nearest even: + 0x7FFF + the kept LSB, a
        # carry into the exponent gives ∞), NaN → 0x7FC0, ReLU: sign set → +0; lanes past
        # n_valid → 0.  Output lane i of half h is byte h·cols + i of the word's bytes.
        relu = op == VectorOp.TO_BF16_RELU
        bf = []
        for j in range(cols if has_bf16 else 0):
            bits = x[j].as_unsigned()
            nan = (bits[23:31] == 0xFF) & (bits[:23] != 0)
            kept = Mux(relu & bits[31], 0, bits)
            rounded = (kept + 0x7FFF + kept[16])[16:32]
            bf.append(Mux(tags[1].lanes[j], Mux(nan, 0x7FC0, rounded), 0))
        conv_bytes = [bf[i // 2][8 * (i % 2):8 * (i % 2) + 8] for i in range(len(bf) * 2)]
        maximum = [Mux(a_word[j] >= x[j], a_word[j], x[j]) for j in range(cols)]
        for j in range(cols):
            clamped = Mux(x[j] < lo, lo, Mux(x[j] > hi, hi, x[j]))
            added = Mux(subtract, a_word[j] - x[j], a_word[j] + x[j])[:32]
            other = Mux(op == VectorOp.MAX, maximum[j], added)
            if has_bf16:
                other = Mux(tags[1].kind == _Kind.CONV,
                            Mux(tags[1].pos[0], conv_bytes[cols + j], conv_bytes[j]), other)
            m.d.sync += [
                v2[j].eq(Mux(tags[1].kind == _Kind.CLAMP, clamped,
                             Mux(tags[1].kind == _Kind.PACK, merged[8 * j:8 * j + 8], other))),
                product[j].eq(_norm_product(x[j][:_E_BITS], recip)),
                diff[j].eq(x[j] - subtrahend),
            ]

        # s2: MAX: the row maximum; ROWMAX writes it at s3.  NORM: the output → v3.
        # EXP, REQUANT: d = max(diff, bound) enters the multiplier.
        v3 = Signal(lanes32)
        new_max = Mux(tags[_STAGE_MAX].first | (word_max > row_max), word_max, row_max)
        with m.If(at(_STAGE_MAX, _Kind.MAX)):
            m.d.sync += row_max.eq(new_max)
            with m.If(tags[_STAGE_MAX].last):
                m.d.sync += max_done.eq(1)
        m.submodules.mbqm = mbqm = QuantizedMultiplier(cols)
        for j in range(cols):
            scaled = product[j] >> SOFTMAX_OUT_SHIFT
            m.d.sync += v3[j].eq(Mux(tags[2].kind == _Kind.MAX, new_max,
                                     Mux(scaled > SOFTMAX_OUT_MAX, SOFTMAX_OUT_MAX, scaled)))
            m.d.comb += [
                mbqm.x[j].eq(Mux(diff[j] < bound, bound, diff[j])[:32]),
                mbqm.multiplier[j].eq(ins.multiplier),
                mbqm.shift[j].eq(ins.shift),
            ]

        # s9: t.  REQUANT: t + zero point (no wrap) → v10.  EXP: -t (≥ 0) → v10.
        t = mbqm.result
        v10 = Signal(data.ArrayLayout(signed(34), cols))
        for j in range(cols):
            m.d.sync += v10[j].eq(Mux(is_softmax, -t[j], t[j] + ins.zero_point))

        # s10: REQUANT: the clamp → v11.  EXP: z = -t >> 10, p = -(-t mod 1024):
        # u = p + 1998, the shift z and z ≥ 32.
        v11 = Signal(lanes32)
        u = Signal(data.ArrayLayout(unsigned(11), cols))
        z = [Signal(data.ArrayLayout(unsigned(5), cols), name=f"z_s{i}") for i in (11, 12)]
        z_big = [Signal(cols, name=f"z_big_s{i}") for i in (11, 12)]
        z_hi_bit = SOFTMAX_Z_BITS + (SOFTMAX_Z_LIMIT - 1).bit_length()
        for j in range(cols):
            value = v10[j]
            neg_t = value[:32]
            m.d.sync += [
                v11[j].eq(Mux(value < lo, lo, Mux(value > hi, hi, value))),
                u[j].eq(SOFTMAX_POLY_B - neg_t[:SOFTMAX_Z_BITS]),
                z[0][j].eq(neg_t[SOFTMAX_Z_BITS:z_hi_bit]),
                z_big[0][j].eq(neg_t[z_hi_bit:] != 0),
            ]
        m.d.sync += [z[1].eq(z[0]), z_big[1].eq(z_big[0])]

        # s11: l = u² + 2094200.  s12: e = l >> z (0 when z ≥ 32 or the lane is not
        # valid) → e13.  s13: the word's sum.  s14: the row sum.
        poly = Signal(data.ArrayLayout(unsigned(_E_BITS), cols))
        e13 = Signal(data.ArrayLayout(unsigned(_E_BITS), cols))
        for j in range(cols):
            m.d.sync += [
                poly[j].eq(u[j] * u[j] + SOFTMAX_POLY_C),
                e13[j].eq(Mux(z_big[1][j] | ~tags[12].lanes[j], 0, poly[j] >> z[1][j])),
            ]
        word_sum = Signal(_SUM_BITS)
        m.d.sync += word_sum.eq(sum(e13[j] for j in range(cols)))
        with m.If(at(_STAGE_SUM, _Kind.EXP)):
            m.d.sync += row_sum.eq(Mux(tags[_STAGE_SUM].first, 0, row_sum) + word_sum)
            with m.If(tags[_STAGE_SUM].last):
                m.d.sync += sum_done.eq(1)

        # ------------------------------------------------------------ writes
        # The sequencer never lets two taps write in the same cycle.
        taps = [
            (_STAGE_ELEMENTWISE, (_Kind.CLAMP, _Kind.ADD_B, _Kind.PACK, _Kind.CONV), v2),
            (_STAGE_NORM, (_Kind.NORM, _Kind.MAX), v3),
            (_STAGE_REQUANT, (_Kind.REQUANT,), v11),
            (_STAGE_EXP, (_Kind.EXP,), Cat(Cat(e13[j], Const(0, 32 - _E_BITS))
                                           for j in range(cols))),
        ]
        fifo_in = Signal(fifo_layout)
        for stage, kinds, value in taps:
            with m.If(at(stage, *kinds) & tags[stage].write):
                m.d.comb += [fifo_in.addr.eq(tags[stage].addr), fifo_in.data.eq(value),
                             fifo.w_en.eq(1)]
        m.d.comb += fifo.w_data.eq(fifo_in)
        return m

