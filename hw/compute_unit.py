"""Compute unit: executes MATMUL instructions (docs/ISA.md) on the GEMM core.

A MATMUL of ``k_tiles`` K tiles becomes ``k_tiles`` tile commands of the
:class:`~npugen.hw.gemm_core.GemmCore`; four sequencers feed the core from the
scratchpads independently of each other::

    cmd ──► 2 instruction slots ─┬─► tile sequencer ──────────────────────► core.cmd
                                 ├─► weight sequencer: WGT(+WIDX)[wgt_addr + i] ─► FIFO ─► core.weight
                                 ├─► act sequencer:    ACT[act_addr + i] ──────► FIFO ─► core.act
                                 ├─► quant sequencer:  PARAM[param_addr + 0..2] ──────► core.quant
                                 └─► result writer:    core.result ──► OUT[out_addr + m]

* The weight and activation words of a MATMUL are consecutive scratchpad words (weight
  row r of K tile kt is word ``kt·rows + r``, activation row m of K tile kt is word
  ``kt·m_rows + m``), read one per cycle through 3-deep FIFOs whose read decisions use
  only registers.  The act sequencer gives the core a row every cycle; the weight
  sequencer runs ahead (into the next MATMUL too), so weights shift into the core's
  shadow registers while the previous tile computes.
* The quant sequencer reads bias, multiplier and shift (three PARAM words) into a
  register and offers the core's ``quant`` beat; a shift lane outside [-32, 31]
  saturates to -32 or 31, so an out-of-range shift still gives the core's ``BAD_SHIFT``.
* Two MATMULs may be in flight: the next one is accepted (and its operands fed) while
  the results of the previous one still drain.  The two slots double as the queue of
  ``(out_addr, m_rows)`` of the result writer.

Status: ``reads_done`` pulses when the oldest MATMUL whose reads were not yet reported
has read its last ACT, WGT/WIDX and PARAM word (1 cycle after the last word was
captured); ``done`` pulses 1 cycle after its last result row was written to OUT.
``reads_done`` of a MATMUL always comes before its ``done``.

Errors: a core error (``CoreError``) pulses ``error_valid`` with ``error = CORE``,
``error_detail`` = the core's code and ``error_index`` = the age of the failing MATMUL
(0: the oldest whose ``done`` was not pulsed before this cycle, 1: the one after it:
the controller's view of the MATMULs in flight); in that same cycle the unit clears
itself, so it is idle from the next cycle on.  ``abort`` clears the unit the same way
(a local reset of the core, the FIFOs and the sequencers; no global reset needed).

Latency: a MATMUL accepted in cycle t issues its first scratchpad reads in cycle t + 1;
with the core idle its first activation row enters the core ``rows + 3`` cycles after
acceptance (the first weight tile shifts in first), its last result row is written to
OUT ``golden.perf_model.result_latency`` cycles after its last activation row entered
the core, and ``done`` pulses the cycle after: accept to ``done`` takes
``m_rows·k_tiles + rows + 3 + result_latency`` cycles (tiles of ``m_rows ≥ 2·rows + 1``).
A MATMUL's last tile starts 6 cycles after its acceptance, and 6 cycles after the
previous MATMUL's last tile, at the earliest: its requantization beat is read (4 cycles,
once the previous beat is taken) and checked by the core a cycle after it is offered.
"""

import re

from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from npugen.golden.config import NPUConfig
from npugen.golden.precision import MODE_CODES, SPARSE_K_FACTOR, k_per_rows

from .gemm_core import CoreError, GemmCore
from .isa import NPUError, matmul_layout
from .layouts import (SHIFT_BITS, activation_row_layout, tile_command_layout,
                      weight_row_layout)
from .pe import ProcessingElement
from .scratchpad import (ScratchpadReadSignature, ScratchpadWriteSignature, out_word_layout,
                         param_word_layout)

__all__ = ["ComputeUnit", "OPERAND_FIFO_DEPTH", "check_pe_module", "pe_component",
           "PEModuleMixin"]

