"""The governor's policy: one YAML file, profiles, prices, swarms and budgets.

Loading validates every key and value and names the file, line and key of the first
problem (:class:`PolicyError`), so an operator fixes a typo before it costs money. A
profile other than ``default`` overrides only the knobs it names; the rest come from
``default``, which itself starts from the built-in values below. The format is
documented in ``docs/governor.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
import yaml
from msgspec import Meta, Struct

from infrafabric.errors import CallerError

__all__ = [
    "DEFAULT_VOCABULARY",
    "Budget",
    "Policy",
    "PolicyError",
    "Price",
    "Profile",
    "load_policy",
    "parse_policy",
]

#: The capabilities a fabric knows out of the box (``category:skill``); a policy adds
#: more under ``vocabulary.extend``, and with ``vocabulary.strict`` refuses the rest.
DEFAULT_VOCABULARY: Final = frozenset(
    {
        "code:python", "code:typescript", "code:go", "code:rust", "code:sql", "code:review",
        "code:test", "code:refactor", "docs:write", "docs:edit", "docs:translate",
        "research:web", "research:papers", "research:summarize", "data:analysis",
        "data:etl", "data:viz", "ops:deploy", "ops:monitor", "ops:incident", "security:audit",
        "security:pentest", "design:ui", "design:review", "media:image", "media:audio",
        "media:video", "plan:decompose", "plan:estimate", "chat:support",
    }
)  # fmt: skip

CAPABILITY: Final = re.compile(r"[a-z0-9_-]{1,32}:[a-z0-9_.*-]{1,64}")

Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Usd = Annotated[float, Meta(ge=0.0, le=1e9)]
Tokens = Annotated[int, Meta(ge=0, le=10**15)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]


def _default_bands() -> dict[str, float]:
    """Names for reputation ranges in reports: at or above each bound."""
    return {"trusted": 0.8, "probation": 0.5}


class PolicyError(CallerError):
    """A policy that cannot be used: ``where`` is ``file:line``, ``key`` the dotted path."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.where = where
        self.key = key
        self.problem = problem


