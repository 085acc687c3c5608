"""CacheOPT (C1-C5): KV demand from bounded predictions, allocation with reuse, proactive top-up with a global
reserve, victim selection, swap or recompute. Importing the package registers the ``cacheopt`` policy."""

from policies.cacheopt.gate import CacheOptGate
from policies.cacheopt.policy import CacheOptPolicy

__all__ = ["CacheOptGate", "CacheOptPolicy"]
