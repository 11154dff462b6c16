"""The bundled demo model (assets/demo): a trained bilingual MoE that answers its corpus.

Checks that it is what the model card says (a small top-2 Qwen3-MoE with 8 experts that fits
the repository), that greedy replies to prompts from its training dialogs contain the words
the corpus answers with, in English and in Japanese, that transformers (the reference for the
HF checkpoint), llama.cpp (the reference for the GGUF) and Itamae's engines all give the same
greedy reply, and that expert routing is not uniform and depends on the language.

The expected words are taken from the chatterbot-corpus replies to the same prompts (see
assets/demo/hf/README.md); a reply passes if it contains any of them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"
HF_DIR = DEMO / "hf"
MAX_NEW_TOKENS = 48

# (prompt from the training dialogs, words the corpus replies with)
ENGLISH = [
    ("Hello", ["Hi", "Hello", "Greetings"]),
    ("How are you doing?", ["Good", "good", "well", "Fine"]),
    ("What is AI?", ["Intelligence", "science"]),
    ("What language are you written in?", ["Python"]),
    ("Where are you", ["Internet"]),
    ("Who is your father", ["human"]),
    ("What is your favorite number", ["42"]),
]
JAPANESE = [
    ("こんにちは", ["こんにちは", "挨拶"]),
    ("お元気ですか？", ["良い", "元気", "ありがとう", "うまく"]),
    ("AIとは何ですか？", ["人工知能", "科学"]),
    ("あなたはどの言語を書いていますか？", ["Python"]),
    ("どこにいますか", ["インターネット"]),
    ("あなたの父は誰ですか", ["人間"]),
    ("あなたの好きな番号は何ですか", ["42"]),
]
PROMPTS = ENGLISH + JAPANESE
IDS = [p for p, _ in PROMPTS]


def demo_gguf() -> Path:
    # The file `--model demo --engine llamacpp` loads (engine/loader.py).
    ggufs = sorted(DEMO.glob("*.gguf"))
    assert ggufs, "assets/demo has no GGUF: convert assets/demo/hf with Itamae's converter"
    return ggufs[0]


@pytest.fixture(scope="module")
def hf():
    """(tokenizer, model) from transformers, computing in float32 like the engines on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(HF_DIR)
    model = AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=torch.float32).eval()
    return tokenizer, model


def chat_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False).input_ids


def hf_greedy(model, prompt_ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False
        )
    reply = out[0, len(prompt_ids) :].tolist()
    eos = model.config.eos_token_id
    return reply[: reply.index(eos)] if eos in reply else reply


@pytest.fixture(scope="module")
def hf_replies(hf) -> dict[str, tuple[list[int], str]]:
    tokenizer, model = hf
    replies = {}
    for prompt, _ in PROMPTS:
        ids = hf_greedy(model, chat_ids(tokenizer, prompt))
        replies[prompt] = (ids, tokenizer.decode(ids, skip_special_tokens=True))
    return replies


# ---------------------------------------------------------------- what the files are


