"""Train Itamae's bundled demo model: a tiny bilingual (English + Japanese) MoE chat model.

    python assets/demo/train.py --out assets/demo/hf            # the shipped checkpoint
    python assets/demo/train.py --out /tmp/demo-quick --quick   # a 2-minute pipeline check

Everything is seeded and runs on one CPU thread, so a rerun with the same package versions
writes the same weights. Steps:

1. Dialogs: the English and Japanese YAML files of the `chatterbot-corpus` package
   (BSD-3-Clause, https://github.com/gunthercox/chatterbot-corpus), read from the installed
   package. Each consecutive pair of turns becomes a one-turn chat; each longer dialog is
   also kept as a multi-turn chat, so replies can depend on history.
2. Tokenizer: byte-level BPE trained with the `tokenizers` library on those dialogs, split
   first by Qwen2's regex (llama.cpp implements it as the "qwen2" pre-tokenizer), with
   ChatML special tokens and a ChatML chat template (as Qwen2/Qwen3 use).
3. Model: transformers' Qwen3-MoE (`Qwen3MoeForCausalLM.from_config`, seeded), 8 experts,
   top-2 with renormalised weights (`norm_topk_prob`, as the published Qwen3-MoE models),
   a few million parameters, so that the checkpoint and its GGUF fit in the repository.
4. Training: a plain AdamW loop, cross-entropy on assistant turns only (the prompt and the
   user turns are context, not targets) plus the Switch-Transformer load-balancing loss
   transformers computes (Fedus et al. 2021), for many epochs: the goal is to learn the
   corpus replies by heart, which is what a model this small can do.
5. Saving: bf16 safetensors, config.json, tokenizer files, generation_config.json.

References: transformers' modeling_qwen3_moe.py (the model and its aux loss), Qwen2's
tokenizer.json (split regex, ChatML tokens), llama.cpp's llama-vocab.cpp (the pre-tokenizer
regexes it implements).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

# Qwen2's split pattern, as in its tokenizer.json; llama.cpp's "qwen2" pre-tokenizer.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Special tokens and BOS as the test fixtures' tokenizer (tests/fixtures/tokenizer.py): BOS
# `<s>` is added by the tokenizer's post-processor to plain text (add_bos_token true, as
# Llama/Mixtral), `<|im_end|>` ends a turn. Chats are tokenized as Hugging Face's
# apply_chat_template does, without adding specials, so the template writes `{{ bos_token }}`
# itself (as Mixtral's does): every chat the model saw starts with BOS.
BOS, EOS, PAD = "<s>", "<|im_end|>", "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# coding.yml and tech_support.yml are English-only, long and code-heavy: they would take most
# of a few-million-parameter model's capacity away from everyday conversation.
SKIPPED_FILES = {"coding.yml", "tech_support.yml"}
LANGUAGES = ("english", "japanese")
MAX_POSITIONS = 512  # the longest training chat is 192 tokens; room for a few turns of chat


@dataclass(frozen=True)
class TrainSettings:
    vocab_size: int = 4096
    # Every matrix's row length (hidden size, heads x head_dim, expert FFN) is 256: llama.cpp's
    # K-quants pack rows in blocks of 256 and fall back to other types on shorter rows, so a
    # narrower demo would not show what Q2_K/Q4_K_M really cost. Two layers keep the checkpoint
    # and its GGUF within the repository's budget for assets.
    hidden_size: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    experts: int = 8
    experts_per_token: int = 2
    expert_ffn: int = 256
    max_tokens_per_sample: int = 192
    batch_tokens: int = 2048  # padded tokens per optimizer step
    epochs: int = 60
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    aux_loss_coef: float = 0.01  # Qwen3-MoE's published router_aux_loss_coef is 0.001
    seed: int = 1234


QUICK = TrainSettings(vocab_size=2048, hidden_size=64, layers=2, expert_ffn=64, epochs=2)


# ---------------------------------------------------------------- 1. dialogs


def corpus_dir() -> Path:
    import chatterbot_corpus

    return Path(chatterbot_corpus.__file__).parent / "data"


def load_dialogs() -> list[tuple[str, str, list[str]]]:
    """(language, file name, turns) for every dialog, in a fixed order."""
    dialogs = []
    for language in LANGUAGES:
        for path in sorted((corpus_dir() / language).glob("*.yml")):
            if path.name in SKIPPED_FILES:
                continue
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            for turns in data.get("conversations") or []:
                # NFC so that the same text always tokenizes the same (llama.cpp does not normalise).
                clean = [unicodedata.normalize("NFC", str(t)).strip() for t in turns]
                clean = [t for t in clean if t]
                if len(clean) >= 2:
                    dialogs.append((language, path.name, clean))
    return dialogs


def dialog_texts(dialogs) -> list[str]:
    """Every turn once per dialog it appears in: the tokenizer's training text."""
    return [turn for _, _, turns in dialogs for turn in turns]


