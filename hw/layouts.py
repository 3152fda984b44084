"""Payload layouts of the GEMM core's streams, derived from an :class:`NPUConfig`.

Every stream of the core carries one of these ``data.StructLayout``/``ArrayLayout``
payloads; the cocotb drivers (``npugen.sim``) and the golden tile program
(``npugen.golden.tile_program``) pack the same fields in the same order.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from npugen.golden.precision import SPARSE_K_FACTOR, k_per_rows

__all__ = [
    "SHIFT_BITS", "QPARAM_BITS",
    "activation_row_layout", "weight_row_layout", "result_row_layout",
    "tile_command_layout", "quant_params_layout",
]

#: Width of a per-channel requantization shift (TFLite convention, positive = left).
SHIFT_BITS = 6
#: Width of the output zero point and clamp bounds.
QPARAM_BITS = 8


def activation_row_layout(config):
    """One row of A restricted to a K tile: int8 lanes, lane i ↔ k = k0 + i.

    ``rows`` lanes; ``2·rows`` when ``sparse_2_4`` is built (a 2:4 tile covers ``2·rows``
    of K; dense modes use lanes ``[0, rows)`` and ignore the others).  In bf16 mode
    lanes 2j (low byte) and 2j+1 (high byte) hold BF16 element k0 + j.
    """
    factor = SPARSE_K_FACTOR if config.sparse_2_4 else 1
    return data.ArrayLayout(signed(config.lane_bits), config.rows * factor)


def weight_row_layout(config):
    """One row of a weight tile: ``cols`` int8 lanes (lane c ↔ n = n0 + c).

    With ``sparse_2_4`` built the row is a struct: ``value`` (the ``cols`` int8 lanes,
    at bit 0 as in the dense layout) and ``index`` (``cols`` 2-bit positions inside the
    group of 4 K elements; only 2:4 tiles read them).  Row r of a 2:4 tile holds slot
    ``r % 2`` of group ``r // 2`` of every column.
    """
    values = data.ArrayLayout(signed(config.lane_bits), config.cols)
    if not config.sparse_2_4:
        return values
    return data.StructLayout({"value": values,
                              "index": data.ArrayLayout(unsigned(2), config.cols)})


def result_row_layout(config):
    """One output row of an N tile: ``cols`` int32 lanes (int8 results are sign-extended)."""
    return data.ArrayLayout(signed(32), config.cols)


def tile_command_layout(config):
    """A tile operation: stream ``m_rows`` activation rows through one weight tile.

    ``first`` starts new accumulators (otherwise the tile adds to them); ``last``
    sends the accumulators through requantization to the result stream.  ``mode`` is
    the precision mode code (``npugen.golden.precision.MODE_CODES``); ``k_valid`` is the
    number of K elements of the tile that are real (the rest is padding; binary mode
    masks it, bf16 skips it, the other modes rely on zero weights).  ``sparse`` asks for an int8 tile
    of 2:4 compressed weights (``2·rows`` of K); it is refused (``BAD_MODE``) with
    another mode or when ``sparse_2_4`` is not built.
    """
    k_max = max([k_per_rows(config.rows, mode) for mode in config.modes] +
                [config.rows * (SPARSE_K_FACTOR if config.sparse_2_4 else 1)])
    return data.StructLayout({
        "m_rows": unsigned(config.acc_row_bits),
        "first": unsigned(1),
        "last": unsigned(1),
        "a_zero_point": signed(config.lane_bits),
        "mode": unsigned(2),
        "k_valid": range(k_max + 1),
        "sparse": unsigned(1),
    })


def quant_params_layout(config):
    """Requantization parameters of one N tile (consumed once per ``last`` tile)."""
    cols = config.cols
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(32), cols),
        "multiplier": data.ArrayLayout(signed(32), cols),
        "shift": data.ArrayLayout(signed(SHIFT_BITS), cols),
        "out_zero_point": signed(QPARAM_BITS),
        "out_min": signed(QPARAM_BITS),
        "out_max": signed(QPARAM_BITS),
        "raw": unsigned(1),
    })
