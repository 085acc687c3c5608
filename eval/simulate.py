"""``python -m eval.simulate``: run one policy on one workload and latency profile in the simulator; write the
summary JSON (eval.metrics schema) and optionally per-request JSON lines.

Why a CLI with SGLang's flag names: the same ``--ext-*`` flags configure the policies here and in the SGLang
plugin (generated from ``policies.config.flat_fields()``), so a simulated configuration is replayable on the
real server unchanged. Unknown policy, profile or workload names exit with one line listing the valid ones.

``--replicas N --router {rr,prefix}`` runs N replicas (each its own simulator, pool and policy) behind a router:
round-robin, or SGLang router's cache-aware rule (:mod:`eval.sim.routing`); the summary is the cluster's (all
requests together) with a ``cluster`` section per replica (:mod:`eval.sim.cluster`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import profiles
from eval.metrics import write_records
from eval.sim import Simulator, make_policy
from eval.sim.cluster import Cluster
from eval.sim.routing import ROUTERS
from eval.slo import parse_slo
from eval.workloads import available_workloads, load_workload
from policies import base
from policies.config import POLICY_CHOICES, ConfigError, ExtConfig, flat_fields, from_flat


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.simulate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="registered policy name")
    ap.add_argument("--profile", required=True, help="latency profile name (profiles)")
    ap.add_argument("--workload", required=True, help="workload name (eval.workloads)")
    ap.add_argument("--rate", type=float, default=None, help="requests/s (Poisson); omit to replay trace times")
    ap.add_argument("--out", required=True, help="summary JSON path")
    ap.add_argument("--requests-out", default=None, help="per-request JSON lines path")
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-tokens", type=int, default=None, help="KV pool size; default: the profile's")
    ap.add_argument("--page-size", type=int, default=None, help="KV page size; default 1 on CPU profiles, else 16")
    ap.add_argument("--host-tokens", type=int, default=None, help="host memory for swapped KV (default 4x pool)")
    ap.add_argument("--scale", type=float, default=1.0, help="divide every workload length by this")
    ap.add_argument("--max-context", type=int, default=None, help="clip prompt + output to this many tokens")
    ap.add_argument("--slo", default="none", help="SLO spec (eval.slo): none, default, abs:TTFT_MS:TBT_MS, classes; "
                    "relative ('<k>x') SLOs are multiples of the request's isolated latency on --profile")  # fmt: skip
    ap.add_argument("--replicas", type=int, default=1, help="replicas behind the router (each with the profile's "
                    "pool; --rate is the whole cluster's)")  # fmt: skip
    ap.add_argument("--router", default="rr", choices=ROUTERS, help="with --replicas > 1: rr = round-robin, prefix = "
                    "SGLang router's cache-aware rule (longest routed prefix, load-balance thresholds)")  # fmt: skip
    for flag, _section, f in flat_fields():
        kind = type(f.default)
        conv = _bool if kind is bool else kind
        ap.add_argument(f"--{flag}", type=conv, default=None, choices=f.metadata.get("choices"),
                        help=f"{f.metadata.get('help', '')} (default {f.default})")  # fmt: skip
    return ap


def config_from_args(args: argparse.Namespace) -> ExtConfig:
    """The ``--ext-*`` flags as an :class:`ExtConfig`; ``--policy`` fills ``--ext-policy`` when it names one."""
    values = dict(vars(args))
    if values.get("ext_policy") is None and args.policy in POLICY_CHOICES:
        values["ext_policy"] = args.policy
    return from_flat(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        profile = profiles.get(args.profile)
        if args.workload not in available_workloads():
            raise ValueError(f"unknown workload {args.workload!r}; valid: {', '.join(available_workloads())}")
        if args.policy not in base.available():
            raise ValueError(f"unknown policy {args.policy!r}; valid: {', '.join(base.available())}")
        specs = load_workload(
            args.workload,
            num_requests=args.num_requests,
            rate=args.rate,
            seed=args.seed,
            scale=args.scale,
            max_context=args.max_context,
            slo=parse_slo(args.slo, profile, None),
        )
        page = args.page_size or (1 if args.profile.startswith("cpu") else 16)
        if args.replicas < 1:
            raise ValueError(f"--replicas: must be >= 1, got {args.replicas}")

        def replica(_i: int = 0) -> Simulator:
            return Simulator(make_policy(args.policy, profile, cfg, page_size=page), profile,
                             pool_tokens=args.pool_tokens or profile.kv_capacity_tokens, page_size=page,
                             host_tokens=args.host_tokens)  # fmt: skip

        sim = replica()
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.replicas > 1:
        make = lambda i: sim if i == 0 else replica(i)  # noqa: E731 - replica 0 is the one already built
        cres = Cluster(make, args.replicas, args.router, rate_scope=cfg.predictor.rate_scope).run(specs)
        summary, records, s = cres.to_json(), cres.records, cres.stats
    else:
        res = sim.run(specs)
        summary, records, s = res.summary, res.records, res.stats
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.requests_out:
        write_records(args.requests_out, records)
    where = f"{args.replicas} x {args.profile}, router {args.router}" if args.replicas > 1 else args.profile
    print(
        f"{args.policy} on {args.workload} @ {args.rate} req/s ({where}): {summary['completed']}/"
        f"{summary['submitted']} completed, {s.iterations} iterations, {s.preemptions} preemptions "
        f"({s.swaps_out} swaps), {s.rejected} rejected, {s.aborted} aborted, {s.cache_hit_tokens} cache-hit tokens",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
