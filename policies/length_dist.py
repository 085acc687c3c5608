"""A request's predictive output-length distribution, as a few monotone quantiles (C1).

Why a distribution and not one bound: CacheOPT's paper rule pads every request's prediction separately at one
confidence, and the paddings add up although few requests overrun at once. Admission on the *pool's* remaining
demand (the sum over requests) needs each request's spread, not only its bound; a handful of quantiles from the
predictor (0.5 ... 0.99) carry it. Both hosts hand policies the same object: the predictor service (quantile
regression + online conformal calibration) in the server, a simulated estimator of the same quality in the simulator.

Representation: ``log(length)`` is piecewise linear in the standard-normal score ``z = Phi^-1(q)`` between the knots
(exactly log-normal when two knots are given), extended linearly beyond the outer knots with the slope of the nearest
segment. This keeps every operation closed-form and cheap, and makes extrapolation to q = 0.999 sane.

Engine-free (no sglang, no torch): policies and predictors import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_N = NormalDist()
_Z_CLIP = 6.0  # |z| beyond this is treated as this (q within ~1e-9 of 0 or 1)


def z_of(q: float) -> float:
    """Standard-normal score of probability ``q`` (clipped to +-6)."""
    if q <= 0.0:
        return -_Z_CLIP
    if q >= 1.0:
        return _Z_CLIP
    return max(-_Z_CLIP, min(_Z_CLIP, _N.inv_cdf(q)))


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """Total output length (tokens, >= 1) as quantiles: ``values[i]`` is the ``levels[i]``-quantile.

    ``levels`` strictly increase inside (0, 1); ``values`` never decrease (a monotone fix is the producer's job and
    is checked here). Lengths are totals since the request started, not remainders; use :meth:`conditional_quantile`
    and :meth:`conditional_survival` for a request that already produced tokens.
    """

    levels: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.values) or not self.levels:
            raise ValueError("LengthDistribution: levels and values must be non-empty and of equal length")
        if any(not 0.0 < q < 1.0 for q in self.levels) or any(
            b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)
        ):
            raise ValueError(f"LengthDistribution: levels must increase strictly inside (0, 1), got {self.levels}")
        if any(not (math.isfinite(v) and v >= 1.0) for v in self.values) or any(
            b < a for a, b in zip(self.values, self.values[1:], strict=False)
        ):
            raise ValueError(f"LengthDistribution: values must be finite, >= 1 and non-decreasing, got {self.values}")

    # --- knots in (z, log length) space ------------------------------------------------------------------------
    @property
    def _knots(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(z_of(q) for q in self.levels), tuple(math.log(v) for v in self.values)

    @staticmethod
    def _slope(zs: tuple[float, ...], ls: tuple[float, ...], i: int) -> float:
        dz = zs[i + 1] - zs[i]
        return (ls[i + 1] - ls[i]) / dz if dz > 0 else 0.0

    def _log_at_z(self, z: float) -> float:
        zs, ls = self._knots
        n = len(zs)
        if n == 1:
            return ls[0]
        if z <= zs[0]:
            return ls[0] + (z - zs[0]) * self._slope(zs, ls, 0)
        if z >= zs[-1]:
            return ls[-1] + (z - zs[-1]) * self._slope(zs, ls, n - 2)
        for i in range(n - 1):
            if z <= zs[i + 1]:
                return ls[i] + (z - zs[i]) * self._slope(zs, ls, i)
        return ls[-1]  # pragma: no cover - unreachable

    def _z_at_log(self, logx: float) -> float:
        zs, ls = self._knots
        n = len(zs)
        if n == 1:
            return -_Z_CLIP if logx < ls[0] else _Z_CLIP
        if logx <= ls[0]:
            s = self._slope(zs, ls, 0)
            return zs[0] + (logx - ls[0]) / s if s > 0 else -_Z_CLIP
        if logx >= ls[-1]:
            s = self._slope(zs, ls, n - 2)
            return zs[-1] + (logx - ls[-1]) / s if s > 0 else _Z_CLIP
        for i in range(n - 1):
            if logx <= ls[i + 1]:
                s = self._slope(zs, ls, i)
                return zs[i] + (logx - ls[i]) / s if s > 0 else zs[i + 1]
        return zs[-1]  # pragma: no cover - unreachable

    # --- queries -----------------------------------------------------------------------------------------------
    def quantile(self, q: float) -> float:
        """The ``q``-quantile of the total length (>= 1)."""
        return max(1.0, math.exp(self._log_at_z(z_of(q))))

    def cdf(self, x: float) -> float:
        """P(length <= x)."""
        if x < 1.0:
            return 0.0
        return _N.cdf(max(-_Z_CLIP, min(_Z_CLIP, self._z_at_log(math.log(x)))))

    def survival(self, x: float) -> float:
        """P(length > x)."""
        return 1.0 - self.cdf(x)

    def conditional_survival(self, produced: int, extra: float) -> float:
        """P(length > produced + extra | length > produced): will a request that produced ``produced`` tokens
        still be running ``extra`` tokens from now?"""
        s0 = self.survival(produced)
        if s0 <= 1e-12:  # beyond the modelled tail: assume it goes on like the tail's last point
            return 1.0 if extra <= 0 else 0.5
        return min(1.0, self.survival(produced + extra) / s0)

    def conditional_quantile(self, q: float, produced: int) -> float:
        """The ``q``-quantile of the total length given that ``produced`` tokens were already produced (>= produced
        + 1: an unfinished request produces at least one more)."""
        f0 = self.cdf(produced)
        if f0 >= 1.0 - 1e-12:
            return produced + max(1.0, self.quantile(q) - self.quantile(0.5))
        qq = f0 + q * (1.0 - f0)
        return max(float(produced + 1), self.quantile(qq))

    def mean(self, points: int = 64) -> float:
        """Mean length by the midpoint rule over ``points`` quantile levels (exact enough for admission)."""
        return sum(self.quantile((i + 0.5) / points) for i in range(points)) / points

    def scaled(self, factor: float) -> LengthDistribution:
        """Every quantile times ``factor`` (> 0)."""
        return LengthDistribution(self.levels, tuple(max(1.0, v * factor) for v in self.values))

    @classmethod
    def lognormal(
        cls, median: float, sigma: float, levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    ) -> LengthDistribution:
        """A log-normal length with ``median`` and log-standard-deviation ``sigma`` at ``levels``."""
        m = max(1.0, float(median))
        return cls(levels, tuple(max(1.0, m * math.exp(sigma * z_of(q))) for q in levels))
