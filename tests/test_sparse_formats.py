"""Golden sparse formats: round trips, storage reports, rejection of malformed input."""

import numpy as np
import pytest

from npugen.golden.pruning import prune_magnitude, prune_n_m
from npugen.golden.sparse_formats import BitmaskMatrix, CSRMatrix, NMMatrix

SEEDS = [201, 202, 203]
DENSITIES = [0.0, 0.01, 0.3, 0.5, 1.0]


def sparse_matrix(rng, rows, cols, density, zero_point=0):
    w = rng.integers(-127, 128, size=(rows, cols))
    keep = rng.random((rows, cols)) < density
    return np.where(keep, w, zero_point)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("cls", [CSRMatrix, BitmaskMatrix])
@pytest.mark.parametrize("zero_point", [0, -3])
def test_round_trip(seed, density, cls, zero_point):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    dense = sparse_matrix(rng, 13, 9, density, zero_point)
    dense[3] = zero_point       # an all-zero row
    dense[:, 5] = zero_point    # an all-zero column
    packed = cls.from_dense(dense, zero_point=zero_point)
    assert np.array_equal(packed.to_dense(), dense)
    assert packed.nnz == np.count_nonzero(dense != zero_point)
    assert packed.storage().nnz == packed.nnz


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8), (4, 4)])
@pytest.mark.parametrize("k", [1, 3, 4, 9, 16])
def test_nm_round_trip(seed, n, m, k):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    w = prune_n_m(rng.integers(-127, 128, size=(k, 6)), n, m).weights
    w[:, 2] = 0
    packed = NMMatrix.from_dense(w, n=n, m=m)
    assert packed.values.shape == (-(-k // m) * n, 6)
    assert np.array_equal(packed.to_dense(), w)
    assert packed.nnz == np.count_nonzero(w)


def test_two_four_layout():
    """2 values and 2 two-bit positions per group of 4 K-elements of a column."""
    w = np.array([[0, 7], [5, 0], [0, 0], [-9, 1], [0, 0], [0, 0], [3, 0], [0, 0]])
    packed = NMMatrix.from_dense(w)
    assert packed.values.tolist() == [[5, 7], [-9, 1], [0, 0], [3, 0]]
    assert packed.indices.tolist() == [[1, 0], [3, 3], [0, 0], [2, 1]]
    report = packed.storage()
    assert (report.values_bytes, report.metadata_bytes, report.dense_bytes) == (8, 2, 16)
    assert report.format == "2:4"


def test_csr_layout_and_storage():
    dense = np.array([[0, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, -2]])
    csr = CSRMatrix.from_dense(dense)
    assert csr.indptr.tolist() == [0, 1, 1, 3]
    assert csr.indices.tolist() == [1, 0, 3]
    assert csr.values.tolist() == [3, 1, -2]
    report = csr.storage()
    # 3 values × 8 bits; indices 3 × 2 bits → 1 byte; 4 pointers × 2 bits → 1 byte.
    assert report.to_dict() == {
        "format": "csr", "shape": [3, 4], "nnz": 3, "density": 0.25, "stored_values": 3,
        "value_bits": 8, "values_bytes": 3, "metadata_bytes": 2, "total_bytes": 5,
        "dense_bytes": 12, "ratio": 2.4}


def test_bitmask_layout_and_storage():
    dense = np.array([[0, 3, 0], [1, 0, -2], [0, 0, 0]])
    bm = BitmaskMatrix.from_dense(dense)
    assert bm.mask.tolist() == [0b00101010, 0]
    assert bm.values.tolist() == [3, 1, -2]
    report = bm.storage()
    assert (report.values_bytes, report.metadata_bytes, report.total_bytes) == (3, 2, 5)


def test_storage_favours_formats_as_expected():
    """Deep Compression's trade-off: CSR wins when very sparse, bitmask when dense-ish."""
    rng = np.random.default_rng(204)
    w = rng.integers(-127, 128, size=(256, 64))
    sparse = prune_magnitude(w, 0.95).weights
    half = prune_magnitude(w, 0.5).weights
    csr = lambda x: CSRMatrix.from_dense(x).storage()
    bm = lambda x: BitmaskMatrix.from_dense(x).storage()
    assert csr(sparse).total_bytes < bm(sparse).total_bytes < csr(sparse).dense_bytes
    assert bm(half).total_bytes < csr(half).total_bytes
    assert csr(sparse).ratio > 5
    two_four = NMMatrix.from_dense(prune_n_m(w).weights).storage()
    assert two_four.total_bytes == 256 * 64 // 2 + 256 * 64 // 2 * 2 // 8
    assert two_four.ratio == pytest.approx(1.6)


# -- malformed input ---------------------------------------------------------------------------

def csr(**changes):
    args = dict(shape=(2, 4), indptr=[0, 2, 3], indices=[0, 3, 1], values=[5, -1, 2])
    args.update(changes)
    return CSRMatrix(**args)


@pytest.mark.parametrize("changes, regex", [
    (dict(indices=[0, 4, 1]), r"^index 4 of row 0 is out of range for 4 columns$"),
    (dict(indices=[0, 3, -1]), r"^index -1 of row 1 is out of range for 4 columns$"),
    (dict(indptr=[0, 2, 4]), r"^indptr\[2\] = 4 points past the end of the 3 stored values$"),
    (dict(indptr=[0, 5, 3]), r"^indptr must not decrease: indptr\[1\] = 5 > indptr\[2\] = 3$"),
    (dict(indptr=[0, 2, 2]), r"^indptr\[2\] = 2 must equal the number of stored values \(3\)$"),
    (dict(indptr=[1, 2, 3]), r"^indptr\[0\] must be 0, not 1$"),
    (dict(indptr=[0, 3]), r"^indptr must hold rows \+ 1 = 3 pointers, not 2$"),
    (dict(indices=[3, 0, 1]), r"^indices of row 0 must be strictly increasing, found 3 then 0$"),
    (dict(indices=[3, 3, 1]), r"^indices of row 0 must be strictly increasing, found 3 then 3$"),
    (dict(values=[5, -1]), r"^indices and values must be vectors of equal length"),
    (dict(values=[5, -1, 200]), r"^values must be 8-bit codes in \[-128, 127\], found 200$"),
])
def test_csr_rejects(changes, regex):
    with pytest.raises(ValueError, match=regex):
        csr(**changes)


def test_csr_accepts_valid():
    assert csr().to_dense().tolist() == [[5, 0, 0, -1], [0, 2, 0, 0]]


def test_two_four_rejects_three_nonzeros():
    w = np.zeros((8, 3), dtype=np.int64)
    w[4:7, 2] = [1, 2, 3]
    with pytest.raises(ValueError, match=r"^group 1 \(K 4\.\.7\) of column 2 has 3 non-zeros; "
                                         r"2:4 sparsity allows at most 2$"):
        NMMatrix.from_dense(w)


def test_two_four_short_last_group():
    w = np.array([[0], [0], [0], [0], [0], [1], [2]])   # K = 7: groups 0..3, 4..6
    packed = NMMatrix.from_dense(w)
    assert np.array_equal(packed.to_dense(), w)
    with pytest.raises(ValueError, match=r"^group 1 \(K 4\.\.6\) of column 0 has 3 non-zeros"):
        NMMatrix.from_dense(np.array([[0], [0], [0], [0], [3], [1], [2]]))


@pytest.mark.parametrize("indices, values, regex", [
    ([[0], [4]], [[1], [2]], r"^index 4 of group 0 \(K 0\.\.\) in column 0 is out of range "
                             r"for 4 elements$"),
    ([[2], [1]], [[1], [2]], r"^indices of group 0 in column 0 must be strictly increasing, "
                             r"found 2 then 1$"),
    ([[1], [1]], [[1], [2]], r"^indices of group 0 in column 0 must be strictly increasing, "
                             r"found 1 then 1$"),
    ([[0], [3]], [[1], [2]], r"^index 3 of group 0 \(K 0\.\.\) in column 0 is out of range "
                             r"for 3 elements$"),
])
def test_nm_rejects(indices, values, regex):
    k = 3 if "3 elements" in regex else 4
    with pytest.raises(ValueError, match=regex):
        NMMatrix((k, 1), values, indices)


def test_nm_padding_slot_may_hold_only_zero():
    packed = NMMatrix((3, 1), [[1], [0]], [[0], [3]])     # slot past K holding zero: fine
    assert packed.to_dense()[:, 0].tolist() == [1, 0, 0]


def test_nm_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"^values must have shape \(2, 1\) for 1 groups of 2:4, "
                                         r"not \(4, 1\)$"):
        NMMatrix((4, 1), [[1], [2], [3], [4]], [[0], [1], [2], [3]])


def test_bitmask_rejects():
    with pytest.raises(ValueError, match=r"^values must hold one value per set mask bit \(2\), "
                                         r"not 3$"):
        BitmaskMatrix((2, 2), np.array([0b0101], dtype=np.uint8), [1, 2, 3])
    with pytest.raises(ValueError, match=r"^mask has bits set past the 4 entries of the matrix$"):
        BitmaskMatrix((2, 2), np.array([0b10001], dtype=np.uint8), [1, 2])
    with pytest.raises(ValueError, match=r"^mask must hold 1 bytes for 4 entries, not 2$"):
        BitmaskMatrix((2, 2), np.zeros(2, dtype=np.uint8), [])


def test_from_dense_rejects_non_integer():
    with pytest.raises(TypeError, match=r"^dense must be an integer array, not float64$"):
        CSRMatrix.from_dense(np.ones((2, 2)))
