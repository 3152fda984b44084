"""The register map (``golden/regmap.py``), its host-side model and its emitters
(``flows/regmap.py``): the map against the tables of docs/ISA.md, validation, the ID
block, the model's semantics, JSON round trips, the C header compiled by gcc, Markdown,
and the files ``npugen generate`` writes."""

import dataclasses
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from npugen.flows import regmap as emit
from npugen.golden import regmap
from npugen.golden.config import PRESETS, NPUConfig
from npugen.golden.precision import MODE_CODES
from npugen.golden.regmap import (OKAY, SLVERR, ERRORS, Field, Register, RegisterFileModel,
                                  RegisterMap, register_map)

ISA = (Path(__file__).resolve().parent.parent / "docs" / "ISA.md").read_text(encoding="utf-8")


def isa_section(title):
    start = ISA.index(f"\n## {title}")
    end = ISA.find("\n## ", start + 1)
    return ISA[start:end if end >= 0 else len(ISA)]


# -- the map against docs/ISA.md ----------------------------------------------------------

def test_registers_match_isa_table():
    rows = re.findall(r"^\| (0x[0-9A-F]{3}) \| (\w+) \| (\w+) \|",
                      isa_section("Registers"), re.MULTILINE)
    assert len(rows) == len(regmap.REGISTERS) == 32
    assert [(int(o, 16), n, a) for o, n, a in rows] == \
        [(r.offset, r.name, r.access) for r in regmap.REGISTERS]


def test_constant_values_match_isa_table():
    section = isa_section("Registers")
    assert f"0x{regmap.ID_VALUE:08X}" in section and f"0x{regmap.VERSION_VALUE:08X}" in section
    assert bytes.fromhex(f"{regmap.ID_VALUE:08x}").decode() == "NPUG"


def test_errors_match_isa_table():
    rows = re.findall(r"^\| (\d+) \| (\w+) \| ([^|]*)\|", isa_section("Errors"), re.MULTILINE)
    assert [(int(c), n) for c, n, _ in rows] == [(e.code, e.name) for e in ERRORS]
    for (_, _, detail), e in zip(rows, ERRORS):
        assert detail.strip().replace("`", "") == e.detail.replace("CoreError code of the GEMM "
                                                                   "core", "CoreError code")
    assert regmap.ERROR_CODES == {e.name: e.code for e in ERRORS}


def test_errors_match_golden_isa():
    from npugen.golden.isa import NPUError
    assert [(e.value, e.name) for e in NPUError] == [(e.code, e.name) for e in ERRORS]


def test_map_layout():
    offsets = [r.offset for r in regmap.REGISTERS]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert len({r.name for r in regmap.REGISTERS}) == len(regmap.REGISTERS)
    ids = [r for r in regmap.REGISTERS if r.reset is None]
    assert [r.name for r in ids] == list(regmap.ID_BLOCK)
    assert [r.offset for r in ids] == list(range(0x100, 0x100 + 4 * len(ids), 4))
    assert all(r.access == "RO" for r in ids)
    windows = ("READ_BASE", "READ_LIMIT", "WRITE_BASE", "WRITE_LIMIT", "PROG_ADDR")
    rmap = register_map(PRESETS["tiny"])
    assert all(rmap[name].reset == 0 and rmap[name].access == "RW" for name in windows)
    assert rmap["STATUS"].field("BUSY").mask == 1
    assert rmap["STATUS"].field("DONE").mask == 2
    assert rmap["STATUS"].field("ERROR").mask == 4
    assert rmap["ERROR"].field("CODE").mask == 0xFF
    assert rmap["ERROR"].field("DETAIL").mask == 0xFF00
    assert rmap["IRQ_STATUS"].fields == rmap["IRQ_ENABLE"].fields
    assert rmap["IRQ_STATUS"].write_mask == 0b11
    assert rmap["CTRL"].write_mask == 1 and not rmap["CTRL"].readable
    assert rmap["ID"].write_mask == 0 and rmap["PROG_ADDR"].write_mask == 0xFFFFFFFF


# -- the ID block ----------------------------------------------------------------------------

