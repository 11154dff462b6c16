"""Saved conversations: one SQLite database under the user data dir.

Crash safety follows SQLite's own guidance (https://sqlite.org/wal.html,
https://sqlite.org/atomiccommit.html): write-ahead logging, every change in one
transaction, so a process killed at any instant (kill -9 while a reply streams)
leaves the database as of its last commit. A streaming reply is committed in pieces
as it grows, each piece replacing the row's text, so at most the last piece is lost
and nothing earlier is ever touched.

A conversation is a tree (app/store/schema.py): regenerating adds a sibling reply,
editing adds a sibling message, and `messages()` is the path from the first message to
the conversation's `active_id`, the only path the model sees. Several browser tabs (and
processes) may write at once: each operation opens its own connection, a message's
parent and depth are read inside an IMMEDIATE transaction (which takes the write lock
before reading), and every write names the conversation it belongs to.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.store import schema, search, tree
from app.store.records import (
    Conversation,
    ConversationExport,
    NewMessage,
    StoredMessage,
    StoreError,
    title_from_text,
)


class ConversationStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            # WAL is a property of the file; set once, every later connection uses it.
            db.execute("PRAGMA journal_mode=WAL")
            self.migrated_from = schema.migrate(db, self.path)

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
            tree.insert_conversation(db, conv)
        return conv

    def get(self, conversation_id: str) -> Conversation | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return tree.conversation_record(row) if row else None

    def conversations(self, query: str = "", limit: int = 500) -> list[Conversation]:
        """Most recently updated first; `query` matches titles and message text."""
        with self._connect() as db:
            if not query.strip():
                rows = db.execute(
                    "SELECT * FROM conversations ORDER BY updated DESC LIMIT ?", (limit,)
                ).fetchall()
                return [tree.conversation_record(r) for r in rows]
            ids = {hit.conversation_id for hit in search.search(db, query)}
            rows = db.execute("SELECT * FROM conversations ORDER BY updated DESC", ()).fetchall()
        return [tree.conversation_record(r) for r in rows if r["id"] in ids][:limit]

    def search(self, query: str, limit: int = 200) -> list[search.SearchHit]:
        """Hits with their snippets (app/store/search.py): titles first, then messages."""
        with self._connect() as db:
            return search.search(db, query, limit)

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
            tree.require_conversation(cur, conversation_id)

    def delete(self, conversation_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages ----------------------------------------------------------------------

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        """The path shown: from the first message to the conversation's active one."""
        with self._connect() as db:
            return tree.active_path(db, conversation_id)

    def append(
        self,
        conversation_id: str,
        role: str,
        content: str,
        finish_reason: str | None = None,
        stats: dict | None = None,
    ) -> StoredMessage:
        """Add a message after the active one and make it active. A user message is
        complete when written (pass finish_reason="stop"); a reply starts with None
        and is finished by `update`."""
        with self._transaction() as db:
            parent = tree.active_id(db, conversation_id)
            return tree.insert_message(
                db, conversation_id, parent, role, content, finish_reason, stats
            )

    def fork(self, message_id: int, content: str) -> StoredMessage:
        """Edit as a new branch: a sibling of `message_id` with the same role and new
        text becomes active; the original and everything after it stay reachable."""
        with self._transaction() as db:
            old = tree.message_row(db, message_id)
            return tree.insert_message(
                db, old["conversation_id"], old["parent_id"], old["role"], content, "stop"
            )

    def rewind(self, conversation_id: str, message_id: int | None) -> None:
        """Show the path ending at `message_id` (None: no message), e.g. a reply's
        parent before regenerating it; the messages after it are kept."""
        with self._transaction() as db:
            if (
                message_id is not None
                and tree.message_row(db, message_id)["conversation_id"] != conversation_id
            ):
                raise StoreError(f"Message {message_id} is not in this conversation.", "")
            tree.set_active(db, conversation_id, message_id)

    def switch(self, message_id: int) -> list[StoredMessage]:
        """Show the branch through `message_id`, down to the message last shown below
        it; returns the new path."""
        with self._transaction() as db:
            conversation_id = tree.message_row(db, message_id)["conversation_id"]
            leaf = message_id
            while child := db.execute(
                "SELECT id FROM messages WHERE parent_id = ? ORDER BY visited DESC, id DESC",
                (leaf,),
            ).fetchone():
                leaf = child[0]
            tree.set_active(db, conversation_id, leaf)
            return tree.active_path(db, conversation_id)

    def update(
        self,
        message_id: int,
        content: str,
        finish_reason: str | None = None,
        stats: dict | None = None,
    ) -> None:
        """Replace a message's text (a growing reply) in one transaction."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE messages SET content = ?, finish_reason = ?, stats = ? WHERE id = ?",
                (content, finish_reason, tree.json_text(stats), message_id),
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
        """Delete the shown path from `position` on, with every branch below it."""
        with self._transaction() as db:
            path = tree.active_path(db, conversation_id)
            if position >= len(path):
                return
            db.execute("DELETE FROM messages WHERE id = ?", (path[position].id,))
            tree.set_active(db, conversation_id, path[position].parent_id)

    # -- whole trees -------------------------------------------------------------------

    def export(self, conversation_id: str) -> ConversationExport:
        """The conversation with every message of every branch, parents first."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"Conversation {conversation_id} does not exist.", "")
            return ConversationExport(tree.conversation_record(row), tree.tree(db, conversation_id))

    def insert_conversation(
        self, conv: Conversation, messages: list[NewMessage], active_key: str | None
    ) -> Conversation:
        """Store a whole tree at once (an import): one transaction, new ids, parents
        before children. `conv.id` is replaced; the path to `active_key` is shown."""
        conv = Conversation(
            uuid.uuid4().hex,
            title_from_text(conv.title) or "…",
            conv.system_prompt,
            conv.model,
            conv.created,
            conv.updated,
        )
        with self._transaction() as db:
            tree.insert_conversation(db, conv)
            rows: dict[str, StoredMessage] = {}
            for m in messages:
                parent = rows[m.parent_key].id if m.parent_key is not None else None
                rows[m.key] = tree.insert_message(
                    db,
                    conv.id,
                    parent,
                    m.role,
                    m.content,
                    m.finish_reason,
                    m.stats,
                    m.created or conv.created,
                )
            active = rows[active_key].id if active_key in rows else None
            tree.set_active(db, conv.id, active, conv.updated)
        conv.active_id = active
        return conv

    def check(self) -> str:
        """SQLite's own integrity check: "ok" when the file is sound."""
        with self._connect() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]
