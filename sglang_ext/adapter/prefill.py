"""``PolicyPrefillAdder``: SGLang's own PrefillAdder, told what the policy decided.

SGLang still does the mechanics (prefix matching, locking, chunking, page rounding, the physical checks); the
policy's decisions enter at three seams only:
* admission: a request the policy did not admit this iteration is not added (``add_one_req`` returns OTHER);
* reservation: for policies that own their KV accounting (``Policy.owns_kv_accounting``), the KV SGLang's budget
  charges an admitted request for its output is the policy's reservation (CacheOPT C1/C2, AccelGen's demand gate,
  vLLM's admit-until-full), not ``max_new_tokens``; running requests are charged what remains of their allocation
  instead of SGLang's ``new_token_ratio`` guess;
* the commit notifies the adapter so the reservation becomes the request's allocation.
The ``sglang`` baseline mirrors SGLang's own accounting and leaves it untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder

from sglang_ext.adapter.state import Adapter


class PolicyPrefillAdder(PrefillAdder):
    adapter: Adapter | None = None  # set by the hooks before SGLang instantiates the adder

    def _reserving(self) -> bool:
        a = self.adapter
        return a is not None and a.policy.owns_kv_accounting

    def _get_running_request_total_token_offset(self, req: Any) -> int:
        if self._reserving() and (off := self.adapter.running_offset(req)) is not None:  # type: ignore[union-attr]
            return off
        return super()._get_running_request_total_token_offset(req)

    def add_one_req(self, req: Any, has_chunked_req: bool, truncation_align_size: int | None) -> Any:
        a = self.adapter
        if a is not None and a.plan is not None and req.rid not in a.plan_rank:
            a.counters["held_back_by_policy"] += 1
            return AddReqResult.OTHER
        return super().add_one_req(req, has_chunked_req, truncation_align_size)

    def _check_prefill_budget(self, req: Any, *, extend_input_len: int, total_tokens: int, **kw: Any) -> Any:
        if self._reserving() and req.rid in self.adapter.plan_out:  # type: ignore[union-attr]
            total_tokens = extend_input_len + self.adapter.plan_out[req.rid] + self.per_req_token_overhead  # type: ignore[union-attr]
        return super()._check_prefill_budget(req, extend_input_len=extend_input_len, total_tokens=total_tokens, **kw)

    def _commit_prefill_admission(self, req: Any, admission: Any, mamba_gap_reserve: int) -> None:
        a = self.adapter
        if a is not None and self._reserving() and req.rid in a.plan_out and not admission.is_chunked:
            out = 0 if req.rid in a.guest_of else a.plan_out[req.rid]
            admission = dataclasses.replace(admission, max_new_tokens=out)
        super()._commit_prefill_admission(req, admission, mamba_gap_reserve)
        if a is not None:
            a.on_admitted(req)
