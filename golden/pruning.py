"""Weight pruning: unstructured magnitude, N:M (2:4 and general), structured.

Every function takes a weight matrix (integer codes or floats, K×N: rows are input
channels / the reduction dimension, columns are output channels / filters) and a
``zero_point`` (the code of the real value 0; 0 for the NPU's symmetric weights).  The
magnitude of an entry is ``|w - zero_point|``; pruned entries are set to the zero point,
so they count as zero for the sparse formats and the zero-skipping engine.

Each returns a :class:`PruneResult` with the pruned weights, the mask of kept entries
and the sparsity *actually achieved*: the fraction of entries equal to the zero point
after pruning, which includes entries that were zero before and may differ from the
target (ties, rounding of counts, whole-group granularity).

Ties in magnitude are broken by position (the earlier entry in row-major order is kept),
so results are deterministic.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["PruneResult", "prune_magnitude", "prune_n_m", "prune_structured", "sparsity"]


@dataclass
class PruneResult:
    """Pruned weights and what was achieved."""
    weights: np.ndarray       # same shape and dtype as the input
    mask: np.ndarray          # bool, True where the entry was kept
    method: str               # "magnitude", "2:4", "filter", "channel"
    target: float             # requested sparsity (N:M: 1 - n/m)
    sparsity: float           # achieved: fraction of entries equal to the zero point
    zero_point: int | float = 0

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def report(self) -> dict:
        """Target and achieved sparsity, for logs and benchmark records."""
        return {"method": self.method, "target_sparsity": round(self.target, 6),
                "achieved_sparsity": round(self.sparsity, 6),
                "density": round(self.density, 6), "shape": list(self.weights.shape),
                "nonzeros": int(np.count_nonzero(self.weights != self.zero_point))}


def _weights(w):
    arr = np.asarray(w)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"w must be an integer or floating array, not {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"w must be a 2-D array (K, N), not shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError("w must be finite")
    return arr


def _fraction(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], not {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], not {value!r}")
    return float(value)


def _magnitude(arr, zero_point):
    return np.abs(arr.astype(np.float64) - float(zero_point))


def sparsity(w, zero_point=0) -> float:
    """Fraction of entries of ``w`` equal to ``zero_point``."""
    arr = np.asarray(w)
    return float(np.count_nonzero(arr == zero_point) / arr.size) if arr.size else 0.0


def _result(arr, keep, method, target, zero_point):
    pruned = np.where(keep, arr, np.asarray(zero_point, dtype=arr.dtype)).astype(arr.dtype)
    return PruneResult(pruned, keep, method, target, sparsity(pruned, zero_point), zero_point)


def prune_magnitude(w, target_sparsity, *, zero_point=0) -> PruneResult:
    """Unstructured magnitude pruning over the whole matrix.

    The ``round(target_sparsity · size)`` entries of smallest magnitude are set to the
    zero point (entries already at the zero point are counted among them first).
    """
    arr = _weights(w)
    target = _fraction("target_sparsity", target_sparsity)
    count = int(round(target * arr.size))
    order = np.argsort(_magnitude(arr, zero_point).ravel(), kind="stable")
    keep = np.ones(arr.size, dtype=bool)
    keep[order[:count]] = False
    return _result(arr, keep.reshape(arr.shape), "magnitude", target, zero_point)


def prune_n_m(w, n=2, m=4, *, zero_point=0) -> PruneResult:
    """N:M pruning along K: in every group of ``m`` consecutive rows of a column keep
    the ``n`` entries of largest magnitude (2:4 by default).

    A K that is not a multiple of ``m`` ends in a short group, which keeps at most
    ``n`` entries as well.  The result packs into :class:`~npugen.golden.sparse_formats.NMMatrix`.
    """
    arr = _weights(w)
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    if n > m:
        raise ValueError(f"n must not exceed m, not n={n}, m={m}")
    K, N = arr.shape
    groups = math.ceil(K / m)
    mag = np.full((groups * m, N), -1.0)
    mag[:K] = _magnitude(arr, zero_point)
    blocks = mag.reshape(groups, m, N)
    # Stable descending order: sort by (-magnitude, position).
    order = np.argsort(-blocks, axis=1, kind="stable")
    keep = np.zeros_like(blocks, dtype=bool)
    np.put_along_axis(keep, order[:, :n, :], True, axis=1)
    keep = keep.reshape(groups * m, N)[:K]
    return _result(arr, keep, f"{n}:{m}", 1.0 - n / m, zero_point)


_STRUCTURES = {"filter": 1, "channel": 0}


def prune_structured(w, target_sparsity, *, structure="filter", norm="l1",
                     zero_point=0) -> PruneResult:
    """Remove whole filters (output channels = columns of ``w``, ``structure="filter"``)
    or whole input channels (rows, ``structure="channel"``) of smallest norm.

    ``round(target_sparsity · count)`` of them are zeroed; ``norm`` is ``"l1"`` or
    ``"l2"`` of ``w - zero_point``.
    """
    arr = _weights(w)
    target = _fraction("target_sparsity", target_sparsity)
    if structure not in _STRUCTURES:
        raise ValueError(f"structure must be 'filter' or 'channel', not {structure!r}")
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', not {norm!r}")
    axis = _STRUCTURES[structure]
    mag = _magnitude(arr, zero_point)
    score = (mag.sum(axis=1 - axis) if norm == "l1" else np.sqrt((mag ** 2).sum(axis=1 - axis)))
    count = int(round(target * arr.shape[axis]))
    removed = np.argsort(score, kind="stable")[:count]
    keep_line = np.ones(arr.shape[axis], dtype=bool)
    keep_line[removed] = False
    keep = np.broadcast_to(keep_line[None, :] if axis == 1 else keep_line[:, None], arr.shape)
    return _result(arr, keep.copy(), structure, target, zero_point)
