"""Paged KV pool of the simulated device, with its radix cache, and the host memory swaps go to.

Why one object: "free", "evictable" and "used" must add up to the capacity at every step (the property tests
check it), and the radix cache's nodes occupy the same pages as requests' private KV. Every allocation goes
through :meth:`KVPool.alloc`, which evicts unreferenced cache on demand (as SGLang's allocator does) and refuses
to over-commit: a policy that admits more than fits is a bug the host reports, not a state it tolerates.
"""

from __future__ import annotations

from eval.sim.radix import RadixCache


class OverCommitError(RuntimeError):
    """A policy's decision needs more KV than the pool holds (free + evictable)."""


class KVPool:
    """``capacity_tokens`` of KV in pages of ``page_size`` tokens; sizes are tokens (multiples of the page)."""

    def __init__(self, capacity_tokens: int, page_size: int = 1, host_tokens: int = 0) -> None:
        if page_size <= 0 or capacity_tokens < page_size:
            raise ValueError(f"pool of {capacity_tokens} tokens cannot hold one page of {page_size}")
        self.page_size = page_size
        self.capacity = capacity_tokens // page_size * page_size
        self.free = self.capacity  # tokens in pages owned by no one
        self.cache = RadixCache(page_size)
        self.host_capacity = host_tokens
        self.host_used = 0

    @property
    def evictable(self) -> int:
        return self.cache.evictable_tokens

    @property
    def available(self) -> int:
        return self.free + self.cache.evictable_tokens

    def pages(self, tokens: int) -> int:
        """Tokens of page space ``tokens`` of private KV occupy."""
        p = self.page_size
        return -(-tokens // p) * p

    def alloc(self, tokens: int) -> None:
        """Take ``tokens`` (page-rounded by the caller) of free space, evicting cache if needed."""
        if tokens <= 0:
            return
        if tokens > self.free:
            self.free += self.cache.evict(tokens - self.free)
            if tokens > self.free:
                raise OverCommitError(f"need {tokens} KV tokens, {self.free} free and nothing left to evict")
        self.free -= tokens

    def release(self, tokens: int) -> None:
        self.free += tokens
        assert self.free <= self.capacity, "KV pool freed more than it holds"

    def host_alloc(self, tokens: int) -> bool:
        """Reserve host memory for a swap-out; False when it does not fit."""
        if self.host_used + tokens > self.host_capacity:
            return False
        self.host_used += tokens
        return True

    def host_release(self, tokens: int) -> None:
        self.host_used -= tokens
        assert self.host_used >= 0
