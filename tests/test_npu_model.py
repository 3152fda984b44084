"""Tests of npugen.golden.npu_model: every instruction's semantics (against independent
loop implementations, the GEMM core's tile program and golden.vector), every error code
with its detail and address, the order of checks, and the run loop."""

import numpy as np
import pytest

from npugen.golden.config import NPUConfig
from npugen.golden.isa import (CoreError, End, Fence, Load, LoadTarget, Matmul, NPUError,
                               Opcode, Store, Vector, VectorOp, assemble, encode)
from npugen.golden.npu_model import (HostMemory, ModelLimitError, NPUModel, RunResult,
                                     check_instruction, instruction_ranges)
from npugen.golden.precision import MODE_CODES
from npugen.golden.tile_program import lower_gemm, random_gemm_job
from npugen.golden.vector import vector_op

SEED_BASE = 0x4E50_0000
TINY = NPUConfig.preset("tiny")
DEFAULT = NPUConfig.preset("default")
TINY_BF16 = TINY.replace(modes=TINY.modes + ("bf16",))
BASE = 0x2000
PROG = BASE                    # programs at the start of memory
DATA = BASE + 0x400            # data after them
SIZE = 0x2000
WINDOW = (BASE, BASE + SIZE)


def memory_with(program, data=b"", *, data_addr=DATA):
    memory = HostMemory(BASE, SIZE)
    memory.write(PROG, assemble(program))
    memory.write(data_addr, data)
    return memory


def run(config, program, data=b"", *, model=None, read_window=WINDOW, write_window=WINDOW,
        memory=None):
    model = model or NPUModel(config)
    memory = memory or memory_with(program, data)
    result = model.run(memory, PROG, read_window=read_window, write_window=write_window)
    return model, memory, result


def error(code, detail, index, retired=None):
    return RunResult("error", code, detail, PROG + 32 * index,
                     index if retired is None else retired)


# -- HostMemory -------------------------------------------------------------------------------


def test_host_memory():
    memory = HostMemory(0x100, 16)
    assert (memory.base, memory.size, memory.limit) == (0x100, 16, 0x110)
    memory.write(0x10E, b"\x01\x02")
    assert memory.read(0x10D, 3) == b"\x00\x01\x02"
    assert memory.array()[14] == 1 and memory.contains(0x100, 16) and not memory.contains(0xFF)
    copy = memory.copy()
    copy.write(0x100, b"\x09")
    assert memory.read(0x100, 1) == b"\x00"
    with pytest.raises(ValueError, match=r"^addr 0x10f \(\+2 bytes\) is outside the memory "
                                         r"\[0x100, 0x110\)$"):
        memory.read(0x10F, 2)
    with pytest.raises(ValueError, match=r"^data must be 16 bytes long, not 3$"):
        HostMemory(0, 16, b"abc")
    with pytest.raises(TypeError, match=r"^base must be a non-negative integer, not -1$"):
        HostMemory(-1, 4)
    with pytest.raises(ValueError, match=r"^base \+ size must not exceed 2\*\*32, not 0x100000001$"):
        HostMemory(0xFFFFFFFF, 2)


# -- LOAD ---------------------------------------------------------------------------------


def reference_load(config, instr, memory, old):
    """LOAD by the letter of docs/ISA.md, one lane at a time."""
    lanes = old.shape[1]
    new = old.copy()
    for o in range(instr.outer_count):
        for i in range(instr.inner_count):
            word = []
            for j in range(lanes):
                inside = (instr.outer_lo <= o < instr.outer_hi and
                          instr.inner_lo <= i < instr.inner_hi and j < instr.lanes)
                if not inside:
                    value = instr.pad
                else:
                    a = (instr.addr + o * instr.outer_stride + i * instr.inner_stride +
                         j * instr.lane_stride)
                    if instr.target == LoadTarget.PARAM:
                        value = int.from_bytes(memory.read(a, 4), "little", signed=True)
                    else:
                        value = int.from_bytes(memory.read(a, 1), "little", signed=True)
                if instr.target == LoadTarget.WIDX:
                    value &= 3
                word.append(value)
            new[instr.sp_addr + o * instr.inner_count + i] = word
    return new


@pytest.mark.parametrize("target", list(LoadTarget), ids=lambda t: t.name)
@pytest.mark.parametrize("seed", range(4))
def test_load_matches_reference(target, seed):
    seed = SEED_BASE + 10 * int(target) + seed
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = TINY if seed % 2 else DEFAULT
    model = NPUModel(config)
    name = target.name
    model.sp[name][:] = rng.integers(-100, 100, model.sp[name].shape)
    if target == LoadTarget.WIDX:
        model.sp[name] &= 3
    data = rng.integers(0, 256, 0x800).astype(np.uint8).tobytes()
    word_lanes = model.sp[name].shape[1]
    elem = 4 if target == LoadTarget.PARAM else 1
    outer, inner = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    instr = Load(target=target, sp_addr=int(rng.integers(0, 40)), addr=DATA + 0x400,
                 inner_count=inner, outer_count=outer,
                 inner_stride=elem * int(rng.integers(-8, 9)) * word_lanes,
                 outer_stride=elem * int(rng.integers(-40, 41)),
                 lane_stride=elem * int(rng.integers(0, 3)),
                 lanes=int(rng.integers(1, word_lanes + 1)), pad=int(rng.integers(-128, 128)),
                 inner_lo=int(rng.integers(0, 3)), inner_hi=int(rng.integers(2, 7)),
                 outer_lo=int(rng.integers(0, 2)), outer_hi=int(rng.integers(1, 6)))
    before = model.sp[name].copy()
    memory = memory_with([instr, End()], data)
    expect = reference_load(config, instr, memory, before)
    model, memory, result = run(config, [instr, End()], memory=memory, model=model)
    assert result == RunResult("done", NPUError.NONE, 0, PROG + 32, 2)
    np.testing.assert_array_equal(model.sp[name], expect)
    # Only the load's own scratchpad changed.
    end = instr.sp_addr + outer * inner
    assert (model.sp[name][end:] == before[end:]).all()


