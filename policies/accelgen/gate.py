"""AccelGen's default KV gate: :class:`~policies.kv_gate.PhysicalKVGate` made page-aware.

Why: on a paged pool (16-token pages on the GPU profiles) a chunk of ``n`` tokens takes ``ceil_page(n)`` tokens and
a decode takes a whole page whenever a sequence crosses a page boundary; counting tokens, as the base gate does,
over-commits the pool by up to a page per request. This gate keeps the base gate's rule (admit while the chunk and
one decode step fit in what is physically available, no reservation) in pages, and counts the cached prefix a
starting request pins (it leaves the evictable pool). A3 never exceeds KV through it.
"""

from __future__ import annotations

from policies.common import ceil_page, decode_need
from policies.kv_gate import PhysicalKVGate
from policies.views import Admit, SchedulerView, WaitingView


class PagedPhysicalGate(PhysicalKVGate):
    def __init__(self) -> None:
        super().__init__()
        self._page = 1

    def begin(self, view: SchedulerView) -> None:
        self._page = view.pool.page_size
        self._left = view.pool.available_tokens - decode_need(view.running, self._page)

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        page = self._page
        if req.swapped_out:  # swap-in brings its whole private KV back
            need = ceil_page(max(req.seq_len - req.cached_len, 0), page) + page
        else:
            done = max(req.prefilled_len - req.cached_len, 0)
            need = ceil_page(done + prefill_tokens, page) - ceil_page(done, page) + page
            if req.prefilled_len == 0:  # starting: its cached prefix gets pinned and stops being evictable
                need += req.cached_len
        if need > self._left:
            return None
        self._left -= need
        return Admit(req.rid, prefill_tokens, reserve_tokens=need)
