"""Live AccelGen experiment where chunk size matters (issue 12.6): AccelGen vs *tuned* stock SGLang on the CPU server.

Why: on the tiny model an iteration is almost all the server's fixed per-iteration cost, so a chunk of a few hundred
tokens barely lengthens it and A1 (per-iteration chunk sizing against the tightest TBT SLO) has nothing to win; stock
SGLang beat AccelGen there. The ``chunk`` dummy model (``scripts/make_tiny_model.py --preset chunk``: ~100 MFLOP per
token) makes per-token compute dominate, so a fixed chunk either breaks a tight TBT class or starves long prompts.

Two steps, both on a real server started by PID and stopped in every outcome (eval.server):

1. ``--measure``: stock SGLang (chunk 4096, no mixed chunk) with the model; eval.server_probe measures decode steps
   and prefill iterations; prints how much a prefill of 64 / 256 / 1024 tokens lengthens an iteration over a decode
   step (``OUT/measure/chunk_effect.md``) and fits a latency profile (``OUT/measure/profile.json``, through
   scripts/fit_profile.py) that AccelGen starts from (``--ext-latency-profile PATH``; A1's online refit and error
   margin then follow the server) and that relative SLOs are computed on.
2. the comparison (default): per repeat, tuned stock — SGLang with ``--enable-mixed-chunk`` at every chunk of
   ``--chunks``, the best one (highest SLO attainment of its worst class, then goodput) standing for "tuned" in that
   repeat — and SGLang + ``--ext-policy accelgen``, on the same seeded slice of ``--workload`` (default
   ``mixed-chat-long``: AlpacaEval chat prompts beside long arXiv prompts) with per-application SLOs (``--slo``,
   default chat TTFT 5x / TBT 2x its isolated latency, summarisation 20x / 12x, on the measured profile). Repeats
   alternate the side order. Writes ``OUT/accelgen_live.json`` and ``OUT/accelgen_live.md``: per repeat and side the
   summary and per-class attainment, the tuned choice, and the verdicts of the issue's live target (AccelGen's
   attainment >= tuned stock's in every repeat, goodput ratio).

Quiet machine only: other processes on 2 cores measure contention, not schedulers (every side records the load
average). The smoke form (``--smoke``: 12 requests, one stock chunk, one repeat) checks the pipeline end to end::

    .venv/bin/python scripts/accelgen_live.py --measure --out runs/accelgen-live
    .venv/bin/python scripts/accelgen_live.py --out runs/accelgen-live --repeats 3 --num-requests 150 --rate 2
    .venv/bin/python scripts/accelgen_live.py --smoke --out runs/accelgen-live-smoke

Exit code 0 on success, 2 on bad arguments, 1 when a server fails (its log tail is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eval.server import ServerError  # noqa: E402

DEFAULT_SLO = "app:alpaca=5x:2x,arxiv=20x:12x"
DEFAULT_CHUNKS = (64, 128, 256, 512)
TARGET = 0.9


# --- step 1: how much a chunk costs on this machine ---------------------------------------------------------------
def chunk_effect(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """From eval.server_probe samples: the decode-step times and each prefill iteration (no cached context) in
    seconds and as a multiple of the one-sequence and eight-sequence decode steps."""
    dec = {(s["decode_batch"], s["decode_ctx"]): s["seconds"] for s in samples if s["kind"] == "decode"}
    pre = {s["prefill"][0][0]: s["seconds"] for s in samples if s["kind"] == "prefill" and s["prefill"][0][1] == 0}
    if not dec or not pre:
        raise ValueError("chunk_effect: the probe found no decode or no uncached prefill sample")

    def step(b: int) -> float:
        """The decode step of ``b`` sequences at the shortest measured context (the closest batch size)."""
        bb = min({k[0] for k in dec}, key=lambda x: abs(x - b))
        return min(v for k, v in dec.items() if k[0] == bb)

    d1, d8 = step(1), step(8)
    rows = [{"tokens": n, "seconds": t, "x_decode_1": t / d1, "x_decode_8": t / d8} for n, t in sorted(pre.items())]
    return {"decode_1_s": d1, "decode_8_s": d8, "prefill": rows}


def chunk_effect_md(eff: dict[str, Any], header: str) -> str:
    lines = [header, "", f"decode step: 1 sequence {eff['decode_1_s'] * 1e3:.1f} ms, 8 sequences "
             f"{eff['decode_8_s'] * 1e3:.1f} ms", "", "| prefill tokens | iteration ms | x decode (1) | x decode (8) |",
             "|---:|---:|---:|---:|"]  # fmt: skip
    for r in eff["prefill"]:
        lines.append(f"| {r['tokens']} | {r['seconds'] * 1e3:.1f} | {r['x_decode_1']:.1f} | {r['x_decode_8']:.1f} |")
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from eval import server_probe
    from eval.server import ServerProcess, cpu_server_args
    from scripts.make_tiny_model import ensure

    mdir = out / "measure"
    mdir.mkdir(parents=True, exist_ok=True)
    model = ensure(args.preset)
    srv_args = cpu_server_args(model, pool_tokens=args.pool_tokens, chunked_prefill_size=4096)
    load0 = os.getloadavg()
    with ServerProcess(srv_args, log_path=mdir / "server.log", env={"SGLANG_USE_CPU_ENGINE": "1"},
                       startup_timeout_s=args.timeout) as srv:  # fmt: skip
        ns = argparse.Namespace(url=srv.base_url, vocab=32000, pool_tokens=args.pool_tokens, decode_new=24,
                                rounds=args.probe_rounds, seed=args.seed,
                                time_budget_s=args.probe_budget_s)  # fmt: skip
        samples = asyncio.run(server_probe.run(ns))
    load1 = os.getloadavg()
    kv_bytes = _kv_bytes_per_token(model)
    doc = {"backend": "sglang-server", "config": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else
           str(model), "server_args": srv_args, "device": f"{_cpu()}, SGLang CPU server", "device_kind": "cpu",
           "date": time.strftime("%Y-%m-%d"), "rounds": args.probe_rounds, "load_average_at_start": load0,
           "load_average_at_end": load1, "kv_bytes_per_token": kv_bytes, "samples": samples}  # fmt: skip
    (mdir / "measured.json").write_text(json.dumps(doc, indent=1) + "\n")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_profile.py"), str(mdir / "measured.json"),
                    "--name", f"cpu-{args.preset}-llama", "--kv-capacity-tokens", str(args.pool_tokens),
                    "--out", str(mdir / "profile.json")], check=True, cwd=ROOT)  # fmt: skip
    eff = chunk_effect(samples)
    header = (f"# Iteration time vs prefill size: {args.preset} model on the CPU server\n\n"
              f"{time.strftime('%Y-%m-%d')}, {_cpu()}; 1-min load average {load0[0]:.1f} -> {load1[0]:.1f} "
              f"(other processes only add time; the fastest of {args.probe_rounds} probe rounds is kept)")  # fmt: skip
    md = chunk_effect_md(eff, header)
    (mdir / "chunk_effect.md").write_text(md)
    print(md)
    return eff


def _kv_bytes_per_token(model: Path) -> int:
    c = json.loads((model / "config.json").read_text())
    head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head * 2  # K+V x layers x kv heads x dims x bf16


def _cpu() -> str:
    p = Path("/proc/cpuinfo")
    lines = p.read_text().splitlines() if p.exists() else []
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "cpu")
    return f"{name} ({os.cpu_count()} cores)"


# --- step 2: AccelGen vs tuned stock ------------------------------------------------------------------------------
def worst_class(by_class: dict[str, dict[str, Any]], field: str = "slo_attainment") -> float:
    return min((c[field] for c in by_class.values()), default=0.0)


def pick_tuned(stock: dict[str, dict[str, Any]]) -> str:
    """The stock chunk standing for tuned SGLang in one repeat: best worst-class attainment, then goodput."""
    return max(stock, key=lambda k: (worst_class(stock[k]["by_class"]), stock[k]["summary"]["goodput_rps"]))


def verdicts(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's live target over repeats: AccelGen's SLO attainment >= tuned stock's in every repeat, and the
    goodput ratio (median and range)."""
    att, good = [], []
    for rep in repeats:
        tuned = rep["stock"][rep["tuned"]]["summary"]
        ours = rep["accelgen"]["summary"]
        att.append(ours["slo_attainment"] >= tuned["slo_attainment"])
        good.append(ours["goodput_rps"] / tuned["goodput_rps"] if tuned["goodput_rps"] else None)
    ratios = [g for g in good if g is not None]
    return {"attainment_ge_tuned_every_repeat": all(att), "per_repeat_attainment_ge": att, "goodput_x": good,
            "goodput_x_median": statistics.median(ratios) if ratios else None,
            "goodput_x_range": [min(ratios), max(ratios)] if ratios else None}  # fmt: skip


