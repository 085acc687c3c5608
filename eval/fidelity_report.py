"""The fidelity report (issue 3 item 6): relative errors, the markdown tables, and the iteration structure seen
in per-request token times, which tells *why* a simulated latency is off.

Why the iteration structure: a latency error is either the per-iteration time (the latency model: overheads,
contention) or the batching (how many tokens one iteration serves: admission, alternation of prefill and decode,
chunking). Token times show both on either side: the tokens of one iteration reach the client together, so
clusters of token times are iterations (on the real side within a few ms; in the simulator exactly).

    python -m eval.fidelity_report docs/results/fidelity/      # re-render fidelity.md from fidelity.json
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import RequestRecord

METRICS = ("ttft_p50_ms", "ttft_p99_ms", "tbt_p50_ms", "tbt_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "throughput_tok_s",
           "e2e_p50_ms")  # fmt: skip
TABLE_METRICS = ("ttft_p50_ms", "ttft_p99_ms", "tbt_p50_ms", "tbt_p99_ms", "tpot_p50_ms", "tpot_p99_ms")
VARIANTS = {
    "sim": "Simulator with the latency profile as fitted",
    "sim_overhead": "Simulator with the profile's per-iteration constant raised so that a lone decode step takes "
    "what the real server's took around the runs (ms after the rate)",
    "sim_scaled": "Simulator with every iteration scaled by the real lone decode step / the profile's (x after the "
    "rate)",
}
IDLE_GAP_S = 1.0  # a gap between token events longer than this is the server idling, not an iteration


def relerr(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real == 0:
        return None
    return (sim - real) / real


def compare(reals: list[dict[str, Any]], sim: dict[str, Any]) -> dict[str, Any]:
    """Per metric: real mean, real spread over repeats, sim, signed relative error; preemptions real vs sim."""
    row: dict[str, Any] = {}
    for m in METRICS:
        vals = [r[m] for r in reals if r.get(m) is not None]
        mean = float(np.mean(vals)) if vals else None
        spread = float((max(vals) - min(vals)) / mean) if vals and mean else None
        row[m] = {"real": mean, "real_runs": vals, "real_spread": spread, "sim": sim.get(m),
                  "rel_err": relerr(sim.get(m), mean)}  # fmt: skip
    row["preemptions"] = {"real_runs": [r.get("preemptions") for r in reals], "sim": sim.get("preemptions")}
    row["completed"] = {"real_runs": [r.get("completed") for r in reals], "sim": sim.get("completed")}
    return row


def tpot(records: Iterable[RequestRecord]) -> dict[str, float | None]:
    """Per-request mean time per output token after the first, (last - first) / (n - 1), p50/p99 over requests.
    A diagnostic beside the schema's pooled TBT: a client that lags reads several tokens in one chunk (gaps of 0
    on the real side only), which moves pooled TBT percentiles but not a request's span."""
    vals = [
        (r.token_times_s[-1] - r.token_times_s[0]) / (r.output_len - 1) for r in records if r.ok and r.output_len > 1
    ]
    if not vals:
        return {"tpot_p50_ms": None, "tpot_p99_ms": None}
    p50, p99 = np.percentile(np.asarray(vals) * 1e3, (50, 99))
    return {"tpot_p50_ms": float(p50), "tpot_p99_ms": float(p99)}


def iteration_stats(records: Iterable[RequestRecord], tol_s: float = 1e-9) -> dict[str, float | int]:
    """Iterations as clusters of token times (gaps <= ``tol_s`` join a cluster): how many, tokens per iteration,
    and the busy gap between consecutive iterations (median, p90; idle gaps > 1 s left out)."""
    ts = np.sort(np.concatenate([np.asarray(r.token_times_s, dtype=float) for r in records] or [np.array([])]))
    if ts.size < 2:
        return {"events": int(ts.size), "tokens_per_event": float(ts.size), "gap_p50_ms": 0.0, "gap_p90_ms": 0.0}
    d = np.diff(ts)
    gaps = d[d > tol_s]
    busy = gaps[gaps < IDLE_GAP_S]
    events = int(gaps.size + 1)
    return {
        "events": events,
        "tokens_per_event": float(ts.size / events),
        "gap_p50_ms": float(np.median(busy) * 1e3) if busy.size else 0.0,
        "gap_p90_ms": float(np.percentile(busy, 90) * 1e3) if busy.size else 0.0,
    }


