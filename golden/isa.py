"""The NPU instruction set in Python: instruction records, encoding, decoding, assembly.

An instruction is 256 bits, four little-endian 64-bit words ``w0..w3`` (``docs/ISA.md``).
Each record class (:class:`Load`, :class:`Store`, :class:`Matmul`, :class:`Vector`,
:class:`Fence`, :class:`End`) holds every field of its instruction as a plain integer;
:func:`encode` places the fields at exactly the bit positions of ``docs/ISA.md``
(:data:`FIELDS`) and checks only that each value fits its bit field, so that malformed
instructions can be built on purpose.  The semantic checks (counts, lanes, ranges,
features) are the controller's and live in :func:`npugen.golden.npu_model.check_instruction`.

The enumerations are plain ``IntEnum`` classes: this module never imports Amaranth.
They and :data:`FIELDS` are the one source of the instruction set's names, values and
bit positions: ``hw/isa.py`` builds its Amaranth enumerations and layouts from them
(a test compares the two field by field).  :class:`CoreError` mirrors
``hw/gemm_core.py``'s enumeration (a test compares them).
"""

from __future__ import annotations

import dataclasses
import enum
import numbers
from dataclasses import dataclass

__all__ = ["INSTRUCTION_BYTES", "Opcode", "LoadTarget", "VectorOp", "NPUError", "CoreError",
           "Load", "Store", "Matmul", "Vector", "Fence", "End", "Instruction", "FIELDS",
           "IllegalInstruction", "encode", "decode", "assemble", "disassemble", "fields"]

#: Bytes of one instruction.
INSTRUCTION_BYTES = 32


class Opcode(enum.IntEnum):
    """Instruction opcodes (``w0[7:0]``)."""
    LOAD = 0x01
    STORE = 0x02
    MATMUL = 0x03
    VECTOR = 0x04
    FENCE = 0x05
    END = 0x0F


class LoadTarget(enum.IntEnum):
    """Scratchpad written by a LOAD (``target``)."""
    ACT = 0
    WGT = 1
    WIDX = 2
    PARAM = 3


class VectorOp(enum.IntEnum):
    """Operations of the VECTOR instruction (``op``)."""
    SOFTMAX = 0
    ROWMAX = 1
    ADD = 2
    SUB = 3
    CLAMP = 4
    REQUANT = 5
    MAX = 6
    PACK_INT4 = 7
    PACK_BINARY = 8
    TO_BF16 = 9
    TO_BF16_RELU = 10


class NPUError(enum.IntEnum):
    """Codes of the ERROR register (``docs/ISA.md``, "Errors")."""
    NONE = 0
    ILLEGAL_OPCODE = 1
    BAD_FIELD = 2
    FEATURE_NOT_BUILT = 3
    BAD_SP_ADDRESS = 4
    BAD_HOST_ADDRESS = 5
    MISALIGNED = 6
    AXI_READ_ERROR = 7
    AXI_WRITE_ERROR = 8
    CORE = 9


class CoreError(enum.IntEnum):
    """Error codes of the GEMM core: the detail of a CORE error."""
    NONE = 0
    BAD_ROWS = 1
    BAD_SHIFT = 2
    BAD_CLAMP = 3
    BAD_MODE = 4
    BAD_K = 5
    BAD_ZERO_POINT = 6
    BAD_SPARSE_INDEX = 7


class IllegalInstruction(ValueError):
    """:func:`decode` met an opcode that is not an instruction."""

    def __init__(self, opcode):
        self.opcode = opcode
        super().__init__(f"opcode must be one of "
                         f"{', '.join(f'0x{int(o):02X} ({o.name})' for o in Opcode)}, "
                         f"not 0x{opcode:02X}")