def _side(label: str, server_args: list[str], specs: list, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from eval.figures import live
    from eval.metrics import read_records, summarize_by_class

    summary = live.run_side(label, server_args, specs, out, "cpu", args.seed, args.timeout)
    records = read_records(out / f"requests_{label}.jsonl")
    return {"summary": live.strip(summary), "by_class": summarize_by_class(records)}


def compare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import profiles
    from eval.figures import live
    from eval.slo import parse_slo
    from eval.workloads import load_workload
    from scripts.make_tiny_model import ensure

    model = ensure(args.preset)
    prof_path = args.profile or str(out / "measure" / "profile.json")
    prof = profiles.get(prof_path)
    specs = load_workload(args.workload, num_requests=args.num_requests, rate=args.rate, seed=args.seed,
                          scale=args.scale, max_context=args.max_context, long_share=args.long_share,
                          slo=parse_slo(args.slo, prof))  # fmt: skip
    base = live.server_args("cpu", model, args.pool_tokens, shlex.split(args.server_args))
    sides: list[tuple[str, list[str]]] = [
        (f"stock-c{c}", [*base, "--enable-mixed-chunk", "--chunked-prefill-size", str(c)]) for c in args.chunks
    ]
    sides.append(("accelgen", [*base, "--ext-policy", "accelgen", "--ext-latency-profile", prof_path,
                               *shlex.split(args.ext_args)]))  # fmt: skip
    repeats = []
    for i in range(args.repeats):
        d = out / f"repeat-{i}"
        d.mkdir(parents=True, exist_ok=True)
        order = sides if i % 2 == 0 else list(reversed(sides))
        got = {label: _side(label, sa, specs, d, args) for label, sa in order}
        stock = {k: v for k, v in got.items() if k.startswith("stock-")}
        repeats.append({"order": [label for label, _ in order], "stock": stock, "accelgen": got["accelgen"],
                        "tuned": pick_tuned(stock)})  # fmt: skip
        print(f"[accelgen-live] repeat {i + 1}/{args.repeats}: tuned stock = {repeats[-1]['tuned']}", flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("measure",)} | {
        "model": str(model), "profile": prof_path, "requests": len(specs), "cpu": _cpu()}  # fmt: skip
    doc = {"config": config, "repeats": repeats, "verdicts": verdicts(repeats)}
    (out / "accelgen_live.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = report_md(doc)
    (out / "accelgen_live.md").write_text(md)
    print(md)
    return doc


def report_md(doc: dict[str, Any]) -> str:
    c = doc["config"]
    lines = [f"# AccelGen vs tuned stock SGLang, live ({c['preset']} model, CPU)", "",
             f"{c['requests']} requests of {c['workload']} (long share {c['long_share']}, lengths /{c['scale']:g}) at "
             f"{c['rate']:g} req/s, SLO `{c['slo']}` on profile `{c['profile']}`, pool {c['pool_tokens']} tokens; "
             f"stock chunks {list(c['chunks'])} with mixed chunk; {c['repeats']} repeat(s).", "",
             "| repeat | side | SLO att. | worst class att. | per class (SLO / TBT att.) | goodput req/s | "
             "TBT p99 ms | TTFT p99 ms | load avg |", "|---|---|---:|---:|---|---:|---:|---:|---|"]  # fmt: skip
    for i, rep in enumerate(doc["repeats"]):
        for label, side in [*rep["stock"].items(), ("accelgen", rep["accelgen"])]:
            s = side["summary"]
            cls = ", ".join(f"{k}: {v['slo_attainment']:.2f} / {v['tbt_slo_attainment']:.2f}"
                            for k, v in side["by_class"].items())  # fmt: skip
            tag = " (tuned)" if label == rep["tuned"] else ""
            la = s.get("load_avg_1min")
            load = f"{la[0]:.1f}-{la[1]:.1f}" if isinstance(la, list) else "-"
            lines.append(f"| {i} | {label}{tag} | {s['slo_attainment']:.3f} | {worst_class(side['by_class']):.3f} | "
                         f"{cls} | {s['goodput_rps']:.3f} | {s['tbt_p99_ms'] or 0:.0f} | {s['ttft_p99_ms'] or 0:.0f} | "
                         f"{load} |")  # fmt: skip
    v = doc["verdicts"]
    lines += ["", "- AccelGen's SLO attainment >= tuned stock's in every repeat: "
              f"{v['attainment_ge_tuned_every_repeat']} (per repeat {v['per_repeat_attainment_ge']})",
              f"- goodput AccelGen / tuned stock: median {_fmt(v['goodput_x_median'])}, range "
              f"{v['goodput_x_range']} (per repeat {[_fmt(g) for g in v['goodput_x']]})"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/accelgen_live.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="step 1: measure iteration times and fit the profile")
    ap.add_argument("--preset", default="chunk", help="model preset (scripts/make_tiny_model.py)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "accelgen-live"))
    ap.add_argument("--profile", default=None, help="latency profile name or JSON (default OUT/measure/profile.json)")
    ap.add_argument("--workload", default="mixed-chat-long")
    ap.add_argument("--long-share", type=float, default=0.3)
    ap.add_argument("--num-requests", type=int, default=150)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--scale", type=float, default=4.0, help="divide the trace's lengths by this")
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--pool-tokens", type=int, default=8192)
    ap.add_argument("--slo", default=DEFAULT_SLO, help="eval.slo spec (relative multiples use the profile)")
    ap.add_argument("--chunks", default=",".join(map(str, DEFAULT_CHUNKS)), help="stock --chunked-prefill-size sweep")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ext-args", default="", help="more --ext-* flags for the AccelGen side")
    ap.add_argument("--server-args", default="", help="more server flags for every side")
    ap.add_argument("--timeout", type=float, default=300.0, help="server start-up and per-request limit, seconds")
    ap.add_argument("--probe-rounds", type=int, default=3)
    ap.add_argument("--probe-budget-s", type=float, default=420.0)
    ap.add_argument("--smoke", action="store_true", help="12 requests, stock chunk 128 only, one repeat")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.chunks = tuple(int(c) for c in str(args.chunks).split(","))
    except ValueError:
        print(f"error: --chunks: expected comma-separated integers, got {args.chunks!r}", file=sys.stderr)
        return 2
    if args.smoke:
        args.num_requests, args.chunks, args.repeats, args.rate = 12, (128,), 1, 1.0
    for flag, ok in (("--num-requests", args.num_requests >= 1), ("--rate", args.rate > 0),
                     ("--repeats", args.repeats >= 1), ("--chunks", all(c > 0 for c in args.chunks)),
                     ("--long-share", 0 <= args.long_share <= 1)):  # fmt: skip
        if not ok:
            print(f"error: {flag}: out of range", file=sys.stderr)
            return 2
    out = Path(args.out)
    t0 = time.monotonic()
    try:
        if args.measure:
            measure(args, out)
        else:
            compare(args, out)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"[accelgen-live] done in {time.monotonic() - t0:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
