"""``HostCore``: the state and bookkeeping both hosts keep around a policy, so a plan means the same in each.

A host (the SGLang adapter, the simulator engine) owns its engine state and builds the views; ``HostCore`` owns
what is *not* engine state but must follow the same rules in both: arrivals and the rate estimate, the allocation
ledger, the budget each plan is executed under, the iteration filter, and the counters of what was planned and
what was executed. The call sequence of one iteration::

    core.arrived(rid, t)                        # per arrival
    view fields: core.arrival_rate(now), core.allocation(rid, kv_used)
    plan = core.plan(view)                      # the policy decides; top-ups and reserve draws enter the ledger
    core.budget_hold(running)                   # free KV the plan keeps back (the engine budget's offset)
    core.admission_terms(admit, waiting_view)   # (budget tokens, reserved output) of one planned admission
    core.committed(admit, waiting_view)         # the engine executed that admission: the ledger records it
    core.preempted(rid, mode) / core.finished(rid, output_len)
    core.victims(view, tokens_needed)           # decode OOM
    core.measured(shape, seconds)               # one iteration's duration (filtered, then to the policy)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from host.budget import default_budget_tokens
from host.ledger import AllocationLedger
from host.measure import IterationFilter
from host.rate import DEFAULT_WINDOW_S, ArrivalRate
from policies.base import Policy
from policies.common import ceil_page
from policies.latency import BatchShape
from policies.views import Admit, IterationPlan, Preempt, PreemptMode, SchedulerView, WaitingView

_EMPTY = IterationPlan()


@dataclass(frozen=True, slots=True)
class AllocationFields:
    """A running request's ledger state as its view carries it."""

    kv_allocated: int
    kv_lent: int = 0
    lender: str | None = None
    reserve_drawn: int = 0
    cached: int | None = None  # the prefix cached at admission (None: no allocation)


class HostCore:
    def __init__(
        self,
        policy: Policy,
        *,
        rate_window_s: float = DEFAULT_WINDOW_S,
        iteration_filter: IterationFilter | None = None,
    ) -> None:
        self.policy = policy
        self.ledger = AllocationLedger()
        self.rate = ArrivalRate(rate_window_s)
        self.filter = iteration_filter if iteration_filter is not None else IterationFilter()
        self.counters: Counter[str] = Counter()
        self.plan_: IterationPlan = _EMPTY
        self.owns_kv = policy.owns_kv_accounting
        self._page = policy.host.page_size
        hook = getattr(type(policy), "observe_iteration", Policy.observe_iteration)
        self._observes = hook is not Policy.observe_iteration

    # --- arrivals ----------------------------------------------------------------------------------------------
    def arrived(self, rid: str, t: float) -> None:
        self.rate.observe(t)
        self.counters["arrivals"] += 1

    def arrival_rate(self, now: float) -> float:
        return self.rate.rate(now)

    # --- view fields -------------------------------------------------------------------------------------------
    def allocation(self, rid: str, kv_used: int) -> AllocationFields:
        """The ledger's view of a running (or mid-prefill) request; one without an allocation holds what it uses."""
        e = self.ledger.get(rid)
        if e is None:
            return AllocationFields(kv_used)
        return AllocationFields(max(e.cached + e.alloc, kv_used), self.ledger.lent(rid), e.lender, e.drawn, e.cached)

    # --- planning ----------------------------------------------------------------------------------------------
    def plan(self, view: SchedulerView) -> IterationPlan:
        plan = self.policy.plan(view)
        self.plan_ = plan
        drawn = dict(plan.reserve_draws)
        for rid, n in plan.topups:
            if self.ledger.topup(rid, n, from_reserve=rid in drawn):
                self.counters["topups"] += 1
                self.counters["topup_tokens"] += n
        self.counters["reserve_draws"] += len(plan.reserve_draws)
        self.counters["plans"] += 1
        self.counters["planned_admits"] += len(plan.admit)
        self.counters["planned_reuse"] += sum(a.host_rid is not None for a in plan.admit)
        return plan

    def budget_hold(self) -> int:
        """Free KV the current plan keeps back in the engine's admission budget (SGLang's ``total_offset`` before the
        pass): the policy's ``kv_hold`` — running requests' promised growth and the global reserve (C3). A plan
        without one reserves nothing: its admissions are checked physically only (hold 0, no output charged)."""
        hold = self.plan_.kv_hold
        return max(hold, 0) if hold is not None else 0

    def admission_terms(self, admit: Admit, w: WaitingView) -> tuple[int, int]:
        """(budget tokens, reserved output) of a planned admission: what the engine's budget check charges it and
        the output its commit reserves (SGLang's ``total_tokens`` and ``max_new_tokens``). A continued chunk of an
        admitted request, and any admission of a plan that holds nothing, are charged their immediate KV only."""
        page = self._page
        if admit.rid in self.ledger or self.plan_.kv_hold is None:
            return default_budget_tokens(admit.prefill_tokens, 0, page), 0
        if admit.budget_tokens is not None:
            out = admit.budget_tokens - ceil_page(admit.prefill_tokens, page) - page
            return admit.budget_tokens, max(out, 0)
        prompt_private = max(w.seq_len - w.cached_len, 0)
        out = 0 if admit.host_rid is not None else max(admit.reserve_tokens - prompt_private, 0)
        return default_budget_tokens(admit.prefill_tokens, out, page), out

    def committed(self, admit: Admit, w: WaitingView) -> None:
        """The engine executed ``admit``: record the allocation (private tokens, beside the cached prefix)."""
        if admit.rid in self.ledger:
            return
        prompt_private = max(w.seq_len - w.cached_len, 0)
        output = max(admit.reserve_tokens - prompt_private, 0)
        self.ledger.commit(admit.rid, max(admit.reserve_tokens, 0), w.cached_len, admit.host_rid, output)
        self.counters["admitted"] += 1
        if admit.host_rid is not None:
            self.counters["reuse_admits"] += 1
            self.counters["reused_tokens"] += max(admit.reserve_tokens, 0)
        else:
            self.counters["reserved_tokens"] += max(admit.reserve_tokens, 0)

    def refused(self, admit: Admit) -> None:
        """The engine's budget refused a planned admission (policy and host disagree: counted, never silent)."""
        self.counters["budget_refusals"] += 1

    # --- leaving the running batch ----------------------------------------------------------------------------
    def victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        return self.policy.choose_victims(view, tokens_needed)

    def preempted(self, rid: str, mode: PreemptMode) -> None:
        self.ledger.release(rid)
        self.counters[f"preempt_{mode.value}"] += 1

    def finished(self, rid: str, output_len: int) -> None:
        self.ledger.release(rid)
        self.policy.on_finish(rid, output_len)
        self.counters["finished"] += 1

    def aborted(self, rid: str, output_len: int = 0) -> None:
        """The request left without finishing (aborted by the engine or the client): its allocation returns and
        the policy learns it left (``on_finish`` with what it produced)."""
        self.ledger.release(rid)
        self.policy.on_finish(rid, output_len)
        self.counters["aborted"] += 1

    # --- measurements -------------------------------------------------------------------------------------------
    def measured(self, shape: BatchShape, seconds: float, predicted_s: float | None = None) -> bool:
        """One iteration of ``shape`` took ``seconds``; True when it was a latency sample given to the policy."""
        if not self._observes:
            return False
        if predicted_s is None:
            predicted_s = self.policy.latency.iteration_s(shape)
        if not self.filter.accept(seconds, predicted_s):
            self.counters["iterations_dropped"] += 1
            return False
        self.policy.observe_iteration(shape, seconds)
        self.counters["iterations_measured"] += 1
        return True
