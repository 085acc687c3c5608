"""SGLang's own benchmark client works against stock SGLang and the extension: ``python -m sglang.bench_serving``
(the README's recipe, reduced to a handful of requests) replays a slice of the Azure 2023 conversation trace written
by ``scripts/bench_serving_data.py``, with per-request SLOs through ``--extra-request-body``, against a tiny CPU
server with ``--ext-policy none`` (stock) and ``cacheopt``. Every request completes at its trace length; on the
extension's server the requests show up in its metrics, and the stock server exports none."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eval.server import ROOT, TINY_MODEL, ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

N = 6
SLO_BODY = {"custom_params": {"ttft_slo_ms": 20000.0, "tbt_slo_ms": 1000.0}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("bench") / "azure-conv.jsonl"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_serving_data.py"), "--workload", "azure-conv",
           "--num-requests", str(N), "--scale", "8", "--max-context", "1024", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == N
    return out, sum(len(tok.encode(r["conversations"][1]["content"])) for r in rows)


@pytest.fixture(scope="module", params=["none", "cacheopt"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("bench") / f"server-{request.param}.log"
    extra = ["--ext-policy", request.param]
    if request.param != "none":
        extra += ["--ext-predictor-mode", "online"]
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=extra), log_path=log) as srv:
        yield srv


def ext_samples(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    return {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("sglang_ext:")
    }


def finished(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("sglang_ext:finished_requests_total"))


def test_bench_serving_replays_the_trace(server: ServerProcess, dataset: tuple[Path, int], tmp_path: Path) -> None:
    path, output_tokens = dataset
    before = ext_samples(server.base_url)
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang-oai", "--base-url", server.base_url,
           "--dataset-name", "custom", "--dataset-path", str(path), "--num-prompts", str(N), "--request-rate", "inf",
           "--tokenizer", str(TINY_MODEL), "--seed", "1", "--disable-tqdm", "--output-file", str(out),
           "--extra-request-body", json.dumps(SLO_BODY), "--goodput", "ttft:20000", "tpot:1000"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["completed"] == N
    assert result["total_output_tokens"] == output_tokens  # every request at its trace length
    after = ext_samples(server.base_url)
    if "--ext-policy" in server.args and server.args[server.args.index("--ext-policy") + 1] == "none":
        assert before == after == {}  # stock: the extension exports nothing
    else:
        assert finished(after) - finished(before) == N + 1  # the run's requests and bench_serving's warm-up
