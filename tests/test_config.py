"""One config: flags map 1:1 to fields, validation names the flag, and the config survives the process boundary."""

from __future__ import annotations

import argparse

import pytest

from policies.config import ConfigError, ExtConfig, flat_fields, from_flat
from sglang_ext import config


def parse(argv: list[str]) -> ExtConfig:
    parser = argparse.ArgumentParser()
    config.add_cli_args(parser)
    return config.from_namespace(parser.parse_args(argv))


def test_defaults_are_stock() -> None:
    cfg = parse([])
    assert cfg == ExtConfig()
    assert cfg.policy == "none" and not cfg.enabled


def test_every_field_has_exactly_one_flag() -> None:
    flags = [flag for flag, _, _ in flat_fields()]
    assert len(flags) == len(set(flags))
    assert all(f.startswith("ext-") for f in flags)
    parser = argparse.ArgumentParser()
    config.add_cli_args(parser)
    dests = {a.dest for a in parser._actions}
    assert {f.replace("-", "_") for f in flags} <= dests


def test_flags_reach_their_sections() -> None:
    cfg = parse(["--ext-policy", "cacheopt", "--ext-cacheopt-reserve-tokens", "128", "--ext-cacheopt-reuse", "off",
                 "--ext-predictor-alpha", "0.9", "--ext-accelgen-pivot-tokens", "256"])  # fmt: skip
    assert cfg.policy == "cacheopt"
    assert cfg.cacheopt.reserve_tokens == 128
    assert cfg.cacheopt.reuse is False
    assert cfg.predictor.alpha == 0.9
    assert cfg.accelgen.pivot_tokens == 256


def test_json_round_trip_is_lossless() -> None:
    cfg = parse(["--ext-policy", "cacheopt+accelgen", "--ext-default-tbt-slo-ms", "50", "--ext-cacheopt-topup", "0"])
    assert config.from_json(config.to_json(cfg)) == cfg


def test_env_publish_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.current() == ExtConfig()
    cfg = parse(["--ext-policy", "accelgen"])
    config.publish(cfg)
    assert config.current() == cfg


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"ext_predictor_alpha": 1.5}, "--ext-predictor-alpha"),
        ({"ext_default_tbt_slo_ms": -1.0}, "--ext-default-tbt-slo-ms"),
        ({"ext_cacheopt_reserve_tokens": -8}, "--ext-cacheopt-reserve-tokens"),
        ({"ext_accelgen_min_budget": 0}, "--ext-accelgen-min-budget"),
        ({"ext_policy": "bogus"}, "--ext-policy"),
    ],
)
def test_bad_values_name_the_flag(values: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_flat(values)
    msg = str(err.value)
    assert msg.startswith(flag + ":")
    assert "\n" not in msg


def test_non_numeric_flag_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--ext-default-ttft-slo-ms", "fast"])
    assert "--ext-default-ttft-slo-ms" in capsys.readouterr().err
