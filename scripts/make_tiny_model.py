"""Write a dummy-weight LLaMA model directory: a config + a real tokenizer. Nothing is downloaded.

The tokenizer is Mistral-7B v0.1/v0.2's SentencePiece model, shipped inside the PyPI package ``mistral_common`` (a
real 32k vocabulary, so prompt lengths from text are realistic, and the same tokenizer that counts the AlpacaEval
Mistral responses). Weights come from ``--load-format dummy`` at serve time. Two shapes (``--preset``):

* ``tiny`` (default, ``models/tiny-llama``, committed): hidden 64, 2 layers — small enough for 2 CPU cores while
  keeping the KV pool a real, contended resource. Its iteration time is almost all the server's fixed per-iteration
  cost (scheduling, sampling, streaming), so on it the size of a prefill chunk barely changes an iteration's time.
* ``chunk`` (``models/chunk-llama``, written on demand, not committed): hidden 1024, 4 layers, intermediate 2816,
  16 heads over 8 KV heads (~51M parameters in the layers, ~100 MFLOP per token, plus a 32k-row LM head per sampled
  token). Per-token compute now dominates: a prefill chunk of a few hundred tokens lengthens an iteration several
  times over a decode step (``scripts/accelgen_live.py --measure`` measures it on the machine at hand). This is the
  live regime where a chunk size, fixed (SGLang) or per iteration (AccelGen A1), matters for TBT.

The tokenizer carries Mistral-Instruct's chat format (``[INST] ... [/INST]``) so SGLang's ``/v1/chat/completions``
and ``bench_serving --apply-chat-template`` work; a system message is put before the first user turn (Mistral's
format has no system role).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import mistral_common

ROOT = Path(__file__).resolve().parents[1]
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4},
    "chunk": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 16,
              "num_key_value_heads": 8},
}  # fmt: skip
DEFAULT_OUT = ROOT / "models" / "tiny-llama"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def default_out(preset: str) -> Path:
    return ROOT / "models" / f"{preset}-llama"


def write(out: Path, preset: str = "tiny", **overrides: Any) -> Path:
    """Write preset ``preset`` (config fields overridable) with the real tokenizer into ``out``."""
    from transformers import LlamaConfig, LlamaTokenizer

    if preset not in PRESETS:
        raise SystemExit(f"make_tiny_model: unknown --preset {preset!r}; valid: {', '.join(PRESETS)}")
    out.mkdir(parents=True, exist_ok=True)
    if not SP_MODEL.exists():
        raise SystemExit(f"make_tiny_model: tokenizer file {SP_MODEL} is missing (is mistral_common installed?)")
    shutil.copy(SP_MODEL, out / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(out, legacy=False)  # converts the SentencePiece model (needs protobuf)
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        torch_dtype="bfloat16",
        tie_word_embeddings=False,
        **{**PRESETS[preset], **overrides},
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def ensure(preset: str, out: Path | None = None) -> Path:
    """The preset's directory, written when its config is missing (idempotent)."""
    out = out or default_out(preset)
    if not (out / "config.json").exists():
        write(out, preset)
    return out


def parameters(preset: str) -> dict[str, float]:
    """Parameter counts (millions) of a preset: the layers, the LM head, and FLOPs per token in the layers."""
    p = PRESETS[preset]
    h, i, n = p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"]
    kv = h * p["num_key_value_heads"] // p["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i
    return {"layers_M": n * layer / 1e6, "lm_head_M": h * 32000 / 1e6, "mflop_per_token": 2 * n * layer / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=tuple(PRESETS))
    ap.add_argument("--out", type=Path, default=None, help="default models/<preset>-llama")
    args = ap.parse_args()
    out = write(args.out or default_out(args.preset), args.preset)
    print(f"{args.preset} model written to {out}: {sorted(p.name for p in out.iterdir())}; {parameters(args.preset)}")


if __name__ == "__main__":
    main()
