"""``cacheopt+accelgen``: AccelGen's batching (A1 budget, A2 order, A3 packing) with CacheOPT's KV management
(C1 bounded demand, C2 allocation + reuse, C3 top-ups + reserve, C4 victims, C5 swap-or-recompute).

The two compose through the :class:`~policies.kv_gate.KVGate` interface and nothing else: AccelGen decides the
order and the token budget and asks the gate whether each candidate's KV fits; CacheOPT's
:class:`~policies.cacheopt.gate.CacheOptGate` answers, adds its top-ups to the plan and picks victims. No code
path in either policy knows about the other.
"""

from __future__ import annotations

from typing import Any

from policies.accelgen.policy import AccelGenPolicy
from policies.base import Policy, register_factory
from policies.common import config_of
from policies.latency import LatencyModel


def make_cacheopt_accelgen(latency: LatencyModel, **options: Any) -> Policy:
    """Build ``AccelGenPolicy`` with ``CacheOptGate(config.cacheopt, latency)`` as its gate. Options as both."""
    from policies.cacheopt.gate import CacheOptGate  # imported here: policies.builtin may load this module first

    cfg = config_of(options)
    gate = CacheOptGate(cfg.cacheopt, latency, reserve_tokens=options.get("reserve_tokens"))
    policy = AccelGenPolicy(latency, **{**options, "gate": gate})
    policy.name = "cacheopt+accelgen"
    return policy


register_factory("cacheopt+accelgen", make_cacheopt_accelgen)
