"""Cohort sampling (the sandwich rule), in one place.

Each iteration trains a cohort of sub-networks on one batch: the widest width, the narrowest, and
NUM_RANDOM_WIDTHS widths drawn uniformly from the width range. MutualNet gives every member but the
widest an input scale drawn from RESOLUTION_SCALES; US-Net runs all at full resolution; "single"
is the widest member alone. The random stream is seeded by (seed, iteration), so every
data-parallel rank draws the same cohort and a resumed run repeats the same sequence.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class CohortMember:
    width: float
    resolution_scale: float = 1.0

    @property
    def label(self) -> str:
        return f"w{self.width:.3f}_s{self.resolution_scale:.2f}"


def sample_cohort(
    method: str,
    width_range: Tuple[float, float],
    num_random_widths: int,
    resolution_scales: Sequence[float],
    seed: int,
    iteration: int,
) -> List[CohortMember]:
    """The cohort of one iteration, widest member first."""
    narrowest, widest = width_range
    if method == "single":
        return [CohortMember(widest, 1.0)]
    rng = np.random.default_rng([seed, iteration])
    random_widths = rng.uniform(narrowest, widest, size=num_random_widths)
    widths = [widest] + sorted((float(w) for w in random_widths), reverse=True) + [narrowest]
    if method == "usnet":
        return [CohortMember(w, 1.0) for w in widths]
    if method == "mutualnet":
        scales = rng.choice(np.asarray(resolution_scales, dtype=float), size=len(widths) - 1)
        return [CohortMember(widest, 1.0)] + [CohortMember(w, float(s)) for w, s in zip(widths[1:], scales)]
    raise ValueError(f"unknown training method {method!r}; accepted: mutualnet, usnet, single")
