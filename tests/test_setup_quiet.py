"""scripts/pip_quiet.sh, the set-up's pip wrapper: pip's known noise after the CPU install (the resolver's ERROR
header and one "sglang requires <GPU package>, which is not installed" line per GPU requirement) is dropped and
counted; any other conflict keeps pip's header; a failing pip shows everything and fails. A stand-in for
``python -m pip`` prints pip's exact lines, so the filter is tested on pip's real wording without installing."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from eval.server import ROOT

SCRIPT = ROOT / "scripts" / "pip_quiet.sh"
HEADER = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. "
          "This behaviour is the source of the following dependency conflicts.")  # fmt: skip
NOISE = [
    "sglang 0.5.23 requires flashinfer_python==0.7.2, which is not installed.",
    "sglang 0.5.23 requires torchaudio==2.11.0, which is not installed.",
    'sglang 0.5.23 requires torchcodec==0.17.0; sys_platform != "linux", which is not installed.',
]


def fake_python(tmp_path: Path, lines: list[str], rc: int) -> Path:
    body = "\n".join(f"echo {subprocess.list2cmdline([ln])} >&2" for ln in lines)
    exe = tmp_path / "python"
    exe.write_text(f'#!/usr/bin/env bash\necho "args: $*"\n{body}\nexit {rc}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def run(tmp_path: Path, lines: list[str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    py = fake_python(tmp_path, lines, rc)
    return subprocess.run(["bash", str(SCRIPT), str(py), "-r", "reqs.txt"], capture_output=True, text=True, timeout=30)


def test_known_noise_is_dropped_and_counted(tmp_path: Path) -> None:
    p = run(tmp_path, ["WARNING: something pip wants you to see", HEADER, *NOISE])
    assert p.returncode == 0
    out = p.stdout + p.stderr
    assert "args: -m pip install --quiet --disable-pip-version-check -r reqs.txt" in out
    assert "WARNING: something pip wants you to see" in out
    assert "ERROR" not in out and "which is not installed" not in out
    assert "3 GPU-only requirements of sglang are not installed" in out


def test_a_real_conflict_keeps_pips_header(tmp_path: Path) -> None:
    real = "transformers 5.19.0 requires tokenizers<0.24, but you have tokenizers 0.25.0 which is incompatible."
    p = run(tmp_path, [HEADER, *NOISE, real])
    assert p.returncode == 0
    assert HEADER in p.stderr and real in p.stderr
    assert "flashinfer" not in p.stderr


def test_a_failing_pip_shows_everything_and_fails(tmp_path: Path) -> None:
    p = run(tmp_path, ["ERROR: No matching distribution found for nosuchpkg", HEADER, *NOISE], rc=1)
    assert p.returncode == 1
    assert "No matching distribution found for nosuchpkg" in p.stderr
    assert NOISE[0] in p.stderr  # on failure nothing is hidden
    assert "failed (exit 1)" in p.stderr
