"""The comparison's statistics: intervals over seeds, the max rate at a target attainment, ties.

* **Interval**: the 95% Student-t confidence interval of the mean over seeds, ``mean +- t(0.975, k-1) * s / sqrt(k)``
  (``s`` the sample standard deviation of the ``k`` per-seed values). Seeds change the requests drawn, their
  arrivals, SLO classes and the estimates' errors together, so the interval covers workload-draw variation, not only
  arrival noise. With one seed there is no interval (``lo = hi = None``). Bounds are clipped to the metric's range
  (every metric here is >= 0; attainments are <= 1).
* **Max rate at >= 90% attainment**: over the swept rates (ascending) and the mean attainment at each, the last rate
  before the first one that misses the target, moved towards that first miss by linear interpolation of the mean
  attainment between the two rates. A policy that meets the target at every swept rate gets the top rate as a lower
  bound (``bounded = False``); one that misses already at the lowest rate gets ``None``.
* **Tie**: two means are a tie when their 95% intervals overlap, or, without intervals, when they differ by less
  than 2% (relative) or 1 point (attainment). A tie is reported as a tie, never as a win.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from scipy.stats import t as student_t

INTERVAL = "95% Student-t interval of the mean over seeds: mean +- t(0.975, k-1) s / sqrt(k); none with one seed"
MAX_RATE_METHOD = (
    "last swept rate whose mean SLO attainment >= target before the first rate that misses it, linearly "
    "interpolated towards that rate; the top rate as a lower bound when no swept rate misses"
)
TIE_RULE = "95% intervals overlap, or (one seed) relative difference < 2% / attainment difference < 1 point"


def mean_ci(values: Sequence[float | None], upper: float | None = None) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "sd", "k"}`` over the non-missing values (module docstring); bounds clipped to
    ``[0, upper]``."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    k = len(xs)
    if k == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "k": 0}
    m = sum(xs) / k
    if k == 1:
        return {"mean": m, "lo": None, "hi": None, "sd": None, "k": 1}
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (k - 1))
    half = float(student_t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
    hi = m + half if upper is None else min(m + half, upper)
    return {"mean": m, "lo": max(m - half, 0.0), "hi": hi, "sd": sd, "k": k}


def max_rate_at(rates: Sequence[float], attainment: Sequence[float | None], target: float = 0.9) -> dict[str, Any]:
    """Max rate with mean attainment >= ``target`` (module docstring). ``rates`` ascending."""
    pairs = [(float(r), a) for r, a in zip(rates, attainment, strict=True)]
    if any(b[0] <= a[0] for a, b in itertools.pairwise(pairs)):
        raise ValueError("max_rate_at: rates must increase")
    for i, (r, a) in enumerate(pairs):
        if a is None or a < target:
            if i == 0:
                return {"max_rate": None, "bounded": True, "first_miss": r}
            r0, a0 = pairs[i - 1]
            if a is None:
                return {"max_rate": r0, "bounded": True, "first_miss": r}
            x = r0 + (r - r0) * (a0 - target) / max(a0 - a, 1e-12)
            return {"max_rate": x, "bounded": True, "first_miss": r}
    return {"max_rate": pairs[-1][0] if pairs else None, "bounded": False, "first_miss": None}


def tie(a: dict[str, Any], b: dict[str, Any], *, points: bool = False) -> bool:
    """Whether two :func:`mean_ci` results are a tie (module docstring); ``points``: attainment (0-1 scale)."""
    if a["mean"] is None or b["mean"] is None:
        return False
    if a["lo"] is not None and b["lo"] is not None:
        return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]
    if points:
        return abs(a["mean"] - b["mean"]) < 0.01
    scale = max(abs(a["mean"]), abs(b["mean"]), 1e-12)
    return abs(a["mean"] - b["mean"]) / scale < 0.02


def verdict(ours: dict[str, Any], base: dict[str, Any], *, higher_is_better: bool, points: bool = False) -> str:
    """``tie`` / ``better`` / ``worse`` for ours against the baseline."""
    if ours["mean"] is None or base["mean"] is None:
        return "no data"
    if tie(ours, base, points=points):
        return "tie"
    better = ours["mean"] > base["mean"] if higher_is_better else ours["mean"] < base["mean"]
    return "better" if better else "worse"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
