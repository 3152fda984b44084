"""The BF16 GEMM golden model: the NPU's fixed FP32 order, checked against a scalar
reference written from the ISA's description (``ml_dtypes`` BF16 and NumPy float32
scalars), the exact-fraction reference, and the operand byte layout."""

import os
import re

import ml_dtypes
import numpy as np
import pytest

from npugen.golden.bf16_gemm import (bf16_gemm, bf16_tile_sum, join_bytes, random_bf16,
                                     split_bytes)
from npugen.golden.floating import BFLOAT16, FLOAT32, add, from_fraction, to_fraction

SEED = int(os.environ.get("NPUGEN_SEED", "20261122"))


def scalar_reference(a_bits, w_bits, k_tile):
    """One output at a time: products as float32 of the BF16 values, tile sums from +0 in
    k order, tiles added to the accumulator in order; every step a float32 scalar."""
    a = a_bits.view(ml_dtypes.bfloat16)
    w = w_bits.view(ml_dtypes.bfloat16)
    M, K = a.shape
    out = np.zeros((M, w.shape[1]), dtype=np.uint32)
    with np.errstate(all="ignore"):
        for i in range(M):
            for j in range(w.shape[1]):
                acc = None
                for k0 in range(0, K, k_tile):
                    s = np.float32(0.0)
                    for k in range(k0, min(K, k0 + k_tile)):
                        s = np.float32(s + np.float32(a[i, k]) * np.float32(w[k, j]))
                    acc = s if acc is None else np.float32(acc + s)
                bits = np.float32(acc).view(np.uint32)
                out[i, j] = FLOAT32.quiet_nan if np.isnan(acc) else bits
    return out


@pytest.mark.parametrize("k_tile", [1, 3, 4, 64])
def test_matches_scalar_reference(k_tile):
    seed = SEED + k_tile
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a = random_bf16(rng, (6, 13), specials=0.08, spread=30)
    w = random_bf16(rng, (13, 5), specials=0.08, spread=30)
    np.testing.assert_array_equal(bf16_gemm(a, w, k_tile), scalar_reference(a, w, k_tile))


def test_tile_sum_matches_exact_rounding_step_by_step():
    """Each addition of a tile sum is one correctly rounded FP32 addition (exact-fraction
    reference) of an exact product: cancellation, ties and subnormal sums included."""
    seed = SEED + 101
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    a = random_bf16(rng, (4, 9), spread=60)
    w = random_bf16(rng, (9, 3), spread=60)
    got = bf16_tile_sum(a, w).view(np.uint32)
    for i in range(4):
        for j in range(3):
            s = 0
            for k in range(9):
                product = to_fraction(BFLOAT16, int(a[i, k])) * to_fraction(BFLOAT16, int(w[k, j]))
                s = add(FLOAT32, s, from_fraction(FLOAT32, product))
            assert int(got[i, j]) == s, (i, j)


def test_order_matters_and_is_the_documented_one():
    # 2^24 + 1 + 1: in k order each +1 is lost to rounding; as one tile after another the
    # same; the reverse order would keep them.
    big, one = 0x4B80, 0x3F80                     # 2^24, 1.0 (BF16)
    a = np.array([[big, one, one]], dtype=np.uint16)
    w = np.array([[one], [one], [one]], dtype=np.uint16)
    assert bf16_gemm(a, w, 3).view(np.float32)[0, 0] == np.float32(2 ** 24)
    reverse = bf16_gemm(a[:, ::-1].copy(), w, 1).view(np.float32)[0, 0]
    assert reverse == np.float32(2 ** 24 + 2)


def test_special_results():
    inf, ninf, nan, zero, nzero, one = 0x7F80, 0xFF80, 0x7FC1, 0x0000, 0x8000, 0x3F80
    a = np.array([[inf, ninf], [zero, one], [nzero, nzero], [nan, one]], dtype=np.uint16)
    w = np.array([[one], [one]], dtype=np.uint16)
    out = bf16_gemm(a, w, 2)
    assert out[0, 0] == FLOAT32.quiet_nan               # ∞ − ∞
    assert out[1, 0] == 0x3F800000
    assert out[2, 0] == 0x00000000                      # +0 + (−0) + (−0) = +0
    assert out[3, 0] == FLOAT32.quiet_nan               # canonical NaN
    huge = np.array([[0x7F7F, 0x7F7F]], dtype=np.uint16)  # largest BF16, squared: ∞
    assert bf16_gemm(huge, np.array([[0x7F7F], [0x7F7F]], dtype=np.uint16), 1)[0, 0] == 0x7F800000


def test_byte_layout_round_trip():
    print(f"seed={SEED}")
    rng = np.random.default_rng(SEED)
    bits = random_bf16(rng, (3, 5), specials=0.3)
    lanes = split_bytes(bits, 1)
    assert lanes.shape == (3, 10) and lanes.dtype == np.uint8
    assert list(lanes[0, :2]) == [bits[0, 0] & 0xFF, bits[0, 0] >> 8]
    np.testing.assert_array_equal(join_bytes(lanes, 1), bits)
    rows = split_bytes(bits, 0)
    assert rows.shape == (6, 5)
    assert list(rows[:2, 0]) == [bits[0, 0] & 0xFF, bits[0, 0] >> 8]
    np.testing.assert_array_equal(join_bytes(rows.astype(np.int8), 0), bits)


@pytest.mark.parametrize("call, message", [
    (lambda: bf16_gemm(np.zeros((2, 3), int), np.zeros((4, 2), int), 1),
     "a_bits and w_bits must be M×K and K×N with K ≥ 1, not (2, 3) and (4, 2)"),
    (lambda: bf16_gemm(np.zeros((2, 3), int), np.zeros((3, 2), int), 0),
     "k_tile must be a positive integer, not 0"),
    (lambda: bf16_gemm(np.full((1, 1), 70000), np.zeros((1, 1), int), 1),
     "a_bits must hold 16-bit BF16 encodings (integers 0..65535)"),
    (lambda: bf16_gemm(np.zeros((1, 1)), np.zeros((1, 1), int), 1),
     "a_bits must hold 16-bit BF16 encodings (integers 0..65535)"),
    (lambda: random_bf16(np.random.default_rng(0), 3, specials=2.0),
     "specials must be a fraction in [0, 1], not 2.0"),
])
def test_rejects(call, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()
