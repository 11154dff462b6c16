"""Attachments: text-like files by content, PDF text through pypdf, token counts by a
real tokenizer (the demo's, through `tokenizers`), a clear refusal for files that do
not fit, and stored messages that come apart into text and files again."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from app.attachments import (
    Attachment,
    check_fits,
    count_tokens,
    message_with_attachments,
    read_attachment,
    split_attachments,
)
from converters.core.errors import ItamaeError
from engine.loader import DEMO_DIR


def _pdf(lines: list[str]) -> bytes:
    """A one-page PDF with Helvetica text, offsets and xref as the PDF 1.4 spec lays out."""
    ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({t}) '" for t in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


@pytest.mark.parametrize(
    "name, text",
    [
        ("notes.md", "# Rice\n\n- 2 cups rice\n- 60 ml 酢\n"),
        ("main.py", "def greet():\n    return 'こんにちは'\n"),
        ("data.json", '{"fish": ["maguro", "saba"]}'),
        ("table.csv", "fish,price\nmaguro,900\n"),
        ("README", "no suffix, still text"),
    ],
)
def test_text_like_files_are_read_by_content(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_attachment(path).text == text


def test_pdf_text_comes_through_pypdf(tmp_path):
    path = tmp_path / "recipe.pdf"
    path.write_bytes(_pdf(["Sushi rice needs vinegar.", "Fold it in gently."]))
    text = read_attachment(path).text
    assert "Sushi rice needs vinegar." in text and "Fold it in gently." in text


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file"),
        (b"\xff\xfe\x00h\x00i", "not a text file"),
        (b"%PDF-1.4\ngarbage", "not a readable PDF"),
    ],
)
def test_other_files_are_refused_with_a_hint(tmp_path, data, problem):
    path = tmp_path / "photo.md"  # the name does not make it text
    path.write_bytes(data)
    with pytest.raises(ItamaeError) as e:
        read_attachment(path)
    assert problem in str(e.value) and "Markdown" in e.value.hint


def test_token_counts_and_a_file_too_large_for_the_context():
    tokenizer = Tokenizer.from_file(str(DEMO_DIR / "hf" / "tokenizer.json"))

    def tokenize(text):
        return tokenizer.encode(text).ids

    small = count_tokens(Attachment("a.txt", "Hello there. " * 10), tokenize)
    assert small.tokens == len(tokenizer.encode("Hello there. " * 10).ids) > 10
    check_fits([small], used_tokens=100, context_length=2048)
    big = count_tokens(Attachment("book.txt", "Hello there. " * 2000), tokenize)
    with pytest.raises(ItamaeError) as e:
        check_fits([small, big], used_tokens=100, context_length=2048)
    assert f"book.txt is {big.tokens} tokens" in str(e.value)
    assert "2048-token context" in str(e.value)


def test_a_stored_message_comes_apart_again():
    files = [Attachment('odd "name".md', "# Title\n\nbody", 5), Attachment("b.csv", "x,y\n1,2", 7)]
    content = message_with_attachments("Summarise these.", files)
    assert content.startswith('<attachment name="odd &quot;name&quot;.md" tokens="5">\n# Title')
    text, parts = split_attachments(content)
    assert text == "Summarise these."
    assert parts == files
    assert split_attachments("plain") == ("plain", [])
