"""Policy files: profiles, defaults, and errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrafabric.governor.policy import DEFAULT_POLICY, PolicyError, load_policy, parse_policy

GOOD = """\
profile: production
profiles:
  default:
    min_capability_match: 0.6
    slo:
      success_rate: 0.95
  production:
    failure_threshold: 2
prices:
  big: {usd_per_1m_in: 15, usd_per_1m_out: 75}
swarms:
  research:
    members: [alice, bob]
    budget: {usd: 10}
"""


def test_profiles_start_from_default_and_override_what_they_name(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    policy = load_policy(path)
    assert policy.profile_name == "production"
    assert policy.profile.failure_threshold == 2
    assert policy.profile.min_capability_match == 0.6  # from the file's default
    assert policy.profile.slo.success_rate == 0.95
    assert policy.profile.slo.p99_seconds == 900.0  # the built-in value
    development = policy.with_profile("development")
    assert development.profile.enable_budget_enforcement is False  # the built-in overlay
    assert development.profile.min_capability_match == 0.6
    assert load_policy(path, profile="default").profile.failure_threshold == 3
    assert policy.swarm_of("if://agent/bob") == "research"
    assert policy.prices["big"].cost(1_000_000, 100_000) == pytest.approx(22.5)


def test_the_built_in_policy_has_three_profiles() -> None:
    assert sorted(DEFAULT_POLICY.profiles) == ["default", "development", "production"]
    assert DEFAULT_POLICY.profile.min_capability_match == 0.7
    assert DEFAULT_POLICY.profiles["production"].cooloff_seconds is None
    assert parse_policy("").profile == DEFAULT_POLICY.profile


@pytest.mark.parametrize(
    ("text", "where", "key", "problem"),
    [
        (
            "profiles:\n  default:\n    min_capability_match: 2\n",
            "p.yaml:3",
            "profiles.default.min_capability_match",
            "<= 1.0",
        ),
        (
            "profiles:\n  default:\n    min_capabilty_match: 0.5\n",
            "p.yaml:3",
            "profiles.default.min_capabilty_match",
            "unknown key",
        ),
        (
            "prices:\n  big:\n    usd_per_1m_inn: 3\n",
            "p.yaml:3",
            "prices.big.usd_per_1m_inn",
            "unknown key",
        ),
        (
            "budgets:\n  agents:\n    alice: {usd: -1}\n",
            "p.yaml:3",
            "budgets.agents.alice.usd",
            ">= 0.0",
        ),
        (
            "swarms:\n  r:\n    members: [a]\n    budget: {usd: x}\n",
            "p.yaml:4",
            "swarms.r.budget.usd",
            "got `str`",
        ),
        (
            "swarms:\n  a: {members: [x]}\n  b:\n    members:\n      - y\n      - x\n",
            "p.yaml:6",
            "swarms.b.members",
            "already in swarm a",
        ),
        ("profile: nope\n", "p.yaml:1", "profile", "no profile 'nope'"),
        (
            "vocabulary:\n  extend:\n    - fine:one\n    - Not One\n",
            "p.yaml:4",
            "vocabulary.extend",
            "not category:skill",
        ),
        ("version: 2\n", "p.yaml:1", "version", "<= 1"),
        ("surprise: 1\n", "p.yaml:1", "surprise", "unknown key"),
    ],
)
def test_errors_name_the_file_line_and_key(text: str, where: str, key: str, problem: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, source="p.yaml")
    assert (raised.value.where, raised.value.key) == (where, key)
    assert problem in raised.value.problem
    assert str(raised.value).startswith(f"{where}: {key}: ")


def test_a_file_that_is_not_yaml_or_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"p.yaml:2: not valid YAML"):
        parse_policy("x: [\n", source="p.yaml")
    with pytest.raises(PolicyError, match="a mapping"):
        parse_policy("- 1\n", source="p.yaml")
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy(tmp_path / "missing.yaml")