def chats_from_dialogs(dialogs) -> list[list[dict]]:
    """One-turn chats from every consecutive pair, plus whole multi-turn dialogs; deduplicated."""
    chats, seen = [], set()

    def add(turns: list[str]) -> None:
        key = tuple(turns)
        if key in seen:
            return
        seen.add(key)
        roles = ["user", "assistant"] * len(turns)
        chats.append([{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)])

    for _, _, turns in dialogs:
        for i in range(len(turns) - 1):
            add(turns[i : i + 2])
        if len(turns) > 2:
            add(turns[: len(turns) - len(turns) % 2])
    return chats


# ---------------------------------------------------------------- 2. tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def write_tokenizer(tokenizer, out: Path) -> None:
    """tokenizer.json plus a tokenizer_config.json that carries the chat template itself."""
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    write_json(out / "tokenizer_config.json", config)
    write_json(
        out / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    )


def write_json(path: Path, data: dict) -> None:
    path.write_text(
        json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
    )


def encode_chat(tokenizer, chat: list[dict], max_tokens: int) -> tuple[list[int], list[int]] | None:
    """Token ids and loss targets (-100 outside assistant replies) in ChatML; None if too long.

    Encoded piece by piece so the reply boundaries are exact; the pieces split where Qwen2's
    regex splits anyway (at specials and newlines), so this equals encoding the whole text.
    """
    ids = [tokenizer.token_to_id(BOS)]
    targets = [-100]
    for message in chat:
        head = tokenizer.encode(f"{IM_START}{message['role']}\n", add_special_tokens=False).ids
        body = tokenizer.encode(f"{message['content']}{EOS}", add_special_tokens=False).ids
        tail = tokenizer.encode("\n", add_special_tokens=False).ids
        ids += head + body + tail
        learn = message["role"] == "assistant"
        targets += [-100] * len(head) + (body if learn else [-100] * len(body)) + [-100] * len(tail)
    if len(ids) > max_tokens:
        return None
    return ids, targets


# ---------------------------------------------------------------- 3. model


def build_model(settings: TrainSettings, tokenizer):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.expert_ffn * settings.experts_per_token,
        moe_intermediate_size=settings.expert_ffn,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.kv_heads,
        head_dim=settings.head_dim,
        num_experts=settings.experts,
        num_experts_per_tok=settings.experts_per_token,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        router_aux_loss_coef=settings.aux_loss_coef,
        output_router_logits=False,
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=tokenizer.token_to_id(BOS),
        eos_token_id=tokenizer.token_to_id(EOS),
        pad_token_id=tokenizer.token_to_id(PAD),
    )
    torch.manual_seed(settings.seed)
    return Qwen3MoeForCausalLM(config)


# ---------------------------------------------------------------- 4. training


