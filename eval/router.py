"""Start and stop SGLang's router (the ``smg`` package, successor of ``sglang-router``: ``python -m
smg.launch_router``) in front of several extension servers (issue 14), for the router test and the multi-server
recipe in the README.

Why SGLang's router and not our own: it is what SGLang users put in front of several servers (cache-aware routing:
:mod:`eval.sim.routing` models its rule for the simulator). The extension needs nothing from it: each server runs
its own scheduler, adapter and policy, and per-request SLOs travel in the request body, which the router forwards
unchanged: smg 1.13 keeps ``sampling_params.custom_params`` (per-request SLOs, the EOS forcer's target) and
``custom_logit_processor``; ``sglang-router`` 0.3.2 dropped ``custom_params`` (an invalid SLO came back 200 through
it, 400 from the server). The load generator (``eval.loadgen``) points at the router's URL like at a server.

Stopped by PID in every outcome, like :class:`eval.server.ServerProcess`: own process group, SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from eval.server import ServerError, free_port, log_tail, stop_group

POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


def router_args(worker_urls: Sequence[str], policy: str = "cache_aware", extra: Sequence[str] = ()) -> list[str]:
    """The router's flags: the workers, the routing policy, and a Prometheus port of its own (its default 29000
    would collide between routers)."""
    if policy not in POLICIES:
        raise ValueError(f"router policy {policy!r}; valid: {', '.join(POLICIES)}")
    if not worker_urls:
        raise ValueError("the router needs at least one worker URL")
    return ["--worker-urls", *worker_urls, "--policy", policy, "--prometheus-port", str(free_port()),
            "--log-level", "info", *extra]  # fmt: skip


class RouterProcess:
    """``with RouterProcess(router_args([a.base_url, b.base_url])) as r: run_load(r.base_url, specs)``."""

    def __init__(self, args: Sequence[str], *, port: int | None = None, log_path: str | Path | None = None,
                 startup_timeout_s: float = 120.0) -> None:  # fmt: skip
        self.args = list(args)
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/sglang_ext_router_{self.port}.log")
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RouterProcess:
        cmd = [sys.executable, "-m", "smg.launch_router", *self.args, "--host", "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        end = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < end:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"router exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                # healthy is not enough: until the router has read its workers' model info it answers 404 "no
                # worker available for model 'unknown'"; ready = every worker listed healthy on GET /workers
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200 and self._workers_ready():
                    return
            time.sleep(0.5)
        raise ServerError(f"router not healthy after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def _workers_ready(self) -> bool:
        want = self.args[self.args.index("--worker-urls") + 1 :] if "--worker-urls" in self.args else []
        want = [w for w in want[: next((i for i, a in enumerate(want) if a.startswith("--")), len(want))]]
        r = httpx.get(self.base_url + "/workers", timeout=2)
        if r.status_code != 200:
            return False
        doc = r.json()
        workers = doc.get("workers", doc) if isinstance(doc, dict) else doc
        healthy = [w for w in workers if isinstance(w, dict) and w.get("is_healthy", True)]
        return len(healthy) >= len(want)

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_group(proc, grace_s)

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
