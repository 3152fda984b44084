"""GEMM core: tile controller + systolic array + accumulator buffer + requantizer.

The core executes a stream of *tile operations*.  Each one consumes one weight tile
(``rows`` weight rows of ``cols`` lanes on ``weight``), ``m_rows`` activation rows
(``rows`` lanes each on ``act``) and, if it is the ``last`` K tile of an output tile,
one set of requantization parameters on ``quant``; it then emits ``m_rows`` result
rows on ``result``.  A GEMM M×K×N is a sequence of such tiles (see
``npugen.golden.tile_program``)::

            cmd ─┐    quant ─┐
                 ▼           ▼
    act ──► issue/zero-point ──► skew ──► R×C PE grid ──► deskew ──► accumulator ──► requantizer ──► FIFO ──► result
                                              ▲                        buffer
    weight ──► weight loader ──► skew ──► shadow weights (double buffer)

Scheduling rules that make consecutive tiles flow back to back:

* Weights of the next tile shift into the PEs' shadow registers while the current
  tile computes; the first row of a tile carries ``swap``, which promotes the shadow
  weights PE by PE along the wavefront.  The loader waits ``rows`` cycles after a swap
  before shifting (the wavefront must have passed every PE), so a tile of
  ``m_rows >= 2·rows + 1`` hides the whole weight load.
* A row that will produce a result is issued only when the result FIFO is
  guaranteed to have room for it (credit counter), so the array never stalls and
  back-pressure on ``result`` only pauses issue.
* Requantization parameters live in two slots: the next output tile may start while
  rows of the previous one are still in flight.  The beat of a ``last`` tile is checked
  in the cycle it is first offered and taken (at the tile's start) one cycle later at
  the earliest, so a producer offers it ahead of the tile.

Errors (``error`` output, sticky until reset; the core stops accepting input and
drains what is in flight): see :class:`CoreError`.

A row and a weight row pass one *feed register* before the array's own input register:
the activation bytes with the fields of their tile (zero point, mode, K, 2:4), the
swap, the weight row and its shift.  The zero-point correction and per-mode unpacking
come after it.  So the decisions to issue a row or shift a weight row (which also pop
the operand streams and take the quant beat) end in a few flip-flops, the tile
command registers reach only those, and the control logic need not sit by the array.

Latency: a row accepted on ``act`` in cycle t leaves the accumulator in cycle
``t + rows + cols + 5`` and, if ``last``, enters the result FIFO at ``t + rows + cols + 16``.
"""

import enum

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from npugen.golden.precision import MODE_CODES, SPARSE_K_FACTOR, SPARSE_MODE_CODE, k_per_rows

from .accumulator import LATENCY as ACC_LATENCY, AccumulatorBuffer
from .pe import ProcessingElement
from .layouts import (SHIFT_BITS, activation_row_layout, quant_params_layout,
                      result_row_layout, tile_command_layout, weight_row_layout)
from .requantizer import LATENCY as REQUANT_LATENCY, Requantizer
from .systolic_array import SystolicArray

__all__ = ["GemmCore", "CoreError", "FEED_LATENCY"]

#: Cycles of the feed register between the issue logic and the array's input register.
FEED_LATENCY = 1


class CoreError(enum.IntEnum):
    """Error codes reported on ``GemmCore.error``."""
    NONE = 0
    #: A tile command with ``m_rows`` of 0 or above ``acc_depth``.
    BAD_ROWS = 1
    #: Requantization parameters with a shift outside [-31, 30].
    BAD_SHIFT = 2
    #: Requantization parameters with ``out_min > out_max``.
    BAD_CLAMP = 3
    #: A tile command asking for a precision mode that is not built.
    BAD_MODE = 4
    #: A tile command with ``k_valid`` of 0 or above the K of one tile in its mode.
    BAD_K = 5
    #: An int4 tile command whose activation zero point is outside [-8, 7].
    BAD_ZERO_POINT = 6
    #: A 2:4 tile whose weights hold a group with indices that are not strictly
    #: increasing (row 2g's index not below row 2g+1's in some column).
    BAD_SPARSE_INDEX = 7


