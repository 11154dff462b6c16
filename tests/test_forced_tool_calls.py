"""A forced tool call (tool_choice `required` or named) per template family: the grammar
both engines build accepts the call as the family writes it, ends there, and the text
parses back to the call.

The torch engine's grammar runs in llguidance over the fixtures' BPE tokenizer with the
family's special tokens added; the llama.cpp engine's GBNF runs in llama.cpp's grammar
sampler over the demo GGUF's vocabulary (which lacks those special tokens, so they are
matched as text there). The written forms follow llama.cpp's tests/test-chat.cpp.
"""

from __future__ import annotations

import ctypes
import json

import llguidance
import pytest
from tokenizers import AddedToken

from converters.core.errors import ItamaeError
from engine.constrained import grammar_for as lark_grammar
from engine.constrained import tokenizer_for
from engine.llamacpp.grammar import grammar_for as gbnf_grammar
from engine.loader import DEMO_DIR
from engine.tool_calls import FORMATS, forced_constraint
from engine.types import GenerationRequest, Message
from tests.fixtures.tokenizer import train_tokenizer

llama_cpp = pytest.importorskip("llama_cpp")


def _tool(name: str, properties: dict) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [
    _tool("get_time", {"zone": {"type": "string"}}),
    _tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}),
]
ARGUMENTS = {"city": "東京", "days": 3}
# family -> (special tokens of its vocabulary, the call as the model writes it after the
# forced prefix)
WRITTEN = {
    "hermes": ([], '{"name": "get_weather", "arguments": {"city": "東京", "days": 3}}'),
    "llama3": ([], '{"name": "get_weather", "parameters": {"city": "東京", "days": 3}}'),
    "harmony": (
        ["<|channel|>", "<|constrain|>", "<|message|>"],
        'get_weather <|constrain|>json<|message|>{"city": "東京", "days": 3}',
    ),
    "deepseek": (
        ["<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>"],
        'get_weather\n```json\n{"city": "東京", "days": 3}',
    ),
    "kimi": (
        ["<|tool_calls_section_begin|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>"],
        'get_weather:0<|tool_call_argument_begin|>{"city": "東京", "days": 3}',
    ),
    "glm45": (
        ["<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"],
        "get_weather\n<arg_key>city</arg_key>\n<arg_value>東京</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
    ),
    "deepseek_dsml": (  # DeepSeek-V3.2: "｜DSML｜" is plain text to its tokenizer
        [],
        'get_weather">\n<｜DSML｜parameter name="city" string="true">東京</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
    ),
    "deepseek_v4_dsml": (  # DeepSeek-V4: the same markup in a tool_calls block
        [],
        'get_weather">\n<｜DSML｜parameter name="city" string="true">東京</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
    ),
    "minimax": (
        ["<minimax:tool_call>", "</minimax:tool_call>"],
        '<invoke name="get_weather">\n<parameter name="city">東京</parameter>\n'
        '<parameter name="days">3</parameter>\n</invoke>\n</minimax:tool_call>',
    ),
}
FAMILIES = {fmt.name: fmt for fmt in FORMATS}


def _constraint(family: str, choice: str):
    request = GenerationRequest(
        messages=[Message("user", "Weather in Tokyo?")],
        tools=TOOLS,
        tool_choice=choice,
        tool_name="get_weather" if choice == "function" else None,
    )
    return forced_constraint(FAMILIES[family], request)


