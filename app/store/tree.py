"""The message tree in SQL: inserting a message under its parent, the shown path
(`conversations.active_id`) and the rows the store turns into records. Every function
takes a connection inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time

from app.store.records import Conversation, StoredMessage, StoreError, path_to


def insert_conversation(db: sqlite3.Connection, conv: Conversation) -> None:
    db.execute(
        """INSERT INTO conversations (id, title, system_prompt, model, created, updated)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (conv.id, conv.title, conv.system_prompt, conv.model, conv.created, conv.updated),
    )


def insert_message(
    db: sqlite3.Connection,
    conversation_id: str,
    parent_id: int | None,
    role: str,
    content: str,
    finish_reason: str | None,
    stats: dict | None = None,
    created: float | None = None,
) -> StoredMessage:
    now = time.time()
    created = created or now
    position = 0
    if parent_id is not None:
        parent = message_row(db, parent_id)
        if parent["conversation_id"] != conversation_id:
            raise StoreError(f"Message {parent_id} is not in conversation {conversation_id}.", "")
        position = parent["position"] + 1
    try:
        cur = db.execute(
            """INSERT INTO messages (conversation_id, parent_id, position, role, content,
               finish_reason, stats, created, visited) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                conversation_id,
                parent_id,
                position,
                role,
                content,
                finish_reason,
                json_text(stats),
                created,
                now,
            ),
        )
    except sqlite3.IntegrityError as e:
        raise StoreError(
            f"Conversation {conversation_id} does not exist ({e}).",
            "It was deleted in another window; start a new chat.",
        ) from e
    set_active(db, conversation_id, cur.lastrowid, now)
    siblings = sibling_ids(db, conversation_id, parent_id)
    return StoredMessage(
        cur.lastrowid,
        conversation_id,
        position,
        role,
        content,
        finish_reason,
        stats,
        created,
        parent_id,
        siblings,
    )


def set_active(
    db: sqlite3.Connection, conversation_id: str, leaf_id: int | None, now: float | None = None
) -> None:
    """Make `leaf_id` the end of the shown path and mark the path visited, so that
    `switch` finds this branch again below any of its messages."""
    now = now or time.time()
    db.execute(
        """WITH RECURSIVE path(id) AS (SELECT ?1 UNION ALL
               SELECT m.parent_id FROM messages m JOIN path ON m.id = path.id
               WHERE m.parent_id IS NOT NULL)
           UPDATE messages SET visited = ?2 WHERE id IN path""",
        (leaf_id, now),
    )
    cur = db.execute(
        "UPDATE conversations SET active_id = ?, updated = ? WHERE id = ?",
        (leaf_id, now, conversation_id),
    )
    require_conversation(cur, conversation_id)


def active_id(db: sqlite3.Connection, conversation_id: str) -> int | None:
    row = db.execute(
        "SELECT active_id FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    return row[0] if row else None


def active_path(db: sqlite3.Connection, conversation_id: str) -> list[StoredMessage]:
    return path_to(tree(db, conversation_id), active_id(db, conversation_id))


def tree(db: sqlite3.Connection, conversation_id: str) -> list[StoredMessage]:
    rows = db.execute(
        "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
    ).fetchall()
    children: dict[int | None, list[int]] = {}
    for r in rows:
        children.setdefault(r["parent_id"], []).append(r["id"])
    return [message_record(r, tuple(children[r["parent_id"]])) for r in rows]


def sibling_ids(db: sqlite3.Connection, conversation_id: str, parent_id: int | None) -> tuple:
    rows = db.execute(
        "SELECT id FROM messages WHERE conversation_id = ? AND parent_id IS ? ORDER BY id",
        (conversation_id, parent_id),
    ).fetchall()
    return tuple(r[0] for r in rows)


def message_row(db: sqlite3.Connection, message_id: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise StoreError(
            f"Message {message_id} no longer exists.",
            "Its conversation was changed in another window; reload the page.",
        )
    return row


def json_text(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def require_conversation(cur: sqlite3.Cursor, conversation_id: str) -> None:
    if cur.rowcount == 0:
        raise StoreError(
            f"Conversation {conversation_id} does not exist.",
            "It was deleted in another window; pick another conversation.",
        )


def conversation_record(row: sqlite3.Row) -> Conversation:
    return Conversation(
        row["id"],
        row["title"],
        row["system_prompt"],
        row["model"],
        row["created"],
        row["updated"],
        row["active_id"],
    )


def message_record(row: sqlite3.Row, alternatives: tuple[int, ...]) -> StoredMessage:
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
        row["parent_id"],
        alternatives,
    )
