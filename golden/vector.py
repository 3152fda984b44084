"""The NPU's vector operations (the VECTOR instruction), bit-exact with ``hw/vector_unit.py``.

Rows of int32 elements (the lanes of consecutive OUT scratchpad words) go through one of
eleven operations, numbered as the ``op`` field of docs/ISA.md:

======  =========  ==============================================================
code    name       result per row
======  =========  ==============================================================
0       softmax    integer softmax of the first ``n_valid`` elements, int8
                   probabilities of scale 1/128; the other elements become 0
1       rowmax     the maximum of the first ``n_valid`` elements
2       add        ``wrap32(a + b)``
3       sub        ``wrap32(a - b)``
4       clamp      ``min(max(a, lo), hi)``
5       requant    ``clamp(MultiplyByQuantizedMultiplier(a, multiplier, shift)
                   + zero_point, lo, hi)``
6       max        ``max(a, b)`` (2×2 max pooling: three of them)
7       pack_int4  the first ``n_valid`` elements as int4 bytes: byte j =
                   ``(e[2j] & 15) | (e[2j+1] & 15) << 4``
8       pack_binary  as bits: byte j = ``Σ_i (e[8j+i] & 1) << i``
9       to_bf16    the elements as FP32 bit patterns rounded to BF16 (nearest even,
                   subnormals kept, NaN → 0x7FC0), two bytes each, low byte first
10      to_bf16_relu  as to_bf16 after ReLU: a negative value or −0 (sign bit set,
                   not NaN) becomes +0
======  =========  ==============================================================

The conversions produce the BF16 operand layout of the bf16 MATMUL mode: element e of
a row becomes bytes 2e (low) and 2e + 1 (high), elements past ``n_valid`` the bytes 0;
output word 2w + h of a row holds bytes ``(2w + h)·cols … (2w + h + 1)·cols − 1`` of the
row (input word w: its first half of bytes for h = 0, the second for h = 1), byte j in
lane j (zero-extended), so a row of ``n_words`` words becomes ``2·n_words`` words and a
byte STORE (``elem_bytes`` 1) writes BF16 values to host memory.

The packing operations produce bytes (elements past ``n_valid`` count as 0): the bytes
of words ``g·w … g·w + g − 1`` of a row (``g = 2`` for int4, 8 for binary) fill the
lanes of its output word ``w``, byte j in lane j (zero-extended), so a row of
``n_words`` words becomes ``⌈n_words / g⌉`` words (:func:`pack_words`).

The integer softmax is I-BERT's i-exp with a fixed internal scale ``S_t = ln 2 / 1024``
(the constants below name every number of it)::

    m   = max(x[e] for valid e)
    d   = max(x[e] - m, -2**(31 - max(shift, 0)))
    t   = MultiplyByQuantizedMultiplier(d, multiplier, shift)      # <= 0
    z   = (-t) >> 10                                               # ln 2 halvings
    p   = t + 1024 * z                                             # (-1024, 0]
    l   = (p + 1998)**2 + 2094200                                  # < 2**23
    e   = l >> z if z < 32 else 0
    sum = sum of e over valid elements                             # < 2**39
    R   = floor(2**48 / sum)
    out = min(127, (e * R) >> 41)

``multiplier``/``shift`` map the input scale ``S_in`` to ``S_t``
(:func:`softmax_multiplier`).  All arithmetic is on int64 NumPy arrays; every result
is an int32 array.
"""

from __future__ import annotations

import enum
import math
import numbers

import numpy as np

from .floating import fp32_to_bf16_bits
from .quant import (INT32_MAX, INT32_MIN, SHIFT_MAX, SHIFT_MIN, _float_array, _int_array,
                    _int_scalar, _mbqm, quantize_multiplier, requantize)

__all__ = [
    "VECTOR_OPS",
    "SOFTMAX_LN2_STEPS", "SOFTMAX_Z_BITS", "SOFTMAX_SCALE", "SOFTMAX_POLY_B",
    "SOFTMAX_POLY_C", "SOFTMAX_Z_LIMIT", "SOFTMAX_RECIP_BITS", "SOFTMAX_RECIP_NUMERATOR",
    "SOFTMAX_OUT_SHIFT", "SOFTMAX_OUT_MAX", "N_VALID_MAX",
    "softmax_multiplier", "integer_softmax", "softmax_exp", "row_max", "vector_op",
    "MBQM_LATENCY", "DIVIDER_STEPS", "STAGE_READ", "STAGE_ELEMENTWISE", "STAGE_NORM",
    "STAGE_MBQM_IN", "STAGE_REQUANT", "STAGE_EXP", "DONE_AFTER_WRITE", "tree_levels",
    "stage_max", "stage_rowmax", "stage_sum", "max_turn", "sum_turn", "vector_cycles", "PACK_BITS", "pack_group", "pack_words",
    "TO_BF16_OPS", "to_bf16_bytes",
]

