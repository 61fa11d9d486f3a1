"""Tolerances for comparing two floating-point computations of the same quantity.

Two paths that compute one value in another order (another kernel, batch shape, CPU vector width)
round differently. For a result built from reductions of ``terms`` addends, each rounding is at
most half an ulp of the running magnitude; the two orders' errors are independent, so their
difference grows like ``sqrt(terms)`` ulps of the largest magnitude involved (Higham, *Accuracy
and Stability of Numerical Algorithms*, §4.2, the probabilistic bound). The factor 4 is headroom
over that typical growth. A real error (a shifted position, a wrong mask, a dropped row) moves a
log-prob by tenths, orders of magnitude above this bound.
"""

from __future__ import annotations

import math

import torch


def rounding_bound(dtype: torch.dtype, terms: int, magnitude: float) -> float:
    """The largest difference rounding alone explains: 4·eps·sqrt(terms)·magnitude."""
    return 4.0 * torch.finfo(dtype).eps * math.sqrt(max(terms, 1)) * magnitude


def assert_equal_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor, *, terms: int, what: str = "") -> None:
    """``actual`` equals ``expected`` within the rounding of ``terms``-long reductions in their dtype,
    measured against the largest magnitude compared (small entries carry their neighbours' error)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    magnitude = float(expected.abs().max()) if expected.numel() else 0.0
    bound = rounding_bound(expected.dtype, terms, magnitude)
    worst = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert worst <= bound, f"{what}: max |difference| {worst:.3g} > rounding bound {bound:.3g} ({terms} terms, |x| <= {magnitude:.3g})"
