"""CPU compatibility, in one place: what a CPU-only machine needs to run an unmodified SGLang 0.5.23 server.

With ``SGLANG_USE_CPU_ENGINE=1`` SGLang imports two ops from ``sgl_kernel`` at module import time
(``assign_req_to_token_pool_cpu`` in ``mem_cache/allocation.py`` and ``copy_all_layer_kv_cache_cpu`` in
``kernels/ops/kvcache/cache_move.py``); no CPU build of sgl-kernel is on PyPI. ``stand_in/sgl_kernel`` provides
those two in pure torch.

It must be importable in every SGLang process (the scheduler and detokenizer are spawned and import SGLang modules
before plugins load there), so the set-up script installs a ``.pth`` file into the venv whose one line calls
:func:`activate` at interpreter start. :func:`activate` adds the stand-in to ``sys.path`` only when no real
``sgl_kernel`` is importable: on a GPU box with the real kernels it does nothing. No installed file is edited.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

STAND_IN_DIR = Path(__file__).resolve().parent / "stand_in"
PTH_NAME = "zz_sglang_ext_cpu_compat.pth"
# A .pth line runs only if it starts with "import"; the try keeps an interpreter quiet when the package is gone.
PTH_LINE = (
    "import sys; exec('try:\\n import sglang_ext.cpu_compat as m\\n m.activate()\\nexcept ImportError:\\n pass')\n"
)


def real_sgl_kernel_available() -> bool:
    spec = importlib.util.find_spec("sgl_kernel")
    return spec is not None and not str(spec.origin or "").startswith(str(STAND_IN_DIR))


def activate() -> bool:
    """Make the stand-in importable as ``sgl_kernel`` if (and only if) the real one is missing."""
    if str(STAND_IN_DIR) in sys.path:
        return True
    if real_sgl_kernel_available():
        return False
    sys.path.append(str(STAND_IN_DIR))
    return True


def install_pth(site_packages: str | Path) -> Path | None:
    """Write the ``.pth`` hook into ``site_packages`` (set-up script, CPU flavour). Returns its path, or None
    when a real sgl_kernel is importable (GPU flavour: nothing to do)."""
    target = Path(site_packages) / PTH_NAME
    if real_sgl_kernel_available():
        target.unlink(missing_ok=True)
        return None
    target.write_text(PTH_LINE)
    return target
