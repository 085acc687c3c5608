"""Imports every built-in policy module so their ``@register`` decorators run (see policies.base)."""

from __future__ import annotations

import importlib

BUILTIN_MODULES = (
    "policies.sglang_baseline",
    "policies.edf",
    "policies.vllm",
    "policies.sarathi",
    "policies.cacheopt",
    "policies.accelgen",
    "policies.oracle",
    "policies.combined",
)

for _name in BUILTIN_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as e:  # a policy still being written; any other import error is raised
        if e.name != _name:
            raise
