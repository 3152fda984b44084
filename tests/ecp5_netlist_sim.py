"""A cycle simulator of ECP5 netlists written by yosys (JSON), for the flow's tests.

It evaluates the cells ``synth_ecp5`` leaves in a small design — ``LUT4``, ``CCU2C``,
``PFUMX``, ``L6MUX21``, ``TRELLIS_FF`` and ``MULT18X18D`` with or without its input and
output registers — so that a netlist before and after
:func:`npugen.flows.synth.pack_dsp_registers` (and the Amaranth design it came from) can
be compared cycle by cycle.  The cell behaviour follows yosys' ``ecp5/cells_sim.v``; the
DSP registers load on the clock edge when their enable is high and clear when their
reset is high.  Single clock, every register clocked by it; no other cell is accepted.
"""

from __future__ import annotations

__all__ = ["NetlistSim"]

_COMB = {"LUT4", "CCU2C", "PFUMX", "L6MUX21", "MULT18X18D"}


def _bits_param(cell, name, width):
    """A bit-vector parameter (yosys writes them MSB first) as an int."""
    value = cell.get("parameters", {}).get(name, "0" * width)
    if isinstance(value, int):
        return value
    return int(value.strip() or "0", 2)


def _str_param(cell, name, default):
    value = cell.get("parameters", {}).get(name, default)
    return value.strip() if isinstance(value, str) else value


