"""The SGLang adapter with policy ``sglang`` forms the same batches and retracts the same requests as stock SGLang.

Same harness as ``test_sglang_faithful`` (SGLang 0.5.23's real SchedulePolicy / PrefillAdder / ScheduleBatch /
allocator stepped offline on CPU), run twice on each fixed request script: once stock, once through the plugin's
real hook functions (``around_prefill_raw`` -> the policy's plan, ``around_calc_priority`` -> the plan's order,
``PolicyPrefillAdder`` -> the admission gate, ``around_retract_decode``/``around_retraction_order`` -> the policy's
victims). The traces must be identical step by step, in SGLang's default mode and with ``--enable-mixed-chunk``
(the hooks leave SGLang's mixing and its accounting in charge; the policy only plans), and with priority
preemption. ``edf`` goes through the same hooks and must take the steps it takes in the simulator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from sglang_ext.adapter import hooks
from tests.sglang_harness import CHUNK, Mode, StockSGLang, crowd, priorities, script, simulate
from tests.test_sglang_faithful import server_args, sglang_ready  # noqa: F401

pytestmark = pytest.mark.slow


class AdaptedSGLang(StockSGLang):
    """Stock stepping, with the scheduler-facing attributes the adapter reads and the plugin's hooks in the path.
    The adapter's clock is the harness's step (arrival times, hence ``edf``'s deadlines, are steps)."""

    def __init__(self, policy: str = "sglang", mode: Mode | None = None) -> None:
        super().__init__(mode=mode)
        from sglang_ext.adapter.state import Adapter

        cfg = ExtConfig(policy=policy, sglang=self.mode.baseline_config())
        caps = HostCapabilities(chunked_prefill_size=CHUNK, max_prefill_tokens=16384, mixed_chunk=self.mode.mixed,
                                max_running_requests=self.mode.max_running, page_size=self.mode.page)  # fmt: skip
        self.adapter = Adapter(cfg, caps)
        self.adapter.now = lambda: float(self.now)  # type: ignore[method-assign]
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


def run_adapted(reqs, policy: str = "sglang", mode: Mode | None = None) -> tuple[list, AdaptedSGLang]:
    from sglang_ext.adapter.prefill import PolicyPrefillAdder

    adapted = AdaptedSGLang(policy, mode)
    hooks._ADAPTER = adapted.adapter
    PolicyPrefillAdder.adapter = adapted.adapter
    trace = adapted.run(reqs)
    assert adapted.adapter.counters["plans"] > 0 and adapted.adapter.counters["admitted"] > 0
    return trace, adapted


def assert_same(stock: list, ours: list, what: str = "adapter+policy") -> None:
    for i, (a, b) in enumerate(zip(stock, ours, strict=False)):
        assert a == b, f"step {i}: {a} vs {what} {b}"
    assert len(stock) == len(ours)


# seed 19: a request finishes in its prefill step while the batch is full (SGLang clears the flag then; the adapter
# must report that finish to the policy although it never saw the request running)
@pytest.mark.parametrize("seed", [0, 1, 3, 4, 5, 6, 19])
def test_adapter_with_sglang_policy_matches_stock(sglang_ready, plugin_hooks, seed):  # noqa: F811
    reqs = script(seed)
    stock = StockSGLang().run(reqs)
    ours, _ = run_adapted(reqs)
    assert any(kind == "D" and rids for kind, rids in stock), "script should make stock SGLang retract"
    assert_same(stock, ours)


@pytest.mark.parametrize(("seed", "page", "long"), [(0, 1, False), (3, 16, False), (0, 1, True), (2, 16, True)])
def test_adapter_with_sglang_policy_matches_stock_mixed_chunk(server_args, plugin_hooks, seed, page, long):  # noqa: F811
    mode = Mode(page, mixed=True)
    server_args(mode)
    reqs = script(seed, long=long)
    stock = StockSGLang(mode=mode).run(reqs)
    ours, _ = run_adapted(reqs, mode=mode)
    assert any(kind == "D" and rids for kind, rids in stock), "script should make stock SGLang retract"
    assert sum(kind == "M" for kind, _ in stock) >= 20
    assert_same(stock, ours)


def test_adapter_with_sglang_policy_matches_stock_mixed_chunk_sit_out(server_args, plugin_hooks):  # noqa: F811
    mode = Mode(16, mixed=True)
    server_args(mode)
    reqs = crowd(16, 50, 12, 200)
    harness = StockSGLang(mode=mode)
    stock = harness.run(reqs)
    assert harness.sat_out >= 1
    assert_same(stock, run_adapted(reqs, mode=mode)[0])


def test_adapter_with_sglang_policy_matches_stock_priority_preemption(server_args, plugin_hooks):  # noqa: F811
    prio = priorities(6, [rid for _, rid, *_ in script(6)])
    mode = Mode(1, mixed=True, max_running=6, prio=prio)
    server_args(mode)
    reqs = script(6)
    stock = StockSGLang(mode=mode).run(reqs)
    assert any(kind == "X" for kind, _ in stock)
    assert_same(stock, run_adapted(reqs, mode=mode)[0])


@pytest.mark.parametrize(("seed", "mixed"), [(0, False), (1, True), (4, False)])
def test_adapter_with_edf_matches_edf_in_the_simulator(server_args, plugin_hooks, seed, mixed):  # noqa: F811
    """``edf`` reaches SGLang only through the queue order (calc_priority hook) and leaves SGLang's accounting in
    charge: through the real hooks it must take the same steps as in the simulator, and differ from FCFS."""
    reqs = script(seed)
    rng = random.Random(seed)
    ttft = {rid: rng.choice([2_000.0, 8_000.0, 30_000.0]) for _, rid, *_ in reqs if rng.random() < 0.8}
    mode = Mode(1, mixed=mixed, ttft_ms=ttft)
    server_args(mode)
    ours, adapted = run_adapted(reqs, "edf", mode)
    assert adapted.adapter.policy.name == "edf" and not adapted.adapter.policy.owns_kv_accounting
    assert_same(simulate(reqs, mode=mode, policy="edf"), ours, "adapter+edf")
    assert ours != simulate(reqs, mode=mode), "deadline order should change the batches"
