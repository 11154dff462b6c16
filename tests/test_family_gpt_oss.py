"""gpt-oss end to end on a tiny checkpoint laid out as OpenAI publishes it (MXFP4 experts).

References: llama.cpp's own converter (every tensor of Itamae's GGUF byte-identical to the
file it writes, MXFP4 experts included), transformers fp32 with its own MXFP4 dequantization
(the torch engine's logits and routing; llama.cpp's logits of Itamae's F32 file), and the
published checkpoint's blocks (the GGUF's MXFP4 codes and scales are the source's, moved).

One documented difference: llama.cpp always rounds YaRN's correction range to whole dims
(ggml.c `ggml_rope_yarn_corr_dims`, floor/ceil), while gpt-oss publishes `truncate: false`
(transformers keeps it fractional). No GGUF key or context parameter changes that, so
llama.cpp's logits are compared with transformers on the same checkpoint with
`truncate: true`, the rope llama.cpp computes (with `truncate: false` they differ by about
0.16 relative on this fixture; llama.cpp's own converter's file differs the same way).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from gguf import GGUFReader

import engine
from app.cli import main
from converters.conversion.convert import convert
from converters.facts.inspection import inspect
from engine.types import GenerationRequest, SamplingParams
from tests.convert_helpers import llama_cpp_logits, relative_error, transformers_logits
from tests.fixtures.llamacpp_reference import reference_pair
from tests.fixtures.reference import reference_model, reference_tokenizer
from tests.test_inspect import transformers_counts
from tests.test_torch_parity import (
    DECODE,
    PREFILL,
    TOL,
    RouterCounts,
    load_model,
    prompt_ids,
    rel_err,
    run_ours,
    run_reference,
)

llama_cpp = pytest.importorskip("llama_cpp")

ARCH = "gpt_oss"
PROMPT = [0] + list(range(40, 71))  # <|startoftext|> then 31 ordinary tokens


@pytest.fixture(scope="module")
def folder(hf_checkpoint):
    return hf_checkpoint(ARCH)


@pytest.fixture(scope="module")
def gguf_of(folder, tmp_path_factory):
    made, root = {}, tmp_path_factory.mktemp("gpt_oss")

    def make(recipe: str):
        if recipe not in made:
            made[recipe] = root / f"{recipe}.gguf"
            convert(folder, made[recipe], recipe)
        return made[recipe]

    return make


def tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(path).tensors}


@pytest.mark.slow  # llama.cpp's converter takes ~30 s the first time (then cached)
def test_every_tensor_equals_llama_cpps_own_conversion(folder, tmp_path):
    checkpoint, theirs = reference_pair(folder, "bf16")
    ours = tmp_path / "itamae.gguf"
    convert(checkpoint, ours, "BF16")
    got, want = tensors(ours), tensors(theirs)
    assert set(got) == set(want)
    for name, t in got.items():
        assert list(t.shape) == list(want[name].shape), name
        assert t.tensor_type == want[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name
    assert {t.tensor_type.name for n, t in got.items() if "_exps.weight" in n} == {"MXFP4"}
    ours_fields, their_fields = GGUFReader(ours).fields, GGUFReader(theirs).fields
    arch_keys = {k for k in their_fields if k.startswith("gpt-oss.")}
    # Itamae writes the vocabulary size as well (llama.cpp reads it, its converter omits it)
    assert {k for k in ours_fields if k.startswith("gpt-oss.")} == arch_keys | {
        "gpt-oss.vocab_size"
    }
    for key in arch_keys | {"tokenizer.ggml.pre", "tokenizer.ggml.tokens"}:
        assert ours_fields[key].contents() == their_fields[key].contents(), key


def test_expert_blocks_are_the_published_mxfp4_bits(folder, gguf_of):
    """Each expert's codes and E8M0 scales in the GGUF are the checkpoint's own: gate the
    even rows and up the odd rows of gate_up_proj, ggml's nibble order undone."""
    from safetensors import safe_open

    got = tensors(gguf_of("Q8_0"))
    with safe_open(folder / "model.safetensors", "pt") as f:
        for bid in range(3):
            p = f"model.layers.{bid}.mlp.experts"
            gate_up = (
                f.get_tensor(f"{p}.gate_up_proj_blocks"),
                f.get_tensor(f"{p}.gate_up_proj_scales"),
            )
            down = (f.get_tensor(f"{p}.down_proj_blocks"), f.get_tensor(f"{p}.down_proj_scales"))
            for name, (blocks, scales) in {
                "gate": (gate_up[0][:, 0::2], gate_up[1][:, 0::2]),
                "up": (gate_up[0][:, 1::2], gate_up[1][:, 1::2]),
                "down": down,
            }.items():
                t = got[f"blk.{bid}.ffn_{name}_exps.weight"]
                assert t.tensor_type.name == "MXFP4"
                data = torch.from_numpy(np.asarray(t.data).copy()).view(*scales.shape, 17)
                assert torch.equal(data[..., 0], scales)  # the scale bytes, unchanged
                qs = data[..., 1:]  # ggml: value j low nibble, value j + 16 high nibble
                codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
                published = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2)
                assert torch.equal(codes, published)


