"""AccelGen (Shen & Sen, arXiv 2503.13737): A1 SLO-guaranteed dynamic chunking (:mod:`.chunk`), A2 slack priority
with similar-SLO grouping (:mod:`.priority`), A3 multi-resource batching (:mod:`.packing`); the policy
``accelgen`` (:mod:`.policy`) composes them over a :class:`~policies.kv_gate.KVGate`."""

from policies.accelgen.chunk import ChunkSizer, classify_slo, is_best_effort, min_feasible_tbt_ms
from policies.accelgen.policy import AccelGenPolicy

__all__ = ["AccelGenPolicy", "ChunkSizer", "classify_slo", "is_best_effort", "min_feasible_tbt_ms"]
