"""Shared fixtures. Real-server tests start a real SGLang server (stock launcher, plugin installed), wait for
health, and stop it by PID in every outcome (eval.server.ServerProcess)."""

from __future__ import annotations

import os

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
