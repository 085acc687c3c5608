"""Write the embedded default model: a tiny LLaMA config + a real tokenizer, into ``models/tiny-llama``.

Nothing is downloaded. The tokenizer is Mistral-7B v0.1/v0.2's SentencePiece model, shipped inside the PyPI
package ``mistral_common`` (a real 32k vocabulary, so prompt lengths from text are realistic, and the same
tokenizer that counts the AlpacaEval Mistral responses). Weights come from ``--load-format dummy`` at serve time.

The shape is chosen to be small enough for 2 CPU cores while keeping the KV pool a real, contended resource.

The tokenizer carries Mistral-Instruct's chat format (``[INST] ... [/INST]``) so SGLang's ``/v1/chat/completions``
and ``bench_serving --apply-chat-template`` work; a system message is put before the first user turn (Mistral's
format has no system role).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import mistral_common

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "models" / "tiny-llama"
SP_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def write(out: Path) -> Path:
    from transformers import LlamaConfig, LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    if not SP_MODEL.exists():
        raise SystemExit(f"make_tiny_model: tokenizer file {SP_MODEL} is missing (is mistral_common installed?)")
    shutil.copy(SP_MODEL, out / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(out, legacy=False)  # converts the SentencePiece model (needs protobuf)
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        torch_dtype="bfloat16",
        tie_word_embeddings=False,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out = write(args.out)
    print(f"tiny model written to {out}: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