@pytest.mark.parametrize("preset", list(PRESETS))
def test_id_values_of_presets(preset):
    config = PRESETS[preset]
    values = regmap.id_values(config)
    assert list(values) == list(regmap.ID_BLOCK)
    for name, param in (("ROWS", "rows"), ("COLS", "cols"), ("ACC_BITS", "acc_bits"),
                        ("ACC_DEPTH", "acc_depth"), ("AXI_DATA_BITS", "axi_data_bits"),
                        ("ACT_SP_DEPTH", "act_sp_depth"), ("WGT_SP_DEPTH", "wgt_sp_depth"),
                        ("OUT_SP_DEPTH", "out_sp_depth"), ("PARAM_SP_DEPTH", "param_sp_depth")):
        assert values[name] == getattr(config, param), name
    assert values["CONFIG_HASH"] == int(config.config_hash()[:8], 16)
    assert values["FEATURES"] == (1 if config.sparse_2_4 else 0)
    rmap = register_map(config)
    assert all(rmap[name].reset == value for name, value in values.items())


@pytest.mark.parametrize("modes, bits", [
    (("int8",), 0b001), (("int8", "int4"), 0b011), (("int8", "binary"), 0b101),
    (("binary", "int8", "int4"), 0b111)])
def test_modes_bits(modes, bits):
    config = NPUConfig(rows=2, cols=2, modes=modes)
    assert regmap.id_values(config)["MODES"] == bits
    fields = register_map(config)["MODES"].fields
    assert {f.name.lower(): f.lsb for f in fields} == MODE_CODES


def test_config_hash_differs():
    a = regmap.id_values(PRESETS["tiny"])["CONFIG_HASH"]
    b = regmap.id_values(PRESETS["tiny"].replace(sparse_2_4=False))
    assert b["CONFIG_HASH"] != a and b["FEATURES"] == 0


def test_id_values_rejects_non_config():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 'tiny'$"):
        regmap.id_values("tiny")


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, regex", [
    ({"name": "status"}, ValueError, r"^name must be an upper-case identifier, not 'status'$"),
    ({"name": 7}, TypeError, r"^name must be an upper-case identifier, not 7$"),
    ({"offset": 0x006}, ValueError, r"^offset must be a multiple of 4, not 0x6$"),
    ({"offset": 0x1000}, ValueError, r"^offset must be an integer in 0x0\.\.0xffc, not 4096$"),
    ({"offset": -4}, ValueError, r"^offset must be an integer in 0x0\.\.0xffc, not -4$"),
    ({"offset": "0x10"}, TypeError, r"^offset must be an integer in 0x0\.\.0xffc, not '0x10'$"),
    ({"access": "RC"}, ValueError, r"^access must be one of RO, WO, RW, RW1C, not 'RC'$"),
    ({"access": None}, TypeError, r"^access must be one of RO, WO, RW, RW1C, not None$"),
    ({"reset": 1 << 32}, ValueError,
     r"^reset must be an integer in 0x0\.\.0xffffffff, not 4294967296$"),
    ({"reset": True}, TypeError, r"^reset must be an integer in 0x0\.\.0xffffffff, not True$"),
    ({"reset": 0x10}, ValueError, r"^reset of X must lie within its fields, not 0x00000010$"),
    ({"description": None}, TypeError, r"^description must be a string, not None$"),
    ({"fields": (Field("A", 0, 4, ""), Field("B", 3, 2, ""))}, ValueError,
     r"^fields of X must not overlap, not 'B' at bits 3\.\.4$"),
    ({"fields": (Field("A", 0, 1, ""), Field("A", 1, 1, ""))}, ValueError,
     r"^fields of X must have distinct names, not 'A' twice$"),
    ({"fields": ("A",)}, TypeError, r"^fields must be a tuple of Field, not \('A',\)$"),
])
def test_register_rejects(kwargs, exc, regex):
    args = {"name": "X", "offset": 0, "access": "RW", "reset": 0, "description": "",
            "fields": (Field("A", 0, 4, ""),), **kwargs}
    with pytest.raises(exc, match=regex):
        Register(**args)


@pytest.mark.parametrize("args, exc, regex", [
    (("a", 0, 1, ""), ValueError, r"^name must be an upper-case identifier, not 'a'$"),
    (("A", 32, 1, ""), ValueError, r"^lsb must be an integer in 0\.\.31, not 32$"),
    (("A", 30, 3, ""), ValueError, r"^width must be an integer in 1\.\.2, not 3$"),
    (("A", 0, 0, ""), ValueError, r"^width must be an integer in 1\.\.32, not 0$"),
    (("A", 0, 1.0, ""), TypeError, r"^width must be an integer in 1\.\.32, not 1\.0$"),
])
def test_field_rejects(args, exc, regex):
    with pytest.raises(exc, match=regex):
        Field(*args)


