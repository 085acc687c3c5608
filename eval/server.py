"""Start and stop a real SGLang server (stock ``python -m sglang.launch_server``), for the demo, the live
experiments and the integration tests.

Stopped by PID in every outcome: the server runs in its own process group (its scheduler and detokenizer are
children), :meth:`ServerProcess.stop` sends SIGTERM to the group (SGLang drains and exits), then SIGKILL after a
grace period; an ``atexit`` hook covers exits that skip ``__exit__``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "models" / "tiny-llama"
CPU_ENV = {"SGLANG_USE_CPU_ENGINE": "1"}


def cpu_server_args(
    model_path: str | Path = TINY_MODEL,
    *,
    pool_tokens: int = 4096,
    chunked_prefill_size: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The flags a CPU-only machine needs (see the notes): torch-native attention, no CUDA graph, small pool,
    sleep on idle (else the idle scheduler spins a core), dummy weights, metrics on (for retraction counts)."""
    args = [
        "--model-path", str(model_path), "--load-format", "dummy", "--device", "cpu",
        "--attention-backend", "torch_native", "--disable-cuda-graph", "--sleep-on-idle",
        "--max-total-tokens", str(pool_tokens), "--mem-fraction-static", "0.05",
        "--enable-metrics", "--enable-custom-logit-processor", "--log-level", "info",
    ]  # fmt: skip
    if chunked_prefill_size is not None:
        args += ["--chunked-prefill-size", str(chunked_prefill_size)]
    return [*args, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """``with ServerProcess(cpu_server_args()) as srv: httpx.get(srv.base_url + "/health")``."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        port: int | None = None,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 240.0,
    ) -> None:
        self.args = list(args)
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/sglang_ext_server_{self.port}.log")
        self.env = {**os.environ, **CPU_ENV, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "sglang.launch_server",
            *self.args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        atexit.register(self.stop)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        assert self.proc is not None
        while time.monotonic() - t0 < self.startup_timeout_s:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with code {self.proc.returncode} during start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)
        raise ServerError(f"server not healthy after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers (scheduler/detokenizer) of the group

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
