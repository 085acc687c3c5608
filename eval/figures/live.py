"""Stock SGLang vs SGLang + extension on a real server, same trace slice, ``repeats`` times (median and range, the
1-minute load average around every side: eval.live_repeats): the engine of ``scripts/live_experiment.py`` and of
the ``live_cpu`` / ``simulator_fidelity`` figures.

Why a model directory written here: nothing may be downloaded, and ``--load-format dummy`` needs only a config
(random weights have the real shapes, so iteration times are the real model's) and a tokenizer. The Llama-3-8B and
Llama-2-13B configs below are the public ``config.json`` values; the tokenizer is the tiny model's (a Llama
SentencePiece vocabulary of 32,000 ids). Prompts are token ids drawn below 32,000 and responses end at the trace's
length by the EOS forcer (``eos_token_id`` 2 of that tokenizer), so text never matters; Llama-3's real 128,256-row
embedding and LM head are kept for compute fidelity.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from eval.live_repeats import run_repeats, with_load
from eval.loadgen import run_load
from eval.metrics import write_records
from eval.server import TINY_MODEL, ServerProcess, cpu_server_args
from eval.workloads import RequestSpec, load_workload

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "attention_bias": False,
          "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02, "pretraining_tp": 1,
          "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "bfloat16", "bos_token_id": 1,
          "eos_token_id": 2}  # fmt: skip
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3-8b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                  "num_hidden_layers": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
                  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "vocab_size": 128256},
    "llama2-13b": {**_LLAMA, "hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
                   "num_hidden_layers": 40, "num_key_value_heads": 40, "max_position_embeddings": 4096,
                   "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 32000},
}  # fmt: skip
MODELS = ("tiny", *MODEL_CONFIGS)
TOKENIZER_VOCAB = 32000
# Per device: (KV pool tokens, length scale, max context, SLO spec, latency profile for relative SLOs)
DEVICE_DEFAULTS = {"cpu": (1536, 4.0, 2048, "abs:3000:150", None),
                   "cuda": (32768, 1.0, 4096, "default", "h100-{model}")}  # fmt: skip


def model_dir(model: str, dest: Path) -> Path:
    """The served model's directory: the tiny model itself, or ``dest/<model>`` with the public config and the
    tiny model's tokenizer files."""
    if model == "tiny":
        return TINY_MODEL
    if model not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    d = dest / model
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(MODEL_CONFIGS[model], indent=2) + "\n")
    for f in TINY_MODEL.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, d / f.name)
    return d


def server_args(device: str, path: Path, pool_tokens: int, extra: list[str]) -> list[str]:
    if device == "cpu":
        return cpu_server_args(path, pool_tokens=pool_tokens, extra=extra)
    if device != "cuda":
        raise ValueError(f"unknown device {device!r}; valid: cpu, cuda")
    return ["--model-path", str(path), "--load-format", "dummy", "--max-total-tokens", str(pool_tokens),
            "--enable-metrics", "--enable-custom-logit-processor", "--log-level", "info", *extra]  # fmt: skip


def workload(name: str, n: int, rate: float, seed: int, scale: float, max_context: int, slo: str,
             slo_profile: str | None) -> list[RequestSpec]:  # fmt: skip
    import profiles
    from eval.slo import parse_slo

    lat = profiles.get(slo_profile) if slo_profile else None
    return load_workload(name, num_requests=n, rate=rate, seed=seed, scale=scale, max_context=max_context,
                         slo=parse_slo(slo, lat))  # fmt: skip


def run_side(label: str, args: list[str], specs: list[RequestSpec], out: Path, device: str, seed: int,
             timeout_s: float) -> dict[str, Any]:  # fmt: skip
    return with_load(label, lambda: _run_side(label, args, specs, out, device, seed, timeout_s))


