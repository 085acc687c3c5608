"""``cacheopt+accelgen``: AccelGen's batching (A1 budget, A2 order, A3 packing) with CacheOPT's KV management
(C1 bounded demand, C2 allocation + reuse, C3 top-ups + reserve, C4 victims, C5 swap-or-recompute).

The two compose through the :class:`~policies.kv_gate.KVGate` interface and nothing else: AccelGen decides the
order and the token budget and asks the gate whether each candidate's KV fits; CacheOPT's
:class:`~policies.cacheopt.gate.CacheOptGate` answers, adds its top-ups to the plan and picks victims. No code
path in either policy knows about the other.
"""

from __future__ import annotations

from policies.accelgen.policy import AccelGenPolicy
from policies.base import register
from policies.cacheopt.gate import CacheOptGate
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from policies.latency import LatencyModel


@register("cacheopt+accelgen")
class CacheOptAccelGenPolicy(AccelGenPolicy):
    """``AccelGenPolicy`` with ``CacheOptGate(config.cacheopt, latency)`` as its gate."""

    def __init__(
        self, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
    ) -> None:
        config = config if config is not None else ExtConfig()
        host = host if host is not None else HostCapabilities()
        gate = CacheOptGate(config.cacheopt, latency, mixed=True, swap=host.swap)  # AccelGen's plans are mixed
        super().__init__(latency, config, host, gate=gate)