def test_f32_gguf_matches_transformers_in_llama_cpp(folder, gguf_of, tmp_path):
    """The F32 recipe dequantizes the experts (exactly); llama.cpp with an F32 KV cache then
    computes transformers' logits within 1e-4 and the same greedy tokens."""
    as_llama_cpp_ropes = tmp_path / "truncated-yarn"
    shutil.copytree(folder, as_llama_cpp_ropes)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"]["truncate"] = True  # see the module docstring
    (as_llama_cpp_ropes / "config.json").write_text(json.dumps(config))
    got = llama_cpp_logits(gguf_of("F32"), PROMPT)
    want = transformers_logits(as_llama_cpp_ropes, PROMPT)
    assert relative_error(got, want) <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


def test_llama_cpp_differs_from_the_published_untruncated_yarn(folder, gguf_of, tmp_path):
    """The honest comparison, on the config as published (`truncate: false`): llama.cpp's
    logits of the same F32 file differ from transformers' by the YaRN rounding alone
    (measured 0.16 relative, top-1 still agreeing on most positions); the same file matches
    transformers within 1e-4 once the config truncates as llama.cpp does (test above). The
    limitation is llama.cpp's: `ggml_rope_yarn_corr_dims` always floors/ceils, and neither
    a GGUF key nor a context parameter reaches it. The torch engine follows the published
    config exactly (test_torch_engine_matches_transformers fails if it truncates)."""
    assert json.loads((folder / "config.json").read_text())["rope_scaling"]["truncate"] is False
    got = llama_cpp_logits(gguf_of("F32"), PROMPT)
    published = relative_error(got, transformers_logits(folder, PROMPT))
    print(f"llama.cpp vs transformers, truncate: false: {published:.3f} relative")
    assert 1e-2 < published < 0.5  # far above the 1e-4 of the truncated comparison
    assert (got.argmax(1) == transformers_logits(folder, PROMPT).argmax(1)).mean() > 0.5


@pytest.mark.parametrize("recipe", ["Q8_0", "Q4_K_M", "moe-q4"])
def test_quantized_recipes_keep_mxfp4_experts_and_run(folder, gguf_of, recipe):
    """llama.cpp's quantizer copies the MXFP4 experts (it refuses to requantize them); the
    file loads and its expert bytes are those of the direct conversion."""
    got, direct = tensors(gguf_of(recipe)), tensors(gguf_of("Q8_0"))
    experts = [n for n in got if "_exps.weight" in n]
    assert len(experts) == 9
    for name in experts:
        assert got[name].tensor_type.name == "MXFP4"
        assert np.array_equal(np.asarray(got[name].data), np.asarray(direct[name].data))
    logits = llama_cpp_logits(gguf_of(recipe), PROMPT)
    assert np.isfinite(logits).all()


def test_torch_engine_matches_transformers(folder):
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    model = load_model(folder)
    counter = RouterCounts(ref, model.args.n_experts)
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == counter.counts.tolist()
    assert int(model.usage.counts.sum()) == (PREFILL + DECODE) * 4 * 3
    # the window is exercised: 48 positions against a 16-token sliding window
    assert model.layers[0].attn.sliding_window == 16 and model.layers[1].attn.sliding_window is None


def test_torch_engine_greedy_generation_identical(folder):
    ref, tok = reference_model(folder), reference_tokenizer(folder)
    prompt = "板前は寿司を握る。 The chef"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = ref.generate(ids, do_sample=False, max_new_tokens=16)[0, ids.shape[1] :].tolist()
    # float32 like the reference (auto would pick the published bf16)
    backend = engine.load(folder, engine="torch", dtype="float32")
    if expected and expected[-1] in backend.generator.text.eos_ids:
        expected = expected[:-1]  # transformers returns the EOS it stopped at
    request = GenerationRequest(
        prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=16)
    )
    final = list(backend.stream(request))[-1]
    assert final.prompt_token_ids == ids[0].tolist()
    assert final.token_ids == expected


