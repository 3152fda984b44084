"""The AXI4-Lite register file (``hw/registers.py``): cocotb on Verilator against the
golden register model, plus elaboration checks.

One Verilator model (tiny preset) serves every test.  Each test runs one cocotb test of
``sim/tb_registers.py``; seeds are printed and a failing run is reproduced with the same
seed.  The bus-pattern test runs the random workload under every pattern of
``tb_registers.PATTERNS`` (idle and back-pressure on all five channels).
"""

import re

import pytest
from amaranth.hdl import Fragment
from amaranth.lib.wiring import In, Out

from npugen.golden import regmap
from npugen.golden.config import PRESETS
from npugen.hw.isa import NPUError
from npugen.hw.registers import SAMPLED, RegisterFile
from npugen.sim import registers_sim
from npugen.sim.registers_sim import run_registers
from npugen.sim.tb_registers import PATTERNS

CONFIG = PRESETS["tiny"]


@pytest.mark.parametrize("testcase, seed", [
    ("reset_values_and_access", 101),
    ("byte_strobes_and_unaligned_addresses", 102),
    ("run_sequencing", 103),
    ("counters_wide", 104),
    ("irq_behaviour", 105),
    ("independent_aw_w", 106),
])
def test_register_file(testcase, seed, tmp_path):
    print(f"seed={seed}")
    run_registers(CONFIG, testcase, seed=seed, work_dir=tmp_path)


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_bus_patterns(pattern, tmp_path):
    seed = 200 + list(PATTERNS).index(pattern)
    print(f"seed={seed} pattern={pattern}")
    run_registers(CONFIG, "bus_patterns", seed=seed, pattern=pattern, work_dir=tmp_path)


def test_run_sequencing_other_seed(tmp_path):
    seed = 1103
    print(f"seed={seed}")
    run_registers(CONFIG, "run_sequencing", seed=seed, pattern="random", work_dir=tmp_path)


def test_every_testcase_is_run():
    """The tests above cover every cocotb test of the testbench."""
    import npugen.sim.tb_registers as tb
    tests = {name for name, obj in vars(tb).items() if hasattr(obj, "generate_tests")}
    assert tests == set(registers_sim.TESTCASES)


def test_run_registers_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"^testcase must be one of .*, not 'nope'$"):
        run_registers(CONFIG, "nope", seed=0, work_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^pattern must be one of .*, not 'nope'$"):
        run_registers(CONFIG, "bus_patterns", seed=0, pattern="nope", work_dir=tmp_path)


# -- elaboration and interface ----------------------------------------------------------

def test_rejects_non_config():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 3$"):
        RegisterFile(3)


def test_ports():
    dut = RegisterFile(CONFIG)
    members = dict(dut.signature.members)
    assert members["axil"].flow == In
    assert members["axil"].signature.addr_width == 12
    outputs = {"start", "irq", "busy", *(name.lower() for name in SAMPLED)}
    inputs = {"finish", "fail", "fail_code", "fail_detail", "fail_pc", "retire", "unit_busy"}
    assert {name for name, m in members.items() if m.flow == Out} == outputs
    assert {name for name, m in members.items() if m.flow == In} == inputs | {"axil"}
    assert members["unit_busy"].shape == 4
    assert members["fail_code"].shape is NPUError
    assert dut.register_map == regmap.register_map(CONFIG)
    Fragment.get(dut, None)


def test_error_codes_mirror_hardware():
    assert [(e.value, e.name) for e in NPUError] == \
        [(e.code, e.name) for e in regmap.ERRORS]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_generates_for_every_preset(preset):
    """The register file of every preset converts to Verilog with its ports (the ID
    block's values are checked on the tiny preset's RTL by ``reset_values_and_access``)."""
    text = registers_sim.registers_verilog(PRESETS[preset])
    assert re.search(r"^module npu_registers\(", text, re.MULTILINE)
    for port in ("axil__awaddr", "axil__rdata", "start", "prog_addr", "irq", "unit_busy"):
        assert re.search(rf"^\s*(input|output) .*\b{port};$", text, re.MULTILINE), port
