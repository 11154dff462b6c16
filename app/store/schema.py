"""The conversation database's schema and its up-migrations.

`PRAGMA user_version` says which migrations a file has had. Opening a file runs the
missing ones in order, each in one IMMEDIATE transaction with its version bump, so a
process killed mid-migration leaves the file as it was, and two processes opening an
old file at once migrate it once (the second finds the new version under the lock).
Table rebuilds follow SQLite's procedure for changes ALTER TABLE cannot make
(https://sqlite.org/lang_altertable.html#otheralter): foreign keys off, new table, copy,
drop, rename, `foreign_key_check`, commit.

Version 1 is the schema the first release wrote (a flat list of messages per
conversation). Version 2 keeps a tree: each message names its parent, the conversation
names the leaf of the path it shows (`active_id`), and `visited` remembers which child
was shown last so switching back to a branch restores the path below it. Message text
is indexed by FTS5 with the trigram tokenizer (https://sqlite.org/fts5.html#the_trigram_tokenizer),
which finds any substring of three or more characters: English words and Japanese,
which has no spaces to split words at.
"""

from __future__ import annotations

import sqlite3

from app.store.records import StoreError

V1_TABLES = (
    """CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS messages (
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
)""",
    "CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, position)",
    "CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated DESC)",
)

# v1 -> v2: messages become a tree. `position` is now the depth (0 = first message);
# a v1 conversation becomes one path, each message the child of the one before it.
V2_TREE = (
    """CREATE TABLE messages_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content TEXT NOT NULL,
    finish_reason TEXT,
    stats TEXT,
    created REAL NOT NULL,
    visited REAL NOT NULL DEFAULT 0
)""",
    """INSERT INTO messages_v2 (id, conversation_id, parent_id, position, role, content,
       finish_reason, stats, created, visited)
    SELECT m.id, m.conversation_id,
        (SELECT p.id FROM messages p WHERE p.conversation_id = m.conversation_id
         AND p.position < m.position ORDER BY p.position DESC LIMIT 1),
        (SELECT COUNT(*) FROM messages p WHERE p.conversation_id = m.conversation_id
         AND p.position < m.position),
        m.role, m.content, m.finish_reason, m.stats, m.created, m.created
    FROM messages m""",
    "DROP TABLE messages",
    "ALTER TABLE messages_v2 RENAME TO messages",
    "CREATE INDEX messages_by_conversation ON messages (conversation_id, position)",
    "CREATE INDEX messages_by_parent ON messages (parent_id)",
    "ALTER TABLE conversations ADD COLUMN active_id INTEGER",
    """UPDATE conversations SET active_id = (SELECT m.id FROM messages m
       WHERE m.conversation_id = conversations.id ORDER BY m.position DESC LIMIT 1)""",
    """CREATE VIRTUAL TABLE messages_fts USING fts5(
       content, content='messages', content_rowid='id', tokenize='trigram')""",
    # External-content FTS stays in step through triggers (https://sqlite.org/fts5.html#external_content_tables);
    # they also fire for rows removed by ON DELETE CASCADE.
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
       INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
       INSERT INTO messages_fts (messages_fts, rowid, content)
       VALUES ('delete', old.id, old.content); END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
       INSERT INTO messages_fts (messages_fts, rowid, content)
       VALUES ('delete', old.id, old.content);
       INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END""",
    "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
)

# MIGRATIONS[n] takes a file from version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (V1_TABLES, V2_TREE)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, path) -> int:
    """Bring the file up to SCHEMA_VERSION; returns the version it had. `db` must be
    in autocommit mode (isolation_level=None) with no transaction open."""
    found = _version(db)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"The conversation database {path} was written by a newer Itamae "
            f"(schema {found}; this version knows up to {SCHEMA_VERSION}).",
            "Update Itamae, or set ITAMAE_HOME to another folder to use this version.",
        )
    if found == SCHEMA_VERSION:
        return found
    # Table rebuilds must not cascade deletes; the pragma is a no-op inside a transaction.
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        for version in range(found, SCHEMA_VERSION):
            _apply(db, version)
    finally:
        db.execute("PRAGMA foreign_keys=ON")
    return found


def _apply(db: sqlite3.Connection, version: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        if _version(db) == version:  # another process may have migrated meanwhile
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            broken = db.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StoreError(
                    f"Migrating the conversation database to schema {version + 1} left "
                    f"{len(broken)} messages without their conversation.",
                    "Nothing was changed; report this with a copy of the file.",
                )
            db.execute(f"PRAGMA user_version={version + 1}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]