def test_torch_format_bf16_keeps_the_model_exact(folder, tmp_path):
    """--format torch dequantizes the MXFP4 experts (bf16 holds them exactly) and keeps the
    expert biases and the router in float: the same logits as transformers."""
    dest = tmp_path / "torch-bf16"
    convert(folder, dest, "bf16", fmt="torch")
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    ref_prefill, ref_steps, fed = run_reference(ref, ids, steps=4)
    prefill, steps = run_ours(load_model(dest), ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for ours, theirs in zip(steps, ref_steps, strict=True):
        assert rel_err(ours, theirs) < TOL


def test_inspect_counts_mxfp4_as_published(folder, gguf_of, capsys):
    total, routed = transformers_counts(folder)
    info = inspect(folder)
    assert (info.arch, info.n_experts, info.experts_per_token) == (ARCH, 8, 4)
    assert (info.n_shared_experts, info.n_moe_layers, info.n_layers) == (0, 3, 3)
    assert info.total_params == total  # two 4-bit values a byte; scales are not parameters
    assert info.active_params == total - routed + round(routed * 4 / 8)
    assert info.quant == "mxfp4" and info.dtypes == {"BF16": 48, "MXFP4": 6}
    assert 4.25 < info.bits_per_weight["experts"] < 4.35  # 4 bits + one byte per 32 + biases
    assert main(["inspect", str(gguf_of("Q8_0")), "--json"]) == 0
    gguf = json.loads(capsys.readouterr().out)
    assert gguf["arch"] == ARCH
    assert (gguf["total_params"], gguf["active_params"]) == (total, info.active_params)
    assert (gguf["n_experts"], gguf["experts_per_token"], gguf["n_moe_layers"]) == (8, 4, 3)


HARMONY_CHATS = [
    ([{"role": "user", "content": "寿司を一つ。"}], {}),
    (
        [
            {"role": "system", "content": "You are the chef's assistant."},
            {"role": "user", "content": "What is fresh today?"},
            {
                "role": "assistant",
                "thinking": "PRIVATE-ANALYSIS the tuna came this morning",
                "content": "The tuna. 今日はマグロです。",
            },
            {"role": "user", "content": "Then tuna, please."},
        ],
        {"reasoning_effort": "high"},
    ),
    (
        [
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": "Salmon or tuna?"},
        ],
        {"reasoning_effort": "low"},
    ),
]


@pytest.mark.parametrize(("messages", "options"), HARMONY_CHATS)
def test_harmony_template_renders_as_transformers(folder, messages, options):
    """OpenAI's own template (system/developer messages, reasoning_effort, an earlier turn's
    analysis) through Itamae's sandbox gives transformers' token ids; the earlier turn's
    analysis is not fed back, as the template says."""
    from engine.chat_template import render_chat

    tok = reference_tokenizer(folder)
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **options)
    template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    got = render_chat(template, messages, add_generation_prompt=True, **options)
    assert (
        tok(got, add_special_tokens=False).input_ids
        == tok(want, add_special_tokens=False).input_ids
    )
    assert got == want
    assert "PRIVATE-ANALYSIS" not in got
    assert got.endswith("<|start|>assistant")
    assert f"Reasoning: {options.get('reasoning_effort', 'medium')}" in got


def test_engines_keep_harmonys_channel_tokens_in_the_reply(folder, gguf_of, hf_checkpoint):
    """Harmony's reply structure survives detokenization in both engines (it says which
    part is reasoning); other families' special tokens are still dropped."""
    from engine.torch.text import ModelText

    tok = reference_tokenizer(folder)
    reply = (
        "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>final<|message|>Hi"
    )
    ids = tok(reply, add_special_tokens=False).input_ids
    assert ModelText(folder, json.loads((folder / "config.json").read_text())).decode(ids) == reply
    qwen = hf_checkpoint("qwen3_moe")
    im_end = reference_tokenizer(qwen).convert_tokens_to_ids("<|im_end|>")
    assert ModelText(qwen, json.loads((qwen / "config.json").read_text())).decode([im_end]) == ""
    backend = engine.load(gguf_of("Q8_0"), engine="llamacpp")
    try:
        assert backend.keep_special
        pieces = b"".join(backend.native.piece(t, backend.keep_special) for t in ids)
        assert pieces.decode() == reply
    finally:
        backend.close()
