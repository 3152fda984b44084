import random
import re

import pytest
from amaranth.sim import Simulator

from npugen.flows import board, synth
from npugen.flows.cli import main
from npugen.golden.config import NPUConfig


def test_xorshift32_and_lanes():
    assert board.xorshift32(1) == 270369
    assert board.xorshift32(270369) == 67634689
    assert board.lane_bytes(0x80FF7F01, 6) == [1, 127, -1, -128, 1 ^ 0x5A, 127 ^ 0x5A]


def _run_selftest(config, jobs, expected=None, cycles=2000):
    dut = board.SelfTest(config, jobs=jobs, expected=expected)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    async def bench(ctx):
        for _run in range(2):  # a second start repeats the run without reset
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            assert ctx.get(dut.running) and not ctx.get(dut.done)
            for _ in range(cycles):
                await ctx.tick()
                if ctx.get(dut.done):
                    break
            seen.setdefault("runs", []).append({
                name: ctx.get(getattr(dut, name))
                for name in ("done", "passed", "failed", "running", "result_signature")})
            seen["error"] = ctx.get(dut.error)

    sim.add_testbench(bench)
    sim.run()
    return dut, seen


@pytest.mark.parametrize("config", [
    NPUConfig.preset("tiny"),
    NPUConfig(rows=3, cols=5, acc_depth=16, out_fifo_depth=4),
], ids=["tiny", "3x5"])
def test_selftest_signature_matches_golden(config):
    dut, seen = _run_selftest(config, jobs=4)
    assert seen["error"] == 0
    for result in seen["runs"]:
        assert result == {"done": 1, "passed": 1, "failed": 0, "running": 0,
                          "result_signature": dut.expected}


def test_selftest_detects_a_wrong_signature():
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    config = NPUConfig.preset("tiny")
    wrong = board.expected_signature(config, 3) ^ (1 << random.Random(seed).randrange(32))
    _dut, seen = _run_selftest(config, jobs=3, expected=wrong)
    assert seen["runs"][0]["passed"] == 0 and seen["runs"][0]["failed"] == 1


def test_selftest_bad_jobs():
    with pytest.raises(ValueError, match=r"^jobs must be an integer in 1\.\.65535, not 0$"):
        board.SelfTest(NPUConfig.preset("tiny"), jobs=0)


def test_ulx3s_plan_pins_and_clock():
    pytest.importorskip("amaranth_boards", reason="amaranth-boards is not installed")
    plan, target, top = board.board_plan(NPUConfig.preset("tiny"), jobs=2, name="npu_board")
    assert target == "ecp5-85f"
    lpf = plan.files["npu_board.lpf"]
    lpf = lpf.decode() if isinstance(lpf, bytes) else lpf
    for pin in ("G2", "B2", "C2", "C1", "D2", "D1", "E2", "E1", "H3", "R1"):
        assert re.search(rf'SITE "{pin}";', lpf), pin
    assert re.search(r'FREQUENCY PORT "clk25_0__io" 25000000', lpf)
    il = plan.files["npu_board.il"]
    assert "module \\npu_board" in (il.decode() if isinstance(il, bytes) else il)
    assert top.selftest.expected == board.expected_signature(NPUConfig.preset("tiny"), 2)


def test_build_board_usage_errors(capsys):
    assert main(["build-board", "--board", "icebreaker"]) == 2
    assert "board must be one of ulx3s, not 'icebreaker'" in capsys.readouterr().err
    assert main(["build-board", "--variant", "12f"]) == 2
    assert "variant of ulx3s must be one of 85f, 25f, not '12f'" in capsys.readouterr().err


@pytest.mark.slow
def test_ulx3s_bitstream(tmp_path):
    pytest.importorskip("amaranth_boards", reason="amaranth-boards is not installed")
    try:
        for tool in ("yosys", "nextpnr-ecp5", "ecppack"):
            synth.find_tool(tool)
    except synth.ToolNotFoundError as e:
        pytest.skip(f"FPGA toolchain not available: {e}")
    record = board.build_board(NPUConfig.preset("tiny"), tmp_path, jobs=4)
    assert record["bitstream_bytes"] > 100_000
    assert record["timing_met"], record["fmax_by_clock"]
