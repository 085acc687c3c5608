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

Is ``sarathi`` the same as ``sglang`` with SGLang's mixed chunk (``--ext-sglang-mixed-chunk``) at the same budget?
Checked decision by decision in the simulator (``tests/test_baselines_vllm_sarathi.py``): **the batching is the
same, the KV management is not.** Both split one budget per iteration the same way — one token per running decode,
then the prompt whose chunked prefill is in progress, then new prompts first come first served, the last one cut
to what is left — so with page size 1 and a KV pool that never binds they form identical batches at every
iteration. They differ

* with pages > 1: SGLang charges the budget page-rounded extends and cuts chunks at page boundaries;
* whenever KV binds: Sarathi allocates a new prompt's whole KV and admits until the pool (less the 1% watermark)
  is full, reserving nothing for outputs; SGLang admits only while ``extend + max_new + page`` fits under its
  ``new_token_ratio`` reservation for the running requests' remaining outputs;
* on preemption: Sarathi preempts the most recently scheduled request (recompute) while planning the step and
  admits nothing in it, and re-queues preempted requests in front; SGLang never retracts in a mixed step (the
  decodes sit it out when they do not fit), retracts in decode-only steps the request with the fewest outputs
  (then the longest prompt), and re-queues it at the back;
* in request slots: ``max_num_seqs`` 256 vs SGLang's ``--max-running-requests`` (unbounded here by default).
"""

from __future__ import annotations

from policies.base import register
from policies.vllm import VLLMPolicy


@register("sarathi")
class SarathiPolicy(VLLMPolicy):
    """Fixed token budget, decodes first then prefill chunks in the same (mixed) iteration."""

    whole_prompt = True
    watermark = 0.01
