"""Start and stop a real SGLang server (stock ``python -m sglang.launch_server``), for the demo, the live
experiments and the integration tests.

SGLang's own utilities do the generic parts: ``get_free_port`` (``sglang.srt.utils.network``) picks the port,
``wait_for_http_ready`` (``sglang.utils``) waits for ``/health`` and notices a server that exited, and
``kill_process_tree`` (``sglang.srt.utils``) ends a server that did not exit in its grace period. They are imported
on first use (importing SGLang takes ~7 s and ~0.9 GB once per client process; constants such as
:data:`TINY_MODEL` stay cheap). The launch itself stays a ``Popen`` here: SGLang's ``launch_server_cmd`` splits a
command string on spaces and inherits the caller's stdout, and servers here need a log file, their own process group
and an environment of their own.

Stopped by PID in every outcome: the server runs in its own process group (its scheduler and detokenizer are
children), :meth:`ServerProcess.stop` sends SIGTERM to the group, then SGLang's ``kill_process_tree`` and a SIGKILL
to the group after a grace period; an ``atexit`` hook covers exits that skip ``__exit__``. :meth:`ServerProcess.drain`
is the operator's SIGTERM (to the launcher only: SGLang finishes what is in flight, then exits).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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
    """A free TCP port, from SGLang's ``get_free_port`` (binds on every configured address family)."""
    from sglang.srt.utils.network import get_free_port

    return int(get_free_port())


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
        from sglang.utils import wait_for_http_ready

        left = max(self.startup_timeout_s - (time.monotonic() - t0), 1.0)
        try:
            wait_for_http_ready(self.base_url + "/health", timeout=int(left) + 1, process=self.proc)
        except RuntimeError as e:  # the process exited
            raise ServerError(f"server exited during start-up ({e}):\n{self.log_tail()}") from None
        except TimeoutError:
            raise ServerError(f"server not healthy after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_group(proc, grace_s)

    def drain(self, timeout_s: float = 120.0, children_grace_s: float = 15.0) -> tuple[int | None, list[int]]:
        """SIGTERM to the launcher only, as an orchestrator does: SGLang finishes what is in flight, then exits and
        ends its scheduler and detokenizer. Returns (the launcher's exit code, or ``None`` if it did not exit within
        ``timeout_s``; the pids of its process group still alive ``children_grace_s`` after it exited). Whatever
        is left is then stopped."""
        proc = self.proc
        if proc is None:
            return None, []
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        left = _group_members(proc.pid)
        deadline = time.monotonic() + children_grace_s
        while code is not None and left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _group_members(proc.pid)
        self.stop()
        return code, left

    def log_tail(self, n: int = 40) -> str:
        return log_tail(self.log_path, n)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """Stop a launched process and its process group (``start_new_session``): SIGTERM to the group, SIGKILL to the
    tree after ``grace_s``, then SIGKILL to stragglers of the group (SGLang's scheduler and detokenizer, a router's
    workers threads)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def log_tail(path: Path, n: int) -> str:
    """The last ``n`` lines of a process log (for one-line-plus-context error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _kill_tree(pid: int) -> None:
    """SGLang's ``kill_process_tree`` (SIGKILL to the process and its children, waits for them to be reaped)."""
    from sglang.srt.utils import kill_process_tree

    with contextlib.suppress(RuntimeError, ProcessLookupError):
        kill_process_tree(pid, include_parent=True, wait_timeout=30)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out
