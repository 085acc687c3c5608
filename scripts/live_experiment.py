"""Live-server experiment: stock SGLang vs SGLang + extension (``--ext-policy``), same trace slice, one run each.

Why: the simulator's claims must survive a real server. This starts the stock ``sglang.launch_server`` twice (stock
flags, then the same flags plus ``--ext-policy POLICY``), replays the same seeded Poisson slice of a real trace
open-loop through eval.loadgen (streaming, per-token times, responses ended at the trace's true length by the EOS
forcer; the scheduler sees only a realistic ``max_new_tokens`` cap), and stops each server by PID. Works for any
model and device; nothing is downloaded (``--load-format dummy``: random weights with the model's real shapes).

CPU, tiny model (default; the CI form finishes in < 3 min)::

    .venv/bin/python scripts/live_experiment.py --ci
    .venv/bin/python scripts/live_experiment.py --policy cacheopt --num-requests 80 --rate 6 --pool-tokens 1536

GPU box with SGLang's normal CUDA install (``pip install -e . sglang==0.5.23``), Llama-3-8B or Llama-2-13B shapes
from their public ``config.json`` values written under ``--out`` with the tiny model's tokenizer::

    python scripts/live_experiment.py --device cuda --model llama3-8b --policy cacheopt \
        --workload azure-conv --num-requests 400 --rate 8 --pool-tokens 32768 --out runs/live-h100-llama3
    python scripts/live_experiment.py --device cuda --model llama2-13b --policy accelgen \
        --workload mixed-code-conv --num-requests 300 --rate 4 --out runs/live-h100-llama2

Defaults per device: CPU pool 1536 tokens, lengths / 4, context 2048, SLO ``abs:3000:150`` (TTFT/TBT ms); CUDA
pool 32768 tokens, real lengths, context 4096, SLO classes ``default`` relative to the ``h100-<model>`` latency
profile (which the extension side also gets as ``--ext-latency-profile``). Extra server flags: ``--server-args``
(both sides); extra extension flags: ``--ext-args`` (e.g. ``"--ext-predictor-mode online"``).

Every side records the 1-minute load average before and after it and warns when it exceeds 1.0 per core;
``--repeats K`` runs the pair K times (side order alternating), each repeat under ``OUT/repeat-<i>/``, and reports
median [min-max] per metric in the table and ``range`` / ``repeats`` in ``comparison.json`` (eval.live_repeats).

Writes ``OUT/stock.json`` and ``OUT/<policy>.json`` (eval.metrics summary schema plus run diagnostics),
``OUT/requests_<side>.jsonl`` (per-request records), ``OUT/comparison.json``, ``OUT/comparison.md`` (the table
printed at the end) and ``OUT/comparison.png``. Unattended and bounded: each server must be healthy within
``--timeout`` s, every request is bounded by it too, and ``--num-requests / --rate`` sets the replay length
(keep it under ~5 min per side for the 10-minute budget per experiment). Exit code 0 on success, 2 on bad
arguments, 1 when a server fails (its log tail is printed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eval import demo  # noqa: E402
from eval.figures import live  # noqa: E402
from eval.server import ServerError  # noqa: E402
from eval.workloads import available_workloads  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/live_experiment.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--model", choices=live.MODELS, default="tiny", help="tiny (CPU) or a public config (dummy weights)"
    )
    ap.add_argument("--policy", default="cacheopt", help="--ext-policy of the extension side")
    ap.add_argument("--workload", default="azure-conv", choices=available_workloads())
    ap.add_argument("--num-requests", type=int, default=60)
    ap.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals, requests/s")
    ap.add_argument("--pool-tokens", type=int, default=None, help="KV pool (--max-total-tokens) of both servers")
    ap.add_argument("--scale", type=float, default=None, help="divide the trace's lengths by this")
    ap.add_argument("--max-context", type=int, default=None, help="clip prompt + output to this many tokens")
    ap.add_argument("--slo", default=None, help="SLO spec (eval.slo): abs:TTFT_MS:TBT_MS, default, or classes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ext-args", default="", help="more --ext-* flags for the extension side")
    ap.add_argument("--server-args", default="", help="more server flags for both sides")
    ap.add_argument("--timeout", type=float, default=240.0, help="server start-up and per-request limit, seconds")
    ap.add_argument("--repeats", type=int, default=1, help="run the pair K times: median [min-max] per metric")
    ap.add_argument("--ci", action="store_true", help="reduced CPU form for CI: 24 requests at 4 req/s")
    ap.add_argument("--out", default=None, help="output directory (default runs/live-<device>-<model>-<policy>)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ci:
        args.device, args.model, args.num_requests, args.rate = "cpu", "tiny", 24, 4.0
    if args.device == "cpu" and args.model != "tiny":
        print("error: --device cpu serves only --model tiny (an 8B/13B model on 2 CPU cores is hours)", file=sys.stderr)
        return 2
    if args.num_requests < 1 or args.rate <= 0:
        print("error: --num-requests must be >= 1 and --rate > 0", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "runs" / f"live-{args.device}-{args.model}-{args.policy}"
    t0 = time.monotonic()
    try:
        doc = live.run_pair(device=args.device, model=args.model, policy=args.policy, workload_name=args.workload,
                            num_requests=args.num_requests, rate=args.rate, pool_tokens=args.pool_tokens,
                            scale=args.scale, max_context=args.max_context, slo=args.slo, seed=args.seed,
                            ext_args=tuple(shlex.split(args.ext_args)),
                            server_extra=tuple(shlex.split(args.server_args)), out=out,
                            timeout_s=args.timeout, repeats=args.repeats)  # fmt: skip
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    label = f"+ext {args.policy}"
    title = live.title(doc["config"])
    md = demo.table(doc["stock"], doc["ext"], label, doc["range"])
    (out / "comparison.md").write_text(f"{title}\n\n{md}\n")
    demo.plot(doc["stock"], doc["ext"], label, out / "comparison.png", title)
    print(f"\n{title}\n\n{md}\n")
    print(f"[live] wrote {out}/comparison.{{json,md,png}} in {time.monotonic() - t0:.0f} s")
    warnings = [s.get("load_warning") for s in (doc["stock"], doc["ext"]) if s.get("load_warning")]
    for w in warnings:
        print(f"[live] {w}", file=sys.stderr)
    print(json.dumps({"stock_failed": doc["stock"]["failed"], "ext_failed": doc["ext"]["failed"],
                      "repeats": args.repeats, "load_warnings": len(warnings)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
