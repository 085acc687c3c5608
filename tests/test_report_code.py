"""The committed report matches the code that computes its numbers, and no doc carries an absolute machine path."""

from __future__ import annotations

import re

import pytest

from eval.figures.cells import FINGERPRINT_PATHS, ROOT, code_fingerprint
from eval.figures.report import FINGERPRINT_LINE, report_fingerprint

REPORT = ROOT / "docs" / "REPORT.md"
# /work/..., /home/<user>/..., /Users/..., /root/..., /tmp/... at the start of a path (not inside a URL like ipc:///tmp)
MACHINE_PATH = re.compile(r"(?<![\w/.:~-])/(?:work|home|Users|root|mnt|tmp|private|opt|var/folders)/")


def test_committed_report_was_computed_by_this_code() -> None:
    found = report_fingerprint(REPORT.read_text())
    if found is None:
        pytest.skip(
            "docs/REPORT.md predates the machine-readable fingerprint line; regenerate it with "
            "`python -m eval.reproduce` (issue 10: the lead regenerates it once the policies settle)"
        )
    fingerprint, commit = found
    assert fingerprint == code_fingerprint(), (
        f"docs/REPORT.md was computed by code with fingerprint {fingerprint} (commit {commit}); the code now has "
        f"{code_fingerprint()}: regenerate it with `python -m eval.reproduce`"
    )


def test_fingerprint_line_round_trips_and_covers_the_code() -> None:
    line = FINGERPRINT_LINE.format(fingerprint="0123abcd", commit="abc1234+dirty")
    assert report_fingerprint(f"# title\n\n{line}\nmore") == ("0123abcd", "abc1234+dirty")
    assert report_fingerprint("# an old report with `code fingerprint `d8f1929a8ee913ce``") is None
    for part in ("policies", "host", "profiles", "predictors", "eval/compare", "eval/scenarios.py", "eval/variants.py",
                 "eval/estimates.py", "eval/caps.py", "eval/capacity.json"):  # fmt: skip
        assert part in FINGERPRINT_PATHS, part


def test_no_doc_carries_an_absolute_machine_path() -> None:
    skip = {".venv", "runs", ".git", "node_modules"}
    bad = []
    docs = [*ROOT.rglob("*.md"), *(ROOT / "docs").rglob("*.json")]  # reports and the result files they cite
    for path in docs:
        if skip & set(path.relative_to(ROOT).parts):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not bad, "absolute machine paths in docs:\n" + "\n".join(bad)
    assert MACHINE_PATH.search("see /work/main/docs") and MACHINE_PATH.search("`/home/me/x`")
    assert not MACHINE_PATH.search("ipc:///tmp/pred.sock") and not MACHINE_PATH.search("docs/tmp/x")
