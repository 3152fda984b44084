"""The whole NPU on Verilator, driven as a host drives it (AXI4-Lite registers, AxiRam).

Compiled GEMM, conv2d and attention programs run back to back without a reset, under
several AXI idle/back-pressure patterns; every output must equal the golden kernel and
the instruction-level model, and no byte outside the destination regions may change.
Every error code is provoked by a program with one fault, and the NPU must run the next
program without a reset.
"""

import dataclasses
import os

import numpy as np
import pytest

from npugen.golden.bf16_gemm import random_bf16
from npugen.golden.compiler import compile_bf16_gemm
from npugen.golden.config import NPUConfig
from npugen.golden.isa import (End, Fence, Load, LoadTarget, Matmul, NPUError, Opcode, Store,
                               Vector, assemble, encode)
from npugen.golden.npu_model import HostMemory
from npugen.golden.workloads import attention_program, conv_program, gemm_program
from npugen.sim.npu_sim import NPURun, memory_size, program_run, run_kernels, run_npu

SEED = int(os.environ.get("NPUGEN_SEED", "20261122"))
TINY = NPUConfig.preset("tiny")


def _random_kernels(config, rng):
    """A mix of kernels small enough for the tiny preset's scratchpads."""
    base = 0x1000
    programs = []
    for mode in ("int8", "int4", "binary"):
        m, k, n = (int(v) for v in rng.integers(1, 24, 3))
        programs.append(gemm_program(config, rng, m=m, k=k, n=n, dtype=mode, base=base))
    programs.append(gemm_program(config, rng, m=9, k=16, n=5, sparsity="2:4", base=base))
    for shape in ({"h": 6, "w": 5, "cin": 3, "cout": 4, "kernel": 3, "padding": 1},
                  {"h": 7, "w": 7, "cin": 4, "cout": 6, "kernel": 3, "stride": 2},
                  {"h": 6, "w": 6, "cin": 4, "cout": 4, "kernel": 3, "padding": 1, "groups": 4},
                  {"h": 5, "w": 6, "cin": 6, "cout": 4, "kernel": 1},
                  {"h": 8, "w": 7, "cin": 2, "cout": 3, "kernel": 2, "padding": 2,
                   "dilation": 2}):
        programs.append(conv_program(config, rng, base=base, **shape))
    programs.append(attention_program(config, rng, seq=7, dim=4, base=base))
    programs.append(attention_program(config, rng, seq=5, dim=3, heads=2, kv_seq=9, base=base))
    return programs


@pytest.mark.parametrize("pattern", ["none", "idle", "backpressure", "both", "heavy"])
def test_kernels_under_bus_patterns(pattern):
    seed = SEED + ["none", "idle", "backpressure", "both", "heavy"].index(pattern)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    programs = _random_kernels(TINY, rng)
    results = run_kernels(TINY, programs, seed=seed, pattern=pattern)
    for result in results:
        program = result.program
        assert result.record.done, (program.kind, result.record)
        assert result.model_status == "done"
        assert result.stray_writes == 0, program.kind
        for name, expected in program.expected.items():
            np.testing.assert_array_equal(result.outputs[name], expected, err_msg=program.kind)
            np.testing.assert_array_equal(result.model_outputs[name], expected)
        assert result.record.instret == len(program.instructions)
        assert result.record.irq_after_clear == 0
        assert result.record.cycles > 0


def test_default_preset_kernels():
    """The default 8x8 design: a GEMM, a padded 3x3 conv and an attention block."""
    config = NPUConfig.preset("default")
    seed = SEED + 10
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    programs = [gemm_program(config, rng, m=40, k=70, n=20, base=0x1000),
                conv_program(config, rng, h=8, w=8, cin=16, cout=16, padding=1, base=0x1000),
                attention_program(config, rng, seq=16, dim=16, heads=2, base=0x1000)]
    for result in run_kernels(config, programs, seed=seed, pattern="both"):
        assert result.match, (result.program.kind, result.record)
        # the unit counters saw the work
        assert result.record.unit_busy["compute"] > 0 and result.record.unit_busy["load"] > 0


