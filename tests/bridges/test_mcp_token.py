"""The `/mcp` bearer token's text form, and the advice that goes with a refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrafabric.bridges.mcp.hints import _ADVICE, advice
from infrafabric.bridges.mcp.token import TokenError, format_token, parse_token
from infrafabric.protocol.identity import SigningIdentity, b64url_encode
from infrafabric.protocol.message import agent_id


def test_a_token_round_trips_to_the_same_key() -> None:
    identity = SigningIdentity.generate(agent_id("code-bot.7"))
    token = format_token(identity)
    assert token.startswith("ifmcp1.")
    assert parse_token(f"  {token}\n") == (identity.agent, identity.seed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ifmcp1..",
        "Bearer ifmcp1.YWxpY2U." + "A" * 43,
        "ifmcp2.YWxpY2U." + "A" * 43,  # a future format
        "ifmcp1.YWxpY2U." + "A" * 42,  # a short key
        "ifmcp1." + b64url_encode(b"bad name!") + "." + "A" * 43,  # not an agent name
        "ifmcp1.YWxpY2U=." + "A" * 43,  # padded
        "ifmcp1.YWxpY2U." + "A" * 42 + "B",  # non-canonical base64url
    ],
)
def test_anything_else_is_refused_as_malformed(text: str) -> None:
    with pytest.raises(TokenError) as refused:
        parse_token(text)
    assert refused.value.code == "MALFORMED"


@given(st.text(max_size=300))
def test_parse_never_fails_with_another_error(text: str) -> None:
    try:
        agent, seed = parse_token(text)
    except TokenError as refused:
        code = refused.code
    else:
        code = "OK"
        assert agent.startswith("if://agent/")
        assert len(seed) == 32
    assert code in {"OK", "MALFORMED"}


def test_every_refusal_comes_with_a_sentence_naming_what_to_do() -> None:
    for code in _ADVICE:
        sentence = advice(code, "T-1")
        assert "{" not in sentence, code
        assert len(sentence) > 30, code
    assert "task T-1" in advice("NOT_FOUND", "T-1")
    assert "list_tasks" in advice("NOT_FOUND", "T-1")
    assert "claim_next" in advice("ILLEGAL_TRANSITION")
    assert "retry" in advice("SOMETHING_NEW")
