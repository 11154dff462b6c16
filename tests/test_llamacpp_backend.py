"""The llama.cpp backend on GGUF files converted from the fixtures, checked against
references nobody here wrote: llama-cpp-python's own `Llama` for the tokens greedy decoding
gives, transformers' `apply_chat_template` for the prompt, llama.cpp's own log for the KV
cache size and for which tensors the expert override placed.
"""

from __future__ import annotations

import json
import threading

import pytest

from converters.core.errors import BadModelFile, UnsupportedArchitecture
from engine.chat_template import render_chat
from engine.llamacpp.backend import LlamaCppBackend, load
from engine.llamacpp.native import DecodeAborted
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent
from tests.convert_helpers import yarn_betas

llama_cpp = pytest.importorskip("llama_cpp")
convert_module = pytest.importorskip("converters.conversion.convert")

ARCHS = (
    "qwen3_moe",
    "qwen2_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "mixtral",
    "llama",
    "glm4_moe",
    "minimax_m2",
    "kimi_k2",
    "glm4_moe_lite",
    "deepseek_v32",
)
CHAT = [Message("system", "You are terse."), Message("user", "Hello! こんにちは、元気ですか?")]


@pytest.fixture(scope="module")
def gguf_file(hf_checkpoint, tmp_path_factory):
    """gguf_file(arch) -> an F32 GGUF converted from that fixture by Itamae's converter."""
    folder = tmp_path_factory.mktemp("gguf")
    made = {}

    def make(arch: str):
        if arch not in made:
            dest = folder / f"{arch}-f32.gguf"
            convert_module.convert(hf_checkpoint(arch), dest, "F32")
            made[arch] = dest
        return made[arch]

    return make


@pytest.fixture(scope="module")
def backend_for(gguf_file):
    opened: dict[str, LlamaCppBackend] = {}

    def open_backend(arch: str) -> LlamaCppBackend:
        if arch not in opened:
            opened[arch] = load(gguf_file(arch), n_ctx=512, threads=2)
        return opened[arch]

    yield open_backend
    for backend in opened.values():
        backend.close()


def greedy(max_tokens=12, **extra) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **extra)


def run(backend, req, cancel=None):
    events = list(backend.stream(req, cancel))
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    assert isinstance(events[-1], FinalEvent)
    return events[:-1], events[-1]


def reference_greedy(path, prompt_tokens, n):
    """What llama-cpp-python's high-level Llama generates greedily from the same tokens
    (given the file's YaRN betas, which llama.cpp's deepseek2 loader does not read)."""
    llm = llama_cpp.Llama(
        str(path), n_ctx=512, n_threads=2, flash_attn=True, verbose=False, **yarn_betas(path)
    )
    try:
        out = []
        for token in llm.generate(prompt_tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) == n:
                break
            out.append(token)
        return out
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_chat_stream_matches_llama_cpp_python(arch, backend_for, gguf_file):
    backend = backend_for(arch)
    tokens, final = run(backend, GenerationRequest(messages=CHAT, sampling=greedy()))
    assert final.finish_reason in ("length", "stop") and final.error is None
    assert final.token_ids == [e.token_id for e in tokens if e.token_id is not None]
    assert final.token_ids == reference_greedy(gguf_file(arch), final.prompt_token_ids, 12)
    stats = final.stats
    assert stats.prompt_tokens == len(final.prompt_token_ids)
    assert stats.completion_tokens == len(final.token_ids)
    assert stats.ttft_s > 0 and stats.prefill_tps > 0
    if len(final.token_ids) > 2:
        assert stats.decode_tps > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_is_what_transformers_builds(arch, backend_for, hf_checkpoint):
    from tests.fixtures.reference import reference_tokenizer

    backend, folder = backend_for(arch), hf_checkpoint(arch)
    hf = reference_tokenizer(folder)
    messages = [{"role": m.role, "content": m.content} for m in CHAT]
    template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    template = template or hf.chat_template
    # the text: the GGUF's template and special tokens render what the HF folder renders
    text = render_chat(template, messages, bos_token=hf.bos_token, eos_token=hf.eos_token)
    assert backend.render(CHAT) == text
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the tokens: as apply_chat_template(tokenize=True) gives them
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert backend.prompt_tokens(GenerationRequest(messages=CHAT)) == list(ids)
    # a raw prompt is tokenized as tokenizer(text) does, BOS included when the model adds it
    raw = "The sushi chef 板前 slices fish."
    assert backend.tokenize(raw) == hf(raw)["input_ids"]


