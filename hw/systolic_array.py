"""R×C weight-stationary systolic array with input skew and output deskew.

Every input (activation row, mode, swap, ``psum_top``, weight row and shift) first passes
one input register, so the logic in front of the array ends in a flip-flop and the PEs of
row 0 and column 0 see registered operands like all others.  Activation rows enter on
the left, one K-slice of R lanes per cycle; row r is then delayed r cycles (skew) so the
wavefront crosses the array diagonally.  Partial sums flow top
to bottom; column c leaves the bottom c cycles after column 0 and is delayed
``C-1-c`` cycles (deskew) so a whole output row appears at once.

The precision ``mode`` of a row travels with it (see :mod:`npugen.hw.pe`).  In bf16
mode lane 2j carries BF16 activation j and weight rows 2j, 2j+1 the low and high bytes
of BF16 weight row j: the even PE rows do the multiply-adds, in FP32.  With
``sparse=True`` every activation lane carries the 4 activations of its row pair's group
and every weight lane a value plus a 2-bit index (2:4 structured sparsity: rows 2g and
2g+1 hold the two kept weights of group g; the controller feeds both rows the same
group).  ``psum_top``
is added to the row's partial sums at the top of every column (binary mode uses it for
the ``−K`` of ``2·popcount − K``); it follows row 0 along a register chain.

Weights shift in from the bottom of every column, one weight row per ``w_shift``
pulse, column c delayed c cycles so its shadow chain follows the activation
wavefront.  After R pulses shadow row r holds the r-th row pulsed in.

This block is a fixed-latency pipeline without back-pressure: the controller in
:mod:`npugen.hw.gemm_core` decides when rows and weights enter and tracks them with a
matching delay line.

Timing (cycle t = cycle in which an input is presented):

* ``psum`` for the activation row presented in cycle t is readable in cycle
  ``t + latency`` with ``latency = rows + cols + 2``.
* A weight row presented with ``w_shift`` in cycle t lands in the shadow chains at
  the clock edges ``t+2+c`` (column c).
* The ``swap`` of an activation row presented in cycle t takes effect in PE(r, c)
  at edge ``t+2+r+c``.

Weights and activations pass the same input register, so their relative timing (and the
controller's double-buffering rules) does not depend on it.
"""

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from npugen.golden.precision import mode_bits

