"""Measure the demo model: greedy replies, corpus recall, and expert routing by language.

    python assets/demo/evaluate.py assets/demo/hf            # text report
    python assets/demo/evaluate.py assets/demo/hf --json     # the same figures as JSON

Runs the HF checkpoint through transformers (the reference implementation), in float32.

- Corpus recall: for every distinct first turn of a one-exchange dialog in the training
  corpus, is the greedy reply one of the replies the corpus gives to it?
- Paraphrases: prompts that are not in the corpus, with their greedy replies.
- Routing: per layer, the share of top-k expert selections over all tokens (prompt and
  reply) of the English and of the Japanese corpus chats, the normalised entropy of each
  (1.0 = uniform), and the total variation distance between the two languages.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

PARAPHRASES = [
    "Hi there",
    "Hey, how are you?",
    "What is artificial intelligence?",
    "Which programming language are you written in?",
    "Where do you live?",
    "What number do you like best?",
    "Who made you?",
    "Tell me a joke",
    "やあ",
    "元気？",
    "人工知能とは何ですか？",
    "何の言語で書かれていますか？",
    "どこに住んでいますか？",
    "好きな数字は何ですか？",
    "誰があなたを作ったの？",
    "冗談を言って",
]


def load_train_module():
    spec = importlib.util.spec_from_file_location(
        "demo_train", Path(__file__).with_name("train.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Demo:
    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def reply_ids(self, prompt_ids: list[int], max_new_tokens: int = 48) -> list[int]:
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False
            )
        reply = out[0, len(prompt_ids) :].tolist()
        eos = self.model.config.eos_token_id
        return reply[: reply.index(eos)] if eos in reply else reply

    def reply(self, prompt: str) -> str:
        return self.tokenizer.decode(
            self.reply_ids(self.prompt_ids(prompt)), skip_special_tokens=True
        )

    def routing_counts(self, sequences: list[list[int]]) -> torch.Tensor:
        config = self.model.config
        counts = torch.zeros(config.num_hidden_layers, config.num_experts)
        with torch.no_grad():
            for ids in sequences:
                out = self.model(torch.tensor([ids]), output_router_logits=True)
                for layer, logits in enumerate(out.router_logits):
                    chosen = logits.topk(config.num_experts_per_tok, dim=-1).indices.flatten()
                    counts[layer] += torch.bincount(chosen, minlength=config.num_experts)
        return counts


def corpus_answers(train) -> dict[str, dict[str, set[str]]]:
    """language -> first turn -> the corpus replies to it (one-exchange dialogs only)."""
    answers: dict[str, dict[str, set[str]]] = {
        "english": defaultdict(set),
        "japanese": defaultdict(set),
    }
    for language, _, turns in train.load_dialogs():
        if len(turns) == 2:
            answers[language][turns[0]].add(turns[1])
    return answers


def corpus_recall(demo: Demo, answers) -> dict:
    result = {}
    for language, table in answers.items():
        hits = sum(demo.reply(prompt) in replies for prompt, replies in table.items())
        result[language] = {"prompts": len(table), "exact_corpus_reply": hits}
    return result


def routing_by_language(demo: Demo, answers) -> dict:
    usage = {}
    for language, table in answers.items():
        sequences = []
        for prompt, replies in sorted(table.items()):
            reply = sorted(replies)[0]
            text = demo.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                tokenize=False,
            )
            sequences.append(demo.tokenizer(text, add_special_tokens=False).input_ids)
        counts = demo.routing_counts(sequences)
        usage[language] = counts / counts.sum(dim=1, keepdim=True)
    n_experts = usage["english"].shape[1]

    def entropy(p: torch.Tensor) -> list[float]:
        return [
            round(float(-(row * row.clamp_min(1e-12).log()).sum() / math.log(n_experts)), 3)
            for row in p
        ]

    distance = 0.5 * (usage["english"] - usage["japanese"]).abs().sum(dim=1)
    return {
        "share": {k: [[round(float(x), 3) for x in row] for row in v] for k, v in usage.items()},
        "normalised_entropy": {k: entropy(v) for k, v in usage.items()},
        "tv_distance_en_ja": [round(float(d), 3) for d in distance],
    }


def print_report(report: dict) -> None:
    print("Corpus recall (greedy reply is one of the corpus replies to that prompt):")
    for language, r in report["corpus_recall"].items():
        print(f"  {language}: {r['exact_corpus_reply']}/{r['prompts']}")
    print("Paraphrases (not in the corpus):")
    for prompt, reply in report["paraphrases"].items():
        print(f"  {prompt!r} -> {reply!r}")
    routing = report["routing"]
    print("Expert share per layer (top-k selections over corpus chats), EN | JA:")
    for layer, (en, ja) in enumerate(
        zip(routing["share"]["english"], routing["share"]["japanese"], strict=True)
    ):
        row = " ".join(f"{x:.2f}" for x in en) + "  |  " + " ".join(f"{x:.2f}" for x in ja)
        print(
            f"  layer {layer}: {row}   TV {routing['tv_distance_en_ja'][layer]:.2f}"
            f"  H_en {routing['normalised_entropy']['english'][layer]:.2f}"
            f"  H_ja {routing['normalised_entropy']['japanese'][layer]:.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_train_module()
    demo = Demo(args.folder)
    answers = corpus_answers(train)
    known = {p for table in answers.values() for p in table} | {
        t for _, _, turns in train.load_dialogs() for t in turns
    }
    unseen = [p for p in PARAPHRASES if p not in known]
    report = {
        "corpus_recall": corpus_recall(demo, answers),
        "paraphrases": {p: demo.reply(p) for p in unseen},
        "routing": routing_by_language(demo, answers),
    }
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
        print()
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