@dataclass(frozen=True)
class Load:
    """LOAD: host memory → scratchpad ``target``, 2-D strided, lane gather, padding."""
    target: int = LoadTarget.ACT
    sp_addr: int = 0
    addr: int = 0
    inner_count: int = 1
    outer_count: int = 1
    inner_stride: int = 0
    outer_stride: int = 0
    lane_stride: int = 1
    lanes: int = 1
    pad: int = 0
    inner_lo: int = 0
    inner_hi: int = 0xFFFF
    outer_lo: int = 0
    outer_hi: int = 0xFFFF
    opcode = Opcode.LOAD


@dataclass(frozen=True)
class Store:
    """STORE: OUT scratchpad → host memory, 2-D strided, ``elem_bytes`` per lane."""
    elem_bytes: int = 1
    sp_addr: int = 0
    addr: int = 0
    inner_count: int = 1
    outer_count: int = 1
    inner_stride: int = 0
    outer_stride: int = 0
    lanes: int = 1
    opcode = Opcode.STORE


@dataclass(frozen=True)
class Matmul:
    """MATMUL: one output tile of ``m_rows`` rows on the GEMM core, ``k_tiles`` K tiles."""
    mode: int = 0
    sparse: int = 0
    raw: int = 0
    m_rows: int = 1
    k_tiles: int = 1
    k_valid_last: int = 1
    act_addr: int = 0
    wgt_addr: int = 0
    out_addr: int = 0
    param_addr: int = 0
    a_zero_point: int = 0
    out_zero_point: int = 0
    out_min: int = -128
    out_max: int = 127
    opcode = Opcode.MATMUL


@dataclass(frozen=True)
class Vector:
    """VECTOR: a row operation on the OUT scratchpad (``op`` is a :class:`VectorOp`)."""
    op: int = VectorOp.ADD
    count: int = 1
    src: int = 0
    dst: int = 0
    n_words: int = 1
    n_valid: int = 1
    src_stride: int = 0
    dst_stride: int = 0
    multiplier: int = 0
    shift: int = 0
    zero_point: int = 0
    src_b: int = 0
    lo: int = -(1 << 31)
    hi: int = (1 << 31) - 1
    opcode = Opcode.VECTOR


@dataclass(frozen=True)
class Fence:
    """FENCE: wait until every earlier instruction has completed."""
    opcode = Opcode.FENCE


@dataclass(frozen=True)
class End:
    """END: wait for every earlier instruction, then set DONE."""
    opcode = Opcode.END


Instruction = Load | Store | Matmul | Vector | Fence | End

#: ``{record class: {field: (word, lsb, bits, signed)}}``: the bit positions of docs/ISA.md.
FIELDS = {
    Load: {
        "target": (0, 8, 4, False),
        "sp_addr": (0, 16, 16, False),
        "addr": (0, 32, 32, False),
        "inner_count": (1, 0, 16, False),
        "outer_count": (1, 16, 16, False),
        "inner_stride": (1, 32, 32, True),
        "outer_stride": (2, 0, 32, True),
        "lane_stride": (2, 32, 16, False),
        "lanes": (2, 48, 8, False),
        "pad": (2, 56, 8, True),
        "inner_lo": (3, 0, 16, False),
        "inner_hi": (3, 16, 16, False),
        "outer_lo": (3, 32, 16, False),
        "outer_hi": (3, 48, 16, False),
    },
    Store: {
        "elem_bytes": (0, 8, 4, False),
        "sp_addr": (0, 16, 16, False),
        "addr": (0, 32, 32, False),
        "inner_count": (1, 0, 16, False),
        "outer_count": (1, 16, 16, False),
        "inner_stride": (1, 32, 32, True),
        "outer_stride": (2, 0, 32, True),
        "lanes": (2, 48, 8, False),
    },
    Matmul: {
        "mode": (0, 8, 2, False),
        "sparse": (0, 10, 1, False),
        "raw": (0, 11, 1, False),
        "m_rows": (0, 16, 16, False),
        "k_tiles": (0, 32, 16, False),
        "k_valid_last": (0, 48, 16, False),
        "act_addr": (1, 0, 16, False),
        "wgt_addr": (1, 16, 16, False),
        "out_addr": (1, 32, 16, False),
        "param_addr": (1, 48, 16, False),
        "a_zero_point": (2, 0, 8, True),
        "out_zero_point": (2, 8, 8, True),
        "out_min": (2, 16, 8, True),
        "out_max": (2, 24, 8, True),
    },
    Vector: {
        "op": (0, 8, 4, False),
        "count": (0, 16, 16, False),
        "src": (0, 32, 16, False),
        "dst": (0, 48, 16, False),
        "n_words": (1, 0, 16, False),
        "n_valid": (1, 16, 16, False),
        "src_stride": (1, 32, 16, False),
        "dst_stride": (1, 48, 16, False),
        "multiplier": (2, 0, 32, True),
        "shift": (2, 32, 8, True),
        "zero_point": (2, 40, 8, True),
        "src_b": (2, 48, 16, False),
        "lo": (3, 0, 32, True),
        "hi": (3, 32, 32, True),
    },
    Fence: {},
    End: {},
}

