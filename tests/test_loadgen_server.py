"""The load generator and the EOS forcer against a real SGLang 0.5.23 server on CPU (tiny model, small KV pool).

Cap mode must deliver exactly each workload length through the paths where counting is easy to get wrong: chunked
prefill (``--chunked-prefill-size 64`` with longer prompts), the overlap scheduler (on by default) and a retraction
(a 600-token pool with ``--schedule-conservativeness 0.1`` and a burst of long outputs), which must also show up in
``preemptions`` from the server's metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eval.loadgen import run_load
from eval.server import ServerProcess, cpu_server_args
from eval.workloads import RequestSpec, load_workload

pytestmark = [pytest.mark.server, pytest.mark.slow]

TIMEOUTS = {"stall_timeout_s": 120.0, "request_timeout_s": 400.0, "health_interval_s": 10.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("loadgen") / "server.log"
    args = cpu_server_args(pool_tokens=600, chunked_prefill_size=64, extra=["--schedule-conservativeness", "0.1"])
    with ServerProcess(args, log_path=log) as srv:
        yield srv


def test_cap_mode_exact_lengths_through_a_retraction(server: ServerProcess) -> None:
    # short prompts, long outputs, an optimistic admission estimate: ~10 admitted at once outgrow the 600-token pool
    specs = [RequestSpec(f"burst-{i}", 0.0, 20, 200 - i % 3, 240) for i in range(16)]
    records, summary = run_load(server.base_url, specs, mode="cap", flush_cache=True, progress=False, **TIMEOUTS)
    assert summary["completed"] == 16, summary["errors"]
    assert [r.output_len for r in records] == [s.output_len for s in specs]
    assert summary["finish_reasons"] == {"stop": 16} and summary["length_mismatches"] == 0
    assert summary["preemptions"] >= 1 and summary["preemptions_source"].startswith("/metrics")
    retracted = [r for r in records if r.preemptions > 0]
    assert retracted and all(r.output_len == r.target_output_len for r in retracted)
    assert "KV cache pool is full. Retract requests." in server.log_text()


def test_cap_mode_exact_lengths_with_chunked_prefill(server: ServerProcess) -> None:
    specs = load_workload("azure-conv", num_requests=12, rate=4.0, scale=4.0, max_context=512, seed=2)
    assert sum(s.prompt_len > 64 for s in specs) >= 4  # these prefill in several 64-token chunks
    records, summary = run_load(server.base_url, specs, mode="cap", progress=False, **TIMEOUTS)
    assert summary["completed"] == 12, summary["errors"]
    assert summary["length_mismatches"] == 0 and summary["finish_reasons"] == {"stop": 12}
    for spec, rec in zip(specs, records, strict=True):
        assert rec.output_len == spec.output_len and rec.prompt_len == spec.prompt_len
        assert rec.max_new_tokens == spec.max_new_tokens > spec.output_len  # the scheduler saw only the cap


def test_exact_mode_and_text_prompts(server: ServerProcess) -> None:
    specs = load_workload("azure-code", num_requests=4, rate=4.0, scale=8.0, max_context=512)
    records, summary = run_load(server.base_url, specs, mode="exact", progress=False, **TIMEOUTS)
    assert summary["mode"] == "exact" and summary["finish_reasons"] == {"length": 4}
    assert [r.output_len for r in records] == [s.output_len for s in specs]
    text = load_workload("alpaca", num_requests=3, rate=4.0, scale=8.0, max_context=512, seed=3)
    records, summary = run_load(server.base_url, text, mode="cap", progress=False, **TIMEOUTS)
    assert summary["completed"] == 3 and summary["length_mismatches"] == 0
    # the served tokenizer is Mistral's: the server's prompt count is the spec's plus the BOS it adds
    assert all(0 <= r.prompt_len - s.prompt_len <= 1 for r, s in zip(records, text, strict=True))