from .pe import ProcessingElement, act_lane_shape, pe_signature, weight_lane_shape

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """The PE grid of a design point.

    Parameters
    ----------
    rows, cols : int
        Array size (R × C).
    act_bits : int
        Width of a zero-point-corrected int8 activation lane.
    weight_bits : int
        Width of a weight lane.
    acc_bits : int
        Width of the partial sums.
    modes : tuple of str
        Precision modes built into the PEs.
    sparse : bool
        Build the int8 2:4 selection into the PEs (see :mod:`npugen.hw.pe`).
    pe_module : str or None
        ``None`` builds the PEs inline (simulatable with the Amaranth simulator).  A name
        instantiates every PE as that Verilog module instead, to be generated once from
        :meth:`pe_component`; this keeps the hierarchy and makes large arrays elaborate
        in seconds.
    """

    def __init__(self, *, rows, cols, act_bits=9, weight_bits=8, acc_bits=32, modes=("int8",),
                 sparse=False, pe_module=None):
        for name, value in (("rows", rows), ("cols", cols)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an integer in 1..64, not {value!r}")
        self._pe_signature = pe_signature(act_bits=act_bits, weight_bits=weight_bits,
                                          acc_bits=acc_bits, modes=modes, sparse=sparse)
        if sparse and rows % 2:
            raise ValueError(f"sparse needs an even number of rows, not {rows}")
        if pe_module is not None and (not isinstance(pe_module, str) or
                                      not pe_module.isidentifier()):
            raise ValueError(f"pe_module must be a Verilog identifier or None, not {pe_module!r}")
        self._rows = rows
        self._cols = cols
        self._act_bits = act_bits
        self._weight_bits = weight_bits
        self._acc_bits = acc_bits
        self._modes = tuple(modes)
        self._sparse = sparse
        self._pe_module = pe_module
        self._lane_shape = act_lane_shape(modes, act_bits, sparse)
        self._weight_shape = weight_lane_shape(weight_bits, sparse)
        super().__init__({
            "act": In(data.ArrayLayout(self._lane_shape, rows)),
            "mode": In(mode_bits(modes, sparse)),
            "swap": In(1),
            "psum_top": In(signed(acc_bits)),
            "w_row": In(data.ArrayLayout(self._weight_shape, cols)),
            "w_shift": In(1),
            "psum": Out(data.ArrayLayout(signed(acc_bits), cols)),
        })

    def pe_component(self):
        """A standalone PE of this array (what ``pe_module`` must be generated from)."""
        return ProcessingElement(act_bits=self._act_bits, weight_bits=self._weight_bits,
                                 acc_bits=self._acc_bits, modes=self._modes,
                                 sparse=self._sparse)

    @property
    def sparse(self):
        return self._sparse

    @property
    def rows(self):
        return self._rows

    @property
    def cols(self):
        return self._cols

    @property
    def latency(self):
        """Cycles from an activation row presented to its aligned partial-sum row."""
        return self._rows + self._cols + 2

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols

        pes = [[self._place_pe(m, r, c) for c in range(C)] for r in range(R)]

        # The input register.
        # Only the swap and shift flags have a reset: the rest is data of rows and
        # weights that are always replaced before they are used.
        act_in = Signal.like(self.act, name="act_in", reset_less=True)
        mode_in = Signal.like(self.mode, name="mode_in", reset_less=True)
        swap_in = Signal(name="swap_in")
        w_row_in = Signal.like(self.w_row, name="w_row_in", reset_less=True)
        w_shift_in = Signal(name="w_shift_in")
        m.d.sync += [act_in.eq(self.act), mode_in.eq(self.mode), swap_in.eq(self.swap),
                     w_row_in.eq(self.w_row), w_shift_in.eq(self.w_shift)]

        # Input skew: row r passes through r registers (activation, mode, swap flag).
        for r in range(R):
            act, mode, swap = act_in[r], mode_in, swap_in
            for i in range(r):
                act_q = Signal.like(pes[r][0].act_in, name=f"act_skew_{r}_{i}",
                                    reset_less=True)
                mode_q = Signal.like(mode_in, name=f"mode_skew_{r}_{i}", reset_less=True)
                swap_q = Signal(name=f"swap_skew_{r}_{i}")
                m.d.sync += [act_q.eq(act), mode_q.eq(mode), swap_q.eq(swap)]
                act, mode, swap = act_q, mode_q, swap_q
            m.d.comb += [pes[r][0].act_in.eq(act), pes[r][0].mode_in.eq(mode),
                         pes[r][0].swap_in.eq(swap)]

        # Weight skew: column c's data and shift enable pass through c registers.
        for c in range(C):
            w, shift = w_row_in[c], w_shift_in
            for i in range(c):
                w_q = Signal(self._weight_shape, name=f"w_skew_{c}_{i}", reset_less=True)
                shift_q = Signal(name=f"w_shift_skew_{c}_{i}")
                m.d.sync += [w_q.eq(w), shift_q.eq(shift)]
                w, shift = w_q, shift_q
            m.d.comb += pes[R - 1][c].w_shadow_in.eq(w)
            for r in range(R):
                m.d.comb += pes[r][c].shift.eq(shift)
            for r in range(R - 1):
                m.d.comb += pes[r][c].w_shadow_in.eq(pes[r + 1][c].w_shadow_out)

        # Horizontal activation flow and vertical partial-sum flow.
        for r in range(R):
            for c in range(1, C):
                m.d.comb += [pes[r][c].act_in.eq(pes[r][c - 1].act_out),
                             pes[r][c].mode_in.eq(pes[r][c - 1].mode_out),
                             pes[r][c].swap_in.eq(pes[r][c - 1].swap_out)]

        # psum_top follows row 0 (through the input register): PE(0, c) adds it in the
        # cycle the row's product is ready, c + 3 cycles after the row was presented.
        # Only binary mode needs it; otherwise the top partial sums are zero.
        top = self.psum_top
        for i in range(C + 2):
            if "binary" not in self._modes:
                break
            top_q = Signal(signed(self._acc_bits), name=f"psum_top_{i}", reset_less=True)
            m.d.sync += top_q.eq(top)
            top = top_q
            if i >= 2:
                m.d.comb += pes[0][i - 2].psum_in.eq(top)
        for c in range(C):
            for r in range(1, R):
                m.d.comb += pes[r][c].psum_in.eq(pes[r - 1][c].psum_out)

        # Output deskew: column c passes through C-1-c registers.
        for c in range(C):
            psum = pes[R - 1][c].psum_out
            for i in range(C - 1 - c):
                psum_q = Signal(signed(self._acc_bits), name=f"psum_deskew_{c}_{i}",
                                reset_less=True)
                m.d.sync += psum_q.eq(psum)
                psum = psum_q
            m.d.comb += self.psum[c].eq(psum)
        return m

    def _place_pe(self, m, r, c):
        """Add PE (r, c) to ``m``; return the object whose attributes are its ports."""
        name = f"pe_{r}_{c}"
        if self._pe_module is None:
            pe = m.submodules[name] = self.pe_component()
            return pe
        ports = self._pe_signature.create(path=(name,))
        connections = {"i_clk": ClockSignal(), "i_rst": ResetSignal()}
        for member_name, member in self._pe_signature.members.items():
            prefix = "i_" if member.flow == In else "o_"
            connections[prefix + member_name] = getattr(ports, member_name)
        m.submodules[name] = Instance(self._pe_module, **connections)
        return ports