_BY_OPCODE = {cls.opcode: cls for cls in FIELDS}
#: Fields decoded into an enumeration when the value names a member.
_ENUM_FIELDS = {(Load, "target"): LoadTarget, (Vector, "op"): VectorOp}


def _field_range(bits, signed):
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def encode(instr) -> bytes:
    """The 32 bytes of ``instr``; a field that does not fit its bit field is an error."""
    cls = type(instr)
    if cls not in FIELDS:
        raise TypeError(f"instr must be a Load, Store, Matmul, Vector, Fence or End "
                        f"instruction, not {instr!r}")
    words = [0, 0, 0, 0]
    words[0] = int(cls.opcode)
    for name, (word, lsb, bits, signed) in FIELDS[cls].items():
        value = getattr(instr, name)
        if isinstance(value, (bool,)) and bits == 1:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{cls.__name__}.{name} must be an integer, not {value!r}")
        value = int(value)
        lo, hi = _field_range(bits, signed)
        if not lo <= value <= hi:
            raise ValueError(f"{cls.__name__}.{name} must be in [{lo}, {hi}] "
                             f"({'signed' if signed else 'unsigned'} {bits} bits), not {value}")
        words[word] |= (value & ((1 << bits) - 1)) << lsb
    return b"".join(w.to_bytes(8, "little") for w in words)


def decode(data):
    """The instruction held by 32 bytes; :class:`IllegalInstruction` for a bad opcode."""
    data = bytes(data)
    if len(data) != INSTRUCTION_BYTES:
        raise ValueError(f"data must be {INSTRUCTION_BYTES} bytes, not {len(data)}")
    words = [int.from_bytes(data[8 * i:8 * i + 8], "little") for i in range(4)]
    opcode = words[0] & 0xFF
    cls = _BY_OPCODE.get(opcode)
    if cls is None:
        raise IllegalInstruction(opcode)
    values = {}
    for name, (word, lsb, bits, signed) in FIELDS[cls].items():
        value = (words[word] >> lsb) & ((1 << bits) - 1)
        if signed and value >> (bits - 1):
            value -= 1 << bits
        kind = _ENUM_FIELDS.get((cls, name))
        if kind is not None and value in kind._value2member_map_:
            value = kind(value)
        values[name] = value
    return cls(**values)


def assemble(instructions) -> bytes:
    """The program image of a sequence of instructions (32 bytes each, in order)."""
    return b"".join(encode(instr) for instr in instructions)


def disassemble(data) -> list:
    """The instructions of a program image (its length a multiple of 32 bytes)."""
    data = bytes(data)
    if len(data) % INSTRUCTION_BYTES:
        raise ValueError(f"data must be a multiple of {INSTRUCTION_BYTES} bytes long, "
                         f"not {len(data)}")
    return [decode(data[i:i + INSTRUCTION_BYTES]) for i in range(0, len(data),
                                                                   INSTRUCTION_BYTES)]


def fields(instr) -> dict:
    """The fields of ``instr`` as a dictionary (opcode excluded)."""
    return {f.name: getattr(instr, f.name) for f in dataclasses.fields(instr)}
