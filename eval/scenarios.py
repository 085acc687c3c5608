"""Named evaluation scenarios: what ``python -m eval.compare --scenario NAME`` runs (issue 10.5).

A scenario fixes everything but the policy: the latency profile (GPU, model, SGLang's own KV pool and device-default
chunk, profiles/sizing.py), the workload and its client caps (eval.caps), the SLO settings with their reasons
(eval.slo), the page size, the request count, the seeds, which measured predictor quality the simulated estimates
reproduce (eval.estimates), and a rate grid anchored on matched ``sglang``'s capacity.

**Capacity** (the grid's anchor): the highest Poisson rate at which matched ``sglang`` keeps >= 90% SLO attainment
under the scenario's primary SLO setting, with the scenario's request count and seed 0, found by bisection
(``eval.compare.capacity``). It is computed by ``python -m eval.compare --scenario NAME --capacity`` and stored in
``eval/capacity.json`` with the command, date and code fingerprint; the grid is ``capacity x loads`` (0.5 ... 1.3).
``sglang-mixed``'s capacity is stored beside it and anchors the grid when every compared variant is mixed. A scenario
may name another anchor (``anchor``): ``tight-chat-long-h100-8b`` uses ``sglang-tuned``'s, because SGLang at its
device-default chunk cannot hold a 2x-decode-step TBT class at any useful rate (its capacity there is a few tenths
of a request per second), and the question the scenario asks is where a *tuned* SGLang breaks.

Scenarios (``--list``):

* ``chat-h100-8b``: KV loose. Llama-3-8B on an H100 80GB (pool 415k tokens), Azure 2023 conversation lengths, no
  client cap (an OpenAI client without ``max_tokens``: SGLang fills in the context room).
* ``sharegpt-a100-40gb-13b``: KV tight. Llama-2-13B on an A100 40GB (pool ~10.8k tokens: a dozen conversations),
  ShareGPT lengths with prompts up to half of Llama-2's 4k context, client cap 2048 (every request fits the context).
* ``reasoning-h100-8b-32k``: long outputs. Llama-3-8B shape at 32k context (Llama-3.1-8B) on an H100; no client cap;
  outputs are the Azure conversation lengths x 24 (the trace's first rows average 256 tokens: mean ~6.1k, median
  ~5.2k, p99 ~14k tokens over the scenario's 300 requests): no long-output trace ships in
  ``data/``, so real lengths are scaled to the reported range of reasoning models — MLPerf Inference v5.1's
  DeepSeek-R1 set averages ~3.9k output tokens with a 20k maximum (mlcommons.org/2025/09/deepseek-inference-5-1),
  DeepSeek-R1 spends ~4.7k tokens on hard MATH problems (arXiv 2501.18576) and R1-Zero's responses approach ~10k on
  its RL training set (arXiv 2501.12948, Fig. 3). The scaling keeps the conversation trace's shape (heavy tail).
* ``burst``: 1,000 requests arriving at t = 0 (one "rate": ``burst``), Llama-3-8B at 32k context, Azure conversation
  lengths with outputs x8 (mean ~2k tokens: long answers that make the flood bind on KV without the reasoning
  scenario's hour-long runs); admission alone decides.
* ``mixed-code-conv``: AccelGen's setting. Azure code (long prompts, short outputs) and conversation traces merged,
  SLOs per application.
* ``tight-chat-long-h100-8b``: genuinely short chat prompts (AlpacaEval instructions, median 23 tokens) with a tight
  TBT class of 2x an isolated decode step, beside long-prompt arXiv summarisation with a loose TBT (A1's regime).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.slo import DEFAULT_SPEC, PRODUCTION

CAPACITY_FILE = Path(__file__).resolve().parent / "capacity.json"
LOADS = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3)
BURST = "burst"


def _abs(kind: str) -> str:
    p = PRODUCTION[kind]
    return f"abs:{p.ttft_ms:g}:{p.tbt_ms:g}"


def _app(**kinds: str) -> str:
    return "app:" + ",".join(f"{src}={PRODUCTION[k].ttft_ms:g}:{PRODUCTION[k].tbt_ms:g}" for src, k in kinds.items())


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    profile: str
    workload: str
    num_requests: int
    slo: dict[str, str]  # setting name -> eval.slo spec ("absolute", "relative")
    slo_why: str  # where each setting comes from
    primary_slo: str = "absolute"
    cap: int | str = "context"  # client cap (eval.caps): "context" = no max_tokens
    seeds: int = 3
    loads: tuple[float, ...] = LOADS
    burst: bool = False  # every request at t = 0 (rates = ("burst",))
    page_size: int = 1  # SGLang's default --page-size
    pool_tokens: int | None = None  # None: the profile's (SGLang's own sizing)
    max_prompt: int | None = None
    output_scale: float = 1.0
    long_share: float | None = None
    estimates: str = "in-distribution"  # eval.estimates regime the simulated predictor reproduces
    kv: str = ""  # "loose" / "tight" / "long outputs": why the scenario is here
    anchor: str = ""  # variant whose capacity anchors the grid; "" = matched sglang (module docstring)
    extra: dict[str, Any] = field(default_factory=dict)

    def workload_kwargs(self) -> dict[str, Any]:
        """``eval.workloads.load_workload`` keywords (besides count, rate, seed and SLOs)."""
        import profiles

        prof = profiles.get(self.profile)
        return {"max_context": prof.context_len, "max_new_tokens": self.cap, "max_prompt": self.max_prompt,
                "output_scale": self.output_scale, "long_share": self.long_share}  # fmt: skip

    def slo_spec(self, setting: str | None = None) -> str:
        setting = setting or self.primary_slo
        if setting not in self.slo:
            raise ValueError(f"scenario {self.name}: unknown SLO setting {setting!r}; valid: {', '.join(self.slo)}")
        return self.slo[setting]


_MLPERF_NOTE = (
    "absolute values are MLPerf Inference's latency constraints (eval.slo.PRODUCTION, with the rule and commit); "
    "relative classes are eval.slo's default multiples of each request's isolated latency"
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("chat-h100-8b", "KV loose: chat on Llama-3-8B / H100 80GB, Azure conversation lengths, no client cap",
                 "h100-llama3-8b", "azure-conv", 1000,
                 {"absolute": _abs("chat"), "relative": DEFAULT_SPEC},
                 f"interactive chat on an 8B model: MLPerf's Llama3.1-8B conversational TTFT 2 s / TPOT 100 ms; "
                 f"{_MLPERF_NOTE}", kv="loose"),
        Scenario("sharegpt-a100-40gb-13b", "KV tight: ShareGPT on Llama-2-13B / A100 40GB (pool ~10.8k tokens), "
                 "prompts <= 2048, client cap 2048", "a100-40gb-llama2-13b", "sharegpt", 1000,
                 {"absolute": _abs("chat-70b"), "relative": DEFAULT_SPEC},
                 "chat on a 13B model that decodes at a 70B-class speed on an A100: MLPerf's Llama2-70b "
                 f"conversational TTFT 2 s / TPOT 200 ms; {_MLPERF_NOTE}", cap=2048, max_prompt=2048, kv="tight"),
        Scenario("reasoning-h100-8b-32k", "long outputs: Llama-3-8B shape at 32k context / H100, Azure conversation "
                 "lengths with outputs x24 (mean ~6.1k tokens), no client cap", "h100-llama3-8b-32k", "azure-conv",
                 300, {"absolute": _abs("reasoning"), "relative": DEFAULT_SPEC},
                 f"reasoning service: MLPerf's DeepSeek-r1 server TTFT 2 s / TPOT 80 ms; {_MLPERF_NOTE}",
                 output_scale=24.0, kv="long outputs (KV bound)"),
        Scenario("burst", "1,000 requests at t = 0 on Llama-3-8B shape at 32k context / H100, Azure conversation "
                 "lengths with outputs x8 (mean ~2k tokens), no client cap: admission alone decides",
                 "h100-llama3-8b-32k", "azure-conv", 1000,
                 {"absolute": _abs("reasoning"), "relative": DEFAULT_SPEC},
                 f"long answers: MLPerf's DeepSeek-r1 server TTFT 2 s / TPOT 80 ms; {_MLPERF_NOTE}", burst=True,
                 loads=(), output_scale=8.0, kv="burst (KV bound)"),
        Scenario("mixed-code-conv", "AccelGen's setting: Azure code (long prompts) + conversation traces on Llama-3-8B "
                 "/ H100, SLOs per application", "h100-llama3-8b", "mixed-code-conv", 1000,
                 {"absolute": _app(**{"azure-code": "code", "azure-conv": "chat"}), "relative": DEFAULT_SPEC},
                 "per application: code generation as MLPerf's Mixtral-8x7B (QA, math, code) TTFT 2 s / TPOT "
                 f"200 ms, conversation as Llama3.1-8B conversational 2 s / 100 ms; {_MLPERF_NOTE}",
                 kv="mixed prompts"),
        Scenario("tight-chat-long-h100-8b", "tight-TBT short chat (AlpacaEval prompts, TBT 2x an isolated decode step) "
                 "beside long-prompt arXiv summarisation (loose TBT) on Llama-3-8B / H100", "h100-llama3-8b",
                 "mixed-chat-long", 1000,
                 {"relative": "app:alpaca=5x:2x,arxiv=20x:12x",
                  "absolute": _app(alpaca="chat-interactive", arxiv="long-context")},
                 "relative: chat TTFT 5x / TBT 2x its isolated latency (A1's tight class), summarisation 20x / 12x; "
                 "absolute: MLPerf's Llama3.1-8B interactive TTFT 500 ms / TPOT 30 ms for chat and Llama3.1-405B "
                 "long-context server 6 s / 175 ms for summarisation", primary_slo="relative", long_share=0.3,
                 kv="mixed prompts (A1)", anchor="sglang-tuned"),
    )
}  # fmt: skip


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


# --- stored capacities -------------------------------------------------------------------------------------------
def load_capacities(path: Path = CAPACITY_FILE) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


def stored_capacity(scenario: str, baseline: str = "sglang", path: Path = CAPACITY_FILE) -> float | None:
    entry = load_capacities(path).get(scenario, {}).get(baseline)
    return None if entry is None else float(entry["capacity_rps"])


def store_capacity(scenario: str, baseline: str, result: dict[str, Any], path: Path = CAPACITY_FILE) -> None:
    """Record ``result`` (``capacity_rps`` + how it was found) for ``scenario`` / ``baseline``."""
    doc = load_capacities(path)
    doc.setdefault(scenario, {})[baseline] = {**result, "date": time.strftime("%Y-%m-%d")}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def rate_grid(scenario: Scenario, capacity: float | None) -> list[float | str]:
    """The scenario's rates: ``capacity x loads`` (rounded), or ``["burst"]``."""
    if scenario.burst:
        return [BURST]
    if capacity is None:
        raise ValueError(f"scenario {scenario.name}: no stored capacity; run python -m eval.compare --scenario "
                         f"{scenario.name} --capacity (or give --rates)")  # fmt: skip
    return [round(capacity * x, 4) for x in scenario.loads]
