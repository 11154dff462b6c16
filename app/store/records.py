"""What the conversation store holds and returns: plain dataclasses, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field

from converters.core.errors import ItamaeError

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
    active_id: int | None = None  # the last message of the path shown


@dataclass
class StoredMessage:
    id: int
    conversation_id: str
    position: int  # depth in the tree: 0 is a first message
    role: str
    content: str
    finish_reason: str | None = None
    stats: dict | None = None
    created: float = 0.0
    parent_id: int | None = None
    # The ids of this message and its siblings (the same parent), oldest first: the
    # alternatives a "2 / 3" control steps through.
    alternatives: tuple[int, ...] = ()

    @property
    def interrupted(self) -> bool:
        """A reply whose writer died before it finished (the process was killed)."""
        return self.role == "assistant" and self.finish_reason is None


@dataclass
class ConversationExport:
    conversation: Conversation
    messages: list[StoredMessage] = field(default_factory=list)  # the whole tree, parents first

    @property
    def path(self) -> list[StoredMessage]:
        """The messages of the path the conversation shows."""
        return path_to(self.messages, self.conversation.active_id)


@dataclass
class NewMessage:
    """A message to insert with `insert_conversation`: `key` and `parent_key` are the
    source's own ids (an import's), mapped to new rows."""

    key: str
    parent_key: str | None
    role: str
    content: str
    created: float = 0.0
    finish_reason: str | None = "stop"
    stats: dict | None = None


def title_from_text(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def path_to(messages: list[StoredMessage], leaf_id: int | None) -> list[StoredMessage]:
    by_id = {m.id: m for m in messages}
    path, node = [], by_id.get(leaf_id)
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id)
    return path[::-1]