#: Depth of the activation and weight FIFOs between the scratchpads and the core
#: (a read every cycle needs one word in the FIFO and one in the read port).
OPERAND_FIFO_DEPTH = 3

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def check_pe_module(pe_module):
    """``pe_module`` if it is ``None`` or a Verilog identifier; an error naming it otherwise."""
    if pe_module is None:
        return None
    if not isinstance(pe_module, str):
        raise TypeError(f"pe_module must be None or a Verilog module name, not {pe_module!r}")
    if not _IDENTIFIER.fullmatch(pe_module):
        raise ValueError(f"pe_module must be None or a Verilog module name, not {pe_module!r}")
    return pe_module


def pe_component(config):
    """The processing element of the GEMM core of ``config`` (as ``GemmCore.pe_component``),
    to generate once as the ``pe_module`` Verilog module."""
    return ProcessingElement(act_bits=config.lane_bits + 1, weight_bits=config.lane_bits,
                             acc_bits=config.acc_bits, modes=config.modes,
                             sparse=config.sparse_2_4)


class PEModuleMixin:
    """``config``, ``pe_module`` and :meth:`pe_component` of a component around a GEMM
    core whose PEs may be instantiated as the Verilog module ``pe_module``
    (:class:`ComputeUnit`, :class:`~npugen.hw.npu.NPU`)."""

    def _set_config(self, config, pe_module):
        """Checks and keeps the constructor's ``config`` and ``pe_module``."""
        NPUConfig.check(config)
        self._config = config
        self._pe_module = check_pe_module(pe_module)

    @property
    def config(self):
        return self._config

    @property
    def pe_module(self):
        return self._pe_module

    def pe_component(self):
        """The PE to generate as the ``pe_module`` Verilog module (the GemmCore's PE)."""
        return pe_component(self._config)