def _run_side(label: str, args: list[str], specs: list[RequestSpec], out: Path, device: str, seed: int,
              timeout_s: float) -> dict[str, Any]:  # fmt: skip
    env = {"SGLANG_USE_CPU_ENGINE": "1" if device == "cpu" else "0"}
    with ServerProcess(args, log_path=out / f"server_{label}.log", env=env, startup_timeout_s=timeout_s) as srv:
        print(f"[live] {label}: healthy after {srv.startup_s:.1f} s; replaying {len(specs)} requests", flush=True)
        records, summary = run_load(srv.base_url, specs, mode="cap", seed=seed, flush_cache=True,
                                    vocab_size=TOKENIZER_VOCAB, request_timeout_s=timeout_s,
                                    metadata={"side": label, "server_args": args})  # fmt: skip
        summary["startup_s"] = srv.startup_s
    write_records(out / f"requests_{label}.jsonl", records)
    (out / f"{label}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_pair(*, device: str = "cpu", model: str = "tiny", policy: str = "cacheopt", workload_name: str = "azure-conv",
             num_requests: int = 40, rate: float = 4.0, pool_tokens: int | None = None, scale: float | None = None,
             max_context: int | None = None, slo: str | None = None, seed: int = 0, ext_args: tuple[str, ...] = (),
             server_extra: tuple[str, ...] = (), out: Path, timeout_s: float = 240.0,
             repeats: int = 1) -> dict[str, Any]:  # fmt: skip
    """Run stock and ``--ext-policy policy`` on the same specs, ``repeats`` times (side order alternating); returns
    and writes ``comparison.json``: ``stock`` / ``ext`` are the medians over repeats, ``range`` their [min, max],
    ``repeats`` every run, each side with the load average around it."""
    pool_d, scale_d, ctx_d, slo_d, prof_d = DEVICE_DEFAULTS[device]
    pool, scale, max_context = pool_tokens or pool_d, scale or scale_d, max_context or ctx_d
    slo = slo or slo_d
    slo_profile = prof_d.format(model=model) if prof_d and model != "tiny" else None
    out.mkdir(parents=True, exist_ok=True)
    path = model_dir(model, out)
    if model != "tiny":
        max_context = min(max_context, MODEL_CONFIGS[model]["max_position_embeddings"])
    specs = workload(workload_name, num_requests, rate, seed, scale, max_context, slo, slo_profile)
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    ext_flags = ["--ext-policy", policy, *ext_args]
    if device == "cuda" and slo_profile and not any(a.startswith("--ext-latency-profile") for a in ext_args):
        ext_flags += ["--ext-latency-profile", slo_profile]
    stock_args = server_args(device, path, pool, list(server_extra))
    ext_args_all = server_args(device, path, pool, [*server_extra, *ext_flags])

    def side(label: str, args: list[str]) -> Any:
        def run(i: int) -> dict[str, Any]:
            d = out if repeats == 1 else out / f"repeat-{i}"
            d.mkdir(parents=True, exist_ok=True)
            return run_side(label if label == "stock" else policy, args, specs, d, device, seed, timeout_s)

        return run

    rep = run_repeats(repeats, [("stock", side("stock", stock_args)), ("ext", side("ext", ext_args_all))])
    stock, ext = rep["median"]["stock"], rep["median"]["ext"]
    config = {"device": device, "model": model, "policy": policy, "workload": workload_name, "num_requests": len(specs),
              "rate": rate, "pool_tokens": pool, "scale": scale, "max_context": max_context, "slo": slo,
              "slo_profile": slo_profile, "seed": seed, "ext_args": list(ext_args), "server_extra": list(server_extra),
              "wall_s": time.monotonic() - t0, "load_avg_1min": [load_start, os.getloadavg()[0]],
              "cpu_count": os.cpu_count(), "repeats": repeats, "order": rep["order"]}  # fmt: skip
    doc = {"config": config, "stock": stock, "ext": ext, "range": rep["range"], "repeats": rep["repeats"]}
    (out / "comparison.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def title(config: dict[str, Any]) -> str:
    reps = config.get("repeats", 1)
    return (f"{config['model']} on {config['device']}: {config['workload']} x{config['num_requests']} (lengths "
            f"/{config['scale']:g}), Poisson {config['rate']:g} req/s, pool {config['pool_tokens']} tokens, SLO "
            f"{config['slo']}, {reps} repeat{'s' if reps != 1 else ''} (median [range])" + _load(config))  # fmt: skip


def _load(config: dict[str, Any]) -> str:
    """Other processes on the machine slow a CPU server; the report says how busy it was."""
    la = config.get("load_avg_1min")
    return f"; 1-min load average {la[0]:.1f} -> {la[1]:.1f} on {config.get('cpu_count')} cores" if la else ""


def sim_specs_params(config: dict[str, Any]) -> dict[str, Any]:
    """What a simulator cell needs to replay the same specs as a live run (eval.figures.cells.sim_cell keywords)."""
    return {"n": config["num_requests"], "seed": config["seed"], "slo": config["slo"], "scale": config["scale"],
            "max_context": config["max_context"], "pool_tokens": config["pool_tokens"], "page_size": 1}  # fmt: skip


def strip(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without the bulky run diagnostics (for figure JSON)."""
    return {k: v for k, v in summary.items() if k not in ("workload", "finish_reasons", "errors", "server_args")}
