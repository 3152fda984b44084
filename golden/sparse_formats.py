"""Compressed storage of sparse integer matrices: CSR, bitmask and N:M (2:4).

An entry is *zero* when its code equals the matrix's zero point (the effective value
is zero); only the other entries are stored.  Every format

* is built from a dense matrix with ``from_dense`` and turned back with ``to_dense``
  (an exact round trip);
* validates itself on construction and raises ``ValueError`` naming the problem
  (an index out of range, a pointer past the end of the value array, a group with
  too many non-zeros, ...), so a malformed operand never reaches a kernel;
* reports its size with :meth:`storage` as Deep Compression does: bytes of values
  plus bytes of metadata (indices, pointers, masks) against the dense matrix.

Formats:

:class:`CSRMatrix`
    Compressed sparse rows: ``indptr`` (rows + 1 pointers), ``indices`` (column of
    each non-zero, strictly increasing within a row) and ``values``.  The sparse
    engine reads the weight matrix ``W`` (K×N) as the CSR of ``Wᵀ`` — one compressed
    row per output channel ``n``, indices are the K positions (i.e. CSC of ``W``).
:class:`BitmaskMatrix`
    One bit per entry (row-major, packed little-endian per byte) and the non-zero
    values in row-major order.
:class:`NMMatrix`
    N:M structured sparsity along axis 0 (K) of a K×N weight matrix: every group of
    ``m`` consecutive K-elements of a column holds at most ``n`` non-zeros, stored as
    ``n`` values and ``n`` indices of ``ceil(log2 m)`` bits (2:4: 2 values + 2 two-bit
    indices per group).  A K that is not a multiple of ``m`` ends in a short group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StorageReport", "CSRMatrix", "BitmaskMatrix", "NMMatrix"]


def _dense(name, value):
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, not {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, not shape {arr.shape}")
    return arr.astype(np.int64)


def _int_vector(name, value):
    arr = np.asarray(value)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, not {arr.dtype}")
    return arr.astype(np.int64)


def _shape(value):
    if (not isinstance(value, tuple) or len(value) != 2 or
            any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
                for v in value)):
        raise ValueError(f"shape must be a pair of non-negative integers, not {value!r}")
    return int(value[0]), int(value[1])


def _zero_point(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"zero_point must be an integer, not {value!r}")
    return int(value)


def _index_bits(extent):
    """Bits of an index into ``extent`` positions (at least 1)."""
    return max(1, math.ceil(math.log2(extent))) if extent > 1 else 1


@dataclass(frozen=True)
class StorageReport:
    """Size of a compressed matrix, as Deep Compression reports it.

    ``value_bits`` per stored value; metadata is counted bit-packed and rounded up to
    whole bytes per array.  ``ratio`` is dense bytes / compressed bytes.
    """
    format: str
    shape: tuple[int, int]
    nnz: int
    stored_values: int
    value_bits: int
    values_bytes: int
    metadata_bytes: int
    dense_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.values_bytes + self.metadata_bytes

    @property
    def density(self) -> float:
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.total_bytes if self.total_bytes else math.inf

    def to_dict(self) -> dict:
        return {"format": self.format, "shape": list(self.shape), "nnz": self.nnz,
                "density": round(self.density, 6), "stored_values": self.stored_values,
                "value_bits": self.value_bits, "values_bytes": self.values_bytes,
                "metadata_bytes": self.metadata_bytes, "total_bytes": self.total_bytes,
                "dense_bytes": self.dense_bytes, "ratio": round(self.ratio, 4)}


def _bytes(count, bits):
    return (count * bits + 7) // 8


def _check_values(values, value_bits, zero_point):
    """Stored values must be codes of ``value_bits`` signed bits."""
    lo, hi = -(1 << (value_bits - 1)), (1 << (value_bits - 1)) - 1
    if values.size and (values.min() < lo or values.max() > hi):
        bad = values[(values < lo) | (values > hi)][0]
        raise ValueError(f"values must be {value_bits}-bit codes in [{lo}, {hi}], found {bad}")
    if not lo <= zero_point <= hi:
        raise ValueError(f"zero_point must be in [{lo}, {hi}], not {zero_point}")


class CSRMatrix:
    """Compressed sparse rows of a ``rows × cols`` integer matrix.

    ``indptr[r] .. indptr[r + 1]`` delimit row ``r``'s entries in ``indices`` (column
    positions, strictly increasing) and ``values``.  Explicitly stored zeros (a value
    equal to ``zero_point``) are allowed and simply cost work.
    """

    format = "csr"

    def __init__(self, shape, indptr, indices, values, *, zero_point=0, value_bits=8):
        self.shape = _shape(shape)
        self.zero_point = _zero_point(zero_point)
        self.value_bits = value_bits
        self.indptr = _int_vector("indptr", indptr)
        self.indices = _int_vector("indices", indices)
        self.values = _int_vector("values", values)
        self._validate()

    def _validate(self):
        rows, cols = self.shape
        indptr, indices, values = self.indptr, self.indices, self.values
        if indptr.ndim != 1 or indptr.size != rows + 1:
            raise ValueError(f"indptr must hold rows + 1 = {rows + 1} pointers, "
                             f"not {indptr.size}")
        if indices.ndim != 1 or values.ndim != 1 or indices.size != values.size:
            raise ValueError(f"indices and values must be vectors of equal length, not "
                             f"{indices.shape} and {values.shape}")
        if indptr[0] != 0:
            raise ValueError(f"indptr[0] must be 0, not {indptr[0]}")
        steps = np.diff(indptr)
        if (steps < 0).any():
            r = int(np.flatnonzero(steps < 0)[0])
            raise ValueError(f"indptr must not decrease: indptr[{r}] = {indptr[r]} > "
                             f"indptr[{r + 1}] = {indptr[r + 1]}")
        if indptr[-1] != values.size:
            over = np.flatnonzero(indptr > values.size)
            if over.size:
                r = int(over[0])
                raise ValueError(f"indptr[{r}] = {indptr[r]} points past the end of the "
                                 f"{values.size} stored values")
            raise ValueError(f"indptr[{rows}] = {indptr[-1]} must equal the number of "
                             f"stored values ({values.size})")
        if indices.size:
            bad = (indices < 0) | (indices >= cols)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                row = int(np.searchsorted(indptr, i, side="right") - 1)
                raise ValueError(f"index {indices[i]} of row {row} is out of range for "
                                 f"{cols} columns")
            row_of = np.repeat(np.arange(rows), steps)
            same_row = row_of[1:] == row_of[:-1]
            unsorted = same_row & (indices[1:] <= indices[:-1])
            if unsorted.any():
                i = int(np.flatnonzero(unsorted)[0])
                raise ValueError(f"indices of row {row_of[i]} must be strictly increasing, "
                                 f"found {indices[i]} then {indices[i + 1]}")
        _check_values(values, self.value_bits, self.zero_point)

    @classmethod
    def from_dense(cls, dense, *, zero_point=0, value_bits=8):
        dense = _dense("dense", dense)
        zero_point = _zero_point(zero_point)
        nonzero = dense != zero_point
        indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))])
        rows, cols = np.nonzero(nonzero)      # row-major: sorted by row, then column
        return cls(dense.shape, indptr, cols, dense[rows, cols], zero_point=zero_point,
                   value_bits=value_bits)

    def to_dense(self) -> np.ndarray:
        out = np.full(self.shape, self.zero_point, dtype=np.int64)
        out[self.row_of_entries(), self.indices] = self.values
        return out

    def row_of_entries(self) -> np.ndarray:
        """The row of every stored entry."""
        return np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))

    @property
    def nnz(self) -> int:
        """Stored entries that are not the zero point."""
        return int(np.count_nonzero(self.values != self.zero_point))

    def row_nnz(self) -> np.ndarray:
        """Stored entries per row."""
        return np.diff(self.indptr)

    def storage(self) -> StorageReport:
        rows, cols = self.shape
        stored = int(self.values.size)
        meta = _bytes(stored, _index_bits(cols)) + _bytes(rows + 1, _index_bits(stored + 1))
        return StorageReport(self.format, self.shape, self.nnz, stored, self.value_bits,
                             _bytes(stored, self.value_bits), meta,
                             _bytes(rows * cols, self.value_bits))


class BitmaskMatrix:
    """A presence bit per entry (row-major, packed LSB first) plus the non-zero values."""

    format = "bitmask"

    def __init__(self, shape, mask, values, *, zero_point=0, value_bits=8):
        self.shape = _shape(shape)
        self.zero_point = _zero_point(zero_point)
        self.value_bits = value_bits
        mask = np.asarray(mask)
        if mask.dtype != np.uint8 or mask.ndim != 1:
            raise TypeError(f"mask must be a vector of packed uint8 bytes, not "
                            f"{mask.dtype} of shape {mask.shape}")
        size = self.shape[0] * self.shape[1]
        if mask.size != (size + 7) // 8:
            raise ValueError(f"mask must hold {(size + 7) // 8} bytes for {size} entries, "
                             f"not {mask.size}")
        bits = np.unpackbits(mask, bitorder="little")
        if bits[size:].any():
            raise ValueError(f"mask has bits set past the {size} entries of the matrix")
        self.mask = mask
        self.values = _int_vector("values", values)
        if self.values.ndim != 1 or self.values.size != int(bits[:size].sum()):
            raise ValueError(f"values must hold one value per set mask bit "
                             f"({int(bits[:size].sum())}), not {self.values.size}")
        _check_values(self.values, value_bits, self.zero_point)

    @classmethod
    def from_dense(cls, dense, *, zero_point=0, value_bits=8):
        dense = _dense("dense", dense)
        zero_point = _zero_point(zero_point)
        present = (dense != zero_point).ravel()
        return cls(dense.shape, np.packbits(present, bitorder="little"), dense.ravel()[present],
                   zero_point=zero_point, value_bits=value_bits)

    def bits(self) -> np.ndarray:
        """The presence mask as a boolean matrix."""
        size = self.shape[0] * self.shape[1]
        return np.unpackbits(self.mask, bitorder="little")[:size].astype(bool).reshape(self.shape)

    def to_dense(self) -> np.ndarray:
        out = np.full(self.shape, self.zero_point, dtype=np.int64)
        out[self.bits()] = self.values
        return out

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.values != self.zero_point))

    def storage(self) -> StorageReport:
        rows, cols = self.shape
        stored = int(self.values.size)
        return StorageReport(self.format, self.shape, self.nnz, stored, self.value_bits,
                             _bytes(stored, self.value_bits), _bytes(rows * cols, 1),
                             _bytes(rows * cols, self.value_bits))


class NMMatrix:
    """N:M structured sparsity along K (axis 0) of a K×N matrix.

    ``values`` and ``indices`` have shape ``(groups · n, N)``: rows ``g·n .. g·n+n-1``
    hold the ``n`` slots of group ``g`` (K-elements ``g·m .. g·m+m-1``).  A slot's index
    is its position inside the group (``0 .. m-1``); the indices of a group are strictly
    increasing.  Groups with fewer than ``n`` non-zeros fill the spare slots with the
    zero point at unused positions; only such a slot may point past K (the padding of
    a short last group).
    """

    format = "nm"

    def __init__(self, shape, values, indices, *, n=2, m=4, zero_point=0, value_bits=8):
        self.shape = _shape(shape)
        for name, v in (("n", n), ("m", m)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if n > m:
            raise ValueError(f"n must not exceed m, not n={n}, m={m}")
        self.n, self.m = n, m
        self.zero_point = _zero_point(zero_point)
        self.value_bits = value_bits
        K, N = self.shape
        groups = math.ceil(K / m)
        values, indices = np.asarray(values), np.asarray(indices)
        for name, arr in (("values", values), ("indices", indices)):
            if arr.shape != (groups * n, N):
                raise ValueError(f"{name} must have shape ({groups * n}, {N}) for "
                                 f"{groups} groups of {n}:{m}, not {arr.shape}")
        self.values = _dense("values", values) if values.size else values.astype(np.int64)
        self.indices = _dense("indices", indices) if indices.size else indices.astype(np.int64)
        idx = self.indices.reshape(groups, n, N)
        if idx.size:
            k = np.arange(groups)[:, None, None] * m + idx
            vals = self.values.reshape(groups, n, N)
            bad = (idx < 0) | (idx >= m) | ((k >= K) & (vals != self.zero_point))
            if bad.any():
                g, s, c = (int(v[0]) for v in np.nonzero(bad))
                raise ValueError(f"index {idx[g, s, c]} of group {g} (K {g * m}..) in column "
                                 f"{c} is out of range for {min(m, K - g * m)} elements")
            if n > 1:
                dup = idx[:, 1:, :] <= idx[:, :-1, :]
                if dup.any():
                    g, s, c = (int(v[0]) for v in np.nonzero(dup))
                    raise ValueError(f"indices of group {g} in column {c} must be strictly "
                                     f"increasing, found {idx[g, s, c]} then {idx[g, s + 1, c]}")
        _check_values(self.values, value_bits, self.zero_point)

    @classmethod
    def from_dense(cls, dense, *, n=2, m=4, zero_point=0, value_bits=8):
        """Compress; raises ``ValueError`` if a group holds more than ``n`` non-zeros."""
        dense = _dense("dense", dense)
        zero_point = _zero_point(zero_point)
        if isinstance(n, bool) or not isinstance(n, int) or isinstance(m, bool) or \
                not isinstance(m, int) or not 1 <= n <= m:
            raise ValueError(f"n:m must be positive integers with n <= m, not {n!r}:{m!r}")
        K, N = dense.shape
        groups = math.ceil(K / m)
        padded = np.full((groups * m, N), zero_point, dtype=np.int64)
        padded[:K] = dense
        blocks = padded.reshape(groups, m, N)
        nonzero = blocks != zero_point
        count = nonzero.sum(axis=1)
        if (count > n).any():
            g, c = (int(v[0]) for v in np.nonzero(count > n))
            raise ValueError(f"group {g} (K {g * m}..{min(K, g * m + m) - 1}) of column {c} has "
                             f"{count[g, c]} non-zeros; {n}:{m} sparsity allows at most {n}")
        # Slots: the non-zeros, then the first unused positions (holding the zero
        # point; in a short last group they may lie in the padding past K), in
        # increasing position order.
        order = np.sort(np.argsort(~nonzero, axis=1, kind="stable")[:, :n, :], axis=1)
        values = np.take_along_axis(blocks, order, axis=1)
        return cls(dense.shape, values.reshape(groups * n, N), order.reshape(groups * n, N),
                   n=n, m=m, zero_point=zero_point, value_bits=value_bits)

    def to_dense(self) -> np.ndarray:
        K, N = self.shape
        groups = math.ceil(K / self.m)
        out = np.full((groups * self.m, N), self.zero_point, dtype=np.int64)
        k = (np.arange(groups)[:, None, None] * self.m +
             self.indices.reshape(groups, self.n, N)).reshape(-1, N)
        cols = np.broadcast_to(np.arange(N), k.shape)
        out[k, cols] = self.values
        return out[:K]

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.values != self.zero_point))

    def storage(self) -> StorageReport:
        K, N = self.shape
        stored = int(self.values.size)
        return StorageReport(f"{self.n}:{self.m}", self.shape, self.nnz, stored,
                             self.value_bits, _bytes(stored, self.value_bits),
                             _bytes(stored, _index_bits(self.m)), _bytes(K * N, self.value_bits))
