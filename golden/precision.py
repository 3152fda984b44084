"""Integer precision modes of the systolic array: codes, packing factors, value ranges.

One 8-bit operand lane carries one int8 value, two int4 values (low nibble first) or
eight binary values (bit i = element i, 1 → +1, 0 → −1).  A PE performs ``pack``
multiply-accumulates per cycle, so one weight tile covers ``rows · pack`` of K.
"""

from __future__ import annotations

__all__ = ["MODES", "MODE_CODES", "PACK", "VALUE_RANGE", "mode_code", "k_per_tile"]

#: Precision modes in their hardware code order.
MODES = ("int8", "int4", "binary")
#: Code of each mode on the ``mode`` field of a tile command.
MODE_CODES = {name: code for code, name in enumerate(MODES)}
#: Values per 8-bit lane.
PACK = {"int8": 1, "int4": 2, "binary": 8}
#: Inclusive range of an activation value (binary values are ±1).
VALUE_RANGE = {"int8": (-128, 127), "int4": (-8, 7), "binary": (-1, 1)}


def mode_code(mode: str) -> int:
    try:
        return MODE_CODES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}") from None


def k_per_tile(config, mode: str) -> int:
    """K elements one weight tile covers in ``mode``."""
    mode_code(mode)
    return config.rows * PACK[mode]
