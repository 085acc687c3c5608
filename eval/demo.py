"""The demo (the README's first command): stock SGLang vs SGLang + extension on the embedded tiny model, one run.

Both servers get the same small KV pool (KV competition on purpose: a few long answers fill it, so stock SGLang
retracts) and the same slice of a real trace (Azure 2023 conversation lengths, prompts scaled down to the tiny model,
outputs scaled up to long, heavy-tailed answers: issue 11's KV-bound live scenario), replayed open-loop with the same
seeded Poisson arrivals, the same per-request SLOs and the same batching mode (SGLang's ``--enable-mixed-chunk`` on
the stock side when the extension runs mixed chunk: a matched comparison). The client cap is the context room (what
SGLang fills in for a client that omits ``max_tokens``): it never reveals the true length. Prints a side-by-side
table and writes ``<out>/demo.png`` and ``<out>/demo.json``.
Servers are started and stopped in turn; each is stopped by PID on success, failure and Ctrl-C. Every side records
the 1-minute load average before and after it and warns above 1.0 per core; ``--repeats K`` runs the pair K times
(side order alternating) and reports median [min-max] per metric (eval.live_repeats).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from eval.live_repeats import cell, run_repeats, with_load
from eval.loadgen import run_load
from eval.metrics import write_records
from eval.server import ServerProcess, cpu_server_args
from eval.workloads import RequestSpec, load_workload

ROOT = Path(__file__).resolve().parents[1]
TABLE_ROWS = (
    "completed", "failed", "throughput_tok_s", "goodput_rps", "ttft_p50_ms", "ttft_p99_ms", "tbt_p99_ms",
    "stall_p50_ms", "stall_p99_ms", "e2e_p99_ms", "ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment",
    "preemptions", "ext_swaps", "ext_recomputes",
)  # fmt: skip
# The Azure trace carries no prompt text, so C1's bound is learned online from finished lengths; decodes ride with
# prefill chunks (SGLang's mixed chunk), as the simulator found best for CacheOPT.
DEFAULT_EXT_ARGS = "--ext-predictor-mode online --ext-cacheopt-mixed-chunk true"
DEFAULT_STOCK_ARGS = "--enable-mixed-chunk"  # matched batching: stock SGLang's own mixed-chunk mode


def demo_workload(args: argparse.Namespace) -> list[RequestSpec]:
    specs = load_workload("azure-conv", num_requests=args.num_requests, rate=args.rate, seed=args.seed,
                          scale=args.scale, max_context=min(2048, args.pool_tokens // 2),
                          output_scale=args.output_scale)  # fmt: skip
    return [dataclasses.replace(s, ttft_slo_ms=args.ttft_slo_ms, tbt_slo_ms=args.tbt_slo_ms) for s in specs]


def run_side(name: str, extra: list[str], specs: list[RequestSpec], args: argparse.Namespace,
             out: Path | None = None) -> dict[str, Any]:  # fmt: skip
    return with_load(name, lambda: _run_side(name, extra, specs, args, out or Path(args.out)))


def _run_side(name: str, extra: list[str], specs: list[RequestSpec], args: argparse.Namespace,
              out: Path) -> dict[str, Any]:  # fmt: skip
    server_args = cpu_server_args(pool_tokens=args.pool_tokens, extra=extra)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] starting {name} server ({' '.join(extra) or 'stock flags'}) ...", flush=True)
    with ServerProcess(server_args, log_path=out / f"server_{name}.log") as srv:
        print(f"[demo] {name}: healthy after {srv.startup_s:.1f} s; replaying {len(specs)} requests", flush=True)
        records, summary = run_load(srv.base_url, specs, mode=args.mode, seed=args.seed, flush_cache=True,
                                    metadata={"side": name, "server_args": server_args})  # fmt: skip
        summary["startup_s"] = srv.startup_s
        summary |= ext_preemptions(srv.base_url)
    write_records(out / f"requests_{name}.jsonl", records)
    return summary


def ext_preemptions(base_url: str) -> dict[str, float]:
    """The extension's preemptions by C5's mode from ``/metrics`` (``sglang_ext:preemptions_total``; absent on the
    stock side, which exports no ``sglang_ext:`` series): swaps are what the table shows beside SGLang's count."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    try:
        text = httpx.get(base_url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for fam in text_string_to_metric_families(text):
        if fam.name == "sglang_ext:preemptions":
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    key = f"ext_{smp.labels.get('mode', 'none')}s"
                    out[key] = out.get(key, 0.0) + smp.value
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def table(stock: dict[str, Any], ext: dict[str, Any], label: str, ranges: dict[str, Any] | None = None) -> str:
    """Side-by-side table; with ``ranges`` (repeats) each cell is ``median [min-max]``; the last rows give the
    repeats and the worst 1-minute load average around each side."""
    rs, re_ = (ranges or {}).get("stock", {}), (ranges or {}).get("ext", {})
    lines = [f"| metric | stock SGLang | {label} | stock/{label} (medians) |", "|---|---:|---:|---:|"]
    for key in TABLE_ROWS:
        a, b = stock.get(key), ext.get(key)
        ratio = "-"
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            ratio = f"{a / b:.2f}x"
        lines.append(f"| {key} | {cell(a, rs.get(key), _fmt)} | {cell(b, re_.get(key), _fmt)} | {ratio} |")
    lines.append(f"| repeats | {stock.get('repeats', 1)} | {ext.get('repeats', 1)} | |")
    load = lambda s: "-" if not s.get("load_avg_1min") else "{:.2f} -> {:.2f}".format(*s["load_avg_1min"])  # noqa: E731
    lines.append(f"| 1-min load average (before -> after, worst repeat) | {load(stock)} | {load(ext)} | |")
    return "\n".join(lines)


def plot(stock: dict[str, Any], ext: dict[str, Any], label: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    keys = ["ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "e2e_p99_ms"]
    xs = range(len(keys))
    ax1.bar([x - 0.2 for x in xs], [stock[k] or 0 for k in keys], 0.4, label="stock SGLang")
    ax1.bar([x + 0.2 for x in xs], [ext[k] or 0 for k in keys], 0.4, label=label)
    ax1.set_xticks(list(xs), [k.replace("_ms", "") for k in keys])
    ax1.set_ylabel("ms (log)")
    ax1.set_yscale("log")
    ax1.set_title("tail latency (lower is better)")
    ax1.legend()
    keys2 = ["ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment"]
    xs2 = range(len(keys2))
    ax2.bar([x - 0.2 for x in xs2], [stock[k] for k in keys2], 0.4, label="stock SGLang")
    ax2.bar([x + 0.2 for x in xs2], [ext[k] for k in keys2], 0.4, label=label)
    ax2.set_xticks(list(xs2), ["TTFT", "TBT", "both"])
    ax2.set_ylim(0, 1.05)
    ax2.set_title("SLO attainment (higher is better)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="cacheopt", help="extension policy to compare with stock (--ext-policy)")
    ap.add_argument("--num-requests", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1.5, help="Poisson arrivals, requests/s")
    ap.add_argument("--scale", type=float, default=8.0, help="divide the trace's lengths by this")
    ap.add_argument("--output-scale", type=float, default=16.0, help="output multiplier (before --scale)")
    ap.add_argument("--pool-tokens", type=int, default=2048, help="KV pool (--max-total-tokens) of both servers")
    ap.add_argument("--ttft-slo-ms", type=float, default=3000.0)
    ap.add_argument("--tbt-slo-ms", type=float, default=150.0)
    ap.add_argument("--mode", default="cap", choices=("cap", "exact"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="run the pair K times: median [min-max] per metric")
    ap.add_argument("--ext-args", default=DEFAULT_EXT_ARGS,
                    help=f"more --ext-* flags for the extension side (default: {DEFAULT_EXT_ARGS!r})")  # fmt: skip
    ap.add_argument("--stock-args", default=DEFAULT_STOCK_ARGS,
                    help=f"SGLang flags for the stock side (default: {DEFAULT_STOCK_ARGS!r}; '' = none)")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "runs" / "demo"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    specs = demo_workload(args)
    label = f"+ext {args.policy}"
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    ext_flags = ["--ext-policy", args.policy, *args.ext_args.split()]

    def where(i: int) -> Path:
        return out if args.repeats == 1 else out / f"repeat-{i}"

    try:
        rep = run_repeats(
            args.repeats,
            [
                ("stock", lambda i: run_side("stock", args.stock_args.split(), specs, args, where(i))),
                ("ext", lambda i: run_side(args.policy, ext_flags, specs, args, where(i))),
            ],
        )
    except KeyboardInterrupt:
        print("[demo] interrupted; servers stopped", file=sys.stderr)
        return 130
    stock, ext = rep["median"]["stock"], rep["median"]["ext"]
    outs = args.output_scale / args.scale
    title = (f"azure-conv x{len(specs)} (prompts /{args.scale:g}, outputs x{outs:g}), Poisson {args.rate:g} req/s, "
             f"pool {args.pool_tokens} tokens, mode={args.mode}, stock flags "
             f"{args.stock_args or 'none'!r}, SLO TTFT {args.ttft_slo_ms:g} ms / TBT {args.tbt_slo_ms:g} ms, "
             f"{args.repeats} repeat(s)")  # fmt: skip
    md = table(stock, ext, label, rep["range"])
    print(f"\n{title}\n\n{md}\n")
    plot(stock, ext, label, out / "demo.png", title)
    doc = {"title": title, "stock": stock, args.policy: ext, "range": rep["range"], "repeats": rep["repeats"],
           "order": rep["order"]}  # fmt: skip
    (out / "demo.json").write_text(json.dumps(doc, indent=2))
    (out / "demo.md").write_text(f"{title}\n\n{md}\n")
    print(f"[demo] wrote {out / 'demo.png'}, {out / 'demo.json'} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
