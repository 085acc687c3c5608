"""What a policy may know about the host that applies its plans: :class:`HostCapabilities`.

Why typed: a policy's plan is only as good as the host's ability to execute it. The simulator and the SGLang
adapter declare the same fields (page size, chunk size, whether decodes ride with prefill chunks, whether KV can be
swapped to host memory, whether iterations are measured), so a policy lives in one world and never guesses its host
from names. In the server the values come from SGLang's own flags (``--page-size``, ``--chunked-prefill-size``,
``--enable-mixed-chunk``, ...); in the simulator from the scenario and the policy's needs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostCapabilities:
    page_size: int = 1  # KV page (tokens per allocation unit)
    chunked_prefill_size: int | None = None  # the host's prefill chunk; None = the config's sglang section
    max_prefill_tokens: int = 16384  # SGLang --max-prefill-tokens
    max_running_requests: int | None = None  # request slots (None = unbounded)
    mixed_chunk: bool = False  # decodes run in the same forward as prefill chunks (SGLang --enable-mixed-chunk)
    swap: bool = True  # a preempted request's KV can be moved to host memory and back (C5)
    measures_iterations: bool = True  # the host reports each iteration's duration (A1's online refit)
    context_len: int | None = None  # model context length (prompt + output), None = unbounded

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size < 1:
            raise ValueError(f"chunked_prefill_size must be >= 1, got {self.chunked_prefill_size}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
