"""Verilator lint (``--lint-only -Wall``) of the generated Verilog of every preset.

Nothing may be reported except what ``flows/lint_waivers.vlt`` waives, and every
waiver there carries a comment giving its reason.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

import npugen.flows
from npugen.flows.verilog import DEFAULT_NAME, write_outputs
from npugen.golden.config import PRESETS

WAIVERS = Path(npugen.flows.__file__).parent / "lint_waivers.vlt"

PRESET_PARAMS = [
    pytest.param("tiny"),
    pytest.param("default"),
    # Generation and lint of the 32x32 array take over 20 s each.
    pytest.param("large", marks=pytest.mark.slow),
]

_MESSAGE = re.compile(r"^%(Warning|Error)", re.MULTILINE)
_UNUSED = re.compile(
    r"^%Warning-UNUSEDSIGNAL: [^\n]*: (?:Signal is not used|Bits of signal are not used): "
    r"'([^']+)'[^\n]*\n\s*: \.\.\. note: In instance '([^']+)'", re.MULTILINE)


def verilator():
    """The Verilator command and the environment to run it in."""
    from npugen.sim.runner import SimToolchainError, find_verilator
    try:
        found = find_verilator()
    except SimToolchainError as e:
        pytest.skip(f"Verilator is not available: {e}")
    env = dict(os.environ)
    if found.root is not None:
        env["VERILATOR_ROOT"] = str(found.root)
    return [str(found.executable)], env


def lint(verilog_file, waivers, *extra):
    """Run the lint; return (exit code, Verilator's report)."""
    command, env = verilator()
    result = subprocess.run(
        [*command, "--lint-only", "-Wall", *extra, "--top-module", DEFAULT_NAME,
         str(waivers), str(verilog_file)],
        capture_output=True, text=True, env=env, timeout=900)
    return result.returncode, result.stdout + result.stderr


def summary(report, limit=60):
    lines = [line for line in report.splitlines() if _MESSAGE.match(line)]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


@pytest.fixture(scope="module", params=PRESET_PARAMS)
def generated(request, tmp_path_factory):
    """``(verilog file, manifest)`` of ``npugen generate`` for each preset."""
    outdir = tmp_path_factory.mktemp(f"lint-{request.param}") / "out"
    manifest = write_outputs(PRESETS[request.param], outdir)
    return outdir / manifest["files"]["verilog"], manifest


def test_lint_clean(generated):
    verilog_file, _ = generated
    code, report = lint(verilog_file, WAIVERS)
    assert not _MESSAGE.search(report) and code == 0, \
        f"verilator --lint-only -Wall reported (exit code {code}):\n{summary(report)}"


def test_no_unused_input_port(generated, tmp_path):
    # UNUSEDSIGNAL is waived for the backend's debug wires; it still must not
    # name an input of the top-level module.
    verilog_file, manifest = generated
    waivers = tmp_path / "waivers.vlt"
    waivers.write_text("\n".join(line for line in WAIVERS.read_text().splitlines()
                                 if "-rule UNUSEDSIGNAL" not in line) + "\n")
    code, report = lint(verilog_file, waivers, "-Wno-fatal")
    assert code == 0, f"verilator failed (exit code {code}):\n{summary(report)}"
    inputs = {p["name"] for p in manifest["ports"] if p["direction"] == "input"}
    unused = sorted({name for name, instance in _UNUSED.findall(report)
                     if instance == DEFAULT_NAME and name in inputs})
    assert unused == [], f"top-level inputs not used by the design: {unused}"


def test_waivers_are_explained():
    lines = WAIVERS.read_text().splitlines()
    assert lines[0] == "`verilator_config"
    waivers = 0
    for i, line in enumerate(lines[1:], start=1):
        if not line.strip() or line.startswith("//"):
            continue
        assert line.startswith("lint_off "), f"line {i + 1}: not a lint_off: {line!r}"
        assert re.search(r"-rule [A-Z]+\b", line), f"line {i + 1}: no -rule: {line!r}"
        assert re.search(r'-file "[^"]+"', line), f"line {i + 1}: no -file: {line!r}"
        assert lines[i - 1].startswith("//"), f"line {i + 1}: waiver without a reason"
        waivers += 1
    assert waivers > 0
