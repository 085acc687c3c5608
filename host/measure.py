"""Which measured iteration periods are latency samples (A1's online refit, both hosts).

A host measures the period between two forward launches and attributes it to the earlier batch's shape. A period
that contains idle time (the scheduler slept waiting for requests) is not an iteration time: it is dropped when it
exceeds ``idle_factor`` times the model's prediction and an absolute floor (the floor keeps tiny predicted times
from rejecting every real sample while the model is still far off).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IterationFilter:
    idle_factor: float = 5.0
    floor_s: float = 0.05

    def accept(self, seconds: float, predicted_s: float) -> bool:
        return 0.0 < seconds <= max(self.idle_factor * predicted_s, self.floor_s)
