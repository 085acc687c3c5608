"""The extension's metrics on a real server's ``/metrics`` (SGLang's endpoint, served by its HTTP process from the
scheduler's multiprocess files), read with prometheus_client's parser, never from the log.

One server: cacheopt with the predictor service (the shipped model, text prompts), ``--enable-metrics``, and
SGLang's own retraction test switch (``SGLANG_TEST_RETRACT``: it retracts a running request every N decode steps)
so preemptions happen under any timing. The extension's counts are checked against the requests sent and against
SGLang's own counters on the same endpoint (retractions, finished requests)."""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eval.server import ROOT, ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

MODEL = ROOT / "predictors" / "models" / "alpaca-mistral"
PROMPTS = ROOT / "data" / "prompts" / "alpacaeval_Mistral-7B-Instruct-v0.2.json"
N, OUT = 24, 40
KV_BYTES_PER_TOKEN = 2 * 4 * 16 * 2 * 2  # tiny LLaMA: K and V x 4 heads x 16 dims x bf16 x 2 layers


def scrape(base_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted label items: value} for every sample on /metrics."""
    text = httpx.get(base_url + "/metrics", timeout=30).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def total(m: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in m.get(name, {}).items() if all((k, val) in labels for k, val in match.items()))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("metrics") / "server.log"
    extra = ["--ext-policy", "cacheopt", "--ext-predictor-mode", "service", "--ext-predictor-model-path", str(MODEL)]
    env = {"SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "20"}
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=extra), log_path=log, env=env) as srv:
        yield srv


def test_extension_metrics_on_sglangs_endpoint(server: ServerProcess) -> None:
    prompts = [row["instruction"] for row in json.loads(PROMPTS.read_text())[:N]]
    before = scrape(server.base_url)

    def one(text: str) -> int:
        body = {"text": text, "sampling_params": {"max_new_tokens": OUT, "min_new_tokens": OUT,
                "custom_params": {"ttft_slo_ms": 8000.0, "tbt_slo_ms": 300.0}}}  # fmt: skip
        r = httpx.post(server.base_url + "/generate", json=body, timeout=300)
        r.raise_for_status()
        return int(r.json()["meta_info"]["completion_tokens"])

    with cf.ThreadPoolExecutor(8) as ex:
        assert list(ex.map(one, prompts)) == [OUT] * N
    after = scrape(server.base_url)

    def delta(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    # every series is the scheduler's, labelled with the policy and the DP worker
    ext = {k: v for k, v in after.items() if k.startswith("sglang_ext:")}
    assert len(ext) >= 15
    for series in ext.values():
        for labels in series:
            assert ("policy", "cacheopt") in labels and ("dp_rank", "0") in labels
    # SGLang's own retraction counter and ours count the same preemptions (C5 chose a mode for each)
    retracted = delta("sglang:num_retracted_requests_total")
    preempted = delta("sglang_ext:preemptions_total")
    assert retracted >= 1 and preempted == retracted
    tokens = delta("sglang_ext:preempted_tokens_total")
    sglang_tokens = delta("sglang:num_retracted_input_tokens_total") + delta("sglang:num_retracted_output_tokens_total")
    assert 0 < tokens <= sglang_tokens  # own KV only: a shared prefix stays in the radix cache
    assert delta("sglang_ext:preempted_bytes_total") == tokens * KV_BYTES_PER_TOKEN
    assert delta("sglang_ext:preemption_seconds_total") > 0
    assert delta("sglang_ext:swap_fallbacks_total") == delta("sglang_ext:preemptions_total", mode="swap")
    # admissions: each request once, and once more after each preemption
    own, reuse = delta("sglang_ext:admissions_total", kind="own"), delta("sglang_ext:admissions_total", kind="reuse")
    assert own + reuse == N + preempted
    assert delta("sglang_ext:reserved_tokens_total") >= own * OUT  # at least the output each own admission needs
    assert delta("sglang_ext:topup_tokens_total") >= delta("sglang_ext:topups_total")
    # the predictor service was asked about every request once; answers came with a latency
    assert delta("sglang_ext:predictor_requests_total") == N
    answered = delta("sglang_ext:predictor_latency_seconds_count")
    assert 1 <= answered <= N and delta("sglang_ext:predictor_fallbacks_total") <= N
    # coverage: every finished request is classified against the bound it was admitted with
    finished = sum(delta("sglang_ext:finished_requests_total", bound=b) for b in ("covered", "exceeded", "none"))
    assert finished == N == delta("sglang:e2e_request_latency_seconds_count")
    # per-iteration histograms: cacheopt sets a budget in every plan it makes
    plans = delta("sglang_ext:policy_decision_seconds_count")
    assert plans >= 1 and delta("sglang_ext:chunk_budget_tokens_count") == plans
    assert delta("sglang_ext:chunk_budget_tokens_bucket", le="+Inf") == plans
    assert total(after, "sglang_ext:reserve_tokens") >= 0
