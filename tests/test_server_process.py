"""eval.server.ServerProcess on SGLang's utilities: a server that exits during start-up is reported with the reason
and its log tail, and nothing is left running. (Healthy start, stop and drain are exercised by every other
``test_server_*`` module.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.server import ServerError, ServerProcess

pytestmark = pytest.mark.server


def test_server_that_exits_during_startup_is_reported_with_its_log(tmp_path: Path) -> None:
    srv = ServerProcess(["--model-path", "/nonexistent/model", "--device", "cpu"], log_path=tmp_path / "server.log")
    with pytest.raises(ServerError, match="exited during start-up") as exc:
        srv.start()
    assert "/nonexistent/model" in str(exc.value)  # the log tail says why
    assert srv.pid is None and not srv.alive()
    assert srv.drain() == (None, [])  # nothing left to drain
