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


def kv_capacity_tokens(gpu: GPUSpec, model: ModelSpec, eff: Efficiency) -> int:
    """KV pool in tokens as SGLang 0.5.23 sizes it on one GPU: (memory - activation/graph reserve) holds the
    weights and the pool (``mem_fraction_static`` = (memory - reserve) / memory, memory_hook.py)."""
    free = (gpu.memory_mib - eff.reserved_mib) * 2**20 - model.weight_bytes_resident
    return max(int(free // model.kv_bytes_per_token), 0)


def gpu_profile_names() -> list[str]:
    return [f"{g}-{m}" for g in GPUS for m in MODELS]


def derive(name: str) -> dict:
    """Keyword arguments of a :class:`profiles.Profile` for ``<gpu>-<model>``."""
    g, m = name.split("-", 1)
    gpu, model, eff = GPUS[g], MODELS[m], EFFICIENCY[g]
    return {
        "name": name,
        "latency": derive_model(gpu, model, eff),
        "kv_capacity_tokens": kv_capacity_tokens(gpu, model, eff),
        "device": gpu.name,
        "source": f"derived (roofline): {gpu.source}; {model.source}; efficiency {eff}",
        "date": "",
    }
