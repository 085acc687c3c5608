"""Fit an IterationLatencyModel to measured iteration times and write a named profile to data/profiles/.

Input: one or more ``*.measured.json`` files from scripts/profile_iterations.py (plain PyTorch/transformers) or
eval/server_probe.py (the real SGLang server). A seeded random ``--holdout`` fraction of the samples is
kept out of the fit; the stored model is the one fitted on the rest, and its held-out relative errors are stored
beside it, so the quoted error is that of the model the simulator uses.

    python scripts/fit_profile.py data/profiles/cpu-tiny.measured.json --name cpu-tiny --kv-capacity-tokens 4096
    python scripts/fit_profile.py data/profiles/h100-llama3-8b.measured.json --name h100-llama3-8b-fit \
        --template h100-llama3-8b      # GPU calibration: swap figures and KV capacity from the derived profile
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import profiles
from policies.latency import BatchShape, IterationLatencyModel


def sample_shape(rec: dict) -> BatchShape:
    if "prefill" in rec or ("decode_ctx" in rec and isinstance(rec["decode_ctx"], list)):
        pre = tuple((int(n), int(c)) for n, c in rec.get("prefill", ()))
        dec = rec.get("decode_ctx", ())
        return BatchShape(prefill=pre, decode_ctx=tuple(int(c) for c in dec) if isinstance(dec, list) else ())
    return BatchShape(decode_ctx=(int(rec["decode_ctx"]),) * int(rec["decode_batch"]))


def load_samples(paths: list[Path]) -> tuple[list[tuple[BatchShape, float]], list[dict]]:
    samples, metas = [], []
    for p in paths:
        d = json.loads(p.read_text())
        metas.append({k: v for k, v in d.items() if k != "samples"} | {"file": str(p)})
        samples += [(sample_shape(r), float(r["seconds"])) for r in d["samples"] if r["seconds"] > 0]
    return samples, metas


def error_stats(model: IterationLatencyModel, samples: list[tuple[BatchShape, float]]) -> dict[str, float]:
    e = model.relative_errors(samples)
    if e.size == 0:
        return {"n": 0}
    return {"n": int(e.size), "median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)), "max": float(e.max())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measured", nargs="+", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--template", default="", help="profile whose swap figures and KV capacity are kept")
    ap.add_argument("--kv-capacity-tokens", type=int, default=0, help="KV pool (tokens); default from --template")
    ap.add_argument("--pivot-tokens", type=float, default=None, help="fix the roofline pivot (default: searched)")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    samples, metas = load_samples(args.measured)
    rng = np.random.default_rng(args.seed)
    held = set(rng.choice(len(samples), size=int(len(samples) * args.holdout), replace=False).tolist())
    train = [s for i, s in enumerate(samples) if i not in held]
    test = [s for i, s in enumerate(samples) if i in held]

    meta = metas[0]
    if args.template:
        base = profiles.get(args.template)
        template, kv_cap = base.latency, args.kv_capacity_tokens or base.kv_capacity_tokens
    else:
        template = IterationLatencyModel(
            c0_s=0.0,
            c_tok_s=0.0,
            kv_bytes_per_token=float(meta.get("kv_bytes_per_token", 0)),
            pcie_bytes_per_s=float(meta.get("host_copy_bytes_per_s", 25e9)),
        )
        kv_cap = args.kv_capacity_tokens
    if kv_cap <= 0:
        raise SystemExit("--kv-capacity-tokens is required without --template")
    model = IterationLatencyModel.fit(train, template=template, pivot_tokens=args.pivot_tokens)

    out = {
        "name": args.name,
        "model": model.to_dict(),
        "kv_capacity_tokens": kv_cap,
        "device": meta.get("device", ""),
        "source": f"fitted by scripts/fit_profile.py from {', '.join(m['file'] for m in metas)} "
        f"({meta.get('backend', '?')} measurements of {meta.get('config', '?')}, measured {meta.get('date', '?')})",
        "date": dt.date.today().isoformat(),
        "fit": {"train": error_stats(model, train), "heldout": error_stats(model, test), "seed": args.seed},
        "measured": [{k: m[k] for k in ("file", "backend", "config", "device", "date") if k in m} for m in metas],
    }
    path = args.out or profiles.PROFILE_DIR / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"model": out["model"], "fit": out["fit"]}, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