def _count(m, counter, up, *downs):
    """``counter += up − sum(downs)`` (1-bit terms) without an adder behind the terms: the
    candidate values are computed from the register and the terms only select one."""
    step = Cat(up, *downs)
    candidates = {}
    for k in range(1 << len(step)):
        bits = [(k >> i) & 1 for i in range(len(step))]
        delta = bits[0] - sum(bits[1:])
        if delta not in candidates:
            candidates[delta] = (counter + delta)[:len(counter)]
        with m.If(step == k):
            m.d.sync += counter.eq(candidates[delta])


class GemmCore(wiring.Component):
    """The INT8 GEMM engine of one :class:`~npugen.golden.config.NPUConfig`.

    ``pe_module`` names the Verilog module every PE is instantiated as (generated once
    from :meth:`pe_component`); ``None`` builds the PEs inline.

    Ports
    -----
    cmd, act, weight, quant : In(stream)
        Tile commands, activation rows, weight rows, requantization parameters.
    result : Out(stream)
        Result rows (``cols`` int32 lanes; int8 results sign-extended).
    busy : Out(1)
        A command, row or result is anywhere in the core.
    error : Out(CoreError)
        First error seen; the core stops accepting input when it is not ``NONE``.
    """

    def __init__(self, config, *, pe_module=None):
        from npugen.golden.config import NPUConfig
        NPUConfig.check(config)
        self._config = config
        self._pe_module = pe_module
        super().__init__({
            "cmd": In(stream.Signature(tile_command_layout(config))),
            "act": In(stream.Signature(activation_row_layout(config))),
            "weight": In(stream.Signature(weight_row_layout(config))),
            "quant": In(stream.Signature(quant_params_layout(config))),
            "result": Out(stream.Signature(result_row_layout(config))),
            "busy": Out(1),
            "error": Out(CoreError),
        })

    @property
    def config(self):
        return self._config

    def _array(self):
        cfg = self._config
        return SystolicArray(rows=cfg.rows, cols=cfg.cols, act_bits=cfg.lane_bits + 1,
                             weight_bits=cfg.lane_bits, acc_bits=cfg.acc_bits, modes=cfg.modes,
                             sparse=cfg.sparse_2_4, pe_module=self._pe_module)

    def pe_component(self):
        """The PE to generate as the ``pe_module`` Verilog module (see ``SystolicArray``)."""
        cfg = self._config
        return ProcessingElement(act_bits=cfg.lane_bits + 1, weight_bits=cfg.lane_bits,
                                 acc_bits=cfg.acc_bits, modes=cfg.modes, sparse=cfg.sparse_2_4)

    @property
    def latency(self):
        """Cycles from an activation row accepted to its result entering the FIFO."""
        return FEED_LATENCY + self._array().latency + ACC_LATENCY + REQUANT_LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C = cfg.rows, cfg.cols

        m.submodules.array = array = self._array()
        m.submodules.accumulator = acc = AccumulatorBuffer(cfg, tag_shape=unsigned(1),
                                                           fp32="bf16" in cfg.modes)
        m.submodules.requantizer = requant = Requantizer(cfg)
        m.submodules.result_fifo = fifo = SyncFIFOBuffered(
            width=len(self.result.payload.as_value()), depth=cfg.out_fifo_depth)

        failed = Signal()
        m.d.comb += failed.eq(self.error != CoreError.NONE)

        # What the array needs of a row and of a weight row is registered here, as it
        # was accepted (see the module documentation): the activation bytes and the row's
        # command fields, formatted for the array after the register; only the swap and
        # shift flags have a reset.
        command_shape = tile_command_layout(cfg)
        feed_layout = data.StructLayout({
            "bytes": activation_row_layout(cfg),
            "zero_point": command_shape["a_zero_point"].shape,
            "mode": command_shape["mode"].shape,
            "k": command_shape["k_valid"].shape,
            "sparse": 1,
            "swap": 1,
            "w_row": array.signature.members["w_row"].shape,
            "w_shift": 1,
        })
        feed = Signal(feed_layout)
        fed = Signal(feed_layout, reset_less=True)
        fed_swap, fed_shift = Signal(), Signal()
        m.d.sync += [fed.eq(feed), fed_swap.eq(feed.swap), fed_shift.eq(feed.w_shift)]
        m.d.comb += [array.w_row.eq(fed.w_row), array.swap.eq(fed_swap),
                     array.w_shift.eq(fed_shift)]

        # ---------------------------------------------------------------- weights
        shadow_full = Signal()
        load_count = Signal(range(R))
        swap_wait = Signal(range(R + 1))
        load_ok = ~failed & ~shadow_full & (swap_wait == 0)
        w_shift = Signal()
        m.d.comb += [
            self.weight.ready.eq(load_ok),
            w_shift.eq(self.weight.valid & load_ok),
            feed.w_shift.eq(w_shift),
        ]
        # 2:4 index check: rows 2g and 2g+1 of a tile are the two slots of group g, whose
        # indices must strictly increase in every column (as the golden NMMatrix demands).
        # `shadow_bad` describes the tile in the shadow registers; only a 2:4 tile
        # starting with it set is an error.
        shadow_bad = Signal()
        if cfg.sparse_2_4:
            payload = self.weight.payload
            m.d.comb += [feed.w_row[c].eq(Cat(payload.value[c], payload.index[c]))
                         for c in range(C)]
            slot0_index = Signal.like(payload.index)
            pair_bad = Cat(payload.index[c] <= slot0_index[c] for c in range(C)).any()
            with m.If(w_shift):
                with m.If(load_count[0] == 0):
                    m.d.sync += slot0_index.eq(payload.index)
                    with m.If(load_count == 0):
                        m.d.sync += shadow_bad.eq(0)
                with m.Elif(pair_bad):
                    m.d.sync += shadow_bad.eq(1)
        else:
            m.d.comb += feed.w_row.eq(self.weight.payload)
        with m.If(w_shift):
            with m.If(load_count == R - 1):
                m.d.sync += [load_count.eq(0), shadow_full.eq(1)]
            with m.Else():
                m.d.sync += load_count.eq(load_count + 1)
        with m.If(swap_wait != 0):
            m.d.sync += swap_wait.eq(swap_wait - 1)

        # ---------------------------------------------------------------- commands
        cmd_layout = tile_command_layout(cfg)
        pending = Signal(cmd_layout)
        pending_valid = Signal()
        current = Signal(cmd_layout)
        rows_left = Signal(range(cfg.acc_depth + 1))
        row_index = Signal(range(cfg.acc_depth))

        # Requantization parameter slots.
        qlayout = quant_params_layout(cfg)
        slots = [Signal(qlayout, name=f"quant_slot_{i}", reset_less=True) for i in range(2)]
        in_flight_limit = FEED_LATENCY + array.latency + acc.latency + 4
        slot_rows = [Signal(range(in_flight_limit + 1), name=f"quant_slot_rows_{i}")
                     for i in range(2)]
        next_slot = Signal()
        current_slot = Signal()

        # Result credits: rows issued with `last` and not yet taken from `result`.
        outstanding = Signal(range(cfg.out_fifo_depth + 1))

        quant = self.quant.payload
        # A shift lane holds [lo, hi] = [-32, 31]: [-31, 30] is "neither end", two
        # equality tests per lane (no carry chain in front of the issue decision).
        shift_lo, shift_hi = -(1 << (SHIFT_BITS - 1)), (1 << (SHIFT_BITS - 1)) - 1
        assert (shift_lo + 1, shift_hi - 1) == (-31, 30)
        shift_ok = Signal()
        m.d.comb += shift_ok.eq(Cat((quant.shift[c] != shift_lo) & (quant.shift[c] != shift_hi)
                                    for c in range(C)).all())
        clamp_ok = quant.out_min <= quant.out_max
        # The checks of the beat at the head of `quant`, registered: `quant_seen` says the
        # beat of this cycle was offered and not taken in the previous one (a stream's
        # payload holds while it waits), so the registered flags describe it.  A tile
        # start needs it: a beat is taken one cycle after it is first offered at the
        # earliest, and the checks are not in front of `issue`.
        quant_seen = Signal()
        shift_ok_seen = Signal()
        clamp_ok_seen = Signal()
        m.d.sync += [quant_seen.eq(self.quant.valid & ~self.quant.ready),
                     shift_ok_seen.eq(shift_ok), clamp_ok_seen.eq(clamp_ok)]
        quant_head = self.quant.valid & quant_seen

        # `starting` (rows_left == 0) and `credit` (outstanding < out_fifo_depth) are
        # registered copies of comparisons, kept up to date with the counters.
        starting = Signal(init=1)
        credit = Signal(init=1)
        row_last = Mux(starting, pending.last, current.last)
        # slot_free[i] (slot_rows[i] == 0), registered like `starting` and `credit`.
        slot_free = [Signal(init=1, name=f"quant_slot_free_{i}") for i in range(2)]
        start_quant_ok = ~pending.last | (quant_head & shift_ok_seen & clamp_ok_seen &
                                          Mux(next_slot, slot_free[1], slot_free[0]))
        sparse_ok = ~(pending.sparse & shadow_bad)
        can_start = pending_valid & shadow_full & start_quant_ok & sparse_ok
        credit_ok = ~row_last | credit
        issue = Signal()
        m.d.comb += issue.eq(~failed & self.act.valid & Mux(starting, can_start, 1) & credit_ok)
        m.d.comb += self.act.ready.eq(issue)

        # Pending command register (one command of look-ahead), refilled the cycle after
        # its tile starts (`ready` is a register, not a function of `issue`; a tile
        # lasts at least 2·rows + 1 cycles).
        m.d.comb += self.cmd.ready.eq(~failed & ~pending_valid)
        with m.If(issue & starting):
            m.d.sync += pending_valid.eq(0)
        command = self.cmd.payload
        mode_built = Cat(command.mode == MODE_CODES[mode] for mode in cfg.modes).any()
        if cfg.sparse_2_4:   # 2:4 exists for int8 only
            mode_built &= ~command.sparse | (command.mode == MODE_CODES["int8"])
        else:
            mode_built &= ~command.sparse
        k_limit = Signal.like(command.k_valid)
        m.d.comb += k_limit.eq(R)
        for mode in cfg.modes:
            with m.If(command.mode == MODE_CODES[mode]):
                m.d.comb += k_limit.eq(k_per_rows(R, mode))
        if cfg.sparse_2_4:
            with m.If(command.sparse):
                m.d.comb += k_limit.eq(R * SPARSE_K_FACTOR)
        with m.If(self.cmd.valid & self.cmd.ready):
            rows = command.m_rows
            with m.If((rows == 0) | (rows > cfg.acc_depth)):
                m.d.sync += self.error.eq(CoreError.BAD_ROWS)
            with m.Elif(~mode_built):
                m.d.sync += self.error.eq(CoreError.BAD_MODE)
            with m.Elif((command.k_valid == 0) | (command.k_valid > k_limit)):
                m.d.sync += self.error.eq(CoreError.BAD_K)
            with m.Elif((command.mode == MODE_CODES["int4"]) &
                        ((command.a_zero_point < -8) | (command.a_zero_point > 7))):
                m.d.sync += self.error.eq(CoreError.BAD_ZERO_POINT)
            with m.Else():
                m.d.sync += [pending.eq(command), pending_valid.eq(1)]

        # Malformed requantization parameters of the tile about to start (once its
        # weights are in, so that a 2:4 index error found in the same cycle wins).
        with m.If(~failed & starting & pending_valid & pending.last & shadow_full &
                  quant_head):
            with m.If(~shift_ok_seen):
                m.d.sync += self.error.eq(CoreError.BAD_SHIFT)
            with m.Elif(~clamp_ok_seen):
                m.d.sync += self.error.eq(CoreError.BAD_CLAMP)
        # Malformed 2:4 weights of the tile about to start.
        with m.If(~failed & starting & pending_valid & shadow_full & ~sparse_ok):
            m.d.sync += self.error.eq(CoreError.BAD_SPARSE_INDEX)

        # Issue one activation row: its bytes and its tile's fields into the feed
        # register; after it, zero-point correction / unpacking per mode.
        m.d.comb += [
            feed.bytes.eq(self.act.payload),
            feed.zero_point.eq(Mux(starting, pending.a_zero_point, current.a_zero_point)),
            feed.mode.eq(Mux(starting, pending.mode, current.mode)),
            feed.k.eq(Mux(starting, pending.k_valid, current.k_valid)),
            feed.sparse.eq(Mux(starting, pending.sparse, current.sparse)),
            feed.swap.eq(issue & starting),
        ]
        zero_point, row_mode, row_k = fed.zero_point, fed.mode, fed.k
        for r in range(R):
            byte = fed.bytes[r]
            m.d.comb += array.act[r].eq(byte - zero_point)
            if "int4" in cfg.modes:
                with m.If(row_mode == MODE_CODES["int4"]):
                    m.d.comb += array.act[r].eq(Cat((byte[0:4].as_signed() - zero_point)[:5],
                                                    (byte[4:8].as_signed() - zero_point)[:5]))
            if "binary" in cfg.modes:
                valid_bits = Cat(row_k > 8 * r + i for i in range(8))
                with m.If(row_mode == MODE_CODES["binary"]):
                    m.d.comb += array.act[r].eq(Cat(byte.as_unsigned(), valid_bits))
            if "bf16" in cfg.modes:
                # Lane 2j: BF16 activation j (lanes 2j, 2j+1) and whether j is real; the
                # odd lanes carry nothing, their PEs pass the sums on.
                with m.If(row_mode == MODE_CODES["bf16"]):
                    if r % 2 == 0:
                        m.d.comb += array.act[r].eq(Cat(byte, fed.bytes[r + 1], row_k > r // 2))
                    else:
                        m.d.comb += array.act[r].eq(0)
            if cfg.sparse_2_4:
                # Rows 2g and 2g+1 both see the 4 activations of group g.
                group = [(fed.bytes[4 * (r // 2) + j] - zero_point)[:cfg.lane_bits + 1]
                         for j in range(4)]
                with m.If(fed.sparse):
                    m.d.comb += array.act[r].eq(Cat(*group))
        if "binary" in cfg.modes:
            with m.If(row_mode == MODE_CODES["binary"]):
                m.d.comb += array.psum_top.eq(-row_k)
        if cfg.sparse_2_4:
            m.d.comb += array.mode.eq(Mux(fed.sparse, SPARSE_MODE_CODE, row_mode))
        else:
            m.d.comb += array.mode.eq(row_mode)
        m.d.comb += self.quant.ready.eq(issue & starting & pending.last)

        with m.If(issue):
            with m.If(starting):
                m.d.sync += [
                    current.eq(pending),
                    rows_left.eq(pending.m_rows - 1),
                    starting.eq(pending.m_rows == 1),
                    row_index.eq(1),
                    shadow_full.eq(0),
                    swap_wait.eq(R),
                ]
                with m.If(pending.last):
                    m.d.sync += [current_slot.eq(next_slot), next_slot.eq(~next_slot)]
            with m.Else():
                m.d.sync += [rows_left.eq(rows_left - 1), starting.eq(rows_left == 1),
                             row_index.eq(row_index + 1)]
        # The next slot, while no row in flight uses it, follows the head of the quant
        # stream; the beat taken when the tile starts is the last one written.  (The
        # write does not wait for `issue`: a free slot may hold anything.)
        for i in range(2):
            with m.If((next_slot == i) & slot_free[i]):
                m.d.sync += slots[i].eq(quant)

        # Row metadata, delayed to meet the row's partial sums below the array.
        meta_layout = data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "slot": 1, "fp32": 1,
            "row": range(cfg.acc_depth),
        })
        meta = Signal(meta_layout)
        issue_slot = Mux(starting, next_slot, current_slot)
        m.d.comb += [
            meta.valid.eq(issue),
            meta.first.eq(Mux(starting, pending.first, current.first)),
            meta.last.eq(row_last),
            meta.slot.eq(issue_slot),
            meta.row.eq(Mux(starting, 0, row_index)),
            meta.fp32.eq(feed.mode == MODE_CODES["bf16"] if "bf16" in cfg.modes else 0),
        ]
        # Only the valid flag has a reset (so does every flag of the control state; the
        # data registers of the array, accumulator and requantizer have none: a reset
        # net to all of them routes badly).
        delayed = meta
        for i in range(FEED_LATENCY + array.latency):
            stage = Signal(meta_layout, name=f"meta_delay_{i}", reset_less=True)
            valid = Signal(name=f"meta_valid_{i}")
            m.d.sync += [stage.eq(delayed), valid.eq(delayed.valid)]
            delayed = Signal(meta_layout, name=f"meta_{i}")
            m.d.comb += [delayed.eq(stage), delayed.valid.eq(valid)]

        # ---------------------------------------------------------------- accumulate
        m.d.comb += [
            acc.valid_in.eq(delayed.valid),
            acc.addr.eq(delayed.row),
            acc.first.eq(delayed.first),
            acc.last.eq(delayed.last),
            acc.tag_in.eq(delayed.slot),
            acc.fp32_in.eq(delayed.fp32),
            acc.psum.eq(array.psum),
        ]

        # ---------------------------------------------------------------- requantize
        m.d.comb += [
            requant.valid_in.eq(acc.valid_out),
            requant.acc.eq(acc.sum),
            requant.params.eq(Mux(acc.tag_out, slots[1], slots[0])),
        ]
        for i in range(2):
            inc = issue & row_last & (issue_slot == i)
            dec = acc.valid_out & (acc.tag_out == i)
            _count(m, slot_rows[i], inc, dec)
            with m.If(inc & ~dec):
                m.d.sync += slot_free[i].eq(0)
            with m.Elif(dec & ~inc):
                m.d.sync += slot_free[i].eq(slot_rows[i] == 1)

        # ---------------------------------------------------------------- results
        m.d.comb += [
            fifo.w_data.eq(requant.result.as_value()),
            fifo.w_en.eq(requant.valid_out),
            self.result.payload.eq(fifo.r_data),
            self.result.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.result.ready),
        ]
        taken = self.result.valid & self.result.ready
        reserve = issue & row_last
        _count(m, outstanding, reserve, taken)
        # credit of the next cycle from comparisons of the current count (the count
        # never exceeds out_fifo_depth, so a release always leaves a credit).
        with m.If(reserve & ~taken):
            m.d.sync += credit.eq(outstanding < cfg.out_fifo_depth - 1)
        with m.Elif(taken & ~reserve):
            m.d.sync += credit.eq(1)

        # ---------------------------------------------------------------- status
        rows_in_flight = Signal(range(in_flight_limit + cfg.out_fifo_depth + 1))
        _count(m, rows_in_flight, issue, acc.valid_in & ~acc.last, requant.valid_out)
        m.d.comb += self.busy.eq(pending_valid | (rows_left != 0) | (rows_in_flight != 0) |
                                 fifo.r_rdy)
        return m
