"""Saved conversations (SQLite under the user data dir): the store, its records, its
schema migrations, search and export. `from app.store import ConversationStore` is the
way in; the rooms are conversations (the store's operations), tree (the message tree in
SQL), schema (versions and up-migrations), search (FTS5) and export (files)."""

from app.store.conversations import ConversationStore
from app.store.export import export_json, export_markdown
from app.store.records import (
    TITLE_CHARS,
    Conversation,
    ConversationExport,
    NewMessage,
    StoredMessage,
    StoreError,
    path_to,
    title_from_text,
)
from app.store.schema import SCHEMA_VERSION
from app.store.search import SearchHit, snippet_html

__all__ = [
    "SCHEMA_VERSION",
    "TITLE_CHARS",
    "Conversation",
    "ConversationExport",
    "ConversationStore",
    "NewMessage",
    "SearchHit",
    "StoreError",
    "StoredMessage",
    "export_json",
    "export_markdown",
    "path_to",
    "snippet_html",
    "title_from_text",
]
