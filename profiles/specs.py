"""Hardware and model figures the GPU profiles are derived from, each with its source.

Model shapes are the public Hugging Face ``config.json`` values (quoted from memory of those files; the field
names are the HF ones). GPU figures are NVIDIA datasheet peaks: dense (no sparsity) BF16 tensor-core FLOP/s and
HBM bandwidth of the SXM parts. Efficiency fractions are assumptions anchored on published measurements; see
docs/latency-profiles.md for the full table and reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Transformer shape. ``gated_mlp``: LLaMA's SwiGLU has 3 MLP matrices, OPT's ReLU MLP has 2."""

    name: str
    source: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context_len: int  # tokens (prompt + output) the server accepts: max_position_embeddings or --context-length
    repo: str = ""  # Hugging Face repo id: SGLang caps prefill CUDA-graph sizes at 4096 when it contains "llama-2"
    gated_mlp: bool = True
    tied_embeddings: bool = False
    bytes_per_param: int = 2  # BF16/FP16 serving

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def linear_params(self) -> int:
        """Parameters of the per-token GEMMs (QKV, O, MLP) over all layers; biases/norms ignored (< 0.1%)."""
        kv = self.kv_heads * self.head_dim
        attn = self.hidden * self.hidden * 2 + self.hidden * kv * 2  # q, o + k, v
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return self.layers * (attn + mlp)

    @property
    def lm_head_params(self) -> int:
        return self.hidden * self.vocab

    @property
    def params(self) -> int:
        """All parameters (embedding counted once when tied)."""
        return self.linear_params + self.lm_head_params * (1 if self.tied_embeddings else 2)

    @property
    def weight_bytes_read(self) -> int:
        """Bytes streamed from HBM per iteration: every GEMM weight once, plus the LM head (the embedding
        lookup touches only the batch's rows)."""
        return (self.linear_params + self.lm_head_params) * self.bytes_per_param

    @property
    def weight_bytes_resident(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param


@dataclass(frozen=True)
class GPUSpec:
    name: str
    source: str
    peak_flops: float  # dense BF16 tensor-core FLOP/s
    hbm_bytes_per_s: float
    memory_mib: int  # capacity as the CUDA driver reports it (what SGLang's memory planner sees)
    pcie: str
    pcie_bytes_per_s: float  # one direction, theoretical
    pcie_achieved_bytes_per_s: float  # one direction, pinned-host cudaMemcpy (assumption, see docs)


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak and CPU-side overheads (assumptions; see docs/latency-profiles.md). The KV pool is
    not here: profiles/sizing.py computes it as SGLang does."""

    gemm_mfu: float
    attn_flops_fraction: float
    hbm_fraction: float
    kv_read_fraction: float
    iteration_overhead_s: float = 1.5e-3
    per_sequence_overhead_s: float = 5e-6
    swap_overhead_s: float = 1e-4


HF = "Hugging Face config.json of"


def _hf(repo: str, note: str = "") -> str:
    return f"{HF} {repo}" + (f" ({note})" if note else "")


MODELS: dict[str, ModelSpec] = {
    "llama2-7b": ModelSpec("llama2-7b", _hf("meta-llama/Llama-2-7b-hf"), 32, 4096, 32, 32, 11008, 32000, 4096,
                           "meta-llama/Llama-2-7b-hf"),
    "llama2-13b": ModelSpec("llama2-13b", _hf("meta-llama/Llama-2-13b-hf"), 40, 5120, 40, 40, 13824, 32000, 4096,
                            "meta-llama/Llama-2-13b-hf"),
    "llama3-8b": ModelSpec("llama3-8b", _hf("meta-llama/Meta-Llama-3-8B"), 32, 4096, 32, 8, 14336, 128256, 8192,
                           "meta-llama/Meta-Llama-3-8B"),
    # Llama-3.1-8B has Llama-3-8B's exact shape with rope scaling to max_position_embeddings 131072; served here with
    # SGLang's --context-length 32768 (a long-output / reasoning deployment).
    "llama3-8b-32k": ModelSpec("llama3-8b-32k", _hf("meta-llama/Llama-3.1-8B", "Llama-3-8B's shape, "
                               "max_position_embeddings 131072; served with --context-length 32768"),
                               32, 4096, 32, 8, 14336, 128256, 32768, "meta-llama/Llama-3.1-8B"),
    "opt-13b": ModelSpec("opt-13b", _hf("facebook/opt-13b", "ffn_dim 20480, ReLU MLP, lm_head tied to embed_tokens"),
                         40, 5120, 40, 40, 20480, 50272, 2048, "facebook/opt-13b", gated_mlp=False,
                         tied_embeddings=True),
}  # fmt: skip

GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec(
        "H100 SXM5 80GB",
        "NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOPS dense BF16 (1,979 with sparsity), 3.35 TB/s HBM3, "
        "PCIe Gen5 x16 (128 GB/s bidirectional)",
        peak_flops=989e12,
        hbm_bytes_per_s=3.35e12,
        memory_mib=81559,
        pcie="Gen5 x16",
        pcie_bytes_per_s=64e9,
        pcie_achieved_bytes_per_s=40e9,
    ),
    "a100": GPUSpec(
        "A100 SXM4 80GB",
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS dense BF16 (624 with sparsity), 2,039 GB/s HBM2e, "
        "PCIe Gen4 x16 (64 GB/s bidirectional)",
        peak_flops=312e12,
        hbm_bytes_per_s=2.039e12,
        memory_mib=81920,
        pcie="Gen4 x16",
        pcie_bytes_per_s=32e9,
        pcie_achieved_bytes_per_s=25e9,
    ),
    "a100-40gb": GPUSpec(
        "A100 SXM4 40GB",
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS dense BF16 (624 with sparsity), 1,555 GB/s HBM2 (40GB), "
        "PCIe Gen4 x16 (64 GB/s bidirectional)",
        peak_flops=312e12,
        hbm_bytes_per_s=1.555e12,
        memory_mib=40960,
        pcie="Gen4 x16",
        pcie_bytes_per_s=32e9,
        pcie_achieved_bytes_per_s=25e9,
    ),
}

EFFICIENCY: dict[str, Efficiency] = {
    # H100: FlashAttention-3 reaches 75% of BF16 peak at long sequences, ~45-60% at serving chunk sizes
    # (Shah et al. 2024, arXiv 2407.08608); cuBLAS BF16 GEMMs at serving shapes ~65% (assumption).
    "h100": Efficiency(gemm_mfu=0.65, attn_flops_fraction=0.5, hbm_fraction=0.85, kv_read_fraction=0.7),
    # A100: FlashAttention-2 reaches up to 73% of peak forward (Dao 2023, arXiv 2307.08691), less at short
    # sequences; cuBLAS BF16 GEMMs ~75% (assumption).
    "a100": Efficiency(gemm_mfu=0.75, attn_flops_fraction=0.5, hbm_fraction=0.85, kv_read_fraction=0.7),
    "a100-40gb": Efficiency(gemm_mfu=0.75, attn_flops_fraction=0.5, hbm_fraction=0.85, kv_read_fraction=0.7),
}
