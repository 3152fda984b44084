"""Unstructured zero-skipping engine: sparse weights × dense activations.

The engine computes ``Y = requant(A·W + bias)`` for int8 activations A (M×K, zero point
``a_zero_point``) and a compressed int8 weight matrix W (K×N, zero point 0), spending
one cycle per ``P = spmm_lanes`` stored weight non-zeros of an output channel, each
against a column of ``V = rows`` activations (``P·V`` MACs per cycle; with
``spmm_lanes = cols`` the same peak as the R×C array).  Zero entries of W are never
read, so all-zero rows of W cost nothing and an all-zero output channel costs one cycle.

Weights arrive as the CSR of ``Wᵀ`` (one compressed row per output channel: K index
and value of every non-zero), dealt into ``nz`` beats of up to P entries::

    cmd ──► loader ──► activation buffer (2 banks × K rows of V effective values,
    act ──►            replicated P read ports)
                              │ P reads (index of each entry)
    nz  ──► issue + checks ───┴──► P×V multipliers ──► lane sum ──► accumulator ──► requantizer ──► FIFO ──► result
    quant ─┘ (one per channel)                        (adder tree)   (V × acc_bits)   (V lanes)

Load balancing is by construction: the P lanes always work on consecutive non-zeros
of the same channel, so no lane waits for another; the only loss is the partially
filled last beat of each channel (``⌈nnz/P⌉`` beats, at most one beat per channel).

The activation block of the next M block is loaded into the other bank while the
current one computes, so the load (K cycles) hides behind any block with at least K
beats.  Streams, fields and the order of everything are defined by
``npugen.golden.spmm.lower_spmm``; errors (sticky, the engine stops accepting input and
lets what is in flight drain) by :class:`SpmmError`.
"""

import enum

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .layouts import QPARAM_BITS, SHIFT_BITS
from .requantizer import LATENCY as REQUANT_LATENCY
from .requantizer import Requantizer

__all__ = ["SparseEngine", "SpmmError", "spmm_command_layout", "spmm_act_layout",
           "spmm_nz_layout", "spmm_quant_layout", "spmm_result_layout"]

#: Largest number of output channels of one command.
CHANNEL_BITS = 16
#: Width of the command's count of stored entries (the CSR's last pointer).
NNZ_BITS = 32


class SpmmError(enum.IntEnum):
    """Error codes reported on ``SparseEngine.error``."""
    NONE = 0
    #: A command with ``k`` of 0 or above ``acc_depth``, or ``n_cols`` of 0.
    BAD_SHAPE = 1
    #: A command with ``out_min > out_max``.
    BAD_CLAMP = 2
    #: Requantization parameters with a shift outside [-31, 30].
    BAD_SHIFT = 3
    #: An ``nz`` beat with more than ``spmm_lanes`` entries.
    BAD_COUNT = 4
    #: A non-zero whose K index is not below the command's ``k``.
    BAD_INDEX = 5
    #: K indices of a channel not strictly increasing (unsorted or duplicate).
    BAD_ORDER = 6
    #: More stored entries than the command's ``nnz`` (a pointer past the end of the
    #: value array), or fewer when the block's last channel ends.
    BAD_POINTER = 7


def spmm_command_layout(config):
    """One M block: its K and N, the CSR's entry count and the output parameters."""
    return data.StructLayout({
        "k": unsigned(config.acc_row_bits),
        "n_cols": unsigned(CHANNEL_BITS),
        "nnz": unsigned(NNZ_BITS),
        "a_zero_point": signed(config.lane_bits),
        "out_zero_point": signed(QPARAM_BITS),
        "out_min": signed(QPARAM_BITS),
        "out_max": signed(QPARAM_BITS),
        "raw": unsigned(1),
    })


def spmm_act_layout(config):
    """Column k of an M block: ``rows`` int8 activations (lane v ↔ row m0 + v)."""
    return data.ArrayLayout(signed(config.lane_bits), config.rows)


