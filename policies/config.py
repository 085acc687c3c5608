"""One config: typed, frozen dataclasses validated once in ``__post_init__``.

Each field maps 1:1 to a CLI flag (``sglang_ext.config`` generates the SGLang flags from these fields; the
simulator's CLI uses the same mapping). Field metadata carries the help text; the flag name is
``--ext-<section>-<field>`` with ``_`` -> ``-`` (``--ext-<field>`` for the top level).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


class ConfigError(ValueError):
    """One line naming the flag and what is wrong."""


def _check(cond: bool, flag: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{flag}: {msg}")


@dataclass(frozen=True)
class SGLangBaselineConfig:
    """Knobs of the ``sglang``-faithful baseline; defaults are SGLang 0.5.23's (``server_args.py`` and
    ``global_config``/``new_token_ratio_tracker``)."""

    schedule_policy: str = opt("fcfs", "SGLang schedule policy the baseline mirrors.", ("fcfs", "lpm"))
    schedule_conservativeness: float = opt(1.0, "SGLang --schedule-conservativeness the baseline mirrors.")
    chunked_prefill_size: int = opt(2048, "Chunked-prefill size (tokens) for the sglang/sarathi baselines.")
    retraction_policy: str = opt("length", "Victim order on decode OOM.", ("length", "priority"))
    mixed_chunk: bool = opt(False, "SGLang --enable-mixed-chunk the baseline mirrors (decodes ride with prefill "
                            "chunks).")  # fmt: skip
    enable_priority_scheduling: bool = opt(False, "SGLang --enable-priority-scheduling the baseline mirrors (queue "
                                           "sorted by request priority; preemption to schedule when the request "
                                           "slots are full).")  # fmt: skip
    schedule_low_priority_values_first: bool = opt(False, "SGLang --schedule-low-priority-values-first (default: "
                                                   "higher values first).")  # fmt: skip
    priority_scheduling_preemption_threshold: int = opt(10, "SGLang --priority-scheduling-preemption-threshold: "
                                                        "priority difference needed to preempt.")  # fmt: skip
    disable_priority_preemption: bool = opt(False, "SGLang --disable-priority-preemption.")
    priority_by_class: str = opt("", "Simulator: a request's priority from its SLO class, e.g. "
                                 "'tight=2,medium=1,loose=0' (the server takes the request's own priority field); "
                                 "unlisted classes get SGLang's default (the lowest).")  # fmt: skip

    def __post_init__(self) -> None:
        _check(self.schedule_conservativeness > 0, "--ext-sglang-schedule-conservativeness", "must be > 0")
        _check(self.chunked_prefill_size > 0, "--ext-sglang-chunked-prefill-size", "must be > 0")
        prio = self.enable_priority_scheduling
        _check(not prio or self.schedule_policy == "fcfs", "--ext-sglang-enable-priority-scheduling",
               "needs schedule policy fcfs (SGLang refuses lpm with it)")  # fmt: skip
        _check(self.retraction_policy != "priority" or prio, "--ext-sglang-retraction-policy",
               "priority needs --ext-sglang-enable-priority-scheduling (as SGLang)")  # fmt: skip
        self.priority_map()  # validates --ext-sglang-priority-by-class

    def priority_map(self) -> dict[str, int]:
        """``priority_by_class`` parsed: SLO class name -> integer priority."""
        out: dict[str, int] = {}
        flag = "--ext-sglang-priority-by-class"
        for part in filter(None, (p.strip() for p in self.priority_by_class.split(","))):
            name, sep, value = (x.strip() for x in part.partition("="))
            _check(bool(sep) and bool(name), flag, f"{part!r}: expected CLASS=INT")
            _check(name not in out, flag, f"class {name!r} given twice")
            try:
                out[name] = int(value)
            except ValueError:
                raise ConfigError(f"{flag}: {part!r}: priority {value!r} is not an integer") from None
        return out


@dataclass(frozen=True)
class PredictorConfig:
    """Output-length prediction (C1) and the ZMQ predictor service."""

    mode: str = opt("off", "Where bounds come from: off (policies use max_new_tokens), online (in-process "
                    "quantile of finished lengths, for prompts without text), service (ZMQ xgboost side process).",
                    ("off", "online", "service"))  # fmt: skip
    endpoint: str = opt("", "ZMQ endpoint of a running predictor service; empty = start one beside the server.")
    model_path: str = opt("", "Trained predictor model directory (predictors.train output); empty = the shipped "
                          "model predictors/models/alpaca-mistral.")  # fmt: skip
    bound: str = opt("conformal", "Bound kind added to the point estimate (docs/predictor.md).",
                     ("hoeffding", "conformal", "conformal_log", "max_new_tokens", "quantile", "linear"))  # fmt: skip
    alpha: float = opt(0.95, "Confidence at zero load: conf = alpha / (1 + beta * arrival_rate).")
    beta: float = opt(0.001, "Arrival-rate sensitivity of the confidence.")
    fallback: str = opt("max_new_tokens", "Bound used when no answer has come in time.",
                        ("max_new_tokens", "mean"))  # fmt: skip
    rule: str = opt("paper", "Confidence rule: paper (alpha/(1+beta*rate)) or overcommit (expected overrun fits "
                    "the reserve).", ("paper", "overcommit"))  # fmt: skip
    refit_every: int = opt(50, "The service refits its conformal calibration every N finished requests.")
    rate_scope: str = opt("worker", "Arrival rate C1's confidence and the pool rule read when several workers serve "
                          "(--dp-size N, servers sharing one predictor service, simulator replicas): worker = this "
                          "worker's own arrivals (what competes for its KV pool, as for one server alone); cluster "
                          "= all workers' (the predictor service's sum; in the simulator every replica's "
                          "arrivals).", ("worker", "cluster"))  # fmt: skip

    def __post_init__(self) -> None:
        _check(self.refit_every > 0, "--ext-predictor-refit-every", f"must be > 0, got {self.refit_every}")
        _check(0 < self.alpha < 1, "--ext-predictor-alpha", f"must be in (0, 1), got {self.alpha}")
        _check(self.beta >= 0, "--ext-predictor-beta", f"must be >= 0, got {self.beta}")


@dataclass(frozen=True)
class CacheOptConfig:
    """CacheOPT components C1-C5, each switchable for ablation."""

    admission: str = opt("pool", "Admission rule: pool (the peak of the batch's summed remaining demand, from the "
                         "predictive distributions, kept under the pool at a target confidence; padding shared) "
                         "or paper (each request's bound reserved separately, reuse of unused tails).",
                         ("pool", "paper"))  # fmt: skip
    pool_confidence: float = opt(
        0.9,
        "Pool rule: probability that the live requests' KV stays within the pool "
        "(at zero load; adapted to the arrival rate like C1: conf / (1 + beta * rate)).",
    )
    pool_rate_beta: float = opt(0.001, "Pool rule: arrival-rate sensitivity of its confidence (C1's beta).")
    alloc_quantile: float = opt(0.9, "Pool rule: a request's ledger allocation is this quantile of its length "
                                "(C3 tops it up past that; only requests beyond it draw the reserve).")  # fmt: skip
    demand: bool = opt(True, "C1: estimate KV demand from the bounded predicted length (off: max_new_tokens).")
    reuse: bool = opt(True, "C2: let waiting requests reuse running requests' allocated-but-unused KV.")
    reuse_buffer: int = opt(8, "C2: safety buffer (tokens) in the reuse condition.")
    topup: bool = opt(True, "C3: extend allocations proactively before they run out.")
    topup_horizon: int = opt(2, "C3: top up when fewer than this many iterations of room remain.")
    topup_tokens: int = opt(32, "C3: tokens added per top-up.")
    reserve_tokens: int = opt(64, "C3: global reserve (tokens) only overrunning requests may draw.")
    victim: bool = opt(True, "C4: SLO/remaining-time/preemption-cost victim order (off: SGLang's order).")
    victim_tolerance: float = opt(0.1, "C4: relative band within which two keys count as similar.")
    swap_or_recompute: bool = opt(True, "C5: choose the faster of swap and recompute (off: recompute).")
    swap_block_tokens: int = opt(16, "C5: tokens per swapped KV block (one copy each way per block).")
    swap_block_overhead_us: float = opt(1.0, "C5: fixed cost per swapped block per direction, microseconds.")
    swap_space_tokens: int = opt(65536, "C5: host memory for swapped-out KV, in tokens (0: never swap, recompute).")
    waiting_window: int = opt(32, "C2: waiting requests considered per iteration (bounds plan() cost).")
    late_last: bool = opt(
        True,
        "C2: requests that can still meet their TTFT SLO are picked before those that cannot "
        "(the late ones oldest first); off: least slack first, late ones included.",
    )
    starve_s: float = opt(30.0, "C2: a late request waiting longer than this (s) is picked before all others.")
    mixed_chunk: bool = opt(False, "Batching: decodes ride along with prefill chunks (off: SGLang's alternation).")

    def __post_init__(self) -> None:
        _check(0.5 <= self.pool_confidence < 1, "--ext-cacheopt-pool-confidence", "must be in [0.5, 1)")
        _check(self.pool_rate_beta >= 0, "--ext-cacheopt-pool-rate-beta", "must be >= 0")
        _check(0.5 <= self.alloc_quantile < 1, "--ext-cacheopt-alloc-quantile", "must be in [0.5, 1)")
        _check(self.reuse_buffer >= 0, "--ext-cacheopt-reuse-buffer", "must be >= 0")
        _check(self.topup_horizon >= 0, "--ext-cacheopt-topup-horizon", "must be >= 0")
        _check(self.topup_tokens > 0, "--ext-cacheopt-topup-tokens", "must be > 0")
        _check(self.reserve_tokens >= 0, "--ext-cacheopt-reserve-tokens", "must be >= 0")
        _check(0 <= self.victim_tolerance < 1, "--ext-cacheopt-victim-tolerance", "must be in [0, 1)")
        _check(self.swap_block_tokens > 0, "--ext-cacheopt-swap-block-tokens", "must be > 0")
        _check(self.swap_block_overhead_us >= 0, "--ext-cacheopt-swap-block-overhead-us", "must be >= 0")
        _check(self.swap_space_tokens >= 0, "--ext-cacheopt-swap-space-tokens", "must be >= 0")
        _check(self.waiting_window > 0, "--ext-cacheopt-waiting-window", "must be > 0")
        _check(self.starve_s > 0, "--ext-cacheopt-starve-s", "must be > 0")


@dataclass(frozen=True)
class AccelGenConfig:
    """AccelGen components A1-A3, each switchable."""

    dynamic_chunk: bool = opt(True, "A1: size each iteration to the largest budget meeting the tightest TBT SLO.")
    min_budget: int = opt(32, "A1: smallest token budget ever used.")
    max_budget: int = opt(8192, "A1: largest token budget ever used.")
    pivot_tokens: int = opt(512, "A1: compute-saturation size to reach when SLOs allow.")
    slo_priority: bool = opt(True, "A2: least-slack-first with similar-SLO grouping.")
    slo_group_ratio: float = opt(1.5, "A2: SLOs within this ratio of the tightest are batched together.")
    slo_group_mode: str = opt("tighter", "A2: out-of-group requests the grouping defers: tighter (they would shrink "
                              "the batch budget) or both (also looser ones).", ("tighter", "both"))  # fmt: skip
    multi_resource: bool = opt(True, "A3: choose queued requests filling both the token budget and free KV.")
    refit_interval: int = opt(50, "A1: refit the latency model from measured iterations every N iterations.")
    online_refit: bool = opt(True, "A1: refit the latency model online from the host's measured iterations.")
    error_margin: bool = opt(True, "A1: size iterations for the TBT limit divided by the latency model's measured "
                             "error (a quantile of measured/predicted iteration time).")  # fmt: skip
    margin_quantile: float = opt(0.95, "A1: quantile of measured/predicted iteration time used as the margin.")
    ttft_guard: float = opt(0.5, "A1: cap every iteration at this fraction of the tightest TTFT SLO seen in the "
                            "last 30 s, so a request arriving mid-iteration can still meet it (0 = off).")  # fmt: skip
    chunk_yield: bool = opt(True, "A2: the in-progress chunked prefill is ordered by its slack, so shorter urgent "
                            "prompts join the iteration ahead of it (off: it always goes first).")  # fmt: skip
    urgent_slack_frac: float = opt(0.5, "A2: a request whose TTFT slack is below this fraction of its TTFT SLO "
                                   "skips the similar-SLO grouping.")  # fmt: skip
    starve_s: float = opt(30.0, "A2: a request waiting longer than this (s) is served before all new ones.")
    pack_window: int = opt(8, "A3: candidates of one priority class scored together for bin packing.")
    slack_pruning: bool = opt(True, "A2: defer requests whose TTFT the estimate says cannot be met behind the "
                              "more urgent ones (Moore-Hodgson on the least-slack order).")  # fmt: skip
    late_gap_share: float = opt(0.08, "A1: share of a request's inter-token gaps A1 may plan over its TBT SLO "
                                "when not even a min-budget chunk meets it (an extend pass with a high fixed cost, "
                                "as on CPU), so that prompts get few large chunks (0 = off).")  # fmt: skip
    late_gap_stretch: float = opt(3.0, "A1: a planned late iteration lasts at most this multiple of the TBT SLO of "
                                  "each request that absorbs it.")  # fmt: skip

    def __post_init__(self) -> None:
        _check(self.min_budget > 0, "--ext-accelgen-min-budget", "must be > 0")
        _check(self.max_budget >= self.min_budget, "--ext-accelgen-max-budget", "must be >= min budget")
        _check(self.pivot_tokens > 0, "--ext-accelgen-pivot-tokens", "must be > 0")
        _check(self.slo_group_ratio >= 1, "--ext-accelgen-slo-group-ratio", "must be >= 1")
        _check(self.refit_interval > 0, "--ext-accelgen-refit-interval", "must be > 0")
        _check(0.5 <= self.margin_quantile <= 1, "--ext-accelgen-margin-quantile", "must be in [0.5, 1]")
        _check(0 <= self.ttft_guard <= 1, "--ext-accelgen-ttft-guard", "must be in [0, 1]")
        _check(0 <= self.urgent_slack_frac <= 1, "--ext-accelgen-urgent-slack-frac", "must be in [0, 1]")
        _check(self.starve_s > 0, "--ext-accelgen-starve-s", "must be > 0")
        _check(self.pack_window >= 1, "--ext-accelgen-pack-window", "must be >= 1")
        _check(0 <= self.late_gap_share < 0.1, "--ext-accelgen-late-gap-share",
               "must be in [0, 0.1) (a request meets its TBT SLO with at most 10% late gaps)")  # fmt: skip
        _check(1 <= self.late_gap_stretch < 5, "--ext-accelgen-late-gap-stretch",
               "must be in [1, 5) (a gap over 5x the TBT SLO is a stall that fails the request)")  # fmt: skip


POLICY_CHOICES = ("none", "sglang", "edf", "vllm", "sarathi", "cacheopt", "accelgen", "cacheopt+accelgen")


@dataclass(frozen=True)
class ExtConfig:
    """The whole extension config. ``policy='none'`` means stock SGLang: no hook changes any decision."""

    policy: str = opt("none", "Scheduling policy; none = stock SGLang.", POLICY_CHOICES)
    default_ttft_slo_ms: float = opt(0.0, "TTFT SLO for requests that carry none (0 = no objective).")
    default_tbt_slo_ms: float = opt(0.0, "TBT SLO for requests that carry none (0 = no objective).")
    log_decisions: bool = opt(False, "Log every policy decision in the scheduler (debug).")
    latency_profile: str = opt("cpu-tiny-torch", "Latency profile (profiles name) the policies start from.")
    sglang: SGLangBaselineConfig = field(default_factory=SGLangBaselineConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    cacheopt: CacheOptConfig = field(default_factory=CacheOptConfig)
    accelgen: AccelGenConfig = field(default_factory=AccelGenConfig)

    def __post_init__(self) -> None:
        _check(self.policy in POLICY_CHOICES, "--ext-policy",
               f"unknown policy {self.policy!r}; valid: {', '.join(POLICY_CHOICES)}")  # fmt: skip
        _check(self.default_ttft_slo_ms >= 0, "--ext-default-ttft-slo-ms", "must be >= 0")
        _check(self.default_tbt_slo_ms >= 0, "--ext-default-tbt-slo-ms", "must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.policy != "none"


SECTIONS = ("sglang", "predictor", "cacheopt", "accelgen")


def flat_fields() -> list[tuple[str, str | None, Any]]:
    """(flag name, section or None, dataclass field) for every config field: the 1:1 flag mapping."""
    out: list[tuple[str, str | None, Any]] = []
    for f in fields(ExtConfig):
        if f.name in SECTIONS:
            for sf in fields(f.default_factory()):  # type: ignore[misc]
                out.append((f"ext-{f.name}-{sf.name}".replace("_", "-"), f.name, sf))
        else:
            out.append((f"ext-{f.name}".replace("_", "-"), None, f))
    return out


def from_flat(values: dict[str, Any]) -> ExtConfig:
    """Build the config from ``{dest: value}`` where dest is the flag with ``-`` -> ``_`` (argparse's dest)."""
    top: dict[str, Any] = {}
    sec: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for flag, section, f in flat_fields():
        dest = flag.replace("-", "_")
        if dest in values and values[dest] is not None:
            (sec[section] if section else top)[f.name] = values[dest]
    sections = {s: _section_cls(s)(**kw) for s, kw in sec.items()}
    return ExtConfig(**top, **sections)


def _section_cls(name: str) -> type:
    return {f.name: f.default_factory for f in fields(ExtConfig) if f.name in SECTIONS}[name]  # type: ignore[return-value]
