"""Policy *variants* for ``python -m eval.compare --policies``: a registered policy plus config and host overrides.

Why variants: users compare the extension with the SGLang they run, in the batching mode they run. A variant names
that configuration (``sglang-mixed`` = stock SGLang with ``--enable-mixed-chunk``), says whether decodes ride with
prefill chunks (``mixed``), which fixes its **matched baseline** (``sglang-mixed`` for a mixed variant, ``sglang``
otherwise), and whether it sees length estimates (CacheOPT's C1; the estimates are eval.estimates', no better than
the real predictor's). The SGLang chunk is the profile's device default (profiles/sizing.py) unless the variant
sets one. Add a row to :data:`VARIANTS` to add a variant.

A variant whose policy is not registered, whose ``--ext-*`` flag the config does not have, or whose policy does not
run mixed chunk with these flags although the variant says so, is **unavailable**: listed with the reason, never
run under a wrong label (helper work still landing shows up this way).

``sglang-tuned`` is a *sweep*: SGLang with mixed chunk at every chunk of :data:`TUNED_CHUNKS`, with and without
SGLang's priority scheduling by SLO class when available; per rate the best member (highest mean SLO attainment,
then goodput) stands for it, and the output says which chunk and priority setting won.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from policies.base import Policy, policy_class
from policies.config import ConfigError, flat_fields, from_flat
from policies.latency import LatencyModel

MIXED_FLAG = {"ext_sglang_mixed_chunk": True}
PRIORITY_FLAG = {"ext_sglang_enable_priority_scheduling": True}  # SGLang --enable-priority-scheduling by SLO class
TUNED_CHUNKS = (128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class Variant:
    name: str
    policy: str  # registered policy
    flags: dict[str, Any] = field(default_factory=dict)  # --ext-* dests (argparse form)
    mixed: bool = False  # decodes ride with prefill chunks (matched baseline: sglang-mixed)
    chunk: int | None = None  # SGLang chunk; None = the profile's device default
    estimates: bool = False  # sees simulated length estimates (C1)
    what: str = ""
    sweep: tuple[Variant, ...] = ()  # members of a tuned variant (best per rate)
    attrs: dict[str, Any] = field(default_factory=dict)  # policy attributes set after construction (exact_limit)

    @property
    def matched(self) -> str:
        return "sglang-mixed" if self.mixed else "sglang"

    def label(self) -> str:
        bits = [f"chunk {self.chunk}"] if self.chunk else []
        bits += [f"{k.removeprefix('ext_')}={v}" for k, v in sorted(self.flags.items())]
        return self.name + (f" ({', '.join(bits)})" if bits else "")


def _tuned_members() -> tuple[Variant, ...]:
    out = []
    for prio in (False, True):
        for c in TUNED_CHUNKS:
            flags = {**MIXED_FLAG, **(PRIORITY_FLAG if prio else {})}
            out.append(Variant(f"sglang-mixed-c{c}{'-prio' if prio else ''}", "sglang", flags, True, c))
    return tuple(out)


def _cacheopt_ablation() -> tuple[Variant, ...]:
    """CacheOPT with mixed chunk, one component changed at a time (issue 11's ablation): the paper's per-request
    admission instead of the pool rule, and each of C2 (reuse), C3 (top-ups and reserve), C4 (victim rule; SGLang's
    retraction order instead), C5 (swap-or-recompute; always recompute), and the C2 queue order without late-last."""
    mixed = {"ext_cacheopt_mixed_chunk": True}
    rows = (
        ("paper", {"ext_cacheopt_admission": "paper"}, "the paper's per-request bound (C1) instead of the pool rule"),
        ("no-reuse", {"ext_cacheopt_reuse": False}, "C2 reuse off"),
        ("no-topup", {"ext_cacheopt_topup": False}, "C3 top-ups and reserve off"),
        ("no-victim", {"ext_cacheopt_victim": False}, "C4 victim rule off (SGLang's retraction order)"),
        ("recompute", {"ext_cacheopt_swap_or_recompute": False}, "C5 off: every preemption recomputes"),
        ("fifo", {"ext_cacheopt_late_last": False}, "queue order without late-last (oldest first)"),
    )
    return tuple(
        Variant(f"cacheopt-mixed-{n}", "cacheopt", {**mixed, **f}, True, estimates=True, what=f"ablation: {w}")
        for n, f, w in rows
    )


def _accelgen_ablation() -> tuple[Variant, ...]:
    """AccelGen with one of A1 (dynamic chunk), A2 (least-slack order, grouping) or A3 (packing) off, or one of the
    robustness pieces added for issue 12 off: A2's chunk yield, A1's TTFT guard, A1's measured-error margin, A1's
    late-gap allowance."""
    rows = (
        ("a1-off", {"ext_accelgen_dynamic_chunk": False}, "A1 off (fixed chunk)"),
        ("a2-off", {"ext_accelgen_slo_priority": False}, "A2 off (arrival order)"),
        ("a3-off", {"ext_accelgen_multi_resource": False}, "A3 off (no compute + KV packing)"),
        ("no-yield", {"ext_accelgen_chunk_yield": False}, "A2's chunk yield off (the chunked prefill keeps its turn)"),
        ("no-guard", {"ext_accelgen_ttft_guard": 0.0}, "A1's TTFT guard off"),
        ("no-margin", {"ext_accelgen_error_margin": False}, "A1's measured-error margin off"),
        ("no-late-gaps", {"ext_accelgen_late_gap_share": 0.0}, "A1's late-gap allowance off"),
    )
    return tuple(Variant(f"accelgen-{n}", "accelgen", f, True, what=f"ablation: {w}") for n, f, w in rows)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sglang", "sglang", what="stock SGLang 0.5.23 defaults (prefill batches alternate with decodes)"),
        Variant("sglang-mixed", "sglang", MIXED_FLAG, True, what="stock SGLang with --enable-mixed-chunk"),
        Variant("sglang-priority", "sglang", PRIORITY_FLAG,
                what="stock SGLang with --enable-priority-scheduling (priority = SLO class)"),
        Variant("sglang-mixed-priority", "sglang", {**MIXED_FLAG, **PRIORITY_FLAG}, True,
                what="stock SGLang with mixed chunk and priority scheduling by SLO class"),
        Variant("sglang-tuned", "sglang", MIXED_FLAG, True, sweep=_tuned_members(),
                what=f"best per rate of SGLang + mixed chunk over chunks {TUNED_CHUNKS}, with/without priority"),
        Variant("cacheopt", "cacheopt", estimates=True, what="CacheOPT C1-C5, SGLang's batching (no mixed chunk)"),
        Variant("cacheopt-mixed", "cacheopt", {"ext_cacheopt_mixed_chunk": True}, True, estimates=True,
                what="CacheOPT C1-C5 with decodes riding with prefill chunks"),
        Variant("accelgen", "accelgen", mixed=True, what="AccelGen A1-A3 (dynamic chunk, least slack, packing)"),
        Variant("cacheopt+accelgen", "cacheopt+accelgen", mixed=True, estimates=True,
                what="AccelGen's batching with CacheOPT's KV management"),
        Variant("sarathi", "sarathi", mixed=True, what="Sarathi-Serve stall-free batching, fixed chunk"),
        Variant("vllm", "vllm", mixed=True, what="vLLM v1 chunked prefill, admit until full, recompute"),
        Variant("edf", "edf", MIXED_FLAG, True, what="deadline (EDF) ordering over SGLang's admission, mixed chunk"),
        Variant("oracle", "oracle", mixed=True, what="AccelGen's A4 Oracle (true lengths; a reference, not a system)"),
        Variant("oracle-exact", "oracle", mixed=True, attrs={"exact_limit": 8},
                what="the A4 Oracle searching every order up to 8 candidates (exact on small instances)"),
    )
} | {v.name: v for v in (*_cacheopt_ablation(), *_accelgen_ablation())}  # fmt: skip


def _known_flags() -> set[str]:
    return {flag.replace("-", "_") for flag, _s, _f in flat_fields()}


def unavailable_reason(v: Variant) -> str | None:
    """Why ``v`` cannot run on this checkout, or None."""
    if v.sweep:
        reasons = [unavailable_reason(m) for m in v.sweep]
        return reasons[0] if all(reasons) else None
    try:
        cls = policy_class(v.policy)
    except ValueError:
        return f"policy {v.policy!r} is not registered"
    unknown = sorted(set(v.flags) - _known_flags())
    if unknown:
        return f"config has no flag {', '.join('--' + u.replace('_', '-') for u in unknown)}"
    try:
        cfg = from_flat(v.flags)
    except (ConfigError, TypeError, ValueError) as e:
        return f"bad flags: {e}"
    if v.mixed and not cls.needs_mixed_chunk(cfg):
        return f"policy {v.policy!r} does not run mixed chunk with {v.flags or 'its defaults'}"
    if not v.mixed and cls.needs_mixed_chunk(cfg):
        return f"policy {v.policy!r} runs mixed chunk: declare the variant mixed"
    return None


def available_members(v: Variant) -> tuple[Variant, ...]:
    """A sweep's runnable members (or the variant itself)."""
    if not v.sweep:
        return (v,)
    return tuple(m for m in v.sweep if unavailable_reason(m) is None)


def resolve(names: list[str]) -> tuple[list[Variant], dict[str, str]]:
    """The requested variants plus their matched baselines (added when missing), and the unavailable ones with
    their reasons. Unknown names raise a ValueError listing the valid ones."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    order = list(dict.fromkeys(names))
    for n in list(order):
        if VARIANTS[n].matched not in order:
            order.append(VARIANTS[n].matched)
    ok, missing = [], {}
    for n in order:
        why = unavailable_reason(VARIANTS[n])
        if why is None:
            ok.append(VARIANTS[n])
        else:
            missing[n] = why
    return ok, missing


def build_policy(v: Variant, latency: LatencyModel, *, page_size: int, chunk: int, context_len: int | None,
                 extra_flags: dict[str, Any] | None = None) -> Policy:  # fmt: skip
    """The variant's policy for the simulator host, at SGLang chunk ``v.chunk or chunk``."""
    from eval.sim import sim_capabilities

    flags = {**v.flags, **(extra_flags or {})}
    if v.policy in _policy_choices():
        flags.setdefault("ext_policy", v.policy)
    cfg = from_flat(flags)
    c = v.chunk or chunk
    cfg = replace(cfg, sglang=replace(cfg.sglang, chunked_prefill_size=c))
    caps = sim_capabilities(v.policy, cfg, page_size=page_size, chunk=c, context_len=context_len)
    pol = policy_class(v.policy)(latency, cfg, caps)
    for k, val in v.attrs.items():
        if not hasattr(pol, k):
            raise ValueError(f"variant {v.name}: policy {v.policy!r} has no attribute {k!r}")
        setattr(pol, k, val)
    return pol


def _policy_choices() -> tuple[str, ...]:
    from policies.config import POLICY_CHOICES

    return POLICY_CHOICES