#: Operation names, indexed by the VECTOR instruction's ``op`` code.
VECTOR_OPS = ("softmax", "rowmax", "add", "sub", "clamp", "requant", "max", "pack_int4",
              "pack_binary", "to_bf16", "to_bf16_relu")
#: Codes of the FP32 → BF16 conversions (each input word becomes two output words).
TO_BF16_OPS = (9, 10)
#: Bits per element of the packing operations, by code.
PACK_BITS = {7: 4, 8: 1}

#: Internal softmax units per ``ln 2``: ``S_t = ln 2 / 1024``.
SOFTMAX_LN2_STEPS = 1024
#: ``log2(SOFTMAX_LN2_STEPS)``: ``z = (-t) >> 10``.
SOFTMAX_Z_BITS = 10
#: The internal scale ``S_t`` of ``t`` (real value of one unit).
SOFTMAX_SCALE = math.log(2) / SOFTMAX_LN2_STEPS
#: i-exp polynomial ``l = (p + B)**2 + C``: ``B = floor(1.353 / S_t)``.
SOFTMAX_POLY_B = 1998
#: ``C = floor(0.344 / (0.3585 * S_t**2))``.
SOFTMAX_POLY_C = 2094200
#: ``e = l >> z`` only for ``z`` below this; larger ``z`` give ``e = 0``.
SOFTMAX_Z_LIMIT = 32
#: The reciprocal of the row sum is ``floor(2**48 / sum)``.
SOFTMAX_RECIP_BITS = 48
SOFTMAX_RECIP_NUMERATOR = 1 << SOFTMAX_RECIP_BITS
#: ``out = (e * R) >> 41``: probabilities of scale ``2**-(48 - 41) = 1/128``.
SOFTMAX_OUT_SHIFT = 41
#: Largest softmax output (probability 1 is clamped to 127/128).
SOFTMAX_OUT_MAX = 127
#: Largest ``n_valid`` (a 16-bit field; keeps the row sum below ``2**39``).
N_VALID_MAX = (1 << 16) - 1


# -- timing of the vector unit (``hw/vector_unit.py`` builds its pipeline from these) ----

#: Cycles of the hardware's MultiplyByQuantizedMultiplier stages (``hw/requantizer.py``
#: ``MBQM_LATENCY``; a test keeps the two equal).
MBQM_LATENCY = 7
#: The smallest softmax row sum is ``e`` of the row maximum, 1998² + 2094200 > 2**22:
#: the quotient ``floor(2**48 / sum)`` has at most 48 - 22 = 26 bits.
SUM_MIN_LOG2 = 22
#: Cycles of the restoring divider (one quotient bit per cycle).
DIVIDER_STEPS = SOFTMAX_RECIP_BITS - SUM_MIN_LOG2
#: Pipeline stages (the cycle, counted from the read's issue, in which a word's value is
#: in a stage's register; the word read is registered at STAGE_READ) at which each kind
#: of word is written (its result enters the FIFO).  Every stage holds at most one carry
#: chain or comparison of the word's width.
STAGE_READ = 2                              # the word read is registered
STAGE_ELEMENTWISE = 4                       # CLAMP, ADD/SUB/MAX, PACK, TO_BF16: flags, select
STAGE_NORM = 6                              # SOFTMAX pass 3: e · R, then three adder stages
STAGE_MBQM_IN = 4                           # d (or a for REQUANT) enters the multiplier
STAGE_REQUANT = STAGE_MBQM_IN + MBQM_LATENCY + 2         # 13: clamp decision, select
STAGE_EXP = STAGE_MBQM_IN + MBQM_LATENCY + 5             # 16: -t; z, p; u²; l; e
#: Cycles from a result at its stage to ``done`` when it is the last one: the write
#: register, the FIFO, its output register, the write taken, ``done``.
DONE_AFTER_WRITE = 5


def tree_levels(cols):
    """Levels of the pairwise trees over a word's ``cols`` lanes (the word's maximum and
    the word's sum of ``e``), one pipeline stage each."""
    return (cols - 1).bit_length()


def stage_max(cols):
    """Stage at which the row maximum is updated with a word's maximum (the tree's first
    level, a selection and a comparison stage for each further level, then the word's
    maximum selected into a register)."""
    return STAGE_READ + 2 * tree_levels(cols)


