"""The llama.cpp backend: any GGUF llama.cpp can run, behind engine.types.Backend.

`load(path, **options)` reads the GGUF header, plans memory (memory_plan.py: GPU
layers, experts kept in CPU RAM, context), then opens the model through llama-cpp-python's
low-level binding (native.py) with that plan. `stream()` renders chat messages with the
model's own template through engine.chat_template.render_chat (the prompt builder the
torch engine shares), tokenizes with the model's tokenizer, reuses the cached prefix of
the previous turn, and yields one TokenEvent per sampled token, then a FinalEvent.

Prompt tokens follow Hugging Face's `apply_chat_template(tokenize=True)`: the rendered
chat is tokenized without adding BOS (a template that wants BOS writes `{{ bos_token }}`),
a raw prompt with it (the model's `add_bos` flag), special-token text parsed in both.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from converters import archs
from converters.core.errors import ContextTooLong, ItamaeError
from engine.prompting import PromptPlan, plan_prompt
from engine.text_stream import TextAssembler
from engine.types import (
    Event,
    FinalEvent,
    GenerationRequest,
    Message,
    Stats,
    TokenEvent,
)

from . import grammar as gbnf
from .devices import Hardware, detect_hardware, gpu_offload_supported
from .expert_usage import ExpertCounter
from .gguf_layout import GGUFHeader, read_gguf
from .memory_plan import plan_memory
from .native import DecodeAborted, LoadOptions, NativeModel
from .placement import MemoryPlan
from .sampling import SamplerChain, token_logprob

logger = logging.getLogger("itamae.llamacpp")

KNOWN_OPTIONS = {
    "n_ctx",
    "context_length",
    "gpu_layers",
    "cpu_moe",
    "threads",
    "cache_type",
    "experts_per_token",
    "check_memory",
    "hardware",
    "on_plan",
    "n_batch",
    "record_experts",
}


def load(path: str | Path, **options) -> LlamaCppBackend:
    """Open a GGUF with llama.cpp. Options (all optional):

    n_ctx (or context_length, the torch engine's name): context length (default: the
        planner's choice, up to 8192)
    gpu_layers: llama.cpp n_gpu_layers (default: as many as fit)
    cpu_moe: True = keep every block's routed experts in CPU RAM (`--cpu-moe`), an int N
        = those of the first N blocks (`--n-cpu-moe N`); default: as few as needed to fit
    threads: CPU threads (default: physical cores)
    cache_type: KV cache type, "f16" (default), "f32", "q8_0", ...
    experts_per_token: override the model's top-k (llama.cpp fixes it at load time)
    check_memory: refuse with NotEnoughMemory when the plan does not fit (default True)
    hardware: an engine.llamacpp.devices.Hardware to plan for instead of this machine's
    on_plan: called with the MemoryPlan before the weights are loaded (to show it)
    record_experts: fill Stats.expert_counts (slower decoding while on; see expert_usage.py)
    Unknown options (another engine's) are ignored and listed in info.extra["ignored_options"].
    """
    ignored = sorted(set(options) - KNOWN_OPTIONS)
    if ignored:
        logger.info("llama.cpp backend ignores options: %s", ", ".join(ignored))
    if options.get("context_length") and not options.get("n_ctx"):
        options["n_ctx"] = int(options["context_length"])
    path = Path(path)
    header = read_gguf(path)
    _check_options(header, options)
    plan = plan_for(header, options)
    logger.info("%s", plan.describe())
    if options.get("on_plan"):
        options["on_plan"](plan)
    backend = LlamaCppBackend(header, plan, options)
    backend.info.extra["ignored_options"] = ignored
    return backend


def _check_options(header: GGUFHeader, options: dict) -> None:
    """Refuse values llama.cpp would abort the process on (it asserts, it does not raise)."""
    k, n_experts = options.get("experts_per_token"), header.layout.n_experts
    if k is not None and not (n_experts and 1 <= int(k) <= n_experts):
        raise ItamaeError(
            f"experts_per_token={k} does not fit {header.path.name}, which has "
            + (f"{n_experts} experts per MoE layer." if n_experts else "no experts."),
            f"Choose 1 to {n_experts}." if n_experts else "Leave experts_per_token unset.",
        )
    n_ctx = options.get("n_ctx")
    if n_ctx is not None and int(n_ctx) < 16:
        raise ItamaeError(f"A context of {n_ctx} tokens is too short.", "Use n_ctx >= 256.")


def plan_for(header: GGUFHeader, options: dict) -> MemoryPlan:
    hardware: Hardware = options.get("hardware") or detect_hardware()
    cpu_moe = options.get("cpu_moe")
    if cpu_moe is True:
        cpu_moe = header.layout.n_layers
    elif cpu_moe is False:
        cpu_moe = 0
    return plan_memory(
        header.layout,
        hardware,
        n_ctx=options.get("n_ctx"),
        gpu_layers=options.get("gpu_layers"),
        cpu_moe_layers=cpu_moe,
        cache_type=options.get("cache_type", "f16"),
        check=options.get("check_memory", True),
    )


class LlamaCppBackend:
    """engine.types.Backend over one llama.cpp context; one generation at a time."""

    def __init__(self, header: GGUFHeader, plan: MemoryPlan, options: dict):
        self.header, self.plan = header, plan
        self.info = header.model_info()
        self.experts_per_token = options.get("experts_per_token") or header.layout.experts_per_token
        kv = {}
        if options.get("experts_per_token"):
            kv[f"{header.arch}.expert_used_count"] = int(options["experts_per_token"])
        layout = header.layout
        self.moe_blocks = [i for i, block in enumerate(layout.blocks) if block.expert_bytes]
        self.expert_counter = None
        if options.get("record_experts") and self.moe_blocks:
            self.expert_counter = ExpertCounter(layout.n_layers, layout.n_experts)
        self.native = NativeModel(
            header.path,
            LoadOptions(
                n_ctx=plan.n_ctx,
                gpu_layers=plan.gpu_layers,
                expert_patterns=plan.expert_override_patterns(),
                threads=options.get("threads") or psutil.cpu_count(logical=False) or 1,
                cache_type=plan.cache_type,
                n_batch=options.get("n_batch", 512),
                kv_overrides=kv,
                eval_callback=self.expert_counter and self.expert_counter.callback,
            ),
        )
        # a GGUF from llama.cpp's converter of a V3.2 folder carries none: the family's own
        self.chat_template = self.native.chat_template() or archs.publisher_chat_template(
            self.info.arch
        )
        # Harmony's channel tokens stay in the reply text (they mark the reasoning)
        self.keep_special = archs.reply_has_markers(self.info.arch)
        self.bos_token, self.eos_token = self.native.special_tokens()
        self.info.extra.update(
            memory_plan=plan.to_json(), expert_placement=self.expert_placement_report()
        )
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        self._lock = threading.Lock()

    # -- Backend ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.native.tokenize(text, add_special=True)

    def prompt_plan(self, req: GenerationRequest) -> PromptPlan:
        """The prompt text (the GGUF's own tokenizer.chat_template) and its constraint."""
        return plan_prompt(self.chat_template, req, self.bos_token, self.eos_token)

    def prompt_tokens(self, req: GenerationRequest, plan: PromptPlan | None = None) -> list[int]:
        plan = plan or self.prompt_plan(req)
        return self.native.tokenize(plan.text, add_special=req.messages is None)

    def render(self, messages) -> str:
        """The chat prompt text for [{"role", "content"}] dicts or Messages."""
        as_messages = [m if isinstance(m, Message) else Message(**m) for m in messages]
        return self.prompt_plan(GenerationRequest(messages=as_messages)).text

    def check_request(self, req: GenerationRequest) -> None:
        """Raise ItamaeError for what this request asks and cannot be done (a tool choice
        the template's format cannot force, a schema the grammar cannot enforce)."""
        self._grammar(self.prompt_plan(req))

    def _grammar(self, plan: PromptPlan) -> str | None:
        if plan.constraint is None:
            return None
        return gbnf.grammar_for(plan.constraint, self.special_token_id)

    def special_token_id(self, text: str) -> int | None:
        """The id of `text` when the vocabulary holds it as one special token, else None."""
        ids = self.native.tokenize(text, add_special=False, parse_special=True)
        if (
            len(ids) == 1
            and self.native.piece(ids[0], special=True).decode(errors="replace") == text
        ):
            return ids[0]
        return None

    def stream(
        self, req: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        with self._lock:
            yield from self._generate(req, cancel or threading.Event())

    def close(self) -> None:
        native = getattr(self, "native", None)
        if native is not None:
            native.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit llama_cpp may be gone
            self.close()

    # -- placement -------------------------------------------------------------------------

    def expert_placement_report(self) -> dict:
        """What the expert override did: how many tensors it matched and whether that
        changes anything on this build."""
        overridden = self.native.overridden_tensors()
        patterns = self.plan.expert_override_patterns()
        effect = "none: CPU-only build, every tensor is in CPU RAM already"
        if gpu_offload_supported():
            effect = "experts kept in CPU RAM" if overridden else "none requested"
        return {
            "cpu_moe_layers": self.plan.cpu_moe_layers if patterns else 0,
            "patterns": patterns,
            "tensors_in_cpu_ram": sorted(overridden),
            "effect": effect if patterns else "none requested",
            "model_buffers_mib": self.native.model_buffers_mib(),
        }

    # -- generation ------------------------------------------------------------------------

    def _generate(self, req: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        started = time.perf_counter()
        try:
            plan = self.prompt_plan(req)
            prompt = self._checked_prompt(req, plan)
            grammar = self._grammar(plan)
        except ItamaeError as e:
            yield FinalEvent("error", Stats(), error=str(e))
            return
        stats = Stats(prompt_tokens=len(prompt))
        if self.expert_counter is not None:
            # tokens evaluated in this request (a prefix reused from the last turn is not)
            self.expert_counter.reset()
        try:
            evaluated = self._prefill(prompt, cancel)
        except DecodeAborted:
            yield FinalEvent("cancelled", stats, prompt_token_ids=prompt)
            return
        except ItamaeError as e:
            yield FinalEvent("error", stats, error=str(e), prompt_token_ids=prompt)
            return
        prefill_s = time.perf_counter() - started
        stats.prefill_tps = evaluated / prefill_s if evaluated else 0.0
        yield from self._decode_loop(req, plan, grammar, prompt, cancel, stats, started)

    def _checked_prompt(self, req: GenerationRequest, plan: PromptPlan) -> list[int]:
        if req.experts_per_token and req.experts_per_token != self.experts_per_token:
            raise ItamaeError(
                f"This llama.cpp model was loaded with {self.experts_per_token} experts per "
                f"token; llama.cpp fixes that number when the model loads.",
                f"Load it again with experts_per_token={req.experts_per_token}.",
            )
        prompt = self.prompt_tokens(req, plan)
        if not prompt:
            raise ItamaeError("The prompt is empty.", "Type a message first.")
        if len(prompt) >= self.native.n_ctx:
            raise ContextTooLong(
                f"The prompt is {len(prompt)} tokens; the model was loaded with a "
                f"{self.native.n_ctx}-token context.",
                "Start a new conversation, shorten it, or load the model with a larger n_ctx.",
            )
        return prompt

    def _prefill(self, prompt: list[int], cancel: threading.Event) -> int:
        """Evaluate what the cache does not hold yet; returns how many tokens that was."""
        keep = _common_prefix(self._cached, prompt)
        keep = min(keep, len(prompt) - 1)  # the last prompt token must run to give logits
        if keep < len(self._cached) and not self.native.forget_from(keep):
            self.native.forget_all()  # recurrent caches cannot drop a tail
            keep = 0
        self._cached = prompt[:keep]
        batch = self.native.options.n_batch
        try:
            for start in range(keep, len(prompt), batch):
                if cancel.is_set():
                    raise DecodeAborted()
                chunk = prompt[start : start + batch]
                self.native.decode(chunk, abort_flag=cancel)
                self._cached.extend(chunk)
        except (DecodeAborted, ItamaeError):
            self.native.forget_from(len(self._cached))  # drop a half-evaluated chunk
            raise
        return len(prompt) - keep

    def _decode_loop(self, req, plan, grammar, prompt, cancel, stats: Stats, started: float):
        params = req.sampling
        text = TextAssembler(params.stop)
        completion: list[int] = []
        finish, first_at, last_at, decodes = "length", None, 0.0, 0
        if plan.prefix:
            yield TokenEvent(plan.prefix, None)
        native = self.native
        chain = SamplerChain(params, native.n_vocab, prompt, grammar=grammar, vocab=native.vocab)
        with chain as sampler:
            while len(completion) < params.max_tokens:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                try:
                    token = sampler.sample(self.native)
                except ItamaeError as e:
                    yield FinalEvent("error", stats, error=str(e), prompt_token_ids=prompt)
                    return
                last_at = time.perf_counter()
                first_at = first_at or last_at
                if self.native.is_end_of_generation(token):
                    finish = "stop"
                    break
                completion.append(token)
                logprob = None
                if params.logprobs is not None:
                    logprob = token_logprob(native, token, params.logprobs)
                yield TokenEvent(text.push(native.piece(token, self.keep_special)), token, logprob)
                if text.stopped:
                    finish = "stop"
                    break
                if len(completion) >= params.max_tokens:
                    break
                if len(self._cached) + 1 >= self.native.n_ctx:
                    break  # context full: "length"
                if cancel.is_set():
                    finish = "cancelled"
                    break
                try:
                    self.native.decode([token])
                except ItamaeError as e:
                    yield FinalEvent("error", stats, error=str(e), prompt_token_ids=prompt)
                    return
                self._cached.append(token)
                decodes += 1
        tail = text.finish()  # held-back text, unless a stop string ended the answer
        if tail:
            yield TokenEvent(tail, None)
        if text.stopped:
            finish = "stop"
        stats.completion_tokens = len(completion)
        if self.expert_counter is not None:
            stats.expert_counts = self.expert_counter.for_moe_blocks(self.moe_blocks)
        if first_at is not None:
            stats.ttft_s = first_at - started
            # between the first and the last draw: `decodes` forward passes and draws
            stats.decode_tps = decodes / (last_at - first_at) if decodes else 0.0
        raw = b"".join(self.native.piece(t, special=True) for t in completion)
        content, calls = plan.read_reply(plan.prefix + raw.decode("utf-8", errors="replace"))
        stop = text.stop_string
        yield FinalEvent(
            finish,
            stats,
            prompt_token_ids=prompt,
            token_ids=completion,
            tool_calls=calls,
            content=content,
            stop_sequence=stop,
        )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
