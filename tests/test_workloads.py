"""Workload loading (eval.workloads): every shipped name, seeding, scaling, caps (eval.caps) and the leak property,
context fitting, prompt filter, output scaling, sources, bad names and files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.caps import client_cap
from eval.workloads import (
    DATA_DIR,
    MAX_PROMPT_SHARE,
    WorkloadError,
    available_workloads,
    fit_context,
    load_workload,
    mistral_tokenizer,
)

TRACES = {"azure-conv", "azure-code", "mooncake", "mixed-code-conv"}
NAMES = {"azure-conv", "azure-code", "mooncake", "sharegpt", "arxiv", "alpaca", "mixed-code-conv",
         "mixed-arxiv-sharegpt", "mixed-chat-long"}  # fmt: skip


def test_available_names() -> None:
    assert set(available_workloads()) == NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_workload_is_well_formed(name: str) -> None:
    rate = None if name in TRACES else 4.0
    specs = load_workload(name, num_requests=60, rate=rate, seed=3, scale=4.0, max_context=1024)
    assert len(specs) == 60
    assert len({s.rid for s in specs}) == 60
    arrivals = np.array([s.arrival_s for s in specs])
    assert arrivals[0] == 0.0 and (np.diff(arrivals) >= 0).all()
    for s in specs:
        assert s.prompt_len >= 1 and s.output_len >= 1
        assert s.prompt_len <= 1024 * MAX_PROMPT_SHARE and s.prompt_len + s.output_len <= 1024 - 2
        assert s.max_new_tokens == 1024 - s.prompt_len - 2  # no client cap: SGLang fills in the context room
        assert s.source
    if name == "alpaca":
        assert all(s.prompt_text for s in specs)
    if name == "mooncake":
        assert all(s.prefix_block_tokens == 128 for s in specs)
        assert all(len(s.prefix_hash_ids) == math.ceil(s.prompt_len / 128) for s in specs)


def test_any_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert len(load_workload("azure-code", num_requests=5)) == 5


def test_azure_trace_values_and_timestamps() -> None:
    specs = load_workload("azure-conv", num_requests=3)
    assert [(s.prompt_len, s.output_len) for s in specs[:2]] == [(374, 44), (396, 109)]
    assert specs[1].arrival_s == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)
    assert specs[0].rid == "azure-conv-0"
    later = load_workload("azure-conv", num_requests=2, start=1)
    assert (later[0].prompt_len, later[0].arrival_s) == (396, 0.0)


def test_mooncake_hash_ids_become_prefix_blocks() -> None:
    first = json.loads((DATA_DIR / "traces/mooncake_conversation.jsonl").open().readline())
    s = load_workload("mooncake", num_requests=1)[0]
    assert s.prefix_hash_ids == tuple(first["hash_ids"]) and s.prefix_block_tokens == 512
    assert (s.prompt_len, s.output_len) == (first["input_length"], first["output_length"])
    shared = load_workload("mooncake", num_requests=2)
    assert shared[0].prefix_hash_ids[0] == shared[1].prefix_hash_ids[0]  # the trace's shared first block


def test_alpaca_true_length_is_mistral_token_count() -> None:
    s = load_workload("alpaca", num_requests=1, rate=1.0, seed=0)[0]
    items = json.loads((DATA_DIR / "prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json").read_text())
    item = next(d for d in items if d["instruction"] == s.prompt_text)
    sp = mistral_tokenizer()
    assert s.output_len == len(sp.encode(item["output"]))
    assert s.prompt_len == len(sp.encode(item["instruction"]))


def test_alpaca_text_is_not_scaled_but_truncated_to_fit() -> None:
    s = load_workload("alpaca", num_requests=40, rate=1.0, scale=8.0, seed=1)
    sp = mistral_tokenizer()
    assert all(x.prompt_len == len(sp.encode(x.prompt_text)) for x in s)
    tight = load_workload("alpaca", num_requests=200, rate=1.0, seed=1, max_context=64)
    cut = [x for x in tight if x.prompt_len == 48]  # prompts longer than 3/4 of the context were cut
    assert cut and all(abs(len(sp.encode(x.prompt_text)) - 48) <= 2 for x in cut)


def test_mixes_contain_both_sources() -> None:
    code_conv = load_workload("mixed-code-conv", num_requests=300)
    kinds = {s.rid.rsplit("-", 1)[0] for s in code_conv}
    assert kinds == {"azure-code", "azure-conv"} == {s.source for s in code_conv}
    chat = load_workload("mixed-chat-long", num_requests=400, rate=2.0, long_share=0.3, seed=2, max_context=8192)
    by = {src: [s for s in chat if s.source == src] for src in ("alpaca", "arxiv")}
    assert len(by["arxiv"]) == 120 and len(by["alpaca"]) == 280
    assert np.median([s.prompt_len for s in by["alpaca"]]) < 60 < 1000 < np.median([s.prompt_len for s in by["arxiv"]])
    arxiv = load_workload("mixed-arxiv-sharegpt", num_requests=200, rate=2.0, long_share=0.25, seed=5)
    assert sum(s.rid.startswith("arxiv") for s in arxiv) == 50
    with pytest.raises(WorkloadError, match="long_share"):
        load_workload("mixed-arxiv-sharegpt", num_requests=10, rate=2.0, long_share=1.5)


def test_seeding_is_deterministic_and_streams_are_independent() -> None:
    a = load_workload("sharegpt", num_requests=50, rate=2.0, seed=7)
    assert a == load_workload("sharegpt", num_requests=50, rate=2.0, seed=7)
    b = load_workload("sharegpt", num_requests=50, rate=2.0, seed=8)
    assert [s.prompt_len for s in a] != [s.prompt_len for s in b]
    c = load_workload("sharegpt", num_requests=50, rate=9.0, seed=7)  # other rate: same requests
    assert [(s.prompt_len, s.output_len) for s in a] == [(s.prompt_len, s.output_len) for s in c]
    assert [s.arrival_s for s in a] != [s.arrival_s for s in c]


def test_poisson_rate() -> None:
    specs = load_workload("azure-conv", num_requests=4000, rate=10.0, seed=1)
    gaps = np.diff([s.arrival_s for s in specs])
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert np.std(gaps) == pytest.approx(0.1, rel=0.1)  # exponential: sd = mean
    burst = load_workload("azure-conv", num_requests=5, rate=math.inf)
    assert all(s.arrival_s == 0.0 for s in burst)


def test_scale_divides_lengths() -> None:
    full = load_workload("azure-code", num_requests=30)
    half = load_workload("azure-code", num_requests=30, scale=2.0)
    for f, h in zip(full, half, strict=True):
        assert h.prompt_len == max(1, round(f.prompt_len / 2))
        assert h.output_len == max(1, round(f.output_len / 2))


def test_cap_settings() -> None:
    fixed = load_workload("azure-conv", num_requests=20, max_new_tokens=100)
    assert all(s.max_new_tokens == 100 for s in fixed)  # exactly the client's cap, even below the true length
    assert any(s.output_len > 100 for s in fixed)
    room = load_workload("azure-conv", num_requests=20, max_context=4096, max_new_tokens="context")
    assert all(s.max_new_tokens == 4096 - s.prompt_len - 2 for s in room)
    assert load_workload("azure-conv", num_requests=20, max_context=4096) == room  # the default with a context
    assert all(s.max_new_tokens == 4096 for s in load_workload("azure-conv", num_requests=5))  # without one
    exact = load_workload("azure-conv", num_requests=20, max_new_tokens="exact")  # the labelled oracle cap
    assert all(s.max_new_tokens == s.output_len for s in exact)
    with pytest.raises(WorkloadError, match="max_new_tokens"):
        load_workload("azure-conv", num_requests=2, max_new_tokens="huge")
    with pytest.raises(WorkloadError, match=r"'context'.*needs max_context"):
        load_workload("azure-conv", num_requests=2, max_new_tokens="context")
    with pytest.raises(WorkloadError, match="max_new_tokens"):
        load_workload("azure-conv", num_requests=2, max_new_tokens="auto")  # the leaking cap is gone


def _scaled_outputs(src: Path, dst: Path, factors: list[float]) -> None:
    """A copy of the ShareGPT length file with every output length multiplied by a factor (cycled)."""
    import csv

    rows = list(csv.DictReader(src.open()))
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for i, r in enumerate(rows):
            r["num_decode_tokens"] = str(max(1, round(float(r["num_decode_tokens"]) * factors[i % len(factors)])))
            w.writerow(r)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    factors=st.lists(st.floats(0.05, 40.0), min_size=1, max_size=5),
    cap=st.sampled_from([None, "context", 512, 2048, 4096]),
    ctx=st.sampled_from([None, 2048, 4096, 32768]),
)
def test_caps_never_read_the_true_length(tmp_path_factory: pytest.TempPathFactory, factors: list[float],
                                         cap: int | str | None, ctx: int | None) -> None:  # fmt: skip
    """The leak property: the same requests with other true output lengths get exactly the same caps (and
    prompts), for every cap setting and context."""
    if cap == "context" and ctx is None:
        return
    data = tmp_path_factory.mktemp("data")
    (data / "lengths").mkdir()
    _scaled_outputs(DATA_DIR / "lengths/sharegpt8k_llama2_stats.csv", data / "lengths/sharegpt8k_llama2_stats.csv",
                    factors)  # fmt: skip
    kw = {"num_requests": 200, "rate": 2.0, "seed": 3, "max_context": ctx, "max_new_tokens": cap}
    real = load_workload("sharegpt", **kw)
    other = load_workload("sharegpt", data_dir=data, **kw)
    if any(abs(f - 1.0) > 0.05 for f in factors):
        assert [s.output_len for s in real] != [s.output_len for s in other]
    assert [(s.prompt_len, s.max_new_tokens) for s in real] == [(s.prompt_len, s.max_new_tokens) for s in other]


@given(st.integers(1, 20000), st.integers(1, 5000), st.integers(8, 32768), st.sampled_from(["context", 64, 4096]))
def test_context_fit_and_cap(p: int, o: int, ctx: int, cap: int | str) -> None:
    p2, o2 = fit_context(p, o, ctx)
    assert 1 <= p2 <= min(p, int(ctx * MAX_PROMPT_SHARE)) and 1 <= o2 <= o
    assert p2 == fit_context(p, 1, ctx)[0]  # the prompt's cut never depends on the output
    assert p2 + o2 <= ctx - 2 or o2 == 1
    c = client_cap(p2, cap, ctx)
    assert c == (max(1, ctx - p2 - 2) if cap == "context" else cap)


def test_prompt_filter_and_output_scale() -> None:
    short = load_workload("sharegpt", num_requests=300, rate=2.0, seed=4, max_prompt=1024)
    assert max(s.prompt_len for s in short) <= 1024
    base = load_workload("azure-conv", num_requests=200, rate=1.0, seed=4, max_context=32768)
    long = load_workload("azure-conv", num_requests=200, rate=1.0, seed=4, max_context=32768, output_scale=28.0)
    assert [s.prompt_len for s in base] == [s.prompt_len for s in long]
    assert [s.max_new_tokens for s in base] == [s.max_new_tokens for s in long]  # the cap knows nothing of it
    for b, lo in zip(base, long, strict=True):
        assert lo.output_len == min(round(b.output_len * 28), 32768 - b.prompt_len - 2)
    with pytest.raises(WorkloadError, match="max_prompt: no row"):
        load_workload("mooncake", num_requests=5, rate=1.0, max_prompt=500)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown workload 'nope'; valid: alpaca, arxiv, azure-code"):
        load_workload("nope", num_requests=1)
    with pytest.raises(WorkloadError, match="give a rate"):
        load_workload("sharegpt", num_requests=5)
    with pytest.raises(WorkloadError, match="rate must be > 0"):
        load_workload("azure-conv", num_requests=5, rate=0.0)
    with pytest.raises(WorkloadError, match="the trace has 8819"):
        load_workload("azure-code", num_requests=10, start=8815)


def _data_copy(tmp_path: Path) -> Path:
    for sub in ("traces", "lengths"):
        shutil.copytree(DATA_DIR / sub, tmp_path / sub)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "rel", "content", "problem"),
    [
        ("azure-conv", "traces/azure2023_conv.csv", None, "No such file"),
        ("azure-conv", "traces/azure2023_conv.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n",
         "missing column.*GeneratedTokens"),
        ("azure-code", "traces/azure2023_code.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nnow,ten,3\n",
         "non-numeric length"),
        ("azure-code", "traces/azure2023_code.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,3\n",
         "bad TIMESTAMP"),
        ("mooncake", "traces/mooncake_conversation.jsonl",
         '{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [0]}\n{"timestamp": 1, "input\n',
         "line 2: malformed record"),
        ("sharegpt", "lengths/sharegpt8k_llama2_stats.csv", "num_prefill_tokens,num_decode_tokens\n-4,3\n",
         "negative or zero length"),
        ("arxiv", "lengths/arxiv_summarization_llama2_stats.csv", "num_prefill_tokens,num_decode_tokens\n", "no rows"),
    ],
)  # fmt: skip
def test_bad_files_fail_with_one_line_naming_the_file(
    tmp_path: Path, name: str, rel: str, content: str | None, problem: str
) -> None:
    data = _data_copy(tmp_path)
    path = data / rel
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(WorkloadError, match=problem) as info:
        load_workload(name, num_requests=1, rate=1.0, data_dir=data)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_malformed_alpaca_json(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    bad = tmp_path / "prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json"
    bad.write_text('[{"instruction": "hi"}]')
    with pytest.raises(WorkloadError, match="malformed AlpacaEval JSON") as info:
        load_workload("alpaca", num_requests=1, rate=1.0, data_dir=tmp_path)
    assert str(info.value).startswith(str(bad))
