"""The NPU's on-chip scratchpads: ACT, WGT, WIDX, PARAM and OUT (docs/ISA.md).

Each scratchpad is one ``lib.memory.Memory`` (zero-initialised) addressed by word::

    load_wr ──► ACT ──────────────► act_rd          (compute)
            ──► WGT ─┬────────────► wgt_rd          (compute: WGT value + WIDX index)
            ──► WIDX ┘ (sparse_2_4)
            ──► PARAM ────────────► param_rd        (compute)
    out_wr_compute ─┐
                    ├─ arbiter ─► OUT ─┬─► out_rd_vector
    out_wr_vector ──┘ (compute first)  └─► out_rd_store

Latencies: a read port presents ``addr`` with ``en`` in cycle t and has the word on
``data`` in cycle t + 1 (``data`` holds while ``en`` is low).  Reads are not
transparent: a read in the same cycle as a write to the same word returns the old
word.  A write (``load_wr.en`` or an accepted OUT write request) is visible to reads
issued from the next cycle on.  ``load_wr`` is always accepted; ``out_wr_compute`` is
always ready (its ``ready`` is tied high) and ``out_wr_vector`` is ready only in cycles
without a compute write.
"""

from amaranth.hdl import Cat, Module, Shape, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from npugen.golden.config import NPUConfig

from .isa import LoadTarget
from .layouts import activation_row_layout, weight_row_layout

__all__ = ["ADDR_BITS", "ScratchpadReadSignature", "ScratchpadWriteSignature",
           "ScratchpadLoadSignature", "Scratchpads", "act_lanes", "load_data_bits",
           "out_word_layout", "param_word_layout"]

#: Width of every scratchpad address (the instruction fields are 16 bits).
ADDR_BITS = 16


def act_lanes(config):
    """int8 lanes of an ACT word: ``rows``, or ``2·rows`` with ``sparse_2_4``."""
    return config.rows * (2 if config.sparse_2_4 else 1)


def load_data_bits(config):
    """Width of the LoadEngine's write data: the widest word it writes (ACT or PARAM)."""
    return max(act_lanes(config) * 8, config.cols * 32)


def out_word_layout(config):
    """An OUT word: ``cols`` int32 lanes."""
    return data.ArrayLayout(signed(32), config.cols)


def param_word_layout(config):
    """A PARAM word: ``cols`` int32 lanes."""
    return data.ArrayLayout(signed(32), config.cols)


def _check_shape(data_shape):
    try:
        Shape.cast(data_shape)
    except TypeError:
        raise TypeError(f"data_shape must be a shape, not {data_shape!r}") from None


class ScratchpadReadSignature(wiring.Signature):
    """A synchronous read port, requester side: ``addr`` and ``en`` in cycle t, ``data``
    in cycle t + 1."""

    def __init__(self, data_shape):
        _check_shape(data_shape)
        self._data_shape = data_shape
        super().__init__({"addr": Out(ADDR_BITS), "en": Out(1), "data": In(data_shape)})

    @property
    def data_shape(self):
        return self._data_shape

    def __eq__(self, other):
        return isinstance(other, ScratchpadReadSignature) and self.members == other.members

    def __repr__(self):
        return f"ScratchpadReadSignature({self.data_shape!r})"


class ScratchpadWriteSignature(wiring.Signature):
    """A write request, requester side: the word is written when ``valid & ready``."""

    def __init__(self, data_shape):
        _check_shape(data_shape)
        self._data_shape = data_shape
        super().__init__({"addr": Out(ADDR_BITS), "data": Out(data_shape), "valid": Out(1),
                          "ready": In(1)})

    @property
    def data_shape(self):
        return self._data_shape

    def __eq__(self, other):
        return isinstance(other, ScratchpadWriteSignature) and self.members == other.members

    def __repr__(self):
        return f"ScratchpadWriteSignature({self.data_shape!r})"


class ScratchpadLoadSignature(wiring.Signature):
    """The LoadEngine's write port, requester side (always accepted).

    ``data`` packs the lanes of one word at bit 0: ACT ``act_lanes`` bytes, WGT and WIDX
    ``cols`` bytes (WIDX keeps the low 2 bits of each byte), PARAM ``cols`` int32.
    """

    def __init__(self, config):
        NPUConfig.check(config)
        self._config = config
        super().__init__({"target": Out(LoadTarget), "addr": Out(ADDR_BITS),
                          "data": Out(load_data_bits(config)), "en": Out(1)})

    @property
    def config(self):
        return self._config

    def __eq__(self, other):
        return isinstance(other, ScratchpadLoadSignature) and self.config == other.config

    def __repr__(self):
        return f"ScratchpadLoadSignature({self.config!r})"


