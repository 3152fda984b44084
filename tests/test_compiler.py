"""Tests of npugen.golden.compiler: compiled GEMM, conv2d and attention programs run on
the instruction-level model give exactly the kernel-level golden results, write nothing
outside their destinations, overlap loads with compute as scheduled, and reject bad
arguments before anything runs."""

import math

import numpy as np
import pytest

from npugen.golden.attention import AttentionParams, multi_head_attention
from npugen.golden.compiler import (ALIGN, FILL, CompiledProgram, compile_attention,
                                    compile_conv2d, compile_gemm)
from npugen.golden.config import NPUConfig
from npugen.golden.conv import qconv2d
from npugen.golden.isa import (End, Fence, Load, LoadTarget, Matmul, Store, Vector,
                               assemble, disassemble)
from npugen.golden.npu_model import NPUModel, instruction_ranges
from npugen.golden.tile_program import GemmJob, ideal_cycles, random_gemm_job

SEED_BASE = 0xC0_4000
PRESETS = ("tiny", "default")


def run_and_check(prog: CompiledProgram):
    """Run with two fill patterns; outputs equal the expected ones, and every byte
    outside the destination regions is unchanged."""
    model = NPUModel(prog.config)
    for fill in (FILL, 0x3C):
        before = prog.memory(fill)
        result, after = prog.run(model, fill=fill)
        assert result.ok, result
        assert result.retired == len(prog.instructions)
        outputs = prog.extract(after)
        for name, expect in prog.expected.items():
            assert outputs[name].dtype == expect.dtype and outputs[name].shape == expect.shape
            np.testing.assert_array_equal(outputs[name], expect)
        changed = np.flatnonzero(before.array() != after.array()) + prog.base
        for addr in changed:
            assert any(lo <= addr < hi for lo, hi in prog.destinations), hex(addr)
    return result


def check_layout(prog: CompiledProgram):
    """Segments are aligned, disjoint and inside the image; windows and destinations
    agree with them; the program segment holds the instructions."""
    segs = prog.segments
    assert segs[0].kind == "program" and segs[0].addr == prog.prog_addr
    assert segs[0].data == assemble(prog.instructions)
    assert disassemble(segs[0].data) == prog.instructions
    assert isinstance(prog.instructions[-1], End)
    for a, b in zip(segs, segs[1:]):
        assert a.end <= b.addr
    for seg in segs:
        assert seg.addr % ALIGN == 0 and prog.base <= seg.addr and seg.end <= prog.base + prog.size
    lo, hi = prog.read_window
    for seg in segs:
        if seg.kind in ("program", "input", "parameter", "workspace"):
            assert lo <= seg.addr and seg.end <= hi
    wlo, whi = prog.write_window
    dests = [(s.addr, s.end) for s in segs if s.kind in ("workspace", "output")]
    assert prog.destinations == dests
    assert all(wlo <= a and b <= whi for a, b in dests)
    for name, spec in prog.outputs.items():
        assert (spec.addr, spec.addr + spec.nbytes) in dests


# -- GEMM -----------------------------------------------------------------------------------


GEMM_CASES = [(preset, mode, sparsity, i)
              for preset in PRESETS
              for mode, sparsity in (("int8", None), ("int4", None), ("binary", None),
                                     ("int8", "2:4"))
              for i in range(3)]


@pytest.mark.parametrize("preset, mode, sparsity, i", GEMM_CASES,
                         ids=[f"{p}-{m}-{s or 'dense'}-{i}" for p, m, s, i in GEMM_CASES])
