"""Plotting for the reproduction figures: each function draws one figure's JSON (nothing is recomputed here).

matplotlib with the Agg backend (headless, deterministic); one PNG per figure, a grid of panels when a figure
covers several profile/workload pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Plot = Callable[[dict[str, Any], Path], None]
STYLE = {
    "oracle": {"linestyle": "--", "color": "black"},
    "sglang": {"color": "C3"},
    "vllm": {"color": "C1"},
    "sarathi": {"color": "C5"},
    "cacheopt": {"color": "C2"},
    "cacheopt-mixed": {"color": "C8"},
    "accelgen": {"color": "C0"},
    "cacheopt+accelgen": {"color": "C4"},
    "sglang-mixed": {"color": "C3", "linestyle": "--"},
    "sglang-tuned": {"color": "C6", "linestyle": "--"},
    "edf": {"color": "C9"},
}
LABELS = {
    "ttft_p99_ms": "p99 TTFT (ms)",
    "tbt_p99_ms": "pooled p99 TBT (ms)",
    "stall_p99_ms": "p99 stall (ms)",
    "ttft_slo_attainment": "TTFT SLO attainment",
    "tbt_slo_attainment": "TBT SLO attainment",
    "slo_attainment": "SLO attainment (both)",
    "goodput_rps": "goodput (req/s)",
    "throughput_tok_s": "throughput (tok/s)",
    "e2e_mean_ms": "mean latency (ms)",
    "e2e_p99_ms": "p99 latency (ms)",
    "preemptions": "preemptions",
    "tight_tbt_attainment": "tight-class TBT attainment",
    "worst_class": "worst class's SLO attainment",
    "kv_peak_frac": "peak KV in use (fraction of pool)",
    "kv_mean_frac": "mean KV in use (fraction of pool)",
    "preempt_per_1k": "preemptions per 1,000 requests",
}


def _grid(rows: int, cols: int, w: float = 4.2, h: float = 3.2) -> tuple[Any, Any]:
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _line(ax: Any, xs: Sequence[float], ys: Sequence[Any], label: str) -> None:
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if pts:
        style = STYLE.get(label, {})
        ax.plot(*zip(*pts, strict=True), marker="" if label == "oracle" else "o", markersize=3, label=label, **style)


def lines_vs_rate(fields: tuple[str, ...], log: bool = False, ylim: tuple[float, float] | None = None) -> Plot:
    def plot(data: dict[str, Any], path: Path) -> None:
        runs = data["runs"]
        fig, axes = _grid(len(runs), len(fields))
        for row, (key, e) in enumerate(runs.items()):
            for col, f in enumerate(fields):
                ax = axes[row][col]
                for pol, vals in e["policies"].items():
                    _line(ax, e["rates"], vals[f], pol)
                t = data.get("target", {}).get(key)
                if t:
                    ax.axvline(t["rate"], color="grey", lw=0.8, ls=":", label="sglang 90% rate")
                ax.set_title(f"{key}\n{LABELS.get(f, f)}", fontsize=8)
                ax.set_xlabel("rate (req/s)", fontsize=8)
                if log:
                    ax.set_yscale("log")
                if ylim:
                    ax.set_ylim(*ylim)
        axes[0][0].legend(fontsize=6)
        _save(fig, path)

    return plot


def max_rate_bars(data: dict[str, Any], path: Path) -> None:
    runs = data["runs"]
    fig, axes = _grid(1, max(len(runs), 1), w=5)
    for ax, (key, m) in zip(axes[0], runs.items(), strict=False):
        pols = list(m)
        vals = [m[p]["max_rate"] or 0.0 for p in pols]
        bars = ax.bar(pols, vals, color=[STYLE.get(p, {}).get("color", "C7") for p in pols])
        for b, p in zip(bars, pols, strict=True):
            x = m[p]["max_rate"]
            text = "-" if x is None else f"{'>=' if not m[p]['bounded'] else ''}{x:.3g}"
            ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{key}\nmax rate with >= {data['attainment']:.0%} SLO attainment", fontsize=8)
        ax.set_ylabel("req/s")
        ax.tick_params(axis="x", labelsize=6, rotation=25)
    _save(fig, path)


def _bars(ax: Any, groups: list[str], series: dict[str, list[Any]], title: str, log: bool = False) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [v or 0 for v in vals], width, label=name, color=STYLE.get(name, {}).get("color", f"C{j}"))
    ax.set_xticks(range(len(groups)), groups, fontsize=6, rotation=25)
    ax.set_title(title, fontsize=8)
    if log:
        ax.set_yscale("log")


def _rate_label(r: Any) -> str:
    return r if isinstance(r, str) else f"{r:.3g} req/s"


def _tables(tables: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row title, {"rates", "variants"}) for every run and SLO setting of study tables."""
    rows = []
    for key, t in tables.items():
        for setting, e in t.get("settings", {}).items():
            rows.append((f"{key} [{setting}]", e))
    return rows