@pytest.mark.parametrize("arch", ARCHS)
def test_planned_kv_cache_is_what_llama_cpp_allocates(arch, backend_for):
    backend = backend_for(arch)
    # one line per cache llama.cpp allocates (V3.2: MLA's latent, then the indexer's keys)
    lines = [x for x in backend.native.load_log if "llama_kv_cache: size =" in x]
    mib = sum(float(line.split("size =")[1].split("MiB")[0]) for line in lines)
    assert backend.plan.kv_bytes / 2**20 == pytest.approx(mib, abs=0.006)
    assert backend.plan.layout.mla == arch.startswith(
        ("deepseek", "kimi", "glm4_moe_lite")
    )  # MLA families
    # the compute buffer as llama.cpp's scheduler reserved it (tests/test_memory_plan_llamacpp.py)
    compute = [x for x in backend.native.load_log if "compute buffer size =" in x]
    reserved = sum(float(x.split("size =")[1].split("MiB")[0]) for x in compute)
    assert compute and backend.plan.compute_bytes / 2**20 == pytest.approx(reserved, rel=0.1)


def test_torch_engine_builds_the_same_prompt(hf_checkpoint, backend_for):
    torch_backend = pytest.importorskip("engine.torch.backend")
    other = torch_backend.load(hf_checkpoint("qwen3_moe"))
    try:
        req = GenerationRequest(messages=CHAT, sampling=greedy(max_tokens=1))
        theirs = list(other.stream(req))[-1]
        ours = list(backend_for("qwen3_moe").stream(req))[-1]
        assert theirs.prompt_token_ids == ours.prompt_token_ids
    finally:
        other.close()


def test_cancel_stops_within_one_token(backend_for):
    backend = backend_for("qwen3_moe")
    cancel = threading.Event()
    seen = []
    for event in backend.stream(GenerationRequest(messages=CHAT, sampling=greedy(50)), cancel):
        seen.append(event)
        if isinstance(event, TokenEvent) and len(seen) == 3:
            cancel.set()
    final = seen[-1]
    assert final.finish_reason == "cancelled"
    assert len(seen) == 4 and final.stats.completion_tokens == 3


def test_cancel_before_start_and_during_prefill(backend_for):
    backend = backend_for("qwen3_moe")
    cancel = threading.Event()
    cancel.set()
    tokens, final = run(backend, GenerationRequest(prompt="Hello there", sampling=greedy()), cancel)
    assert final.finish_reason == "cancelled" and tokens == []
    # llama.cpp's abort callback stops a running prefill between graph nodes
    with pytest.raises(DecodeAborted):
        backend.native.decode(backend.tokenize("one two three four five"), abort_flag=cancel)
    backend._cached = []  # the aborted batch left nothing usable in the cache
    backend.native.forget_all()
    _, after = run(backend, GenerationRequest(prompt="Hello there", sampling=greedy(3)))
    assert after.finish_reason in ("length", "stop")


def test_stop_strings_cut_the_text_before_the_stop(backend_for):
    backend = backend_for("qwen3_moe")
    req = GenerationRequest(messages=CHAT, sampling=greedy(24))
    tokens, final = run(backend, req)
    text = "".join(e.text for e in tokens)
    assert len(text) > 8
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.index(stop)
    tokens2, final2 = run(
        backend, GenerationRequest(messages=CHAT, sampling=greedy(24, stop=[stop]))
    )
    assert "".join(e.text for e in tokens2) == text[:cut]
    assert final2.finish_reason == "stop"


def test_seeded_sampling_repeats_and_max_tokens_ends_with_length(backend_for):
    backend = backend_for("qwen3_moe")

    def sample(seed):
        params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, min_p=0.01, seed=seed)
        params.max_tokens, params.repeat_penalty = 16, 1.1
        return run(backend, GenerationRequest(prompt="Once upon a time", sampling=params))[1]

    a, b, c = sample(7), sample(7), sample(8)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert a.finish_reason == "length" and len(a.token_ids) == 16
    # top_k=1 at any temperature is greedy
    params = SamplingParams(temperature=0.8, top_k=1, seed=3, max_tokens=8)
    top1 = run(backend, GenerationRequest(prompt="Once upon a time", sampling=params))[1]
    greedy_run = run(backend, GenerationRequest(prompt="Once upon a time", sampling=greedy(8)))[1]
    assert top1.token_ids == greedy_run.token_ids


