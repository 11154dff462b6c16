"""Render a model's own chat template, the one prompt builder every backend shares.

Templates come from model files (tokenizer_config.json, GGUF `tokenizer.chat_template`),
so they are untrusted: they run in jinja2's ImmutableSandboxedEnvironment, which refuses
attribute access to Python internals and mutation of the objects passed in. The globals
follow Hugging Face's `apply_chat_template` (transformers/utils/chat_template_utils.py),
so templates written for it render the same text here: the same filters and globals
(`tojson` keeping non-ASCII text, `raise_exception`, `strftime_now`, `dict`, a
`namespace` that refuses underscore names), `{% break %}`/`{% continue %}`
(jinja2.ext.loopcontrols) and the `{% generation %}` block, which renders its body (HF
uses it to mark assistant tokens for training masks; nothing here needs the marks).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from converters.core.errors import ItamaeError


class TemplateError(ItamaeError):
    pass


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # HF's tojson keeps non-ASCII text as is (Japanese stays readable in prompts).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: the body, rendered as it is."""

    tags = {"generation"}

    def parse(self, parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace(), refusing underscore names (no way to CPython internals)."""

    def __init__(*args, **kwargs):  # jinja's own signature trick: namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"A template may not store {name!r}.")


def _dict(*args, **kwargs) -> dict:
    return dict(*args, **kwargs)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _dict
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TemplateError(
            f"The model's chat template does not parse ({e.message}, line {e.lineno}).",
            "Pass a raw prompt instead, or fix tokenizer_config.json's chat_template.",
        ) from e


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra,
) -> str:
    """The prompt text for `messages` ([{"role", "content"}]) as the model was trained to see it."""
    if not template:
        raise TemplateError(
            "This model has no chat template.", "Use a raw prompt (--prompt without --chat)."
        )
    try:
        return _compile(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(
            f"The model's chat template tried something unsafe and was stopped: {e}",
            "Do not trust this model file; use a template from a known source.",
        ) from e
    except jinja2.exceptions.TemplateError as e:
        raise TemplateError(f"The model's chat template failed: {e}", "") from e


@lru_cache(maxsize=32)
def template_variables(template: str) -> frozenset[str]:
    """The names a template reads from its caller (jinja2.meta): which switches it has,
    e.g. `enable_thinking`, `thinking` (DeepSeek-V3.1) or `reasoning_effort` (gpt-oss)."""
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(template)))
    except jinja2.exceptions.TemplateSyntaxError:
        return frozenset()
