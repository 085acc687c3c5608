#!/usr/bin/env bash
# Build the project's virtual environment (.venv) with everything it needs. Idempotent: a second run with
# unchanged requirements finishes in seconds. Flavours:
#   cpu (default here): torch 2.14.1 (the build SGLang 0.5.23 pins; runs on CPU), sglang --no-deps + its light
#                       runtime deps, the pure-torch sgl_kernel stand-in (sglang_ext/cpu_compat), the tiny model.
#   gpu:                SGLang's normal CUDA install (`pip install sglang==0.5.23` with its kernels), then this
#                       package; no stand-in (the real sgl_kernel is present).
# Usage: bash scripts/setup.sh [cpu|gpu]      (VENV=path to build elsewhere; PYTHON=python3.11 to choose)
set -euo pipefail
flavour="${1:-cpu}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.sglang_ext_setup_$flavour"

fail() { echo "setup.sh: FAILED at step: $1 (see the pip output above)" >&2; exit 1; }
step() { echo "setup.sh: $1" >&2; }

case "$flavour" in cpu|gpu) ;; *) echo "setup.sh: unknown flavour '$flavour' (use cpu or gpu)" >&2; exit 2 ;; esac

want="$(cat "$root/requirements/"*.txt "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  step "environment up to date ($venv, $flavour)"
else
  [ -x "$venv/bin/python" ] || { step "creating $venv"; "$py" -m venv "$venv" || fail "python -m venv"; }
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  if [ "$flavour" = cpu ]; then
    # sglang goes in with --no-deps: pip_quiet.sh drops pip's ~60 "sglang requires <GPU package>" lines after it
    pip=(bash "$root/scripts/pip_quiet.sh" "$venv/bin/python")
    step "torch 2.14.1 + torchvision 0.29.1 (SGLang 0.5.23's pin; CPU-capable build)"
    "${pip[@]}" torch==2.14.1 torchvision==0.29.1 || fail "torch"
    step "sglang 0.5.23 without its CUDA dependency set"
    "${pip[@]}" --no-deps sglang==0.5.23 || fail "sglang --no-deps"
    step "sglang's light runtime dependencies + the project's own"
    "${pip[@]}" -r "$root/requirements/cpu-runtime.txt" -r "$root/requirements/project.txt" || fail "runtime deps"
  else
    step "sglang 0.5.23 with its CUDA stack"
    "${pip[@]}" sglang==0.5.23 || fail "sglang"
    "${pip[@]}" -r "$root/requirements/project.txt" || fail "project deps"
  fi
  step "this package (editable, registers the sglang.srt.plugins entry point)"
  "${pip[@]}" --no-deps -e "$root" || fail "pip install -e ."
  echo "$want" > "$stamp"
fi
if [ "$flavour" = cpu ]; then
  "$venv/bin/python" -m sglang_ext.cpu_compat >&2 || fail "cpu_compat stand-in"
fi
[ -f "$root/models/tiny-llama/config.json" ] || "$venv/bin/python" "$root/scripts/make_tiny_model.py" >&2 || fail "tiny model"
step "ready: $venv"