class ComputeUnit(PEModuleMixin, wiring.Component):
    """MATMUL instructions on one GEMM core (see the module documentation).

    Parameters
    ----------
    config : NPUConfig
    pe_module : str or None
        Passed to :class:`GemmCore`: the Verilog module name every PE is instantiated as.

    Ports
    -----
    cmd : In(stream of ``matmul_layout``)
        Validated MATMUL instructions.
    act_rd, wgt_rd, param_rd : Out(ScratchpadReadSignature)
        ACT, WGT (+WIDX) and PARAM reads (data the cycle after ``en``).
    out_wr : Out(ScratchpadWriteSignature)
        Result rows to OUT.
    done, reads_done, busy : Out(1)
    abort : In(1)
    error : Out(NPUError), error_detail : Out(8), error_index : Out(1), error_valid : Out(1)
    """

    def __init__(self, config, *, pe_module=None):
        self._set_config(config, pe_module)
        super().__init__({
            "cmd": In(stream.Signature(matmul_layout)),
            "act_rd": Out(ScratchpadReadSignature(activation_row_layout(config))),
            "wgt_rd": Out(ScratchpadReadSignature(weight_row_layout(config))),
            "param_rd": Out(ScratchpadReadSignature(param_word_layout(config))),
            "out_wr": Out(ScratchpadWriteSignature(out_word_layout(config))),
            "done": Out(1),
            "reads_done": Out(1),
            "busy": Out(1),
            "abort": In(1),
            "error": Out(NPUError),
            "error_detail": Out(8),
            "error_index": Out(1),
            "error_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R = cfg.rows

        # Everything stateful lives in `dp`, which `clear` (abort or a core error) resets.
        clear = Signal()
        dp = Module()
        m.submodules.datapath = ResetInserter(clear)(dp)
        dp.submodules.core = core = GemmCore(cfg, pe_module=self._pe_module)

        # ------------------------------------------------------------ instruction slots
        # The slots and the quant registers hold data only (no reset: the clear of the
        # unit need not reach them; each is written before it is used).
        slots = [Signal(matmul_layout, name=f"slot_{i}", reset_less=True) for i in range(2)]
        inflight = Signal(range(3))
        head = Signal()                    # slot of the oldest MATMUL in flight

        # Beside each slot, the index of its MATMUL's last row and last K tile: the
        # sequencers compare their counters with these (no subtraction before a compare).
        last_layout = data.StructLayout({name: matmul_layout[name].shape
                                         for name in ("m_rows", "k_tiles")})
        lasts = [Signal(last_layout, name=f"slot_last_{i}", reset_less=True) for i in range(2)]

        def field(ptr, name):
            return Mux(ptr, getattr(slots[1], name), getattr(slots[0], name))

        def last(ptr, name):
            """``field(ptr, name) − 1`` (``name``: ``m_rows`` or ``k_tiles``)."""
            return Mux(ptr, lasts[1][name], lasts[0][name])

        accept = Signal()
        m.d.comb += [self.cmd.ready.eq((inflight != 2) & ~clear),
                     accept.eq(self.cmd.valid & self.cmd.ready)]
        new_slot = head ^ (inflight == 1)
        for i in range(2):
            with dp.If(accept & (new_slot == i)):
                dp.d.sync += [slots[i].eq(self.cmd.payload),
                              lasts[i].m_rows.eq(self.cmd.payload.m_rows - 1),
                              lasts[i].k_tiles.eq(self.cmd.payload.k_tiles - 1)]

        def pending_counter(name, finish):
            """MATMULs accepted and not yet finished by one sequencer."""
            count = Signal(range(3), name=f"{name}_pending")
            dp.d.sync += count.eq(count + accept - finish)
            return count

        def done_counter(name, finish, report):
            """MATMULs a read sequencer has finished and `reads_done` has not reported."""
            count = Signal(range(3), name=f"{name}_finished")
            dp.d.sync += count.eq(count + finish - report)
            return count

        # ------------------------------------------------------------ tile sequencer
        t_ptr = Signal()
        t_kt = Signal(16)
        t_finish = Signal()
        t_pending = pending_counter("tile", t_finish)
        err_slot = Signal()                # slot of the last tile command the core took
        t_last = t_kt == last(t_ptr, "k_tiles")
        mode = field(t_ptr, "mode")
        sparse = field(t_ptr, "sparse")
        k_tile = Signal(range(R * 8 + 1))
        dp.d.comb += k_tile.eq(R)
        for name, code in MODE_CODES.items():
            if k_per_rows(R, name) != R:
                with dp.If(mode == code):
                    dp.d.comb += k_tile.eq(k_per_rows(R, name))
        if cfg.sparse_2_4:
            with dp.If(sparse & (mode == MODE_CODES["int8"])):
                dp.d.comb += k_tile.eq(R * SPARSE_K_FACTOR)
        # The tile command goes through a register (refilled the cycle after the core
        # takes it: a tile lasts at least 2·rows + 1 cycles, the core has one command of
        # look-ahead).
        command = Signal(tile_command_layout(cfg))
        command_valid = Signal()
        command_slot = Signal()
        load_command = (t_pending != 0) & ~command_valid
        with dp.If(load_command):
            dp.d.sync += [
                command_valid.eq(1),
                command_slot.eq(t_ptr),
                command.m_rows.eq(field(t_ptr, "m_rows")),
                command.first.eq(t_kt == 0),
                command.last.eq(t_last),
                command.a_zero_point.eq(field(t_ptr, "a_zero_point")),
                command.mode.eq(mode),
                command.sparse.eq(sparse),
                command.k_valid.eq(Mux(t_last, field(t_ptr, "k_valid_last"), k_tile)),
            ]
            with dp.If(t_last):
                dp.d.comb += t_finish.eq(1)
                dp.d.sync += [t_kt.eq(0), t_ptr.eq(~t_ptr)]
            with dp.Else():
                dp.d.sync += t_kt.eq(t_kt + 1)
        dp.d.comb += [core.cmd.valid.eq(command_valid), core.cmd.payload.eq(command)]
        with dp.If(core.cmd.valid & core.cmd.ready):
            dp.d.sync += [command_valid.eq(0), err_slot.eq(command_slot)]

        # ------------------------------------------------------------ operand sequencers
        def walk(name, step, inner, on_last, on_next=()):
            """Count ``k_tiles × rows`` steps of a MATMUL in (row, K tile) order, ``inner``
            giving the index of the last row of a slot; returns
            (slot, a pulse on the MATMUL's last step)."""
            ptr = Signal(name=f"{name}_ptr")
            row = Signal(16, name=f"{name}_row")
            kt = Signal(16, name=f"{name}_kt")
            final = Signal(name=f"{name}_last")
            row_last = row == inner(ptr)
            with dp.If(step):
                with dp.If(row_last & (kt == last(ptr, "k_tiles"))):
                    dp.d.comb += final.eq(1)
                    dp.d.sync += [row.eq(0), kt.eq(0), ptr.eq(~ptr), *on_last]
                with dp.Else():
                    dp.d.sync += list(on_next)
                    with dp.If(row_last):
                        dp.d.sync += [row.eq(0), kt.eq(kt + 1)]
                    with dp.Else():
                        dp.d.sync += row.eq(row + 1)
            return ptr, final

        def operand_sequencer(name, port, sink, base_field, inner):
            """Read a MATMUL's ``k_tiles × rows`` consecutive words (``inner``: the index of
            the last row of a slot) from ``base_field`` into ``sink``;
            returns a pulse on a MATMUL's last read."""
            offset = Signal(16, name=f"{name}_offset")
            issue = Signal(name=f"{name}_issue")
            ptr, finish = walk(name, issue, inner, [offset.eq(0)], [offset.eq(offset + 1)])
            pending = pending_counter(name, finish)
            width = len(sink.payload.as_value())
            fifo = dp.submodules[f"{name}_fifo"] = SyncFIFO(width=width,
                                                            depth=OPERAND_FIFO_DEPTH)
            reading = Signal(name=f"{name}_reading")     # a read is in the port's register
            dp.d.comb += [
                issue.eq((pending != 0) & (fifo.level + reading < OPERAND_FIFO_DEPTH)),
                port.en.eq(issue),
                port.addr.eq(field(ptr, base_field) + offset),
                fifo.w_en.eq(reading),
                fifo.w_data.eq(port.data),
                sink.valid.eq(fifo.r_rdy),
                sink.payload.eq(fifo.r_data),
                fifo.r_en.eq(sink.ready),
            ]
            dp.d.sync += reading.eq(issue)
            return finish

        w_finish = operand_sequencer("weight", self.wgt_rd, core.weight, "wgt_addr",
                                     lambda ptr: R - 1)
        a_finish = operand_sequencer("act", self.act_rd, core.act, "act_addr",
                                     lambda ptr: last(ptr, "m_rows"))

        # ------------------------------------------------------------ quant sequencer
        q_ptr = Signal()
        q_step = Signal(range(4))          # PARAM words requested
        q_reading = Signal()
        q_word = Signal(range(3))          # index of the word in the port's register
        q_valid = Signal()
        q_finish = Signal()
        q_taken = Signal()
        q_pending = pending_counter("quant", q_taken)
        quant = core.quant.payload
        q_issue = (q_pending != 0) & ~q_valid & (q_step != 3)
        dp.d.comb += [
            self.param_rd.en.eq(q_issue),
            self.param_rd.addr.eq(field(q_ptr, "param_addr") + q_step),
        ]
        dp.d.sync += [q_reading.eq(q_issue), q_word.eq(q_step)]
        with dp.If(q_issue):
            dp.d.sync += q_step.eq(q_step + 1)
        bias = Signal.like(quant.bias, reset_less=True)
        multiplier = Signal.like(quant.multiplier, reset_less=True)
        shift_word = Signal.like(self.param_rd.data, reset_less=True)   # the raw lanes
        shift = Signal.like(quant.shift)
        scalars = Signal(data.StructLayout({name: quant.shape()[name].shape for name in
                                            ("out_zero_point", "out_min", "out_max", "raw")}),
                         reset_less=True)
        with dp.If(q_issue & (q_step == 0)):
            dp.d.sync += [scalars[name].eq(field(q_ptr, name)) for name in
                          ("out_zero_point", "out_min", "out_max", "raw")]
        word = self.param_rd.data
        with dp.If(q_reading):
            with dp.If(q_word == 0):
                dp.d.sync += bias.eq(word)
            with dp.Elif(q_word == 1):
                dp.d.sync += multiplier.eq(word)
            with dp.Else():
                dp.d.comb += q_finish.eq(1)
                dp.d.sync += [q_valid.eq(1), shift_word.eq(word)]
        # Saturate the registered lanes to [lo, hi]: a lane is in range when its bits
        # above the shift's sign bit all equal that sign (after the register, so that no
        # logic sits behind the scratchpad's read port).
        lo, hi = -(1 << (SHIFT_BITS - 1)), (1 << (SHIFT_BITS - 1)) - 1
        for c in range(cfg.cols):
            lane = shift_word[c]
            upper = lane[SHIFT_BITS - 1:]
            in_range = ~upper.any() | upper.all()
            dp.d.comb += shift[c].eq(Mux(in_range, lane[:SHIFT_BITS], Mux(lane[-1], lo, hi)))
        # The beat is offered as soon as it is read (the core takes it when the MATMUL's
        # last tile starts, and checks it once that tile's weights are in, so that a 2:4
        # index error of the tile found in the same cycle is reported first).
        dp.d.comb += [
            core.quant.valid.eq(q_valid),
            quant.bias.eq(bias),
            quant.multiplier.eq(multiplier),
            quant.shift.eq(shift),
            quant.out_zero_point.eq(scalars.out_zero_point),
            quant.out_min.eq(scalars.out_min),
            quant.out_max.eq(scalars.out_max),
            quant.raw.eq(scalars.raw),
            q_taken.eq(core.quant.valid & core.quant.ready),
        ]
        with dp.If(q_taken):
            dp.d.sync += [q_valid.eq(0), q_step.eq(0), q_ptr.eq(~q_ptr)]

        # ------------------------------------------------------------ reads done
        report = Signal()
        finished = [done_counter(name, finish, report) for name, finish in
                    (("weight", w_finish), ("act", a_finish), ("quant", q_finish))]
        dp.d.comb += report.eq(Cat(count != 0 for count in finished).all())
        dp.d.sync += self.reads_done.eq(report)

        # ------------------------------------------------------------ result writer
        r_row = Signal(16)
        r_last = r_row == last(head, "m_rows")
        written = Signal()
        dp.d.comb += [
            self.out_wr.valid.eq(core.result.valid),
            self.out_wr.addr.eq(field(head, "out_addr") + r_row),
            self.out_wr.data.eq(core.result.payload),
            core.result.ready.eq(self.out_wr.ready),
            written.eq(core.result.valid & core.result.ready & r_last),
        ]
        with dp.If(core.result.valid & core.result.ready):
            with dp.If(r_last):
                dp.d.sync += [r_row.eq(0), head.eq(~head)]
            with dp.Else():
                dp.d.sync += r_row.eq(r_row + 1)
        dp.d.sync += [inflight.eq(inflight + accept - written), self.done.eq(written)]
        # Slot of the oldest MATMUL whose `done` has not been pulsed before this cycle:
        # `error_index` counts from it, as the controller's view of the unit does.
        done_head = Signal()
        dp.d.sync += done_head.eq(done_head ^ self.done)
        m.d.comb += self.busy.eq(inflight != 0)

        # ------------------------------------------------------------ errors
        failed = core.error != CoreError.NONE
        m.d.comb += [
            clear.eq(self.abort | failed),
            self.error_valid.eq(failed),
            self.error_detail.eq(core.error),
            self.error_index.eq(err_slot ^ done_head),
        ]
        with m.If(failed):
            m.d.comb += self.error.eq(NPUError.CORE)
        return m