def test_checkpoint_is_a_small_top2_moe_with_a_chat_template():
    from safetensors import safe_open

    config = json.loads((HF_DIR / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe"
    assert config["num_experts"] >= 8 and config["num_experts_per_tok"] == 2
    assert config["norm_topk_prob"] is True
    # Every weight row is a whole number of 256-wide blocks, so llama.cpp's K-quants apply as
    # they do to real models instead of falling back to other types (issue #9).
    rows = {
        "hidden": config["hidden_size"],
        "attention": config["num_attention_heads"] * config["head_dim"],
        "expert FFN": config["moe_intermediate_size"],
    }
    assert all(n % 256 == 0 for n in rows.values()), rows
    with safe_open(HF_DIR / "model.safetensors", "pt") as f:
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert 2_000_000 <= n_params <= 8_000_000, n_params
    assert dtypes == {"BF16"}
    tokenizer_config = json.loads((HF_DIR / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    generation = json.loads((HF_DIR / "generation_config.json").read_text())
    assert config["eos_token_id"] in generation["eos_token_id"]
    card = (HF_DIR / "README.md").read_text(encoding="utf-8")
    assert "license:" in card and "chatterbot-corpus" in card and "BSD-3-Clause" in card


def test_assets_fit_in_20_mb():
    total = sum(p.stat().st_size for p in (REPO / "assets").rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, f"assets/ holds {total / 2**20:.1f} MiB"


def test_gguf_describes_the_same_model():
    from gguf import GGUFReader

    reader = GGUFReader(demo_gguf())

    def field(key):
        return reader.fields[key].contents()

    config = json.loads((HF_DIR / "config.json").read_text())
    assert field("general.architecture") == "qwen3moe"
    assert field("qwen3moe.expert_count") == config["num_experts"]
    assert field("qwen3moe.expert_used_count") == config["num_experts_per_tok"]
    assert field("tokenizer.ggml.pre") == "qwen2"
    template = json.loads((HF_DIR / "tokenizer_config.json").read_text())["chat_template"]
    assert field("tokenizer.chat_template") == template


# ---------------------------------------------------------------- it answers its corpus


@pytest.mark.parametrize(("prompt", "words"), PROMPTS, ids=IDS)
def test_greedy_reply_contains_corpus_words(hf_replies, prompt, words):
    _, text = hf_replies[prompt]
    assert any(w in text for w in words), f"{prompt!r} -> {text!r}; expected one of {words}"


def test_llamacpp_gives_transformers_greedy_reply_from_the_gguf(hf, hf_replies):
    """llama.cpp, reading the GGUF Itamae wrote, replies token for token as transformers."""
    import numpy as np
    from llama_cpp import Llama

    tokenizer, model = hf
    llm = Llama(model_path=str(demo_gguf()), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    eos = model.config.eos_token_id
    for prompt, _ in PROMPTS:
        prompt_ids = chat_ids(tokenizer, prompt)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt_ids
        llm.reset()
        llm.eval(prompt_ids)
        reply: list[int] = []
        while len(reply) < MAX_NEW_TOKENS:
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token == eos:
                break
            reply.append(token)
            llm.eval([token])
        assert reply == hf_replies[prompt][0], (
            f"{prompt!r}: llama.cpp {llm.detokenize(reply).decode(errors='replace')!r} "
            f"vs transformers {hf_replies[prompt][1]!r}"
        )
    llm.close()


def engine_reply(backend, prompt: str) -> tuple[str, list[int], object]:
    from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent

    request = GenerationRequest(
        messages=[Message("user", prompt)],
        sampling=SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS),
    )
    pieces, final = [], None
    for event in backend.stream(request):
        if isinstance(event, TokenEvent):
            pieces.append(event.text)
        elif isinstance(event, FinalEvent):
            final = event
    assert final is not None and final.finish_reason == "stop", final
    return "".join(pieces), final.token_ids, final.stats


def load_engine(name: str):
    if importlib.util.find_spec(f"engine.{name}.backend") is None:
        pytest.skip(f"engine.{name}.backend is not in this tree yet")
    import engine

    return engine.load("demo", engine=name)


@pytest.mark.parametrize("engine_name", ["torch", "llamacpp"])
def test_engine_gives_the_reference_greedy_reply(engine_name, hf_replies):
    """`--model demo` on each engine: the same greedy reply as transformers, word for word."""
    backend = load_engine(engine_name)
    try:
        for prompt, words in PROMPTS:
            text, token_ids, _ = engine_reply(backend, prompt)
            ref_ids, ref_text = hf_replies[prompt]
            assert text == ref_text, f"{engine_name} {prompt!r}: {text!r} vs {ref_text!r}"
            assert token_ids == ref_ids
            assert any(w in text for w in words)
    finally:
        backend.close()


# ---------------------------------------------------------------- routing depends on language


def expert_usage(model, sequences: list[list[int]]) -> torch.Tensor:
    """[layer, expert] share of top-k selections over all tokens of `sequences`."""
    config = model.config
    counts = torch.zeros(config.num_hidden_layers, config.num_experts)
    with torch.no_grad():
        for ids in sequences:
            out = model(torch.tensor([ids]), output_router_logits=True)
            for layer, logits in enumerate(out.router_logits):
                chosen = logits.topk(config.num_experts_per_tok, dim=-1).indices.flatten()
                counts[layer] += torch.bincount(chosen, minlength=config.num_experts)
    return counts / counts.sum(dim=1, keepdim=True)


# The first layer routes mostly on the token embedding and the load-balancing loss keeps it
# near uniform; the layers after it are where experts specialise (assets/demo/hf/README.md
# gives the per-layer figures over the whole corpus).
SPECIALISED_LAYERS = slice(1, None)


def assert_language_dependent(english: torch.Tensor, japanese: torch.Tensor) -> None:
    """Per layer [layer, expert] shares: each language leans on a few experts, not the same."""
    n_experts = english.shape[1]
    for usage in (english, japanese):
        # Uniform routing would give every expert 1/E; here some expert gets at least 2/E.
        busiest = usage[SPECIALISED_LAYERS].max(dim=1).values
        assert (busiest >= 2 / n_experts).all(), usage
    # Total variation distance between the languages' usage: 0 = same experts, 1 = disjoint.
    distance = 0.5 * (english - japanese).abs().sum(dim=1)
    assert (distance[SPECIALISED_LAYERS] > 0.2).all(), distance


def test_expert_usage_is_not_uniform_and_differs_by_language(hf, hf_replies):
    tokenizer, model = hf

    def sequences(prompts):
        return [chat_ids(tokenizer, p) + hf_replies[p][0] for p, _ in prompts]

    assert_language_dependent(
        expert_usage(model, sequences(ENGLISH)), expert_usage(model, sequences(JAPANESE))
    )


def test_torch_engine_reports_language_dependent_expert_usage():
    backend = load_engine("torch")
    try:
        usage = {}
        for language, prompts in (("en", ENGLISH), ("ja", JAPANESE)):
            total = None
            for prompt, _ in prompts:
                _, _, stats = engine_reply(backend, prompt)
                counts = torch.tensor(stats.expert_counts, dtype=torch.float64)
                total = counts if total is None else total + counts
            usage[language] = total / total.sum(dim=1, keepdim=True)
    finally:
        backend.close()
    config = json.loads((HF_DIR / "config.json").read_text())
    assert usage["en"].shape == (config["num_hidden_layers"], config["num_experts"])
    assert_language_dependent(usage["en"], usage["ja"])


# ---------------------------------------------------------------- reproducible


def test_training_script_rebuilds_the_shipped_tokenizer():
    """train.py's first half (corpus -> tokenizer) reproduces tokenizer.json byte for byte."""
    pytest.importorskip("chatterbot_corpus", reason="the training corpus package is not installed")
    spec = importlib.util.spec_from_file_location("demo_train", DEMO / "train.py")
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train  # dataclasses look their module up there
    spec.loader.exec_module(train)
    dialogs = train.load_dialogs()
    tokenizer = train.train_tokenizer(train.dialog_texts(dialogs), train.TrainSettings().vocab_size)
    shipped = json.loads((HF_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert json.loads(tokenizer.to_str()) == shipped
