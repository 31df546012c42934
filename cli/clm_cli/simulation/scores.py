"""How customers answer surveys and rate products: skewed to the top, as real answers are.

Shared by `clm simulate` and the metrics benchmark's dataset, so both show the same NPS and CSAT.
"""

from __future__ import annotations

import random

# Promoters (9-10) outnumber detractors (0-6) a little, so NPS lands around +10.
_NPS_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 5, 8, 8, 6)
_CSAT_WEIGHTS = (1, 1, 2, 4, 4)
_RATING_WEIGHTS = (1, 1, 2, 5, 7)


def nps_score(rng: random.Random) -> int:
    """An answer to "how likely are you to recommend us", 0-10."""
    return rng.choices(range(11), weights=_NPS_WEIGHTS)[0]


def csat_score(rng: random.Random) -> int:
    """An answer to "how satisfied were you", 1-5."""
    return rng.choices(range(1, 6), weights=_CSAT_WEIGHTS)[0]


def review_rating(rng: random.Random) -> int:
    """A product review's stars, 1-5."""
    return rng.choices(range(1, 6), weights=_RATING_WEIGHTS)[0]