def test_random_gemm(preset, mode, sparsity, i):
    seed = SEED_BASE + 1000 * PRESETS.index(preset) + 100 * ("int8", "int4", "binary").index(mode) \
        + (50 if sparsity else 0) + i
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset(preset)
    m = int(rng.integers(1, 3 * config.acc_depth // 2))
    k = int(rng.integers(1, 200))
    n = int(rng.integers(1, 4 * config.cols + 3))
    job = random_gemm_job(rng, m, k, n, mode=mode, sparsity=sparsity,
                          raw=bool(rng.random() < 0.3), extremes=bool(rng.random() < 0.2))
    print(f"shape={job.shape} raw={job.raw}")
    prog = compile_gemm(config, job, base=ALIGN * int(rng.integers(0, 64)))
    check_layout(prog)
    np.testing.assert_array_equal(prog.expected["y"], job.reference(config.acc_bits))
    assert prog.macs == m * k * n
    assert prog.ideal_cycles == ideal_cycles(config, m, k, n, mode, sparsity)
    run_and_check(prog)


@pytest.mark.parametrize("preset", PRESETS)
def test_gemm_shape_edges(preset):
    seed = SEED_BASE + 5000 + PRESETS.index(preset)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset(preset)
    R, C = config.rows, config.cols
    for m, k, n in [(1, 1, 1), (config.acc_depth, R, C), (config.acc_depth + 1, R + 1, C + 1),
                    (2, 8 * R, 1), (3, 1, 3 * C)]:
        run_and_check(compile_gemm(config, random_gemm_job(rng, m, k, n)))


def test_gemm_narrow_accumulator():
    seed = SEED_BASE + 5100
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset("tiny").replace(acc_bits=18)
    job = random_gemm_job(rng, 9, 300, 5, extremes=True, raw=True)
    prog = compile_gemm(config, job)
    assert not np.array_equal(prog.expected["y"], job.reference(32))   # the wrap matters
    run_and_check(prog)


def test_default_gemm_256_schedule():
    """The 256×256×256 INT8 GEMM on the default preset: long MATMULs, double buffering."""
    seed = SEED_BASE + 6000
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset("default")
    job = random_gemm_job(rng, 256, 256, 256)
    prog = compile_gemm(config, job)
    assert prog.macs == 256 ** 3 and prog.ideal_cycles == 256 ** 3 // 64
    # M blocks of at most 64 rows (two per ACT), the first two shorter (their load is
    # the only one not hidden), every one at least 2·rows + 1 rows long.
    assert prog.info["m_blocks"] == [22, 43, 64, 64, 63]
    matmuls = [i for i in prog.instructions if isinstance(i, Matmul)]
    assert len(matmuls) == 5 * 32
    assert all(mm.k_tiles == 32 and mm.m_rows >= 17 for mm in matmuls)
    assert check_overlap(prog) < 0.5
    run_and_check(prog)


def check_overlap(prog):
    """Program order lets loads, compute and stores overlap under in-order dispatch:

    * the LOADs between two MATMULs (which run while the first one computes) move at
      most as many words as that MATMUL takes core cycles, so at one word per cycle the
      loads hide behind compute; returns the largest ratio;
    * no LOAD overwrites what the most recent MATMUL before it reads (which may still be
      feeding the core: the LOAD would stall dispatch);
    * no MATMUL writes an OUT range a STORE issued just before it still reads.
    """
    config = prog.config
    instrs = prog.instructions
    positions = [p for p, i in enumerate(instrs) if isinstance(i, Matmul)]

    def overlap(a, b):
        return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]

    worst = 0.0
    for n, pos in enumerate(positions):
        prev = positions[n - 1] if n else -1
        if n:
            mm = instrs[prev]
            cycles = mm.k_tiles * max(mm.m_rows, 2 * config.rows + 1)
            words = sum(i.inner_count * i.outer_count for i in instrs[prev:pos]
                        if isinstance(i, Load))
            assert words <= cycles, (n, words, cycles)
            worst = max(worst, words / cycles)
        writes = instruction_ranges(config, instrs[pos])["writes"]
        for p in range(max(prev, 0), pos):
            if isinstance(instrs[p], Store):
                (r,) = instruction_ranges(config, instrs[p])["reads"]
                assert not any(overlap(w, r) for w in writes), (n, p)
    for p, instr in enumerate(instrs):
        if isinstance(instr, Load):
            last = max((q for q in positions if q < p), default=None)
            if last is not None:
                (w,) = instruction_ranges(config, instr)["writes"]
                reads = instruction_ranges(config, instrs[last])["reads"]
                assert not any(overlap(w, r) for r in reads), p
    return worst


# -- conv2d ----------------------------------------------------------------------------------


# (x shape NHWC, w shape, stride, padding, dilation, groups)
CONV_CASES = [
    ((1, 5, 5, 3), (3, 3, 3, 4), 1, 1, 1, 1),
    ((2, 7, 6, 4), (3, 3, 2, 6), (2, 1), (1, 0, 2, 1), (1, 2), 2),
    ((1, 8, 8, 6), (3, 3, 1, 6), 1, 1, 1, 6),             # depthwise
    ((1, 9, 7, 4), (3, 3, 1, 8), 2, (2, 1), 1, 4),        # depthwise, channel multiplier 2
    ((2, 6, 6, 10), (1, 1, 10, 12), 1, 0, 1, 1),          # pointwise
    ((1, 10, 9, 2), (2, 3, 2, 3), (3, 2), (0, 3, 1, 0), (2, 3), 1),
    ((1, 12, 40, 9), (3, 3, 9, 5), 1, 1, 1, 1),           # wide rows: blocks inside rows
    ((3, 5, 4, 16), (5, 5, 8, 10), (2, 2), 2, 1, 2),
]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_random_conv2d(preset, case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    seed = SEED_BASE + 7000 + 10 * CONV_CASES.index(case) + PRESETS.index(preset)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset(preset)
    x = rng.integers(-128, 128, x_shape).astype(np.int8)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    c_out = w_shape[3]
    kwargs = dict(x_zero_point=int(rng.integers(-128, 128)),
                  bias=rng.integers(-5000, 5000, c_out),
                  multiplier=rng.integers(1 << 30, 1 << 31, c_out),
                  shift=rng.integers(-12, -5, c_out), out_zero_point=int(rng.integers(-20, 21)),
                  out_min=-100, out_max=120, stride=stride, padding=padding, dilation=dilation,
                  groups=groups)
    prog = compile_conv2d(config, x, w, **kwargs)
    check_layout(prog)
    np.testing.assert_array_equal(prog.expected["y"], qconv2d(x, w, **kwargs))
    geom = prog.info["geometry"]
    assert prog.macs == geom.macs
    assert prog.ideal_cycles == math.ceil(geom.macs / (config.rows * config.cols))
    run_and_check(prog)


def test_default_conv_schedule():
    """3×3 conv 16×16×32 → 32 on the default preset: whole output rows per block, all
    weights resident, loads overlapping compute."""
    seed = SEED_BASE + 8000
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset("default")
    x = rng.integers(-128, 128, (1, 16, 16, 32)).astype(np.int8)
    w = rng.integers(-127, 128, (3, 3, 32, 32)).astype(np.int8)
    prog = compile_conv2d(config, x, w, x_zero_point=-3, bias=rng.integers(-999, 999, 32),
                          multiplier=1 << 30, shift=-9, out_zero_point=0, padding=1)
    assert prog.macs == 16 * 16 * 32 * 9 * 32 and prog.ideal_cycles == prog.macs // 64
    assert prog.info["m_blocks"] == [32, 32, 48, 48, 48, 48]     # whole output rows
    assert prog.info["k_tiles"] == 36
    w_loads = [i for i in prog.instructions
               if isinstance(i, Load) and i.target == LoadTarget.WGT]
    assert len(w_loads) == 4                               # each weight tile loaded once
    assert check_overlap(prog) < 0.51         # about half a word per core cycle
    run_and_check(prog)


# -- attention ------------------------------------------------------------------------------


ATTENTION_CASES = [(preset, sq, sk, d, dv, heads)
                   for preset in PRESETS
                   for sq, sk, d, dv, heads in [(5, 7, 4, 3, 1), (20, 33, 8, 8, 2),
                                                (16, 16, 16, 16, 1), (70, 12, 6, 10, 3),
                                                (9, 1, 3, 2, 1)]]


@pytest.mark.parametrize("preset, sq, sk, d, dv, heads", ATTENTION_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1:]))}" for c in ATTENTION_CASES])
def test_random_attention(preset, sq, sk, d, dv, heads):
    seed = SEED_BASE + 9000 + ATTENTION_CASES.index((preset, sq, sk, d, dv, heads))
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset(preset)
    q = rng.integers(-127, 128, (sq, heads * d)).astype(np.int8)
    k = rng.integers(-127, 128, (sk, heads * d)).astype(np.int8)
    v = rng.integers(-127, 128, (sk, heads * dv)).astype(np.int8)
    params = AttentionParams.from_scales(q_scale=rng.uniform(0.005, 0.03),
                                         k_scale=rng.uniform(0.005, 0.03),
                                         v_scale=rng.uniform(0.01, 0.05),
                                         out_scale=rng.uniform(0.01, 0.05), head_dim=d,
                                         out_zero_point=int(rng.integers(-10, 11)))
    prog = compile_attention(config, q, k, v, params, heads=heads)
    check_layout(prog)
    np.testing.assert_array_equal(prog.expected["y"],
                                  multi_head_attention(q, k, v, params, heads=heads))
    assert prog.macs == heads * (sq * d * sk + sq * sk * dv)
    check_host_dependencies(prog)
    run_and_check(prog)


