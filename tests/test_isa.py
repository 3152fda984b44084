"""Tests of npugen.golden.isa: encoding, decoding, field ranges, and the bit positions
against the Amaranth layouts of npugen.hw.isa (which the controller decodes with)."""

import dataclasses
import random

import pytest
from amaranth.hdl import Shape, unsigned

from npugen.golden import isa as gisa
from npugen.golden.isa import (
    FIELDS,
    INSTRUCTION_BYTES,
    End,
    Fence,
    IllegalInstruction,
    Load,
    LoadTarget,
    Matmul,
    Opcode,
    Store,
    Vector,
    VectorOp,
    assemble,
    decode,
    disassemble,
    encode,
)
from npugen.hw import gemm_core as hw_core
from npugen.hw import isa as hw

SEED = 0x15A0_0001

LAYOUTS = {Load: hw.load_layout, Store: hw.store_layout, Matmul: hw.matmul_layout,
           Vector: hw.vector_layout}


def random_instruction(rng, cls):
    values = {}
    for name, (_, _, bits, signed) in FIELDS[cls].items():
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        values[name] = rng.choice([lo, hi, rng.randint(lo, hi), rng.randint(lo, hi)])
    return cls(**values)


def test_enumerations_mirror_the_hardware():
    for golden, amaranth in ((gisa.Opcode, hw.Opcode), (gisa.LoadTarget, hw.LoadTarget),
                             (gisa.VectorOp, hw.VectorOp), (gisa.NPUError, hw.NPUError),
                             (gisa.CoreError, hw_core.CoreError)):
        assert {m.name: m.value for m in golden} == {m.name: m.value for m in amaranth}
    # The Amaranth enumerations are as wide as the fields that carry them.
    assert Shape.cast(hw.Opcode) == unsigned(8)
    assert Shape.cast(hw.LoadTarget) == unsigned(FIELDS[Load]["target"][2])
    assert Shape.cast(hw.VectorOp) == unsigned(FIELDS[Vector]["op"][2])
    assert Shape.cast(hw.NPUError) == unsigned(8)


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda c: c.__name__)
def test_bit_positions_match_the_hardware_layouts(cls):
    layout = dict(LAYOUTS[cls])
    assert set(layout) == set(FIELDS[cls]) | {"opcode"}
    assert layout["opcode"].offset == 0 and layout["opcode"].shape.width == 8
    for name, (word, lsb, bits, signed) in FIELDS[cls].items():
        field = layout[name]
        assert field.offset == 64 * word + lsb, name
        assert field.shape.width == bits, name
        assert field.shape.signed == signed, name


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda c: c.__name__)
def test_encoded_bits_decode_through_the_hardware_layouts(cls):
    seed = SEED + len(cls.__name__)
    print(f"seed={seed}")
    rng = random.Random(seed)
    layout = LAYOUTS[cls]
    for _ in range(50):
        instr = random_instruction(rng, cls)
        raw = int.from_bytes(encode(instr), "little")
        view = layout.from_bits(raw)
        assert view.opcode == cls.opcode
        for name in FIELDS[cls]:
            assert getattr(view, name) == getattr(instr, name), name


@pytest.mark.parametrize("cls", [Load, Store, Matmul, Vector, Fence, End],
                         ids=lambda c: c.__name__)
def test_round_trip(cls):
    seed = SEED + 100 + len(cls.__name__)
    print(f"seed={seed}")
    rng = random.Random(seed)
    for _ in range(100):
        instr = random_instruction(rng, cls)
        data = encode(instr)
        assert len(data) == INSTRUCTION_BYTES
        assert data[0] == cls.opcode
        assert decode(data) == instr


def test_documented_example_positions():
    # LOAD target=PARAM sp_addr=0x1234 addr=0xDEADBEEF: w0 = addr<<32 | sp<<16 | 3<<8 | 1.
    data = encode(Load(target=LoadTarget.PARAM, sp_addr=0x1234, addr=0xDEADBEEF,
                       inner_count=2, outer_count=3, inner_stride=-4, outer_stride=-8,
                       lane_stride=0x55, lanes=7, pad=-1, inner_lo=1, inner_hi=2,
                       outer_lo=3, outer_hi=4))
    w = [int.from_bytes(data[8 * i:8 * i + 8], "little") for i in range(4)]
    assert w[0] == 0xDEADBEEF_1234_0301
    assert w[1] == (0xFFFFFFFC << 32) | (3 << 16) | 2
    assert w[2] == (0xFF << 56) | (7 << 48) | (0x55 << 32) | 0xFFFFFFF8
    assert w[3] == (4 << 48) | (3 << 32) | (2 << 16) | 1
    # MATMUL mode=2, sparse, raw: w0[11:8] = 0b1110.
    data = encode(Matmul(mode=2, sparse=1, raw=True, m_rows=5, k_tiles=6, k_valid_last=7,
                         a_zero_point=-2, out_zero_point=3, out_min=-4, out_max=5))
    assert data[:8] == bytes([0x03, 0x0E, 5, 0, 6, 0, 7, 0])
    assert data[16:20] == bytes([0xFE, 3, 0xFC, 5])
    assert encode(End()) == bytes([0x0F]) + bytes(31)
    assert encode(Fence()) == bytes([0x05]) + bytes(31)