class Scratchpads(wiring.Component):
    """The five scratchpads of one configuration and their ports (see the module doc).

    Ports
    -----
    load_wr : In(ScratchpadLoadSignature)
        LoadEngine writes (ACT, WGT, WIDX, PARAM).
    act_rd, wgt_rd, param_rd : In(ScratchpadReadSignature)
        Compute reads; ``wgt_rd`` returns the WGT word and, with ``sparse_2_4``, the WIDX
        word of the same address (``weight_row_layout``: ``value`` and ``index``).
    out_wr_compute, out_wr_vector : In(ScratchpadWriteSignature)
        OUT write requests; a compute request always wins.
    out_rd_vector, out_rd_store : In(ScratchpadReadSignature)
        OUT reads of the vector unit and of the store engine.
    """

    def __init__(self, config):
        NPUConfig.check(config)
        self._config = config
        out = out_word_layout(config)
        super().__init__({
            "load_wr": In(ScratchpadLoadSignature(config)),
            "act_rd": In(ScratchpadReadSignature(activation_row_layout(config))),
            "wgt_rd": In(ScratchpadReadSignature(weight_row_layout(config))),
            "param_rd": In(ScratchpadReadSignature(param_word_layout(config))),
            "out_wr_compute": In(ScratchpadWriteSignature(out)),
            "out_wr_vector": In(ScratchpadWriteSignature(out)),
            "out_rd_vector": In(ScratchpadReadSignature(out)),
            "out_rd_store": In(ScratchpadReadSignature(out)),
        })

    @property
    def config(self):
        return self._config

    @property
    def read_latency(self):
        """Cycles from ``addr``/``en`` to ``data``."""
        return 1

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        C = cfg.cols
        load = self.load_wr

        def memory(name, width, depth, target, word):
            mem = m.submodules[name] = Memory(shape=unsigned(width), depth=depth, init=[])
            if target is not None:
                wr = mem.write_port()
                m.d.comb += [wr.addr.eq(load.addr), wr.data.eq(word),
                             wr.en.eq(load.en & (load.target == target))]
            return mem

        def read(mem, port):
            rd = mem.read_port()
            m.d.comb += [rd.addr.eq(port.addr), rd.en.eq(port.en)]
            return rd.data

        act_bits = act_lanes(cfg) * 8
        act = memory("act", act_bits, cfg.act_sp_depth, LoadTarget.ACT, load.data[:act_bits])
        wgt = memory("wgt", 8 * C, cfg.wgt_sp_depth, LoadTarget.WGT, load.data[:8 * C])
        param = memory("param", 32 * C, cfg.param_sp_depth, LoadTarget.PARAM,
                       load.data[:32 * C])

        m.d.comb += self.act_rd.data.eq(read(act, self.act_rd))
        m.d.comb += self.param_rd.data.eq(read(param, self.param_rd))
        wgt_word = read(wgt, self.wgt_rd)
        if cfg.sparse_2_4:
            widx = memory("widx", 2 * C, cfg.wgt_sp_depth, LoadTarget.WIDX,
                          Cat(load.data[8 * c:8 * c + 2] for c in range(C)))
            m.d.comb += [self.wgt_rd.data.value.eq(wgt_word),
                         self.wgt_rd.data.index.eq(read(widx, self.wgt_rd))]
        else:
            m.d.comb += self.wgt_rd.data.eq(wgt_word)

        out = memory("out", 32 * C, cfg.out_sp_depth, None, None)
        wr = out.write_port()
        compute, vector = self.out_wr_compute, self.out_wr_vector
        m.d.comb += [
            compute.ready.eq(1),
            vector.ready.eq(~compute.valid),
            wr.en.eq(compute.valid | vector.valid),
        ]
        with m.If(compute.valid):
            m.d.comb += [wr.addr.eq(compute.addr), wr.data.eq(compute.data)]
        with m.Else():
            m.d.comb += [wr.addr.eq(vector.addr), wr.data.eq(vector.data)]
        m.d.comb += [self.out_rd_vector.data.eq(read(out, self.out_rd_vector)),
                     self.out_rd_store.data.eq(read(out, self.out_rd_store))]
        return m