def check_host_dependencies(prog):
    """A LOAD never reads host bytes that a STORE wrote since the last FENCE (the
    controller does not track host memory)."""
    written = []
    for instr in prog.instructions:
        if isinstance(instr, Fence):
            written = []
        elif isinstance(instr, Store):
            for o in range(instr.outer_count):
                for i in range(instr.inner_count):
                    a = instr.addr + o * instr.outer_stride + i * instr.inner_stride
                    written.append((a, a + instr.lanes * instr.elem_bytes))
        elif isinstance(instr, Load):
            elem = 4 if instr.target == LoadTarget.PARAM else 1
            for o in range(instr.outer_count):
                for i in range(instr.inner_count):
                    a = instr.addr + o * instr.outer_stride + i * instr.inner_stride
                    hi = a + (instr.lanes - 1) * instr.lane_stride + elem
                    assert not any(lo < hi and a < end for lo, end in written)


def test_attention_uses_softmax_and_fence():
    config = NPUConfig.preset("default")
    rng = np.random.default_rng(SEED_BASE + 9500)
    q = rng.integers(-127, 128, (8, 8)).astype(np.int8)
    k = rng.integers(-127, 128, (20, 8)).astype(np.int8)
    v = rng.integers(-127, 128, (20, 8)).astype(np.int8)
    params = AttentionParams.from_scales(q_scale=0.02, k_scale=0.02, v_scale=0.02,
                                         out_scale=0.02, head_dim=8)
    prog = compile_attention(config, q, k, v, params)
    kinds = [type(i).__name__ for i in prog.instructions]
    assert kinds.count("Fence") == 1
    vectors = [i for i in prog.instructions if isinstance(i, Vector)]
    assert [int(v.op) for v in vectors] == [4, 4, 4, 0]      # 3 regrouping copies, SOFTMAX
    assert vectors[-1].n_valid == 20 and vectors[-1].n_words == 3
    ws = next(s for s in prog.segments if s.kind == "workspace")
    assert ws.size == 8 * 24


