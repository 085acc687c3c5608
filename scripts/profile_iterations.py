"""Measure real forward-iteration times of a random-weight model of a given config (plain PyTorch/transformers).

Feeds scripts/fit_profile.py, which fits the simulator's IterationLatencyModel (issue 3 §4, AccelGen A1's
``c + b*tokens + a*attention`` model). Nothing is downloaded: the model is built from a config.json (or a named
public shape from profiles/specs.py) with random weights. Measured shapes, each the median of ``--repeats``:

* prefill of ``n`` new tokens after ``c`` cached ones (one sequence; logits of the last token only, as servers do);
* decode of a batch of ``b`` sequences at context ``ctx`` (one new token each).

CPU (tiny model, seconds):   python scripts/profile_iterations.py --config models/tiny-llama --device cpu \
                                 --out data/profiles/cpu-tiny.measured.json
GPU (7B-13B, minutes):       python scripts/profile_iterations.py --config llama3-8b --device cuda --grid gpu \
                                 --out data/profiles/h100-llama3-8b.measured.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, OPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from profiles.specs import MODELS

GRIDS = {  # (prefill new tokens, prefill context before, decode batches, decode contexts, max KV tokens in a shape)
    "cpu": (
        (8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        (0, 256, 1024, 2048),
        (1, 2, 4, 8, 16, 32, 64, 128),
        (16, 64, 256, 512, 1024, 2048),
        16384,
    ),
    "gpu": (
        (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
        (0, 2048, 8192),
        (1, 8, 32, 64, 128, 256),
        (128, 1024, 4096),
        1 << 30,
    ),
}


def load_config(spec: str) -> transformers.PretrainedConfig:
    """A config.json path/directory, or the name of a public shape in profiles/specs.py."""
    if spec in MODELS:
        m = MODELS[spec]
        if not m.gated_mlp:
            return OPTConfig(hidden_size=m.hidden, ffn_dim=m.intermediate, num_attention_heads=m.heads,
                             num_hidden_layers=m.layers, vocab_size=m.vocab, max_position_embeddings=16384,
                             word_embed_proj_dim=m.hidden)  # fmt: skip
        return LlamaConfig(hidden_size=m.hidden, intermediate_size=m.intermediate, num_attention_heads=m.heads,
                           num_key_value_heads=m.kv_heads, num_hidden_layers=m.layers, vocab_size=m.vocab,
                           max_position_embeddings=16384, tie_word_embeddings=m.tied_embeddings)  # fmt: skip
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"--config {spec!r}: neither a config path nor one of {', '.join(MODELS)}")
    return AutoConfig.from_pretrained(path if path.is_dir() else path.parent)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return f"{cpu or platform.processor()} ({torch.get_num_threads()} torch threads)"


class Bench:
    def __init__(self, model: torch.nn.Module, device: str, repeats: int, vocab: int) -> None:
        self.model, self.device, self.repeats, self.vocab = model, device, repeats, vocab
        self.gen = torch.Generator(device="cpu").manual_seed(0)

    def ids(self, b: int, n: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (b, n), generator=self.gen).to(self.device)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def fill(self, b: int, ctx: int, chunk_tokens: int = 8192):
        """A KV cache of ``b`` sequences x ``ctx`` tokens, prefilled in chunks to bound activation memory."""
        cache, step = None, max(1, chunk_tokens // b)
        for s in range(0, ctx, step):
            out = self.model(self.ids(b, min(step, ctx - s)), past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        return cache

    def time_forward(self, b: int, n: int, ctx: int) -> list[float]:
        """Times of forwards of ``n`` new tokens for ``b`` sequences after ``ctx`` cached tokens (warm-up first)."""
        cache = self.fill(b, ctx) if ctx else None
        times = []
        for i in range(self.repeats + 1):
            x = self.ids(b, n)
            self.sync()
            t0 = time.perf_counter()
            out = self.model(x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            self.sync()
            if i:
                times.append(time.perf_counter() - t0)
            if cache is not None:
                cache.crop(-n)  # back to ctx cached tokens for the next repeat
            del out
        return times


def host_copy_bytes_per_s(nbytes: int = 64 << 20) -> float:
    """Host memory copy bandwidth: the CPU stand-in for the PCIe swap path (the CPU server cannot swap)."""
    src = torch.empty(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help=f"config.json path/dir or one of {', '.join(MODELS)}")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--grid", choices=tuple(GRIDS), default=None, help="default: cpu grid on cpu, gpu grid on cuda")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per shape per round (best is kept)")
    ap.add_argument("--rounds", type=int, default=5, help="passes over the grid (median over rounds is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--max-kv-gb", type=float, default=20.0, help="skip decode shapes whose KV exceeds this")
    ap.add_argument("--time-budget-s", type=float, default=600.0, help="stop measuring after this long")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    bench = Bench(model, args.device, args.repeats, config.vocab_size)
    pre_n, pre_c, dec_b, dec_c, max_kv_tokens = GRIDS[args.grid or ("gpu" if args.device == "cuda" else "cpu")]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize

    max_pos = getattr(config, "max_position_embeddings", 1 << 30)
    jobs = [("prefill", 1, n, c) for c in pre_c for n in pre_n if n + c <= min(max_pos, max_kv_tokens)]
    jobs += [
        ("decode", b, 1, c)
        for c in dec_c
        for b in dec_b
        if b * c <= max_kv_tokens and b * c * kv_per_token <= args.max_kv_gb * 1e9
    ]
    # Rounds over the whole grid in shuffled order: a shape's time is the median over rounds of the best of
    # ``repeats`` forwards, so neither a short spike nor a few seconds of contention from a shared machine's
    # other processes moves it much.
    rng = random.Random(0)
    times: dict[int, list[float]] = {i: [] for i in range(len(jobs))}
    start = time.perf_counter()
    with torch.inference_mode():
        for r in range(args.rounds):
            order = list(range(len(jobs)))
            rng.shuffle(order)
            for i in order:
                if time.perf_counter() - start > args.time_budget_s:
                    break
                _, b, n, c = jobs[i]
                times[i].append(min(bench.time_forward(b, n, c)))
            print(f"round {r + 1}/{args.rounds} done at {time.perf_counter() - start:.1f} s", file=sys.stderr)
    samples = []
    for i, (kind, b, n, c) in enumerate(jobs):
        if not times[i]:
            continue
        rec = {"kind": kind, "seconds": statistics.median(times[i]), "rounds": times[i]}
        rec.update({"prefill": [[n, c]]} if kind == "prefill" else {"decode_batch": b, "decode_ctx": c})
        samples.append(rec)
        print(f"{kind:7s} b={b:4d} n={n:5d} ctx={c:5d}  {rec['seconds'] * 1e3:9.3f} ms", file=sys.stderr)

    out = {
        "backend": "transformers",
        "config": args.config,
        "model_config": config.to_dict(),
        "device": device_name(args.device),
        "device_kind": args.device,
        "dtype": args.dtype,
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "load_average_at_end": os.getloadavg(),
        "kv_bytes_per_token": kv_per_token,
        "host_copy_bytes_per_s": host_copy_bytes_per_s(),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {len(samples)} samples to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
