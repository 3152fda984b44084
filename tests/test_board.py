import random
import re

import pytest
from amaranth.sim import Simulator

from npugen.flows import board, synth
from npugen.flows.cli import main
from npugen.golden.config import NPUConfig


def test_memory_signature_and_words():
    words = board.image_words(bytes(range(1, 11)), 32, 4)
    assert words == [0x04030201, 0x08070605, 0x00000A09, 0]
    assert board.memory_signature([1, 2], 32) == (1 << 1) ^ 2
    # a 64-bit word folds its halves
    assert board.memory_signature([0x0000000F000000F0], 64) == 0xFF


def test_board_program_and_depth():
    config = NPUConfig.preset("tiny")
    program = board.board_program(config)
    assert program.base == 0 and program.prog_addr == 0
    depth = board.memory_depth(program, config.axi_data_bits)
    assert depth * 4 >= program.size and depth & (depth - 1) == 0 and depth * 2 < program.size
    with pytest.raises(ValueError, match=r"^gemm must be \(M, K, N\), not \(8, 8\)$"):
        board.board_program(config, gemm=(8, 8))
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer, not -1$"):
        board.board_program(config, seed=-1)


def _run_selftest(config, expected=None, cycles=20000, **kwargs):
    dut = board.NpuSelfTest(config, expected=expected, **kwargs)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {"runs": []}

    async def bench(ctx):
        for _run in range(2):  # a second start repeats the run on the written memory
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            assert ctx.get(dut.running) and not ctx.get(dut.done)
            for _ in range(cycles):
                await ctx.tick()
                if ctx.get(dut.done):
                    break
            seen["runs"].append({
                name: ctx.get(getattr(dut, name))
                for name in ("done", "passed", "failed", "running", "npu_error",
                             "result_signature")})

    sim.add_testbench(bench)
    sim.run()
    return dut, seen


def test_npu_selftest_signature_matches_golden():
    """The NPU runs the golden compiler's GEMM from the on-chip memory: the memory after
    the run folds to the golden model's signature, twice."""
    config = NPUConfig.preset("tiny")
    dut, seen = _run_selftest(config)
    program = dut.program
    before = board.memory_signature(board.image_words(
        bytes(program.memory().read(0, program.size)), config.axi_data_bits, dut.depth),
        config.axi_data_bits)
    assert dut.expected != before  # the check needs the NPU's outputs
    for result in seen["runs"]:
        assert result == {"done": 1, "passed": 1, "failed": 0, "running": 0, "npu_error": 0,
                          "result_signature": dut.expected}


def test_npu_selftest_detects_a_wrong_signature():
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    config = NPUConfig.preset("tiny")
    program = board.board_program(config, gemm=(4, 8, 4))
    wrong = board.expected_signature(config, program) ^ (1 << random.Random(seed).randrange(32))
    _dut, seen = _run_selftest(config, expected=wrong, gemm=(4, 8, 4))
    assert seen["runs"][0]["passed"] == 0 and seen["runs"][0]["failed"] == 1
    assert seen["runs"][0]["npu_error"] == 0


def test_ulx3s_plan_pins_and_clock():
    pytest.importorskip("amaranth_boards", reason="amaranth-boards is not installed")
    plan, target, top = board.board_plan(NPUConfig.preset("tiny"), gemm=(4, 8, 4),
                                         name="npu_board")
    assert target == "ecp5-85f"
    lpf = plan.files["npu_board.lpf"]
    lpf = lpf.decode() if isinstance(lpf, bytes) else lpf
    for pin in ("G2", "B2", "C2", "C1", "D2", "D1", "E2", "E1", "H3", "R1"):
        assert re.search(rf'SITE "{pin}";', lpf), pin
    assert re.search(r'FREQUENCY PORT "clk25_0__io" 25000000', lpf)
    il = plan.files["npu_board.il"]
    assert "module \\npu_board" in (il.decode() if isinstance(il, bytes) else il)
    config = NPUConfig.preset("tiny")
    assert top.selftest.expected == board.expected_signature(
        config, board.board_program(config, gemm=(4, 8, 4)))


def test_build_board_usage_errors(capsys):
    assert main(["build-board", "--board", "icebreaker"]) == 2
    assert "board must be one of ulx3s, not 'icebreaker'" in capsys.readouterr().err
    assert main(["build-board", "--variant", "12f"]) == 2
    assert "variant of ulx3s must be one of 85f, 25f, not '12f'" in capsys.readouterr().err
    assert main(["build-board", "--gemm", "8,8"]) == 2
    assert "--gemm must be three positive integers M,K,N, not '8,8'" in capsys.readouterr().err


@pytest.mark.slow
def test_ulx3s_bitstream(tmp_path):
    pytest.importorskip("amaranth_boards", reason="amaranth-boards is not installed")
    try:
        for tool in ("yosys", "nextpnr-ecp5", "ecppack"):
            synth.find_tool(tool)
    except synth.ToolNotFoundError as e:
        pytest.skip(f"FPGA toolchain not available: {e}")
    record = board.build_board(NPUConfig.preset("tiny"), tmp_path, gemm=(4, 8, 4))
    assert record["bitstream_bytes"] > 100_000
    assert record["timing_met"], record["fmax_by_clock"]