def spmm_nz_layout(config):
    """Up to ``spmm_lanes`` stored entries (K index, int8 value) of one channel."""
    lanes = config.spmm_lanes
    return data.StructLayout({
        "count": unsigned(max(1, lanes.bit_length())),
        "last": unsigned(1),
        "index": data.ArrayLayout(unsigned(config.acc_row_bits), lanes),
        "value": data.ArrayLayout(signed(config.lane_bits), lanes),
    })


def spmm_quant_layout(config):
    """Requantization parameters of one output channel."""
    return data.StructLayout({
        "bias": signed(32),
        "multiplier": signed(32),
        "shift": signed(SHIFT_BITS),
    })


def spmm_result_layout(config):
    """One output channel of an M block: ``rows`` int32 lanes."""
    return data.ArrayLayout(signed(32), config.rows)


def _tree_sum(m, terms, name):
    """Balanced adder tree (combinational); widths grow by one bit per level."""
    level = 0
    while len(terms) > 1:
        paired = []
        for i in range(0, len(terms) - 1, 2):
            a, b = terms[i], terms[i + 1]
            s = Signal(signed(max(len(a), len(b)) + 1), name=f"{name}_l{level}_{i // 2}")
            m.d.comb += s.eq(a + b)
            paired.append(s)
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
        level += 1
    return terms[0]


