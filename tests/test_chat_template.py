"""The shared chat-template renderer: same text as transformers, and safe against hostile templates."""

from __future__ import annotations

import pytest

from engine.chat_template import TemplateError, render_chat
from tests.fixtures.tokenizer import CHAT_TEMPLATE

CONVERSATION = [
    {"role": "system", "content": "You are a helpful sushi chef."},
    {"role": "user", "content": "Hello! おすすめは何ですか？"},
    {"role": "assistant", "content": "Today the tuna is very good. 今日はマグロです。"},
    {"role": "user", "content": "Then tuna, please."},
]

# Templates in the style their models publish, kept here so the test is offline.
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, LLAMA3_STYLE])
def test_renders_like_transformers(hf_checkpoint, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_checkpoint("llama"))
    expected = tok.apply_chat_template(
        CONVERSATION, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    got = render_chat(template, CONVERSATION, bos_token=tok.bos_token, eos_token=tok.eos_token)
    assert got == expected


def test_template_errors_are_clear():
    with pytest.raises(TemplateError, match="alternate"):
        render_chat(MISTRAL_STYLE, CONVERSATION[1:2] * 2)
    with pytest.raises(TemplateError, match="does not parse"):
        render_chat("{% for m in messages %}", CONVERSATION)
    with pytest.raises(TemplateError, match="no chat template"):
        render_chat("", CONVERSATION)


HOSTILE = [
    # reach Python internals through attributes
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['os'].environ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].listdir('/') }}",
    "{{ self._TemplateReference__context }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    # mutate what it was given
    "{{ messages.append({'role': 'system', 'content': 'pwned'}) }}",
    "{{ messages[0].update({'content': 'pwned'}) }}",
    "{{ messages.pop() }}",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_templates_fail_safely(template, tmp_path, monkeypatch):
    monkeypatch.setenv("ITAMAE_SECRET", "do-not-leak")
    messages = [dict(m) for m in CONVERSATION]
    try:
        out = render_chat(template, messages)
    except TemplateError:
        out = ""
    assert "do-not-leak" not in out
    assert "uid=" not in out and "subclasses" not in out and "<class" not in out
    assert messages == CONVERSATION  # nothing was changed in place


# transformers' apply_chat_template enables {% generation %} and {% break %}/{% continue %}
LOOP_CONTROLS_AND_GENERATION = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% continue %}{% endif %}"
    "{% if loop.index > 3 %}{% break %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ 'A: ' + message['content'] + '\n' }}"
    "{% endgeneration %}{% else %}{{ 'U: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
)


def test_loop_controls_and_generation_tag_render_like_transformers(hf_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_checkpoint("llama"))
    expected = tok.apply_chat_template(
        CONVERSATION, chat_template=LOOP_CONTROLS_AND_GENERATION, tokenize=False
    )
    got = render_chat(LOOP_CONTROLS_AND_GENERATION, CONVERSATION, add_generation_prompt=False)
    assert got == expected and got.count("\n") == 2