def test_load_param_is_little_endian_int32_and_pad_sign_extends():
    values = np.array([-2, 0x12345678, -(1 << 31), (1 << 31) - 1], dtype="<i4")
    instr = Load(target=LoadTarget.PARAM, sp_addr=5, addr=DATA, inner_count=2, inner_stride=8,
                 lane_stride=4, lanes=1, pad=-3)
    model, _, result = run(TINY, [instr, End()], values.tobytes())
    assert result.ok
    assert model.sp["PARAM"][5].tolist() == [-2, -3]
    assert model.sp["PARAM"][6].tolist() == [-(1 << 31), -3]


def test_load_widx_keeps_low_two_bits():
    instr = Load(target=LoadTarget.WIDX, sp_addr=0, addr=DATA, lanes=2, lane_stride=1, pad=-2)
    model, _, result = run(TINY, [instr, Load(target=LoadTarget.WIDX, sp_addr=1, addr=DATA,
                                              lanes=1, pad=-2), End()], bytes([0xFE, 0x07]))
    assert result.ok
    assert model.sp["WIDX"][0].tolist() == [2, 3]
    assert model.sp["WIDX"][1].tolist() == [2, 2]      # pad -2 = 0b...10


def test_load_outside_window_is_not_read():
    # Lanes of words outside the windows are never checked: the base address may point
    # far outside the read window.
    instr = Load(target=LoadTarget.ACT, sp_addr=0, addr=DATA - 0x300, inner_count=3,
                 inner_stride=0x100, lanes=4, lane_stride=1, pad=7, inner_lo=3, inner_hi=4)
    model, _, result = run(DEFAULT, [instr, End()])
    assert result.ok
    assert (model.sp["ACT"][:3] == 7).all()


# -- STORE --------------------------------------------------------------------------------


@pytest.mark.parametrize("elem_bytes", [1, 4])
@pytest.mark.parametrize("seed", range(3))
def test_store_writes_exactly_its_bytes(elem_bytes, seed):
    seed = SEED_BASE + 100 + 10 * elem_bytes + seed
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    model = NPUModel(DEFAULT)
    model.sp["OUT"][:] = rng.integers(-(1 << 31), 1 << 31, model.sp["OUT"].shape)
    outer, inner, lanes = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 9))
    instr = Store(elem_bytes=elem_bytes, sp_addr=int(rng.integers(0, 100)), addr=DATA + 0x800,
                  inner_count=inner, outer_count=outer,
                  inner_stride=elem_bytes * int(rng.integers(-12, 13)),
                  outer_stride=elem_bytes * int(rng.integers(-60, 61)), lanes=lanes)
    memory = memory_with([instr, End()], rng.integers(0, 256, 0x1000).astype(np.uint8).tobytes())
    expect = bytearray(memory.data)
    for o in range(outer):          # later words overwrite earlier ones
        for i in range(inner):
            word = model.sp["OUT"][instr.sp_addr + o * inner + i]
            for j in range(lanes):
                a = instr.addr + o * instr.outer_stride + i * instr.inner_stride + j * elem_bytes
                value = int(word[j]) & 0xFFFFFFFF
                expect[a - BASE:a - BASE + elem_bytes] = value.to_bytes(4, "little")[:elem_bytes]
    model, memory, result = run(DEFAULT, [instr, End()], memory=memory, model=model)
    assert result.ok
    assert memory.data == expect


# -- MATMUL -------------------------------------------------------------------------------


def matmuls_from_tile_program(config, model, program, *, act_base=7, wgt_base=3,
                              param_base=2, out_base=11):
    """Place a tile program's streams in the scratchpads and return one MATMUL per output
    tile (its K tiles consecutive), with the rows it must produce."""
    R = config.rows
    instrs, expected = [], []
    w_pos = a_pos = q_pos = r_pos = 0
    cmds = program.commands
    c = 0
    while c < len(cmds):
        k_tiles = next(i for i in range(len(cmds) - c) if cmds[c + i].last) + 1
        group = cmds[c:c + k_tiles]
        m_rows = group[0].m_rows
        wgt = wgt_base + w_pos
        act = act_base + a_pos
        for kt in range(k_tiles):
            for r in range(R):
                model.sp["WGT"][wgt + kt * R + r] = program.weight_rows[w_pos]
                if config.sparse_2_4:
                    model.sp["WIDX"][wgt + kt * R + r] = program.weight_index_rows[w_pos]
                w_pos += 1
            for m in range(m_rows):
                model.sp["ACT"][act + kt * m_rows + m] = program.act_rows[a_pos]
                a_pos += 1
        quant = program.quant[q_pos]
        q_pos += 1
        param = param_base + 3 * (q_pos - 1)
        model.sp["PARAM"][param:param + 3] = [quant.bias, quant.multiplier, quant.shift]
        instrs.append(Matmul(mode=group[0].mode, sparse=int(group[0].sparse), raw=int(quant.raw),
                             m_rows=m_rows, k_tiles=k_tiles, k_valid_last=group[-1].k_valid,
                             act_addr=act, wgt_addr=wgt, out_addr=out_base + r_pos,
                             param_addr=param, a_zero_point=group[0].a_zero_point,
                             out_zero_point=quant.out_zero_point, out_min=quant.out_min,
                             out_max=quant.out_max))
        expected.extend(program.result_rows[r_pos:r_pos + m_rows])
        r_pos += m_rows
        c += k_tiles
    return instrs, np.array(expected)


