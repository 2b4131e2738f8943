"""The Pareto front of (speed, error) points: higher speed and lower error are better.

Example:
    >>> pareto_mask([1.0, 2.0, 1.5, 2.0], [0.0, 0.1, 0.2, 0.05]).tolist()
    [True, False, False, True]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_mask"]


def pareto_mask(speed: Sequence[float], error: Sequence[float]) -> np.ndarray:
    """True for the points no other point dominates (speed at least as high AND error at least as low, one strictly)."""
    s, e = np.asarray(speed, float), np.asarray(error, float)
    if s.size == 0:
        return np.zeros(0, bool)
    ge = (s[None, :] >= s[:, None]) & (e[None, :] <= e[:, None])  # [i, j]: j at least as good as i on both
    gt = (s[None, :] > s[:, None]) | (e[None, :] < e[:, None])
    return ~(ge & gt).any(axis=1)
