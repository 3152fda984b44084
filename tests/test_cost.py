import json
import re

import pytest

from npugen.flows import cost, synth
from npugen.flows.cli import main
from npugen.flows.units import UNITS, Unit
from npugen.golden.config import NPUConfig


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _record(unit, luts, status="ok"):
    result = None if status != "ok" else {"luts": luts, "ffs": 10, "dsps": 0, "brams": 0,
                                          "fmax_mhz": 120.0}
    return {"unit": unit, "status": status, "result": result,
            "error": None if status == "ok" else "SynthError: boom"}


def test_cost_rows_partial_product_ratios(monkeypatch):
    monkeypatch.setitem(UNITS, "fp32_mul_lut", Unit(lambda c: None, 1, "FP32 multiplier",
                                                    group="float-mul-lut",
                                                    partial_products=(23 + 1) ** 2))
    monkeypatch.setitem(UNITS, "fp16_mul_lut", Unit(lambda c: None, 1, "FP16 multiplier",
                                                    group="float-mul-lut",
                                                    partial_products=(10 + 1) ** 2))
    monkeypatch.setitem(UNITS, "bf16_mul_lut", Unit(lambda c: None, 1, "BF16 multiplier",
                                                    group="float-mul-lut",
                                                    partial_products=(7 + 1) ** 2))
    config = NPUConfig.preset("tiny")
    rows = cost.cost_rows([_record("fp32_mul_lut", 1800), _record("fp16_mul_lut", 400),
                           _record("bf16_mul_lut", 200), _record("requantizer", 0, "failed"),
                           _record("array", 400)], config)
    by_unit = {r["unit"]: r for r in rows}
    assert by_unit["fp32_mul_lut"]["model_ratio"] == 9.0
    assert by_unit["fp32_mul_lut"]["measured_ratio"] == 9.0
    assert by_unit["fp16_mul_lut"]["model_ratio"] == pytest.approx(121 / 64, abs=1e-3)
    assert by_unit["fp16_mul_lut"]["measured_ratio"] == 2.0
    assert by_unit["bf16_mul_lut"]["model_ratio"] == 1.0
    assert by_unit["requantizer"]["luts"] is None
    assert by_unit["requantizer"]["error"] == "SynthError: boom"
    assert by_unit["array"]["luts_per_mac"] == round(400 / by_unit["array"]["macs_per_cycle"], 2)
    text = cost.to_markdown(rows, target="ecp5-85f")
    assert "| unit | LUT4 | FF | DSP | BRAM | Fmax (MHz) | MACs/cycle | LUT4/MAC | Δ LUT4/MAC " \
        "| pp model |" in text
    assert "FP32 576, FP16/TF32 121, BF16 64" in text
    assert "- requantizer failed: SynthError: boom" in text
    assert re.search(r"\| fp16_mul_lut \| 400 \| .*\| 121 \| 1\.891 \| 2 \| ok \|", text)


def test_cost_rows_extra_luts_over_the_baseline():
    """A PE with the binary mode: the LUT4 it adds to the int8 PE, per binary MAC."""
    config = NPUConfig.preset("tiny")
    rows = cost.cost_rows([_record("int8_pe", 32), _record("binary_pe", 60),
                           _record("int4_pe", 80)], config)
    by_unit = {r["unit"]: r for r in rows}
    assert by_unit["binary_pe"]["macs_per_cycle"] == 8 and by_unit["binary_pe"]["baseline"] == "int8_pe"
    assert by_unit["binary_pe"]["extra_luts_per_mac"] == 3.5
    assert by_unit["binary_pe"]["luts_per_mac"] == 7.5
    assert by_unit["int4_pe"]["extra_luts_per_mac"] == 24.0
    assert by_unit["int8_pe"]["extra_luts_per_mac"] is None
    # Without its baseline in the table there is no difference to report.
    alone = cost.cost_rows([_record("binary_pe", 60)], config)
    assert alone[0]["extra_luts_per_mac"] is None
    assert re.search(r"\| binary_pe \| 60 \| 10 \| 0 \| 0 \| 120 \| 8 \| 7\.5 \| 3\.5 \|",
                     cost.to_markdown(rows, target="ecp5-85f"))


def test_cost_usage_error(capsys):
    code, _out, err = run(capsys, "cost", "--target", "ecp5-85f", "--units", "int8_pe,fpu")
    assert code == 2 and "--units must name units of" in err


def test_cost_real_units(tmp_path, capsys):
    try:
        synth.find_tool("yosys")
    except synth.ToolNotFoundError as e:
        pytest.skip(f"FPGA toolchain not available: {e}")
    code, out, err = run(capsys, "cost", "--preset", "tiny", "--target", "ecp5-85f",
                         "--units", "int8_pe,accumulator", "--synth-only", "--no-progress",
                         "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "c.json"),
                         "--md", str(tmp_path / "c.md"), "--csv", str(tmp_path / "c.csv"))
    assert code == 0, out + err
    rows = {r["unit"]: r for r in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert rows["int8_pe"]["dsps"] == 1 and rows["int8_pe"]["macs_per_cycle"] == 1
    assert rows["int8_pe"]["luts_per_mac"] == rows["int8_pe"]["luts"]
    assert rows["accumulator"]["brams"] >= 1 and rows["accumulator"]["luts_per_mac"] is None
    assert "## Unit cost on ecp5-85f" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "c.csv").read_text().startswith("unit,description,status")


@pytest.mark.parametrize("name", ["bf16_mul_lut", "bf16_mul_dsp", "fp32_add"])
def test_float_units_elaborate_behind_plain_ports(name):
    """FP units have always-ready streams; their shell gives them ports a top can have."""
    from amaranth.back import verilog

    from npugen.flows.units import build_unit, get_unit
    from npugen.golden.config import PRESETS

    text = verilog.convert(build_unit(name, PRESETS["tiny"]), name="unit", emit_src=False)
    for port in ("a", "b", "valid_in", "result", "valid_out"):
        assert f"put {port};" in text or f"] {port};" in text, port
    # The LUT variant builds its significand product from logic, never a multiplication.
    assert (" * " in text) == name.endswith("_dsp")
    if name.startswith("bf16"):
        assert get_unit(name).partial_products == 64
