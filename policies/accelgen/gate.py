"""AccelGen's KV gates: :class:`~policies.kv_gate.PhysicalKVGate` made page-aware, and the default
:class:`DemandKVGate` that also keeps the expected growth of admitted requests.

Why: on a paged pool (16-token pages on the GPU profiles) a chunk of ``n`` tokens takes ``ceil_page(n)`` tokens and
a decode takes a whole page whenever a sequence crosses a page boundary; counting tokens, as the base gate does,
over-commits the pool by up to a page per request. This gate keeps the base gate's rule (admit while the chunk and
one decode step fit in what is physically available, no reservation) in pages, and counts the cached prefix a
starting request pins (it leaves the evictable pool). A3 never exceeds KV through it.
"""

from __future__ import annotations

from policies.common import ceil_page, decode_need
from policies.kv_gate import PhysicalKVGate
from policies.views import Admit, RunningView, SchedulerView, WaitingView


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


class DemandKVGate(PagedPhysicalGate):
    """A3's KV side, AccelGen's default: admit while every admitted and running request's *expected* remaining KV
    fits, so the pool is filled without driving the running batch into preemptions.

    Expected output of a request: its predictor estimate's point when the host attached one (C1's predictor), else
    the mean output length of the requests finished so far (learned online from ``on_finish``; starts at
    ``prior_output`` worth ``prior_weight`` requests), capped by its ``max_new_tokens``. Per pass:

    * ``begin``: physically available KV, minus the next decode step's pages, minus each running request's expected
      remaining output (in pages) — the growth already promised;
    * ``admit``: the chunk's pages + one decode page + the pages of the rest of its prompt and its expected output;
      a starting request also pins its cached prefix. When nothing runs and nothing was admitted in the pass, the
      physical rule alone applies (an empty server always makes progress).

    Requests that outgrow their expectation are preempted by the base gate's victim rule (newest first) when the
    pool runs out; CacheOPT's gate (``cacheopt+accelgen``) replaces all of this with bounded estimates, top-ups, a
    reserve and its own victims.
    """

    def __init__(self, prior_output: float = 256.0, prior_weight: float = 8.0) -> None:
        super().__init__()
        self._sum = prior_output * prior_weight
        self._n = prior_weight
        self._empty = False
        self._admitted = 0

    @property
    def mean_output(self) -> float:
        return self._sum / self._n

    def observe_output(self, output_len: int) -> None:
        self._sum += output_len
        self._n += 1

    def expected_output(self, req: WaitingView | RunningView) -> int:
        est = req.estimate
        return min(int(est.point if est is not None else self.mean_output), req.max_new_tokens)

    def begin(self, view: SchedulerView) -> None:
        super().begin(view)
        page = self._page
        self._left -= sum(ceil_page(max(self.expected_output(r) - r.output_len, 0), page) for r in view.running)
        self._empty = not view.running
        self._admitted = 0

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        page = self._page
        later = (
            max(req.seq_len - max(req.cached_len, req.prefilled_len) - prefill_tokens, 0) if not req.swapped_out else 0
        )
        future = ceil_page(later + max(self.expected_output(req) - req.output_len, 0), page)
        left = self._left
        self._left -= future
        adm = super().admit(req, prefill_tokens)
        if adm is None and self._empty and self._admitted == 0:
            self._left = left
            adm = super().admit(req, prefill_tokens)
        if adm is None:
            self._left = left
            return None
        self._admitted += 1
        return Admit(adm.rid, adm.prefill_tokens, reserve_tokens=adm.reserve_tokens + future)
