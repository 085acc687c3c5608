"""Client caps (the visible ``max_new_tokens``) and SGLang 0.5.23's context-length rule at arrival.

Why a module of its own: the cap is all a scheduler sees of a request's output length (CacheOPT C1 pads it, SGLang's
admission charges it), so a cap that depends on the true length hands every policy an oracle hint. Here the cap is a
function of what a client knows — its own setting and the prompt — and nothing else: :func:`client_cap` takes no
output length. Cap settings (``max_new_tokens=`` of ``eval.workloads.load_workload``):

* an ``int`` k: a client that sends ``max_tokens = k`` (e.g. 2048, 4096). Exactly k, whatever the truth; a response
  longer than k is cut at k (``finish_reason = length``), as the server does.
* ``"context"``: an OpenAI client that omits ``max_tokens``. SGLang then sets ``max_new_tokens`` to the context room
  (``managers/scheduler.py`` ``init_req_max_new_tokens``: ``min(1 << 30, max_req_len - input_len - 1)`` with
  ``max_req_len = min(context_len - 1, pool - 1)``, ``managers/tp_worker.py``), so the cap is
  ``context_len - prompt - 2`` (the pool-side limit is the host's, below).
* ``"exact"``: the true length, an *oracle* cap (other papers' setup); never used by a comparison in this project.

The context rule (:func:`sglang_arrival`), what a host applies when a request arrives, in SGLang's order:

1. ``managers/tokenizer_manager.py`` ``_validate_one_request``: a prompt of ``context_len`` tokens or more is refused
   (HTTP 400), and so is ``prompt + max_new_tokens > context_len`` when the client sent a cap
   (``validate_total_tokens``; ``--allow-auto-truncate`` is off by default, so nothing is clipped).
2. ``managers/scheduler.py`` / ``managers/utils.py`` ``validate_input_length``: a prompt of
   ``max_req_input_len = max_req_len - 5`` tokens or more is aborted.
3. ``init_req_max_new_tokens``: ``max_new = min(max_new, max_req_len - prompt - 1)``, then the allocator's
   ``max_new_tokens_for_memory`` (``ceil_page(prompt) + max_new + page + 1 <= pool``, a request alone in an empty
   pool always fits).
"""

from __future__ import annotations

import math

ORACLE_CAP = "exact"
CONTEXT_ROOM = "context"
DEFAULT_FIXED_CAP = 4096  # a common client max_tokens (and SGLang's CLIP_MAX_NEW_TOKENS) when no context is known
CONTEXT_ROOM_SLACK = 2  # context_len - prompt - 2: init_req_max_new_tokens with max_req_len = context_len - 1


class CapError(ValueError):
    """One line naming the cap setting and the problem."""


def check_cap_setting(cap: int | str | None, max_context: int | None) -> int | str:
    """The cap setting, validated; ``None`` = the context room when ``max_context`` is known, else
    :data:`DEFAULT_FIXED_CAP`."""
    if cap is None:
        return CONTEXT_ROOM if max_context is not None else DEFAULT_FIXED_CAP
    if cap in (CONTEXT_ROOM, ORACLE_CAP):
        if cap == CONTEXT_ROOM and max_context is None:
            raise CapError("max_new_tokens='context' (a client without max_tokens) needs max_context")
        return cap
    if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
        return cap
    raise CapError(f"max_new_tokens must be a positive int, 'context' or 'exact' (oracle), got {cap!r}")


def client_cap(prompt_len: int, cap: int | str, max_context: int | None) -> int:
    """The ``max_new_tokens`` a client's request carries (or SGLang fills in): never a function of the true length.
    ``"exact"`` is not handled here (it is the truth by definition)."""
    if cap == CONTEXT_ROOM:
        if max_context is None:
            raise CapError("max_new_tokens='context' needs max_context")
        return max(1, max_context - prompt_len - CONTEXT_ROOM_SLACK)
    if cap == ORACLE_CAP:
        raise CapError("the oracle cap ('exact') is the true length: the caller sets it")
    return int(cap)


def sglang_arrival(
    prompt_len: int, max_new_tokens: int, *, pool_tokens: int, page_size: int = 1, context_len: int | None = None
) -> tuple[int | None, str]:
    """SGLang's arrival checks (module docstring): ``(max_new_tokens the request runs with, "")`` or
    ``(None, reason)`` when SGLang refuses or aborts it. ``context_len=None``: the model has no limit below the pool."""
    if prompt_len <= 0:
        return None, "empty prompt"
    if context_len is not None:
        if prompt_len >= context_len:
            return None, f"rejected: input ({prompt_len} tokens) is longer than the context length ({context_len})"
        if prompt_len + max_new_tokens > context_len:
            return None, (f"rejected: {prompt_len} input + {max_new_tokens} new tokens exceed the context length "
                          f"({context_len})")  # fmt: skip
    max_req_len = pool_tokens - 1 if context_len is None else min(context_len - 1, pool_tokens - 1)
    if prompt_len >= max_req_len - 5:
        why = "the context length" if context_len is not None and context_len <= pool_tokens else "the KV pool"
        return None, (f"rejected: input ({prompt_len} tokens) exceeds the maximum allowed length ({max_req_len - 5}): "
                      f"it does not fit {why} ({min(context_len or pool_tokens, pool_tokens)} tokens)")  # fmt: skip
    pages = math.ceil(prompt_len / page_size) * page_size
    max_new = min(max_new_tokens, max_req_len - prompt_len - 1, pool_tokens - pages - page_size - 1)
    if max_new < 1:
        return None, f"rejected: prompt of {prompt_len} tokens leaves no room in a {pool_tokens}-token pool"
    return max_new, ""