MATMUL_CASES = [(mode, sparsity, preset, i)
                for mode, sparsity in (("int8", None), ("int4", None), ("binary", None),
                                       ("int8", "2:4"))
                for preset in ("tiny", "default") for i in range(3)]


@pytest.mark.parametrize("mode, sparsity, preset, i", MATMUL_CASES,
                         ids=[f"{m}-{s or 'dense'}-{p}-{i}" for m, s, p, i in MATMUL_CASES])
def test_matmul_equals_the_core_tile_program(mode, sparsity, preset, i):
    seed = SEED_BASE + 200 + 17 * MODE_CODES[mode] + (50 if sparsity else 0) + \
        (5 if preset == "tiny" else 0) + i
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = NPUConfig.preset(preset).replace(acc_depth=16)
    k_tile = config.rows * {"int8": 1, "int4": 2, "binary": 8}[mode] * (2 if sparsity else 1)
    k = max(1, k_tile * int(rng.integers(1, 5)) + int(rng.integers(-3, 3)))
    job = random_gemm_job(rng, int(rng.integers(1, 40)), k, int(rng.integers(1, 3 * config.cols)),
                          raw=bool(rng.random() < 0.3), extremes=bool(rng.random() < 0.3),
                          mode=mode, sparsity=sparsity)
    program = lower_gemm(config, job)
    model = NPUModel(config)
    instrs, expected = matmuls_from_tile_program(config, model, program)
    before = model.sp["OUT"].copy()
    model, _, result = run(config, instrs + [End()], model=model)
    assert result.ok and result.retired == len(instrs) + 1
    out = model.sp["OUT"][11:11 + len(expected)]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(model.sp["OUT"][:11], before[:11])


def test_matmul_accumulator_wraps_at_acc_bits():
    config = DEFAULT.replace(acc_bits=18)
    model = NPUModel(config)
    model.sp["ACT"][0:64, :8] = -128           # a - zp = -255
    model.sp["WGT"][0:64] = -128               # weights as stored (the core takes any byte)
    model.sp["PARAM"][0] = 1000                # bias
    model.sp["PARAM"][1] = 1 << 30
    model.sp["PARAM"][2] = 0
    instr = Matmul(raw=1, m_rows=8, k_tiles=8, k_valid_last=8, a_zero_point=127)
    model, _, result = run(config, [instr, End()], model=model)
    exact = 64 * 255 * 128 + 1000
    wrapped = (exact + (1 << 17)) % (1 << 18) - (1 << 17)
    assert result.ok and (model.sp["OUT"][0:8] == wrapped).all()