@pytest.mark.parametrize("preset, shapes", [
    ("tiny", [(5, 9, 3), (1, 1, 1), (2, 14, 2), (12, 6, 5)]),
    pytest.param("default", [(20, 37, 11), (3, 4, 8)], marks=pytest.mark.slow),
])
def test_bf16_gemms(preset, shapes):
    """bf16 GEMMs (FP32 results, operands with every special class) between int8 and int4
    GEMMs on a design with bf16 built: bit-exact against the fixed-order golden GEMM and
    the model.  On tiny (2 rows: one BF16 element per K tile) every K step is a tile, so
    the accumulator's FP32 adder and its forwarding (m_rows 1 and 2) are exercised."""
    config = NPUConfig.preset(preset)
    config = config.replace(modes=config.modes + ("bf16",))
    seed = SEED + 20 + len(preset)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    programs = []
    for m, k, n in shapes:
        programs.append(compile_bf16_gemm(config, random_bf16(rng, (m, k), specials=0.1),
                                          random_bf16(rng, (k, n), specials=0.1), base=0x1000))
        programs.append(gemm_program(config, rng, m=m, k=k, n=n, dtype="int4", base=0x1000))
    programs.append(gemm_program(config, rng, m=7, k=9, n=5, base=0x1000))
    for result in run_kernels(config, programs, seed=seed, pattern="both"):
        assert result.match, (result.program.kind, result.record)
        assert result.stray_writes == 0


# -- errors ------------------------------------------------------------------------------------


def _with_program(program, instructions, raw=None):
    """``program`` with another instruction list (``raw``: bytes replacing instruction
    slots, ``{index: 32 bytes}``) in its program segment."""
    blob = bytearray(assemble(instructions))
    for index, data in (raw or {}).items():
        blob[32 * index:32 * index + 32] = data
    segments = [dataclasses.replace(s, data=bytes(blob)) if s.kind == "program" else s
                for s in program.segments]
    return dataclasses.replace(program, instructions=list(instructions), segments=segments)


def _first(program, kind, **match):
    for index, instr in enumerate(program.instructions):
        if isinstance(instr, kind) and all(getattr(instr, k) == v for k, v in match.items()):
            return index
    raise AssertionError(f"no {kind.__name__} {match} in the program")


def _replace(program, index, **changes):
    instructions = list(program.instructions)
    instructions[index] = dataclasses.replace(instructions[index], **changes)
    return _with_program(program, instructions)


def _fault_cases(config, rng):
    """The good program and the faulty ones: ``(name, program, code, failing index)``."""
    base = 0x1000
    gemm = gemm_program(config, rng, m=6, k=8, n=4, base=base)
    attn = attention_program(config, rng, seq=4, dim=4, base=base)
    cases = []
    load = _first(gemm, Load, target=LoadTarget.ACT)
    matmul = _first(gemm, Matmul)
    store = _first(gemm, Store)
    param = _first(gemm, Load, target=LoadTarget.PARAM)
    vector = _first(attn, Vector)
    illegal = bytearray(32)
    illegal[0] = 0x07
    cases.append(("illegal opcode", _with_program(gemm, gemm.instructions, {load: bytes(illegal)}),
                  NPUError.ILLEGAL_OPCODE, load))
    cases.append(("bad field: lanes 0", _replace(gemm, load, lanes=0), NPUError.BAD_FIELD, load))
    cases.append(("feature: bf16", _replace(gemm, matmul, mode=3), NPUError.FEATURE_NOT_BUILT,
                  matmul))
    cases.append(("bad field: vector lo > hi", _replace(attn, vector, lo=5, hi=4),
                  NPUError.BAD_FIELD, vector))
    cases.append(("feature: sparse int4", _replace(gemm, matmul, sparse=1, mode=1),
                  NPUError.FEATURE_NOT_BUILT, matmul))
    cases.append(("scratchpad range", _replace(gemm, load, sp_addr=config.act_sp_depth - 1),
                  NPUError.BAD_SP_ADDRESS, load))
    cases.append(("read window", _replace(gemm, load, addr=gemm.read_window[1]),
                  NPUError.BAD_HOST_ADDRESS, load))
    cases.append(("write window", _replace(gemm, store, addr=gemm.write_window[0] - 64),
                  NPUError.BAD_HOST_ADDRESS, store))
    cases.append(("misaligned param", _replace(gemm, param, addr=gemm.instructions[param].addr + 2),
                  NPUError.MISALIGNED, param))
    cases.append(("misaligned int32 store",
                  _replace(gemm, store, elem_bytes=4, addr=gemm.instructions[store].addr + 1),
                  NPUError.MISALIGNED, store))
    # a PARAM shift lane out of [-31, 30]: the GEMM core refuses it
    params = next(s for s in gemm.segments if s.name == "params")
    bad = bytearray(params.data)
    n = len(gemm.expected["y"][0])
    shift_at = 8 * n              # bias[n], multiplier[n], shift[n] as int32
    bad[shift_at:shift_at + 4] = (40).to_bytes(4, "little", signed=True)
    core = dataclasses.replace(gemm, segments=[dataclasses.replace(s, data=bytes(bad))
                                               if s.name == "params" else s
                                               for s in gemm.segments])
    cases.append(("core: bad shift", core, NPUError.CORE, matmul))
    return gemm, cases


