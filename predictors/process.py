"""Starting the predictor service as a child process and waiting for it (the plugin's and the tests' way to get one
beside a server; the supervisor restarts it through :func:`spawn`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from predictors.protocol import REPLY_TYPES, VERSION, pack, unpack


def spawn(model_dir: str, endpoint: str, *extra: str, log_path: str | None = None) -> subprocess.Popen:
    """Start the service as a child process (the plugin's way to get one beside the server)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    cmd = [sys.executable, "-m", "predictors.service", "--model", model_dir, "--endpoint", endpoint, *extra]
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(endpoint: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """Ping until a pong comes back; the pong (service identity, counters) or None after ``timeout_s``."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end:
            s.send(pack({"v": VERSION, "type": "ping", "t": time.monotonic()}), zmq.NOBLOCK)
            if s.poll(100):
                msg = unpack(s.recv(), types=REPLY_TYPES)
                if msg["type"] == "pong":
                    return msg
        return None
    finally:
        s.close(0)