def core_error_program(config, *, mode=0, sparse=0, zp=0, shift=0, bad_index_tile=None):
    model = NPUModel(config)
    R = config.rows
    model.sp["PARAM"][0:3] = [[0] * config.cols, [1 << 30] * config.cols, [0] * config.cols]
    model.sp["PARAM"][2, 1] = shift
    model.sp["WIDX"][0:3 * R] = np.tile(np.array([[0], [1]]), (3 * R // 2, config.cols))
    if bad_index_tile is not None:
        model.sp["WIDX"][bad_index_tile * R + 1, 0] = 0     # group 0: indices 0, 0
    instr = Matmul(mode=mode, sparse=sparse, m_rows=4, k_tiles=3, k_valid_last=1,
                   a_zero_point=zp)
    return model, [Fence(), instr, End()]


@pytest.mark.parametrize("kwargs, detail", [
    (dict(mode=1, zp=8), CoreError.BAD_ZERO_POINT),
    (dict(mode=1, zp=-9), CoreError.BAD_ZERO_POINT),
    (dict(mode=0, zp=100), None),                              # int8 takes any zero point
    (dict(shift=31), CoreError.BAD_SHIFT),
    (dict(shift=-32), CoreError.BAD_SHIFT),
    (dict(shift=1 << 20), CoreError.BAD_SHIFT),               # the whole int32 lane counts
    (dict(shift=30), None),
    (dict(sparse=1, bad_index_tile=2), CoreError.BAD_SPARSE_INDEX),
    (dict(sparse=1, bad_index_tile=0), CoreError.BAD_SPARSE_INDEX),
    (dict(sparse=0, bad_index_tile=0), None),                  # dense tiles ignore WIDX
    # Order: zero point, then sparse indices, then shift.
    (dict(mode=1, zp=9, shift=31), CoreError.BAD_ZERO_POINT),
    (dict(sparse=1, bad_index_tile=1, shift=31), CoreError.BAD_SPARSE_INDEX),
])
def test_matmul_core_errors(kwargs, detail):
    model, program = core_error_program(TINY, **kwargs)
    before = model.sp["OUT"].copy()
    model, _, result = run(TINY, program, model=model)
    if detail is None:
        assert result.ok
    else:
        assert result == error(NPUError.CORE, int(detail), 1)
        np.testing.assert_array_equal(model.sp["OUT"], before)     # nothing written


# -- VECTOR -------------------------------------------------------------------------------


VECTOR_CASES = [
    Vector(op=VectorOp.SOFTMAX, count=3, src=4, dst=40, n_words=3, n_valid=20, src_stride=5,
           dst_stride=3, multiplier=1 << 30, shift=-8),
    Vector(op=VectorOp.SOFTMAX, count=4, src=10, dst=10, n_words=2, n_valid=9, src_stride=2,
           dst_stride=2, multiplier=(1 << 30) + 12345, shift=-12),
    Vector(op=VectorOp.ROWMAX, count=3, src=0, dst=30, n_words=4, n_valid=27, src_stride=4,
           dst_stride=1),
    Vector(op=VectorOp.ADD, count=2, src=0, src_b=8, dst=20, n_words=3, src_stride=4,
           dst_stride=3),
    Vector(op=VectorOp.SUB, count=3, src=0, src_b=3, dst=0, n_words=1, src_stride=1,
           dst_stride=1),
    Vector(op=VectorOp.CLAMP, count=5, src=6, dst=50, n_words=2, src_stride=3, dst_stride=7,
           lo=-1000, hi=5000),
    Vector(op=VectorOp.REQUANT, count=2, src=0, dst=0, n_words=5, src_stride=5, dst_stride=5,
           multiplier=1518500250, shift=-20, zero_point=-3, lo=-100, hi=90),
    Vector(op=VectorOp.MAX, count=2, src=0, src_b=8, dst=20, n_words=3, src_stride=4,
           dst_stride=3),
    Vector(op=VectorOp.PACK_INT4, count=2, src=0, dst=30, n_words=3, n_valid=21,
           src_stride=3, dst_stride=2),
    Vector(op=VectorOp.PACK_BINARY, count=2, src=0, dst=30, n_words=9, n_valid=70,
           src_stride=9, dst_stride=2),
    Vector(op=VectorOp.TO_BF16, count=2, src=0, dst=30, n_words=3, n_valid=21,
           src_stride=4, dst_stride=7),
    Vector(op=VectorOp.TO_BF16_RELU, count=3, src=0, dst=20, n_words=1, src_stride=1,
           dst_stride=2),
]


@pytest.mark.parametrize("instr", VECTOR_CASES, ids=lambda v: VectorOp(v.op).name)
def test_vector_rows(instr):
    seed = SEED_BASE + 300 + int(instr.op)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    config = DEFAULT.replace(modes=DEFAULT.modes + ("bf16",))
    model = NPUModel(config)
    out = model.sp["OUT"]
    out[:] = rng.integers(-(1 << 31), 1 << 31, out.shape)
    out[:64] = rng.integers(-(1 << 16), 1 << 16, (64, 8))
    before = out.copy()

    def rows(start):
        return np.array([before[start + r * instr.src_stride:
                                start + r * instr.src_stride + instr.n_words].ravel()
                         for r in range(instr.count)])

    b = rows(instr.src_b) if instr.op in (VectorOp.ADD, VectorOp.SUB, VectorOp.MAX) else None
    result = vector_op(VECTOR_OPS_NAMES[instr.op], rows(instr.src), b, n_valid=instr.n_valid,
                       multiplier=instr.multiplier, shift=instr.shift,
                       zero_point=instr.zero_point, lo=instr.lo, hi=instr.hi)
    expect = before.copy()
    d_words = {VectorOp.ROWMAX: 1, VectorOp.PACK_INT4: -(-instr.n_words // 2),
               VectorOp.PACK_BINARY: -(-instr.n_words // 8), VectorOp.TO_BF16: 2 * instr.n_words,
               VectorOp.TO_BF16_RELU: 2 * instr.n_words}.get(instr.op, instr.n_words)
    for r in range(instr.count):
        row = np.broadcast_to(result[r], (d_words * 8,)) if instr.op == VectorOp.ROWMAX \
            else np.pad(result[r], (0, d_words * 8 - len(result[r])))
        expect[instr.dst + r * instr.dst_stride:
               instr.dst + r * instr.dst_stride + d_words] = row.reshape(d_words, 8)
    model, _, res = run(config, [instr, End()], model=model)
    assert res.ok
    np.testing.assert_array_equal(model.sp["OUT"], expect)


VECTOR_OPS_NAMES = ["softmax", "rowmax", "add", "sub", "clamp", "requant", "max", "pack_int4",
                    "pack_binary", "to_bf16", "to_bf16_relu"]


# -- static checks ------------------------------------------------------------------------


STATIC_CASES = [
    # LOAD
    (TINY, Load(target=4, lanes=1), NPUError.ILLEGAL_OPCODE),
    (TINY, Load(target=15, lanes=0), NPUError.ILLEGAL_OPCODE),
    (TINY.replace(sparse_2_4=False), Load(target=LoadTarget.WIDX, lanes=1),
     NPUError.FEATURE_NOT_BUILT),
    (TINY.replace(sparse_2_4=False), Load(target=LoadTarget.WIDX, lanes=0),
     NPUError.FEATURE_NOT_BUILT),
    (TINY, Load(inner_count=0, lanes=1), NPUError.BAD_FIELD),
    (TINY, Load(outer_count=0, lanes=1), NPUError.BAD_FIELD),
    (TINY, Load(lanes=0), NPUError.BAD_FIELD),
    (TINY, Load(target=LoadTarget.ACT, lanes=5), NPUError.BAD_FIELD),         # 4 act lanes
    (TINY.replace(sparse_2_4=False), Load(target=LoadTarget.ACT, lanes=3), NPUError.BAD_FIELD),
    (TINY, Load(target=LoadTarget.ACT, lanes=4), None),
    (TINY, Load(target=LoadTarget.WGT, lanes=3), NPUError.BAD_FIELD),
    (TINY, Load(target=LoadTarget.PARAM, lanes=3, sp_addr=64), NPUError.BAD_FIELD),
    (TINY, Load(target=LoadTarget.PARAM, lanes=2, sp_addr=63, outer_count=2),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Load(target=LoadTarget.PARAM, lanes=2, sp_addr=62, outer_count=2), None),
    (TINY, Load(target=LoadTarget.ACT, lanes=1, sp_addr=2047, inner_count=2),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Load(target=LoadTarget.WIDX, lanes=1, sp_addr=511, inner_count=2),
     NPUError.BAD_SP_ADDRESS),
    # STORE
    (TINY, Store(elem_bytes=2), NPUError.BAD_FIELD),
    (TINY, Store(elem_bytes=0), NPUError.BAD_FIELD),
    (TINY, Store(lanes=0), NPUError.BAD_FIELD),
    (TINY, Store(lanes=3), NPUError.BAD_FIELD),
    (TINY, Store(inner_count=0), NPUError.BAD_FIELD),
    (TINY, Store(outer_count=0, sp_addr=600), NPUError.BAD_FIELD),
    (TINY, Store(sp_addr=500, inner_count=4, outer_count=4), NPUError.BAD_SP_ADDRESS),
    (TINY, Store(sp_addr=496, inner_count=4, outer_count=4, elem_bytes=4, lanes=2), None),
    # MATMUL
    (TINY.replace(modes=("int8",)), Matmul(mode=1), NPUError.FEATURE_NOT_BUILT),
    (TINY.replace(modes=("int8", "int4")), Matmul(mode=2, m_rows=0), NPUError.FEATURE_NOT_BUILT),
    (TINY, Matmul(mode=1, sparse=1), NPUError.FEATURE_NOT_BUILT),
    (TINY, Matmul(mode=3, sparse=1), NPUError.FEATURE_NOT_BUILT),
    (TINY.replace(sparse_2_4=False), Matmul(sparse=1), NPUError.FEATURE_NOT_BUILT),
    (TINY, Matmul(mode=3), NPUError.FEATURE_NOT_BUILT),                # bf16 not built
    (TINY.replace(modes=("int8", "bf16")), Matmul(mode=3), NPUError.BAD_FIELD),   # not raw
    (TINY.replace(modes=("int8", "bf16")), Matmul(mode=3, raw=1), None),
    (TINY.replace(modes=("int8", "bf16")), Matmul(mode=3, raw=1, k_valid_last=2),
     NPUError.BAD_FIELD),                                               # bf16: K per tile 1
    (TINY, Matmul(m_rows=0), NPUError.BAD_FIELD),
    (TINY, Matmul(m_rows=65), NPUError.BAD_FIELD),                    # acc_depth 64
    (TINY, Matmul(m_rows=64, out_addr=448), None),
    (TINY, Matmul(k_tiles=0), NPUError.BAD_FIELD),
    (TINY, Matmul(k_valid_last=0), NPUError.BAD_FIELD),
    (TINY, Matmul(k_valid_last=3), NPUError.BAD_FIELD),               # int8: K per tile 2
    (TINY, Matmul(mode=1, k_valid_last=4), None),                     # int4: 4
    (TINY, Matmul(mode=1, k_valid_last=5), NPUError.BAD_FIELD),
    (TINY, Matmul(mode=2, k_valid_last=16), None),                    # binary: 16
    (TINY, Matmul(mode=2, k_valid_last=17), NPUError.BAD_FIELD),
    (TINY, Matmul(sparse=1, k_valid_last=4), None),                   # 2:4: 2·rows
    (TINY, Matmul(sparse=1, k_valid_last=5), NPUError.BAD_FIELD),
    (TINY, Matmul(out_min=5, out_max=4), NPUError.BAD_FIELD),
    (TINY, Matmul(out_min=5, out_max=5, act_addr=0xFFFF), NPUError.BAD_SP_ADDRESS),
    (TINY, Matmul(m_rows=4, k_tiles=3, act_addr=2037), NPUError.BAD_SP_ADDRESS),
    (TINY, Matmul(m_rows=4, k_tiles=3, act_addr=2036), None),
    (TINY, Matmul(k_tiles=3, wgt_addr=507), NPUError.BAD_SP_ADDRESS),  # 3 tiles × 2 rows
    (TINY, Matmul(k_tiles=3, wgt_addr=506), None),
    (TINY, Matmul(param_addr=62), NPUError.BAD_SP_ADDRESS),
    (TINY, Matmul(param_addr=61), None),
    (TINY, Matmul(m_rows=2, out_addr=511), NPUError.BAD_SP_ADDRESS),
    # VECTOR
    (TINY, Vector(op=11), NPUError.ILLEGAL_OPCODE),
    # A BF16 conversion writes 2·n_words per row: never in place, rows must not overlap;
    # it exists only with the bf16 mode built.
    (TINY_BF16, Vector(op=VectorOp.TO_BF16, n_words=2, src=0, dst=0), NPUError.BAD_FIELD),
    (TINY_BF16, Vector(op=VectorOp.TO_BF16_RELU, n_words=2, src=4, dst=3),
     NPUError.BAD_FIELD),
    (TINY_BF16, Vector(op=VectorOp.TO_BF16_RELU, n_words=2, src=4, dst=6), None),
    (TINY_BF16, Vector(op=VectorOp.TO_BF16, n_words=2, src=0, dst=TINY.out_sp_depth - 3),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Vector(op=VectorOp.TO_BF16_RELU, n_words=2, src=4, dst=6),
     NPUError.FEATURE_NOT_BUILT),
    (TINY, Vector(op=VectorOp.MAX, dst=10, src_b=5), None),
    (TINY, Vector(op=VectorOp.MAX, count=2, n_words=2, src=0, src_b=10, dst=11, src_stride=2,
                  dst_stride=2), NPUError.BAD_FIELD),          # overlaps operand b
    # PACK: d_words = ceil(n_words / 2) (int4), ceil(n_words / 8) (binary)
    (TINY, Vector(op=VectorOp.PACK_INT4, count=3, n_words=4, n_valid=8, src=0, dst=0,
                  src_stride=2, dst_stride=2), None),          # identical, d_words 2
    (TINY, Vector(op=VectorOp.PACK_INT4, count=3, n_words=4, n_valid=8, src=0, dst=0,
                  src_stride=1, dst_stride=1), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.PACK_BINARY, count=2, n_words=9, n_valid=18, src=0, dst=9,
                  src_stride=9, dst_stride=2), NPUError.BAD_FIELD),   # src [0, 18) vs dst
    (TINY, Vector(op=VectorOp.PACK_BINARY, count=2, n_words=9, n_valid=18, src=0, dst=18,
                  src_stride=9, dst_stride=2), None),
    (TINY, Vector(op=VectorOp.PACK_BINARY, n_words=16, n_valid=32, dst=510), None),
    (TINY, Vector(op=VectorOp.PACK_BINARY, n_words=17, n_valid=32, dst=510),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Vector(op=15, count=0), NPUError.ILLEGAL_OPCODE),
    (TINY, Vector(count=0), NPUError.BAD_FIELD),
    (TINY, Vector(n_words=0, n_valid=0), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.SOFTMAX, n_words=2, n_valid=5, dst=10), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.SOFTMAX, n_words=2, n_valid=4, dst=10), None),
    (TINY, Vector(op=VectorOp.ADD, n_valid=0, dst=10, src_b=5), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.CLAMP, multiplier=-1, dst=10), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.CLAMP, shift=31, dst=10), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.CLAMP, shift=-32, dst=10), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.CLAMP, shift=-31, dst=10), None),
    (TINY, Vector(op=VectorOp.CLAMP, lo=1, hi=0, dst=10), NPUError.BAD_FIELD),
    # Overlap rules.
    (TINY, Vector(op=VectorOp.CLAMP, count=3, n_words=2, src=0, dst=5, src_stride=2,
                  dst_stride=2), NPUError.BAD_FIELD),          # src [0, 6) vs dst [5, 11)
    (TINY, Vector(op=VectorOp.CLAMP, count=3, n_words=2, src=0, dst=6, src_stride=2,
                  dst_stride=2), None),
    (TINY, Vector(op=VectorOp.CLAMP, count=3, n_words=2, src=0, dst=0, src_stride=2,
                  dst_stride=2), None),                       # identical
    (TINY, Vector(op=VectorOp.CLAMP, count=3, n_words=2, src=0, dst=0, src_stride=2,
                  dst_stride=3), NPUError.BAD_FIELD),          # same start, other stride
    (TINY, Vector(op=VectorOp.CLAMP, count=3, n_words=2, src=0, dst=0, src_stride=1,
                  dst_stride=1), NPUError.BAD_FIELD),          # identical, rows overlap
    (TINY, Vector(op=VectorOp.CLAMP, count=1, n_words=2, src=0, dst=0, src_stride=1,
                  dst_stride=1), None),
    (TINY, Vector(op=VectorOp.ROWMAX, count=3, n_words=2, n_valid=4, src=0, dst=0,
                  src_stride=1, dst_stride=1), None),          # d_words 1
    (TINY, Vector(op=VectorOp.ROWMAX, count=3, n_words=2, n_valid=4, src=0, dst=0,
                  src_stride=0, dst_stride=0), NPUError.BAD_FIELD),
    (TINY, Vector(op=VectorOp.ADD, count=2, n_words=2, src=0, src_b=10, dst=11, src_stride=2,
                  dst_stride=2), NPUError.BAD_FIELD),          # overlaps operand b
    (TINY, Vector(op=VectorOp.ADD, count=2, n_words=2, src=0, src_b=10, dst=10, src_stride=2,
                  dst_stride=2), None),
    (TINY, Vector(op=VectorOp.CLAMP, count=2, n_words=2, src=0, src_b=1, dst=4, src_stride=2,
                  dst_stride=2), None),                        # CLAMP has no operand b
    (TINY, Vector(op=VectorOp.CLAMP, count=2, n_words=2, src=509, dst=0, src_stride=2),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Vector(op=VectorOp.CLAMP, count=2, n_words=2, src=0, dst=510, dst_stride=1),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Vector(op=VectorOp.SUB, count=2, n_words=2, src=0, src_b=510, dst=4, src_stride=1),
     NPUError.BAD_SP_ADDRESS),
    (TINY, Fence(), None),
    (TINY, End(), None),
]


