"""SGLang's own tools against stock SGLang and the extension, two real CPU servers for the module: ``--ext-policy
none`` (stock) and ``cacheopt`` with the predictor service (the shipped model), ``--enable-metrics`` and SGLang's
retraction test switch (``SGLANG_TEST_RETRACT``: it retracts a running request every N decode steps, so preemptions
happen under any timing).

* ``python -m sglang.bench_serving`` (the README's recipe, reduced to a handful of requests) replays a slice of the
  Azure 2023 conversation trace written by ``scripts/bench_serving_data.py``, with per-request SLOs through
  ``--extra-request-body``, against both: every request completes at its trace length; the stock server exports no
  extension series.
* The extension's metrics on SGLang's ``/metrics`` (served by its HTTP process from the scheduler's multiprocess
  files), read with prometheus_client's parser, never from the log, and checked against the requests sent and
  against SGLang's own counters on the same endpoint (retractions, finished requests).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eval.server import ROOT, TINY_MODEL, ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

MODEL = ROOT / "predictors" / "models" / "alpaca-mistral"
PROMPTS = ROOT / "data" / "prompts" / "alpacaeval_Mistral-7B-Instruct-v0.2.json"
N_BENCH = 6
SLO_BODY = {"custom_params": {"ttft_slo_ms": 20000.0, "tbt_slo_ms": 1000.0}}
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


def ext_series(m: dict) -> dict:
    return {k: v for k, v in m.items() if k.startswith("sglang_ext:")}


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("tools") / "server-stock.log"
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=["--ext-policy", "none"]), log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("tools") / "server-cacheopt.log"
    extra = ["--ext-policy", "cacheopt", "--ext-predictor-mode", "service", "--ext-predictor-model-path", str(MODEL)]
    env = {"SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "20"}
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=extra), log_path=log, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("bench") / "azure-conv.jsonl"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_serving_data.py"), "--workload", "azure-conv",
           "--num-requests", str(N_BENCH), "--scale", "8", "--max-context", "1024", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == N_BENCH
    return out, sum(len(tok.encode(r["conversations"][1]["content"])) for r in rows)


@pytest.mark.parametrize("side", ["stock", "ext"])
def test_bench_serving_replays_the_trace(side: str, request: pytest.FixtureRequest, dataset: tuple[Path, int],
                                         tmp_path: Path) -> None:  # fmt: skip
    server: ServerProcess = request.getfixturevalue(side)
    path, output_tokens = dataset
    before = scrape(server.base_url)
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang-oai", "--base-url", server.base_url,
           "--dataset-name", "custom", "--dataset-path", str(path), "--num-prompts", str(N_BENCH),
           "--request-rate", "inf", "--tokenizer", str(TINY_MODEL), "--seed", "1", "--disable-tqdm",
           "--output-file", str(out), "--extra-request-body", json.dumps(SLO_BODY),
           "--goodput", "ttft:20000", "tpot:1000"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["completed"] == N_BENCH
    assert result["total_output_tokens"] == output_tokens  # every request at its trace length
    after = scrape(server.base_url)
    if side == "stock":
        assert ext_series(before) == ext_series(after) == {}  # stock: the extension exports nothing
    else:
        done = [total(m, "sglang_ext:finished_requests_total") for m in (before, after)]
        assert done[1] - done[0] == N_BENCH + 1  # the run's requests and bench_serving's warm-up


def test_extension_metrics_on_sglangs_endpoint(ext: ServerProcess) -> None:
    server = ext
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
    series_by_name = ext_series(after)
    assert len(series_by_name) >= 15
    for series in series_by_name.values():
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
    swaps, fallbacks = delta("sglang_ext:preemptions_total", mode="swap"), delta("sglang_ext:swap_fallbacks_total")
    assert fallbacks <= swaps  # a swap runs (its bytes counted) or falls back to recompute, counted once
    assert swaps == fallbacks or delta("sglang_ext:swap_bytes_total", direction="out") > 0  # executed: bytes moved
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
