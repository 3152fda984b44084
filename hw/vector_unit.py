"""The vector unit: row operations of the VECTOR instruction on the OUT scratchpad.

Executes SOFTMAX, ROWMAX, ADD, SUB, CLAMP, REQUANT, MAX, PACK_INT4, PACK_BINARY and,
with the bf16 mode built, TO_BF16 and TO_BF16_RELU (docs/ISA.md, "VECTOR") on
``cols`` int32 lanes per cycle, bit-exact with ``npugen.golden.vector.vector_op``.

Structure: a sequencer issues at most one OUT read per cycle, each with a *tag* (what
to do with the word, where to write it); the word and its tag then flow down a fixed
pipeline whose results enter a write FIFO at a stage that depends on the operation::

    sequencer ─► OUT read ─► s1 ─► s2 (word registered) ─► s3 ─► … ─► s16 ─► …
      CLAMP, ADD, SUB, MAX, PACK, TO_BF16 write at s4; SOFTMAX normalize at s6;
      ROWMAX at s(2·L + 4); REQUANT at s13; SOFTMAX exp at s16 ──► write FIFO ─► OUT write

(``L = ceil(log2(cols))``: the levels of the word's maximum and sum trees; the sum's
take one stage each, the maximum's two from the second on: a selection, then a
comparison.)  No stage holds more than one carry chain or comparison of the word's width:
element-wise ops compute their flags and sums at s3 and select at s4; the softmax bound
is compared as ``x < m + bound`` (the sum registered once ``m`` is known) beside the
multiplier's left shift of ``x`` at s3 (done here: ``QuantizedMultiplier`` built with
``left_shift=False``), then ``(x << k) - (m << k)`` or ``INT32_MIN`` selected at s4; REQUANT's zero point is added by the multiplier's
rounding adder, its clamp decided at s12 and selected at s13; the divider is
non-restoring (the sign of the partial remainder chooses its adder's operation).  The results pass a write register (each tap's select registered
one stage early) on their way to the FIFO.  A read that will produce a write is issued only while a FIFO slot is
guaranteed for it (credit counter), so back-pressure on ``wr_ready`` only pauses the
reads.  REQUANT and the softmax exponent share one
:class:`~npugen.hw.requantizer.QuantizedMultiplier` (the requantizer's
``MultiplyByQuantizedMultiplier`` stages).

Cycle cost from a command accepted in cycle 0 to its ``done`` pulse, ``wr_ready``
always high (:func:`vector_cycles`; ``c = count``, ``n = n_words``,
``v = ceil(n_valid / cols)``):

* CLAMP, PACK_INT4, PACK_BINARY ``c·n + 9``, REQUANT ``c·n + 18``: one word per cycle,
  rows back to back (a packing operation writes one word per ``g`` = 2 or 8 words
  read, and at the end of each row); ADD, SUB, MAX ``2·c·n + 9`` (two reads per word
  on the one read port); TO_BF16, TO_BF16_RELU ``2·c·n + 9`` (each word is read twice,
  each read converts all lanes and writes one half of the bytes); ROWMAX
  ``c·v + 2·L + 9`` (only the words holding valid elements are read).
* SOFTMAX ``c·(v + 2·n + 3·L + 47) + 11``: per row, pass 1 (max) reads ``v`` words,
  ``2·L + 3`` cycles for the maximum to settle, pass 2 (exp, sum, ``e`` written to
  ``dst``) reads ``n`` words, ``L + 44`` cycles for the sum to settle (``L + 17``) and
  the non-restoring divider ``R = floor(2**48 / sum)`` (26 steps + 1), then pass 3
  (normalize ``dst`` in place) reads ``n`` words; the next row's pass 1 overlaps the
  end of pass 3.  With back-pressure on ``wr_ready`` the reads pause when the write
  FIFO is full.
* The tail (``+ 9`` … ``+ 18``) is the pipeline and write FIFO draining: ``done`` comes
  5 cycles after the last result is complete (write register, FIFO, its output
  register, the write taken).
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from npugen.golden.vector import (DIVIDER_STEPS, PACK_BITS, SOFTMAX_OUT_MAX, SOFTMAX_OUT_SHIFT,
                                  SOFTMAX_POLY_B, SOFTMAX_POLY_C, SOFTMAX_Z_BITS,
                                  SOFTMAX_Z_LIMIT, vector_cycles)
from npugen.golden.vector import MBQM_LATENCY as _GOLDEN_MBQM_LATENCY
from npugen.golden.vector import STAGE_ELEMENTWISE as _STAGE_ELEMENTWISE
from npugen.golden.vector import STAGE_EXP as _STAGE_EXP
from npugen.golden.vector import STAGE_MBQM_IN as _STAGE_MBQM_IN
from npugen.golden.vector import STAGE_NORM as _STAGE_NORM
from npugen.golden.vector import STAGE_READ as _STAGE_READ
from npugen.golden.vector import STAGE_REQUANT as _STAGE_REQUANT
from npugen.golden.vector import stage_max as _stage_max
from npugen.golden.vector import stage_rowmax as _stage_rowmax
from npugen.golden.vector import stage_sum as _stage_sum
from npugen.golden.vector import SUM_MIN_LOG2 as _SUM_MIN_LOG2

from .isa import VectorOp, vector_layout
from .requantizer import MBQM_LATENCY, QuantizedMultiplier, shift_left_wrapped

__all__ = ["VectorUnit", "vector_cycles", "DIVIDER_STEPS", "FIFO_DEPTH"]

_INT32_MIN = -(1 << 31)

#: Bits of an exponent value ``e`` (``l < 2**23``) and of the row sum (``< 2**39``).
_E_BITS = 23
_SUM_BITS = 39
#: Low bits of ``e`` multiplied by ``R`` on a DSP (an 18 × 27 product: two MULT18X18D);
#: the ``_E_BITS - 18`` high bits are multiplied by shifted additions in LUTs.
_NORM_DSP_BITS = 18


def _norm_stages(m, e, recip, name):
    """``min(127, (e · recip) >> 41)`` (both unsigned, ``e`` of :data:`_E_BITS` bits,
    ``recip`` of ``DIVIDER_STEPS`` bits) four cycles after ``e`` and ``recip``: only
    ``e``'s low :data:`_NORM_DSP_BITS` bits are on multipliers (18 × 18 and 18 × 8: two
    MULT18X18D; a whole 23 × 26 product takes four, and the default preset's NPU must
    stay within the 156 of an ECP5-85F), the five high bits' shifted copies of ``recip``
    are added in LUT logic.  Stage 1: the two products, the high bits' copies summed in
    pairs; stages 2 and 3: the sums of weight ``2**18``; stage 4: the last adder, then
    the clamp (the product is below 2**49, so ``>> 41`` exceeds 127 exactly when bit 48
    is set).  Returns the 8-bit output register."""
    high = e[_NORM_DSP_BITS:]
    if len(high) != 5:
        raise ValueError(f"e must have {_E_BITS} bits, not {len(e)}")
    width = len(recip)
    low = e[:_NORM_DSP_BITS]
    product_0 = Signal(2 * _NORM_DSP_BITS, name=f"{name}_m0")      # low · recip[:18]
    product_1 = Signal(width, name=f"{name}_m1")                   # low · recip[18:]
    pair_a = Signal(width + 2, name=f"{name}_pa")
    pair_b = Signal(width + 2, name=f"{name}_pb")
    single = Signal(width, name=f"{name}_pc")
    m.d.sync += [
        product_0.eq(low * recip[:_NORM_DSP_BITS]),
        product_1.eq(low * recip[_NORM_DSP_BITS:]),
        pair_a.eq(Mux(high[0], recip, 0) + Mux(high[1], recip << 1, 0)),
        pair_b.eq(Mux(high[2], recip, 0) + Mux(high[3], recip << 1, 0)),
        single.eq(Mux(high[4], recip, 0)),
    ]
    # e · recip = product_0 + 2**18 · (product_1 + pair_a + 4 · (pair_b + 4 · single)).
    delayed = [Signal(2 * _NORM_DSP_BITS, name=f"{name}_m0_s{i}") for i in (2, 3)]
    sum_a = Signal(width + 3, name=f"{name}_sa")
    sum_b = Signal(width + 5, name=f"{name}_sb")
    upper = Signal(width + 8, name=f"{name}_su")
    m.d.sync += [
        delayed[0].eq(product_0), delayed[1].eq(delayed[0]),
        sum_a.eq(product_1 + pair_a),
        sum_b.eq(pair_b + (single << 2)),
        upper.eq(sum_a + (sum_b << 2)),
    ]
    product = (delayed[1] + (upper << _NORM_DSP_BITS))[:_E_BITS + width]
    out = Signal(8, name=f"{name}_out")
    top = SOFTMAX_OUT_SHIFT + 7
    m.d.sync += out.eq(Mux(product[top], SOFTMAX_OUT_MAX,
                           product[SOFTMAX_OUT_SHIFT:top]))
    return out

# The pipeline stages, the divider and ``vector_cycles`` (the exact cycle count) live in
# ``npugen.golden.vector`` so that the golden cycle model needs no Amaranth; the
# multiplier's latency there must be the requantizer's.
if _GOLDEN_MBQM_LATENCY != MBQM_LATENCY:
    raise ImportError(f"npugen.golden.vector.MBQM_LATENCY ({_GOLDEN_MBQM_LATENCY}) differs "
                      f"from the requantizer's ({MBQM_LATENCY})")
if (_STAGE_READ, _STAGE_MBQM_IN, _STAGE_ELEMENTWISE, _STAGE_NORM, _STAGE_REQUANT,
        _STAGE_EXP) != (2, 4, 4, 6, 13, 16):
    raise ImportError("npugen.golden.vector's pipeline stages differ from the ones "
                      "hw/vector_unit.py builds")
#: Slots of the write FIFO: enough credits for one read per cycle through the longest
#: path (result at s16, write register, FIFO output register, pop, credit returned).
FIFO_DEPTH = _STAGE_EXP + 6


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


def _less_by_halves(m, a, b, name):
    """``a < b`` of two signed 32-bit values, its halves compared into registers (the
    comparison of 16 bits, then of their results: a cycle later, one LUT level)."""
    high_less, high_equal, low_less = (Signal(name=f"{name}_{part}")
                                       for part in ("high_less", "high_equal", "low_less"))
    m.d.sync += [
        high_less.eq(a[16:].as_signed() < b[16:].as_signed()),
        high_equal.eq(a[16:] == b[16:]),
        low_less.eq(a[:16] < b[:16]),
    ]
    return high_less | (high_equal & low_less)

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
        # The operation decoded once, with the command (registered flags).
        op_sub, op_max, op_relu, op_rowmax = (Signal(name=n) for n in
                                              ("op_sub", "op_max", "op_relu", "op_rowmax"))
        op_pack4, op_pack, op_addsub, op_conv = (Signal(name=n) for n in
                                                 ("op_pack4", "op_pack", "op_addsub", "op_conv"))
        decoded = [
            (op_sub, (VectorOp.SUB,)), (op_max, (VectorOp.MAX,)),
            (op_relu, (VectorOp.TO_BF16_RELU,) if has_bf16 else ()),
            (op_rowmax, (VectorOp.ROWMAX,)), (op_pack4, (VectorOp.PACK_INT4,)),
            (op_pack, (VectorOp.PACK_INT4, VectorOp.PACK_BINARY)),
            (op_addsub, (VectorOp.ADD, VectorOp.SUB, VectorOp.MAX)), (op_conv, conv_ops),
        ]
        bound = Signal(signed(33))          # -2**(31 - max(shift, 0))
        left_shift = Signal(5)              # max(shift, 0)
        with m.If(self.cmd.valid & self.cmd.ready):
            shift = self.cmd.payload.shift
            m.d.sync += [
                ins.eq(self.cmd.payload),
                left_shift.eq(Mux(shift > 0, shift[:5], 0)),
                is_softmax.eq(self.cmd.payload.op == VectorOp.SOFTMAX),
                *[flag.eq(Cat(self.cmd.payload.op == code for code in codes).any())
                  for flag, codes in decoded],
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
        remainder = Signal(signed(_SUM_BITS + 3))     # in [-sum, sum)
        quotient = Signal(DIVIDER_STEPS)
        recip = Signal(DIVIDER_STEPS)       # R = floor(2**48 / sum)
        row_max = Signal(signed(32))        # the row maximum so far (from pass-1 registers)
        row_sum = Signal(_SUM_BITS)

        tag0 = Signal(tag_layout)           # the read issued this cycle
        last_word = Signal()
        last_index = Signal(16)             # n_words - 1, set with the command
        valid_end = Signal()                # the last word holding valid elements
        m.d.comb += [
            last_word.eq(word == last_index),
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
                                 last_index.eq(p.n_words - 1),
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
                is_addsub = op_addsub
                # TO_BF16: every word read twice (phase_b: the second half of its bytes).
                is_conv = op_conv
                is_double = is_addsub | is_conv
                is_rowmax = op_rowmax
                is_pack4 = op_pack4
                is_pack = op_pack
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
                # Non-restoring division of 2**48 = 2**22 · 2**26 by the sum (> 2**22):
                # r = 2r - sum if r ≥ 0 else 2r + sum, the quotient bit is r ≥ 0 after
                # the step (the restoring division's bits): one adder whose operation is
                # chosen by a register's sign, no comparison before a selection.
                width = len(remainder) + 1
                doubled = remainder.shift_left(1)
                subtract_sum = ~remainder[-1]
                # 2r ± sum as one adder: 2r + (sum XOR the operation) + carry.
                operand = (row_sum.as_unsigned() ^ subtract_sum.replicate(width))[:width]
                step = (doubled.as_unsigned() + operand + subtract_sum)[:len(remainder)]
                with m.If(div_left != 0):
                    m.d.sync += [
                        remainder.eq(step),
                        quotient.eq(Cat(~step[len(remainder) - 1], quotient)),
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
        # tags[i] travels with the values registered for stage i (stage 1: rd_data).
        stages = _stage_sum(cols)
        tags = [None] + [Signal(tag_layout, name=f"tag_s{i}") for i in range(1, stages + 1)]
        m.d.sync += tags[1].eq(tag0)
        m.d.sync += [tags[i].eq(tags[i - 1]) for i in range(2, stages + 1)]
        with m.If(abort):
            m.d.sync += [tags[i].valid.eq(0) for i in range(1, stages + 1)]

        def at(stage, *kinds):
            """The word at ``stage`` is valid and of one of ``kinds``."""
            tag = tags[stage]
            return tag.valid & Cat(tag.kind == kind for kind in kinds).any()

        # s2: the word read, registered.
        x = Signal(lanes32)
        m.d.sync += x.eq(self.rd_data)
        rd = _STAGE_READ
        tag = tags[rd]

        # s2 → s3, element-wise: ADD/SUB (both sums), the comparisons (CLAMP: x < lo,
        # x > hi; MAX: a ≥ b), PACK's merged bits, TO_BF16's rounding → flags and a
        # candidate; s3 → s4: the select (CLAMP: lo, hi or x; MAX: a or b).
        a_word = Signal(lanes32)
        with m.If(at(rd, _Kind.ADD_A)):
            m.d.sync += a_word.eq(x)
        lo, hi = ins.lo, ins.hi
        subtract = op_sub
        is_max_op = op_max
        is_clamp = tag.kind == _Kind.CLAMP
        # PACK: the valid lanes' low bits placed at part pos of the output word's bytes
        # (``packed``, cols·8 bits), lane j of the output word = byte j.
        packed = Signal(cols * 8)
        merged = Signal(cols * 8)
        with m.If(at(rd, _Kind.PACK)):
            m.d.sync += packed.eq(merged)
        with m.Switch(Cat(op_pack4, tag.pos)):
            for code, bits in PACK_BITS.items():
                group = 8 // bits
                for part in range(group):
                    key = (part << 1) | (code == VectorOp.PACK_INT4.value)
                    with m.Case(key):
                        chunk = Cat(Mux(tag.lanes[j], x[j][:bits], 0) for j in range(cols))
                        width = cols * bits
                        m.d.comb += merged.eq(Cat(packed[:part * width], chunk) if part
                                              else chunk)
        # TO_BF16: each lane rounded to BF16 (nearest even: + 0x7FFF + the kept LSB, a
        # carry into the exponent gives ∞), NaN → 0x7FC0, ReLU: sign set → +0; lanes past
        # n_valid → 0.  Output lane i of half h is byte h·cols + i of the word's bytes.
        relu = op_relu
        bf = []
        for j in range(cols if has_bf16 else 0):
            bits = x[j].as_unsigned()
            nan = (bits[23:31] == 0xFF) & (bits[:23] != 0)
            kept = Mux(relu & bits[31], 0, bits)
            rounded = (kept + 0x7FFF + kept[16])[16:32]
            bf.append(Mux(tag.lanes[j], Mux(nan, 0x7FC0, rounded), 0))
        conv_bytes = [bf[i // 2][8 * (i % 2):8 * (i % 2) + 8] for i in range(len(bf) * 2)]
        x3 = Signal(lanes32)
        added = Signal(lanes32)             # a ± b: an adder straight into its register
        other = Signal(lanes32)             # PACK's bytes, TO_BF16's bytes, MAX's a
        take_other = Signal()
        v_elem = Signal(lanes32)
        m.d.sync += take_other.eq(is_max_op | (tag.kind == _Kind.PACK) |
                                  (tag.kind == _Kind.CONV))
        clamp3, max3 = Signal(), Signal()
        m.d.sync += [clamp3.eq(is_clamp), max3.eq(is_max_op)]
        for j in range(cols):
            choice = a_word[j]
            if has_bf16:
                choice = Mux(tag.kind == _Kind.CONV,
                             Mux(tag.pos[0], conv_bytes[cols + j], conv_bytes[j]), choice)
            m.d.sync += [
                x3[j].eq(x[j]),
                added[j].eq(Mux(subtract, a_word[j] - x[j], a_word[j] + x[j])[:32]),
                other[j].eq(Mux(tag.kind == _Kind.PACK, merged[8 * j:8 * j + 8], choice)),
            ]
            # The comparisons by halves into registers at s3, combined in the select.
            take_lo = clamp3 & _less_by_halves(m, x[j], lo, f"x_lt_lo_{j}")
            take_hi = clamp3 & _less_by_halves(m, hi, x[j], f"hi_lt_x_{j}")
            take_x = clamp3 | (max3 & _less_by_halves(m, a_word[j], x[j], f"a_lt_x_{j}"))
            m.d.sync += v_elem[j].eq(Mux(take_lo, lo, Mux(take_hi, hi, Mux(
                take_x, x3[j], Mux(take_other, other[j], added[j])))))

        # MAX (SOFTMAX pass 1, ROWMAX): the maximum of the word's valid lanes, a pairwise
        # tree: the first level compares the word's lanes into flag registers; every
        # further level is a selection stage (by the flags, into registers) then a
        # comparison stage (into flag registers), so no logic stands between a register
        # and a comparator.  Invalid lanes (a suffix of the word) lose every comparison.
        values = [x[j] for j in range(cols)]
        valid = [tag.lanes[j] for j in range(cols)]
        stage = rd
        while len(values) > 1:
            if stage > rd:                          # the selection stage
                stage += 1
                picked = [Signal(signed(32), name=f"max_s{stage}_v{i}")
                          for i in range(len(values))]
                delayed = [Signal(name=f"max_s{stage}_ok{i}") for i in range(len(values))]
                m.d.sync += [reg.eq(value) for reg, value in zip(picked, values)]
                m.d.sync += [reg.eq(flag) for reg, flag in zip(delayed, valid)]
                values, valid = picked, delayed
            stage += 1                              # the comparison stage
            if len(values) % 2:
                values, valid = values + [values[-1]], valid + [Const(0, 1)]
            kept = [Signal(signed(32), name=f"max_s{stage}_k{i}") for i in range(len(values))]
            flags = [Signal(name=f"max_s{stage}_f{i}") for i in range(len(values) // 2)]
            alive = [Signal(name=f"max_s{stage}_a{i}") for i in range(len(values) // 2)]
            for i in range(len(values) // 2):
                first_value, second_value = values[2 * i], values[2 * i + 1]
                m.d.sync += [flags[i].eq(~valid[2 * i + 1] | (first_value >= second_value)),
                             alive[i].eq(valid[2 * i] | valid[2 * i + 1])]
            m.d.sync += [reg.eq(value) for reg, value in zip(kept, values)]
            values = [Mux(flags[i], kept[2 * i], kept[2 * i + 1]) for i in range(len(flags))]
            valid = alive
        word_max = Signal(signed(32))
        m.d.sync += word_max.eq(values[0])
        stage += 1
        # The row maximum: at stage_max ``kept`` takes the maximum before the word, the
        # word's maximum becomes the candidate and ``take`` records whether it wins
        # (compared with both registers, then chosen); row_max = take ? candidate : kept.
        s_max = _stage_max(cols)
        assert stage == s_max
        kept_max = Signal(signed(32))
        candidate = Signal(signed(32))
        take = Signal()
        m.d.comb += row_max.eq(Mux(take, candidate, kept_max))
        with m.If(at(s_max, _Kind.MAX)):
            m.d.sync += [kept_max.eq(row_max), candidate.eq(word_max),
                         take.eq(tags[s_max].first | Mux(take, word_max > candidate,
                                                         word_max > kept_max))]
            with m.If(tags[s_max].last):
                m.d.sync += max_done.eq(1)
        v_rowmax = Signal(signed(32))
        m.d.sync += v_rowmax.eq(row_max)

        # NORM (SOFTMAX pass 3): out = min(127, (e · R) >> 41), stages s3-s6.
        v_norm = [_norm_stages(m, x[j][:_E_BITS], recip, f"norm_{j}") for j in range(cols)]

        # EXP, REQUANT: d = max(x - m, bound) (REQUANT: x) enters the multiplier at s4,
        # the comparison made as x < m + bound (``low_cut``, registered once m is known).
        # m (0 for REQUANT) and m + bound are registered: both settle before pass 2 reads.
        subtrahend = Signal(signed(32))
        low_cut = Signal(signed(34))
        m.d.sync += [subtrahend.eq(Mux(is_softmax, row_max, 0)),
                     low_cut.eq(Mux(is_softmax, row_max, 0) + bound)]
        # The multiplier's left shift by k = max(shift, 0) is done here, on x and m apart
        # ((x - m) << k = (x << k) - (m << k) modulo 2**32): s2 → s3 the comparison and
        # x << k; s3 → s4 the difference and the selection (bound << k is INT32_MIN:
        # the bound is -2**(31 - k)).
        below = Signal(cols)
        x_shifted = Signal(data.ArrayLayout(unsigned(32), cols))
        m_shifted = Signal(32)
        m.d.sync += m_shifted.eq(shift_left_wrapped(subtrahend, left_shift))
        d = Signal(lanes32)
        m.submodules.mbqm = mbqm = QuantizedMultiplier(cols, offset_bits=8, left_shift=False)
        for j in range(cols):
            m.d.sync += [below[j].eq(x[j] < low_cut),
                         x_shifted[j].eq(shift_left_wrapped(x[j], left_shift)),
                         d[j].eq(Mux(below[j], _INT32_MIN, (x_shifted[j] - m_shifted)[:32]))]
            m.d.comb += [
                mbqm.x[j].eq(d[j]),
                mbqm.multiplier[j].eq(ins.multiplier),
                mbqm.shift[j].eq(ins.shift),
                mbqm.offset[j].eq(Mux(is_softmax, 0, ins.zero_point)),
            ]

        # s11: t (REQUANT: t + zero point, added by the multiplier's rounding adder).
        # REQUANT: s11 → s12 the clamp decision, s12 → s13 the select.
        t = mbqm.result
        r_value = Signal(lanes32)
        r_below = Signal(cols)
        r_above = Signal(cols)
        v_requant = Signal(lanes32)
        for j in range(cols):
            m.d.sync += [
                r_value[j].eq(t[j][:32]),
                r_below[j].eq(t[j] < lo),
                r_above[j].eq(t[j] > hi),
                v_requant[j].eq(Mux(r_below[j], lo, Mux(r_above[j], hi, r_value[j]))),
            ]

        # EXP: s11 → s12: -t (≥ 0).  s12 → s13: z = -t >> 10, p = -(-t mod 1024):
        # u = p + 1998, the shift z and z ≥ 32.  s13 → s14: u² (a multiplier).
        # s14 → s15: l = u² + 2094200.  s15 → s16: e = l >> z (0 when z ≥ 32 or the lane
        # is not valid).
        neg_t = Signal(data.ArrayLayout(unsigned(32), cols))
        u = Signal(data.ArrayLayout(unsigned(11), cols))
        square = Signal(data.ArrayLayout(unsigned(22), cols))
        poly = Signal(data.ArrayLayout(unsigned(_E_BITS), cols))
        z = [Signal(data.ArrayLayout(unsigned(5), cols), name=f"z_s{i}") for i in (12, 13, 14)]
        z_big = [Signal(cols, name=f"z_big_s{i}") for i in (12, 13, 14)]
        e_word = Signal(data.ArrayLayout(unsigned(_E_BITS), cols))
        z_hi_bit = SOFTMAX_Z_BITS + (SOFTMAX_Z_LIMIT - 1).bit_length()
        lanes_e = tags[_STAGE_EXP - 1].lanes
        for j in range(cols):
            m.d.sync += [
                neg_t[j].eq((-t[j])[:32]),
                u[j].eq(SOFTMAX_POLY_B - neg_t[j][:SOFTMAX_Z_BITS]),
                z[0][j].eq(neg_t[j][SOFTMAX_Z_BITS:z_hi_bit]),
                z_big[0][j].eq(neg_t[j][z_hi_bit:] != 0),
                square[j].eq(u[j] * u[j]),
                poly[j].eq(square[j] + SOFTMAX_POLY_C),
                e_word[j].eq(Mux(z_big[2][j] | ~lanes_e[j], 0, poly[j] >> z[2][j])),
            ]
        m.d.sync += [z[1].eq(z[0]), z_big[1].eq(z_big[0]),
                     z[2].eq(z[1]), z_big[2].eq(z_big[1])]

        # The word's sum of e, one level of a pairwise tree per stage; the row sum is
        # updated at stage_sum.
        level = [e_word[j] for j in range(cols)]
        stage = _STAGE_EXP
        while len(level) > 1:
            stage += 1
            reduced = []
            for i in range(0, len(level), 2):
                reg = Signal(_SUM_BITS, name=f"sum_s{stage}_{i // 2}")
                m.d.sync += reg.eq(level[i] + level[i + 1] if i + 1 < len(level)
                                   else level[i])
                reduced.append(reg)
            level = reduced
        word_sum = level[0]
        s_sum = _stage_sum(cols)
        assert stage == s_sum
        with m.If(at(s_sum, _Kind.EXP)):
            m.d.sync += row_sum.eq(Mux(tags[s_sum].first, 0, row_sum) + word_sum)
            with m.If(tags[s_sum].last):
                m.d.sync += sum_done.eq(1)

        # ------------------------------------------------------------ writes
        # The sequencer never lets two taps write in the same cycle.  Each tap's select
        # is registered a stage early; the selected result is registered (the write
        # register) and enters the FIFO one cycle after its stage.
        taps = [
            (_STAGE_ELEMENTWISE, (_Kind.CLAMP, _Kind.ADD_B, _Kind.PACK, _Kind.CONV), v_elem),
            (_STAGE_NORM, (_Kind.NORM,), Cat(Cat(v_norm[j], Const(0, 24))
                                             for j in range(cols))),
            (_stage_rowmax(cols), (_Kind.MAX,), Cat(v_rowmax for _ in range(cols))),
            (_STAGE_REQUANT, (_Kind.REQUANT,), v_requant),
            (_STAGE_EXP, (_Kind.EXP,), Cat(Cat(e_word[j], Const(0, 32 - _E_BITS))
                                           for j in range(cols))),
        ]
        selects = Signal(len(taps))
        m.d.sync += selects.eq(Cat(at(stage - 1, *kinds) & tags[stage - 1].write
                                   for stage, kinds, _ in taps))
        write_reg = Signal(fifo_layout)
        write_en = Signal()
        addr_or, data_or = 0, 0                 # one-hot selects: AND-OR multiplexers
        for k, (stage, _, value) in enumerate(taps):
            addr_or = addr_or | (tags[stage].addr & selects[k].replicate(16))
            data_or = data_or | (Value.cast(value) & selects[k].replicate(cols * 32))
        m.d.sync += [write_en.eq(selects.any()), write_reg.addr.eq(addr_or),
                     write_reg.data.eq(data_or)]
        with m.If(abort):
            m.d.sync += [selects.eq(0), write_en.eq(0)]
        m.d.comb += [fifo.w_en.eq(write_en), fifo.w_data.eq(write_reg)]
        return m