def test_decode_keeps_out_of_enum_values():
    instr = decode(encode(Load(target=9, lanes=1)))
    assert instr.target == 9 and not isinstance(instr.target, LoadTarget)
    assert decode(encode(Load(target=2))).target is LoadTarget.WIDX
    assert decode(encode(Vector(op=7))).op == 7
    assert decode(encode(Vector(op=1))).op is VectorOp.ROWMAX
    assert decode(encode(Vector(op=10))).op is VectorOp.TO_BF16_RELU
    assert [VectorOp.TO_BF16, VectorOp.TO_BF16_RELU] == [9, 10]
    instr = decode(encode(Vector(op=11)))
    assert instr.op == 11 and not isinstance(instr.op, VectorOp)


def test_reserved_bits_are_ignored():
    data = bytearray(encode(Matmul(m_rows=3)))
    data[1] |= 0xF0          # w0[15:12] is reserved in MATMUL
    data[31] = 0xAB          # w3 is reserved in MATMUL
    assert decode(bytes(data)) == Matmul(m_rows=3)


@pytest.mark.parametrize("opcode", [0x00, 0x06, 0x0E, 0x10, 0xFF])
def test_decode_rejects_illegal_opcodes(opcode):
    data = bytes([opcode]) + bytes(31)
    with pytest.raises(IllegalInstruction, match=rf"^opcode must be one of 0x01 \(LOAD\), "
                       rf"0x02 \(STORE\), 0x03 \(MATMUL\), 0x04 \(VECTOR\), 0x05 \(FENCE\), "
                       rf"0x0F \(END\), not 0x{opcode:02X}$") as info:
        decode(data)
    assert info.value.opcode == opcode


def test_decode_needs_32_bytes():
    with pytest.raises(ValueError, match=r"^data must be 32 bytes, not 31$"):
        decode(bytes(31))


@pytest.mark.parametrize("instr, regex", [
    (Load(sp_addr=1 << 16), r"^Load\.sp_addr must be in \[0, 65535\] \(unsigned 16 bits\), not 65536$"),
    (Load(inner_stride=1 << 31), r"^Load\.inner_stride must be in \[-2147483648, 2147483647\] "
                                 r"\(signed 32 bits\), not 2147483648$"),
    (Load(pad=-129), r"^Load\.pad must be in \[-128, 127\] \(signed 8 bits\), not -129$"),
    (Load(target=16), r"^Load\.target must be in \[0, 15\] \(unsigned 4 bits\), not 16$"),
    (Store(addr=-1), r"^Store\.addr must be in \[0, 4294967295\] \(unsigned 32 bits\), not -1$"),
    (Matmul(mode=4), r"^Matmul\.mode must be in \[0, 3\] \(unsigned 2 bits\), not 4$"),
    (Matmul(out_max=128), r"^Matmul\.out_max must be in \[-128, 127\] \(signed 8 bits\), not 128$"),
    (Vector(shift=200), r"^Vector\.shift must be in \[-128, 127\] \(signed 8 bits\), not 200$"),
    (Vector(hi=1 << 31), r"^Vector\.hi must be in \[-2147483648, 2147483647\] \(signed 32 bits\), "
                         r"not 2147483648$"),
])
def test_encode_range_errors_name_field_and_value(instr, regex):
    with pytest.raises(ValueError, match=regex):
        encode(instr)


def test_encode_type_errors():
    with pytest.raises(TypeError, match=r"^Load\.lanes must be an integer, not 1\.5$"):
        encode(Load(lanes=1.5))
    with pytest.raises(TypeError, match=r"^Load\.lanes must be an integer, not True$"):
        encode(Load(lanes=True))
    with pytest.raises(TypeError, match=r"^instr must be a Load, Store, Matmul, Vector, Fence "
                                        r"or End instruction, not 'LOAD'$"):
        encode("LOAD")


def test_assemble_and_disassemble():
    seed = SEED + 300
    print(f"seed={seed}")
    rng = random.Random(seed)
    program = [random_instruction(rng, rng.choice(list(FIELDS))) for _ in range(40)] + [End()]
    image = assemble(program)
    assert len(image) == 32 * len(program)
    assert image[32 * 3:32 * 4] == encode(program[3])
    assert disassemble(image) == program
    with pytest.raises(ValueError, match=r"^data must be a multiple of 32 bytes long, not 33$"):
        disassemble(image[:33])


def test_records_are_frozen_and_have_opcodes():
    for cls in FIELDS:
        assert isinstance(cls.opcode, Opcode)
        assert {f.name for f in dataclasses.fields(cls)} == set(FIELDS[cls])
    with pytest.raises(dataclasses.FrozenInstanceError):
        Load().lanes = 3