# -- errors ----------------------------------------------------------------------------------


TINY = NPUConfig.preset("tiny")


def small_job(**kwargs):
    args = dict(a=np.zeros((4, 4), np.int64), w=np.zeros((4, 2), np.int64))
    args.update(kwargs)
    return GemmJob(**args)


@pytest.mark.parametrize("call, exc, regex", [
    (lambda: compile_gemm(None, small_job()), TypeError, r"^config must be an NPUConfig, not None$"),
    (lambda: compile_gemm(TINY, "job"), TypeError, r"^job must be a GemmJob, not 'job'$"),
    (lambda: compile_gemm(TINY.replace(modes=("int8",)), small_job(mode="int4")), ValueError,
     r"^mode must be one of the built modes \['int8'\], not 'int4'$"),
    (lambda: compile_gemm(TINY.replace(sparse_2_4=False), small_job(sparsity="2:4")), ValueError,
     r"^sparsity '2:4' needs a configuration with sparse_2_4$"),
    (lambda: compile_gemm(TINY, small_job(a=np.zeros((4, 600), np.int64), w=np.zeros((600, 2), np.int64))),
     ValueError, r"^K=600 needs 600 weight words per output tile, more than the weight "
                 r"scratchpad holds \(wgt_sp_depth=512\)$"),
    (lambda: compile_gemm(TINY.replace(act_sp_depth=64, wgt_sp_depth=1024),
                          small_job(a=np.zeros((4, 200), np.int64), w=np.zeros((200, 2), np.int64))),
     ValueError, r"^K=200 needs 100 activation words per row, more than the activation "
                 r"scratchpad holds \(act_sp_depth=64\)$"),
    (lambda: compile_gemm(TINY, small_job(), base=3), ValueError,
     r"^base must be a 64-byte aligned 32-bit address, not 3$"),
    (lambda: compile_gemm(TINY, small_job(), base=1 << 32), ValueError,
     r"^base must be a 64-byte aligned 32-bit address, not 4294967296$"),
    (lambda: compile_gemm(TINY, small_job(), base=0xFFFFFFC0), ValueError,
     r"^the memory image does not fit 32-bit addresses from base 0xffffffc0 \(\d+ bytes\)$"),
    (lambda: compile_conv2d(TINY, np.zeros((1, 4, 4, 2), np.int8), np.zeros((3, 3, 2, 2), np.int8),
                            x_zero_point=0, bias=0, multiplier=1 << 30, shift=40,
                            out_zero_point=0), ValueError, r"^shift must be in \[-31, 30\], found 40$"),
    (lambda: compile_conv2d(TINY, np.zeros((1, 4, 4, 2), np.int16), np.zeros((3, 3, 2, 2), np.int8),
                            x_zero_point=0, bias=0, multiplier=1 << 30, shift=0,
                            out_zero_point=0), TypeError, r"^x must be an int8 NumPy array, not int16$"),
    (lambda: compile_conv2d(TINY, np.zeros((1, 4, 4, 2), np.int8), np.zeros((3, 3, 2, 2), np.int8),
                            x_zero_point=0, bias=0, multiplier=1 << 30, shift=0,
                            out_zero_point=0, stride=0), ValueError,
     r"^stride must be at least 1, not \(0, 0\)$"),
    (lambda: compile_conv2d(TINY, np.zeros((1, 20, 20, 40), np.int8),
                            np.zeros((7, 7, 40, 2), np.int8), x_zero_point=0, bias=0,
                            multiplier=1 << 30, shift=0, out_zero_point=0), ValueError,
     r"^a 7×7 kernel with 40 input channels per group needs 1960 weight words per output "
     r"tile, more than the weight scratchpad holds \(wgt_sp_depth=512\)$"),
    (lambda: compile_attention(TINY, np.zeros((4, 4), np.int8), np.zeros((300, 4), np.int8),
                               np.zeros((300, 4), np.int8), AttentionParams(1, 0, 1, 0)),
     ValueError, r"^attention with d=4 and S_k=300 needs 608 weight words, more than the "
                 r"weight scratchpad holds \(wgt_sp_depth=512\)$"),
    (lambda: compile_attention(TINY, np.zeros((4, 4), np.int8), np.zeros((4, 4), np.int8),
                               np.zeros((4, 4), np.int8), AttentionParams(1, 0, 1, 0), heads=3),
     ValueError, r"^heads must divide the width of q \(4\) and of v \(4\), not 3$"),
    (lambda: compile_attention(TINY, np.zeros((4, 4), np.int8), np.zeros((4, 4), np.int8),
                               np.zeros((4, 4), np.int8), None), TypeError,
     r"^params must be an AttentionParams, not None$"),
])
def test_bad_arguments(call, exc, regex):
    with pytest.raises(exc, match=regex):
        call()


