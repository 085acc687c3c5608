"""``PolicyPrefillAdder``: SGLang's own PrefillAdder, executing the policy's plan.

SGLang still does the mechanics (prefix matching, locking, chunking, page rounding, the physical checks); the plan
enters at four seams only:

* admission: a request the plan did not admit this iteration is not added (``add_one_req`` returns OTHER);
* the budget's offset: for policies that own their KV accounting, SGLang's ``total_offset`` starts at the plan's
  ``kv_hold`` (running requests' promised growth and the global reserve, ``host.budget``) instead of SGLang's
  ``new_token_ratio`` guess per running request — so the reserve is held in SGLang's budget;
* the charge: each planned admission is checked with the plan's ``total_tokens`` and its commit reserves the plan's
  output (a reuse guest is charged against its lender's unused tail: its lender's promise left the hold), and a
  continued chunk reserves no output again (it is in the hold);
* the commit and refusal notify the adapter, so the ledger records exactly what SGLang executed.

The ``sglang`` baseline mirrors SGLang's own accounting and leaves all of it untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder

from sglang_ext.adapter.state import Adapter


class PolicyPrefillAdder(PrefillAdder):
    adapter: Adapter | None = None  # set by the hooks before SGLang instantiates the adder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        a = self.adapter
        if a is not None and a.holds_budget():
            self.memory_budget.total_offset += a.budget_hold()

    def _holds(self) -> bool:
        a = self.adapter
        return a is not None and a.holds_budget()

    def _get_running_request_total_token_offset(self, req: Any) -> int:
        if self._holds():
            return 0  # the plan's kv_hold replaces SGLang's per-request estimate (added in __init__)
        return super()._get_running_request_total_token_offset(req)

    def add_one_req(self, req: Any, has_chunked_req: bool, truncation_align_size: int | None) -> Any:
        a = self.adapter
        if a is not None and a.plan is not None and req.rid not in a.plan_rank:
            a.counters["held_back_by_policy"] += 1
            return AddReqResult.OTHER
        result = super().add_one_req(req, has_chunked_req, truncation_align_size)
        if a is not None and result is AddReqResult.NO_TOKEN and req not in self.can_run_list:
            a.refused(req)  # the plan and SGLang's budget disagree: counted, never silent
        return result

    def _check_prefill_budget(self, req: Any, *, extend_input_len: int, total_tokens: int, **kw: Any) -> Any:
        if self._holds() and (terms := self.adapter.admission_terms(req.rid)) is not None:  # type: ignore[union-attr]
            total_tokens = terms[0]
        return super()._check_prefill_budget(req, extend_input_len=extend_input_len, total_tokens=total_tokens, **kw)

    def _commit_prefill_admission(self, req: Any, admission: Any, mamba_gap_reserve: int) -> None:
        a = self.adapter
        if a is not None and self._holds() and not admission.is_chunked:
            terms = a.admission_terms(req.rid)
            admission = dataclasses.replace(admission, max_new_tokens=terms[1] if terms is not None else 0)
        super()._commit_prefill_admission(req, admission, mamba_gap_reserve)
        if a is not None:
            a.on_admitted(req)

    def _update_prefill_budget(self, prefix_len: int, extend_input_len: int, max_new_tokens: int, *args: Any,
                               **kw: Any) -> None:  # fmt: skip
        if kw.get("is_chunked_continuation") and self._holds():
            max_new_tokens = 0  # its output is already part of the plan's hold
        super()._update_prefill_budget(prefix_len, extend_input_len, max_new_tokens, *args, **kw)
