"""The host layer: what both hosts (the SGLang adapter and the simulator) do around a policy, written once.

Policies decide; hosts apply; adapters translate. Everything a host must do the same way for a result in one host
to say something about the other lives here: the arrival-rate estimate (C1's confidence reads it), the one
allocation ledger (C2 allocations and loans, C3 top-ups and reserve draws), the KV budget a plan is executed
under (SGLang's ``PrefillBudget`` rule, fed from the ledger), how much KV a decode step must free, the filter that
turns measured iteration periods into latency samples (A1's refit), and plan application bookkeeping
(:class:`~host.core.HostCore`). The SGLang adapter only converts SGLang objects to and from this layer; the
simulator engine is the other implementation.

Engine-free: no sglang, no torch.
"""

from host.budget import PrefillBudgetRule, decode_need, kv_to_free
from host.core import HostCore
from host.ledger import BATCH, AllocationLedger
from host.measure import IterationFilter
from host.rate import ArrivalRate

__all__ = [
    "BATCH",
    "AllocationLedger",
    "ArrivalRate",
    "HostCore",
    "IterationFilter",
    "PrefillBudgetRule",
    "decode_need",
    "kv_to_free",
]