@pytest.mark.parametrize("choice", ["required", "function"])
@pytest.mark.parametrize("family", list(WRITTEN))
def test_llguidance_accepts_the_written_call_and_ends(family, choice):
    specials, written = WRITTEN[family]
    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    eos = tokenizer.token_to_id("<|im_end|>")
    constraint = _constraint(family, choice)
    grammar = lark_grammar(constraint, tokenizer.token_to_id)
    guide = llguidance.LLMatcher(
        tokenizer_for(tokenizer.to_str(), tokenizer.get_vocab_size(), {eos}), grammar, log_level=0
    )
    for token in tokenizer.encode(written, add_special_tokens=False).ids:
        assert guide.consume_token(token), guide.get_error()
    assert guide.is_accepting()
    _, calls = FAMILIES[family].parse(constraint.prefix + written, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", ARGUMENTS)]


def _grammar_allows(sampler, n_vocab: int, token: int) -> bool:
    data = (llama_cpp.llama_token_data * n_vocab)()
    for i in range(n_vocab):
        data[i].id, data[i].logit, data[i].p = i, 0.0, 0.0
    array = llama_cpp.llama_token_data_array(data, n_vocab, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    return array.data[token].logit != float("-inf")


@pytest.fixture(scope="module")
def demo_vocab():
    from engine.llamacpp.native import LoadOptions, NativeModel

    native = NativeModel(DEMO_DIR / "itamae-demo-Q8_0.gguf", LoadOptions(n_ctx=64, gpu_layers=0))
    yield native
    native.close()


@pytest.mark.parametrize("choice", ["required", "function"])
@pytest.mark.parametrize("family", list(WRITTEN))
def test_llamacpp_grammar_accepts_the_written_call_and_ends(family, choice, demo_vocab):
    _, written = WRITTEN[family]
    grammar = gbnf_grammar(_constraint(family, choice))
    sampler = llama_cpp.llama_sampler_init_grammar(demo_vocab.vocab, grammar.encode(), b"root")
    assert sampler, grammar
    try:
        for token in demo_vocab.tokenize(written, add_special=False, parse_special=False):
            assert _grammar_allows(sampler, demo_vocab.n_vocab, token)
            llama_cpp.llama_sampler_accept(sampler, token)
        eos = llama_cpp.llama_vocab_eos(demo_vocab.vocab)
        assert _grammar_allows(sampler, demo_vocab.n_vocab, eos)  # complete: may end here
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize("family", ["glm45", "minimax"])
def test_xml_forms_force_string_enums_and_refuse_what_bare_text_cannot_hold(family, demo_vocab):
    unit = _tool("get_weather", {"unit": {"type": "string", "enum": ["celsius", "kelvin"]}})
    request = GenerationRequest(
        messages=[Message("user", "Weather?")], tools=[unit], tool_choice="required"
    )
    constraint = forced_constraint(FAMILIES[family], request)
    assert ("oneof", ["celsius", "kelvin"]) in constraint.sequences[0]
    assert "celsius" in gbnf_grammar(constraint) and "kelvin" in lark_grammar(constraint)
    pattern = _tool("get_weather", {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}})
    request.tools = [pattern]
    with pytest.raises(ItamaeError, match="pattern"):
        forced_constraint(FAMILIES[family], request)


@pytest.fixture(scope="module")
def fixture_engines(hf_checkpoint, tmp_path_factory):
    """The qwen3_moe fixture on both engines (its 4096-token context holds GLM's and
    MiniMax's long tool prompts, which the demo's 512 do not)."""
    import engine
    from converters.conversion.convert import convert

    folder = hf_checkpoint("qwen3_moe")
    gguf = tmp_path_factory.mktemp("forced") / "qwen3_moe-f32.gguf"
    convert(folder, gguf, "F32")
    torch_backend = engine.load(folder, engine="torch")
    llama_backend = engine.load(gguf, engine="llamacpp", n_ctx=2048)
    yield {"torch": torch_backend, "llamacpp": llama_backend}
    torch_backend.close()
    llama_backend.close()


def _use_template(backend, template: str) -> None:
    # A model under another family's chat template: the markup is then plain text to
    # its tokenizer, which is enough for the grammar to force the family's form.
    if hasattr(backend, "text"):
        backend.text.chat_template = template
    else:
        backend.chat_template = template


FAMILY_TEMPLATES = {
    "harmony": "openai-gpt-oss-120b.jinja",
    "deepseek": "deepseek-ai-DeepSeek-V3.1.jinja",
    "kimi": "moonshotai-Kimi-K2.jinja",
    "glm45": "GLM-4.6.jinja",
    "minimax": "MiniMax-M2.jinja",
    "deepseek_dsml": "deepseek-ai-DeepSeek-V3.2.jinja",
    "deepseek_v4_dsml": "deepseek-ai-DeepSeek-V4.jinja",
}
SMALL_TOOLS = [
    _tool("get_time", {"zone": {"type": "string", "maxLength": 6}}),
    _tool("get_weather", {"city": {"type": "string", "maxLength": 8}, "days": {"enum": [1, 2]}}),
]
for _t in SMALL_TOOLS:  # gpt-oss's template reads each tool's description
    _t["function"]["description"] = "-"


@pytest.mark.parametrize("engine_name", ["torch", "llamacpp"])
@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_a_model_makes_a_required_call_in_each_form(family, engine_name, fixture_engines):
    """End to end: a model that never saw these formats writes a valid call in each."""
    import jsonschema

    from engine.types import FinalEvent, SamplingParams
    from tests.fixtures.llamacpp_reference import llama_cpp_source

    backend = fixture_engines[engine_name]
    template = (llama_cpp_source() / "models" / "templates" / FAMILY_TEMPLATES[family]).read_text()
    _use_template(backend, template)
    request = GenerationRequest(
        messages=[Message("user", "Weather in Tokyo?")],
        sampling=SamplingParams(temperature=0, max_tokens=160),
        tools=SMALL_TOOLS,
        tool_choice="required",
    )
    final = list(backend.stream(request))[-1]
    assert isinstance(final, FinalEvent) and final.finish_reason == "stop", final
    assert len(final.tool_calls) == 1
    call = final.tool_calls[0]
    tool = {t["function"]["name"]: t for t in SMALL_TOOLS}[call.name]
    jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])