class NetlistSim:
    """Simulate module ``top`` of a yosys JSON ``netlist`` (a dict)."""

    def __init__(self, netlist: dict, top: str):
        module = netlist["modules"][top]
        self.ports = {name: port for name, port in module["ports"].items()}
        self.cells = module["cells"]
        for name, cell in self.cells.items():
            if cell["type"] not in _COMB | {"TRELLIS_FF"}:
                raise ValueError(f"cell {name}: type {cell['type']} is not simulated")
        self.values: dict = {}
        self.dsp_state = {name: {"A": 0, "B": 0, "P": 0} for name, c in self.cells.items()
                          if c["type"] == "MULT18X18D"}
        for name, cell in self.cells.items():
            if cell["type"] == "TRELLIS_FF":
                init = 1 if _str_param(cell, "REGSET", "RESET") == "SET" else 0
                self.values[cell["connections"]["Q"][0]] = init
        self.order = self._levelize()

    # -- structure -----------------------------------------------------------------------

    def _is_registered(self, cell, group):
        return _str_param(cell, f"{group}_CLK", "NONE") != "NONE"

    def _comb_inputs(self, cell):
        kind, conn = cell["type"], cell["connections"]
        if kind == "LUT4":
            return [conn.get(p, ["0"])[0] for p in "ABCD"]
        if kind == "CCU2C":
            return [conn.get(p, ["0"])[0] for p in
                    ("A0", "B0", "C0", "D0", "A1", "B1", "C1", "D1", "CIN")]
        if kind == "PFUMX":
            return [conn[p][0] for p in ("ALUT", "BLUT", "C0")]
        if kind == "L6MUX21":
            return [conn[p][0] for p in ("D0", "D1", "SD")]
        # MULT18X18D: combinational from the pins of unregistered operands, unless the
        # output is registered.
        if self._is_registered(cell, "REG_OUTPUT"):
            return []
        pins = []
        for group, port in (("REG_INPUTA", "A"), ("REG_INPUTB", "B")):
            if not self._is_registered(cell, group):
                pins += [conn.get(f"{port}{i}", ["0"])[0] for i in range(18)]
        return pins + [conn.get("SIGNEDA", ["0"])[0], conn.get("SIGNEDB", ["0"])[0]]

    def _comb_outputs(self, cell):
        return [bits[0] for port, bits in cell["connections"].items()
                if cell["port_directions"].get(port) == "output"]

    def _levelize(self):
        producers = {}
        comb = [name for name, cell in self.cells.items() if cell["type"] in _COMB]
        for name in comb:
            for bit in self._comb_outputs(self.cells[name]):
                producers[bit] = name
        order, state = [], {}

        def visit(name):
            mark = state.get(name)
            if mark == 2:
                return
            if mark == 1:
                raise ValueError(f"combinational loop through {name}")
            state[name] = 1
            for bit in self._comb_inputs(self.cells[name]):
                if bit in producers:
                    visit(producers[bit])
            state[name] = 2
            order.append(name)

        for name in comb:
            visit(name)
        return order

    # -- evaluation ------------------------------------------------------------------------

    def _get(self, bit):
        if isinstance(bit, str):
            return 1 if bit == "1" else 0
        return self.values.get(bit, 0)

    def _word(self, cell, port, width):
        conn = cell["connections"]
        return sum(self._get(conn.get(f"{port}{i}", ["0"])[0]) << i for i in range(width))

    @staticmethod
    def _signed(value, bits, signed):
        return value - (1 << bits) if signed and value >> (bits - 1) else value

    def _dsp_product(self, name, cell):
        state = self.dsp_state[name]
        a = state["A"] if self._is_registered(cell, "REG_INPUTA") else self._word(cell, "A", 18)
        b = state["B"] if self._is_registered(cell, "REG_INPUTB") else self._word(cell, "B", 18)
        conn = cell["connections"]
        sa, sb = self._get(conn.get("SIGNEDA", ["0"])[0]), self._get(conn.get("SIGNEDB", ["0"])[0])
        return (self._signed(a, 18, sa) * self._signed(b, 18, sb)) & ((1 << 36) - 1)

    def _eval(self, name):
        cell = self.cells[name]
        kind, conn, out = cell["type"], cell["connections"], self.values
        if kind == "LUT4":
            init = _bits_param(cell, "INIT", 16)
            index = sum(self._get(conn.get(p, ["0"])[0]) << i for i, p in enumerate("ABCD"))
            out[conn["Z"][0]] = (init >> index) & 1
        elif kind == "PFUMX":
            out[conn["Z"][0]] = self._get(conn["ALUT"][0]) if self._get(conn["C0"][0]) \
                else self._get(conn["BLUT"][0])
        elif kind == "L6MUX21":
            out[conn["Z"][0]] = self._get(conn["D1"][0]) if self._get(conn["SD"][0]) \
                else self._get(conn["D0"][0])
        elif kind == "CCU2C":
            carry = self._get(conn.get("CIN", ["0"])[0])
            for half in (0, 1):
                init = _bits_param(cell, f"INIT{half}", 16)
                inject = _str_param(cell, f"INJECT1_{half}", "YES") == "YES"
                ins = [self._get(conn.get(f"{p}{half}", ["0"])[0]) for p in "ABCD"]
                lut4 = (init >> sum(v << i for i, v in enumerate(ins))) & 1
                lut2 = (init >> (ins[0] | ins[1] << 1)) & 1
                if f"S{half}" in conn:
                    out[conn[f"S{half}"][0]] = lut4 ^ (0 if inject else carry)
                carry = ((1 - lut4) & (0 if inject else lut2)) | (lut4 & carry)
            if "COUT" in conn:
                out[conn["COUT"][0]] = carry
        else:  # MULT18X18D
            product = self.dsp_state[name]["P"] if self._is_registered(cell, "REG_OUTPUT") \
                else self._dsp_product(name, cell)
            for i in range(36):
                if f"P{i}" in conn and not isinstance(conn[f"P{i}"][0], str):
                    out[conn[f"P{i}"][0]] = (product >> i) & 1

    def _register_update(self, cell, group, current, data):
        """Next value of a DSP register group from its CE/RST selections."""
        conn = cell["connections"]
        ce = self._get(conn.get(_str_param(cell, f"{group}_CE", "CE0"), ["1"])[0])
        rst = self._get(conn.get(_str_param(cell, f"{group}_RST", "RST0"), ["0"])[0])
        return 0 if rst else (data if ce else current)

    def step(self, inputs: dict) -> dict:
        """Apply ``inputs`` (port name → int), evaluate, return every output port, then
        clock once."""
        for name, value in inputs.items():
            for i, bit in enumerate(self.ports[name]["bits"]):
                if not isinstance(bit, str):
                    self.values[bit] = (value >> i) & 1
        for name in self.order:
            self._eval(name)
        outputs = {name: sum(self._get(bit) << i for i, bit in enumerate(port["bits"]))
                   for name, port in self.ports.items() if port["direction"] == "output"}
        updates = {}
        for name, cell in self.cells.items():
            conn = cell["connections"]
            if cell["type"] == "TRELLIS_FF":
                ce = {"1": 1, "0": 0}.get(_str_param(cell, "CEMUX", "1"))
                if ce is None:
                    ce = self._get(conn["CE"][0])
                    if _str_param(cell, "CEMUX", "CE") == "INV":
                        ce ^= 1
                lsr = self._get(conn.get("LSR", ["0"])[0])
                if _str_param(cell, "LSRMUX", "LSR") == "INV":
                    lsr ^= 1
                q = conn["Q"][0]
                if lsr:
                    updates[q] = 1 if _str_param(cell, "REGSET", "RESET") == "SET" else 0
                elif ce:
                    updates[q] = self._get(conn["DI"][0])
            elif cell["type"] == "MULT18X18D":
                state = self.dsp_state[name]
                new = dict(state)
                for group, port in (("REG_INPUTA", "A"), ("REG_INPUTB", "B")):
                    if self._is_registered(cell, group):
                        new[port] = self._register_update(cell, group, state[port],
                                                          self._word(cell, port, 18))
                if self._is_registered(cell, "REG_OUTPUT"):
                    new["P"] = self._register_update(cell, "REG_OUTPUT", state["P"],
                                                     self._dsp_product(name, cell))
                updates[name] = new
        for key, value in updates.items():
            if key in self.dsp_state:
                self.dsp_state[key] = value
            else:
                self.values[key] = value
        return outputs
