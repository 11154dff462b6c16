"""Files attached to a message: text-like files (plain text, Markdown, source code, JSON,
CSV, ...) and the text of PDFs (through pypdf, https://pypdf.readthedocs.io), put into
the person's message so that every chat template carries them.

A file is taken by its content, not its name: a PDF starts with `%PDF-`; anything else
must be UTF-8 text without NUL bytes (which every text format above is, and no image,
archive or office file is). The message the model sees holds each file as
`<attachment name="..." tokens="N">…</attachment>` before the typed text (documents in
XML-style tags, as Anthropic's prompting guide advises; any template passes a user
message's text through), and `split_attachments` takes a stored message apart again so
the chat can show a chip per file. A file that does not fit in the
model's context is refused with its size, never cut.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pypdf
from pypdf.errors import PdfReadError

from converters.core.errors import ItamaeError

MAX_FILE_BYTES = 32 << 20  # a larger file is no chat attachment (and would stall the UI)
REPLY_ROOM = 256  # tokens of context left over for the reply, at least
_ATTACHMENT = re.compile(
    r'<attachment name="([^"]*)"(?: tokens="(\d+)")?>\n(.*?)\n</attachment>\n*', re.S
)
_HINT = "Attach plain text, Markdown, source code, JSON, CSV, or a PDF with a text layer."


@dataclass
class Attachment:
    name: str
    text: str
    tokens: int = 0  # by the loaded model's tokenizer; 0 until counted


def read_attachment(path: Path | str, name: str | None = None) -> Attachment:
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ItamaeError(
                f"{name} is {size >> 20} MiB; attachments are up to {MAX_FILE_BYTES >> 20} MiB.",
                "Attach the part of it the question is about.",
            )
        with path.open("rb") as f:
            head = f.read(5)
    except OSError as e:
        raise ItamaeError(f"{name} could not be read ({e}).", _HINT) from e
    text = _pdf_text(path, name) if head == b"%PDF-" else _plain_text(path, name)
    return Attachment(name, text)


def _plain_text(path: Path, name: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ItamaeError(f"{name} is not a text file (not UTF-8).", _HINT) from e
    if "\x00" in text:
        raise ItamaeError(f"{name} is not a text file (it holds binary data).", _HINT)
    return text.replace("\r\n", "\n")


def _pdf_text(path: Path, name: str) -> str:
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            raise ItamaeError(f"{name} is an encrypted PDF.", "Save a copy without a password.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as e:
        raise ItamaeError(f"{name} is not a readable PDF ({e}).", _HINT) from e
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise ItamaeError(
            f"{name} has no text layer (a scan?).", "Run it through OCR first, or paste its text."
        )
    return text


def count_tokens(attachment: Attachment, tokenize: Callable[[str], list[int]]) -> Attachment:
    attachment.tokens = len(tokenize(attachment.text))
    return attachment


def check_fits(attachments: list[Attachment], used_tokens: int, context_length: int) -> None:
    """Refuse files that leave no room for a reply: `used_tokens` is what the
    conversation already takes, `context_length` what the model was loaded with."""
    total = used_tokens + sum(a.tokens for a in attachments)
    if context_length and total + REPLY_ROOM > context_length:
        biggest = max(attachments, key=lambda a: a.tokens)
        raise ItamaeError(
            f"{biggest.name} is {biggest.tokens} tokens; with the conversation that is "
            f"{total} of the {context_length}-token context this model was loaded with.",
            "Attach a shorter file or the part that matters, start a new chat, or load "
            "the model with a longer context.",
        )


def message_with_attachments(text: str, attachments: list[Attachment]) -> str:
    """The message as stored and as the model sees it: the files, then the typed text."""
    files = [
        f'<attachment name="{html.escape(a.name, quote=True)}" tokens="{a.tokens}">\n'
        f"{a.text}\n</attachment>\n\n"
        for a in attachments
    ]
    return "".join(files) + text


def split_attachments(content: str) -> tuple[str, list[Attachment]]:
    """A stored message as (the typed text, its files) again."""
    attachments, end = [], 0
    while match := _ATTACHMENT.match(content, end):
        attachments.append(Attachment(html.unescape(match[1]), match[3], int(match[2] or 0)))
        end = match.end()
    return content[end:], attachments
