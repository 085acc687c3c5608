"""An in-process output-length bound learned online from finished requests (C1 without a text model).

Why: trace workloads (Azure, Mooncake) and clients that send token ids carry no prompt text, so a text model has
nothing to read. The honest estimate is then the distribution of lengths this server has actually produced: the
bound at confidence ``q`` is the empirical ``q``-quantile of the last ``window`` finished requests' output lengths
(the "fixed quantile of the training lengths" constant bound of the predictor issue, refitted continuously), the
point estimate its median. Requests are never told their own length. Until ``min_samples`` requests have
finished, the bound is ``max_new_tokens`` (the fallback). Confidence follows the paper's arrival-rate rule
(:func:`predictors.bounds.adapt_confidence`). Selected with ``--ext-predictor-mode online``.

The estimate also carries the whole empirical distribution (quantiles at :data:`LEVELS` of the finished lengths, a
:class:`~policies.length_dist.LengthDistribution`): the pool-level admission (CacheOPT's ``pool`` rule) combines
those over requests and conditions them on each request's progress itself.
"""

from __future__ import annotations

import bisect
from collections import deque

from policies.length_dist import LengthDistribution
from policies.views import LengthEstimate
from predictors.bounds import adapt_confidence

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


class OnlineLengthBound:
    def __init__(self, alpha: float, beta: float, window: int = 512, min_samples: int = 16) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be >= 1")
        self.alpha = alpha
        self.beta = beta
        self.min_samples = min_samples
        self._recent: deque[int] = deque(maxlen=window)
        self._sorted: list[int] = []
        self.fallbacks = 0
        self._dist: LengthDistribution | None = None  # cached until the next finished request

    def observe(self, output_len: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(output_len)
        bisect.insort(self._sorted, output_len)
        self._dist = None

    def distribution(self) -> LengthDistribution | None:
        """Quantiles of the recent finished lengths (None before ``min_samples``)."""
        if len(self._sorted) < self.min_samples:
            return None
        if self._dist is None:
            values = tuple(float(max(self._quantile(q), 1)) for q in LEVELS)
            self._dist = LengthDistribution(LEVELS, values)
        return self._dist

    def _quantile(self, q: float) -> int:
        i = min(len(self._sorted) - 1, max(0, int(q * len(self._sorted))))
        return self._sorted[i]

    def estimate(self, max_new_tokens: int, output_len: int, arrival_rate: float) -> LengthEstimate:
        """Bound on the total output length of a request that has produced ``output_len`` tokens so far: the
        quantile of finished lengths that exceed what it already has (a request past most of the distribution
        gets the tail's quantile, not a bound below its own progress)."""
        conf = adapt_confidence(self.alpha, self.beta, arrival_rate)
        if len(self._sorted) < self.min_samples:
            self.fallbacks += 1
            return LengthEstimate(point=max_new_tokens, bound=max_new_tokens, confidence=conf, fallback=True)
        lo = bisect.bisect_right(self._sorted, output_len)
        tail = self._sorted[lo:]
        cap = max(max_new_tokens, 1)
        dist = self.distribution()
        if not tail:  # longer than anything seen: only the cap bounds it
            return LengthEstimate(point=cap, bound=cap, confidence=conf, dist=dist)
        point = min(tail[len(tail) // 2], cap)
        bound = min(max(tail[min(len(tail) - 1, int(conf * len(tail)))], point), cap)
        return LengthEstimate(point=point, bound=bound, confidence=conf, dist=dist)
