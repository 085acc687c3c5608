"""The one policy interface and the registry that names policies (Vidur-style registry).

A policy is constructed once per host from an injected :class:`LatencyModel` (time is injected: a policy never reads
a clock), the validated :class:`~policies.config.ExtConfig` and the host's :class:`HostCapabilities` — typed, no
option bags. Hosts call it at two points:

* :meth:`Policy.plan` — when the host may form a new batch: which waiting requests join, with how many
  prefill tokens, what KV each is accounted for, the iteration's token budget, any top-ups or preemptions.
* :meth:`Policy.choose_victims` — when the next decode step does not fit in the pool: which running requests to
  preempt, in order, and how (swap or recompute).

Hosts call :meth:`Policy.on_finish` so policies that learn online (predictor feedback, reservation) can.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from policies.latency import BatchShape, LatencyModel
from policies.views import IterationPlan, Preempt, SchedulerView


class Policy(ABC):
    name: ClassVar[str] = ""
    needs_oracle: ClassVar[bool] = False  # only the Oracle (A4) is handed true output lengths
    # True: ``Admit.reserve_tokens`` is this policy's KV accounting and a host must charge exactly that. False: the
    # policy mirrors its host's own accounting (the ``sglang`` baseline), which stays in charge.
    owns_kv_accounting: ClassVar[bool] = True

    def __init__(
        self, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
    ) -> None:
        self.latency = latency
        self.config = config if config is not None else ExtConfig()
        self.host = host if host is not None else HostCapabilities()

    @classmethod
    def needs_mixed_chunk(cls, config: ExtConfig) -> bool:
        """Whether this policy's plans assume decodes run in the same forward as prefill chunks (SGLang's
        ``--enable-mixed-chunk``); the plugin turns that mode on for it and the simulator runs it that way."""
        return False

    @property
    def mixed(self) -> bool:
        """The batching mode plans are made for: the host's, or the policy's own need."""
        return self.host.mixed_chunk or self.needs_mixed_chunk(self.config)

    @abstractmethod
    def plan(self, view: SchedulerView) -> IterationPlan:
        """Decide this iteration's admissions/budget. Must never admit more KV than ``view.pool`` can hold."""

    @abstractmethod
    def choose_victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        """Pick running requests to preempt until ``tokens_needed`` KV tokens are free (in preemption order)."""

    def on_finish(self, rid: str, output_len: int) -> None:  # noqa: B027 - optional hook
        """A request finished with ``output_len`` tokens (feedback for predictors/reservations)."""

    def observe_iteration(self, shape: BatchShape, seconds: float) -> None:  # noqa: B027 - optional hook
        """The host measured an iteration of ``shape`` taking ``seconds`` (AccelGen A1 refits from these)."""


_REGISTRY: dict[str, type[Policy]] = {}


def register(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def deco(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """The registered class called ``name``; an unknown name lists the valid ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def create(
    name: str, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
) -> Policy:
    """Build a registered policy; an unknown name lists the valid ones."""
    return policy_class(name)(latency, config, host)


def _load_builtin() -> None:
    # Importing the package modules runs their @register decorators.
    import policies.builtin  # noqa: F401
