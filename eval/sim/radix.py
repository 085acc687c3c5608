"""Radix prefix cache of the simulator, in prompt blocks (Mooncake ``hash_ids``: one id per 512-token block).

Why blocks and not tokens: the traces carry no token ids, only block hashes (Mooncake) or nothing (Azure). A
node is one block of a prompt under its parent; equal id paths are equal prefixes, which is exactly the sharing
the trace encodes. Requests without hash ids get private ids, so a preempted request still hits its own prompt
when it is re-prefilled, as it does in SGLang (its prompt stays in the radix tree, unlocked, after retraction).

Node lengths are floored to whole pages (SGLang's paged radix cache keeps only page-aligned prefixes), so a
request's shared prefix is page-aligned and its private tail starts on a page boundary. Nodes locked by a
running request are in use; unreferenced nodes are evictable, leaves first, least recently used first (SGLang's
default ``--radix-eviction-policy lru``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Sequence
from typing import Any


class Node:
    __slots__ = ("block", "children", "heap_tag", "last_used", "parent", "ref", "tokens", "watchers")

    def __init__(self, block: Hashable, parent: Node | None, tokens: int) -> None:
        self.block = block
        self.parent = parent
        self.children: dict[Hashable, Node] = {}
        self.tokens = tokens
        self.ref = 0
        self.last_used = 0.0
        self.heap_tag = -1
        self.watchers: list = []  # waiting requests whose cached match runs through this node


class RadixCache:
    """Block-granular prefix tree with lock counts and LRU leaf eviction; sizes in tokens (page-aligned)."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.root = Node(None, None, 0)
        self.root.ref = 1  # never evicted
        self.cached_tokens = 0  # tokens held by all nodes
        self.evictable_tokens = 0  # tokens held by unreferenced nodes
        self.epoch = 0  # bumped on every insert/evict: a waiting request's match is stale after it changes
        self._heap: list[tuple[float, int, Node]] = []
        self._tags = itertools.count()
        self._child_watch: dict[tuple[int, Hashable], list] = {}
        self.stale: list = []  # requests whose match went stale since the host last looked (it drains this)

    def watch(self, path: Sequence[Node], blocks: Sequence[Hashable], req: Any) -> None:
        """Remember that ``req`` (an object with ``match_epoch``) matched ``path``: an eviction on the path, or an
        insert of its next block, sets ``req.match_epoch = -1`` (stale). Keeps waiting requests' ``cached_len``
        exact without re-matching the whole queue after every cache change."""
        for nd in path:
            nd.watchers.append(req)
        if len(path) < len(blocks):
            parent = path[-1] if path else self.root
            self._child_watch.setdefault((id(parent), blocks[len(path)]), []).append(req)

    def _invalidate(self, reqs: list) -> None:
        for r in reqs:
            if r.match_epoch >= 0:
                r.match_epoch = -1
                self.stale.append(r)

    def match(self, blocks: Sequence[Hashable], lens: Sequence[int]) -> tuple[list[Node], int]:
        """Nodes of the longest cached prefix of ``blocks`` (block ``i`` holds ``lens[i]`` prompt tokens) and
        the tokens they cover. Equal ids are equal content, so a node matches only a block of its own length
        (page-floored); a block shorter than a page, or a floored one, ends the match."""
        node = self.root
        path: list[Node] = []
        hit = 0
        page = self.page_size
        for b, n in zip(blocks, lens, strict=False):
            child = node.children.get(b)
            if child is None or child.tokens != n // page * page or child.tokens == 0:
                break
            path.append(child)
            hit += child.tokens
            if child.tokens < n:
                break
            node = child
        return path, hit

    def lock(self, nodes: Sequence[Node], now: float) -> None:
        for nd in nodes:
            if nd.ref == 0:
                self.evictable_tokens -= nd.tokens
            nd.ref += 1
            nd.last_used = now

    def unlock(self, nodes: Sequence[Node], now: float) -> None:
        for nd in reversed(nodes):
            nd.ref -= 1
            assert nd.ref >= 0, "radix node unlocked more often than locked"
            nd.last_used = now
            if nd.ref == 0:
                self.evictable_tokens += nd.tokens
                if not nd.children:
                    self._push(nd)

    def insert_child(self, parent: Node, block: Hashable, tokens: int, now: float) -> Node:
        """Add a locked node (its inserting request holds it) of ``tokens`` (page-aligned) under ``parent``."""
        assert tokens % self.page_size == 0 and tokens > 0
        nd = Node(block, parent, tokens)
        nd.ref = 1
        nd.last_used = now
        parent.children[block] = nd
        self.cached_tokens += tokens
        self.epoch += 1
        watchers = self._child_watch.pop((id(parent), block), None)
        if watchers:
            self._invalidate(watchers)
        return nd

    def evict(self, tokens: int) -> int:
        """Evict unreferenced leaves (LRU) until ``tokens`` are freed or nothing is evictable; returns freed."""
        freed = 0
        heap = self._heap
        while freed < tokens and heap:
            _, tag, nd = heapq.heappop(heap)
            if nd.heap_tag != tag or nd.ref != 0 or nd.children:
                continue  # stale entry
            parent = nd.parent
            assert parent is not None
            del parent.children[nd.block]
            nd.heap_tag = -1
            if nd.watchers:
                self._invalidate(nd.watchers)
                nd.watchers = []
            freed += nd.tokens
            self.cached_tokens -= nd.tokens
            self.evictable_tokens -= nd.tokens
            if parent is not self.root and parent.ref == 0 and not parent.children:
                self._push(parent)
        if freed:
            self.epoch += 1
        return freed

    def _push(self, nd: Node) -> None:
        tag = next(self._tags)
        nd.heap_tag = tag
        heapq.heappush(self._heap, (nd.last_used, tag, nd))
