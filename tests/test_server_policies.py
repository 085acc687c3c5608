"""Every policy runs inside the real SGLang server from the same code the simulator runs: a short burst with
per-request SLOs completes at its exact lengths, and the adapter reports planning in the scheduler process."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
from pathlib import Path

import httpx
import pytest

from eval.server import ServerProcess, cpu_server_args

pytestmark = pytest.mark.server


@pytest.mark.parametrize("policy", ["edf", "vllm", "sarathi", "cacheopt", "accelgen", "cacheopt+accelgen"])
def test_policy_serves_a_burst(policy: str, tmp_path: Path) -> None:
    extra = ["--ext-policy", policy, "--ext-predictor-mode", "online", "--ext-default-tbt-slo-ms", "200"]
    args = cpu_server_args(pool_tokens=1024, extra=extra)
    with ServerProcess(args, log_path=tmp_path / "server.log", env={"SGLANG_EXT_LOG_EVERY_S": "0.5"}) as srv:

        def one(i: int) -> int:
            slo = {"ttft_slo_ms": 5000.0, "tbt_slo_ms": 100.0 if i % 2 else 300.0}
            body = {"input_ids": list(range(200 + i, 200 + i + 40 + 13 * i)),
                    "sampling_params": {"max_new_tokens": 48, "min_new_tokens": 48, "custom_params": slo}}  # fmt: skip
            r = httpx.post(srv.base_url + "/generate", json=body, timeout=300)
            r.raise_for_status()
            return int(r.json()["meta_info"]["completion_tokens"])

        with cf.ThreadPoolExecutor(12) as ex:
            assert list(ex.map(one, range(12))) == [48] * 12
        log = srv.log_text()
    assert re.search(rf"adapter active in scheduler pid=\d+ policy={re.escape(policy)}", log)
    if policy in ("vllm", "sarathi", "accelgen", "cacheopt+accelgen"):
        assert "'enable_mixed_chunk': True" in log  # the plugin turned on what these policies' plans assume
    counters = [json.loads(c.replace("'", '"')) for c in re.findall(r"sglang_ext counters: (\{.*\})", log)]
    assert counters and counters[-1]["plans"] > 0 and counters[-1]["admitted"] > 0