class SparseEngine(wiring.Component):
    """The zero-skipping sparse × dense engine of one :class:`NPUConfig`.

    Ports
    -----
    cmd, act, nz, quant : In(stream)
        Block commands, activation columns, compressed weight beats, per-channel
        requantization parameters.
    result : Out(stream)
        One row per output channel and M block (``rows`` int32 lanes).
    busy : Out(1)
        A block is loading or computing, or a result is not yet taken.
    error : Out(SpmmError)
        First error seen; the engine stops accepting input when it is not ``NONE``.
    """

    def __init__(self, config):
        from npugen.golden.config import NPUConfig
        NPUConfig.check(config)
        self._config = config
        super().__init__({
            "cmd": In(stream.Signature(spmm_command_layout(config))),
            "act": In(stream.Signature(spmm_act_layout(config))),
            "nz": In(stream.Signature(spmm_nz_layout(config))),
            "quant": In(stream.Signature(spmm_quant_layout(config))),
            "result": Out(stream.Signature(spmm_result_layout(config))),
            "busy": Out(1),
            "error": Out(SpmmError),
        })

    @property
    def config(self):
        return self._config

    @property
    def latency(self):
        """Cycles from an ``nz`` beat accepted to its result row entering the FIFO."""
        return 3 + REQUANT_LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        V, P, D = cfg.rows, cfg.spmm_lanes, cfg.acc_depth
        lane = cfg.lane_bits
        addr_bits = (D - 1).bit_length()
        cmd_layout = spmm_command_layout(cfg)

        requant_cfg = cfg.replace(cols=V)
        m.submodules.requantizer = requant = Requantizer(requant_cfg)
        m.submodules.result_fifo = fifo = SyncFIFOBuffered(
            width=len(self.result.payload.as_value()), depth=cfg.out_fifo_depth)

        # Activation buffer: two banks of D rows of V effective (zero-point-free) values.
        act_row = data.ArrayLayout(signed(lane + 1), V)
        m.submodules.act_buffer = buffer = Memory(shape=act_row, depth=2 * D, init=[])
        write = buffer.write_port()
        reads = [buffer.read_port() for _ in range(P)]

        failed = Signal()
        m.d.comb += failed.eq(self.error != SpmmError.NONE)

        bank_full = [Signal(name=f"bank_full_{b}") for b in range(2)]
        bank_cmd = [Signal(cmd_layout, name=f"bank_cmd_{b}") for b in range(2)]

        # ---------------------------------------------------------------- loader
        ld_active = Signal()
        ld_bank = Signal()
        ld_count = Signal(range(D + 1))
        ld_cmd = Signal(cmd_layout)

        m.d.comb += self.cmd.ready.eq(~failed & ~ld_active & ~Mux(ld_bank, bank_full[1],
                                                                   bank_full[0]))
        with m.If(self.cmd.valid & self.cmd.ready):
            c = self.cmd.payload
            with m.If((c.k == 0) | (c.k > D) | (c.n_cols == 0)):
                m.d.sync += self.error.eq(SpmmError.BAD_SHAPE)
            with m.Elif(c.out_min > c.out_max):
                m.d.sync += self.error.eq(SpmmError.BAD_CLAMP)
            with m.Else():
                m.d.sync += [ld_active.eq(1), ld_cmd.eq(c), ld_count.eq(0)]

        m.d.comb += [
            self.act.ready.eq(~failed & ld_active),
            write.addr.eq(Cat(ld_count[:addr_bits], ld_bank)),
            write.en.eq(self.act.valid & self.act.ready),
        ]
        for v in range(V):
            m.d.comb += write.data[v].eq(self.act.payload[v] - ld_cmd.a_zero_point)
        with m.If(self.act.valid & self.act.ready):
            m.d.sync += ld_count.eq(ld_count + 1)
            with m.If(ld_count == ld_cmd.k - 1):
                m.d.sync += [ld_active.eq(0), ld_bank.eq(~ld_bank)]
                for b in range(2):
                    with m.If(ld_bank == b):
                        m.d.sync += [bank_full[b].eq(1), bank_cmd[b].eq(ld_cmd)]

        # ---------------------------------------------------------------- issue
        cp_bank = Signal()
        cp_full = Mux(cp_bank, bank_full[1], bank_full[0])
        cp_cmd = Signal(cmd_layout)
        m.d.comb += cp_cmd.eq(Mux(cp_bank, bank_cmd[1], bank_cmd[0]))
        cols_done = Signal(CHANNEL_BITS)
        entries = Signal(NNZ_BITS + 1)
        prev_valid = Signal()
        prev_index = Signal(cfg.acc_row_bits)
        outstanding = Signal(range(cfg.out_fifo_depth + 1))

        nz = self.nz.payload
        count_ok = nz.count <= P
        in_beat = [Signal(name=f"entry_valid_{j}") for j in range(P)]
        for j in range(P):
            m.d.comb += in_beat[j].eq(j < nz.count)
        index_ok = Cat(~in_beat[j] | (nz.index[j] < cp_cmd.k) for j in range(P)).all()
        order_ok = Cat(
            [~in_beat[0] | ~prev_valid | (nz.index[0] > prev_index)] +
            [~in_beat[j] | (nz.index[j] > nz.index[j - 1]) for j in range(1, P)]).all()
        new_entries = Signal(NNZ_BITS + 1)
        m.d.comb += new_entries.eq(entries + nz.count)
        block_end = nz.last & (cols_done == cp_cmd.n_cols - 1)
        pointer_ok = (new_entries <= cp_cmd.nnz) & (~block_end | (new_entries == cp_cmd.nnz))
        shift = self.quant.payload.shift
        shift_ok = (shift >= -31) & (shift <= 30)

        head = ~failed & cp_full & self.nz.valid
        beat_ok = count_ok & index_ok & order_ok & pointer_ok
        with m.If(head):
            with m.If(~count_ok):
                m.d.sync += self.error.eq(SpmmError.BAD_COUNT)
            with m.Elif(~index_ok):
                m.d.sync += self.error.eq(SpmmError.BAD_INDEX)
            with m.Elif(~order_ok):
                m.d.sync += self.error.eq(SpmmError.BAD_ORDER)
            with m.Elif(~pointer_ok):
                m.d.sync += self.error.eq(SpmmError.BAD_POINTER)
            with m.Elif(nz.last & self.quant.valid & ~shift_ok):
                m.d.sync += self.error.eq(SpmmError.BAD_SHIFT)

        credit_ok = outstanding < cfg.out_fifo_depth
        issue = Signal()
        m.d.comb += issue.eq(head & beat_ok &
                             (~nz.last | (self.quant.valid & shift_ok & credit_ok)))
        m.d.comb += [
            self.nz.ready.eq(issue),
            self.quant.ready.eq(issue & nz.last),
        ]
        for j in range(P):
            m.d.comb += reads[j].addr.eq(Cat(nz.index[j][:addr_bits], cp_bank))

        last_index = Signal(cfg.acc_row_bits)
        with m.Switch(nz.count):
            for c in range(1, P + 1):
                with m.Case(c):
                    m.d.comb += last_index.eq(nz.index[c - 1])
        with m.If(issue):
            m.d.sync += entries.eq(new_entries)
            with m.If(nz.last):
                m.d.sync += [prev_valid.eq(0), cols_done.eq(cols_done + 1)]
                with m.If(block_end):
                    m.d.sync += [cols_done.eq(0), entries.eq(0), cp_bank.eq(~cp_bank)]
                    for b in range(2):
                        with m.If(cp_bank == b):
                            m.d.sync += bank_full[b].eq(0)
            with m.Elif(nz.count != 0):
                m.d.sync += [prev_valid.eq(1), prev_index.eq(last_index)]

        # ---------------------------------------------------------------- pipeline
        rq_layout = requant.params.shape()
        flags = data.StructLayout({"valid": 1, "first": 1, "last": 1})
        s1 = Signal(flags)
        s1_mask = Signal(P)
        s1_w = Signal(data.ArrayLayout(signed(lane), P))
        params = Signal(rq_layout)
        m.d.comb += [
            params.out_zero_point.eq(cp_cmd.out_zero_point),
            params.out_min.eq(cp_cmd.out_min),
            params.out_max.eq(cp_cmd.out_max),
            params.raw.eq(cp_cmd.raw),
        ]
        for v in range(V):
            m.d.comb += [
                params.bias[v].eq(self.quant.payload.bias),
                params.multiplier[v].eq(self.quant.payload.multiplier),
                params.shift[v].eq(self.quant.payload.shift),
            ]
        s1_p = Signal(rq_layout)
        first = Signal(init=1)
        with m.If(issue):
            m.d.sync += first.eq(nz.last)
        m.d.sync += [
            s1.valid.eq(issue), s1.first.eq(first), s1.last.eq(nz.last),
            s1_mask.eq(Cat(in_beat)), s1_w.eq(nz.value),
        ]
        with m.If(issue & nz.last):
            m.d.sync += s1_p.eq(params)

        # Stage 2: P × V products of the effective activations and the weights.
        s2 = Signal(flags)
        s2_p = Signal(rq_layout)
        m.d.sync += [s2.eq(s1), s2_p.eq(s1_p)]
        products = [[Signal(signed(2 * lane + 1), name=f"product_{j}_{v}") for v in range(V)]
                    for j in range(P)]
        for j in range(P):
            for v in range(V):
                m.d.sync += products[j][v].eq(
                    Mux(s1_mask[j], reads[j].data[v] * s1_w[j], 0))

        # Stage 3: the lane sum per activation row.
        s3 = Signal(flags)
        s3_p = Signal(rq_layout)
        m.d.sync += [s3.eq(s2), s3_p.eq(s2_p)]
        sums = []
        for v in range(V):
            tree = _tree_sum(m, [products[j][v] for j in range(P)], f"lane_sum_{v}")
            s = Signal(signed(len(tree)), name=f"sum_{v}")
            m.d.sync += s.eq(tree)
            sums.append(s)

        # Stage 4: accumulate the channel; its last beat goes on to requantization.
        acc = [Signal(signed(cfg.acc_bits), name=f"acc_{v}") for v in range(V)]
        total = [Signal(signed(cfg.acc_bits), name=f"total_{v}") for v in range(V)]
        for v in range(V):
            m.d.comb += total[v].eq((Mux(s3.first, 0, acc[v]) + sums[v])[:cfg.acc_bits])
            with m.If(s3.valid):
                m.d.sync += acc[v].eq(total[v])
            m.d.comb += requant.acc[v].eq(total[v])
        m.d.comb += [
            requant.valid_in.eq(s3.valid & s3.last),
            requant.params.eq(s3_p),
        ]

        # ---------------------------------------------------------------- results
        m.d.comb += [
            fifo.w_data.eq(requant.result.as_value()),
            fifo.w_en.eq(requant.valid_out),
            self.result.payload.eq(fifo.r_data),
            self.result.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.result.ready),
        ]
        taken = self.result.valid & self.result.ready
        m.d.sync += outstanding.eq(outstanding + (issue & nz.last) - taken)

        m.d.comb += self.busy.eq(ld_active | bank_full[0] | bank_full[1] | (outstanding != 0))
        return m