def test_cached_prefix_gives_what_a_fresh_context_gives(backend_for, gguf_file):
    backend = backend_for("qwen3_moe")
    _, first = run(backend, GenerationRequest(messages=CHAT, sampling=greedy(6)))
    follow = [*CHAT, Message("assistant", "Fine."), Message("user", "And then?")]
    _, warm = run(backend, GenerationRequest(messages=follow, sampling=greedy(8)))
    fresh_backend = load(gguf_file("qwen3_moe"), n_ctx=512, threads=2)
    try:
        _, cold = run(fresh_backend, GenerationRequest(messages=follow, sampling=greedy(8)))
    finally:
        fresh_backend.close()
    assert warm.token_ids == cold.token_ids
    assert warm.stats.prefill_tps > 0  # only the new turn was evaluated
    assert len(first.prompt_token_ids) < len(warm.prompt_token_ids)


def test_too_long_a_prompt_is_a_clear_error(backend_for):
    backend = backend_for("qwen3_moe")
    long = "寿司 " * 600
    _, final = run(backend, GenerationRequest(prompt=long, sampling=greedy()))
    assert final.finish_reason == "error"
    assert "512-token context" in final.error and "n_ctx" in final.error


def test_expert_override_places_exactly_the_routed_experts(gguf_file, backend_for):
    from engine.llamacpp.gguf_layout import read_gguf

    path = gguf_file("qwen3_moe")
    names = {t.name for t in __import__("gguf").GGUFReader(path).tensors}
    routed = {n for n in names if "_exps" in n}
    baseline = run(backend_for("qwen3_moe"), GenerationRequest(messages=CHAT, sampling=greedy(8)))
    everything = load(path, n_ctx=512, threads=2, cpu_moe=True)
    first_block = load(path, n_ctx=512, threads=2, cpu_moe=1)
    try:
        report = everything.expert_placement_report()
        assert set(report["tensors_in_cpu_ram"]) == routed
        assert report["effect"].startswith("none: CPU-only")
        assert any("no effect" in n for n in everything.plan.notes)
        only_first = set(first_block.expert_placement_report()["tensors_in_cpu_ram"])
        assert only_first == {n for n in routed if n.startswith("blk.0.")}
        # placement never changes the output
        for other in (everything, first_block):
            _, final = run(other, GenerationRequest(messages=CHAT, sampling=greedy(8)))
            assert final.token_ids == baseline[1].token_ids
    finally:
        everything.close()
        first_block.close()
    assert read_gguf(path).layout.expert_bytes > 0


def test_experts_per_token_is_set_at_load(gguf_file, backend_for):
    path = gguf_file("qwen3_moe")
    one = load(path, n_ctx=512, threads=2, experts_per_token=1)
    try:
        assert any("n_expert_used" in x and "= 1" in x for x in one.native.load_log)
        _, final = run(one, GenerationRequest(messages=CHAT, sampling=greedy(8)))
        assert final.finish_reason in ("length", "stop")
        req = GenerationRequest(messages=CHAT, sampling=greedy(4), experts_per_token=2)
        _, refused = run(one, req)
        assert refused.finish_reason == "error" and "experts_per_token=2" in refused.error
    finally:
        one.close()


def test_unknown_architecture_and_truncated_files_are_clear_errors(tmp_path, gguf_file):
    import gguf

    writer = gguf.GGUFWriter(tmp_path / "odd.gguf", "itamae_unknown")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_head_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitecture, match="itamae_unknown"):
        load(tmp_path / "odd.gguf", n_ctx=256)
    data = gguf_file("qwen3_moe").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadModelFile, match="cut.gguf"):
        load(tmp_path / "cut.gguf", n_ctx=256)


