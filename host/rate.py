"""The arrival-rate estimate both hosts hand policies (``SchedulerView.arrival_rate``).

C1 adapts its confidence to the arrival rate (``conf = alpha / (1 + beta * rate)``), and the pool-level admission
adapts its overflow target the same way, so the estimate must be the same in the simulator and the server: arrivals
in the last ``window_s`` seconds divided by the time they span — the window, or, early on, the time since the first
arrival (at least one second, so a burst at start-up does not read as an infinite rate).
"""

from __future__ import annotations

from collections import deque

DEFAULT_WINDOW_S = 60.0


class ArrivalRate:
    __slots__ = ("_first", "_times", "window_s")

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if not window_s > 0:
            raise ValueError(f"rate window must be > 0 s, got {window_s}")
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._first: float | None = None

    def observe(self, t: float) -> None:
        """One arrival at host time ``t`` (non-decreasing across calls, as a host clock is)."""
        if self._first is None:
            self._first = t
        self._times.append(t)

    def rate(self, now: float) -> float:
        """Requests per second over the window ending at ``now``."""
        times = self._times
        cutoff = now - self.window_s
        while times and times[0] < cutoff:
            times.popleft()
        if not times or self._first is None:
            return 0.0
        span = min(self.window_s, max(now - self._first, 1.0))
        return len(times) / span