def variant_bars(data: dict[str, Any], path: Path) -> None:
    """Study tables (eval.figures.studies_figs): one row per scenario/setting, one bar group per variant."""
    tables = {"": data} if "settings" in data else data.get("runs", {"": data.get("main", {})})
    rows = _tables(tables)
    fields = ("slo_attainment", "stall_p99_ms", "ttft_p99_ms", "preempt_per_1k")
    fig, axes = _grid(max(len(rows), 1), len(fields), w=4.8)
    for row, (title, e) in enumerate(rows):
        names = list(e["variants"])
        for col, f in enumerate(fields):
            series = {_rate_label(r): [e["variants"][v][f][i] for v in names] for i, r in enumerate(e["rates"])}
            _bars(axes[row][col], names, series, f"{title}\n{LABELS.get(f, f)}", log=f.endswith("_ms"))
    if rows:
        axes[0][0].legend(fontsize=6)
    _save(fig, path)


def sensitivity_lines(data: dict[str, Any], path: Path) -> None:
    variant_bars({"runs": {"in-distribution estimates": data["main"], "off-source estimates": data["off_source"]}},
                 path)  # fmt: skip


def _worst_class(by_class: list[dict[str, float | None]]) -> list[float | None]:
    return [min((v for v in d.values() if v is not None), default=None) for d in by_class]


def accelgen_grid(data: dict[str, Any], path: Path) -> None:
    runs = data["runs"]
    fields = ("throughput_tok_s", "goodput_rps", "worst_class", "slo_attainment", "e2e_mean_ms", "e2e_p99_ms")
    fig, axes = _grid(max(len(runs), 1), len(fields), w=3.8)
    for row, (key, e) in enumerate(runs.items()):
        for col, f in enumerate(fields):
            ax = axes[row][col]
            for pol, v in e["policies"].items():
                _line(ax, e["rates"], _worst_class(v["by_class"]) if f == "worst_class" else v[f], pol)
            ax.set_title(f"{key}\n{LABELS.get(f, f)}", fontsize=8)
            ax.set_xlabel("rate (req/s)", fontsize=8)
            if f.endswith("_ms"):
                ax.set_yscale("log")
    if runs:
        axes[0][0].legend(fontsize=6)
    _save(fig, path)


def chunk_size_lines(data: dict[str, Any], path: Path) -> None:
    runs = data["runs"]
    fields = ("goodput_rps", "slo_attainment", "e2e_mean_ms")
    fig, axes = _grid(max(len(runs), 1), len(fields))
    for row, (key, e) in enumerate(runs.items()):
        for col, f in enumerate(fields):
            ax = axes[row][col]
            ax.plot(e["chunk_sizes"], [r[f] for r in e["sarathi"]], marker="o", label="sarathi (fixed chunk)")
            if e.get("sglang_mixed"):
                ax.plot(e["chunk_sizes"], [r[f] for r in e["sglang_mixed"]], marker="s", label="sglang-mixed")
            ax.axhline(e["accelgen"][f] or 0, color="C0", ls="--", label="accelgen (dynamic)")
            ax.axhline(e["sglang"][f] or 0, color="C3", ls=":", label="sglang (default)")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{key}\n{LABELS.get(f, f)}", fontsize=8)
            ax.set_xlabel("chunk (tokens)", fontsize=8)
    if runs:
        axes[0][0].legend(fontsize=6)
    _save(fig, path)


