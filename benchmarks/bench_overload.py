"""Overload and drain on the real CPU server, full length (issue 13): per policy, start the tiny CPU server with the
extension, measure its capacity with a burst, drive it at ``--factor`` x capacity for ``--duration`` seconds (60 by
default), check every request completed or was refused with SGLang's queue-full error and that SGLang's free KV
count came back to its initial value; then SIGTERM the launcher during load and check nothing sent was lost and the
server exited. ``tests/test_server_overload.py`` runs the same code for 15 s in CI.

Usage: ``python -m benchmarks.bench_overload [--policies cacheopt,accelgen] [--duration 60] [--out DIR]``; writes
``DIR/overload.json`` and prints one line per check. Exit status 1 if any check failed. Loopback only; bounded in
requests (``--max-requests``) and time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from eval import overload
from eval.server import ServerError, ServerProcess, cpu_server_args

QUEUE_LIMIT = 48


def run_policy(policy: str, a: argparse.Namespace) -> dict:
    extra = ["--ext-policy", policy, "--ext-predictor-mode", "online", "--ext-default-tbt-slo-ms", "300",
             "--max-queued-requests", str(a.queue_limit)]  # fmt: skip
    out: dict = {"policy": policy}
    with ServerProcess(cpu_server_args(pool_tokens=a.pool_tokens, extra=extra),
                       log_path=a.out / f"server-{policy.replace('+', '-')}.log") as srv:  # fmt: skip
        cap = overload.capacity_rps(srv.base_url)
        res = overload.overload(srv.base_url, cap, factor=a.factor, duration_s=a.duration, max_requests=a.max_requests)
        out["overload"] = {**dataclasses.asdict(res), "ok": res.ok}
        verdict = "ok" if res.ok else "FAILED"
        print(f"{policy}: capacity {cap:.2f} req/s; {a.factor:g}x for {a.duration:g} s: sent {res.sent}, completed "
              f"{res.completed}, refused {res.refused}, other errors {res.other_errors or 'none'}; free KV "
              f"{res.kv_before['free']} -> {res.kv_after['free']} ({verdict})", flush=True)  # fmt: skip
        drain = overload.sigterm_during_load(srv, rate=cap)
        out["sigterm"] = {**dataclasses.asdict(drain), "ok": drain.ok}
        print(f"{policy}: SIGTERM during load: {drain.completed} completed, {drain.not_sent} not sent, "
              f"{drain.refused_after_exit} refused after exit, lost {drain.lost or 'none'}; exit code "
              f"{drain.exit_code} after {drain.exit_s} s, children left {drain.children_left} "
              f"({'ok' if drain.ok else 'FAILED'})", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_overload", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default="cacheopt,accelgen")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals at factor x capacity")
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--max-requests", type=int, default=3000)
    ap.add_argument("--pool-tokens", type=int, default=2048)
    ap.add_argument("--queue-limit", type=int, default=QUEUE_LIMIT, help="SGLang's --max-queued-requests")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_overload"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    results, t0 = [], time.monotonic()
    for policy in a.policies.split(","):
        try:
            results.append(run_policy(policy.strip(), a))
        except (ServerError, RuntimeError) as e:
            print(f"{policy}: FAILED: {e}", file=sys.stderr)
            results.append({"policy": policy, "error": str(e)})
    doc = {"duration_s": a.duration, "factor": a.factor, "workload": overload.WORKLOAD, "results": results,
           "wall_s": time.monotonic() - t0}  # fmt: skip
    (a.out / "overload.json").write_text(json.dumps(doc, indent=2) + "\n")
    ok = all(r.get("overload", {}).get("ok") and r.get("sigterm", {}).get("ok") for r in results)
    print(f"wrote {a.out / 'overload.json'}: {'all checks passed' if ok else 'SOME CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
