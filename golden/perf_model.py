"""Analytic cycle model of the GEMM core, exact for uninterrupted streams.

The model replays the core's scheduling rules (see ``npugen.hw.gemm_core``):

* a tile covers ``rows · pack`` of K (pack = 1 int8, 2 int4, 8 binary), ``2 · rows``
  for an int8 job with 2:4 compressed weights (same schedule, half the tiles);
* the first weight tile takes ``rows`` cycles to shift in before any row issues;
* a tile issues one activation row per cycle; the next tile may start
  ``max(m_rows, 2·rows + 1)`` cycles after the previous one started (its weights
  shift in from ``rows + 1`` cycles after the previous swap, for ``rows`` cycles);
* the last row's result reaches the ``result`` port ``rows + cols + 18`` cycles later
  (array with its input register, accumulator, requantizer, result FIFO and the stream
  hand-over).

It assumes the sources never pause, the sink never back-pressures, and the result
FIFO holds the rows in flight (``out_fifo_depth > rows + cols + 18``), as in every
preset.  Tests compare it with the simulated RTL cycle for cycle.
"""

from __future__ import annotations

import math

from .precision import SPARSE_K_FACTOR, check_sparsity, k_per_rows

__all__ = ["tile_rows", "gemm_cycles", "result_latency"]


def tile_rows(config, m: int, k: int, n: int, mode: str = "int8",
              sparsity: str | None = None) -> list[int]:
    """``m_rows`` of every tile operation of a GEMM, in issue order."""
    if mode not in config.modes:
        raise ValueError(f"mode must be one of the built modes {list(config.modes)}, "
                         f"not {mode!r}")
    factor = 1
    if check_sparsity(sparsity, mode):
        if not config.sparse_2_4:
            raise ValueError(f"sparsity {sparsity!r} needs a configuration with sparse_2_4")
        factor = SPARSE_K_FACTOR
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    k_tiles = math.ceil(k / (k_per_rows(config.rows, mode) * factor))
    n_tiles = math.ceil(n / config.cols)
    rows = []
    for m0 in range(0, m, config.acc_depth):
        rows.extend([min(config.acc_depth, m - m0)] * (k_tiles * n_tiles))
    return rows


def result_latency(config) -> int:
    """Cycles from the last activation row issued to its result row taken."""
    return config.rows + config.cols + 18


def gemm_cycles(config, m: int, k: int, n: int, mode: str = "int8",
                sparsity: str | None = None) -> int:
    """Cycles from the first input offered to the last result row taken."""
    rows = tile_rows(config, m, k, n, mode, sparsity)
    period_floor = 2 * config.rows + 1
    start = 1 + config.rows          # stream hand-over + first weight tile
    for m_rows in rows[:-1]:
        start += max(m_rows, period_floor)
    return start + rows[-1] - 1 + result_latency(config)
