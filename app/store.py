"""Saved conversations: one SQLite database under the user data dir.

Crash safety follows SQLite's own guidance (https://sqlite.org/wal.html,
https://sqlite.org/atomiccommit.html): write-ahead logging, every change in one
transaction, so a process killed at any instant (kill -9 while a reply streams)
leaves the database as of its last commit. A streaming reply is committed in pieces
as it grows, each piece replacing the row's text, so at most the last piece is lost
and nothing earlier is ever touched.

Several browser tabs (and processes) may write at once: each operation opens its own
connection, positions inside a conversation are assigned inside an IMMEDIATE
transaction (which takes the write lock before reading), and every write names the
conversation it belongs to, so two tabs never write into each other's conversations.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from converters.core.errors import ItamaeError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content TEXT NOT NULL,
    -- NULL while a reply is still streaming; "stop" | "length" | "cancelled" | "error"
    finish_reason TEXT,
    stats TEXT,
    created REAL NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, position);
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated DESC);
"""

TITLE_CHARS = 60  # a title made from the first message is cut here (one sidebar line)


class StoreError(ItamaeError):
    pass


@dataclass
class Conversation:
    id: str
    title: str
    system_prompt: str = ""
    model: str = ""
    created: float = 0.0
    updated: float = 0.0


@dataclass
class StoredMessage:
    id: int
    conversation_id: str
    position: int
    role: str
    content: str
    finish_reason: str | None = None
    stats: dict | None = None
    created: float = 0.0

    @property
    def interrupted(self) -> bool:
        """A reply whose writer died before it finished (the process was killed)."""
        return self.role == "assistant" and self.finish_reason is None


@dataclass
class ConversationExport:
    conversation: Conversation
    messages: list[StoredMessage] = field(default_factory=list)


