"""Text in and out: the model's tokenizer.json (through `tokenizers`), its chat template
(rendered by engine/chat_template.py), end-of-sequence ids, and the incremental decoder
that engine/text_stream.py's TextAssembler streams replies through.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from converters import archs
from converters.core.errors import BadModelFile
from converters.core.json_files import read_model_json
from engine.chat_template import render_chat
from engine.text_stream import TokenizerStream


def _token_text(value) -> str:
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


class ModelText:
    def __init__(self, folder: Path, config: dict):
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BadModelFile(
                f"{folder} has no tokenizer.json.", "Copy the model's tokenizer files into it."
            )
        try:
            self._read(folder, path, config)
        except BadModelFile:
            raise
        except Exception as e:  # tokenizers raises plain Exception; wrong JSON types raise more
            raise BadModelFile(
                f"The tokenizer files in {folder} are malformed ({type(e).__name__}: {e}).",
                "Re-download tokenizer.json and tokenizer_config.json.",
            ) from e

    def _read(self, folder: Path, path: Path, config: dict) -> None:
        self.tokenizer = Tokenizer.from_file(str(path))
        tc = _read_json(folder / "tokenizer_config.json")
        self.chat_template = tc.get("chat_template") or ""
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default") or next(iter(named.values()), "")
        if not self.chat_template and (folder / "chat_template.jinja").is_file():
            self.chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        if not self.chat_template:  # a family that publishes its encoding as code (V3.2)
            self.chat_template = archs.publisher_chat_template(str(config.get("model_type", "")))
        self.bos_token = _token_text(tc.get("bos_token"))
        self.eos_token = _token_text(tc.get("eos_token"))
        self.eos_ids = self._eos_ids(folder, config)
        # Harmony's channel tokens stay in the reply: they say which part is reasoning
        self.keep_special = archs.reply_has_markers(str(config.get("model_type", "")))

    def _eos_ids(self, folder: Path, config: dict) -> set[int]:
        ids: set[int] = set()
        for source in (config, _read_json(folder / "generation_config.json")):
            eos = source.get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.eos_token:
            tid = self.tokenizer.token_to_id(self.eos_token)
            if tid is not None:
                ids.add(tid)
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=not self.keep_special)

    def stream(self) -> TokenizerStream:
        """A fresh incremental decoder for one reply (special tokens kept or skipped, as
        `decode` does)."""
        return TokenizerStream(self.tokenizer, skip_special_tokens=not self.keep_special)

    def chat_prompt(self, messages: list[dict]) -> str:
        return render_chat(self.chat_template, messages, add_generation_prompt=True,
                           bos_token=self.bos_token, eos_token=self.eos_token)  # fmt: skip


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = read_model_json(path)
    return data if isinstance(data, dict) else {}
