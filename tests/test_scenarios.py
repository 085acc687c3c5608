"""The scenario registry (eval.scenarios): every named scenario builds its workload and SLOs on its profile, the
rate grid comes from a stored capacity, and capacities round-trip through their file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import profiles
from eval import scenarios as SC
from eval.slo import parse_slo
from eval.workloads import load_workload

REQUIRED = {"chat-h100-8b", "sharegpt-a100-40gb-13b", "reasoning-h100-8b-32k", "burst", "mixed-code-conv",
            "tight-chat-long-h100-8b"}  # fmt: skip


def test_required_scenarios_exist() -> None:
    assert set(SC.SCENARIOS) >= REQUIRED
    with pytest.raises(ValueError, match="unknown scenario 'nope'; valid: chat-h100-8b"):
        SC.get("nope")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_each_scenario_builds(name: str) -> None:
    sc = SC.get(name)
    prof = profiles.get(sc.profile)
    assert prof.chunked_prefill_size and prof.context_len and prof.kv_capacity_tokens > 0
    for setting in sc.slo:
        spec = parse_slo(sc.slo_spec(setting), prof, prof.chunked_prefill_size)
        specs = load_workload(sc.workload, num_requests=200, rate=1.0, seed=0, slo=spec, **sc.workload_kwargs())
        assert all(s.prompt_len + 1 <= prof.context_len for s in specs)
        assert all(s.ttft_slo_ms and s.tbt_slo_ms for s in specs)  # every request has both objectives
    assert sc.primary_slo in sc.slo and "absolute" in sc.slo and "relative" in sc.slo
    assert sc.slo_why and sc.what and sc.kv
    assert sc.burst or (min(sc.loads) <= 0.5 and max(sc.loads) >= 1.3)


def test_scenario_properties() -> None:
    rs = SC.get("reasoning-h100-8b-32k")
    reasoning = load_workload("azure-conv", num_requests=rs.num_requests, rate=1.0, seed=0, **rs.workload_kwargs())
    mean_out = np.mean([s.output_len for s in reasoning])
    assert 5500 < mean_out < 6500 and np.mean([s.output_len > 4096 for s in reasoning]) > 0.5
    assert all(s.max_new_tokens == 32768 - s.prompt_len - 2 for s in reasoning)  # no client cap
    tight = SC.get("sharegpt-a100-40gb-13b")
    assert profiles.get(tight.profile).kv_capacity_tokens < 12_000 and tight.cap == 2048
    chat = load_workload("mixed-chat-long", num_requests=500, rate=1.0, seed=0,
                         **SC.get("tight-chat-long-h100-8b").workload_kwargs())  # fmt: skip
    assert np.median([s.prompt_len for s in chat if s.source == "alpaca"]) < 50
    assert SC.get("burst").burst and SC.rate_grid(SC.get("burst"), None) == ["burst"]


def test_rate_grid_and_capacity_file(tmp_path: Path) -> None:
    sc = SC.get("chat-h100-8b")
    assert SC.rate_grid(sc, 10.0) == [round(10.0 * x, 4) for x in sc.loads]
    with pytest.raises(ValueError, match="no stored capacity"):
        SC.rate_grid(sc, None)
    f = tmp_path / "capacity.json"
    assert SC.stored_capacity("chat-h100-8b", path=f) is None
    SC.store_capacity("chat-h100-8b", "sglang", {"capacity_rps": 12.5, "probes": []}, path=f)
    SC.store_capacity("chat-h100-8b", "sglang-mixed", {"capacity_rps": 14.0}, path=f)
    assert SC.stored_capacity("chat-h100-8b", path=f) == 12.5
    assert SC.stored_capacity("chat-h100-8b", "sglang-mixed", path=f) == 14.0
    f.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        SC.load_capacities(f)
