"""The plugin's entry point, registered under SGLang's entry-point group ``sglang.srt.plugins``.

SGLang calls :func:`load` in the launcher before argument parsing and again in the scheduler, detokenizer and
DP-controller processes. It only registers hooks (SGLang applies them); nothing is patched from outside the plugin
system and no SGLang file is edited.

Launcher: an AFTER hook on ``ServerArgs.add_cli_args`` adds the ``--ext-*`` group; an AROUND hook on
``ServerArgs.from_cli_args`` validates the flags into one :class:`~policies.config.ExtConfig` (a bad value ends
start-up with one line naming the flag), publishes it for the child processes, adjusts the SGLang settings the
policy needs (mixed chunked prefill for policies that batch decodes with prefill chunks) and starts the predictor
service when asked. Scheduler: the adapter hooks in :mod:`sglang_ext.adapter.hooks`.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("sglang_ext")


def _after_add_cli_args(result: Any, parser: Any, *args: Any, **kwargs: Any) -> None:
    from sglang_ext.config import add_cli_args

    add_cli_args(parser)


def _around_from_cli_args(original: Any, cls: Any, args: Any, *rest: Any, **kwargs: Any) -> Any:
    from sglang_ext import config

    try:
        cfg = config.from_namespace(args)
    except config.ConfigError as e:
        print(f"sglang_ext: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if cfg.enabled:
        _check_latency_profile(cfg.latency_profile)
    server_args = original(cls, args, *rest, **kwargs)
    cfg = _mirror_sglang_flags(cfg, server_args)
    config.publish(cfg)
    if cfg.enabled and _needs_mixed_chunk(cfg) and not server_args.enable_mixed_chunk:
        server_args.enable_mixed_chunk = True
        logger.info("sglang_ext: --ext-policy %s batches decodes with prefill chunks: mixed chunk on", cfg.policy)
    if cfg.enabled and cfg.predictor.mode == "service" and not cfg.predictor.endpoint:
        _start_predictor_service(cfg)
    return server_args


def _needs_mixed_chunk(cfg: Any) -> bool:
    """The policy's own typed answer (``Policy.needs_mixed_chunk``), not a list of names."""
    from policies.base import policy_class

    return policy_class(cfg.policy).needs_mixed_chunk(cfg)


def _check_latency_profile(name: str) -> None:
    import profiles

    try:
        profiles.get(name)
    except ValueError as e:
        print(f"sglang_ext: --ext-latency-profile: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _mirror_sglang_flags(cfg: Any, server_args: Any) -> Any:
    """In the server, SGLang's own flags are the truth for the ``sglang`` section (the simulator sets it from
    ``--ext-sglang-*``): the baseline policy must mirror the scheduler it runs in."""
    sg = cfg.sglang
    policy = server_args.schedule_policy if server_args.schedule_policy in ("fcfs", "lpm") else sg.schedule_policy
    chunk = server_args.chunked_prefill_size
    mirrored = dataclasses.replace(
        sg,
        schedule_policy=policy,
        schedule_conservativeness=float(server_args.schedule_conservativeness),
        chunked_prefill_size=int(chunk) if chunk and chunk > 0 else sg.chunked_prefill_size,
        retraction_policy=server_args.retraction_policy or sg.retraction_policy,
        mixed_chunk=bool(server_args.enable_mixed_chunk) or sg.mixed_chunk,  # the flag turns SGLang's mode on below
        enable_priority_scheduling=bool(server_args.enable_priority_scheduling),
        schedule_low_priority_values_first=bool(server_args.schedule_low_priority_values_first),
        priority_scheduling_preemption_threshold=int(server_args.priority_scheduling_preemption_threshold),
        disable_priority_preemption=bool(server_args.disable_priority_preemption),
    )
    return dataclasses.replace(cfg, sglang=mirrored)


def _start_predictor_service(cfg: Any) -> Any:
    """Start the predictor service beside the server under a supervisor (restart with back-off, each restart
    logged), publish its endpoint for the scheduler's client, and stop it at exit. Without
    ``--ext-predictor-model-path`` the shipped model is used."""
    import tempfile

    from eval.server import free_port
    from predictors.service import SHIPPED_MODEL
    from predictors.supervisor import ServiceSupervisor

    pc = cfg.predictor
    model_path = pc.model_path or SHIPPED_MODEL
    if not os.path.isdir(model_path):
        print(f"sglang_ext: --ext-predictor-model-path {model_path}: no such directory", file=sys.stderr)
        raise SystemExit(2)
    if not pc.model_path:
        print(f"sglang_ext: --ext-predictor-mode service: using the shipped model {model_path}", file=sys.stderr)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log_path = os.path.join(tempfile.gettempdir(), f"sglang_ext_predictor_{port}.log")
    args = ("--bound", pc.bound, "--alpha", str(pc.alpha), "--beta", str(pc.beta), "--rule", pc.rule,
            "--refit-every", str(pc.refit_every))  # fmt: skip

    def report(line: str) -> None:
        print(f"sglang_ext: {line}", file=sys.stderr, flush=True)

    sup = ServiceSupervisor(model_path, endpoint, args, log_path=log_path, report=report)
    proc = sup.start()
    os.environ["SGLANG_EXT_PREDICTOR_ENDPOINT"] = endpoint
    atexit.register(sup.stop)
    print(f"sglang_ext: predictor service pid={proc.pid} at {endpoint} (log {log_path}; supervised)", file=sys.stderr)
    return sup


def load() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_ext.adapter.hooks import SCHEDULER_HOOKS
    from sglang_ext.metrics import METRICS_HOOKS

    HookRegistry.register("sglang.srt.server_args.ServerArgs.add_cli_args", _after_add_cli_args, HookType.AFTER)
    HookRegistry.register("sglang.srt.server_args.ServerArgs.from_cli_args", _around_from_cli_args, HookType.AROUND)
    for target, fn, kind in (*SCHEDULER_HOOKS, *METRICS_HOOKS):
        HookRegistry.register(target, fn, HookType[kind])