@pytest.mark.parametrize("config, instr, code", STATIC_CASES,
                         ids=[f"{i}-{type(c[1]).__name__}" for i, c in enumerate(STATIC_CASES)])
def test_static_checks(config, instr, code):
    expect = None if code is None else (code, int(instr.opcode))
    assert check_instruction(config, instr) == expect
    # The run reports the same error at the instruction's address, after a FENCE.
    model, memory, result = run(config, [Fence(), instr, End()])
    if code is None:
        assert result.ok or result.error not in (NPUError.ILLEGAL_OPCODE,
                                                 NPUError.FEATURE_NOT_BUILT,
                                                 NPUError.BAD_FIELD, NPUError.BAD_SP_ADDRESS)
    else:
        assert result == error(code, int(instr.opcode), 1)


def test_check_instruction_type_errors():
    with pytest.raises(TypeError, match=r"^instr must be a decoded instruction, not 'END'$"):
        check_instruction(TINY, "END")
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not None$"):
        check_instruction(None, End())


def test_instruction_ranges():
    assert instruction_ranges(TINY, Load(target=LoadTarget.WGT, sp_addr=4, inner_count=3,
                                         outer_count=2)) == {"reads": [],
                                                             "writes": [("WGT", 4, 10)]}
    assert instruction_ranges(TINY, Store(sp_addr=9, inner_count=2, outer_count=5)) == {
        "reads": [("OUT", 9, 19)], "writes": []}
    ranges = instruction_ranges(TINY, Matmul(m_rows=5, k_tiles=3, act_addr=1, wgt_addr=2,
                                             out_addr=3, param_addr=4))
    assert ranges == {"reads": [("ACT", 1, 16), ("WGT", 2, 8), ("WIDX", 2, 8), ("PARAM", 4, 7)],
                      "writes": [("OUT", 3, 8)]}
    assert instruction_ranges(TINY.replace(sparse_2_4=False), Matmul())["reads"][2] == \
        ("PARAM", 0, 3)
    assert instruction_ranges(TINY, Vector(op=VectorOp.SUB, count=3, src=1, src_b=20, dst=40,
                                           n_words=2, src_stride=4, dst_stride=5)) == {
        "reads": [("OUT", 1, 11), ("OUT", 20, 30)], "writes": [("OUT", 40, 52)]}
    assert instruction_ranges(TINY, Vector(op=VectorOp.ROWMAX, count=3, dst=40, n_words=2,
                                           dst_stride=5))["writes"] == [("OUT", 40, 51)]


