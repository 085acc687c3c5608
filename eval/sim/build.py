"""Build a policy for the simulator host: the simulator declares its :class:`HostCapabilities` like the SGLang adapter
does (page size, chunk, batching mode), so a policy is constructed the same way in both hosts.

The simulator supports both batching modes; it runs a policy in the mode the policy needs (``needs_mixed_chunk``),
exactly as the plugin turns SGLang's ``--enable-mixed-chunk`` on for such a policy.
"""

from __future__ import annotations

from policies.base import Policy, policy_class
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from policies.latency import LatencyModel


def sim_capabilities(
    name: str, config: ExtConfig, *, page_size: int = 1, chunk: int | None = None, context_len: int | None = None
) -> HostCapabilities:
    """What the simulator host offers policy ``name``: swap and measured iterations always; mixed chunk when the
    policy needs it; ``chunk`` (e.g. a Sarathi budget) overrides the config's ``chunked_prefill_size``."""
    return HostCapabilities(
        page_size=page_size,
        chunked_prefill_size=chunk,
        mixed_chunk=policy_class(name).needs_mixed_chunk(config),
        swap=True,
        measures_iterations=True,
        context_len=context_len,
    )


def make_policy(
    name: str,
    latency: LatencyModel,
    config: ExtConfig | None = None,
    *,
    page_size: int = 1,
    chunk: int | None = None,
    context_len: int | None = None,
) -> Policy:
    """Registered policy ``name`` built for the simulator host (see :func:`sim_capabilities`)."""
    cfg = config if config is not None else ExtConfig()
    caps = sim_capabilities(name, cfg, page_size=page_size, chunk=chunk, context_len=context_len)
    return policy_class(name)(latency, cfg, caps)