def test_errors_stop_cleanly_and_the_next_program_runs():
    seed = SEED + 20
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    good, cases = _fault_cases(TINY, rng)
    runs, expect = [], []
    for name, program, code, index in cases:
        result, _ = program.run()
        assert (result.status, result.error) == ("error", code), (name, result)
        assert result.pc == program.prog_addr + 32 * index, name
        runs += [program_run(program), program_run(good)]
        expect += [(name, program, result), ("good after " + name, good, None)]
    # A program address that is not 32-byte aligned, then one fetched outside the window.
    misaligned = program_run(good)
    misaligned.prog_addr += 4
    outside = program_run(_with_program(good, [Fence(), Fence(), End()]))
    outside.read_window = (outside.read_window[0], good.prog_addr + 64)
    runs += [misaligned, program_run(good), outside, program_run(good)]
    _, records = run_npu(TINY, runs, mem_size=memory_size([good]), seed=seed, pattern="both")
    for (name, program, model), record in zip(expect, records[:len(expect)]):
        if model is None:
            assert record.done, name
            memory = HostMemory(program.base, program.size,
                                data=bytearray(record.read(program.base, program.size)))
            np.testing.assert_array_equal(program.extract(memory)["y"], program.expected["y"])
            continue
        assert record.failed, (name, record)
        assert (record.error, record.error_detail, record.error_pc) == \
            (model.error, model.detail, model.pc), name
        changed = record.changed_bytes()
        lo, hi = program.write_window
        assert np.all((changed >= lo) & (changed < hi)), name
        assert record.irq_after_clear == 0
    misaligned_record, after1, outside_record, after2 = records[len(expect):]
    assert misaligned_record.failed and misaligned_record.error == NPUError.MISALIGNED
    assert misaligned_record.error_detail == 0
    assert outside_record.failed and outside_record.error == NPUError.BAD_HOST_ADDRESS
    assert outside_record.error_detail == 0
    assert outside_record.error_pc == good.prog_addr + 64
    assert after1.done and after2.done


def test_axi_error_responses():
    """SLVERR from host memory on a load and on a store stops the program."""
    seed = SEED + 30
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    program = gemm_program(TINY, rng, m=6, k=8, n=4, base=0x1000)
    inputs = next(s for s in program.segments if s.name == "a")
    outputs = next(s for s in program.segments if s.name == "y")
    bus = TINY.axi_data_bits // 8
    read_fault = (inputs.addr // bus * bus, inputs.addr // bus * bus + bus)
    write_fault = (outputs.addr // bus * bus, outputs.addr // bus * bus + bus)
    first_load = _first(program, Load, target=LoadTarget.ACT)
    assert program.instructions[first_load].addr == inputs.addr
    first_store = _first(program, Store)
    for faults, code, index in (({"read_faults": [read_fault]}, NPUError.AXI_READ_ERROR,
                                 first_load),
                                ({"write_faults": [write_fault]}, NPUError.AXI_WRITE_ERROR,
                                 first_store)):
        _, (record, again) = run_npu(TINY, [program_run(program), program_run(program)],
                                     mem_size=memory_size([program]), seed=seed, **faults)
        assert record.failed and record.error == code
        assert record.error_pc == program.prog_addr + 32 * index
        assert record.error_detail == program.instructions[index].opcode
        for r in (record, again):   # nothing written outside the destinations
            changed = r.changed_bytes()
            assert all(any(lo <= a < hi for lo, hi in program.destinations) for a in changed)


def test_id_registers():
    rng = np.random.default_rng(SEED)
    program = gemm_program(TINY, rng, m=2, k=2, n=2, base=0x1000)
    ident, (record,) = run_npu(TINY, [program_run(program)], mem_size=memory_size([program]),
                               seed=SEED)
    assert ident == {"ID": 0x4E505547, "VERSION": 0x00010000}
    assert record.done


def test_run_model_rejects_bad_pattern():
    with pytest.raises(ValueError, match=r"^pattern must be one of none, idle, backpressure, "
                                         r"both, heavy, not 'slow'$"):
        run_npu(TINY, [NPURun([], 0, (0, 0), (0, 0))], mem_size=1 << 16, seed=0, pattern="slow")


def test_end_only_program():
    """A program that is only END: done, one instruction retired."""
    rng = np.random.default_rng(SEED)
    program = gemm_program(TINY, rng, m=2, k=2, n=2, base=0x1000)
    end_only = _with_program(program, [End()])
    ident, (record,) = run_npu(TINY, [program_run(end_only)],
                               mem_size=memory_size([program]), seed=SEED)
    assert record.done and record.instret == 1
    assert record.changed_bytes().size == 0
    assert encode(End())[0] == Opcode.END
