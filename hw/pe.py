"""Weight-stationary processing element with run-time precision modes.

Each PE holds an *active* weight used by its datapath and a *shadow* weight that the
next tile's weights shift through (column-wise, bottom to top) while the array keeps
computing.  The ``swap`` flag travels with the first activation row of a tile; when it
arrives the shadow weight becomes active, so the switch follows the skewed wavefront
exactly and consecutive tiles need no drain.  The precision ``mode`` travels with every
activation the same way, so rows of different modes can follow each other.

Per clock edge::

    act_reg  <= act_in;  mode_reg <= mode_in       (passed right as act_out, mode_out)
    w_active <= w_shadow                            if swap_in
    product  <= X(act_reg) * Y(w_active)            one multiplier for int8, int4, 2:4
    matches  <= popcount(~(act ^ w) & mask)         binary only
    psum_out <= psum_in + contribution              (wraps modulo 2**acc_bits)
    w_shadow <= w_shadow_in                         if shift  (passed up as w_shadow_out)

Activation bus of one lane (``act_in``), by mode:

* int8: bits [0, act_bits) hold the zero-point-corrected value (signed).
* int4: bits [0, 5) and [5, 10) hold the corrected low and high values (signed 5-bit).
* binary: bits [0, 8) are the activation signs, bits [8, 16) mark the valid bits.
* int8 2:4 (``sparse=True`` only; mode code ``SPARSE_MODE_CODE``): bits
  [9·j, 9·j + 9) hold the corrected activation j of the PE row's group of 4 K elements.

With ``sparse=True`` a weight register holds a value (bits [0, 8)) and a 2-bit index
(bits [8, 10)).  In 2:4 mode the PE multiplies its weight by the activation its index
selects among the group's 4: ``x = act[9·index : 9·index + 9]``.  A pair of PE rows
(2g, 2g+1) holds the two kept weights of group g, so a column of ``R`` PEs covers
``2·R`` of K with one multiplier per PE.  Dense modes ignore the index bits.

Contribution: int8 and int8 2:4 ``a·w``; int4 ``a_lo·w_lo + a_hi·w_hi``; binary
``2·popcount(XNOR(a, w) & valid)`` (the array adds ``−K`` once per row at the top).

The two int4 products share the int8 multiplier: with ``X = a_lo + a_hi·2⁹`` and
``Y = w_hi + w_lo·2⁹``, ``X·Y = a_lo·w_hi + (a_lo·w_lo + a_hi·w_hi)·2⁹ + a_hi·w_lo·2¹⁸``;
since ``|a_lo·w_hi| ≤ 120 < 2⁸``, bits [9, 18) of ``X·Y + 2⁸`` are the wanted sum.  A
14×13-bit product fits one 18×18 DSP.  Modes that are not built leave no logic.

Latency: ``act_out`` 1 cycle after ``act_in``; ``psum_out`` carries the contribution of
an activation 2 cycles after it reached ``act_reg``, so a column of PEs fed with a
1-cycle skew per row accumulates in one pass.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.precision import MODE_CODES, MODES, SPARSE_MODE_CODE

__all__ = ["ProcessingElement", "MODE_BITS", "INDEX_BITS", "act_lane_shape",
           "weight_lane_shape", "pe_signature"]

#: Width of the ``mode`` field travelling with activations.
MODE_BITS = 2
#: Bit offset of the int4 pair packing in the shared multiplier.
INT4_SPLIT = 9
#: Width of a 2:4 weight's position inside its group of 4 K elements.
INDEX_BITS = 2


def act_lane_shape(modes, act_bits=9, sparse=False):
    """Shape of one lane of the activation bus for the built ``modes`` (and 2:4).

    An int8-only dense PE carries a plain signed value; packed modes and 2:4 (the four
    activations of a group) share a bit bus.
    """
    if tuple(modes) == ("int8",) and not sparse:
        return signed(act_bits)
    width = act_bits
    if "int4" in modes:
        width = max(width, 10)
    if "binary" in modes:
        width = max(width, 16)
    if sparse:
        width = max(width, 4 * act_bits)
    return unsigned(width)


def weight_lane_shape(weight_bits=8, sparse=False):
    """Shape of a weight register: the value, plus a 2-bit group index with 2:4 built."""
    return unsigned(weight_bits + INDEX_BITS) if sparse else signed(weight_bits)


def pe_signature(*, act_bits=9, weight_bits=8, acc_bits=32, modes=("int8",), sparse=False):
    """The port signature of a PE with these parameters (validated)."""
    for name, value, lo, hi in (("act_bits", act_bits, 2, 33),
                                ("weight_bits", weight_bits, 2, 32),
                                ("acc_bits", acc_bits, 2, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
    if isinstance(modes, str) or not isinstance(modes, (tuple, list)) or \
            not all(mode in MODES for mode in modes) or "int8" not in modes or \
            len(set(modes)) != len(modes):
        raise ValueError(f"modes must be a tuple of distinct {', '.join(MODES)} including "
                         f"'int8', not {modes!r}")
    if set(modes) != {"int8"} and (act_bits, weight_bits) != (9, 8):
        raise ValueError(f"packed modes need act_bits=9 and weight_bits=8, not "
                         f"{act_bits} and {weight_bits}")
    if not isinstance(sparse, bool):
        raise ValueError(f"sparse must be a boolean, not {sparse!r}")
    bus = act_lane_shape(modes, act_bits, sparse)
    weight = weight_lane_shape(weight_bits, sparse)
    return wiring.Signature({
        "act_in": In(bus),
        "mode_in": In(MODE_BITS),
        "swap_in": In(1),
        "act_out": Out(bus),
        "mode_out": Out(MODE_BITS),
        "swap_out": Out(1),
        "psum_in": In(signed(acc_bits)),
        "psum_out": Out(signed(acc_bits)),
        "shift": In(1),
        "w_shadow_in": In(weight),
        "w_shadow_out": Out(weight),
    })


class ProcessingElement(wiring.Component):
    """One MAC cell.

    Parameters
    ----------
    act_bits : int
        Width of an int8-mode activation after zero-point subtraction (``lane_bits + 1``).
    weight_bits : int
        Width of a weight lane.
    acc_bits : int
        Width of the partial sum.
    modes : tuple of str
        Precision modes to build (``"int8"`` always; ``"int4"``, ``"binary"``).
    sparse : bool
        Build the int8 2:4 selection (wide activation bus, 2-bit weight index).
    """

    def __init__(self, *, act_bits=9, weight_bits=8, acc_bits=32, modes=("int8",),
                 sparse=False):
        signature = pe_signature(act_bits=act_bits, weight_bits=weight_bits,
                                 acc_bits=acc_bits, modes=modes, sparse=sparse)
        self._sparse = sparse
        self._act_bits = act_bits
        self._weight_bits = weight_bits
        self._acc_bits = acc_bits
        self._modes = tuple(mode for mode in MODES if mode in modes)
        super().__init__(signature)

    @property
    def act_bits(self):
        return self._act_bits

    @property
    def weight_bits(self):
        return self._weight_bits

    @property
    def acc_bits(self):
        return self._acc_bits

    @property
    def modes(self):
        return self._modes

    @property
    def sparse(self):
        return self._sparse

    def elaborate(self, platform):
        m = Module()
        modes = self._modes
        wb, ab = self._weight_bits, self._act_bits
        w_register = Signal(weight_lane_shape(wb, self._sparse), name="w_active")
        w_active = w_register[:wb].as_signed()
        mode_late = Signal(MODE_BITS)   # the mode of the row in the product register
        act = self.act_out
        int8_value = act[:ab].as_signed()
        if self._sparse:
            # 2:4: the activation of the group that this PE's weight sits at.
            index = w_register[wb:wb + INDEX_BITS]
            group = [act[j * ab:(j + 1) * ab] for j in range(4)]
            selected = Mux(index[1], Mux(index[0], group[3], group[2]),
                           Mux(index[0], group[1], group[0])).as_signed()
            int8_value = Mux(self.mode_out == SPARSE_MODE_CODE, selected, int8_value)

        m.d.sync += [
            self.act_out.eq(self.act_in),
            self.mode_out.eq(self.mode_in),
            self.swap_out.eq(self.swap_in),
            mode_late.eq(self.mode_out),
        ]
        with m.If(self.swap_in):
            m.d.sync += w_register.eq(self.w_shadow_out)
        with m.If(self.shift):
            m.d.sync += self.w_shadow_out.eq(self.w_shadow_in)

        # Shared multiplier (int8, int4 pair).
        if "int4" in modes:
            is_int4 = self.mode_out == MODE_CODES["int4"]
            a_lo, a_hi = act[0:5].as_signed(), act[5:10].as_signed()
            w_lo, w_hi = w_active[0:4].as_signed(), w_active[4:8].as_signed()
            x = Mux(is_int4, a_lo + a_hi.shift_left(INT4_SPLIT), int8_value)
            y = Mux(is_int4, w_hi + w_lo.shift_left(INT4_SPLIT), w_active)
            product = Signal(signed(len(x) + len(y)))
        else:
            x, y = int8_value, w_active
            product = Signal(signed(ab + wb))
        m.d.sync += product.eq(x * y)

        contribution = product
        if "int4" in modes:
            pair_sum = ((product[:2 * INT4_SPLIT] + (1 << (INT4_SPLIT - 1)))
                        [INT4_SPLIT:2 * INT4_SPLIT]).as_signed()
            contribution = Mux(mode_late == MODE_CODES["int4"], pair_sum, contribution)
        if "binary" in modes:
            matches = Signal(range(9))
            agree = ~(act[0:8] ^ w_active.as_unsigned()[0:8]) & act[8:16]
            m.d.sync += matches.eq(sum(agree[i] for i in range(8)))
            contribution = Mux(mode_late == MODE_CODES["binary"], matches.shift_left(1),
                               contribution)

        m.d.sync += self.psum_out.eq(self.psum_in + contribution)
        return m
