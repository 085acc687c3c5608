#!/usr/bin/env bash
# The main job: set up (idempotent), then stock SGLang vs SGLang + extension on the tiny model. Args go to eval.demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" cpu
cd "$root" && exec .venv/bin/python -m eval.demo "$@"