def stage_rowmax(cols):
    """Stage at which ROWMAX writes the row maximum (updated at :func:`stage_max`, a
    selection of registers, registered)."""
    return stage_max(cols) + 2


def stage_sum(cols):
    """Stage at which the row sum is updated with a word's sum of ``e``."""
    return STAGE_EXP + tree_levels(cols)


def max_turn(cols):
    """Cycles without a read between pass 1 and pass 2 of a SOFTMAX row: the maximum is
    updated at :func:`stage_max` and seen by the sequencer one cycle later."""
    return stage_max(cols) + 1


def sum_turn(cols):
    """Cycles without a read between pass 2 and pass 3: the sum is updated at
    :func:`stage_sum` and seen one cycle later, then the divider's steps and its
    hand-over cycle."""
    return stage_sum(cols) + 1 + DIVIDER_STEPS + 1


def vector_cycles(config, op, *, count, n_words, n_valid):
    """Cycles from a VECTOR command accepted by the vector unit to its ``done`` pulse,
    with the OUT write port always ready (exact for ``hw/vector_unit.py``).

    ``op`` is a :class:`~npugen.golden.isa.VectorOp` or its code; the other arguments
    are the instruction's fields.  CLAMP, PACK_INT4, PACK_BINARY ``c·n + 9``, REQUANT
    ``c·n + 18``, ADD/SUB/MAX/TO_BF16/TO_BF16_RELU ``2·c·n + 9``, ROWMAX ``c·v + 2·L + 9``,
    SOFTMAX ``c·(v + 2·n + 3·L + 47) + 11`` (``c = count``, ``n = n_words``,
    ``v = ceil(n_valid / cols)``, ``L = ceil(log2(cols))``: 3 for 8 lanes).
    """
    from .config import NPUConfig
    from .isa import VectorOp

    NPUConfig.check(config)
    if isinstance(op, enum.Enum) and not isinstance(op, int):
        op = op.value                  # the hardware's (Amaranth) VectorOp
    try:
        op = VectorOp(op)
    except ValueError:
        raise ValueError(f"op must be a VectorOp or its code 0..{len(VectorOp) - 1}, "
                         f"not {op!r}") from None
    for name, value in (("count", count), ("n_words", n_words), ("n_valid", n_valid)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a positive integer, not {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    valid_words = -(-n_valid // config.cols)
    if op is VectorOp.SOFTMAX:
        row = (valid_words + max_turn(config.cols) + n_words + sum_turn(config.cols)
               + n_words)
        return count * row + STAGE_NORM + DONE_AFTER_WRITE
    if op is VectorOp.ROWMAX:
        return count * valid_words + stage_rowmax(config.cols) + DONE_AFTER_WRITE
    if op in (VectorOp.ADD, VectorOp.SUB, VectorOp.MAX, VectorOp.TO_BF16,
              VectorOp.TO_BF16_RELU):
        return 2 * count * n_words + STAGE_ELEMENTWISE + DONE_AFTER_WRITE
    stage = STAGE_REQUANT if op is VectorOp.REQUANT else STAGE_ELEMENTWISE
    return count * n_words + stage + DONE_AFTER_WRITE

def pack_group(op) -> int:
    """Input words per output word of a packing operation (2 int4, 8 binary), else 1."""
    return {7: 2, 8: 8}.get(int(op), 1)


def pack_words(op, n_words) -> int:
    """Words a row of ``n_words`` words becomes (``d_words``): ``⌈n_words / g⌉`` for the
    packing operations, 1 for ROWMAX, ``2·n_words`` for the BF16 conversions,
    ``n_words`` otherwise."""
    if int(op) == 1:
        return 1
    if int(op) in TO_BF16_OPS:
        return 2 * n_words
    g = pack_group(op)
    return -(-n_words // g)


def softmax_multiplier(scale):
    """``(multiplier, shift)`` mapping input scale ``scale`` (``S_in``) to ``S_t``.

    ``quantize_multiplier(scale / S_t)``: ``t = MultiplyByQuantizedMultiplier(d,
    multiplier, shift)`` is then ``d · S_in / S_t`` rounded.  ``scale`` must be finite
    and positive, and its ratio to ``S_t`` representable (shift in ``[-31, 30]``).
    """
    arr = _float_array("scale", scale).astype(np.float64)
    if arr.ndim != 0:
        raise ValueError(f"scale must be a scalar, not an array of shape {arr.shape}")
    value = float(arr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be finite and positive, not {value!r}")
    try:
        return quantize_multiplier(value / SOFTMAX_SCALE)
    except ValueError:
        raise ValueError(f"scale must be within the range whose ratio to ln(2)/1024 has a "
                         f"shift in [{SHIFT_MIN}, {SHIFT_MAX}], not {value!r}") from None


# -- argument checks ------------------------------------------------------------------


def _rows(name, x):
    """``x`` as an int64 ``[rows, n]`` array of int32 values."""
    arr = _int_array(name, x, INT32_MIN, INT32_MAX, "int32 ")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, n], not of shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one element per row, "
                         f"not shape {arr.shape}")
    return arr


def _n_valid(n_valid, n):
    if n_valid is None:
        n_valid = n
    return _int_scalar("n_valid", n_valid, 1, min(n, N_VALID_MAX))


def _softmax_params(multiplier, shift):
    return (_int_scalar("multiplier", multiplier, 0, INT32_MAX),
            _int_scalar("shift", shift, SHIFT_MIN, SHIFT_MAX))


# -- operations -----------------------------------------------------------------------


def _softmax_exp(x, n_valid, multiplier, shift):
    """The i-exp values ``e`` (int64 ``[rows, n_valid]``) of the valid elements."""
    valid = x[:, :n_valid]
    d = valid - valid.max(axis=1, keepdims=True)
    d = np.maximum(d, -(1 << (31 - max(shift, 0))))
    t = _mbqm(d, np.int64(multiplier), np.int64(shift))
    z = (-t) >> SOFTMAX_Z_BITS
    p = t + SOFTMAX_LN2_STEPS * z
    poly = (p + SOFTMAX_POLY_B) ** 2 + SOFTMAX_POLY_C
    return np.where(z < SOFTMAX_Z_LIMIT, poly >> np.minimum(z, SOFTMAX_Z_LIMIT - 1), 0)


def softmax_exp(x, n_valid, multiplier, shift):
    """The i-exp values ``e`` of the first ``n_valid`` elements of each row of ``x``.

    Returns an int64 array ``[rows, n_valid]``, each value in ``[0, 2**23)`` (the
    intermediate the hardware writes to the destination in its second pass).
    """
    x = _rows("x", x)
    n_valid = _n_valid(n_valid, x.shape[1])
    multiplier, shift = _softmax_params(multiplier, shift)
    return _softmax_exp(x, n_valid, multiplier, shift)


def _integer_softmax(x, n_valid, multiplier, shift):
    e = _softmax_exp(x, n_valid, multiplier, shift)
    total = e.sum(axis=1, keepdims=True)          # >= e of the maximum > 0
    recip = SOFTMAX_RECIP_NUMERATOR // total
    out = np.zeros(x.shape, dtype=np.int64)
    out[:, :n_valid] = np.minimum(SOFTMAX_OUT_MAX, (e * recip) >> SOFTMAX_OUT_SHIFT)
    return out.astype(np.int32)


def integer_softmax(x, n_valid, multiplier, shift):
    """Integer softmax of each row of ``x`` (int32 ``[rows, n]``) → int32 ``[rows, n]``.

    Only elements ``0 … n_valid-1`` of a row take part; elements ``≥ n_valid`` become 0.
    Outputs are probabilities of scale 1/128 in ``[0, 127]``.  ``multiplier`` (Q31,
    ``≥ 0``) and ``shift`` (``[-31, 30]``) come from :func:`softmax_multiplier`.
    """
    x = _rows("x", x)
    n_valid = _n_valid(n_valid, x.shape[1])
    multiplier, shift = _softmax_params(multiplier, shift)
    return _integer_softmax(x, n_valid, multiplier, shift)


def row_max(x, n_valid):
    """The maximum of the first ``n_valid`` elements of each row of ``x`` → int32 ``[rows]``."""
    x = _rows("x", x)
    n_valid = _n_valid(n_valid, x.shape[1])
    return x[:, :n_valid].max(axis=1).astype(np.int32)


def _op_code(op):
    if isinstance(op, str):
        if op not in VECTOR_OPS:
            raise ValueError(f"op must be one of {', '.join(VECTOR_OPS)}, not {op!r}")
        return VECTOR_OPS.index(op)
    if isinstance(op, numbers.Integral) and not isinstance(op, (bool, np.bool_)):
        if not 0 <= op < len(VECTOR_OPS):
            raise ValueError(f"op must be an operation code in 0..{len(VECTOR_OPS) - 1}, "
                             f"not {op!r}")
        return int(op)
    raise TypeError(f"op must be an operation name or code, not {op!r}")


def vector_op(op, a, b=None, *, n_valid=None, multiplier=0, shift=0, zero_point=0,
              lo=INT32_MIN, hi=INT32_MAX):
    """One VECTOR instruction's arithmetic on the rows of ``a`` (and ``b``).

    ``op`` is a name of :data:`VECTOR_OPS` or its code.  ``a`` (and ``b`` for add, sub
    and max, the same shape; ``None`` for the other operations) are int32 ``[rows, n]``:
    row r is the concatenated lanes of the row's ``n_words`` words.  Every field is
    checked as the NPU checks the instruction, whatever the operation uses: ``n_valid`` in
    ``[1, n]`` (``None``: ``n``), ``multiplier`` in ``[0, 2**31 - 1]``, ``shift`` in
    ``[-31, 30]``, ``zero_point`` int8, ``lo ≤ hi`` int32.

    Returns int32 ``[rows, n]``; for rowmax ``[rows, 1]``, the value the NPU writes to
    every lane of the row's destination word; for pack_int4/pack_binary the bytes
    ``[rows, ⌈n·bits / 8⌉]`` (0..255) of the row's elements, those past ``n_valid``
    taken as 0; for to_bf16/to_bf16_relu the bytes ``[rows, 2·n]`` of
    :func:`to_bf16_bytes`.
    """
    code = _op_code(op)
    a = _rows("a", a)
    if code in (2, 3, 6):
        if b is None:
            raise TypeError(f"op {VECTOR_OPS[code]} needs operand b")
        b = _rows("b", b)
        if b.shape != a.shape:
            raise ValueError(f"b must have the shape of a {a.shape}, not {b.shape}")
    elif b is not None:
        raise TypeError(f"op {VECTOR_OPS[code]} takes no operand b")
    n_valid = _n_valid(n_valid, a.shape[1])
    multiplier, shift = _softmax_params(multiplier, shift)
    zero_point = _int_scalar("zero_point", zero_point, -128, 127)
    lo = _int_scalar("lo", lo, INT32_MIN, INT32_MAX)
    hi = _int_scalar("hi", hi, INT32_MIN, INT32_MAX)
    if lo > hi:
        raise ValueError(f"lo must not exceed hi, not lo={lo}, hi={hi}")

    if code == 0:
        return _integer_softmax(a, n_valid, multiplier, shift)
    if code == 1:
        return a[:, :n_valid].max(axis=1, keepdims=True).astype(np.int32)
    if code == 2:
        return _wrap32(a + b)
    if code == 3:
        return _wrap32(a - b)
    if code == 4:
        return np.clip(a, lo, hi).astype(np.int32)
    if code == 6:
        return np.maximum(a, b).astype(np.int32)
    if code in TO_BF16_OPS:
        return _to_bf16_bytes(a, n_valid, code == 10)
    if code in PACK_BITS:
        bits = PACK_BITS[code]
        per = 8 // bits
        n = a.shape[1]
        values = np.where(np.arange(n)[None, :] < n_valid, a & ((1 << bits) - 1), 0)
        nbytes = -(-n // per)
        values = np.pad(values, ((0, 0), (0, nbytes * per - n)))
        weights = np.left_shift(1, bits * np.arange(per))
        return (values.reshape(len(a), nbytes, per) * weights).sum(axis=2).astype(np.int32)
    return np.asarray(requantize(a, multiplier, shift, out_zero_point=zero_point,
                                 out_min=lo, out_max=hi), dtype=np.int32)


def _to_bf16_bytes(a, n_valid, relu):
    bits = (np.asarray(a, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
    values = bits.view(np.float32)
    if relu:
        values = np.where((bits >> 31).astype(bool) & ~np.isnan(values), np.float32(0),
                          values)
    bf = fp32_to_bf16_bits(values).astype(np.int64)
    bf = np.where(np.arange(bf.shape[1])[None, :] < n_valid, bf, 0)
    return np.stack([bf & 0xFF, bf >> 8], axis=2).reshape(len(bf), -1).astype(np.int32)


def to_bf16_bytes(x, n_valid=None, *, relu=False):
    """The bytes TO_BF16 (``relu``: TO_BF16_RELU) makes of each row of ``x``.

    ``x`` holds FP32 bit patterns as int32 ``[rows, n]``; each element is rounded to
    BF16 (:func:`~npugen.golden.floating.fp32_to_bf16_bits`: nearest even, subnormals
    kept, NaN → 0x7FC0), after ReLU when ``relu`` (sign bit set and not NaN → +0).
    Returns int32 ``[rows, 2·n]`` bytes (0..255): element e in bytes 2e (low) and 2e + 1
    (high); elements from ``n_valid`` on (``None``: ``n``) give zero bytes.
    """
    x = _rows("x", x)
    n_valid = _n_valid(n_valid, x.shape[1])
    return _to_bf16_bytes(x, n_valid, bool(relu))


def _wrap32(values):
    return ((values + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
