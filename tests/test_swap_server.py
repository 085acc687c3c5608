"""C5 swap and plan preemptions inside a real SGLang server on CPU: a request swapped out mid-generation and resumed
produces exactly the tokens of an uninterrupted run (greedy), with only the last partial page re-prefilled.

The model: the tiny LLaMA shape with seeded random weights written to a temporary directory (transformers' own
initialisation, torch seed 0), loaded for real. SGLang's ``--load-format dummy`` weights (uniform +-1e-3, norms
included) make this model emit a two-token cycle that no KV content changes, so token equality would prove nothing
there; with these weights the outputs match Hugging Face's ``generate`` and depend on the whole context.

Swaps are forced two ways: the plugin's debug knob (``SGLANG_EXT_DEBUG_PREEMPT``, see
:mod:`sglang_ext.adapter.preempt`) preempts one request through the plan-preemption path in SWAP or RECOMPUTE mode;
``SGLANG_TEST_RETRACT`` (SGLang's own test switch) retracts a decoding request every 10 steps, and ``cacheopt``'s
C5 marks it SWAP (on the CPU profile, swap is always the cheaper), through SGLang's ``retract_decode``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eval.server import TINY_MODEL, ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

PROMPT = list(range(200, 241))
NEW = 48
AFTER = 16  # output tokens before the knob preempts
CONCURRENT = {f"c{i}": list(range(300 + 50 * i, 330 + 53 * i)) for i in range(3)}


@pytest.fixture(scope="module")
def seeded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("seeded-tiny-llama")
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(TINY_MODEL / name, out / name)
    cfg = json.loads((TINY_MODEL / "config.json").read_text())
    cfg["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig.from_pretrained(out)).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module", params=[1, 16], ids=["page1", "page16"])
def server(request: pytest.FixtureRequest, seeded_model: Path, tmp_path_factory: pytest.TempPathFactory):
    page = request.param
    extra = ["--ext-policy", "cacheopt", "--page-size", str(page)]
    args = cpu_server_args(seeded_model, pool_tokens=2048, extra=extra)
    args[args.index("dummy")] = "auto"  # the seeded weights, loaded for real
    # SGLang sizes CPU memory from the machine's free RAM before and after loading; other processes' churn in
    # between must not eat the whole static fraction (the pool stays capped by --max-total-tokens)
    args[args.index("--mem-fraction-static") + 1] = "0.2"
    env = {"SGLANG_EXT_DEBUG_PREEMPT": f"swapme:{AFTER}:swap,recomp:{AFTER}:recompute", "SGLANG_TEST_RETRACT": "1",
           "SGLANG_TEST_RETRACT_INTERVAL": "10", "SGLANG_EXT_LOG_EVERY_S": "0.5"}  # fmt: skip
    log = tmp_path_factory.mktemp(f"swap-srv-{page}") / "server.log"
    with ServerProcess(args, env=env, log_path=log, startup_timeout_s=600) as srv:  # slow on a busy 2-core box
        yield srv, page
    assert srv.pid is None


def generate(srv: ServerProcess, rid: str, ids: list[int], flush: bool = True) -> dict:
    if flush:  # every run computes its prompt itself: no prefix shared with an earlier run
        assert httpx.post(srv.base_url + "/flush_cache", timeout=30).status_code == 200
    body = {"rid": rid, "input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": NEW,
            "ignore_eos": True}}  # fmt: skip
    r = httpx.post(srv.base_url + "/generate", json=body, timeout=180)
    assert r.status_code == 200, r.text
    return r.json()


def prefills(log: str) -> Iterator[tuple[int, int]]:
    """SGLang's own prefill log lines: (new tokens, cached tokens) of single-request prefill batches."""
    for m in re.finditer(r"Prefill batch, #new-seq: 1, #new-token: (\d+), #cached-token: (\d+)", log):
        yield int(m.group(1)), int(m.group(2))


def test_swapped_request_resumes_with_the_uninterrupted_tokens(server) -> None:
    srv, page = server
    ref = generate(srv, "ref", PROMPT)
    swapped = generate(srv, "swapme", PROMPT)
    recomputed = generate(srv, "recomp", PROMPT)
    assert len(ref["output_ids"]) == NEW
    assert swapped["output_ids"] == ref["output_ids"]
    assert recomputed["output_ids"] == ref["output_ids"]
    assert swapped["meta_info"]["num_retractions"] == 1 == recomputed["meta_info"]["num_retractions"]
    log = srv.log_text()
    out = re.search(r"sglang_ext swap-out rid=swapme tokens=(\d+) bytes=(\d+)", log)
    assert out is not None, "the knob's SWAP preemption did not copy the KV out"
    n = int(out.group(1))
    assert n % page == 0 and n >= len(PROMPT) + AFTER - page
    per_token = re.search(r"swap \(C5\) active: host budget \d+ tokens \((\d+) bytes/token", log)
    assert per_token is not None and int(out.group(2)) == n * int(per_token.group(1))
    assert re.search(rf"sglang_ext swap-in rid=swapme restored={n} ", log)
    # SGLang itself re-prefilled only the tail past the restored prefix (>= 1 token, < one page past it)
    assert any(cached == n and 1 <= new <= page for new, cached in prefills(log))
    assert "plan preemption: [('recomp', 'recompute')]" in log
    assert "swap-out rid=recomp" not in log


def test_swaps_chosen_by_c5_in_sglang_retractions_keep_outputs(server) -> None:
    srv, _ = server
    refs = {rid: generate(srv, "seq-" + rid, ids)["output_ids"] for rid, ids in CONCURRENT.items()}
    assert httpx.post(srv.base_url + "/flush_cache", timeout=30).status_code == 200
    with cf.ThreadPoolExecutor(len(CONCURRENT)) as ex:
        outs = {rid: ex.submit(generate, srv, rid, ids, False) for rid, ids in CONCURRENT.items()}
        outs = {rid: f.result() for rid, f in outs.items()}
    assert sum(o["meta_info"]["num_retractions"] for o in outs.values()) >= 1
    for rid, o in outs.items():
        assert o["output_ids"] == refs[rid], rid
    log = srv.log_text()
    swapped = set(re.findall(r"sglang_ext swap-out rid=(c\d)", log))
    assert swapped and swapped <= set(re.findall(r"sglang_ext swap-in rid=(c\d)", log))
    assert "Testing retraction. #retracted_reqs: 1" in log
    stats = [json.loads(c.replace("'", '"')) for c in re.findall(r"sglang_ext swap stats: (\{.*\})", log)]
    assert stats and stats[-1]["swaps_out"] >= 1 and stats[-1]["swaps_in"] >= 1
    assert stats[-1]["bytes_out"] > 0 and stats[-1]["seconds_out"] > 0
