"""The extension's flags, generated 1:1 from :mod:`policies.config`, and the one place the config crosses the
process boundary.

``python -m sglang.launch_server --help`` shows one argument group, "SGLang extension (CacheOPT / AccelGen)".
The launcher parses and validates the flags once (a bad value is refused at start-up with one line naming the
flag) and publishes the config as JSON in ``SGLANG_EXT_CONFIG``; SGLang's scheduler process, spawned after,
inherits the environment and parses it back here. ``ServerArgs.from_cli_args`` drops unknown fields, hence the
environment variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from policies.config import ConfigError, ExtConfig, flat_fields, from_flat

ENV_VAR = "SGLANG_EXT_CONFIG"
GROUP_TITLE = "SGLang extension (CacheOPT / AccelGen)"


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add every config field as ``--ext-...``; defaults are None so only flags given on the command line count."""
    group = parser.add_argument_group(GROUP_TITLE, "Flags of the sglang_ext plugin; --ext-policy none = stock.")
    for flag, _section, f in flat_fields():
        kind = {bool: _bool, int: int, float: float, str: str}[type(f.default)]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        group.add_argument(f"--{flag}", type=kind, default=None, choices=f.metadata["choices"], help=help_text)


def from_namespace(ns: argparse.Namespace | dict[str, Any]) -> ExtConfig:
    values = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    return from_flat(values)


def from_argv(argv: list[str]) -> ExtConfig:
    """The config a server started with ``argv`` runs (its ``--ext-*`` flags; every other flag is ignored)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_cli_args(parser)
    return from_namespace(parser.parse_known_args(argv)[0])


def to_json(cfg: ExtConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def from_json(text: str) -> ExtConfig:
    raw = json.loads(text)
    flat: dict[str, Any] = {}
    for flag, section, f in flat_fields():
        src = raw.get(section, {}) if section else raw
        if f.name in src:
            flat[flag.replace("-", "_")] = src[f.name]
    return from_flat(flat)


def publish(cfg: ExtConfig) -> None:
    os.environ[ENV_VAR] = to_json(cfg)


def current() -> ExtConfig:
    """The config of this process: published by the launcher, or the default (stock) when none was."""
    text = os.environ.get(ENV_VAR)
    return from_json(text) if text else ExtConfig()


__all__ = ["ENV_VAR", "ConfigError", "add_cli_args", "current", "from_json", "from_namespace", "publish", "to_json"]
