"""Weight-stationary processing element with run-time precision modes.

Each PE holds an *active* weight used by its datapath and a *shadow* weight that the
next tile's weights shift through (column-wise, bottom to top) while the array keeps
computing.  The ``swap`` flag travels with the first activation row of a tile; when it
arrives the shadow weight becomes active, so the switch follows the skewed wavefront
exactly and consecutive tiles need no drain.  The precision ``mode`` travels with every
activation the same way, so rows of different modes can follow each other.

Per clock edge::

    act_out  <= act_in;  mode_out <= mode_in        (passed right)
    w_active <= w_shadow_out                        if swap_in
    x, y     <= X(act_in, mode_in), Y(w_next, mode_in)   operands of the row entering act_out
    product  <= x * y  (0 for a binary row)         one multiplier for int8, int4, 2:4
    matches  <= popcount(~(act_out ^ w_active) & mask)   binary rows only, else 0
    psum_out <= psum_in + contribution              (wraps modulo 2**acc_bits)
    w_shadow_out <= w_shadow_in                     if shift  (passed up)

``w_next`` is the weight the row will use: ``w_shadow_out`` when it carries ``swap``,
else ``w_active``.  No register but ``swap_out`` has a reset (a tile always swaps its
weights in before use, and rows that are not valid are never accumulated): the
multiplier's operand registers, the active weight and the product register are exactly
the input and output registers of a ``MULT18X18D`` block on ECP5, so the multiply has a
cycle of its own (``npugen.flows.synth.pack_dsp_registers`` moves them into the block),
and a local reset of the unit around the array reaches only the swap flags.  Without int4
and 2:4 the operands are ``act_out`` and ``w_active`` themselves.

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

* bf16 (``"bf16"`` built): bits [0, 16) hold a BF16 activation, bit 16 says whether
  it is a real K element; the GEMM core fills only the lanes of even PE rows.

Contribution: int8 and int8 2:4 ``a·w``; int4 ``a_lo·w_lo + a_hi·w_hi``; binary
``2·popcount(XNOR(a, w) & valid)`` (the array adds ``−K`` once per row at the top).

BF16 MAC (``"bf16"`` built): a BF16 weight is the PE's own weight byte (low) and the
byte of the PE below it (high, taken from ``w_shadow_in`` at the swap, when the PE
below still holds its shadow weight of the same tile), so the even PE row 2j of a
tile holds weight j.  A bf16 row with a real activation computes
``psum_out = fp32(psum_in + fp32(a · w))``: the product is exact in FP32 unless it
leaves FP32's normal range (then rounded once), the sum rounded to nearest even
(:class:`~npugen.hw.fp_multiplier.FloatMultiplier` with BF16 operands and an FP32
result, :class:`~npugen.hw.fp_adder.FloatAdder`, both combinational between the same
registers as the integer product and sum).  Other bf16 rows pass ``psum_in`` on
unchanged, so a column sums its real products in row order starting from the ``+0``
at the top.

The two int4 products share the int8 multiplier: with ``X = a_lo + a_hi·2⁹`` and
``Y = w_hi + w_lo·2⁹``, ``X·Y = a_lo·w_hi + (a_lo·w_lo + a_hi·w_hi)·2⁹ + a_hi·w_lo·2¹⁸``;
since ``|a_lo·w_hi| ≤ 120 < 2⁸``, bits [9, 18) of ``X·Y + 2⁸`` are the wanted sum: the
field ``X·Y[9:18]`` plus bit 8 (set exactly when the low term is negative), which is
the carry input of the partial-sum adder.  A 14×13-bit product fits one 18×18 DSP.

Binary rows clear the product register (a synchronous reset of the DSP's output
register) and the matches are zero in other rows, so twice the matches is simply ORed
into bits 1–4 of the contribution.  The popcount is written as LUT-sized logic
(:func:`popcount8`): two 4-bit counts and a 3-bit addition, no carry chain.  Modes that
are not built leave no logic.

Latency: ``act_out`` 1 cycle after ``act_in``; ``psum_out`` carries the contribution of
an activation 2 cycles after it reached ``act_out``, so a column of PEs fed with a
1-cycle skew per row accumulates in one pass.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.floating import BFLOAT16, FLOAT32
from npugen.golden.precision import MODE_CODES, MODES, SPARSE_MODE_CODE, mode_bits

from .fp_adder import FloatAdder
from .fp_multiplier import FloatMultiplier

__all__ = ["ProcessingElement", "INDEX_BITS", "BF16_LANE_BITS", "act_lane_shape",
           "weight_lane_shape", "pe_signature", "popcount8"]

#: Width of a bf16 activation lane: the value and its "real K element" bit.
BF16_LANE_BITS = 17
#: Bit offset of the int4 pair packing in the shared multiplier.
INT4_SPLIT = 9
#: Width of a 2:4 weight's position inside its group of 4 K elements.
INDEX_BITS = 2


def popcount8(bits):
    """The number of ones among 8 bits (4 bits wide), as logic for 4-input LUTs.

    Two 4-bit population counts (3 outputs, each a function of 4 inputs) and a 3-bit
    addition written out bit by bit: no adder cell for synthesis to put on a carry
    chain.  Both halves are at most 4, so a set bit 2 implies clear bits 0 and 1.
    """
    bits = Value.cast(bits)
    if len(bits) != 8:
        raise ValueError(f"popcount8 needs 8 bits, not {len(bits)}")

    def pop4(b):
        ones = b[0] & b[1] & b[2] & b[3]
        two_or_more = (b[0] & b[1]) | (b[2] & b[3]) | ((b[0] ^ b[1]) & (b[2] ^ b[3]))
        return b[0] ^ b[1] ^ b[2] ^ b[3], two_or_more & ~ones, ones

    x0, x1, x2 = pop4(bits[0:4])
    y0, y1, y2 = pop4(bits[4:8])
    k0 = x0 & y0
    k1 = (x1 & y1) | (k0 & (x1 ^ y1))
    return Cat(x0 ^ y0, x1 ^ y1 ^ k0, (x2 ^ y2) | k1, x2 & y2)


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
    if "bf16" in modes:
        width = max(width, BF16_LANE_BITS)
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
        "mode_in": In(mode_bits(modes, sparse)),
        "swap_in": In(1),
        "act_out": Out(bus),
        "mode_out": Out(mode_bits(modes, sparse)),
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
        Precision modes to build (``"int8"`` always; ``"int4"``, ``"binary"``, ``"bf16"``).
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

        # Pass-through registers (the activation bus, its mode and swap flag go right).
        # Only swap_out has a reset: the other registers of the PE hold data of rows
        # and weights that are always replaced before they are used, so the local clear
        # of the unit around the array need not reach them (a reset net to every
        # flip-flop of the array does not route well).
        act_out = _data_register(self.act_out, "act_q")
        mode_out = _data_register(self.mode_out, "mode_q")
        w_shadow_out = _data_register(self.w_shadow_out, "w_shadow_q")
        m.d.comb += [self.act_out.eq(act_out), self.mode_out.eq(mode_out),
                     self.w_shadow_out.eq(w_shadow_out)]
        m.d.sync += [
            act_out.eq(self.act_in),
            mode_out.eq(self.mode_in),
            self.swap_out.eq(self.swap_in),
        ]
        with m.If(self.shift):
            m.d.sync += w_shadow_out.eq(self.w_shadow_in)

        # The active weight: no reset (a tile always swaps its weights in before use), so
        # that with its enable it is exactly a DSP block's input register.
        w_register = Signal(weight_lane_shape(wb, self._sparse), name="w_active",
                            reset_less=True)
        with m.If(self.swap_in):
            m.d.sync += w_register.eq(self.w_shadow_out)

        # The multiplier's operand registers, loaded in the cycle the activation enters
        # act_out.  Without int4 and 2:4 they are a copy of act_out (the same flip-flops
        # after synthesis) and the active weight; otherwise the operands of the row's mode
        # are formed from the PE's inputs (the weight the row uses is the shadow one when
        # it carries swap).
        y = w_register[:wb].as_signed()
        if "int4" in modes or self._sparse:
            w_next = Mux(self.swap_in, self.w_shadow_out, w_register)
            x = self._x_operand(m, w_next)
            if "int4" in modes:
                y = self._y_operand(m, w_next[:wb].as_signed())
        else:
            x = Signal(signed(ab), name="x", reset_less=True)
            m.d.sync += x.eq(self.act_in[:ab])

        # The product register.  A binary row clears it (its multiplier operands are not
        # meaningful), so that the popcount can simply be ORed into the contribution.
        # bf16 rows clear it too: their contribution is the FP32 sum below.
        clears = [mode for mode in ("binary", "bf16") if mode in modes]
        product = Signal(signed(len(x) + len(y)), name="product", reset_less=True)
        if clears:
            no_product = Signal(name="no_product_mid", reset_less=True)
            m.d.sync += no_product.eq(Cat(self.mode_in == MODE_CODES[mode]
                                          for mode in clears).any())
            m.d.sync += product.eq(Mux(no_product, 0, x * y))
        else:
            m.d.sync += product.eq(x * y)
        if "binary" in modes:
            binary_mid = Signal(name="binary_mid", reset_less=True)
            m.d.sync += binary_mid.eq(self.mode_in == MODE_CODES["binary"])

        contribution, carry = product, 0
        if "int4" in modes:
            int4_mid = Signal(name="int4_mid", reset_less=True)
            int4_late = Signal(name="int4_late", reset_less=True)
            m.d.sync += [int4_mid.eq(self.mode_in == MODE_CODES["int4"]),
                         int4_late.eq(int4_mid)]
            # The pair's sum is the 9-bit field at bit 9, rounded by the bit below it
            # (set exactly when the low cross term is negative).
            pair = product[INT4_SPLIT:2 * INT4_SPLIT].as_signed()
            contribution = Mux(int4_late, pair, product)
            carry = int4_late & product[INT4_SPLIT - 1]
        if "binary" in modes:
            act = self.act_out
            agree = Signal(8, name="agree")
            m.d.comb += agree.eq(~(act[0:8] ^ w_register.as_unsigned()[0:8]) & act[8:16])
            matches = Signal(4, name="matches", reset_less=True)
            m.d.sync += matches.eq(Mux(binary_mid, popcount8(agree), 0))
            # Twice the matches: bits 1-4, where a binary row's product is zero.
            contribution = Cat(contribution[0], contribution[1:5] | matches,
                               contribution[5:]).as_signed()

        integer_sum = self.psum_in + contribution + carry
        psum_out = _data_register(self.psum_out, "psum_q")
        m.d.comb += self.psum_out.eq(psum_out)
        if "bf16" in modes:
            m.d.sync += psum_out.eq(Mux(self._bf16_mac(m, w_register), self._fp32_sum,
                                        integer_sum))
        else:
            m.d.sync += psum_out.eq(integer_sum)
        return m

    def _bf16_mac(self, m, w_register):
        """The BF16 datapath (operand registers, FP32 product register, FP32 adder);
        returns the flag that selects its sum for ``psum_out`` and sets ``_fp32_sum``."""
        w_low = Mux(self.swap_in, self.w_shadow_out, w_register)[:8]
        w_high = Signal(8, name="w_high", reset_less=True)
        with m.If(self.swap_in):
            m.d.sync += w_high.eq(self.w_shadow_in[:8])
        w_high_next = Mux(self.swap_in, self.w_shadow_in[:8], w_high)

        # Operand registers (loaded with x and y), the FP32 product register (with the
        # integer product) and the flag of a real bf16 element at each.
        m.submodules.bf16_mul = mul = FloatMultiplier(FLOAT32, operand_fmt=BFLOAT16, latency=0)
        m.submodules.fp32_add = add = FloatAdder(FLOAT32, latency=0)
        a = Signal(16, name="bf16_a", reset_less=True)
        w = Signal(16, name="bf16_w", reset_less=True)
        live_mid = Signal(name="bf16_mid", reset_less=True)
        live_late = Signal(name="bf16_late", reset_less=True)
        fp_product = Signal(32, name="fp32_product", reset_less=True)
        m.d.sync += [
            a.eq(self.act_in[:16]),
            w.eq(Cat(w_low, w_high_next)),
            live_mid.eq((self.mode_in == MODE_CODES["bf16"]) & self.act_in[16]),
            live_late.eq(live_mid),
            fp_product.eq(mul.result.payload.as_value()),
        ]
        m.d.comb += [
            mul.operands.payload.a.as_value().eq(a),
            mul.operands.payload.b.as_value().eq(w),
            mul.operands.valid.eq(live_mid),
            add.operands.payload.a.as_value().eq(self.psum_in),
            add.operands.payload.b.as_value().eq(fp_product),
            add.operands.valid.eq(live_late),
        ]
        self._fp32_sum = add.result.payload.as_value()
        return live_late

    def _x_operand(self, m, w_next):
        """The activation operand register: int8 value, the 2:4 selection or an int4 pair."""
        ab, wb = self._act_bits, self._weight_bits
        act, mode = self.act_in, self.mode_in
        value = act[:ab].as_signed()
        if self._sparse:
            # 2:4: the activation of the group that this PE's weight sits at.
            index = w_next[wb:wb + INDEX_BITS]
            group = [act[j * ab:(j + 1) * ab] for j in range(4)]
            selected = Mux(index[1], Mux(index[0], group[3], group[2]),
                           Mux(index[0], group[1], group[0])).as_signed()
            value = Mux(mode == SPARSE_MODE_CODE, selected, value)
        if "int4" in self._modes:
            a_lo, a_hi = act[0:5].as_signed(), act[5:10].as_signed()
            value = Mux(mode == MODE_CODES["int4"], a_lo + a_hi.shift_left(INT4_SPLIT), value)
        x = Signal(signed(len(value)), name="x", reset_less=True)
        m.d.sync += x.eq(value)
        return x

    def _y_operand(self, m, weight):
        """The weight operand register: the int8 weight, or the int4 pair ``w_hi + w_lo·2⁹``."""
        w_lo, w_hi = weight[0:4].as_signed(), weight[4:8].as_signed()
        value = Mux(self.mode_in == MODE_CODES["int4"], w_hi + w_lo.shift_left(INT4_SPLIT),
                    weight)
        y = Signal(signed(len(value)), name="y", reset_less=True)
        m.d.sync += y.eq(value)
        return y


def _data_register(port, name):
    """A register without reset driving the output ``port`` (ports cannot be reset-less)."""
    return Signal.like(port, name=name, reset_less=True)
