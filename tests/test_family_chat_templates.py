"""The chat templates GLM, MiniMax and Moonshot publish, rendered by Itamae's sandbox to the
same token ids as transformers' `apply_chat_template`, with tools, tool calls and results,
and the reasoning of earlier turns (`reasoning_content`); and each family's reasoning
convention split into the collapsible reasoning block of the chat view.

The templates are llama.cpp's copies of the published ones (models/templates in the
llama-cpp-python sdist, fetched once by tests/fixtures/llamacpp_reference.py).
"""

from __future__ import annotations

import pytest

from engine.chat_template import TemplateError, render_chat
from engine.reasoning import split_reasoning
from tests.fixtures.llamacpp_reference import llama_cpp_source

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_fish_price",
            "description": "Price of a fish today.",
            "parameters": {
                "type": "object",
                "properties": {"fish": {"type": "string"}},
                "required": ["fish"],
            },
        },
    }
]
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_fish_price", "arguments": {"fish": "tuna"}},
}
CONVERSATION = [
    {"role": "system", "content": "You are a sushi chef."},
    {"role": "user", "content": "How much is tuna? マグロはいくら?"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should look the price up.",
        "tool_calls": [TOOL_CALL],
    },
    {
        "role": "tool",
        "tool_call_id": "call_1",
        "name": "get_fish_price",
        "content": '{"price": 12}',
    },
    {"role": "assistant", "content": "Tuna is 12 today.", "reasoning_content": "The tool said 12."},
    {"role": "user", "content": "And salmon?"},
]
PLAIN = [m for m in CONVERSATION if "tool_calls" not in m and m["role"] != "tool"]
# The published templates (GLM-4.5/4.6/4.7, GLM-4.7-Flash, MiniMax-M2, Kimi-K2-Instruct)
PUBLISHED = ("GLM-4.6", "GLM-4.7-Flash", "MiniMax-M2", "moonshotai-Kimi-K2")
# llama.cpp's reworked Kimi templates keep tool-call ids in a list they append to, which
# transformers' sandbox refuses as Itamae's does; without tool calls they render.
KIMI_REWORKED = ("Kimi-K2-Instruct", "Kimi-K2-Thinking")


def template(name: str) -> str:
    return (llama_cpp_source() / "models" / "templates" / f"{name}.jinja").read_text()


@pytest.fixture(scope="module")
def tokenizer(hf_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_checkpoint("glm4_moe"))


def same_ids(tokenizer, name: str, messages: list[dict], **extra) -> None:
    source = template(name)
    want = tokenizer.apply_chat_template(
        messages, chat_template=source, add_generation_prompt=True, tokenize=False, **extra
    )
    got = render_chat(
        source, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, **extra
    )
    assert got == want
    assert tokenizer.encode(got, add_special_tokens=False) == tokenizer.encode(
        want, add_special_tokens=False
    )


@pytest.mark.parametrize("name", PUBLISHED)
@pytest.mark.parametrize("thinking", (None, True, False))
def test_published_template_renders_as_transformers(tokenizer, name, thinking):
    extra = {} if thinking is None else {"enable_thinking": thinking}
    same_ids(tokenizer, name, CONVERSATION, tools=TOOLS, **extra)


@pytest.mark.parametrize("name", PUBLISHED)
def test_reasoning_of_earlier_turns_is_dropped_and_of_the_current_turn_kept(name):
    """Reasoning before the last user message never reaches the prompt; within the current
    turn (tool call, result, answer) the reasoning templates keep it, Kimi-K2 has none."""
    source = template(name)
    later = render_chat(source, CONVERSATION, tools=TOOLS)
    assert "I should look" not in later and "The tool said 12." not in later
    assert "Tuna is 12 today." in later
    current = render_chat(source, CONVERSATION[:5], tools=TOOLS, add_generation_prompt=False)
    kept = not name.endswith("Kimi-K2")
    assert ("I should look" in current, "The tool said 12." in current) == (kept, kept)


@pytest.mark.parametrize("name", KIMI_REWORKED)
def test_reworked_kimi_templates(tokenizer, name):
    same_ids(tokenizer, name, PLAIN, tools=TOOLS)
    with pytest.raises(TemplateError):
        render_chat(template(name), CONVERSATION, tools=TOOLS)


@pytest.mark.parametrize(
    "reply",
    (
        "\n<think>Tuna first, then salmon.</think>\nSalmon is 9 today.",  # GLM-4.5/4.6/4.7
        "Tuna first, then salmon.</think>\nSalmon is 9 today.",  # GLM-4.7-Flash, MiniMax-M2, Kimi
    ),
)
def test_family_reasoning_shows_as_reasoning(reply):
    """GLM-4.5/4.6 write <think>…</think> themselves; GLM-4.7-Flash's and MiniMax-M2's
    generation prompts end inside the block (`<think>`), so only the closing tag comes;
    Kimi-K2-Thinking writes the block like GLM."""
    parts = split_reasoning(reply)
    assert (parts.thinking, parts.answer) == ("Tuna first, then salmon.", "Salmon is 9 today.")
