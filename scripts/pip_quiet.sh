#!/usr/bin/env bash
# pip install without its known, harmless noise; everything else pip says still shows.
# Usage: bash scripts/pip_quiet.sh PYTHON [pip install args...]
#
# Why: the CPU set-up installs sglang with --no-deps (its metadata pins the whole CUDA stack). Every later pip
# install then ends with "ERROR: pip's dependency resolver does not currently take into account ..." and one
# "sglang X requires Y, which is not installed." line per GPU requirement (~60 lines), although pip succeeded.
# Those lines are dropped and counted in one line. A conflict of any other kind (another package, or a version
# mismatch of an installed requirement) is shown with pip's header. A failing pip prints its whole output and its
# exit status is this script's.
set -uo pipefail
py="$1"
shift
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$py" -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
  cat "$log" >&2
  echo "pip_quiet.sh: pip install $* failed (exit $rc); its full output is above" >&2
  exit "$rc"
fi
header="^ERROR: pip's dependency resolver does not currently take into account all the packages that are installed"
missing='^sglang [^ ]+ requires .+, which is not installed\.$'
conflict=' requires .+(, which is not installed\.|, but you have .+)$'
n_missing=$(grep -cE "$missing" "$log" || true)
n_real=$(grep -E "$conflict" "$log" | grep -cvE "$missing" || true)
if [ "$n_real" -gt 0 ]; then
  grep -vE "$missing" "$log" >&2 || true  # real conflicts: keep pip's header with them
else
  grep -vE "$missing|$header" "$log" >&2 || true
fi
if [ "$n_missing" -gt 0 ]; then
  echo "pip_quiet.sh: $n_missing GPU-only requirements of sglang are not installed, as intended here (pip check lists them)" >&2
fi
exit 0
