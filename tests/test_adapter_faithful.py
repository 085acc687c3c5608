"""The SGLang adapter with policy ``sglang`` forms the same batches and retracts the same requests as stock SGLang.

Same harness as ``test_sglang_faithful`` (SGLang 0.5.23's real SchedulePolicy / PrefillAdder / ScheduleBatch /
allocator stepped offline on CPU), run twice on each fixed request script: once stock, once through the plugin's
real hook functions (``around_prefill_raw`` -> the policy's plan, ``around_calc_priority`` -> the plan's order,
``PolicyPrefillAdder`` -> the admission gate, ``around_retract_decode``/``around_retraction_order`` -> the policy's
victims). The traces must be identical step by step.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policies.capabilities import HostCapabilities
from policies.config import ExtConfig, SGLangBaselineConfig
from sglang_ext.adapter import hooks
from tests.test_sglang_faithful import CHUNK, CONSERVATIVENESS, StockSGLang, script, sglang_ready  # noqa: F401

pytestmark = pytest.mark.slow


class AdaptedSGLang(StockSGLang):
    """Stock stepping, with the scheduler-facing attributes the adapter reads and the plugin's hooks in the path."""

    def __init__(self) -> None:
        super().__init__()
        from sglang_ext.adapter.state import Adapter

        cfg = ExtConfig(policy="sglang", sglang=SGLangBaselineConfig(chunked_prefill_size=CHUNK,
                        schedule_conservativeness=CONSERVATIVENESS))  # fmt: skip
        self.adapter = Adapter(cfg, HostCapabilities(chunked_prefill_size=CHUNK, max_prefill_tokens=16384))
        self.token_to_kv_pool_allocator = self.alloc
        self.tree_cache = self.tc
        self.chunked_prefill_size = CHUNK
        original = self.policy.calc_priority
        self.policy.calc_priority = lambda q, *a, **k: hooks.around_calc_priority(
            lambda _p, q2, *a2, **k2: original(q2, *a2, **k2), self.policy, q, *a, **k
        )

    @property
    def waiting_queue(self) -> list:
        return self.waiting

    @property
    def chunked_req(self):  # type: ignore[no-untyped-def]
        return self.chunked

    def prefill_batch(self, running):  # type: ignore[no-untyped-def]
        return hooks.around_prefill_raw(
            lambda sched, _delayer, rb: StockSGLang.prefill_batch(sched, rb), self, None, running
        )


@pytest.fixture
def plugin_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from sglang.srt.managers import schedule_policy
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.mem_cache import common

    from sglang_ext.adapter.prefill import PolicyPrefillAdder

    order = ScheduleBatch._get_decode_retraction_order
    retract = ScheduleBatch.retract_decode
    release = common.release_kv_cache

    def released(req, *args, **kwargs):  # the plugin's AFTER hook on release_kv_cache
        result = release(req, *args, **kwargs)
        hooks.after_release_kv_cache(result, req, *args, **kwargs)
        return result

    monkeypatch.setattr(common, "release_kv_cache", released)
    monkeypatch.setattr(schedule_policy, "PrefillAdder", PolicyPrefillAdder)
    monkeypatch.setattr(ScheduleBatch, "_get_decode_retraction_order",
                        staticmethod(lambda reqs: hooks.around_retraction_order(order, reqs)))  # fmt: skip
    monkeypatch.setattr(ScheduleBatch, "retract_decode", lambda b: hooks.around_retract_decode(retract, b))
    yield
    hooks._ADAPTER = None
    PolicyPrefillAdder.adapter = None


@pytest.mark.parametrize("seed", [0, 1, 3, 4, 5, 6])
def test_adapter_with_sglang_policy_matches_stock(sglang_ready, plugin_hooks, seed):  # noqa: F811
    from sglang_ext.adapter.prefill import PolicyPrefillAdder

    reqs = script(seed)
    stock = StockSGLang().run(reqs)
    adapted = AdaptedSGLang()
    hooks._ADAPTER = adapted.adapter
    PolicyPrefillAdder.adapter = adapted.adapter
    ours = adapted.run(reqs)
    assert any(kind == "D" and rids for kind, rids in stock), "script should make stock SGLang retract"
    assert adapted.adapter.counters["plans"] > 0 and adapted.adapter.counters["admitted"] > 0
    for i, (a, b) in enumerate(zip(stock, ours, strict=False)):
        assert a == b, f"step {i}: stock {a} vs adapter+sglang policy {b}"
    assert len(stock) == len(ours)