def test_register_field_lookup():
    status = register_map(PRESETS["tiny"])["STATUS"]
    assert status.field("DONE").extract(0b110) == 1
    with pytest.raises(ValueError, match=r"^field must be one of BUSY, DONE, ERROR of STATUS, "
                                         r"not 'IDLE'$"):
        status.field("IDLE")


def test_register_map_rejects():
    rmap = register_map(PRESETS["tiny"])
    regs = rmap.registers
    with pytest.raises(ValueError, match=r"^offset must be unique, not 0x004 for both VERSION "
                                         r"and COPY$"):
        RegisterMap(regs + (dataclasses.replace(regs[0], name="COPY", offset=4),), ERRORS,
                    rmap.config)
    with pytest.raises(ValueError, match=r"^name must be unique, not 'ID' twice$"):
        RegisterMap(regs + (dataclasses.replace(regs[0], offset=0x200),), ERRORS, rmap.config)
    with pytest.raises(ValueError, match=r"^reset of ROWS must be a value in a RegisterMap, "
                                         r"not None$"):
        RegisterMap(regmap.REGISTERS, ERRORS, rmap.config)


def test_lookup():
    rmap = register_map(PRESETS["default"])
    assert len(rmap) == 32 and [r.name for r in rmap] == [r.name for r in regmap.REGISTERS]
    for reg in rmap:
        for low in range(4):
            assert rmap.at(reg.offset + low) is reg
    mapped = {r.offset for r in rmap}
    assert all(rmap.at(o) is None for o in range(0, 1 << 12, 4) if o not in mapped)
    with pytest.raises(KeyError):
        rmap["NOPE"]


# -- the host-side model -------------------------------------------------------------------

def test_model_access_semantics():
    model = RegisterFileModel(PRESETS["tiny"])
    rmap = model.map
    for reg in rmap:
        assert model.read(reg.offset) == ((reg.reset, OKAY) if reg.readable else (0, OKAY))
    assert model.read(0x050) == (0, SLVERR) and model.write(0x050, 1) == SLVERR
    assert model.write(rmap["ID"].offset, 0) == SLVERR
    assert model.read(rmap["ID"].offset) == (regmap.ID_VALUE, OKAY)
    assert model.write(rmap["PROG_ADDR"].offset, 0x12345678) == OKAY
    assert model.write(rmap["PROG_ADDR"].offset, 0xAABBCCDD, strobe=0b0100) == OKAY
    assert model.read(rmap["PROG_ADDR"].offset) == (0x12BB5678, OKAY)
    assert model.write(rmap["IRQ_ENABLE"].offset + 2, 0xFFFFFFFF) == OKAY   # low bits ignored
    assert model.read(rmap["IRQ_ENABLE"].offset) == (0b11, OKAY)
    assert model.write(rmap["CTRL"].offset, 1, strobe=0b0010) == OKAY
    assert not model.busy and model.starts == 0


def test_model_run():
    model = RegisterFileModel(PRESETS["tiny"])
    offset = {reg.name: reg.offset for reg in model.map}
    model.step(5, retire=True)                     # not running: nothing counts
    assert model.read(offset["INSTRET"])[0] == 0
    model.write(offset["READ_LIMIT"], 0x1000)
    model.write(offset["IRQ_ENABLE"], 0b01)
    model.write(offset["CTRL"], 1)
    assert model.busy and model.sampled["READ_LIMIT"] == 0x1000
    model.write(offset["READ_LIMIT"], 0x2000)
    model.write(offset["CTRL"], 1)                 # ignored while busy
    assert model.starts == 1 and model.sampled["READ_LIMIT"] == 0x1000
    model.step(3, unit_busy=0b0101, retire=True)
    model.step(2, unit_busy=0b1000)
    model.step(1, finish=True, fail=(9, 4, 0x80))  # fail wins
    values = {name: model.read(offset[name])[0] for name in offset}
    assert values["STATUS"] == 0b100 and values["ERROR"] == 9 | 4 << 8
    assert values["ERROR_PC"] == 0x80 and values["CYCLES_LO"] == 6 and values["INSTRET"] == 3
    assert [values[n] for n in regmap.UNIT_COUNTERS] == [3, 0, 3, 2]
    assert values["IRQ_STATUS"] == 0b10 and model.irq == 0
    model.write(offset["IRQ_ENABLE"], 0b10)
    assert model.irq == 1
    model.write(offset["IRQ_STATUS"], 0b01)
    assert model.irq == 1
    model.write(offset["IRQ_STATUS"], 0b10)
    assert model.irq == 0
    model.write(offset["CTRL"], 1)                 # a new run clears the last one's results
    values = {name: model.read(offset[name])[0] for name in offset}
    assert values["STATUS"] == 1 and values["ERROR"] == values["ERROR_PC"] == 0
    assert values["CYCLES_LO"] == values["INSTRET"] == 0
    model.step((1 << 32) + 1)
    model.step(1, finish=True)
    assert model.read(offset["CYCLES_HI"])[0] == 1 and model.read(offset["CYCLES_LO"])[0] == 2
    assert model.read(offset["STATUS"])[0] == 0b010


