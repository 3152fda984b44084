"""Golden pruning: unstructured magnitude, N:M, structured; the achieved sparsity."""

import numpy as np
import pytest

from npugen.golden.pruning import prune_magnitude, prune_n_m, prune_structured, sparsity
from npugen.golden.sparse_formats import NMMatrix

SEEDS = [101, 102, 103]


def random_weights(rng, k, n, *, zero_free=True):
    w = rng.integers(-127, 128, size=(k, n))
    if zero_free:
        w[w == 0] = 1
    return w.astype(np.int8)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("target", [0.0, 0.1, 0.5, 0.75, 0.99, 1.0])
def test_magnitude_prunes_smallest(seed, target):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    w = random_weights(rng, 37, 11)
    result = prune_magnitude(w, target)
    count = round(target * w.size)
    assert np.count_nonzero(result.weights == 0) == count
    assert result.sparsity == pytest.approx(count / w.size)
    assert result.weights.dtype == np.int8 and result.weights.shape == w.shape
    kept = np.abs(w[result.mask].astype(int))
    gone = np.abs(w[~result.mask].astype(int))
    if kept.size and gone.size:
        assert gone.max() <= kept.min()
    assert np.array_equal(result.weights[result.mask], w[result.mask])


def test_magnitude_reports_achieved_not_target():
    # Half the entries are already zero: pruning 25 % more changes nothing.
    w = np.array([[0, 0, 5, -6]] * 4, dtype=np.int8)
    result = prune_magnitude(w, 0.25)
    assert result.target == 0.25
    assert result.sparsity == 0.5
    assert result.report()["achieved_sparsity"] == 0.5
    assert result.report()["nonzeros"] == 8


def test_magnitude_with_zero_point():
    w = np.array([[10, 11, 20, 0]], dtype=np.int16)
    result = prune_magnitude(w, 0.5, zero_point=10)
    # |w - 10| = 0, 1, 10, 10: the two smallest go to the zero point.
    assert result.weights.tolist() == [[10, 10, 20, 0]]
    assert result.sparsity == 0.5
    assert sparsity(result.weights, 10) == 0.5


def test_magnitude_ties_are_deterministic():
    w = np.array([[3, -3, 3, -3]], dtype=np.int8)
    result = prune_magnitude(w, 0.5)
    assert result.weights.tolist() == [[0, 0, 3, -3]]


def test_magnitude_on_floats():
    w = np.array([[0.1, -2.0], [0.5, 3.0]])
    result = prune_magnitude(w, 0.5)
    assert result.weights.tolist() == [[0.0, -2.0], [0.0, 3.0]]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8), (3, 4), (1, 2)])
@pytest.mark.parametrize("k", [1, 4, 7, 16, 18])
def test_n_m_keeps_largest_per_group(seed, n, m, k):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    w = random_weights(rng, k, 5)
    result = prune_n_m(w, n, m)
    for g in range(0, k, m):
        for c in range(5):
            group = w[g:g + m, c].astype(int)
            kept = result.weights[g:g + m, c].astype(int)
            nonzero = np.count_nonzero(kept)
            assert nonzero == min(n, len(group))
            order = np.argsort(-np.abs(group), kind="stable")[:n]
            assert sorted(np.flatnonzero(kept)) == sorted(order)
    assert result.method == f"{n}:{m}"
    assert result.target == pytest.approx(1 - n / m)
    assert result.sparsity == pytest.approx(np.count_nonzero(result.weights == 0) / w.size)
    if n <= m:
        packed = NMMatrix.from_dense(result.weights, n=n, m=m)
        assert np.array_equal(packed.to_dense(), result.weights)


def test_two_four_achieved_sparsity_is_half():
    w = random_weights(np.random.default_rng(5), 64, 32)
    result = prune_n_m(w)
    assert result.sparsity == 0.5


def test_n_m_with_zero_point():
    w = np.array([[5], [9], [4], [-20]])
    result = prune_n_m(w, 2, 4, zero_point=5)
    # |w - 5| = 0, 4, 1, 25: keep 9 and -20.
    assert result.weights[:, 0].tolist() == [5, 9, 5, -20]


@pytest.mark.parametrize("structure, axis", [("filter", 1), ("channel", 0)])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_structured_removes_whole_lines(structure, axis, norm):
    seed = 104
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    w = random_weights(rng, 12, 10)
    result = prune_structured(w, 0.5, structure=structure, norm=norm)
    mag = np.abs(w.astype(float))
    score = mag.sum(axis=1 - axis) if norm == "l1" else np.sqrt((mag ** 2).sum(axis=1 - axis))
    zero_lines = np.flatnonzero((result.weights == 0).all(axis=1 - axis))
    assert len(zero_lines) == w.shape[axis] // 2
    assert set(zero_lines) == set(np.argsort(score, kind="stable")[:w.shape[axis] // 2])
    assert result.sparsity == 0.5
    assert result.method == structure


def test_structured_l1_and_l2_can_differ():
    w = np.array([[12, 6], [0, 6], [0, 6]])   # L1: 12 < 18; L2: 12 > sqrt(108)
    assert prune_structured(w, 0.5, norm="l1").weights[:, 0].tolist() == [0, 0, 0]
    assert prune_structured(w, 0.5, norm="l2").weights[:, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("call, exc, regex", [
    (lambda: prune_magnitude(np.ones((2, 2)), 1.5), ValueError,
     r"^target_sparsity must be in \[0, 1\], not 1\.5$"),
    (lambda: prune_magnitude(np.ones((2, 2)), "0.5"), TypeError,
     r"^target_sparsity must be a number in \[0, 1\], not '0\.5'$"),
    (lambda: prune_magnitude(np.ones(4), 0.5), ValueError,
     r"^w must be a 2-D array \(K, N\), not shape \(4,\)$"),
    (lambda: prune_magnitude(np.ones((2, 2), dtype=bool), 0.5), TypeError,
     r"^w must be an integer or floating array, not bool$"),
    (lambda: prune_magnitude(np.array([[np.nan]]), 0.5), ValueError, r"^w must be finite$"),
    (lambda: prune_n_m(np.ones((4, 4)), 3, 2), ValueError,
     r"^n must not exceed m, not n=3, m=2$"),
    (lambda: prune_n_m(np.ones((4, 4)), 0, 4), ValueError,
     r"^n must be a positive integer, not 0$"),
    (lambda: prune_structured(np.ones((4, 4)), 0.5, structure="row"), ValueError,
     r"^structure must be 'filter' or 'channel', not 'row'$"),
    (lambda: prune_structured(np.ones((4, 4)), 0.5, norm="linf"), ValueError,
     r"^norm must be 'l1' or 'l2', not 'linf'$"),
])
def test_bad_arguments(call, exc, regex):
    with pytest.raises(exc, match=regex):
        call()
