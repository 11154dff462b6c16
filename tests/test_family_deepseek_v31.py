"""DeepSeek-V3.1's chat template (llama.cpp's copy of the published one): our renderer gives
transformers' `apply_chat_template` token ids in both thinking modes and with tools, the
request's thinking switch reaches the template through the torch engine's prompt builder
and the remote backend's request body, a three-turn chat under it equals the recomputed
conversation, `itamae inspect --json` is exact, and a tool call the template writes parses back to the same call. The same for
DeepSeek-V3.2's template (its DSML tool calls)."""

from __future__ import annotations

import json
import shutil

import pytest

import engine
from engine.chat_template import render_chat
from engine.tool_calls import format_for
from engine.tool_calls.deepseek_dsml import DeepSeekDSML
from engine.tool_calls.formats import DeepSeek
from engine.types import GenerationRequest, Message, ToolCall
from tests.fixtures.deepseek_tokenizer import (
    BOS,
    EOS,
    V31_TEMPLATE,
    V32_TEMPLATE,
    grow_vocabulary,
    write_deepseek_v31_tokenizer,
)

TEMPLATE = V31_TEMPLATE.read_text(encoding="utf-8")

CHAT = [
    {"role": "system", "content": "You are a helpful sushi chef."},
    {"role": "user", "content": "Hello! おすすめは何ですか？"},
    # a reply given in thinking mode: the template keeps only what follows </think>
    {"role": "assistant", "content": "Let me think.</think>Today the tuna is very good."},
    {"role": "user", "content": "Then tuna, please."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "fish_price",
            "description": "Today's price of a fish at the market.",
            "parameters": {
                "type": "object",
                "properties": {"fish": {"type": "string"}, "grams": {"type": "integer"}},
                "required": ["fish"],
            },
        },
    }
]
CALL_ARGS = {"fish": "マグロ", "grams": 200}
TOOL_CHAT = [
    {"role": "user", "content": "How much is 200 g of tuna?"},
    {
        "role": "assistant",
        "content": "Checking the market.",
        "tool_calls": [
            {"type": "function", "function": {"name": "fish_price", "arguments": CALL_ARGS}},
            {"type": "function", "function": {"name": "fish_price", "arguments": {"fish": "鯛"}}},
        ],
    },
    {"role": "tool", "content": '{"yen": 1800}'},
    {"role": "tool", "content": '{"yen": 900}'},
    {"role": "assistant", "content": "200 g of tuna is 1800 yen."},
    {"role": "user", "content": "And sea bream?"},
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp("deepseek_v31_tokenizer")
    write_deepseek_v31_tokenizer(dest)
    return dest


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _hf_ids(tok, messages, template=TEMPLATE, **kw) -> list[int]:
    out = tok.apply_chat_template(
        messages, chat_template=template, tokenize=True, add_generation_prompt=True, **kw
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _our_ids(tok, messages, template=TEMPLATE, **kw) -> list[int]:
    text = render_chat(template, messages, bos_token=BOS, eos_token=EOS, **kw)
    return tok.encode(text, add_special_tokens=False)


OPTIONS = [
    {},
    {"thinking": False},
    {"thinking": True},
    {"enable_thinking": True},
    {"enable_thinking": False},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: str(o) or "default")
@pytest.mark.parametrize("messages", [CHAT, TOOL_CHAT], ids=["chat", "tools"])
def test_renders_like_transformers(hf_tokenizer, messages, options):
    kw = dict(options, tools=TOOLS) if messages is TOOL_CHAT else options
    expected = _hf_ids(hf_tokenizer, messages, **kw)
    assert _our_ids(hf_tokenizer, messages, **kw) == expected
    opening = hf_tokenizer.decode(expected[-2:])
    thinking = options.get("thinking", options.get("enable_thinking", False))
    assert opening == ("<｜Assistant｜><think>" if thinking else "<think></think>")


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: str(o) or "default")
@pytest.mark.parametrize("messages", [CHAT, TOOL_CHAT], ids=["chat", "tools"])
def test_v32_template_renders_like_transformers(hf_tokenizer, messages, options):
    # DeepSeek-V3.2's template: the same tokens, tools described in the system prompt
    template = V32_TEMPLATE.read_text(encoding="utf-8")
    kw = dict(options, tools=TOOLS) if messages is TOOL_CHAT else options
    expected = _hf_ids(hf_tokenizer, messages, template, **kw)
    assert _our_ids(hf_tokenizer, messages, template, **kw) == expected
    if messages is TOOL_CHAT:
        assert "fish_price" in hf_tokenizer.decode(expected)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("arguments", [CALL_ARGS, '{"fish": "マグロ", "grams": 200}'])
def test_rendered_tool_call_parses_back(arguments):
    # arguments as a mapping (transformers) or as OpenAI's JSON text: both come back the same
    call = {"type": "function", "function": {"name": "fish_price", "arguments": arguments}}
    second = {"type": "function", "function": {"name": "fish_price", "arguments": {"fish": "鯛"}}}
    history = [
        TOOL_CHAT[0],
        {"role": "assistant", "content": "Checking the market.", "tool_calls": [call, second]},
    ]
    text = render_chat(TEMPLATE, history, add_generation_prompt=False, bos_token=BOS)
    reply = text.split("<｜Assistant｜><think></think>", 1)[1]  # what the model wrote
    fmt, native = format_for(TEMPLATE)  # the tools module's parser for this template
    assert isinstance(fmt, DeepSeek) and native
    assert fmt.parse(reply, TOOLS) == (
        "Checking the market.",
        [ToolCall("fish_price", _json(CALL_ARGS)), ToolCall("fish_price", _json({"fish": "鯛"}))],
    )


def test_v32_rendered_tool_calls_parse_back():
    # V3.2 writes calls in DSML: strings as text, other values as JSON
    args = {"fish": "マグロ", "grams": 200, "cuts": ["sashimi", "nigiri"], "fresh": True}
    calls = [
        {"type": "function", "function": {"name": "fish_price", "arguments": args}},
        {"type": "function", "function": {"name": "fish_price", "arguments": {"fish": "鯛"}}},
    ]
    history = [
        TOOL_CHAT[0],
        {"role": "assistant", "content": "Checking the market.", "tool_calls": calls},
    ]
    template = V32_TEMPLATE.read_text(encoding="utf-8")
    text = render_chat(template, history, add_generation_prompt=False, bos_token=BOS)
    reply = text.split("<｜Assistant｜></think>", 1)[1]  # what the model wrote
    fmt = DeepSeekDSML()
    assert fmt.detect(template) and not fmt.detect(TEMPLATE)
    assert fmt.parse(reply, TOOLS) == (
        "Checking the market.",
        [ToolCall("fish_price", _json(args)), ToolCall("fish_price", _json({"fish": "鯛"}))],
    )
    assert fmt.parse("Today the tuna.", TOOLS) == ("Today the tuna.", [])


@pytest.fixture(scope="module")
def v31_folder(hf_checkpoint, tokenizer_dir, tmp_path_factory):
    """The DeepSeek-V3 fixture (V3.1 has V3's weights layout) with V3.1's tokenizer and
    template."""
    folder = tmp_path_factory.mktemp("v31") / "deepseek_v31"
    shutil.copytree(hf_checkpoint("deepseek_v3"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    grow_vocabulary(folder, 1 + max(t["id"] for t in tokenizer["added_tokens"]))
    return folder


@pytest.mark.parametrize("thinking", [None, True, False])
def test_request_thinking_switch_reaches_the_template(v31_folder, hf_tokenizer, thinking):
    backend = engine.load(v31_folder, engine="torch")
    try:
        req = GenerationRequest(messages=[Message(**m) for m in CHAT], enable_thinking=thinking)
        got = backend.generator.prompt_ids(req)
    finally:
        backend.close()
    kw = {} if thinking is None else {"enable_thinking": thinking}
    assert got == _hf_ids(hf_tokenizer, CHAT, **kw)


def test_three_turn_chat_under_v31s_template_equals_the_recomputed_conversation(v31_folder):
    # each turn resumes from the cached latent of the last one (V3.1's template rewrites
    # no earlier turn), and gives the logits of a fresh run of the whole conversation
    from tests.chat_turns import assert_turns_reuse_exactly

    backend = engine.load(v31_folder, engine="torch", dtype="float32")
    try:
        assert_turns_reuse_exactly(backend)
    finally:
        backend.close()


def test_inspect_json_is_exact(v31_folder, capsys):
    # V3.1 as published: V3's layout (FP8 aside), an MTP layer, DeepSeek's tokenizer
    from safetensors import safe_open

    from app.cli import main
    from tests.fixtures.reference import reference_model

    state = reference_model(v31_folder).state_dict()  # transformers skips the MTP layer too
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    config = json.loads((v31_folder / "config.json").read_text())
    mtp = f"model.layers.{config['num_hidden_layers']}."
    with safe_open(v31_folder / "model.safetensors", "pt") as f:
        n_tensors = sum(not k.startswith(mtp) for k in f.keys())
    assert main(["inspect", str(v31_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {
        "path": str(v31_folder),
        "format": "hf",
        "arch": "deepseek_v3",
        "name": "itamae-tiny-deepseek_v3",
        "total_params": total,
        "active_params": total - routed + routed * 4 // 16,
        "n_layers": 3,
        "n_experts": 16,
        "experts_per_token": 4,
        "n_shared_experts": 1,
        "n_moe_layers": 2,
        "n_linear_attention_layers": 0,
        "context_length": config["max_position_embeddings"],
        "vocab_size": config["vocab_size"],
        "dtypes": {"F32": n_tensors},
        "quant": "f32",
        "bits_per_weight": dict.fromkeys(
            ("experts", "shared", "attention", "embeddings", "other"), 32.0
        ),
        "size_bytes": (v31_folder / "model.safetensors").stat().st_size,
        "license": "apache-2.0",
        "files": ["model.safetensors"],
        "extra": {},
        "is_moe": True,
    }


def test_remote_backend_sends_the_switch_as_llama_servers_template_kwargs():
    # llama.cpp's tools/server/README.md: `chat_template_kwargs`, e.g. {"enable_thinking": false}
    from engine.remote.backend import RemoteBackend

    remote = RemoteBackend("http://127.0.0.1:9")
    try:
        on = GenerationRequest(messages=[Message("user", "Hi")], enable_thinking=False)
        assert remote._body(on, chat=True)["chat_template_kwargs"] == {"enable_thinking": False}
        off = GenerationRequest(messages=[Message("user", "Hi")])
        assert "chat_template_kwargs" not in remote._body(off, chat=True)
    finally:
        remote.close()
