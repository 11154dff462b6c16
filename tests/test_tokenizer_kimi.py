"""Kimi-K2's tokenizer as Moonshot publishes it (tiktoken.model, tokenizer_config.json,
tokenization_kimi.py; no tokenizer.json), converted without running the folder's code.

The reference is `tiktoken` itself with the published pattern and special tokens, built as
tokenization_kimi.TikTokenTokenizer builds its Encoding (tests/fixtures/kimi_tokenizer.py).
Itamae's GGUF, tokenized by llama.cpp (llama-cpp-python, vocab only), and the tokenizer.json
Itamae writes into the torch format, read by the torch engine's text side, must both give
tiktoken's ids on English, Japanese, Chinese, code and emoji. The GGUF's tokenizer keys are
the ones llama.cpp's converter writes for "kimi-k2" (conversion/deepseek.py): model gpt2,
pre kimi-k2, tokens in GPT-2's byte spelling, the 256 reserved ids CONTROL, and the merges
its `QwenModel.bpe` recovers from the ranks (run from the sdist in a subprocess).
The fixture's tokenization_kimi.py raises if anything runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gguf import GGUFReader

from converters.conversion.convert import convert
from converters.core.errors import UnsupportedArchitecture
from engine.torch.text import ModelText
from tests.fixtures.kimi_tokenizer import EXTRA_CORPUS, kimi_tiktoken_checkpoint, tiktoken_encoding
from tests.fixtures.llamacpp_reference import llama_cpp_source
from tests.fixtures.tokenizer import CORPUS

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("tiktoken")

TEXTS = [
    "Hello world! It's 2024; we'll see, THEY'RE sure. THE END?",
    "東京は日本の首都です。カタカナとひらがな、漢字。",
    "人工智能正在改变世界。北京是中国的首都，上海也很大！",
    "中文English混合text测试123",
    "def add(a, b):\n    return a + b  # 3.14159\n\n\tprint(add(1, 22))",
    "for (int i = 0; i < 1000000; ++i) { x[i] = i * 2; }",
    "🦙🍣 ✅ 😶\u200d🌫️ naïve café Ångström",
    "  leading spaces,\ttabs\n\n\nand newlines\r\n  ",
    "Tiếng Việt có dấu",
]


@pytest.fixture(scope="module")
def kimi_folder(hf_checkpoint, tmp_path_factory):
    return kimi_tiktoken_checkpoint(
        hf_checkpoint("kimi_k2"), tmp_path_factory.mktemp("kimi") / "k2"
    )


@pytest.fixture(scope="module")
def kimi_gguf(kimi_folder, tmp_path_factory):
    dest = tmp_path_factory.mktemp("kimi-gguf") / "kimi.gguf"
    convert(kimi_folder, dest, "F32")
    return dest


def all_texts() -> list[str]:
    corpus = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return TEXTS + EXTRA_CORPUS + corpus[:40]


def test_llama_cpp_tokenizes_itamaes_gguf_as_tiktoken(kimi_folder, kimi_gguf):
    enc = tiktoken_encoding(kimi_folder)
    llm = llama_cpp.Llama(str(kimi_gguf), vocab_only=True, verbose=False)
    try:
        for text in all_texts():
            want = enc.encode(text, disallowed_special=())
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, text
        chat = "<|im_system|>system<|im_middle|>You are Kimi.<|im_end|><|im_user|>user<|im_middle|>你好<|im_end|>"
        want = enc.encode(chat, allowed_special="all")
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == want
    finally:
        llm.close()


def test_the_torch_formats_tokenizer_is_tiktokens(kimi_folder, tmp_path):
    enc = tiktoken_encoding(kimi_folder)
    dest = tmp_path / "kimi-torch"
    convert(kimi_folder, dest, "bf16", fmt="torch")
    config = json.loads((dest / "config.json").read_text())
    text = ModelText(dest, config)
    for sample in all_texts():
        ids = text.encode(sample, add_special_tokens=False)
        assert ids == enc.encode(sample, disallowed_special=()), sample
        assert text.decode(ids) == sample
    chat = "<|im_user|>user<|im_middle|>こんにちは<|im_end|>"
    assert text.encode(chat, add_special_tokens=False) == enc.encode(chat, allowed_special="all")
    assert text.eos_ids >= {enc.encode_single_token("[EOS]")}


# llama.cpp's converter's "kimi-k2" vocabulary (conversion/deepseek.py DeepseekV2Model.set_vocab),
# with its own QwenModel.bpe and token_bytes_to_string, fed tiktoken's ranks and the special
# tokens tokenization_kimi builds (the converter gets both from that class, which Itamae never runs).
LLAMA_CPP_KIMI_VOCAB = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/gguf-py"]
sys.path.insert(0, sys.argv[2])
from conversion.qwen import QwenModel
from tests.fixtures.kimi_tokenizer import tiktoken_encoding
from pathlib import Path
enc = tiktoken_encoding(Path(sys.argv[3]))
vocab_size = int(sys.argv[4])
merges, vocab = [], {}
mergeable_ranks = enc._mergeable_ranks
for token, rank in mergeable_ranks.items():
    vocab[QwenModel.token_bytes_to_string(token)] = rank
    if len(token) == 1:
        continue
    merged = QwenModel.bpe(mergeable_ranks, token, max_rank=rank)
    if len(merged) == 2:
        merges.append(' '.join(map(QwenModel.token_bytes_to_string, merged)))
special_tokens = enc._special_tokens
reverse_vocab = {id_: t for t, id_ in {**vocab, **special_tokens}.items()}
tokens, toktypes = [], []
for i in range(vocab_size):
    if i not in reverse_vocab:
        tokens.append(f"[PAD{i}]"); toktypes.append(5)
    else:
        tokens.append(reverse_vocab[i])
        toktypes.append(3 if i in special_tokens.values() else 1)
print(json.dumps({"tokens": tokens, "types": toktypes, "merges": merges}))
"""


def test_gguf_tokenizer_keys_are_llama_cpps_converters(kimi_folder, kimi_gguf):
    from tests.fixtures.llamacpp_reference import REPO

    fields = GGUFReader(kimi_gguf).fields
    n_vocab = len(fields["tokenizer.ggml.tokens"].data)
    cmd = [sys.executable, "-c", LLAMA_CPP_KIMI_VOCAB, str(llama_cpp_source()), str(REPO)]
    done = subprocess.run(cmd + [str(kimi_folder), str(n_vocab)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    want = json.loads(done.stdout)

    def strings(key):
        field = fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "kimi-k2"
    assert strings("tokenizer.ggml.tokens") == want["tokens"]
    assert [
        int(fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in fields["tokenizer.ggml.token_type"].data
    ] == want["types"]
    assert strings("tokenizer.ggml.merges") == want["merges"]
    config = json.loads((kimi_folder / "config.json").read_text())
    assert fields["tokenizer.ggml.bos_token_id"].contents() == config["bos_token_id"]
    assert fields["tokenizer.ggml.eos_token_id"].contents() == config["eos_token_id"]


def test_a_tiktoken_folder_without_its_tokenizer_module_is_refused(kimi_folder, tmp_path):
    """The split pattern is only in tokenization_kimi.py: without it Itamae cannot know how
    text is split, and says which files to download (it never guesses a pattern)."""
    import shutil

    folder = tmp_path / "no-module"
    shutil.copytree(kimi_folder, folder, ignore=shutil.ignore_patterns("tokenization_kimi.py"))
    with pytest.raises(UnsupportedArchitecture, match="tiktoken.model") as refused:
        convert(folder, tmp_path / "x.gguf", "F32")
    assert "tokenization_*.py" in refused.value.hint
