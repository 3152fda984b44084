"""Precision modes of the systolic array: codes, packing factors, value ranges.

One 8-bit operand lane carries one int8 value, two int4 values (low nibble first) or
eight binary values (bit i = element i, 1 → +1, 0 → −1).  A PE performs ``pack``
multiply-accumulates per cycle, so one weight tile covers ``rows · pack`` of K.  With
2:4 structured weight sparsity (int8 only) a pair of PE rows covers a group of 4 K
elements, so a tile covers ``2 · rows`` of K.

``bf16`` is the floating-point mode: a BF16 value takes two lanes (low byte first), so
a tile covers ``rows / 2`` of K (the even PE rows multiply, see :mod:`npugen.hw.pe`),
and the sums are FP32.
"""

from __future__ import annotations

__all__ = ["MODES", "INTEGER_MODES", "MODE_CODES", "PACK", "VALUE_RANGE", "SPARSITIES",
           "SPARSE_MODE_CODE", "SPARSE_K_FACTOR", "mode_code", "integer_mode_code", "mode_bits", "check_sparsity",
           "k_per_tile", "k_per_rows"]

#: Precision modes in their hardware code order.
MODES = ("int8", "int4", "binary", "bf16")
#: The integer modes (zero points, requantization, integer sums).
INTEGER_MODES = ("int8", "int4", "binary")
#: Code of each mode on the ``mode`` field of a tile command.
MODE_CODES = {name: code for code, name in enumerate(MODES)}
#: Values per 8-bit lane of the integer modes (a BF16 value takes two lanes).
PACK = {"int8": 1, "int4": 2, "binary": 8}
#: Inclusive range of an activation value (binary values are ±1).
VALUE_RANGE = {"int8": (-128, 127), "int4": (-8, 7), "binary": (-1, 1)}
#: Structured weight sparsity patterns a job may use (``None`` means dense weights).
SPARSITIES = ("2:4",)
#: Code that travels with an activation row of an int8 2:4 job through the PEs (the
#: command says ``mode`` int8 with ``sparse`` set).
SPARSE_MODE_CODE = 4
#: K elements per PE row of a 2:4 job: a pair of rows shares a group of 4 K elements.
SPARSE_K_FACTOR = 2


def mode_code(mode: str) -> int:
    try:
        return MODE_CODES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}") from None


def integer_mode_code(mode: str) -> int:
    """The code of an integer mode (what the integer tile programs and jobs accept)."""
    if mode not in INTEGER_MODES:
        raise ValueError(f"mode must be one of {', '.join(INTEGER_MODES)}, not {mode!r}")
    return MODE_CODES[mode]


def mode_bits(modes, sparse=False) -> int:
    """Width of the mode code travelling with a row through the array: 3 bits when the
    2:4 code or bf16 is built, else 2."""
    return 3 if sparse or "bf16" in modes else 2


def k_per_rows(rows: int, mode: str) -> int:
    """K elements that ``rows`` 8-bit lanes (or PE rows) hold in ``mode``."""
    mode_code(mode)
    return rows // 2 if mode == "bf16" else rows * PACK[mode]


def check_sparsity(sparsity, mode: str = "int8"):
    """Validate a job's ``sparsity`` (``None`` or ``"2:4"``) for ``mode``; return it."""
    if sparsity is None:
        return None
    if sparsity not in SPARSITIES:
        raise ValueError(f"sparsity must be None or one of {', '.join(SPARSITIES)}, "
                         f"not {sparsity!r}")
    if mode != "int8":
        raise ValueError(f"{sparsity} sparsity needs mode 'int8', not {mode!r}")
    return sparsity


def k_per_tile(config, mode: str, sparsity=None) -> int:
    """K elements one weight tile covers in ``mode`` (twice as many with 2:4 weights)."""
    mode_code(mode)
    factor = SPARSE_K_FACTOR if check_sparsity(sparsity, mode) else 1
    return k_per_rows(config.rows, mode) * factor
