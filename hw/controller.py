"""Controller of the NPU: decode, validation, dependency tracking, dispatch, errors.

The controller consumes the instruction stream of :class:`InstructionFetch`, checks
every field (docs/ISA.md), and issues each instruction in program order to its unit
(load, store, vector, compute) once it has no scratchpad hazard with the instructions
still in flight in the *other* units::

    instr ─► D ─► O ─► V ─► E ─► C ─► X ─► dispatch ─► load/store/vector/compute .cmd
                                       │ conflicts          │
                                       ▼                    │ done, reads_done, error
                                   scoreboard ◄─────────────┘

* The decode pipeline registers every step, so that no path holds more than one carry
  chain: **D** the fetched item; **O** the multiplier operands; **V** the two products
  a range needs (``outer·inner``, ``k_tiles·m_rows`` and ``k_tiles·rows``,
  ``(count−1)·stride``) and what the ends add to them (addresses, VECTOR row words,
  whose written count is decoded in O);
  **E** the exact (34-bit) range ends, one addition each; **C** every static check as separate
  comparisons, grouped by error class, and the ranges; **X** the error code (the first
  class of ILLEGAL_OPCODE, FEATURE_NOT_BUILT, BAD_FIELD, BAD_SP_ADDRESS, after a fetch
  fault) and the decoded instruction waiting for dispatch.
* **Hazards.** The scoreboard holds the ranges of the instructions in flight: one LOAD
  (the target range it writes), one STORE (the OUT range it reads), one VECTOR (its OUT
  source ranges and destination range) and up to two MATMULs (ACT, WGT/WIDX and PARAM
  read ranges until the unit's ``reads_done``, the OUT write range until ``done``).
  The conflicts of the instruction in X with them (read-after-write, write-after-read,
  write-after-write against the other units) are registered; an instruction issues
  when it has spent a cycle in X, no registered conflict is left and its unit has a
  free scoreboard slot.  Issue rate: one instruction every 3 cycles at best.
* **FENCE** retires when the scoreboard is empty; **END** flushes the fetch, waits
  until the scoreboard is empty, every unit is idle and the fetch is idle, retires and
  pulses ``finish``.
* **retire** pulses once per completed instruction (FENCE and END included), at most
  one per cycle and from the second cycle after the completion (a counter absorbs
  simultaneous completions); ``finish`` and ``fail`` come only after the last pulse.
* **Errors.** A static error or a fetch fault is raised when its instruction reaches
  X (never for items prefetched past END): dispatch stops, the fetch is flushed, the
  instructions before it complete (the scoreboard empties), then ``fail``.  A unit's
  run-time error (``error_valid``) stops dispatch, flushes the fetch, pulses ``abort``
  to every unit (one cycle) and waits until every unit is idle, then ``fail``; a unit
  error also overrides a pending static error (its instruction is older).  ``flush`` is
  held until the end; the fetch and the units are considered idle only from the second
  cycle of ``flush``/``abort`` on.
* **Start.** ``start`` (one cycle) samples ``prog_addr`` the cycle after; a
  ``prog_addr`` that is not 32-byte aligned fails with MISALIGNED, detail 0, pc =
  ``prog_addr``; otherwise ``fetch_start`` pulses with ``fetch_addr = prog_addr``.

Latency: an instruction accepted from ``instr`` in cycle t is in X at t + 6 and can be
issued (``cmd.valid``) from t + 7 on.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.config import NPUConfig
from npugen.golden.precision import MODE_CODES, SPARSE_K_FACTOR, k_per_rows

from .dma_read import fetch_item_layout
from .isa import (INSTRUCTION_BITS, LoadTarget, NPUError, Opcode, VectorOp, load_layout,
                  matmul_layout, store_layout, vector_layout)
from .scratchpad import act_lanes

__all__ = ["Controller", "UnitControlSignature", "UNIT_KINDS", "PROGRAM_ALIGN"]

#: Byte alignment of PROG_ADDR (one instruction).
PROGRAM_ALIGN = INSTRUCTION_BITS // 8

#: Unit kinds and the instruction layout each one takes.
UNIT_KINDS = {"load": load_layout, "store": store_layout, "vector": vector_layout,
              "compute": matmul_layout}

_RANGE_BITS = 17       # scratchpad word ranges [start, end) with end ≤ 65536
_range_layout = data.StructLayout({"start": _RANGE_BITS, "end": _RANGE_BITS})
#: The ranges an instruction occupies (empty ones are [0, 0)).
_ranges_layout = data.StructLayout({name: _range_layout for name in (
    "r_act", "r_wgt", "r_param", "r_out_a", "r_out_b", "w_out", "w_ld")})
#: Exact range ends (34 bits): LOAD/STORE a; MATMUL a ACT, b WGT, c OUT, d PARAM;
#: VECTOR a src, b dst, c src_b, d n_words·cols (the largest n_valid).
_ends_layout = data.StructLayout({name: 34 for name in "abcd"})
#: What the range ends add to the products, and the words a VECTOR writes per row.
_bases_layout = data.StructLayout({**_ends_layout.members, "d_words": 17})
#: Static error classes, reported in this order.
_CLASSES = ("illegal", "feature", "field", "sp")
#: Instruction kinds of the check table.
_KINDS = {"load": Opcode.LOAD, "store": Opcode.STORE, "matmul": Opcode.MATMUL,
          "vector": Opcode.VECTOR}


class _State(enum.Enum, shape=3):
    """States of the controller."""
    IDLE = 0
    START = 1
    RUN = 2
    ENDING = 3
    DRAIN = 4
    ABORT = 5
    FINISHING = 6
    FAILING = 7


class UnitControlSignature(wiring.Signature):
    """The controller's side of one unit's command/status interface.

    All kinds: ``cmd`` (stream of the unit's instruction layout), ``done``, ``busy``
    (inputs) and ``abort`` (output, a one-cycle pulse).  ``load``/``store`` add ``error`` and
    ``error_valid``; ``compute`` adds those and ``error_detail`` (the core's code),
    ``error_index`` (0: the oldest MATMUL in flight, 1: the next) and ``reads_done``.
    """

    def __init__(self, kind):
        if kind not in UNIT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(UNIT_KINDS)}, not {kind!r}")
        self._kind = kind
        members = {"cmd": Out(stream.Signature(UNIT_KINDS[kind])), "done": In(1),
                   "busy": In(1), "abort": Out(1)}
        if kind in ("load", "store", "compute"):
            members.update({"error": In(NPUError), "error_valid": In(1)})
        if kind == "compute":
            members.update({"error_detail": In(8), "error_index": In(1),
                            "reads_done": In(1)})
        super().__init__(members)

    @property
    def kind(self):
        return self._kind

    def __eq__(self, other):
        return isinstance(other, UnitControlSignature) and self.kind == other.kind

    def __repr__(self):
        return f"UnitControlSignature({self.kind!r})"


def _views(bits):
    """The instruction ``bits`` as a LOAD, STORE, MATMUL and VECTOR (no logic)."""
    return tuple(layout(bits) for layout in
                 (load_layout, store_layout, matmul_layout, vector_layout))


def _expands(ve):
    """The VECTOR is a BF16 conversion (two words written per word read)."""
    return (ve.op == VectorOp.TO_BF16) | (ve.op == VectorOp.TO_BF16_RELU)


def _d_words(ve):
    """Words a VECTOR writes per row: 1 for ROWMAX, ``⌈n_words / g⌉`` for the packing
    operations (``g`` = 2 int4, 8 binary), ``2·n_words`` for the BF16 conversions,
    ``n_words`` otherwise."""
    return Mux(ve.op == VectorOp.ROWMAX, 1,
               Mux(ve.op == VectorOp.PACK_INT4, (ve.n_words + 1) >> 1,
                   Mux(ve.op == VectorOp.PACK_BINARY, (ve.n_words + 7) >> 3,
                       Mux(_expands(ve), ve.n_words << 1, ve.n_words))))


def _overlap(a, b):
    """Half-open ranges ``a`` and ``b`` share a word (an empty range shares none)."""
    return (a.start < b.end) & (b.start < a.end)


class Controller(wiring.Component):
    """Decodes, validates and dispatches the program (see the module documentation).

    Ports
    -----
    start : In(1), prog_addr : In(32)
        From the register file: run the program at ``prog_addr``.
    finish, fail, retire : Out(1)
        Pulses to the register file; with ``fail``: ``fail_code`` (NPUError),
        ``fail_detail`` (8) and ``fail_pc`` (32).
    busy : Out(1)
        A program is running (from ``start`` to ``finish``/``fail``).
    fetch_start, fetch_addr (32), fetch_flush : Out ; fetch_idle : In(1)
        Control of the instruction fetch.
    instr : In(stream of ``dma_read.fetch_item_layout()``)
        Fetched instructions (bits, pc, fault).
    load, store, vector, compute : Out(UnitControlSignature)
    """

    def __init__(self, config):
        NPUConfig.check(config)
        self._config = config
        super().__init__({
            "start": In(1),
            "prog_addr": In(32),
            "finish": Out(1),
            "fail": Out(1),
            "fail_code": Out(NPUError),
            "fail_detail": Out(8),
            "fail_pc": Out(32),
            "retire": Out(1),
            "busy": Out(1),
            "fetch_start": Out(1),
            "fetch_addr": Out(32),
            "fetch_flush": Out(1),
            "fetch_idle": In(1),
            "instr": In(stream.Signature(fetch_item_layout())),
            "load": Out(UnitControlSignature("load")),
            "store": Out(UnitControlSignature("store")),
            "vector": Out(UnitControlSignature("vector")),
            "compute": Out(UnitControlSignature("compute")),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        units = [self.load, self.store, self.vector, self.compute]

        run = Signal()           # the pipeline may move and dispatch
        kill = Signal()          # empty the pipeline
        unit_error = Signal()    # a unit reports a run-time error this cycle

        # Pipeline: D (fetched item) → O (+ multiplier operands) → V (+ products) → E (+
        # range ends) → C (+ error classes, ranges) → X (decoded, waiting for dispatch).
        # A stage takes the item of the one before when it is empty or passes its own on
        # in the same cycle; X is refilled only the cycle after it empties.
        item_layout = fetch_item_layout()
        d_valid, o_valid, v_valid, e_valid, c_valid = (Signal(name=f"{n}_valid")
                                                       for n in "dovec")
        d_item, o_item, v_item, e_item, c_item = (Signal(item_layout, name=f"{n}_item")
                                                  for n in "dovec")
        o_ops = [Signal(16, name=f"o_mul_{n}") for n in ("a1", "b1", "a2", "b2")]
        v_p1, v_p2 = Signal(32), Signal(32)
        e_ends = Signal(_ends_layout)
        c_ranges = Signal(_ranges_layout)
        c_ld_target = Signal(2)
        x_valid = Signal()
        x_settled = Signal()     # X held the same instruction last cycle
        x_bits = Signal(INSTRUCTION_BITS)
        x_pc = Signal(32)
        x_op = Signal(8)
        x_err = Signal(NPUError)
        x_detail = Signal(8)
        x = Signal(_ranges_layout)
        x_ld_target = Signal(LoadTarget)
        x_leave = Signal()       # X is consumed this cycle
        x_r_act, x_r_wgt, x_r_param = x.r_act, x.r_wgt, x.r_param
        x_r_out_a, x_r_out_b, x_w_out, x_w_ld = x.r_out_a, x.r_out_b, x.w_out, x.w_ld

        c_to_x = c_valid & ~x_valid
        e_to_c = e_valid & (~c_valid | c_to_x)
        v_to_e = v_valid & (~e_valid | e_to_c)
        o_to_v = o_valid & (~v_valid | v_to_e)
        d_to_o = d_valid & (~o_valid | o_to_v)
        m.d.comb += self.instr.ready.eq(Mux(run, ~d_valid | d_to_o, 1))

        def advance(valid, take, item, give, source):
            with m.If(take):
                m.d.sync += [valid.eq(1), item.eq(source)]
            with m.Elif(give):
                m.d.sync += valid.eq(0)

        advance(d_valid, run & self.instr.valid & self.instr.ready, d_item, d_to_o,
                self.instr.payload)
        advance(o_valid, d_to_o, o_item, o_to_v, d_item)
        advance(v_valid, o_to_v, v_item, v_to_e, o_item)
        advance(e_valid, v_to_e, e_item, e_to_c, v_item)
        advance(c_valid, e_to_c, c_item, c_to_x, e_item)

        # D → O → V: the products of the range extents.
        d_bits = d_item.bits
        d_op = d_bits[0:8]
        d_w0, d_w1 = d_bits[0:64], d_bits[64:128]
        count_m1 = Mux(d_w0[16:32] == 0, 0, d_w0[16:32] - 1)          # VECTOR count − 1
        a1, b1, a2, b2 = (Signal(16, name=n) for n in ("mul_a1", "mul_b1", "mul_a2", "mul_b2"))
        # (If chains rather than Switch: the Verilog has no incomplete case statements.)
        with m.If((d_op == Opcode.LOAD) | (d_op == Opcode.STORE)):
            m.d.comb += [a1.eq(d_w1[16:32]), b1.eq(d_w1[0:16])]
        with m.Elif(d_op == Opcode.MATMUL):
            m.d.comb += [a1.eq(d_w0[32:48]), b1.eq(d_w0[16:32]),
                         a2.eq(d_w0[32:48]), b2.eq(cfg.rows)]
        with m.Elif(d_op == Opcode.VECTOR):
            m.d.comb += [a1.eq(count_m1), b1.eq(d_w1[32:48]),
                         a2.eq(count_m1), b2.eq(d_w1[48:64])]
        o_d_words = Signal(17)
        with m.If(d_to_o):
            m.d.sync += [op.eq(value) for op, value in zip(o_ops, (a1, b1, a2, b2))]
            m.d.sync += o_d_words.eq(_d_words(_views(d_bits)[3]))
        v_base = Signal(_bases_layout)    # what the range ends add to the products
        e_d_words = Signal(17)
        with m.If(o_to_v):
            m.d.sync += [v_p1.eq(o_ops[0] * o_ops[1]), v_p2.eq(o_ops[2] * o_ops[3]),
                         v_base.eq(self._end_bases(m, o_item.bits, o_d_words))]

        # V → E: range ends;  E → C: checks by class, ranges;  C → X: the error code.
        ends = self._ends(m, v_item.bits, v_base, v_p1, v_p2)
        with m.If(v_to_e):
            m.d.sync += [e_ends.eq(ends), e_d_words.eq(v_base.d_words)]
        checks, ranges, ld_target_c = self._checks(m, e_item.bits, e_ends, e_d_words)
        e_op = e_item.bits[0:8]
        e_kind = {kind: e_op == op for kind, op in _KINDS.items()}
        e_kind["other"] = ~Cat(*e_kind.values(), e_op == Opcode.FENCE, e_op == Opcode.END).any()
        c_kind = {kind: Signal(name=f"c_is_{kind}") for kind in e_kind}
        c_checks = {key: Signal(len(terms), name=f"c_{key[0]}_{key[1]}")
                    for key, terms in checks.items()}
        with m.If(e_to_c):
            m.d.sync += [c_ranges.eq(ranges), c_ld_target.eq(ld_target_c)]
            m.d.sync += [c_kind[kind].eq(value) for kind, value in e_kind.items()]
            m.d.sync += [c_checks[key].eq(Cat(terms)) for key, terms in checks.items()]
        classes = {cls: Cat(c_kind[kind] & c_checks[kind, cls].any()
                            for kind in _KINDS if (kind, cls) in c_checks).any()
                   for cls in _CLASSES}
        classes["illegal"] = classes["illegal"] | c_kind["other"]
        err = Signal(NPUError)
        with m.If(c_item.fault != NPUError.NONE):
            m.d.comb += err.eq(c_item.fault)
        with m.Elif(classes["illegal"]):
            m.d.comb += err.eq(NPUError.ILLEGAL_OPCODE)
        with m.Elif(classes["feature"]):
            m.d.comb += err.eq(NPUError.FEATURE_NOT_BUILT)
        with m.Elif(classes["field"]):
            m.d.comb += err.eq(NPUError.BAD_FIELD)
        with m.Elif(classes["sp"]):
            m.d.comb += err.eq(NPUError.BAD_SP_ADDRESS)
        with m.If(c_to_x):
            m.d.sync += [x_valid.eq(1), x_bits.eq(c_item.bits), x_pc.eq(c_item.pc),
                         x_op.eq(c_item.bits[0:8]), x_err.eq(err), x.eq(c_ranges),
                         x_detail.eq(Mux(c_item.fault != NPUError.NONE, 0, c_item.bits[0:8])),
                         x_ld_target.eq(c_ld_target)]
        with m.Elif(x_leave):
            m.d.sync += x_valid.eq(0)
        m.d.sync += x_settled.eq(x_valid & ~x_leave & ~kill)
        with m.If(kill):
            m.d.sync += [d_valid.eq(0), o_valid.eq(0), v_valid.eq(0), e_valid.eq(0),
                         c_valid.eq(0), x_valid.eq(0)]

        # ------------------------------------------------------------ scoreboard
        ld_busy, st_busy, ve_busy = Signal(), Signal(), Signal()
        ld_target = Signal(LoadTarget)
        ld_range, st_range = Signal(_range_layout), Signal(_range_layout)
        ve_ra, ve_rb, ve_w = (Signal(_range_layout, name=n) for n in ("ve_ra", "ve_rb", "ve_w"))
        ld_pc, st_pc = Signal(32), Signal(32)
        cp_valid = [Signal(name=f"cp_valid_{i}") for i in range(2)]
        cp_reads = [Signal(name=f"cp_reads_{i}") for i in range(2)]
        cp_r_act = [Signal(_range_layout, name=f"cp_r_act_{i}") for i in range(2)]
        cp_r_wgt = [Signal(_range_layout, name=f"cp_r_wgt_{i}") for i in range(2)]
        cp_r_param = [Signal(_range_layout, name=f"cp_r_param_{i}") for i in range(2)]
        cp_w_out = [Signal(_range_layout, name=f"cp_w_out_{i}") for i in range(2)]
        cp_pc = [Signal(32, name=f"cp_pc_{i}") for i in range(2)]
        cp_wptr, cp_rptr, cp_dptr = Signal(), Signal(), Signal()
        sb_empty = ~(ld_busy | st_busy | ve_busy | cp_valid[0] | cp_valid[1])
        units_idle = ~Cat(unit.busy for unit in units).any()

        def by_target(target, act, wgt, param, other):
            """``other`` overlaps the range of the scratchpad ``target`` names (each
            comparison made in parallel, then selected)."""
            is_wgt = (target == LoadTarget.WGT) | (target == LoadTarget.WIDX)
            return (((target == LoadTarget.ACT) & _overlap(act, other)) |
                    (is_wgt & _overlap(wgt, other)) |
                    ((target == LoadTarget.PARAM) & _overlap(param, other)))

        # Hazard of X against the scoreboard: each conflict registered, then ORed.
        hazard = Signal()
        is_matmul = x_op == Opcode.MATMUL
        conflicts = [
            ld_busy & by_target(ld_target, x_r_act, x_r_wgt, x_r_param, ld_range),  # RAW
            st_busy & _overlap(x_w_out, st_range),                           # WAR on STORE
            ve_busy & _overlap(x_r_out_a, ve_w), ve_busy & _overlap(x_r_out_b, ve_w),  # RAW
            ve_busy & _overlap(x_w_out, ve_ra), ve_busy & _overlap(x_w_out, ve_rb),    # WAR
            ve_busy & _overlap(x_w_out, ve_w),                                         # WAW
        ]
        for i in range(2):
            other_unit = cp_valid[i] & ~is_matmul
            conflicts += [
                other_unit & _overlap(x_r_out_a, cp_w_out[i]),                       # RAW
                other_unit & _overlap(x_r_out_b, cp_w_out[i]),
                other_unit & _overlap(x_w_out, cp_w_out[i]),                         # WAW
                other_unit & cp_reads[i] & by_target(x_ld_target, cp_r_act[i],      # WAR
                                                     cp_r_wgt[i], cp_r_param[i], x_w_ld),
            ]
        conflict = Signal(len(conflicts))
        m.d.sync += conflict.eq(Cat(conflicts))
        m.d.comb += hazard.eq(conflict.any())

        # ------------------------------------------------------------ dispatch
        can = Signal()
        m.d.comb += can.eq(run & ~unit_error & x_valid & x_settled & (x_err == NPUError.NONE) & ~hazard)
        slot_free = {Opcode.LOAD: ~ld_busy, Opcode.STORE: ~st_busy, Opcode.VECTOR: ~ve_busy,
                     Opcode.MATMUL: ~(cp_valid[0] & cp_valid[1])}
        fired = {}
        for op, unit in zip((Opcode.LOAD, Opcode.STORE, Opcode.VECTOR, Opcode.MATMUL), units):
            m.d.comb += [unit.cmd.valid.eq(can & (x_op == op) & slot_free[op]),
                         unit.cmd.payload.eq(x_bits)]
            fired[op] = unit.cmd.valid & unit.cmd.ready
        fence_done = can & (x_op == Opcode.FENCE) & sb_empty
        m.d.comb += x_leave.eq(Cat(fired.values()).any() | fence_done)

        with m.If(fired[Opcode.LOAD]):
            m.d.sync += [ld_busy.eq(1), ld_target.eq(x_ld_target), ld_range.eq(x_w_ld),
                         ld_pc.eq(x_pc)]
        with m.Elif(self.load.done):
            m.d.sync += ld_busy.eq(0)
        with m.If(fired[Opcode.STORE]):
            m.d.sync += [st_busy.eq(1), st_range.eq(x_r_out_a), st_pc.eq(x_pc)]
        with m.Elif(self.store.done):
            m.d.sync += st_busy.eq(0)
        with m.If(fired[Opcode.VECTOR]):
            m.d.sync += [ve_busy.eq(1), ve_ra.eq(x_r_out_a), ve_rb.eq(x_r_out_b),
                         ve_w.eq(x_w_out)]
        with m.Elif(self.vector.done):
            m.d.sync += ve_busy.eq(0)
        for i in range(2):
            with m.If(fired[Opcode.MATMUL] & (cp_wptr == i)):
                m.d.sync += [cp_valid[i].eq(1), cp_reads[i].eq(1), cp_r_act[i].eq(x_r_act),
                             cp_r_wgt[i].eq(x_r_wgt), cp_r_param[i].eq(x_r_param),
                             cp_w_out[i].eq(x_w_out), cp_pc[i].eq(x_pc)]
            with m.If(self.compute.reads_done & (cp_rptr == i)):
                m.d.sync += cp_reads[i].eq(0)
            with m.If(self.compute.done & (cp_dptr == i)):
                m.d.sync += [cp_valid[i].eq(0), cp_reads[i].eq(0)]
        with m.If(fired[Opcode.MATMUL]):
            m.d.sync += cp_wptr.eq(~cp_wptr)
        with m.If(self.compute.reads_done):
            m.d.sync += cp_rptr.eq(~cp_rptr)
        with m.If(self.compute.done):
            m.d.sync += cp_dptr.eq(~cp_dptr)

        # ------------------------------------------------------------ retire
        # Completions are registered, then counted; `retire` pulses while any is pending.
        pending = Signal(range(16))
        end_retire = Signal()
        completions = [unit.done for unit in units] + [fence_done, end_retire]
        completed = Signal(len(completions))
        m.d.sync += completed.eq(Cat(completions))
        total = sum(completed[i].as_unsigned() for i in range(len(completions)))
        m.d.comb += self.retire.eq(pending != 0)
        m.d.sync += pending.eq(pending + total - self.retire)
        retired_all = (pending == 0) & (completed == 0)

        # ------------------------------------------------------------ errors
        err_code = Signal(NPUError)
        err_detail = Signal(8)
        err_pc = Signal(32)
        m.d.comb += [self.fail_code.eq(err_code), self.fail_detail.eq(err_detail),
                     self.fail_pc.eq(err_pc)]
        u_code, u_detail, u_pc = Signal(NPUError), Signal(8), Signal(32)
        m.d.comb += unit_error.eq(self.load.error_valid | self.store.error_valid |
                                  self.compute.error_valid)
        with m.If(self.compute.error_valid):
            m.d.comb += [u_code.eq(self.compute.error), u_detail.eq(self.compute.error_detail),
                         u_pc.eq(Mux(cp_dptr ^ self.compute.error_index, cp_pc[1], cp_pc[0]))]
        with m.Elif(self.load.error_valid):
            m.d.comb += [u_code.eq(self.load.error), u_detail.eq(Opcode.LOAD.value),
                         u_pc.eq(ld_pc)]
        with m.Else():
            m.d.comb += [u_code.eq(self.store.error), u_detail.eq(Opcode.STORE.value),
                         u_pc.eq(st_pc)]

        # Cycles spent in the current stopping state (saturating at 2).
        settle = Signal(range(3))
        settled = (settle == 2) & self.fetch_idle
        record_unit_error = [err_code.eq(u_code), err_detail.eq(u_detail), err_pc.eq(u_pc),
                             settle.eq(0)]
        with m.If(settle != 2):
            m.d.sync += settle.eq(settle + 1)

        state = Signal(_State)
        with m.If(state == _State.IDLE):
            with m.If(self.start):
                m.d.sync += err_code.eq(NPUError.NONE)
                m.d.sync += state.eq(_State.START)
        with m.Elif(state == _State.START):
            m.d.comb += self.busy.eq(1)
            with m.If(self.prog_addr[:PROGRAM_ALIGN.bit_length() - 1] != 0):
                m.d.sync += [err_code.eq(NPUError.MISALIGNED), err_detail.eq(0),
                             err_pc.eq(self.prog_addr)]
                m.d.sync += state.eq(_State.FAILING)
            with m.Else():
                m.d.comb += [self.fetch_start.eq(1), self.fetch_addr.eq(self.prog_addr)]
                m.d.sync += state.eq(_State.RUN)
        with m.Elif(state == _State.RUN):
            m.d.comb += [self.busy.eq(1), run.eq(1)]
            with m.If(unit_error):
                m.d.sync += record_unit_error
                m.d.comb += kill.eq(1)
                m.d.sync += state.eq(_State.ABORT)
            with m.Elif(x_valid & (x_err != NPUError.NONE)):
                m.d.sync += [err_code.eq(x_err), err_detail.eq(x_detail),
                             err_pc.eq(x_pc), settle.eq(0)]
                m.d.comb += kill.eq(1)
                m.d.sync += state.eq(_State.DRAIN)
            with m.Elif(x_valid & (x_op == Opcode.END)):
                m.d.sync += settle.eq(0)
                m.d.comb += kill.eq(1)
                m.d.sync += state.eq(_State.ENDING)
        with m.Elif((state == _State.ENDING) | (state == _State.DRAIN)):
            # END or a static error: the instructions before it complete, then END
            # retires and the program finishes, or it fails.
            ending = state == _State.ENDING
            m.d.comb += [self.busy.eq(1), self.fetch_flush.eq(1)]
            with m.If(unit_error):
                m.d.sync += record_unit_error
                m.d.sync += state.eq(_State.ABORT)
            with m.Elif(settled & sb_empty & units_idle):
                m.d.comb += end_retire.eq(ending)
                m.d.sync += state.eq(Mux(ending, _State.FINISHING, _State.FAILING))
        with m.Elif(state == _State.ABORT):
            m.d.comb += [self.busy.eq(1), self.fetch_flush.eq(1)]
            # `abort` is a one-cycle pulse (the first cycle of ABORT); the units then
            # drain what is on the bus and report idle.
            m.d.comb += [unit.abort.eq(settle == 0) for unit in units]
            with m.If(settled & units_idle):
                m.d.sync += [ld_busy.eq(0), st_busy.eq(0), ve_busy.eq(0),
                             cp_valid[0].eq(0), cp_valid[1].eq(0), cp_reads[0].eq(0),
                             cp_reads[1].eq(0), cp_wptr.eq(0), cp_rptr.eq(0),
                             cp_dptr.eq(0)]
                m.d.sync += state.eq(_State.FAILING)
        with m.Elif(state == _State.FINISHING):
            m.d.comb += self.busy.eq(1)
            with m.If(retired_all):
                m.d.comb += self.finish.eq(1)
                m.d.sync += state.eq(_State.IDLE)
        with m.Elif(state == _State.FAILING):
            m.d.comb += self.busy.eq(1)
            with m.If(retired_all):
                m.d.comb += self.fail.eq(1)
                m.d.sync += state.eq(_State.IDLE)
        return m

    # ---------------------------------------------------------------- static checks

    def _end_bases(self, m, bits, d_words):
        """What the range ends of instruction ``bits`` add to the products (computed a
        stage before them, so that an end is one addition): the scratchpad addresses,
        and for VECTOR the words of a row read or written (``d_words`` written)."""
        ld, st, mm, ve = _views(bits)
        base = Signal(_bases_layout)
        op = bits[0:8]
        with m.If(op == Opcode.LOAD):
            m.d.comb += base.a.eq(ld.sp_addr)
        with m.Elif(op == Opcode.STORE):
            m.d.comb += base.a.eq(st.sp_addr)
        with m.Elif(op == Opcode.MATMUL):
            m.d.comb += [base.a.eq(mm.act_addr), base.b.eq(mm.wgt_addr),
                         base.c.eq(mm.out_addr + mm.m_rows), base.d.eq(mm.param_addr + 3)]
        with m.Elif(op == Opcode.VECTOR):
            m.d.comb += [base.a.eq(ve.src + ve.n_words), base.b.eq(ve.dst + d_words),
                         base.d_words.eq(d_words),
                         base.c.eq(ve.src_b + ve.n_words),
                         base.d.eq(ve.n_words * self._config.cols)]
        return base

    def _ends(self, m, bits, base, p1, p2):
        """The exact ends of the ranges of instruction ``bits`` (``base`` from
        :meth:`_end_bases`, products ``p1``, ``p2``)."""
        ends = Signal(_ends_layout)
        op = bits[0:8]
        with m.If((op == Opcode.LOAD) | (op == Opcode.STORE)):
            m.d.comb += ends.a.eq(base.a + p1)
        with m.Elif(op == Opcode.MATMUL):
            m.d.comb += [ends.a.eq(base.a + p1), ends.b.eq(base.b + p2),
                         ends.c.eq(base.c), ends.d.eq(base.d)]
        with m.Elif(op == Opcode.VECTOR):
            m.d.comb += [ends.a.eq(base.a + p1), ends.b.eq(base.b + p2),
                         ends.c.eq(base.c + p1), ends.d.eq(base.d)]
        return ends

    def _checks(self, m, bits, ends, d_words):
        """The static checks of instruction ``bits`` (range ``ends``, VECTOR ``d_words``):
        ``{(kind, class): [conditions]}``
        (each condition a compare or two, for the next stage to OR), its scratchpad ranges
        (``_ranges_layout``, 17-bit: used only when it is valid) and its LOAD target."""
        cfg = self._config
        C = cfg.cols
        ld, st, mm, ve = _views(bits)
        checks = {}

        # LOAD
        target = ld.target
        is_act, is_param = target == LoadTarget.ACT, target == LoadTarget.PARAM
        is_wgt = (target == LoadTarget.WGT) | (target == LoadTarget.WIDX)
        checks["load", "illegal"] = [target >= 4]
        checks["load", "feature"] = [(target == LoadTarget.WIDX) & (not cfg.sparse_2_4)]
        checks["load", "field"] = [
            ld.inner_count == 0, ld.outer_count == 0, ld.lanes == 0,
            is_act & (ld.lanes > act_lanes(cfg)), ~is_act & (ld.lanes > C)]
        checks["load", "sp"] = [
            is_act & (ends.a > cfg.act_sp_depth), is_wgt & (ends.a > cfg.wgt_sp_depth),
            is_param & (ends.a > cfg.param_sp_depth)]

        # STORE
        checks["store", "field"] = [
            (st.elem_bytes != 1) & (st.elem_bytes != 4), st.inner_count == 0,
            st.outer_count == 0, st.lanes == 0, st.lanes > C]
        checks["store", "sp"] = [ends.a > cfg.out_sp_depth]

        # MATMUL
        mode, sparse = mm.mode, mm.sparse
        feature = [mode == code for name, code in MODE_CODES.items() if name not in cfg.modes]
        if cfg.sparse_2_4:
            feature.append(sparse & (mode != MODE_CODES["int8"]))
        else:
            feature.append(sparse)
        checks["matmul", "feature"] = feature
        # k_valid_last against the K of a tile of its mode (compared with each constant).
        k_over = [~sparse & (mode == code) & (mm.k_valid_last > k_per_rows(cfg.rows, name))
                  for name, code in MODE_CODES.items()]
        if cfg.sparse_2_4:
            k_over.append(sparse & (mm.k_valid_last > cfg.rows * SPARSE_K_FACTOR))
        # bf16 sums leave as FP32 bit patterns: only through the raw path.
        checks["matmul", "field"] = [
            (mode == MODE_CODES["bf16"]) & ~mm.raw, mm.m_rows == 0, mm.m_rows > cfg.acc_depth, mm.k_tiles == 0,
            mm.k_valid_last == 0, *k_over, mm.out_min > mm.out_max]
        checks["matmul", "sp"] = [
            ends.a > cfg.act_sp_depth, ends.b > cfg.wgt_sp_depth, ends.c > cfg.out_sp_depth,
            ends.d > cfg.param_sp_depth]

        # VECTOR
        vop = ve.op
        uses_b = (vop == VectorOp.ADD) | (vop == VectorOp.SUB) | (vop == VectorOp.MAX)
        src_end, dst_end, srcb_end = ends.a, ends.b, ends.c
        # A destination may overlap a source only when identical to it (same start and
        # stride), and then its rows must not overlap each other (stride < d_words); a
        # BF16 conversion's destination never overlaps its source.
        many = ve.count > 1
        rows_overlap = many & (ve.src_stride < d_words)
        same_stride = ve.dst_stride == ve.src_stride
        same_a = (ve.dst == ve.src) & same_stride & ~_expands(ve)
        same_b = (ve.dst == ve.src_b) & same_stride
        checks["vector", "illegal"] = [vop >= len(VectorOp)]
        # The BF16 conversions exist only with the bf16 MAC mode built.
        checks["vector", "feature"] = [_expands(ve) & ("bf16" not in cfg.modes)]
        checks["vector", "field"] = [
            ve.count == 0, ve.n_words == 0, ve.n_valid == 0, ve.n_valid > ends.d,
            ve.multiplier < 0, ve.shift < -31, ve.shift > 30, ve.lo > ve.hi,
            same_a & rows_overlap, ~same_a & (ve.dst < src_end) & (ve.src < dst_end),
            uses_b & same_b & rows_overlap,
            uses_b & ~same_b & (ve.dst < srcb_end) & (ve.src_b < dst_end)]
        checks["vector", "sp"] = [
            src_end > cfg.out_sp_depth, uses_b & (srcb_end > cfg.out_sp_depth),
            dst_end > cfg.out_sp_depth]

        ranges = Signal(_ranges_layout)

        def span(name, start, end):
            m.d.comb += [ranges[name].start.eq(start), ranges[name].end.eq(end)]

        op = bits[0:8]
        with m.If(op == Opcode.LOAD):
            span("w_ld", ld.sp_addr, ends.a)
        with m.Elif(op == Opcode.STORE):
            span("r_out_a", st.sp_addr, ends.a)
        with m.Elif(op == Opcode.MATMUL):
            span("r_act", mm.act_addr, ends.a)
            span("r_wgt", mm.wgt_addr, ends.b)
            span("r_param", mm.param_addr, ends.d)
            span("w_out", mm.out_addr, ends.c)
        with m.Elif(op == Opcode.VECTOR):
            span("r_out_a", ve.src, src_end)
            span("w_out", ve.dst, dst_end)
            with m.If(uses_b):
                span("r_out_b", ve.src_b, srcb_end)
        return checks, ranges, target[:2]
