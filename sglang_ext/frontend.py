"""Per-request SLOs for SGLang frontend programs (``sgl.function``).

Why this exists: SGLang's frontend language sends a fixed set of sampling parameters to ``/generate``
(``sgl.gen`` has no custom-parameter argument and ``SglSamplingParams.to_srt_kwargs`` lists exactly what goes out),
so a program cannot put ``custom_params`` on its requests, which is where the server reads per-request SLOs.
:class:`SLOEndpoint` is SGLang's own ``RuntimeEndpoint`` that adds ``custom_params`` (``ttft_slo_ms``,
``tbt_slo_ms`` and anything else given) to every generation it sends; everything else is SGLang's code. One endpoint
is one SLO class::

    import sglang as sgl
    from sglang_ext.frontend import SLOEndpoint

    interactive = SLOEndpoint("http://127.0.0.1:30000", ttft_slo_ms=1000, tbt_slo_ms=50)
    batch = SLOEndpoint("http://127.0.0.1:30000", ttft_slo_ms=30000, tbt_slo_ms=500)
    state = program.run(question="...", backend=interactive)
    states = program.run_batch([{"question": q} for q in qs], backend=batch)
    sgl.set_default_backend(interactive)  # or for every program of this process

The server validates the values (a non-positive or non-numeric SLO is an HTTP 400 naming the field, which the
frontend reports as the program state's error). Requests that carry no SLO get the server's
``--ext-default-ttft-slo-ms`` / ``--ext-default-tbt-slo-ms``. ``sgl.select`` (choice scoring) sends no SLO: it is a
prefill-only request. Plain HTTP and OpenAI clients need none of this: ``custom_params`` in ``sampling_params``
(``/generate``) or top-level ``custom_params`` in the body (``/v1/completions``, ``/v1/chat/completions``; the
``openai`` client's ``extra_body``) reach the same place.
"""

from __future__ import annotations

import copy
from typing import Any

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint


class SLOEndpoint(RuntimeEndpoint):
    def __init__(
        self,
        base_url: str,
        *,
        ttft_slo_ms: float | None = None,
        tbt_slo_ms: float | None = None,
        custom_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: ``RuntimeEndpoint``'s (``api_key``, ``verify``, ``chat_template_name``)."""
        super().__init__(base_url, **kwargs)
        params = dict(custom_params or {})
        for key, value in (("ttft_slo_ms", ttft_slo_ms), ("tbt_slo_ms", tbt_slo_ms)):
            if value is not None:
                params[key] = value
        self.custom_params = params

    def generate(self, s: Any, sampling_params: Any) -> Any:
        return super().generate(s, self._with_slo(sampling_params))

    def generate_stream(self, s: Any, sampling_params: Any) -> Any:
        return super().generate_stream(s, self._with_slo(sampling_params))

    def _with_slo(self, sampling_params: Any) -> Any:
        """A copy whose ``to_srt_kwargs`` (what SGLang puts in ``sampling_params``) also carries ``custom_params``."""
        if not self.custom_params:
            return sampling_params
        out = copy.copy(sampling_params)
        base = out.to_srt_kwargs
        extra = dict(self.custom_params)
        out.to_srt_kwargs = lambda: {**base(), "custom_params": extra}
        return out
