"""A conversation as a file: Itamae's JSON (the whole tree, read back by
app/conversation_import.py) and Markdown (the path shown, for reading)."""

from __future__ import annotations

import json

from app.store.records import ConversationExport

EXPORT_FORMAT = "itamae.conversation"
EXPORT_VERSION = 2  # 1: a flat "messages" list without ids (the first release)


def export_json(data: ConversationExport) -> str:
    """Every message of every branch in "messages", parents first, each with its "id"
    and "parent_id"; "active_id" names the last message of the path shown."""
    conv = data.conversation
    return json.dumps(
        {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "id": conv.id,
            "title": conv.title,
            "system_prompt": conv.system_prompt,
            "model": conv.model,
            "created": conv.created,
            "updated": conv.updated,
            "active_id": conv.active_id,
            "messages": [
                {
                    "id": m.id,
                    "parent_id": m.parent_id,
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
    for m in data.path:
        parts += [f"## {names.get(m.role, m.role)}", "", m.content.strip(), ""]
    return "\n".join(parts).rstrip() + "\n"
