"""Instruction formats of the NPU as Amaranth layouts (the bit positions of docs/ISA.md).

An instruction is 256 bits (words ``w0..w3``, ``w0`` at bit 0).  Casting the fetched bits
to one of these layouts decodes the fields with no logic; ``golden/isa.py`` encodes and
decodes the same positions in Python, and a test compares the two field by field.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

__all__ = ["INSTRUCTION_BITS", "Opcode", "LoadTarget", "VectorOp", "NPUError",
           "instruction_layout", "load_layout", "store_layout", "matmul_layout",
           "vector_layout"]

INSTRUCTION_BITS = 256


class Opcode(enum.Enum, shape=8):
    LOAD = 0x01
    STORE = 0x02
    MATMUL = 0x03
    VECTOR = 0x04
    FENCE = 0x05
    END = 0x0F


class LoadTarget(enum.Enum, shape=4):
    ACT = 0
    WGT = 1
    WIDX = 2
    PARAM = 3


class VectorOp(enum.Enum, shape=4):
    SOFTMAX = 0
    ROWMAX = 1
    ADD = 2
    SUB = 3
    CLAMP = 4
    REQUANT = 5


class NPUError(enum.Enum, shape=8):
    """Codes of the ERROR register (docs/ISA.md, "Errors")."""
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


def _fields(fields):
    """A 256-bit layout from ``{name: (word, lsb, shape)}`` (positions as in docs/ISA.md)."""
    return data.FlexibleLayout(INSTRUCTION_BITS, {
        name: data.Field(shape, 64 * word + lsb) for name, (word, lsb, shape) in fields.items()})


#: The fields every instruction has.
instruction_layout = _fields({"opcode": (0, 0, unsigned(8))})

load_layout = _fields({
    "opcode": (0, 0, unsigned(8)),
    "target": (0, 8, unsigned(4)),
    "sp_addr": (0, 16, unsigned(16)),
    "addr": (0, 32, unsigned(32)),
    "inner_count": (1, 0, unsigned(16)),
    "outer_count": (1, 16, unsigned(16)),
    "inner_stride": (1, 32, signed(32)),
    "outer_stride": (2, 0, signed(32)),
    "lane_stride": (2, 32, unsigned(16)),
    "lanes": (2, 48, unsigned(8)),
    "pad": (2, 56, signed(8)),
    "inner_lo": (3, 0, unsigned(16)),
    "inner_hi": (3, 16, unsigned(16)),
    "outer_lo": (3, 32, unsigned(16)),
    "outer_hi": (3, 48, unsigned(16)),
})

store_layout = _fields({
    "opcode": (0, 0, unsigned(8)),
    "elem_bytes": (0, 8, unsigned(4)),
    "sp_addr": (0, 16, unsigned(16)),
    "addr": (0, 32, unsigned(32)),
    "inner_count": (1, 0, unsigned(16)),
    "outer_count": (1, 16, unsigned(16)),
    "inner_stride": (1, 32, signed(32)),
    "outer_stride": (2, 0, signed(32)),
    "lanes": (2, 48, unsigned(8)),
})

matmul_layout = _fields({
    "opcode": (0, 0, unsigned(8)),
    "mode": (0, 8, unsigned(2)),
    "sparse": (0, 10, unsigned(1)),
    "raw": (0, 11, unsigned(1)),
    "m_rows": (0, 16, unsigned(16)),
    "k_tiles": (0, 32, unsigned(16)),
    "k_valid_last": (0, 48, unsigned(16)),
    "act_addr": (1, 0, unsigned(16)),
    "wgt_addr": (1, 16, unsigned(16)),
    "out_addr": (1, 32, unsigned(16)),
    "param_addr": (1, 48, unsigned(16)),
    "a_zero_point": (2, 0, signed(8)),
    "out_zero_point": (2, 8, signed(8)),
    "out_min": (2, 16, signed(8)),
    "out_max": (2, 24, signed(8)),
})

vector_layout = _fields({
    "opcode": (0, 0, unsigned(8)),
    "op": (0, 8, unsigned(4)),
    "count": (0, 16, unsigned(16)),
    "src": (0, 32, unsigned(16)),
    "dst": (0, 48, unsigned(16)),
    "n_words": (1, 0, unsigned(16)),
    "n_valid": (1, 16, unsigned(16)),
    "src_stride": (1, 32, unsigned(16)),
    "dst_stride": (1, 48, unsigned(16)),
    "multiplier": (2, 0, signed(32)),
    "shift": (2, 32, signed(8)),
    "zero_point": (2, 40, signed(8)),
    "src_b": (2, 48, unsigned(16)),
    "lo": (3, 0, signed(32)),
    "hi": (3, 32, signed(32)),
})