def test_itamae_generate_with_the_llamacpp_engine(gguf_file, backend_for):
    pytest.importorskip("app.commands.generate")
    import subprocess
    import sys

    path = gguf_file("qwen3_moe")
    cmd = [sys.executable, "-m", "app.cli", "generate", "--model", str(path), "--engine",
           "llamacpp", "--prompt", "Hello", "--chat", "--max-tokens", "6", "--temperature",
           "0", "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    req = GenerationRequest(messages=[Message("user", "Hello")], sampling=greedy(6))
    tokens, final = run(backend_for("qwen3_moe"), req)
    assert result["prompt_tokens"] == final.prompt_token_ids
    assert result["tokens"] == final.token_ids
    assert result["text"] == "".join(e.text for e in tokens)
    assert result["finish_reason"] == final.finish_reason


def test_closing_during_a_stream_ends_it_cleanly(gguf_file):
    backend = load(gguf_file("qwen3_moe"), n_ctx=512, threads=2)
    events, started = [], threading.Event()

    def consume():
        for event in backend.stream(GenerationRequest(messages=CHAT, sampling=greedy(400))):
            events.append(event)
            started.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(60)
    backend.close()  # waits for the token in flight, then frees the context
    worker.join(60)
    assert not worker.is_alive()
    final = events[-1]
    assert isinstance(final, FinalEvent) and final.finish_reason == "error"
    assert "closed" in final.error and len(final.token_ids) < 400


def test_recorded_expert_choices_are_the_routers_choices_in_transformers(gguf_file, hf_checkpoint):
    import torch

    from tests.fixtures.reference import reference_model

    backend = load(gguf_file("qwen3_moe"), n_ctx=512, threads=2, record_experts=True)
    try:
        req = GenerationRequest(prompt="The sushi chef 板前 slices tuna.", sampling=greedy(1))
        final = run(backend, req)[1]
    finally:
        backend.close()
    model = reference_model(hf_checkpoint("qwen3_moe"))
    with torch.no_grad():
        out = model(torch.tensor([final.prompt_token_ids]), output_router_logits=True)
    top_k = model.config.num_experts_per_tok
    expected = []
    for layer, logits in enumerate(out.router_logits):
        chosen = logits.reshape(len(final.prompt_token_ids), -1).topk(top_k, dim=-1).indices
        if layer == len(out.router_logits) - 1:
            chosen = chosen[-1:]  # llama.cpp runs the last block for the output token only
        expected.append(torch.bincount(chosen.flatten(), minlength=logits.shape[-1]).tolist())
    assert final.stats.expert_counts == expected
    json.dumps(final.stats.to_json())  # plain lists, ready for the API and the UI


def test_options_llama_cpp_would_abort_on_are_refused(gguf_file):
    from converters.core.errors import ItamaeError

    with pytest.raises(ItamaeError, match="Choose 1 to 8"):
        load(gguf_file("qwen3_moe"), n_ctx=512, experts_per_token=9)
    with pytest.raises(ItamaeError, match="no experts"):
        load(gguf_file("llama"), n_ctx=512, experts_per_token=2)
    with pytest.raises(ItamaeError, match="too short"):
        load(gguf_file("llama"), n_ctx=4)


def split_copy(source, folder, tensors_per_shard: int):
    """`source` rewritten as a split GGUF by gguf's writer, the layout llama.cpp's
    gguf-split and the published big-model GGUFs use. Returns the first shard's path."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(folder / "model.gguf", arch, split_max_tensors=tensors_per_shard)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(folder.glob("model-*-of-*.gguf"))


def test_split_gguf_is_planned_from_every_shard_and_loads(gguf_file, backend_for, tmp_path):
    from converters.core.errors import BadModelFile
    from engine.llamacpp.gguf_layout import read_gguf

    whole = read_gguf(gguf_file("qwen3_moe"))
    shards = split_copy(gguf_file("qwen3_moe"), tmp_path, tensors_per_shard=12)
    assert len(shards) >= 3
    for any_shard in (shards[0], shards[-1]):
        split = read_gguf(any_shard)
        assert split.path == shards[0]  # the shard llama.cpp must be given
        assert split.layout.weight_bytes == whole.layout.weight_bytes
        assert split.layout.expert_bytes == whole.layout.expert_bytes
        assert split.model_info().files == [p.name for p in shards]
    backend = load(shards[1], n_ctx=512, threads=2)
    try:
        _, final = run(backend, GenerationRequest(messages=CHAT, sampling=greedy(8)))
    finally:
        backend.close()
    _, reference = run(
        backend_for("qwen3_moe"), GenerationRequest(messages=CHAT, sampling=greedy(8))
    )
    assert final.token_ids == reference.token_ids
    shards[1].unlink()
    with pytest.raises(BadModelFile, match="missing"):
        load(shards[0], n_ctx=512)