_DECODE_LINE = re.compile(r"Decode batch, #running-req: (\d+), #token: (\d+),.*gen throughput \(token/s\): ([\d.]+), "
                          r"#queue-req: (\d+)")  # fmt: skip


def server_log_runs(log_text: str) -> list[dict[str, Any]]:
    """The scheduler's own view of each run (the runs are separated by the ``/flush_cache`` each one starts with):
    SGLang logs every 40 decode steps the running batch and the generation throughput since its last log, so
    ``running / throughput`` is the mean decode iteration time, prefill iterations in between included. Only
    lines with a non-empty queue count (the server was busy the whole interval, so no idle time is in it). Free
    of the client's lag and of HTTP coalescing: where a latency error comes from the server's iterations."""
    runs: list[dict[str, Any]] = []
    cur: list[tuple[int, int, float, int]] | None = None
    for line in log_text.splitlines():
        if "Cache flushed successfully" in line:
            cur = []
            runs.append({"_rows": cur})
        elif cur is not None and (m := _DECODE_LINE.search(line)):
            cur.append((int(m[1]), int(m[2]), float(m[3]), int(m[4])))
    for run in runs:
        rows = run.pop("_rows")
        busy = [(n, 1e3 * n / t) for n, _, t, q in rows if q > 0 and t > 0]
        run |= {
            "decode_logs": len(rows),
            "busy_logs": len(busy),
            "busy_running_p50": float(np.median([n for n, _ in busy])) if busy else None,
            "busy_iteration_ms_p50": float(np.median([ms for _, ms in busy])) if busy else None,
            "busy_iteration_ms_mean": float(np.mean([ms for _, ms in busy])) if busy else None,
            "max_token_usage": max((k for _, k, _, _ in rows), default=0),
        }
    return runs


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.0f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}")


