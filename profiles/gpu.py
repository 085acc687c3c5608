"""GPU latency profiles derived from FLOPs and bytes moved per iteration (a per-operator roofline, Vidur-style).

Per iteration with T new tokens over S sequences:

* GEMMs (QKV/O/MLP + LM head weights): ``max(weight_bytes / BW_eff, 2*N_linear*T / (peak*MFU))`` — weight
  streaming bounds small batches, compute bounds large ones; the crossing is the pivot size AccelGen aims at (A1).
* Prefill attention (FlashAttention, compute-bound): ``4*H*L`` FLOPs per causal query-key pair.
* Decode attention (memory-bound): reads the whole KV of each sequence, ``kv_bytes_per_token`` per context token.
* LM head compute for one token per sequence, and CPU-side overheads (per iteration, per sequence).

This is exactly an :class:`IterationLatencyModel`, so the simulator, the policies' chunk sizing and a later
calibration fit all use the same coefficients.
"""

from __future__ import annotations

from policies.latency import IterationLatencyModel

from .sizing import sglang_sizing
from .specs import EFFICIENCY, GPUS, MODELS, Efficiency, GPUSpec, ModelSpec


def derive_model(gpu: GPUSpec, model: ModelSpec, eff: Efficiency) -> IterationLatencyModel:
    gemm_flops_s = gpu.peak_flops * eff.gemm_mfu
    attn_flops_s = gpu.peak_flops * eff.attn_flops_fraction
    c_tok = 2 * model.linear_params / gemm_flops_s
    weights_s = model.weight_bytes_read / (gpu.hbm_bytes_per_s * eff.hbm_fraction)
    attn_flops_per_pair = 4 * model.heads * model.head_dim * model.layers
    decode_per_ctx = max(
        model.kv_bytes_per_token / (gpu.hbm_bytes_per_s * eff.kv_read_fraction),
        attn_flops_per_pair / attn_flops_s,
    )
    return IterationLatencyModel(
        c0_s=eff.iteration_overhead_s,
        c_tok_s=c_tok,
        c_attn_prefill_s=attn_flops_per_pair / attn_flops_s,
        c_attn_decode_s=decode_per_ctx,
        c_seq_s=2 * model.lm_head_params / gemm_flops_s + eff.per_sequence_overhead_s,
        pivot_tokens=weights_s / c_tok,
        kv_bytes_per_token=model.kv_bytes_per_token,
        pcie_bytes_per_s=gpu.pcie_achieved_bytes_per_s,
        swap_overhead_s=eff.swap_overhead_s,
    )


def profile_names() -> dict[str, tuple[str, str]]:
    """``<gpu>-<model>`` for every GPU and model of profiles/specs.py: ``{name: (gpu key, model key)}``."""
    return {f"{g}-{m}": (g, m) for g in GPUS for m in MODELS}


def gpu_profile_names() -> list[str]:
    return list(profile_names())


def derive(name: str, chunk: int | None = None) -> dict:
    """Keyword arguments of a :class:`profiles.Profile` for ``<gpu>-<model>``: the roofline latency model and
    SGLang's own sizing (profiles/sizing.py) at its device-default chunk, or at ``chunk``."""
    g, m = profile_names()[name]
    gpu, model, eff = GPUS[g], MODELS[m], EFFICIENCY[g]
    sz = sglang_sizing(gpu, model, chunk)
    return {
        "name": name,
        "latency": derive_model(gpu, model, eff),
        "kv_capacity_tokens": sz.kv_pool_tokens,
        "device": gpu.name,
        "source": f"derived (roofline): {gpu.source}; {model.source}; efficiency {eff}; KV pool as SGLang 0.5.23 "
        f"sizes it (profiles/sizing.py: mem_fraction_static {sz.mem_fraction_static}, chunk {sz.chunked_prefill_size})",
        "date": "",
        "chunked_prefill_size": sz.chunked_prefill_size,
        "context_len": model.context_len,
        "mem_fraction_static": sz.mem_fraction_static,
    }
