"""The one policy interface and the registry that names policies (Vidur-style registry).

A policy is constructed once per host from the validated config and an injected :class:`LatencyModel`
(time is injected: a policy never reads a clock). Hosts call it at two points:

* :meth:`Policy.plan` — when the host may form a new batch: which waiting requests join, with how many
  prefill tokens, what KV each is accounted for, the iteration's token budget, any top-ups or preemptions.
* :meth:`Policy.choose_victims` — when the next decode step does not fit in the pool: which running requests to
  preempt, in order, and how (swap or recompute).

Hosts call :meth:`Policy.on_finish` so policies that learn online (predictor feedback, reservation) can.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from policies.latency import BatchShape, LatencyModel
from policies.views import IterationPlan, Preempt, SchedulerView


class Policy(ABC):
    name: ClassVar[str] = ""
    needs_oracle: ClassVar[bool] = False  # only the Oracle (A4) is handed true output lengths
    # True: ``Admit.reserve_tokens`` is this policy's KV accounting and a host must charge exactly that. False: the
    # policy mirrors its host's own accounting (the ``sglang`` baseline), which stays in charge.
    owns_kv_accounting: ClassVar[bool] = True

    def __init__(self, latency: LatencyModel, **options: Any) -> None:
        self.latency = latency
        self.options = options

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


_REGISTRY: dict[str, Callable[..., Policy]] = {}


def register(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def deco(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def register_factory(name: str, factory: Callable[..., Policy]) -> None:
    """Register a composed policy (e.g. ``cacheopt+accelgen``) built by a function rather than a class."""
    if name in _REGISTRY:
        raise ValueError(f"policy {name!r} registered twice")
    _REGISTRY[name] = factory


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create(name: str, latency: LatencyModel, **options: Any) -> Policy:
    """Build a registered policy; an unknown name lists the valid ones."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None
    return factory(latency, **options)


def _load_builtin() -> None:
    # Importing the package modules runs their @register decorators.
    import policies.builtin  # noqa: F401
