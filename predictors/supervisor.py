"""Keeps the predictor service alive beside the server: restart with exponential back-off (CacheOPT C1 service).

Why: the scheduler never waits for the service (its client falls back and resends), but a service that died and
stays dead turns every later request into a fallback for the rest of the server's life. The supervisor owns the
child process: when it exits without being asked to, the exit is logged, the supervisor waits the current back-off
(``min_backoff_s``, doubling to ``max_backoff_s``; back to the minimum after a run that lasted ``healthy_after_s``)
and starts it again on the same endpoint, logging the restart. Clients reconnect by themselves (a new instance id
in the pong makes them resend what was outstanding).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from predictors.service import spawn

log = logging.getLogger("predictors.supervisor")


class ServiceSupervisor:
    def __init__(self, model_dir: str, endpoint: str, args: Sequence[str] = (), log_path: str | None = None,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 30.0, healthy_after_s: float = 60.0,
                 report: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.model_dir, self.endpoint, self.args, self.log_path = model_dir, endpoint, tuple(args), log_path
        self.min_backoff_s, self.max_backoff_s, self.healthy_after_s = min_backoff_s, max_backoff_s, healthy_after_s
        self.report = report or log.warning
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.backoff_s = min_backoff_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> subprocess.Popen:
        with self._lock:
            self.proc = spawn(self.model_dir, self.endpoint, *self.args, log_path=self.log_path)
        self._thread = threading.Thread(target=self._watch, name="predictor-supervisor", daemon=True)
        self._thread.start()
        return self.proc

    def _watch(self) -> None:
        while not self._stop.is_set():
            proc, started = self.proc, time.monotonic()
            assert proc is not None
            while proc.poll() is None:
                if self._stop.wait(0.2):
                    return
            ran = time.monotonic() - started
            if self._stop.is_set():
                return
            if ran >= self.healthy_after_s:
                self.backoff_s = self.min_backoff_s
            self.report(f"predictor service pid={proc.pid} exited with code {proc.returncode} after {ran:.1f}s; "
                        f"restarting in {self.backoff_s:.1f}s")  # fmt: skip
            if self._stop.wait(self.backoff_s):
                return
            self.backoff_s = min(self.max_backoff_s, self.backoff_s * 2)
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self.proc = spawn(self.model_dir, self.endpoint, *self.args, log_path=self.log_path)
                except OSError as e:  # cannot even start: keep trying at the back-off
                    self.report(f"predictor service restart failed: {e}")
                    continue
                self.restarts += 1
            self.report(f"predictor service restarted (restart #{self.restarts}): pid={self.proc.pid} "
                        f"at {self.endpoint}")  # fmt: skip

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop supervising and end the service (SIGTERM, then SIGKILL after ``timeout_s``)."""
        self._stop.set()
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
