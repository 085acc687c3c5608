"""``sarathi``: Sarathi-Serve's stall-free batching (Agrawal et al., OSDI'24), the chunking baseline AccelGen (A1)
is measured against.

Why: Sarathi fixes one token budget per iteration (the chunk size) and never pauses decodes for a prefill:
every iteration runs all decodes first, then the in-progress prompt chunks, then new prompts' chunks in FCFS
order, all in one mixed batch. AccelGen's claim is that a *fixed* budget is wrong when requests carry different
TBT SLOs; this is the fixed-budget side of that comparison.

KV management is Sarathi's (it is built on vLLM v0's block manager): a new prompt's whole KV is allocated when it
is admitted, keeping a 1% watermark of the pool free, and a decode step that does not fit preempts the most
recently scheduled request (recompute). The budget is the host's chunk, else the sglang section's
``chunked_prefill_size``; ``max_num_seqs`` is 256.
"""

from __future__ import annotations

from policies.base import register
from policies.vllm import VLLMPolicy


@register("sarathi")
class SarathiPolicy(VLLMPolicy):
    """Fixed token budget, decodes first then prefill chunks in the same (mixed) iteration."""

    whole_prompt = True
    watermark = 0.01
