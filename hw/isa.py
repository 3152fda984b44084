"""Instruction formats of the NPU as Amaranth layouts (the bit positions of docs/ISA.md).

An instruction is 256 bits (words ``w0..w3``, ``w0`` at bit 0).  Casting the fetched bits
to one of these layouts decodes the fields with no logic.  The names, values and bit
positions have one source, ``golden/isa.py`` (its ``IntEnum`` classes and ``FIELDS``
table): this module builds the Amaranth enumerations and layouts from it, and a test
compares the two field by field.
"""

import types

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from npugen.golden import isa as _golden

__all__ = ["INSTRUCTION_BITS", "Opcode", "LoadTarget", "VectorOp", "NPUError", "amaranth_enum",
           "instruction_layout", "load_layout", "store_layout", "matmul_layout",
           "vector_layout"]

INSTRUCTION_BITS = 8 * _golden.INSTRUCTION_BYTES


def amaranth_enum(golden, bits):
    """The Amaranth enumeration of ``bits`` bits with the members of the golden
    ``IntEnum`` ``golden`` (same names, values and docstring)."""
    def body(namespace):
        for member in golden:
            namespace[member.name] = member.value
        namespace["__doc__"] = golden.__doc__
        namespace["__module__"] = __name__

    return types.new_class(golden.__name__, (enum.Enum,), {"shape": bits}, body)


Opcode = amaranth_enum(_golden.Opcode, 8)
LoadTarget = amaranth_enum(_golden.LoadTarget, 4)
VectorOp = amaranth_enum(_golden.VectorOp, 4)
NPUError = amaranth_enum(_golden.NPUError, 8)


def _layout(record):
    """The 256-bit layout of the golden instruction class ``record``: its opcode
    (``w0[7:0]``) and every field of ``golden.isa.FIELDS[record]``."""
    fields = {"opcode": data.Field(unsigned(8), 0)}
    for name, (word, lsb, bits, is_signed) in _golden.FIELDS[record].items():
        fields[name] = data.Field(signed(bits) if is_signed else unsigned(bits),
                                  64 * word + lsb)
    return data.FlexibleLayout(INSTRUCTION_BITS, fields)


#: The fields every instruction has.
instruction_layout = _layout(_golden.End)
load_layout = _layout(_golden.Load)
store_layout = _layout(_golden.Store)
matmul_layout = _layout(_golden.Matmul)
vector_layout = _layout(_golden.Vector)
