"""Markdown for a comparison document (``eval.compare.engine``): the tables the CLI prints and writes."""

from __future__ import annotations

from typing import Any


def fmt_ci(ci: dict[str, Any], nd: int = 3, scale: float = 1.0) -> str:
    """``mean [lo, hi]`` (or ``mean`` with one seed, ``-`` without data)."""
    if ci is None or ci.get("mean") is None:
        return "-"
    m = ci["mean"] * scale
    if ci.get("lo") is None:
        return f"{m:.{nd}f}"
    return f"{m:.{nd}f} [{ci['lo'] * scale:.{nd}f}, {ci['hi'] * scale:.{nd}f}]"


def _f(x: float | None, nd: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{nd}f}{suffix}"


def _rate(r: float | str) -> str:
    return r if isinstance(r, str) else f"{r:.3g}"


def results_table(doc: dict[str, Any], setting: str) -> list[str]:
    sec = doc["slo"][setting]
    lines = [
        "| rate | variant | SLO att. | TTFT p99 ms | stall p99 ms | TBT p99 ms | tok/s | KV peak / mean | "
        "preempt./1k (recomp./swap) | refused |",
        "|" + "---|" * 10,
    ]
    for name, rows in sec["results"].items():
        for e in rows:
            m, pp = e["metrics"], e["preempt_per_1k"]
            tuned = e.get("tuned_choice")
            label = name + (f" (chunk {tuned['chunk']}{', prio' if tuned['priority'] else ''})" if tuned else "")
            lines.append(
                f"| {_rate(e['rate'])} | {label} | {fmt_ci(m['slo_attainment'])} | {fmt_ci(m['ttft_p99_ms'], 0)} | "
                f"{fmt_ci(m['stall_p99_ms'], 0)} | {fmt_ci(m['tbt_p99_ms'], 0)} | {fmt_ci(m['throughput_tok_s'], 0)} | "
                f"{_f(e['kv_peak_frac']['mean'])} / {_f(e['kv_mean_frac']['mean'])} | "
                f"{_f(pp['recompute']['mean'], 1)} / {_f(pp['swap']['mean'], 1)} | {_f(e['rejected']['mean'], 1)} |"
            )
    return lines


def max_rate_lines(doc: dict[str, Any], setting: str) -> list[str]:
    mr = doc["slo"][setting]["max_rate_90"]
    if not mr:
        return []
    parts = []
    for name, m in mr.items():
        x = m["max_rate"]
        parts.append(f"{name} {'-' if x is None else ('>= ' if not m['bounded'] else '') + f'{x:.3g}'}")
    return ["", "Max rate at >= 90% SLO attainment (req/s): " + ", ".join(parts)]


def comparison_lines(doc: dict[str, Any], setting: str) -> list[str]:
    lines: list[str] = []
    for name, bases in doc["slo"][setting]["comparisons"].items():
        for b, c in bases.items():
            tag = "matched" if c["matched"] else "unmatched batching"
            per = "; ".join(
                f"{_rate(x['rate'])}: {_f(x['slo_points'], 1)} pts ({x['slo_verdict']}), TTFT p99 "
                f"{_f(x['ttft_p99_x'])}x, stall p99 {_f(x['stall_p99_x'])}x, tok/s {_f(x['throughput_x'])}x"
                for x in c["per_rate"]
            )
            mrx = c.get("max_rate_x")
            lines.append(f"- {name} vs {b} ({tag}): {per}" + (f"; max rate {mrx:.2f}x" if mrx else ""))
    if lines:
        lines = ["", "Against each baseline (points = ours - baseline; latency x = baseline / ours):", "", *lines]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    sc = doc["scenario"]
    lines = [
        f"# {sc['name']}: {sc['what']}",
        "",
        f"`{doc['command']}` — code fingerprint `{doc['fingerprint']}`, commit `{doc['commit']}`.",
        "",
        f"Profile `{sc['profile']}` (pool {sc['pool_tokens']} tokens, SGLang chunk {sc['device_chunk']}, context "
        f"{sc['context_len']}), workload `{sc['workload']}`, cap `{sc['cap']}`, {doc['num_requests']} requests x "
        f"{len(doc['seeds'])} seed(s), page size {sc['page_size']}, estimates: {sc['estimates']}. Capacity "
        f"(anchor `{doc['capacity']['anchor']}`): {doc['capacity'].get('value')} req/s.",
        "",
        f"Intervals: {doc['interval']}. Max rate: {doc['max_rate_method']}. Ties: {doc['tie_rule']}.",
    ]
    if doc["unavailable"]:
        lines += ["", "Unavailable: " + "; ".join(f"{k} ({v})" for k, v in doc["unavailable"].items())]
    for setting in doc["slo"]:
        why = sc["slo_why"]
        lines += ["", f"## SLO setting: {setting} (`{doc['slo'][setting]['spec']}`)", "", f"Why: {why}", ""]
        lines += results_table(doc, setting)
        lines += max_rate_lines(doc, setting)
        lines += comparison_lines(doc, setting)
    return "\n".join(lines) + "\n"
