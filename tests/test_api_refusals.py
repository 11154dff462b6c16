"""Fields a surface cannot honour are refused by name on every surface (one rule,
app/api/schema.refuse_unknown), including the ones that used to be accepted and ignored."""

from __future__ import annotations

import pytest

from app.api import anthropic, ollama_request
from app.api.schema import APIError, refuse_unknown


def test_unknown_fields_are_named_with_their_path():
    with pytest.raises(APIError) as caught:
        refuse_unknown({"model": "m", "mirostat": 2}, {"model"}, "options.")
    assert caught.value.status == 400 and "'options.mirostat'" in str(caught.value)


@pytest.mark.parametrize("value", ["5m", 0, "0", 300])
def test_ollama_keep_alive_with_a_time_limit_is_refused(value):
    with pytest.raises(APIError, match="keep_alive"):
        ollama_request.check_keep_alive({"keep_alive": value})


@pytest.mark.parametrize("value", [None, -1, "-1", "-1m"])
def test_ollama_keep_alive_forever_is_what_itamae_does(value):
    ollama_request.check_keep_alive({"keep_alive": value})


def test_anthropic_metadata_is_refused():
    body = {"model": "demo", "max_tokens": 8, "messages": [], "metadata": {"user_id": "u"}}
    with pytest.raises(APIError, match="metadata"):
        anthropic._request(body)


def test_anthropic_thinking_budget_is_refused_not_ignored():
    """The engines cannot cap reasoning apart from max_tokens; a budget is named in a 400."""
    with pytest.raises(APIError, match="thinking.budget_tokens"):
        anthropic._thinking({"thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert anthropic._thinking({"thinking": {"type": "enabled"}}) is True
