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


def _run(tmp_path, *extra: str, name: str = "s") -> dict:
    out, recs = tmp_path / f"{name}.json", tmp_path / f"{name}.jsonl"
    rc = main(["--policy", "sglang", "--profile", "h100-llama3-8b", "--workload", "azure-conv", "--rate", "30",
               "--num-requests", "60", "--out", str(out), "--requests-out", str(recs), *extra])  # fmt: skip
    assert rc == 0
    return {"summary": json.loads(out.read_text()), "records": read_records(recs)}


def test_default_slo_flags_attach_slos_and_change_attainment(tmp_path):
    """Issue 12.5: --ext-default-*-slo-ms take effect in the simulator as in the server (requests without SLOs get
    them), so attainment is no longer 1.0 by construction."""
    free = _run(tmp_path, name="free")
    assert free["summary"]["slo_attainment"] == 1.0 and all(r.tbt_slo_ms is None for r in free["records"])
    tight = _run(tmp_path, "--ext-default-ttft-slo-ms", "100", "--ext-default-tbt-slo-ms", "8", name="tight")
    assert all(r.ttft_slo_ms == 100 and r.tbt_slo_ms == 8 for r in tight["records"])
    assert tight["summary"]["slo_attainment"] < 1.0
    assert tight["summary"]["ttft_slo_attainment"] < 1.0 and tight["summary"]["tbt_slo_attainment"] < 1.0
    loose = _run(tmp_path, "--ext-default-ttft-slo-ms", "60000", "--ext-default-tbt-slo-ms", "1000", name="loose")
    assert loose["summary"]["slo_attainment"] == 1.0 and loose["records"][0].tbt_slo_ms == 1000
    only_tbt = _run(tmp_path, "--ext-default-tbt-slo-ms", "8", name="only")
    assert all(r.ttft_slo_ms is None for r in only_tbt["records"])
    assert only_tbt["summary"]["tbt_slo_attainment"] == tight["summary"]["tbt_slo_attainment"]
    assert only_tbt["summary"]["ttft_slo_attainment"] == 1.0


def test_slo_spec_wins_over_defaults_and_bad_specs_are_one_line(tmp_path, capsys):
    both = _run(tmp_path, "--slo", "abs:5000:-", "--ext-default-tbt-slo-ms", "8", "--ext-default-ttft-slo-ms", "1")
    assert all(r.ttft_slo_ms == 5000 and r.tbt_slo_ms == 8 for r in both["records"])  # the default fills TBT only
    capsys.readouterr()
    for flag, value in (("--slo", "abs:1"), ("--latency-error", "bias=oops")):
        rc = main(["--policy", "sglang", "--profile", "h100-llama3-8b", "--workload", "azure-conv",
                   "--out", str(tmp_path / "x.json"), flag, value])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:")