@pytest.mark.parametrize("cycles", [0, -1, 1.5, True])
def test_model_step_rejects(cycles):
    model = RegisterFileModel(PRESETS["tiny"])
    with pytest.raises(ValueError, match=rf"^cycles must be a positive integer, not "
                                         rf"{re.escape(repr(cycles))}$"):
        model.step(cycles)


def test_model_random_against_direct_semantics():
    """Random RW/RW1C writes with random strobes equal a byte-wise merge done here."""
    seed = 5
    print(f"seed={seed}")
    rng = random.Random(seed)
    model = RegisterFileModel(PRESETS["tiny"])
    mirror = {reg.offset: reg.reset for reg in model.map}
    writable = [reg for reg in model.map if reg.access in ("RW", "RW1C")]
    for _ in range(500):
        reg = rng.choice(writable)
        value, strobe = rng.getrandbits(32), rng.getrandbits(4)
        bytes_mask = sum(0xFF << 8 * i for i in range(4) if strobe >> i & 1)
        assert model.write(reg.offset, value, strobe) == OKAY
        if reg.access == "RW":
            mask = bytes_mask & reg.mask
            mirror[reg.offset] = (mirror[reg.offset] & ~mask) | (value & mask)
        else:
            mirror[reg.offset] &= ~(value & bytes_mask)
        assert model.read(reg.offset) == (mirror[reg.offset], OKAY)


# -- emitters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", list(PRESETS))
def test_json_round_trip(preset):
    rmap = register_map(PRESETS[preset])
    text = emit.regmap_json(rmap)
    data = json.loads(text)
    assert RegisterMap.from_dict(data) == rmap
    assert [r["name"] for r in data["registers"]] == [r.name for r in regmap.REGISTERS]
    assert data["config_hash"] == PRESETS[preset].config_hash()
    assert data["addr_width"] == 12 and data["data_width"] == 32
    assert {r["name"]: r["reset"] for r in data["registers"]}["ROWS"] == PRESETS[preset].rows