def oracle_gap(data: dict[str, Any], path: Path) -> None:
    runs = data["runs"]
    fig, axes = _grid(1, max(len(runs), 1), w=5)
    for ax, (key, e) in zip(axes[0], runs.items(), strict=False):
        for lab, ys in e["share"].items():
            _line(ax, e["rates"], ys, lab)
        ax.axhline(1.0, color="black", ls="--", lw=0.8, label="oracle")
        ax.axhline(0.95, color="grey", ls=":", lw=0.8, label="95% of oracle")
        x = e["tiny"]["accelgen_over_oracle"]
        ax.set_title(f"{key}\ngoodput / Oracle's; exact small instances: accelgen/oracle = "
                     f"{'-' if x is None else f'{x:.3f}'}", fontsize=8)  # fmt: skip
        ax.set_xlabel("rate (req/s)", fontsize=8)
    if runs:
        axes[0][0].legend(fontsize=6)
    _save(fig, path)


def combined_bars(data: dict[str, Any], path: Path) -> None:
    variant_bars({"runs": data["runs"]}, path)


def predictor_scatter(data: dict[str, Any], path: Path) -> None:
    qs = data["q"]
    fig, axes = _grid(1, len(qs), w=5.5, h=4)
    markers = "osD^vxP*"
    srcs = sorted({r["source"] for r in data["rows"]})
    bounds = sorted({r["bound"] for r in data["rows"]})
    for ax, q in zip(axes[0], qs, strict=True):
        for r in (r for r in data["rows"] if r["q"] == q):
            ax.scatter(
                r["over_reservation"],
                r["coverage"],
                marker=markers[bounds.index(r["bound"]) % len(markers)],
                color=f"C{srcs.index(r['source'])}",
                label=r["bound"] if r["source"] == srcs[0] else None,
            )
        ax.axhline(q, color="black", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set(xlabel="over-reservation mean(bound - true) / mean(true)", ylabel="coverage")
        ax.set_title(
            f"target coverage q = {q}; colours: " + ", ".join(f"C{i}={s[10:28]}" for i, s in enumerate(srcs)),
            fontsize=7,
        )
        ax.legend(fontsize=6, loc="lower right")
    _save(fig, path)


def live_bars(data: dict[str, Any], path: Path) -> None:
    fig, axes = _grid(1, 2, w=5.5, h=4)
    lat = ("ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "e2e_p99_ms")
    att = ("ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment")
    pol = data["config"]["policy"]
    _bars(
        axes[0][0],
        [k.replace("_ms", "") for k in lat],
        {"stock SGLang": [data["stock"][k] for k in lat], f"+ext {pol}": [data["ext"][k] for k in lat]},
        "tail latency (lower is better)",
        log=True,
    )
    _bars(
        axes[0][1],
        ["TTFT", "TBT", "both"],
        {"stock SGLang": [data["stock"][k] for k in att], f"+ext {pol}": [data["ext"][k] for k in att]},
        "SLO attainment (higher is better)",
    )
    axes[0][0].legend(fontsize=7)
    fig.suptitle(data["title"], fontsize=8)
    _save(fig, path)


def fidelity_bars(data: dict[str, Any], path: Path) -> None:
    cols = [(prof, side, m) for prof, sides in data["sides"].items() for side, m in sides.items()]
    fig, axes = _grid(1, len(cols), w=6, h=4)
    for ax, (prof, side, m) in zip(axes[0], cols, strict=True):
        keys = [k for k in m if k.endswith("_ms")]
        series = {"real server": [m[k]["real"] for k in keys], "simulator": [m[k]["sim"] for k in keys]}
        _bars(ax, [k.replace("_ms", "") for k in keys], series, f"{side}: real vs simulated ({prof})", log=True)
        ax.legend(fontsize=7)
    fig.suptitle(data["title"], fontsize=8)
    _save(fig, path)
