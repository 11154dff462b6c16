"""Conversations from files: Itamae's own JSON export, ChatGPT's data export and
Open WebUI's chat export, each with its branches.

Formats, as their writers produce them:
- Itamae (app/store/export.py): one object with "messages"; version 2 gives each message
  "id" and "parent_id" and names the shown leaf in "active_id", version 1 (the first
  release) is a flat list, one path.
- ChatGPT (Settings > Data controls > Export data, `conversations.json`): a list of
  conversations, each a "mapping" of node id -> {"message", "parent", "children"}, the
  message with "author": {"role"} and "content": {"content_type", "parts"}, and
  "current_node" the leaf the person last saw. The root node has no message, the system
  node is usually empty and hidden, and tool calls, browsing and images are nodes of
  their own; those are left out and their children hang from the nearest kept message.
- Open WebUI (a chat's menu > Download > Export chat (.json), or Settings > Chats >
  Export): a list of chat records {"title", "chat": {"history": {"messages": id ->
  {"parentId", "childrenIds", "role", "content", "timestamp"}, "currentId"}}, ...};
  records without "history" (old versions) carry a flat "messages" list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.store import Conversation, ConversationStore, NewMessage
from app.store.export import EXPORT_FORMAT
from converters.core.errors import ItamaeError

ROLES = ("user", "assistant")  # what a stored path holds; a system message becomes the prompt


@dataclass
class ImportedConversation:
    conversation: Conversation  # title, system prompt, model, times; the id is replaced
    messages: list[NewMessage] = field(default_factory=list)  # parents first
    active_key: str | None = None


@dataclass
class _Node:
    """One message of a source tree; `message` None for nodes that are left out."""

    parent: str | None
    children: list[str]
    message: NewMessage | None


def import_file(store: ConversationStore, path: Path | str) -> list[Conversation]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ItamaeError(f"{path.name} could not be read ({e}).", _HINT) from e
    return [
        store.insert_conversation(c.conversation, c.messages, c.active_key)
        for c in parse_export(text, path.name)
    ]


def parse_export(text: str, name: str = "the file") -> list[ImportedConversation]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ItamaeError(f"{name} is not JSON ({e}).", _HINT) from e
    records = data if isinstance(data, list) else [data]
    out = [_parse_record(r, name) for r in records if isinstance(r, dict)]
    if not out:
        raise ItamaeError(f"{name} holds no conversations.", _HINT)
    return out


_HINT = (
    "Import a conversation exported from Itamae (JSON), ChatGPT's conversations.json "
    "(from its data export) or an Open WebUI chat export (.json)."
)


def _parse_record(record: dict, name: str) -> ImportedConversation:
    if isinstance(record.get("mapping"), dict):
        return _chatgpt(record)
    if isinstance(record.get("chat"), dict) or isinstance(record.get("history"), dict):
        return _open_webui(record)
    if record.get("format") == EXPORT_FORMAT or isinstance(record.get("messages"), list):
        return _itamae(record)
    raise ItamaeError(f"{name} is not a conversation export this version knows.", _HINT)


# -- Itamae ----------------------------------------------------------------------------


def _itamae(record: dict) -> ImportedConversation:
    nodes: dict[str, _Node] = {}
    previous = None
    for i, m in enumerate(_dicts(record.get("messages"))):
        # Version 1 has no ids: each message follows the one before it.
        key = str(m["id"]) if "id" in m else f"#{i}"
        parent = m.get("parent_id", previous) if "id" in m else previous
        parent = None if parent is None else str(parent)
        message = _message(key, parent, m.get("role"), m.get("content"), m.get("created"))
        if message is not None:
            message.finish_reason = m.get("finish_reason") or "stop"
            message.stats = m.get("stats") if isinstance(m.get("stats"), dict) else None
        nodes[key] = _Node(parent, [], message)
        previous = key
    _link_children(nodes)
    active = record.get("active_id", previous) if "active_id" in record else previous
    return _conversation(
        record.get("title"),
        record.get("system_prompt"),
        record.get("model"),
        record.get("created"),
        record.get("updated"),
        nodes,
        None if active is None else str(active),
    )


# -- ChatGPT ---------------------------------------------------------------------------


def _chatgpt(record: dict) -> ImportedConversation:
    nodes: dict[str, _Node] = {}
    system_prompt = ""
    for key, node in record["mapping"].items():
        if not isinstance(node, dict):
            continue
        raw = node.get("message") if isinstance(node.get("message"), dict) else {}
        role = (raw.get("author") or {}).get("role")
        text = _chatgpt_text(raw.get("content") or {})
        if role == "system" and text and not system_prompt:
            system_prompt = text
        message = _message(str(key), node.get("parent"), role, text, raw.get("create_time"))
        children = [str(c) for c in node.get("children") or []]
        nodes[str(key)] = _Node(_key(node.get("parent")), children, message)
    return _conversation(
        record.get("title"),
        system_prompt,
        record.get("default_model_slug"),
        record.get("create_time"),
        record.get("update_time"),
        nodes,
        _key(record.get("current_node")),
    )


def _chatgpt_text(content: dict) -> str:
    """The text of "text" and "multimodal_text" parts (images and files are dicts);
    code, tool output and reasoning summaries are not part of what was said."""
    if content.get("content_type") not in ("text", "multimodal_text"):
        return ""
    parts = [p for p in content.get("parts") or [] if isinstance(p, str)]
    return "\n".join(parts).strip()


# -- Open WebUI ------------------------------------------------------------------------


def _open_webui(record: dict) -> ImportedConversation:
    chat = record.get("chat") if isinstance(record.get("chat"), dict) else record
    history = chat.get("history") if isinstance(chat.get("history"), dict) else {}
    raw_messages = history.get("messages")
    nodes: dict[str, _Node] = {}
    if isinstance(raw_messages, dict):
        for key, m in raw_messages.items():
            if isinstance(m, dict):
                parent = _key(m.get("parentId"))
                message = _message(
                    str(key), parent, m.get("role"), m.get("content"), m.get("timestamp")
                )
                children = [str(c) for c in m.get("childrenIds") or []]
                nodes[str(key)] = _Node(parent, children, message)
        active = _key(history.get("currentId"))
    else:  # before branches were kept: the shown messages in order
        previous = None
        for i, m in enumerate(_dicts(chat.get("messages"))):
            key = f"#{i}"
            message = _message(key, previous, m.get("role"), m.get("content"), m.get("timestamp"))
            nodes[key] = _Node(previous, [], message)
            previous = key
        _link_children(nodes)
        active = previous
    models = chat.get("models") if isinstance(chat.get("models"), list) else []
    return _conversation(
        record.get("title") or chat.get("title"),
        chat.get("system"),
        models[0] if models else "",
        record.get("created_at") or _seconds(chat.get("timestamp")),
        record.get("updated_at"),
        nodes,
        active,
    )


# -- shared ----------------------------------------------------------------------------


def _conversation(
    title, system_prompt, model, created, updated, nodes, active
) -> ImportedConversation:
    messages, kept_for = _parents_first(nodes)
    if not messages:
        raise ItamaeError(f"The conversation {title!r} has no messages to import.", _HINT)
    created = _seconds(created) or min(m.created for m in messages) or time.time()
    updated = _seconds(updated) or created
    conv = Conversation(
        "", str(title or messages[0].content), _text(system_prompt), _text(model), created, updated
    )
    active_key = kept_for.get(active) if active is not None else None
    if active_key is None:  # no leaf named: the last message written
        active_key = messages[-1].key
    return ImportedConversation(conv, messages, active_key)


def _parents_first(nodes: dict[str, _Node]) -> tuple[list[NewMessage], dict[str, str | None]]:
    """Kept messages in depth-first order (children in the source's order), each hung
    from its nearest kept ancestor; and for every node, the kept message it maps to."""
    roots = [k for k, n in nodes.items() if n.parent is None or n.parent not in nodes]
    out: list[NewMessage] = []
    kept_for: dict[str, str | None] = {}
    stack: list[tuple[str, str | None]] = [(k, None) for k in reversed(roots)]
    while stack:
        key, kept_parent = stack.pop()
        if key in kept_for or key not in nodes:
            continue  # a node reached twice (a cycle or a duplicate child) is taken once
        node = nodes[key]
        if node.message is not None:
            node.message.parent_key = kept_parent
            out.append(node.message)
            kept_parent = key
        kept_for[key] = kept_parent
        stack.extend((c, kept_parent) for c in reversed(node.children))
    return out, kept_for


def _link_children(nodes: dict[str, _Node]) -> None:
    for key, node in nodes.items():
        if node.parent in nodes:
            nodes[node.parent].children.append(key)


def _message(key: str, parent, role, content, created) -> NewMessage | None:
    text = _text(content)
    if role not in ROLES or not text.strip():
        return None
    return NewMessage(key, _key(parent), role, text, _seconds(created) or 0.0)


def _dicts(items) -> Iterable[dict]:
    return [m for m in items or [] if isinstance(m, dict)]


def _key(value) -> str | None:
    return None if value is None else str(value)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _seconds(value) -> float:
    """Unix seconds from seconds or milliseconds (Open WebUI's chat timestamp)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return 0.0
    return float(value) / 1000 if value > 1e11 else float(value)