def _c_checks(rmap):
    """C static assertions of every emitted value, from the map itself."""
    checks = []
    for reg in rmap:
        checks.append(f"NPU_{reg.name}_OFFSET == {reg.offset}u")
        checks.append(f"NPU_{reg.name}_RESET == {reg.reset}u")
        for f in reg.fields:
            checks.append(f"NPU_{reg.name}_{f.name}_SHIFT == {f.lsb}u")
            checks.append(f"NPU_{reg.name}_{f.name}_MASK == {f.mask}u")
            checks.append(f"(NPU_{reg.name}_{f.name}_MASK >> NPU_{reg.name}_{f.name}_SHIFT) "
                          f"== {(1 << f.width) - 1}u")
    for e in rmap.errors:
        checks.append(f"NPU_ERR_{e.name} == {e.code}")
    for name, value in regmap.id_values(rmap.config).items():
        checks.append(f"NPU_CFG_{name} == {value}u")
    checks.append("NPU_REGMAP_ADDR_WIDTH == 12")
    return checks


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
@pytest.mark.parametrize("preset", ["tiny", "large"])
def test_c_header_compiles(preset, tmp_path):
    rmap = register_map(PRESETS[preset])
    header = tmp_path / "npu_regs.h"
    header.write_text(emit.c_header(rmap))
    source = tmp_path / "check.c"
    # C99: the header alone (included twice: the guard), every value used in an expression.
    plain = tmp_path / "plain.c"
    plain.write_text('#include "npu_regs.h"\n#include "npu_regs.h"\n'
                     "unsigned long long npu_sum(void) { return 0ULL"
                     + "".join(f" + ({check.split(' == ')[0]})" for check in _c_checks(rmap))
                     + "; }\n")
    # C11: every value checked at compile time against the map.
    checked = tmp_path / "checked.c"
    checked.write_text('#include "npu_regs.h"\n' + "".join(
        f'_Static_assert({check}, "{check}");\n' for check in _c_checks(rmap)) +
        "enum npu_error npu_last = NPU_ERR_CORE;\n")
    for std, source in (("c99", plain), ("c11", checked)):
        result = subprocess.run(
            ["gcc", f"-std={std}", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only",
             str(source)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_c_header_catches_a_wrong_value(tmp_path):
    """The compile check fails when an emitted value is wrong (the test can fail)."""
    rmap = register_map(PRESETS["tiny"])
    text = emit.c_header(rmap).replace("#define NPU_STATUS_OFFSET 0x00CU",
                                       "#define NPU_STATUS_OFFSET 0x010U")
    (tmp_path / "npu_regs.h").write_text(text)
    source = tmp_path / "check.c"
    source.write_text('#include "npu_regs.h"\n' + "".join(
        f'_Static_assert({check}, "x");\n' for check in _c_checks(rmap)))
    result = subprocess.run(["gcc", "-std=c11", "-fsyntax-only", str(source)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "NPU_STATUS_OFFSET" in result.stderr


def test_c_header_text():
    rmap = register_map(PRESETS["tiny"])
    text = emit.c_header(rmap)
    assert text.startswith("/* npu_regs.h") and text.endswith("#endif /* NPU_REGS_H */\n")
    defines = re.findall(r"^#define (\w+)", text, re.MULTILINE)
    assert len(defines) == len(set(defines))
    for reg in rmap:
        assert f"#define NPU_{reg.name}_OFFSET 0x{reg.offset:03X}U\n" in text
    assert f"#define NPU_CFG_CONFIG_HASH 0x{PRESETS['tiny'].config_hash()[:8].upper()}U\n" in text


def test_c_header_rejects_name_clash():
    rmap = register_map(PRESETS["tiny"])
    clash = (Register("A", 0x200, "RW", 0, "", (Field("B_X", 0, 1, ""),)),
             Register("A_B", 0x204, "RW", 0, "", (Field("X", 0, 1, ""),)))
    bad = RegisterMap(rmap.registers + clash, ERRORS, rmap.config)
    with pytest.raises(ValueError, match=r"^C name NPU_A_B_X_SHIFT is emitted for both A\.B_X "
                                         r"and A_B\.X$"):
        emit.c_header(bad)


def test_markdown():
    rmap = register_map(PRESETS["default"])
    text = emit.markdown(rmap)
    assert text.startswith("# NPU registers\n")
    for reg in rmap:
        assert re.search(rf"^\| `0x{reg.offset:03X}` \| {reg.name} \| {reg.access} \| "
                         rf"`0x{reg.reset:08X}` \|", text, re.MULTILINE), reg.name
        if reg.fields:
            assert f"### {reg.name} (`0x{reg.offset:03X}`)" in text
    for e in ERRORS:
        assert re.search(rf"^\| {e.code} \| {e.name} \|", text, re.MULTILINE)
    assert re.search(r"^\| ROWS \| 8 \|$", text, re.MULTILINE)
    assert "\\|(IRQ_STATUS & IRQ_ENABLE)" in text   # a pipe inside a cell is escaped


@pytest.mark.parametrize("function", [emit.regmap_json, emit.c_header, emit.markdown])
def test_emitters_reject_non_map(function):
    with pytest.raises(TypeError, match=r"^rmap must be a RegisterMap, not 3$"):
        function(3)


def test_regmap_files_reproducible():
    a, b = emit.regmap_files(PRESETS["tiny"]), emit.regmap_files(PRESETS["tiny"])
    assert a == b and list(a) == list(emit.FILES.values())
    other = emit.regmap_files(PRESETS["default"])
    assert all(a[name] != other[name] for name in a)


def test_generate_writes_regmap(tmp_path):
    from npugen.flows.verilog import write_outputs
    config = PRESETS["tiny"]
    manifest = write_outputs(config, tmp_path / "out")
    for key, filename in emit.FILES.items():
        assert manifest["files"][key] == filename
    for filename, text in emit.regmap_files(config).items():
        assert (tmp_path / "out" / filename).read_text(encoding="utf-8") == text
