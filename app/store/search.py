"""Finding conversations by what was written in them.

Message text is searched through the FTS5 trigram index (app/store/schema.py): every
whitespace-separated term of three or more characters is a quoted phrase, all must
occur in one message, and FTS5's `snippet()` marks the hits
(https://sqlite.org/fts5.html#the_snippet_function). A trigram index cannot answer a
term shorter than three characters, and Japanese words are often one or two (天気, 猫),
so such terms are matched with LIKE over the messages table: a scan, but only for
short queries, the same cost the whole search had before. Titles are matched with LIKE:
there is one per conversation.
"""

from __future__ import annotations

import html
import sqlite3
from dataclasses import dataclass

# Around each hit in a snippet; control characters no message is expected to contain.
HIT_START, HIT_END = "\x02", "\x03"
SNIPPET_TOKENS = 32  # context FTS5 shows per hit; trigram "tokens" are about characters (max 64)
SNIPPET_CHARS = 40  # context the LIKE path shows on each side of the first hit
TRIGRAM = 3  # the shortest term the trigram index can answer


@dataclass
class SearchHit:
    conversation_id: str
    message_id: int | None  # None when the title matched
    snippet: str  # the hit in context, HIT_START/HIT_END around each match


def search(db: sqlite3.Connection, query: str, limit: int = 200) -> list[SearchHit]:
    """Title hits first, then message hits (best FTS rank first)."""
    terms = query.split()
    if not terms:
        return []
    return _title_hits(db, terms, limit) + _message_hits(db, terms, limit)


def snippet_html(snippet: str) -> str:
    """The snippet as HTML, hits in <mark>."""
    return html.escape(snippet).replace(HIT_START, "<mark>").replace(HIT_END, "</mark>")


def _title_hits(db: sqlite3.Connection, terms: list[str], limit: int) -> list[SearchHit]:
    where = " AND ".join("title LIKE ? ESCAPE '\\'" for _ in terms)
    rows = db.execute(
        f"SELECT id, title FROM conversations WHERE {where} ORDER BY updated DESC LIMIT ?",
        (*(_like(t) for t in terms), limit),
    ).fetchall()
    return [SearchHit(r["id"], None, mark_terms(r["title"], terms)) for r in rows]


def _message_hits(db: sqlite3.Connection, terms: list[str], limit: int) -> list[SearchHit]:
    long = [t for t in terms if len(t) >= TRIGRAM]
    short = [t for t in terms if len(t) < TRIGRAM]
    short_sql = "".join(" AND m.content LIKE ? ESCAPE '\\'" for _ in short)
    short_args = [_like(t) for t in short]
    if long:
        match = " AND ".join('"' + t.replace('"', '""') + '"' for t in long)
        rows = db.execute(
            f"""SELECT m.conversation_id, m.id, m.content, snippet(messages_fts, 0, ?, ?, '…', ?)
                AS snippet FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
                WHERE messages_fts MATCH ?{short_sql} ORDER BY rank LIMIT ?""",
            (HIT_START, HIT_END, SNIPPET_TOKENS, match, *short_args, limit),
        ).fetchall()
        # FTS5 marks only the indexed terms; the short ones are marked here.
        return [
            SearchHit(r["conversation_id"], r["id"], _mark_more(r["snippet"], short)) for r in rows
        ]
    rows = db.execute(
        f"""SELECT m.conversation_id, m.id, m.content FROM messages m WHERE 1{short_sql}
            ORDER BY m.id DESC LIMIT ?""",
        (*short_args, limit),
    ).fetchall()
    return [SearchHit(r["conversation_id"], r["id"], mark_terms(r["content"], short)) for r in rows]


def mark_terms(text: str, terms: list[str], context: int = SNIPPET_CHARS) -> str:
    """`text` around the first hit of any term, every hit in the window marked."""
    folded = text.lower()
    starts = [i for i in (folded.find(t.lower()) for t in terms) if i >= 0]
    first = min(starts, default=0)
    lo, hi = max(0, first - context), min(len(text), first + context)
    window = ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")
    return _mark_more(" ".join(window.split()), terms)


def _mark_more(snippet: str, terms: list[str]) -> str:
    for term in sorted(terms, key=len, reverse=True):
        out, folded, needle, i = [], snippet.lower(), term.lower(), 0
        while (j := folded.find(needle, i)) >= 0:
            out += [snippet[i:j], HIT_START, snippet[j : j + len(term)], HIT_END]
            i = j + len(term)
        snippet = "".join(out) + snippet[i:]
    return snippet


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