# -- run-time errors ---------------------------------------------------------------------------


def test_illegal_opcodes_stop_the_program():
    memory = memory_with([Fence(), Fence()])
    memory.write(PROG + 64, bytes([0x06]) + bytes(31))
    _, _, result = run(TINY, [], memory=memory)
    assert result == error(NPUError.ILLEGAL_OPCODE, 0x06, 2)
    # Zeroed memory stops at once: opcode 0x00 is illegal.
    _, _, result = run(TINY, [], memory=HostMemory(BASE, SIZE))
    assert result == error(NPUError.ILLEGAL_OPCODE, 0x00, 0)


def test_prog_addr_must_be_aligned():
    model = NPUModel(TINY)
    result = model.run(memory_with([End()]), PROG + 8, read_window=WINDOW, write_window=WINDOW)
    assert result == RunResult("error", NPUError.MISALIGNED, 0, PROG + 8, 0)


def test_fetch_outside_the_read_window_or_memory():
    # The window ends after the second instruction: the third is never read.
    _, _, result = run(TINY, [Fence(), Fence(), End()], read_window=(PROG, PROG + 64))
    assert result == error(NPUError.BAD_HOST_ADDRESS, 0, 2)
    _, _, result = run(TINY, [Fence()], read_window=(PROG + 32, PROG + 4096))
    assert result == error(NPUError.BAD_HOST_ADDRESS, 0, 0)
    # Inside the window but past the memory: the memory answers with an error.
    memory = HostMemory(BASE, 64, assemble([Fence(), Fence()]))
    _, _, result = run(TINY, [], memory=memory, read_window=(0, 0xFFFFFFFF))
    assert result == error(NPUError.AXI_READ_ERROR, 0, 2)