def title_from_text(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


class ConversationStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            # WAL is a property of the file; set once, every later connection uses it.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per operation: Gradio runs handlers on a thread pool, and a
        # connection must not cross threads. Opening one costs tens of microseconds.
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            # NORMAL in WAL mode survives a killed process (not a power cut mid-commit),
            # which is the failure a desktop app sees; FULL would fsync on every piece.
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"The conversation database {self.path} could not be used ({e}).",
                "Close other Itamae windows; if the file is damaged, move it away to start fresh.",
            ) from e
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- conversations -----------------------------------------------------------------

    def create(self, title: str = "", system_prompt: str = "", model: str = "") -> Conversation:
        now = time.time()
        conv = Conversation(
            uuid.uuid4().hex, title_from_text(title), system_prompt, model, now, now
        )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (conv.id, conv.title, conv.system_prompt, conv.model, now, now),
            )
        return conv

    def get(self, conversation_id: str) -> Conversation | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return _conversation(row) if row else None

    def conversations(self, query: str = "", limit: int = 500) -> list[Conversation]:
        """Most recently updated first; `query` matches titles and message text."""
        with self._connect() as db:
            if not query.strip():
                rows = db.execute(
                    "SELECT * FROM conversations ORDER BY updated DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                pattern = "%" + _escape_like(query.strip()) + "%"
                rows = db.execute(
                    """SELECT * FROM conversations c WHERE c.title LIKE ?1 ESCAPE '\\'
                       OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                                  AND m.content LIKE ?1 ESCAPE '\\')
                       ORDER BY updated DESC LIMIT ?2""",
                    (pattern, limit),
                ).fetchall()
        return [_conversation(r) for r in rows]

    def rename(self, conversation_id: str, title: str) -> None:
        title = title_from_text(title)
        if not title:
            raise StoreError("A conversation needs a title.", "Type a name and try again.")
        self._update_conversation(conversation_id, "title", title)

    def set_system_prompt(self, conversation_id: str, text: str) -> None:
        self._update_conversation(conversation_id, "system_prompt", text)

    def set_model(self, conversation_id: str, model: str) -> None:
        self._update_conversation(conversation_id, "model", model)

    def _update_conversation(self, conversation_id: str, column: str, value: str) -> None:
        with self._transaction() as db:
            cur = db.execute(
                f"UPDATE conversations SET {column} = ?, updated = ? WHERE id = ?",
                (value, time.time(), conversation_id),
            )
            _require_row(cur, conversation_id)

    def delete(self, conversation_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages ----------------------------------------------------------------------

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return [_message(r) for r in rows]

    def append(
        self,
        conversation_id: str,
        role: str,
        content: str,
        finish_reason: str | None = None,
        stats: dict | None = None,
    ) -> StoredMessage:
        """Add a message at the end of the conversation. A user message is complete when
        written (pass finish_reason="stop"); a reply starts with None and is finished
        by `update`."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            position = row[0]
            try:
                cur = db.execute(
                    """INSERT INTO messages (conversation_id, position, role, content,
                       finish_reason, stats, created) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    (conversation_id, position, role, content, finish_reason, _json(stats), now),
                )
            except sqlite3.IntegrityError as e:
                raise StoreError(
                    f"Conversation {conversation_id} does not exist ({e}).",
                    "It was deleted in another window; start a new chat.",
                ) from e
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return StoredMessage(
            cur.lastrowid, conversation_id, position, role, content, finish_reason, stats, now
        )

    def update(
        self,
        message_id: int,
        content: str,
        finish_reason: str | None = None,
        stats: dict | None = None,
    ) -> None:
        """Replace a message's text (a growing reply, or an edit) in one transaction."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE messages SET content = ?, finish_reason = ?, stats = ? WHERE id = ?",
                (content, finish_reason, _json(stats), message_id),
            )
            if cur.rowcount == 0:
                raise StoreError(
                    f"Message {message_id} no longer exists.",
                    "Its conversation was changed in another window; reload the page.",
                )
            db.execute(
                """UPDATE conversations SET updated = ? WHERE id =
                   (SELECT conversation_id FROM messages WHERE id = ?)""",
                (time.time(), message_id),
            )

    def truncate(self, conversation_id: str, position: int) -> None:
        """Delete messages from `position` on (regenerate, or edit and resend)."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                (conversation_id, position),
            )
            db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id)
            )

    # -- export ------------------------------------------------------------------------

    def export(self, conversation_id: str) -> ConversationExport:
        conv = self.get(conversation_id)
        if conv is None:
            raise StoreError(f"Conversation {conversation_id} does not exist.", "")
        return ConversationExport(conv, self.messages(conversation_id))

    def check(self) -> str:
        """SQLite's own integrity check: "ok" when the file is sound."""
        with self._connect() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]


def export_json(data: ConversationExport) -> str:
    conv = data.conversation
    return json.dumps(
        {
            "id": conv.id,
            "title": conv.title,
            "system_prompt": conv.system_prompt,
            "model": conv.model,
            "created": conv.created,
            "updated": conv.updated,
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "finish_reason": m.finish_reason,
                    "stats": m.stats,
                    "created": m.created,
                }
                for m in data.messages
            ],
        },
        ensure_ascii=False,
        indent=2,
    )


def export_markdown(data: ConversationExport, role_names: dict[str, str] | None = None) -> str:
    names = {"user": "User", "assistant": "Assistant", "system": "System"} | (role_names or {})
    conv = data.conversation
    parts = [f"# {conv.title}", ""]
    if conv.model:
        parts += [f"*{conv.model}*", ""]
    if conv.system_prompt:
        parts += [f"**{names['system']}:** {conv.system_prompt}", ""]
    for m in data.messages:
        parts += [f"## {names.get(m.role, m.role)}", "", m.content.strip(), ""]
    return "\n".join(parts).rstrip() + "\n"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _require_row(cur: sqlite3.Cursor, conversation_id: str) -> None:
    if cur.rowcount == 0:
        raise StoreError(
            f"Conversation {conversation_id} does not exist.",
            "It was deleted in another window; pick another conversation.",
        )


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        row["id"], row["title"], row["system_prompt"], row["model"], row["created"], row["updated"]
    )


def _message(row: sqlite3.Row) -> StoredMessage:
    stats = json.loads(row["stats"]) if row["stats"] else None
    return StoredMessage(
        row["id"],
        row["conversation_id"],
        row["position"],
        row["role"],
        row["content"],
        row["finish_reason"],
        stats,
        row["created"],
    )
