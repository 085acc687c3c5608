"""The EOS forcer: ends a response at the workload's true length without telling the scheduler.

Why: in real serving the scheduler sees only ``max_new_tokens``, a cap far above the true length. Benchmarks that
send ``max_new_tokens = true length`` + ``ignore_eos`` hand every scheduler an oracle (and make SGLang reserve the
whole cap). Here each request carries a realistic cap and this processor makes the model "emit EOS" at the target,
inside sampling, where no scheduler (stock SGLang or our policies, CacheOPT C1-C4 and AccelGen A1-A3) can read it.

Contract (request body of ``/generate``)::

    "custom_logit_processor": ForceEosAtLength.to_str(),
    "sampling_params": {"max_new_tokens": CAP, "custom_params": {"target_len": L, ...}}

``target_len = L`` means the response has exactly ``L`` completion tokens, the ``L``-th being EOS (SGLang counts
the EOS in ``completion_tokens``); before it, EOS is suppressed so a random-weight model cannot stop early.
``L = 1`` answers with EOS alone. Optional ``"eos_id"`` overrides the model's EOS id. The server needs
``--enable-custom-logit-processor``; dill ships this class by reference, so the server imports this module (the
project is installed with ``pip install -e .``).

Which output position a call samples is read from the request's scheduler state, not from ``req.output_ids``
(it lags one token under the overlap scheduler) and not by counting calls (a middle chunk of a chunked prefill is
sampled and discarded; under overlap a retracted request's in-flight token is discarded and sampled again after
the re-prefill). SGLang 0.5.23's ``Req`` keeps ``decode_batch_idx`` (0 during an extend pass, +1 per
``prepare_for_decode``, reset on retraction) and ``extend_end`` (end of the tokens this extend pass covers): an
extend pass that covers the whole sequence samples position ``extend_end - len(origin_input_ids)``; a decode pass
samples that base plus ``decode_batch_idx``. Without a request handle the processor falls back to counting calls.
Speculative decoding (several tokens per row) is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

TARGET_KEY = "target_len"
EOS_KEY = "eos_id"
_BASE = "_eos_forcer_base"
_CALLS = "_eos_forcer_calls"


def sample_position(params: dict[str, Any]) -> int | None:
    """0-based output position this call samples, or ``None`` for a discarded middle-chunk sample."""
    req = params.get("__req__")
    try:
        if req is not None:
            step = int(req.decode_batch_idx)
            if step == 0:
                end = req.extend_end
                if end is None:
                    base = len(req.output_ids)
                elif end < len(req.full_untruncated_fill_ids):
                    return None
                else:
                    base = int(end) - len(req.origin_input_ids)
                params[_BASE] = base
                return base
            return int(params.get(_BASE, 0)) + step
    except (AttributeError, ReferenceError, TypeError):
        pass
    calls = int(params.get(_CALLS, 0))
    params[_CALLS] = calls + 1
    return calls


def eos_ids(params: dict[str, Any]) -> list[int]:
    """EOS ids: the request's override, else the model's (``req.eos_token_ids``), else the tokenizer's."""
    if isinstance(params.get(EOS_KEY), int):
        return [params[EOS_KEY]]
    req = params.get("__req__")
    try:
        ids = sorted(req.eos_token_ids or ()) if req is not None else []
        if not ids and req is not None and getattr(req.tokenizer, "eos_token_id", None) is not None:
            ids = [int(req.tokenizer.eos_token_id)]
    except (AttributeError, ReferenceError):
        ids = []
    return ids


class ForceEosAtLength(CustomLogitProcessor):
    """Suppress EOS before position ``target_len - 1``; force it there (every other logit ``-inf``)."""

    def __call__(self, logits: torch.Tensor, custom_param_list: list[dict[str, Any]] | None = None) -> torch.Tensor:
        if not custom_param_list:
            return logits
        for row, params in enumerate(custom_param_list):
            if not isinstance(params, dict):
                continue
            target = params.get(TARGET_KEY)
            if not isinstance(target, int) or isinstance(target, bool) or target < 1:
                continue
            pos = sample_position(params)
            ids = eos_ids(params)
            if pos is None or not ids:
                continue
            if pos >= target - 1:
                logits[row, :] = float("-inf")
                logits[row, ids[0]] = 0.0
            else:
                logits[row, ids] = float("-inf")
        return logits
