"""Host-side KV operations of the simulator: prefix matching and publishing in the radix cache, growing and
releasing a request's pages, and the pool accounting invariant. Split from :mod:`eval.sim.engine` (the loop) so
each stays small; the physics here is what the property tests check after every iteration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eval.sim.pool import KVPool, OverCommitError
from eval.sim.request import SimRequest

if TYPE_CHECKING:
    from policies.base import Policy


class PolicyError(RuntimeError):
    """A policy decision the host cannot apply (unknown request, over-commit, nonsense chunk)."""


class SimulationStalled(RuntimeError):
    """Requests are waiting, nothing runs, no arrival is due, and the policy admits nothing."""


class KVOps:
    """Mixin of :class:`eval.sim.engine.Simulator`: needs ``pool``, ``policy``, ``now``, ``prefix_cache`` and the
    ``waiting`` / ``prefilling`` / ``running`` dicts."""

    pool: KVPool
    policy: Policy
    now: float
    prefix_cache: bool
    waiting: dict[str, SimRequest]
    prefilling: dict[str, SimRequest]
    running: dict[str, SimRequest]

    def _match(self, r: SimRequest) -> tuple[list, int]:
        nodes, hit = self.pool.cache.match(r.blocks, r.block_lens)
        while nodes and hit >= r.seq_len:  # at least one token is always computed (SGLang does the same)
            hit -= nodes.pop().tokens
        return nodes, hit

    def _grow(self, r: SimRequest, n: int) -> None:
        private = r.kv_used - r.shared_len
        try:
            self.pool.alloc(self.pool.pages(private + n) - self.pool.pages(private))
        except OverCommitError as e:
            raise PolicyError(f"policy {self.policy.name!r} over-committed the KV pool ({r.rid}): {e}") from None
        r.kv_used += n

    def _insert_prompt(self, r: SimRequest) -> None:
        """Publish the prompt's blocks (page-aligned) to the radix cache; a block another request published
        meanwhile is shared and this request's copy freed (SGLang's insert de-duplicates the same way)."""
        cache, pool, page = self.pool.cache, self.pool, self.pool.page_size
        k = len(r.nodes)
        if not self.prefix_cache or (k and r.nodes[-1].tokens < r.block_lens[k - 1]):
            return
        parent = r.nodes[-1] if k else cache.root
        for j in range(k, len(r.blocks)):
            t = r.block_lens[j] // page * page
            if t == 0:
                return
            child = parent.children.get(r.blocks[j])
            private = r.kv_used - r.shared_len
            if child is None:
                child = cache.insert_child(parent, r.blocks[j], t, self.now)
            elif child.tokens == t:
                cache.lock([child], self.now)
                pool.release(pool.pages(private) - pool.pages(private - t))
            else:
                return
            r.nodes.append(child)
            r.shared_len += t
            parent = child

    def _release_device(self, r: SimRequest) -> None:
        self.pool.release(self.pool.pages(r.kv_used - r.shared_len))
        self.pool.cache.unlock(r.nodes, self.now)
        r.nodes = []
        r.kv_used = r.shared_len = r.prefilled_len = r.cached_len = 0

    def check_invariants(self) -> None:
        """Pool accounting: free + private pages + cache == capacity; nothing negative."""
        pool = self.pool
        private = 0
        for d in (self.prefilling, self.running):
            for r in d.values():
                assert r.kv_used >= r.shared_len >= 0, r.rid
                private += pool.pages(r.kv_used - r.shared_len)
        for r in self.waiting.values():
            assert r.kv_used == 0 and r.output_len >= 0
        assert pool.free >= 0 and 0 <= pool.cache.evictable_tokens <= pool.cache.cached_tokens
        assert pool.free + private + pool.cache.cached_tokens == pool.capacity, "KV pool accounting broken"
        assert 0 <= pool.host_used <= pool.host_capacity