def table(doc: dict[str, Any], which: str = "sim") -> str:
    """One row per policy and rate: real (mean over repeats, spread) vs sim per metric, preemptions, throughput.
    ``which``: a key of :data:`VARIANTS`."""
    head = ["policy", "rate req/s"]
    for m in TABLE_METRICS:
        head.append(f"{m.removesuffix('_ms').replace('_', ' ')} ms: real (spread) / sim / err")
    head += ["throughput tok/s: real (spread) / sim / err", "preemptions: real runs / sim"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in doc["policies"]:
        for rate, r in p["rates"].items():
            c = r["compare"][which]
            note = {"sim_overhead": f" ({r.get('lone_decode_ms', 0):.0f} ms)",
                    "sim_scaled": f" (x{r.get('contention_factor', 0):.0f})"}.get(which, "")  # fmt: skip
            cells = [p["policy"], f"{rate}{note}"]
            for m in (*TABLE_METRICS, "throughput_tok_s"):
                x = c[m]
                cells.append(f"{_num(x['real'])} ({_pct(x['real_spread'])[1:]}) / {_num(x['sim'])} / "
                             f"**{_pct(x['rel_err'])}**")  # fmt: skip
            cells.append(f"{', '.join(str(v) for v in c['preemptions']['real_runs'])} / {c['preemptions']['sim']}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def iteration_table(doc: dict[str, Any]) -> str:
    """Iterations seen in token times: real runs vs each simulated variant."""
    lines = ["| policy | rate | side | iterations | tokens / iteration | gap p50 ms | gap p90 ms | load avg | "
             "server log while queued: running p50 / iteration ms p50 / mean / max KV tokens |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in doc["policies"]:
        for rate, r in p["rates"].items():
            sides = [(f"real #{i}", x) for i, x in enumerate(r["real"])] + [(v, r[v]) for v in VARIANTS if v in r]
            for name, x in sides:
                it = x.get("iterations")
                if not isinstance(it, dict):
                    continue
                la = f"{x['loadavg_before']:.1f} -> {x['loadavg_after']:.1f}" if "loadavg_before" in x else ""
                lg = x.get("server_log") or {}
                keys = ("busy_running_p50", "busy_iteration_ms_p50", "busy_iteration_ms_mean")
                srv = " / ".join([*(_num(lg.get(k)) for k in keys), str(lg.get("max_token_usage", "-"))]) if lg else ""
                lines.append(f"| {p['policy']} | {rate} | {name} | {it['events']} | {it['tokens_per_event']:.2f} | "
                             f"{it['gap_p50_ms']:.1f} | {it['gap_p90_ms']:.1f} | {la} | {srv} |")  # fmt: skip
    return "\n".join(lines)


def render(doc: dict[str, Any], requests_dir: Path | None = None) -> str:
    """The whole markdown report. Iteration statistics missing from an older JSON are filled in from
    ``requests_dir`` (per-request JSON lines) when it is given."""
    if requests_dir is not None:
        _fill_from_requests(doc, requests_dir)
    for p in doc["policies"]:  # recomputed, so that a re-render picks up metrics added since the run
        for r in p["rates"].values():
            r["compare"] = {v: compare(r["real"], r[v]) for v in VARIANTS if v in r}
    cfg = doc["config"]
    out = [
        f"# Simulator fidelity: real tiny SGLang CPU server vs simulator ({doc['date']})",
        "",
        f"Workload: {cfg['workload']}, first {cfg['num_requests']} requests, lengths / {cfg['scale']:g}"
        + (f" (outputs x {cfg['output_scale']:g} first)" if cfg.get("output_scale", 1.0) != 1.0 else "")
        + ", "
        f"context <= {cfg['max_context']}, Poisson arrivals seed {cfg['seed']}, `cap` mode; KV pool "
        f"{cfg['pool_tokens']} tokens; {cfg['repeats']} real run(s) per rate (mean; spread = (max - min) / mean); "
        f"error = (sim - real) / real. Latency profile: `{doc['profile']['name']}` ({doc['profile']['source']}).",
        "",
    ]
    flags = dict(cfg.get("policy_args") or ())
    for p in doc["policies"]:
        s = p.get("settings", {})
        if flags.get(p["policy"]):
            out.append(f"- `{p['policy']}` side flags: `{flags[p['policy']]}`")
        onoff = {k: "on" if s.get(k) else "off" for k in ("prefix_cache", "mixed_chunk", "overlap_schedule")}
        out.append(
            f"- `{p['policy']}` server: pool {s.get('pool_tokens')}, chunked prefill {s.get('chunked_prefill_size')}, "
            f"page {s.get('page_size')}, radix cache {onoff['prefix_cache']}, mixed chunk {onoff['mixed_chunk']}, "
            f"overlap scheduler {onoff['overlap_schedule']}"
            f"; isolated TTFT (64-token prompt) real {p.get('isolated_ttft_ms', 0):.1f} ms vs profile prefill "
            f"{p.get('sim_isolated_ttft_ms', 0):.2f} ms"
        )
    for which, head in VARIANTS.items():
        out += ["", f"## {head}", "", table(doc, which)]
    out += ["", "## Iterations seen in token times", "", iteration_table(doc), ""]
    return "\n".join(out)


def attach_server_log(policy_doc: dict[str, Any], log_text: str) -> None:
    """Give each real run (in the order they ran) its stretch of the server log."""
    runs = iter(server_log_runs(log_text))
    for r in policy_doc["rates"].values():
        for x in r["real"]:
            x["server_log"] = next(runs, None)


def _fill_from_requests(doc: dict[str, Any], requests_dir: Path) -> None:
    from eval.metrics import read_records

    for p in doc["policies"]:
        log = requests_dir.parent / f"server_{p['policy']}.log"
        if log.exists() and any(not x.get("server_log") for r in p["rates"].values() for x in r["real"]):
            attach_server_log(p, log.read_text(errors="replace"))
        for rate, r in p["rates"].items():
            files = [(x, f"real_{p['policy']}_r{rate}_{i}", 0.003) for i, x in enumerate(r["real"])]
            files += [(r[v], f"{v}_{p['policy']}_r{rate}", 1e-9) for v in VARIANTS if v in r]
            for x, name, tol in files:
                f = requests_dir / f"{name}.jsonl"
                if not f.exists():
                    continue
                recs = read_records(f)
                if not isinstance(x.get("iterations"), dict):
                    if "iterations" in x:
                        x["sim_iterations"] = x["iterations"]
                    x["iterations"] = iteration_stats(recs, tol)
                if x.get("tpot_p50_ms") is None:
                    x |= tpot(recs)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m eval.fidelity_report RESULT_DIR [REQUESTS_DIR]", file=sys.stderr)
        return 2
    out = Path(args[0])
    doc = json.loads((out / "fidelity.json").read_text())
    md = render(doc, Path(args[1]) if len(args) == 2 else None)
    (out / "fidelity.md").write_text(md)
    (out / "fidelity.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
