"""``python -m eval.simulate``: summary schema, per-request lines, ``--ext-*`` flags, one-line name errors."""

from __future__ import annotations

import json

import pytest

from eval.metrics import SUMMARY_FIELDS, read_records
from eval.simulate import build_parser, config_from_args, main
from policies.config import flat_fields


def test_runs_and_writes_summary_and_records(tmp_path):
    out, recs = tmp_path / "s.json", tmp_path / "r.jsonl"
    rc = main(["--policy", "sglang", "--profile", "h100-llama3-8b", "--workload", "azure-conv", "--rate", "4",
               "--num-requests", "40", "--out", str(out), "--requests-out", str(recs),
               "--ext-sglang-schedule-policy", "lpm", "--ext-sglang-chunked-prefill-size", "512"])  # fmt: skip
    assert rc == 0
    summary = json.loads(out.read_text())
    assert tuple(summary) == SUMMARY_FIELDS and summary["submitted"] == 40
    assert len(read_records(recs)) == 40


def test_every_ext_flag_is_accepted_and_mapped():
    parser = build_parser()
    flags = {f"--{flag}" for flag, _, _ in flat_fields()}
    assert flags <= set(parser._option_string_actions)
    argv = ["--policy", "vllm", "--profile", "x", "--workload", "y", "--out", "o", "--ext-cacheopt-reuse", "false"]
    args = parser.parse_args([*argv, "--ext-sglang-schedule-conservativeness", "0.3"])
    cfg = config_from_args(args)
    assert cfg.policy == "vllm" and cfg.cacheopt.reuse is False and cfg.sglang.schedule_conservativeness == 0.3


@pytest.mark.parametrize(
    ("flag", "value", "kind"),
    [("--policy", "nope", "policy"), ("--profile", "nope", "latency profile"), ("--workload", "nope", "workload")],
)
def test_unknown_names_list_the_valid_ones(tmp_path, capsys, flag, value, kind):
    argv = {"--policy": "sglang", "--profile": "h100-llama3-8b", "--workload": "azure-conv"}
    argv[flag] = value
    rc = main([*(x for kv in argv.items() for x in kv), "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"unknown {kind} 'nope'; valid:" in err[0]