def test_load_errors_and_partial_writes():
    # Word 2 (o=0, i=2) has a lane outside the read window; words 0, 1 are written.
    model = NPUModel(DEFAULT)
    model.sp["ACT"][:] = 55
    window = (BASE, DATA + 20)
    load = Load(target=LoadTarget.ACT, sp_addr=10, addr=DATA, inner_count=4, inner_stride=8,
                lanes=5, lane_stride=1)
    data = bytes(range(1, 33))
    model, _, result = run(DEFAULT, [Fence(), load, End()], data, model=model,
                           read_window=window)
    assert result == error(NPUError.BAD_HOST_ADDRESS, int(Opcode.LOAD), 1)
    assert model.sp["ACT"][10, :5].tolist() == [1, 2, 3, 4, 5]
    assert model.sp["ACT"][11, :5].tolist() == [9, 10, 11, 12, 13]
    assert (model.sp["ACT"][12:14] == 55).all()
    # A window that excludes the failing lane's word avoids the error.
    _, _, result = run(DEFAULT, [load.__class__(**{**load.__dict__, "inner_hi": 2}), End()],
                       data, read_window=window)
    assert result.ok
    # A lane below the window.
    _, _, result = run(DEFAULT, [Load(target=LoadTarget.WGT, addr=BASE - 1, lanes=1), End()])
    assert result == error(NPUError.BAD_HOST_ADDRESS, int(Opcode.LOAD), 0)
    # PARAM lanes must be 4-byte aligned; the window is checked first within a word.
    misaligned = Load(target=LoadTarget.PARAM, addr=DATA + 2, lanes=2, lane_stride=4)
    _, _, result = run(DEFAULT, [misaligned, End()])
    assert result == error(NPUError.MISALIGNED, int(Opcode.LOAD), 0)
    _, _, result = run(DEFAULT, [misaligned, End()], read_window=(BASE, DATA + 8))
    assert result == error(NPUError.BAD_HOST_ADDRESS, int(Opcode.LOAD), 0)
    _, _, result = run(DEFAULT, [Load(target=LoadTarget.ACT, addr=DATA + 2, lanes=2), End()])
    assert result.ok                                   # bytes need no alignment
    # A lane in the window but outside the memory.
    _, _, result = run(DEFAULT, [Load(target=LoadTarget.ACT, addr=BASE + SIZE, lanes=1), End()],
                       read_window=(0, 0xFFFFFFFF))
    assert result == error(NPUError.AXI_READ_ERROR, int(Opcode.LOAD), 0)