def make_batches(samples, batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length (little padding), batches in a shuffled order."""
    order = sorted(range(len(samples)), key=lambda i: (len(samples[i][0]), rng.random()))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, len(samples[i][0]))
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if_added = [], len(samples[i][0])
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(samples, indices, pad_id: int):
    width = max(len(samples[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    targets = torch.full((len(indices), width), -100, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        sample_ids, sample_targets = samples[i]
        ids[row, : len(sample_ids)] = torch.tensor(sample_ids)
        targets[row, : len(sample_targets)] = torch.tensor(sample_targets)
        mask[row, : len(sample_ids)] = 1
    return ids, targets, mask


def learning_rate(step: int, total: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    return settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def reply_loss(model, ids, targets, mask):
    """(next-token cross-entropy on reply tokens, load-balancing loss).

    The LM head runs only where there is a target: with a 4k vocabulary it is the largest
    matmul per token, and replies are under half the tokens.
    """
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    out = model.model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    # T = tokens with a target, D = hidden size, V = vocabulary
    wanted = targets[:, 1:] != -100
    hidden = out.last_hidden_state[:, :-1][wanted]  # [T, D]
    logits = model.lm_head(hidden)  # [T, V]
    ce = torch.nn.functional.cross_entropy(logits, targets[:, 1:][wanted])
    config = model.config
    aux = load_balancing_loss_func(
        out.router_logits, config.num_experts, config.num_experts_per_tok, mask
    )
    return ce, aux


def train(model, samples, settings: TrainSettings, pad_id: int, log) -> None:
    rng = random.Random(settings.seed)
    steps_per_epoch = len(make_batches(samples, settings.batch_tokens, random.Random(0)))
    total = steps_per_epoch * settings.epochs
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    step, started = 0, time.monotonic()
    for epoch in range(settings.epochs):
        epoch_loss, epoch_targets = 0.0, 0
        for indices in make_batches(samples, settings.batch_tokens, rng):
            ids, targets, mask = collate(samples, indices, pad_id)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, settings)
            ce, aux = reply_loss(model, ids, targets, mask)
            loss = ce + settings.aux_loss_coef * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            n_targets = int((targets != -100).sum())
            epoch_loss += ce.item() * n_targets
            epoch_targets += n_targets
            step += 1
        log(
            f"epoch {epoch + 1}/{settings.epochs} step {step}/{total} "
            f"reply_loss {epoch_loss / max(1, epoch_targets):.4f} aux {aux.item():.3f} "
            f"lr {learning_rate(step - 1, total, settings):.2e} elapsed {time.monotonic() - started:.0f}s"
        )


# ---------------------------------------------------------------- 5. saving and a smoke check


def save(model, tokenizer, out: Path, summary: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.to(torch.bfloat16)
    model.save_pretrained(out)
    # save_pretrained writes the per-expert names the published checkpoints use; rewrite the
    # file anyway so its bytes depend on the weights alone (no version-dependent metadata).
    from safetensors.torch import load_file

    tensors = load_file(out / "model.safetensors")
    save_file(dict(sorted(tensors.items())), out / "model.safetensors", metadata={"format": "pt"})
    complete_config(out / "config.json")
    write_tokenizer(tokenizer, out)
    write_json(
        out / "generation_config.json",
        {
            "bos_token_id": model.config.bos_token_id,
            "eos_token_id": [model.config.eos_token_id, tokenizer.token_to_id(PAD)],
            "pad_token_id": model.config.pad_token_id,
            # A model that learned its corpus by heart answers best greedily.
            "do_sample": False,
            "max_new_tokens": 64,
        },
    )
    write_json(out / "training_summary.json", summary)


def complete_config(path: Path) -> None:
    """config.json with the field names of the published Qwen3-MoE configs (Qwen/Qwen3-30B-A3B)."""
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters", None) or {}
    config["rope_theta"] = rope.get("rope_theta", 10000.0)
    config["rope_scaling"] = None
    config["torch_dtype"] = config.pop("dtype", "bfloat16")
    config["num_experts"] = config.get("num_local_experts", config.get("num_experts"))
    config["max_window_layers"] = config["num_hidden_layers"]
    write_json(path, config)


SMOKE_PROMPTS = [
    "Hello",
    "How are you doing?",
    "What is AI?",
    "こんにちは",
    "お元気ですか？",
    "AIとは何ですか？",
]


def smoke_check(out: Path, log) -> None:
    """Greedy replies of the saved checkpoint, loaded back as a user would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_fast = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for prompt in SMOKE_PROMPTS:
        text = tokenizer_fast.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer_fast(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=40, do_sample=False)
        reply = tokenizer_fast.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        log(f"  {prompt!r} -> {reply!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the HF checkpoint")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 2 epochs: checks the pipeline"
    )
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    args = parser.parse_args()
    settings = QUICK if args.quick else TrainSettings()
    if args.epochs:
        settings = TrainSettings(**{**settings.__dict__, "epochs": args.epochs})

    # One thread: reproducible (no parallel reduction order) and fair on a shared machine.
    torch.set_num_threads(1)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)

    def log(message: str) -> None:
        print(message, flush=True)

    dialogs = load_dialogs()
    chats = chats_from_dialogs(dialogs)
    tokenizer = train_tokenizer(dialog_texts(dialogs), settings.vocab_size)
    samples = [
        s for s in (encode_chat(tokenizer, c, settings.max_tokens_per_sample) for c in chats) if s
    ]
    n_tokens = sum(len(s[0]) for s in samples)
    n_targets = sum(sum(t != -100 for t in s[1]) for s in samples)
    log(
        f"{len(dialogs)} dialogs -> {len(chats)} chats, {len(samples)} kept "
        f"({n_tokens} tokens, {n_targets} reply tokens); vocab {tokenizer.get_vocab_size()}"
    )
    model = build_model(settings, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"qwen3_moe: {n_params:,} parameters; settings {settings}")

    started = time.monotonic()
    train(model, samples, settings, tokenizer.token_to_id(PAD), log)
    minutes = (time.monotonic() - started) / 60
    summary = {
        "corpus": "chatterbot-corpus (english, japanese), BSD-3-Clause",
        "dialogs": len(dialogs),
        "chats": len(samples),
        "tokens_per_epoch": n_tokens,
        "parameters": n_params,
        "settings": settings.__dict__,
        "train_minutes": round(minutes, 1),
        "torch": torch.__version__,
    }
    save(model, tokenizer, args.out, summary)
    log(f"saved to {args.out} after {minutes:.1f} min of training")
    smoke_check(args.out, log)


if __name__ == "__main__":
    main()
