import csv
import json
import re

import pytest

from npugen.flows import dse, synth
from npugen.flows.cli import main
from npugen.golden.config import PRECISION_MODES, NPUConfig


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_sweeps_values():
    sweeps = dse.parse_sweeps(["rows=4,8,16", "modes=int8,int8+int4,all",
                               "dataflow=weight_stationary", "acc_depth=0x20"])
    assert sweeps == {
        "rows": [4, 8, 16],
        "modes": [("int8",), ("int8", "int4"), tuple(PRECISION_MODES)],
        "dataflow": ["weight_stationary"],
        "acc_depth": [32],
    }
    assert dse.parse_sweeps(["size=2,4"]) == {"size": [2, 4]}


@pytest.mark.parametrize("items, message", [
    (["rows"], r"^--sweep expects KEY=V1,V2,\.\.\., not 'rows'$"),
    (["rows="], r"^--sweep expects KEY=V1,V2"),
    (["depth=4"], r"^--sweep depth: unknown parameter \(known: acc_bits, .*size"),
    (["rows=4", "rows=8"], r"^--sweep rows given twice$"),
    (["rows=4,,8"], r"^--sweep rows: empty value$"),
    (["size=4", "cols=4"], r"^--sweep size sets rows and cols"),
    (["rows=[1"], r"is not a valid TOML value"),
])
def test_parse_sweeps_errors(items, message):
    with pytest.raises(ValueError, match=message):
        dse.parse_sweeps(items)


def test_grid_order():
    points = dse.grid({"rows": [2, 4], "cols": [3, 5]})
    assert points == [{"rows": 2, "cols": 3}, {"rows": 2, "cols": 5},
                      {"rows": 4, "cols": 3}, {"rows": 4, "cols": 5}]
    assert dse.grid({}) == [{}]


def _fake_result(config, luts):
    return {"luts": luts, "ffs": luts // 2, "carry": 3, "dsps": config.pes, "brams": 1,
            "fmax_mhz": 200.0 - config.pes, "tool_versions": {"yosys": "fake"}}


def fake_worker(task):
    index, base, point, unit, _target, _options = task
    record = {"index": index, "point": point, "label": dse._label(point), "unit": unit,
              "status": "failed", "error": None, "config": None, "result": None}
    try:
        config = base.replace(**dse._changes(point))
    except ValueError as e:
        record["error"] = f"invalid configuration: {e}"
        return record
    record.update(status="ok", config=config.to_dict(), result=_fake_result(config, 100 * config.pes))
    return record


def test_run_points_keeps_order_and_reports_failures():
    base = NPUConfig.preset("tiny")
    tasks = [(i, base, point, None, "ecp5-85f", {})
             for i, point in enumerate(dse.grid({"size": [4, 1, 2]}))]
    records = dse.run_points(tasks, jobs=1, progress=False, worker=fake_worker)
    assert [r["label"] for r in records] == ["size=4", "size=1", "size=2"]
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[1]["error"].startswith("invalid configuration: rows must be an integer")


def test_write_outputs(tmp_path):
    base = NPUConfig.preset("tiny")
    sweeps = {"size": [2, 4, 1]}
    tasks = [(i, base, p, "array", "ecp5-85f", {}) for i, p in enumerate(dse.grid(sweeps))]
    records = dse.run_points(tasks, progress=False, worker=fake_worker)
    paths = dse.write_outputs(records, tmp_path, sweep_keys=list(sweeps), title="t",
                              meta={"target": "ecp5-85f"})
    rows = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[0]["pes"] == "4" and rows[1]["luts"] == "1600"
    int8 = f"peak_macs_{base.modes[0]}"
    assert int(rows[1][int8]) == 16
    assert float(rows[1][f"macs_per_lut_{base.modes[0]}"]) == pytest.approx(16 / 1600, rel=1e-3)
    doc = json.loads(paths["json"].read_text())
    assert doc["target"] == "ecp5-85f" and len(doc["points"]) == 3
    text = paths["md"].read_text()
    assert text.startswith("## t\n") and "1 of 3 points failed." in text
    assert re.search(r"\| 4 \| .*\| ok \|", text)
    assert [p.name for p in paths["plots"]] == list(dse.PLOTS)
    for path in paths["plots"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["dse", "--target", "ecp5-85f"], r"dse needs at least one --sweep"),
    (["dse", "--target", "ecp5-85f", "--sweep", "bogus=1"], r"--sweep bogus: unknown"),
    (["dse", "--target", "ecp5-85f", "--sweep", "rows=2", "--unit", "fpu"], r"unit must be"),
])
def test_dse_usage_errors(capsys, argv, message):
    code, _out, err = run(capsys, *argv)
    assert code == 2 and re.search(message, err), err


def test_dse_real_sweep_in_worker_processes(tmp_path, capsys):
    """Two workers: an invalid point fails alone, the others are synthesized (yosys only)."""
    try:
        synth.find_tool("yosys")
    except synth.ToolNotFoundError as e:
        pytest.skip(f"FPGA toolchain not available: {e}")
    code, out, err = run(capsys, "dse", "--preset", "tiny", "--unit", "array",
                         "--sweep", "rows=1,2,3", "--set", 'modes=["int8"]',
                         "--set", "sparse_2_4=false",  # 2:4 needs an even rows
                         "--target", "ecp5-85f", "--synth-only", "--jobs", "2",
                         "--no-progress", "-o", str(tmp_path))
    assert code == 0, out + err
    assert "point rows=1 failed: invalid configuration: rows must be" in err
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    # One MULT18X18D per INT8 PE.
    assert [int(r["dsps"]) for r in rows[1:]] == [4, 6]
    assert int(rows[2]["luts"]) > int(rows[1]["luts"])
    for name in dse.PLOTS:
        assert (tmp_path / name).stat().st_size > 1000