class Slo(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an agent is held to: the share of its tasks that succeed, and the p99 of how
    long they take from claim to completion."""

    success_rate: Fraction = 0.9
    p99_seconds: Annotated[float, Meta(gt=0, le=86_400 * 30)] = 900.0


class Profile(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min_capability_match: Fraction = 0.7
    max_helpers_per_task: Annotated[int, Meta(ge=0, le=100)] = 3
    max_cost_per_task: Usd | None = None  # USD a single task may cost; None: no limit
    failure_threshold: Annotated[int, Meta(ge=1, le=1000)] = 3
    #: Seconds an open breaker waits before letting one trial claim through (half-open);
    #: None: it stays open until an operator resets it.
    cooloff_seconds: Annotated[float, Meta(ge=0, le=86_400 * 30)] | None = 300.0
    enable_budget_enforcement: bool = True
    overdraft_factor: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.0
    budget_warning_fraction: Fraction = 0.2
    min_reputation: Fraction = 0.2  # below it an agent gets no new work
    #: A task nobody better has taken for this long goes to any qualified agent.
    patience_seconds: Annotated[float, Meta(ge=0, le=86_400)] = 30.0
    slo: Slo = Slo()


class Price(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens in and out, or per hour (a human, a rented machine)."""

    usd_per_1m_in: Usd = 0.0
    usd_per_1m_out: Usd = 0.0
    usd_per_hour: Usd = 0.0

    def cost(self, tokens_in: int, tokens_out: int, seconds: float = 0.0) -> float:
        return (
            tokens_in * self.usd_per_1m_in / 1e6
            + tokens_out * self.usd_per_1m_out / 1e6
            + seconds * self.usd_per_hour / 3600
        )


class Budget(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A spending limit; a missing bound is no limit."""

    usd: Usd | None = None
    tokens: Tokens | None = None


class ReferenceTask(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The typical task, to compare token prices with hourly ones when ranking agents."""

    tokens_in: Tokens = 20_000
    tokens_out: Tokens = 4_000
    hours: Annotated[float, Meta(ge=0, le=1000)] = 0.25


class Swarm(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    members: Annotated[list[Name], Meta(max_length=10_000)] = []
    budget: Budget = Budget()


class Budgets(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agents: dict[Name, Budget] = {}
    default_agent: Budget = Budget()
    default_task: Budget = Budget()


class Vocabulary(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    extend: Annotated[list[str], Meta(max_length=10_000)] = []
    strict: bool = False  # refuse capabilities outside the vocabulary


class _Document(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1, le=1)] = 1
    profile: str = "default"
    profiles: dict[str, dict[str, Any]] = {}
    prices: dict[Name, Price] = {}
    reference_task: ReferenceTask = ReferenceTask()
    swarms: dict[Name, Swarm] = {}
    budgets: Budgets = Budgets()
    vocabulary: Vocabulary = Vocabulary()
    reputation_bands: dict[Name, Fraction] = msgspec.field(default_factory=_default_bands)


class Policy(Struct, frozen=True, kw_only=True):
    """A validated policy with its active profile resolved."""

    profile_name: str = "default"
    profile: Profile = Profile()
    profiles: dict[str, Profile] = {}
    prices: dict[str, Price] = {}
    reference_task: ReferenceTask = ReferenceTask()
    swarms: dict[str, Swarm] = {}
    budgets: Budgets = Budgets()
    vocabulary: frozenset[str] = DEFAULT_VOCABULARY
    strict_vocabulary: bool = False
    reputation_bands: dict[str, float] = msgspec.field(default_factory=_default_bands)
    source: str = "<built-in>"

    def with_profile(self, name: str) -> Policy:
        if name not in self.profiles:
            raise PolicyError(
                self.source, "profile", f"no profile {name!r} (have {sorted(self.profiles)})"
            )
        return msgspec.structs.replace(self, profile_name=name, profile=self.profiles[name])

    def swarm_of(self, agent: str) -> str | None:
        """The swarm ``agent`` (an ``if://agent/`` id) belongs to, if any."""
        name = agent.removeprefix("if://agent/")
        for swarm, spec in self.swarms.items():
            if name in spec.members or agent in spec.members:
                return swarm
        return None

    def agent_budget(self, agent: str) -> Budget:
        name = agent.removeprefix("if://agent/")
        return (
            self.budgets.agents.get(name)
            or self.budgets.agents.get(agent)
            or (self.budgets.default_agent)
        )

    def capability_problem(self, capability: str) -> str | None:
        """Why ``capability`` is not acceptable, or ``None``."""
        if not CAPABILITY.fullmatch(capability):
            return f"{capability!r} is not category:skill (lowercase letters, digits, _ - .)"
        if self.strict_vocabulary and capability not in self.vocabulary:
            return f"{capability!r} is not in the policy's vocabulary"
        return None


#: What the ``development`` and ``production`` profiles change from ``default`` unless a
#: policy file defines them itself.
BUILT_IN_OVERLAYS: Final[dict[str, dict[str, Any]]] = {
    "development": {"enable_budget_enforcement": False, "cooloff_seconds": 30.0},
    "production": {"cooloff_seconds": None, "min_capability_match": 0.8},
}


def load_policy(path: Path | str, *, profile: str | None = None) -> Policy:
    """Read and validate the policy file at ``path`` (profile: override its ``profile``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(path), "", f"cannot read the policy: {exc}") from None
    return parse_policy(text, source=str(path), profile=profile)


def parse_policy(text: str, *, source: str = "<policy>", profile: str | None = None) -> Policy:
    """Validate a policy document (YAML); raises :class:`PolicyError` naming the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{source}{line}", "", f"not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}:1", "", "a policy is a mapping of keys to values")

    def where(path: Sequence[str | int]) -> str:
        return f"{source}:{_line_of(root, path)}"

    def convert(value: Any, kind: type[Any], path: list[str | int]) -> Any:
        try:
            return msgspec.convert(value, kind, strict=True)
        except msgspec.ValidationError as exc:
            inner, problem = _split_error(str(exc))
            full = [*path, *inner]
            raise PolicyError(where(full), ".".join(map(str, full)), problem) from None

    # Sections keyed by name first, one entry at a time: msgspec's error path does not
    # name the key of a dict entry, and the operator needs it.
    for section, kind in (("prices", Price), ("swarms", Swarm)):
        entries = data.get(section)
        if isinstance(entries, dict):
            for key, value in entries.items():
                convert(value, kind, [section, str(key)])
    budgets = data.get("budgets")
    if isinstance(budgets, dict) and isinstance(budgets.get("agents"), dict):
        for key, value in budgets["agents"].items():
            convert(value, Budget, ["budgets", "agents", str(key)])
    document: _Document = convert(data, _Document, [])
    # default: the built-in values and the file's; every other profile: the resolved
    # default and its own overrides (the built-in overlay when the file does not say)
    overlays = {**BUILT_IN_OVERLAYS, **document.profiles}
    profiles: dict[str, Profile] = {}
    default_values = msgspec.to_builtins(Profile())
    for name in ["default", *sorted(set(overlays) - {"default"})]:
        start = default_values if name == "default" else msgspec.to_builtins(profiles["default"])
        overrides = overlays.get(name, {})
        merged = {**start, **overrides}
        if isinstance(overrides.get("slo"), dict):
            merged["slo"] = {**start["slo"], **overrides["slo"]}
        try:
            profiles[name] = msgspec.convert(merged, Profile, strict=True)
        except msgspec.ValidationError as exc:
            path, problem = _split_error(str(exc))
            full = ["profiles", name, *path]
            raise PolicyError(where(full), ".".join(map(str, full)), problem) from None
    vocabulary = DEFAULT_VOCABULARY | frozenset(document.vocabulary.extend)
    policy = Policy(
        profiles=profiles,
        prices=dict(document.prices),
        reference_task=document.reference_task,
        swarms=dict(document.swarms),
        budgets=document.budgets,
        vocabulary=vocabulary,
        strict_vocabulary=document.vocabulary.strict,
        reputation_bands=dict(document.reputation_bands),
        source=source,
    )
    for index, capability in enumerate(document.vocabulary.extend):
        if not CAPABILITY.fullmatch(capability):
            path = ["vocabulary", "extend", index]
            raise PolicyError(
                where(path), "vocabulary.extend", f"{capability!r} is not category:skill"
            )
    _check_swarms(policy, where)
    chosen = profile or document.profile
    if chosen not in profiles:
        raise PolicyError(
            where(["profile"]), "profile", f"no profile {chosen!r} (have {sorted(profiles)})"
        )
    return policy.with_profile(chosen)


def _check_swarms(policy: Policy, where: Any) -> None:
    seen: dict[str, str] = {}
    for swarm, spec in policy.swarms.items():
        for position, member in enumerate(spec.members):
            name = member.removeprefix("if://agent/")
            if name in seen:
                path = ["swarms", swarm, "members", position]
                raise PolicyError(
                    where(path),
                    f"swarms.{swarm}.members",
                    f"{member} is already in swarm {seen[name]}",
                )
            seen[name] = swarm


_ERROR = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _split_error(message: str) -> tuple[list[str | int], str]:
    """msgspec's ``Expected `int`, got `str` - at `$.profiles.x[0]``` as (path, problem)."""
    key_error = re.fullmatch(r"(?P<problem>.*) - at `key` in `\$(?P<path>[^`]*)`", message, re.S)
    if key_error:  # a dict key of the wrong form
        where, problem = _split_error(
            f"{key_error.group('problem')} - at `${key_error.group('path')}`"
        )
        return where, f"a name: {problem}"
    match = _ERROR.match(message)
    assert match is not None
    path: list[str | int] = []
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", match.group("path") or ""):
        path.append(int(index) if index else key)
    problem = match.group("problem")
    unknown = re.match(r"Object contains unknown field `(.+)`", problem)
    if unknown:
        path.append(unknown.group(1))
        problem = "unknown key (a typo?)"
    return path, problem


def _line_of(node: Any, path: Sequence[str | int]) -> int:
    """The 1-based line of the YAML node at ``path`` (or of its nearest ancestor)."""
    line = 1 if node is None else node.start_mark.line + 1
    for step in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == step:
                    line, child = key.start_mark.line + 1, value
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value)
        ):
            child = node.value[step]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


#: The policy when none is given: the built-in values and profiles.
DEFAULT_POLICY: Final = parse_policy("", source="<built-in>")