def test_memory_fill_and_extract():
    prog = compile_gemm(TINY, small_job(a=np.ones((3, 3), np.int64), w=np.ones((3, 2), np.int64)))
    memory = prog.memory(0x11)
    out = next(s for s in prog.segments if s.kind == "output")
    assert memory.read(out.addr, out.size) == b"\x11" * out.size
    assert prog.extract(memory)["y"].tolist() == [[0x11, 0x11]] * 3
    with pytest.raises(ValueError, match=r"^fill must be a byte value 0\.\.255, not 256$"):
        prog.memory(256)


# -- bf16 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_bf16_gemm_on_the_model(preset):
    """BF16 GEMMs with special operands: the model's result equals the fixed-order golden
    GEMM; the planned program is the compiled one."""
    from npugen.golden.bf16_gemm import random_bf16
    from npugen.golden.compiler import compile_bf16_gemm, plan_gemm

    config = NPUConfig.preset(preset).replace(modes=("int8", "bf16"))
    seed = SEED_BASE + 900 + len(preset)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    for m, k, n in ((1, 1, 1), (7, 19, 5), (33, 70, 17)):
        program = compile_bf16_gemm(config, random_bf16(rng, (m, k), specials=0.1),
                                    random_bf16(rng, (k, n), specials=0.1))
        matmul = next(i for i in program.instructions if isinstance(i, Matmul))
        assert (matmul.mode, matmul.raw) == (3, 1)
        assert matmul.k_valid_last == k - (matmul.k_tiles - 1) * (config.rows // 2)
        result, memory = program.run()
        assert result.ok, result
        np.testing.assert_array_equal(program.extract(memory)["y"], program.expected["y"])
        plan = plan_gemm(config, m, k, n, mode="bf16", raw=True)
        assert plan.instructions == program.instructions


def test_bf16_gemm_rejects():
    from npugen.golden.compiler import compile_bf16_gemm

    config = NPUConfig.preset("tiny")
    ok = np.zeros((2, 2), dtype=np.uint16)
    with pytest.raises(ValueError, match=r"^mode must be one of the built modes \['int8', "
                                         r"'int4', 'binary'\], not 'bf16'$"):
        compile_bf16_gemm(config, ok, ok)
    config = config.replace(modes=("int8", "bf16"))
    with pytest.raises(ValueError, match=r"^a_bits and w_bits must be M×K and K×N, not "
                                         r"\(2, 2\) and \(3, 2\)$"):
        compile_bf16_gemm(config, ok, np.zeros((3, 2), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"^a_bits must hold 16-bit BF16 encodings"):
        compile_bf16_gemm(config, np.full((2, 2), -1), ok)