def test_store_errors_never_write_outside_the_window():
    model = NPUModel(DEFAULT)
    model.sp["OUT"][0:4] = np.arange(32).reshape(4, 8) + 0x40
    window = (DATA, DATA + 20)
    store = Store(elem_bytes=1, addr=DATA, inner_count=4, inner_stride=8, lanes=6)
    model, memory, result = run(DEFAULT, [Fence(), store, End()], model=model,
                                write_window=window)
    assert result == error(NPUError.BAD_HOST_ADDRESS, int(Opcode.STORE), 1)
    assert memory.read(DATA, 24) == bytes([0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0, 0,
                                           0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0, 0]) + bytes(8)
    # elem_bytes 4 needs 4-byte aligned lanes.
    _, _, result = run(DEFAULT, [Store(elem_bytes=4, addr=DATA + 2, lanes=1), End()])
    assert result == error(NPUError.MISALIGNED, int(Opcode.STORE), 0)
    _, memory, result = run(DEFAULT, [Store(elem_bytes=1, addr=DATA + 2, lanes=1), End()])
    assert result.ok
    # Outside the memory but inside the window.
    _, _, result = run(DEFAULT, [Store(elem_bytes=4, addr=BASE + SIZE - 4, lanes=2), End()],
                       write_window=(0, 0xFFFFFFFF))
    assert result == error(NPUError.AXI_WRITE_ERROR, int(Opcode.STORE), 0)


def test_errors_stop_before_later_instructions():
    later = Store(elem_bytes=1, addr=DATA, lanes=1)
    model, memory, result = run(TINY, [Fence(), Matmul(m_rows=0), later, End()])
    assert result == error(NPUError.BAD_FIELD, int(Opcode.MATMUL), 1)
    assert memory.read(DATA, 1) == b"\x00"


# -- the run loop -------------------------------------------------------------------------------


def test_scratchpads_persist_across_runs_and_reset_clears_them():
    model = NPUModel(TINY)
    _, _, result = run(TINY, [Load(target=LoadTarget.WGT, sp_addr=3, addr=DATA, lanes=2), End()],
                       b"\x05\xFB", model=model)
    assert result.ok and model.sp["WGT"][3].tolist() == [5, -5]
    model.run(memory_with([End()]), PROG, read_window=WINDOW, write_window=WINDOW)
    assert model.sp["WGT"][3].tolist() == [5, -5]
    model.reset()
    assert not model.sp["WGT"].any()


def test_widx_exists_only_with_sparse_2_4():
    assert "WIDX" in NPUModel(TINY).sp
    assert "WIDX" not in NPUModel(TINY.replace(sparse_2_4=False)).sp


def test_run_limit_and_bad_arguments():
    memory = HostMemory(BASE, SIZE, assemble([Fence()] * (SIZE // 32)))
    model = NPUModel(TINY)
    with pytest.raises(ModelLimitError, match=r"^the program did not end within 10 "
                                              r"instructions$"):
        model.run(memory, PROG, read_window=WINDOW, write_window=WINDOW, max_instructions=10)
    with pytest.raises(TypeError, match=r"^memory must be a HostMemory, not b''$"):
        model.run(b"", PROG, read_window=WINDOW, write_window=WINDOW)
    with pytest.raises(TypeError, match=r"^read_window must be a \(base, limit\) pair, not 5$"):
        model.run(memory, PROG, read_window=5, write_window=WINDOW)
    with pytest.raises(ValueError, match=r"^write_window limit must be a 32-bit value, "
                                         r"not 4294967296$"):
        model.run(memory, PROG, read_window=WINDOW, write_window=(0, 1 << 32))
    with pytest.raises(ValueError, match=r"^prog_addr must be a 32-bit address, not -32$"):
        model.run(memory, -32, read_window=WINDOW, write_window=WINDOW)
    with pytest.raises(ValueError, match=r"^max_instructions must be a positive integer, "
                                         r"not 0$"):
        model.run(memory, PROG, read_window=WINDOW, write_window=WINDOW, max_instructions=0)


def test_end_reports_its_address_and_retired_count():
    _, _, result = run(TINY, [Fence(), Load(lanes=1, addr=DATA), Fence(), End(), Fence()])
    assert result == RunResult("done", NPUError.NONE, 0, PROG + 96, 4)
    assert result.ok
    assert encode(End())[0] == 0x0F
