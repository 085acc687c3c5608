"""Router policies in front of simulated replicas (issue 14): round-robin and SGLang router's cache-aware rule.

``prefix`` is the cache-aware policy of SGLang's router as the pinned ``smg`` documents it (``--policy
cache_aware``; docs ``concepts/routing/cache-aware.md`` and source ``policies/cache_aware.rs``), with its defaults:

1. Load = requests in flight per worker (sent, not yet answered). The system is *imbalanced* when
   ``max - min > balance_abs_threshold`` (64) **and** ``max > balance_rel_threshold * min`` (1.5): then the request
   goes to the least-loaded worker (the tree still records it there).
2. Otherwise the router matches the request against its *approximate* radix tree: one tree of the prompts it has
   routed, each node tagged with the workers it sent them to (over HTTP the router cannot see the workers' real
   caches). If the matched share of the prompt exceeds ``cache_threshold`` (0.3) the request goes to a worker
   holding the deepest matched node; else to the least-loaded worker.

Here the router's text is the prompt's blocks (Mooncake ``hash_ids``: equal ids = equal 512-token content; requests
without ids have private blocks), sizes are tokens instead of characters, and ties go to the lowest index. Among
the workers holding the deepest node the most recently routed one is taken (the router takes the first its hash map
yields). Not modelled: the tree's LRU eviction past ``max_tree_size`` (:attr:`CacheAware.largest_tree_tokens`
reports how large a worker's tree grew), the older ``sglang-router``'s miss rule (the smallest tree instead of the
least load), and smg 1.13's refinement of step 1 that its ``--help`` describes (a matched worker spills to the
least-loaded one when its load exceeds the fleet mean by the thresholds, with a margin capped near two standard
deviations of the in-flight count): its source was not available to read.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from eval.workloads import RequestSpec

ROUTERS = ("rr", "prefix")


def request_blocks(spec: RequestSpec, block_tokens: int) -> tuple[tuple[Hashable, ...], tuple[int, ...]]:
    """(block ids, tokens per block) of a prompt, as the simulator's radix cache cuts it: the trace's block ids,
    then private ids for the rest."""
    bt = spec.prefix_block_tokens if spec.prefix_hash_ids and spec.prefix_block_tokens > 0 else block_tokens
    n = -(-spec.prompt_len // bt)
    lens = tuple(min(bt, spec.prompt_len - j * bt) for j in range(n))
    ids = tuple(spec.prefix_hash_ids[:n])
    return ids + tuple((spec.rid, j) for j in range(len(ids), n)), lens


class RoundRobin:
    """Request ``i`` goes to replica ``i mod N`` (the router's ``--policy round_robin``)."""

    name = "rr"

    def __init__(self, replicas: int) -> None:
        self.n = replicas
        self._next = 0
        self.decisions: dict[str, int] = {}

    def route(self, spec: RequestSpec, loads: Sequence[int]) -> int:
        k = self._next
        self._next = (k + 1) % self.n
        return k


@dataclass(frozen=True)
class CacheAwareSettings:
    """The router's ``--cache-threshold``, ``--balance-abs-threshold``, ``--balance-rel-threshold`` (defaults)."""

    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5


@dataclass
class _Node:
    tokens: int
    children: dict[tuple[Hashable, int], _Node] = field(default_factory=dict)
    tenants: dict[int, int] = field(default_factory=dict)  # replica -> sequence number of its last routing here


class CacheAware:
    """SGLang router's cache-aware policy over an approximate per-router prefix tree (module docstring)."""

    name = "prefix"

    def __init__(self, replicas: int, block_tokens: int, settings: CacheAwareSettings | None = None) -> None:
        self.n = replicas
        self.block_tokens = block_tokens
        self.s = settings or CacheAwareSettings()
        self.root = _Node(0)
        self.tree_tokens = [0] * replicas  # tokens of the tree tagged with each replica (reported, not routed on)
        self._seq = 0
        self.decisions = {"imbalanced": 0, "cache_hit": 0, "cache_miss": 0}

    @property
    def largest_tree_tokens(self) -> int:
        return max(self.tree_tokens)

    def route(self, spec: RequestSpec, loads: Sequence[int]) -> int:
        blocks, lens = request_blocks(spec, self.block_tokens)
        hi, lo = max(loads), min(loads)
        least = min(range(self.n), key=lambda i: (loads[i], i))
        if hi - lo > self.s.balance_abs_threshold and hi > lo * self.s.balance_rel_threshold:
            k = least
            self.decisions["imbalanced"] += 1
        else:
            matched, holder = self._match(blocks, lens)
            rate = matched / spec.prompt_len if spec.prompt_len > 0 else 0.0
            if holder is not None and rate > self.s.cache_threshold:
                k = holder
                self.decisions["cache_hit"] += 1
            else:
                k = least
                self.decisions["cache_miss"] += 1
        self._insert(blocks, lens, k)
        return k

    def _match(self, blocks: Sequence[Hashable], lens: Sequence[int]) -> tuple[int, int | None]:
        node, hit = self.root, 0
        for b, n in zip(blocks, lens, strict=True):
            child = node.children.get((b, n))
            if child is None:
                break
            node, hit = child, hit + n
        if node is self.root or not node.tenants:
            return 0, None
        return hit, max(node.tenants, key=lambda t: node.tenants[t])

    def _insert(self, blocks: Sequence[Hashable], lens: Sequence[int], k: int) -> None:
        self._seq += 1
        node = self.root
        for b, n in zip(blocks, lens, strict=True):
            child = node.children.get((b, n))
            if child is None:
                child = node.children[(b, n)] = _Node(n)
            if k not in child.tenants:
                self.tree_tokens[k] += n
            child.tenants[k] = self._seq
            node = child


def make_router(name: str, replicas: int, block_tokens: int) -> RoundRobin | CacheAware:
    if name == "rr":
        return RoundRobin(replicas)
    if name == "prefix":
        return CacheAware(replicas, block_tokens)
    raise ValueError(f"--router: unknown router {name!r}; valid: {', '.join(ROUTERS)}")
