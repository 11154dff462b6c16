"""Attaching files to the next message: an upload button, a chip per file with its token
count, and the check that the files fit the loaded model's context before the message
is sent (app/attachments.py reads the files and builds the message)."""

from __future__ import annotations

from html import escape
from pathlib import Path

import gradio as gr

from app.attachments import Attachment, check_fits, count_tokens, read_attachment
from app.context import AppContext
from app.i18n import Translator
from app.store import StoredMessage
from app.ui.conversations import ChatSession
from app.ui.labels import Key, Labels
from converters.core.errors import ItamaeError


def chips_html(attachments: list[Attachment], tr: Translator) -> str:
    return "".join(
        f'<span class="attachment-chip">📎 {escape(a.name)} '
        f'<span class="tokens">{escape(tr("chat.attachment_tokens", n=a.tokens))}</span></span>'
        for a in attachments
    )


class AttachmentsBar:
    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        self.button = labels(
            gr.UploadButton,
            label=Key("chat.attach"),
            file_count="multiple",
            size="sm",
            elem_id="attach",
            scale=0,
            min_width=110,
        )
        self.chips = gr.HTML("", elem_id="attachments")
        self.clear = labels(
            gr.Button,
            value=Key("chat.attach_clear"),
            size="sm",
            visible=False,
            elem_id="attach-clear",
            scale=0,
            min_width=110,
        )

    @property
    def outputs(self) -> list:
        return [self.chips, self.clear]

    def wire(self, session: gr.State, lang: gr.State) -> None:
        self.button.upload(self.on_upload, [self.button, session, lang], [*self.outputs, session])
        self.clear.click(self.on_clear, [session], [*self.outputs, session])

    def on_upload(self, files: list, session: ChatSession, lang: str):
        """Read and count each file; one that cannot be read, or cannot fit the context
        even alone, is refused with a warning."""
        tr = Translator(lang)
        backend = self.ctx.manager.backend
        for file in files or []:
            path = Path(getattr(file, "name", file))  # Gradio keeps the upload's own name
            try:
                attachment = read_attachment(path)
                if backend is not None:
                    count_tokens(attachment, backend.tokenize)
                    check_fits([attachment], 0, backend.info.context_length)
            except ItamaeError as e:
                gr.Warning(tr("chat.attach_failed", message=str(e)))
                continue
            session.attachments.append(attachment)
        chips = chips_html(session.attachments, tr)
        return chips, gr.update(visible=bool(session.attachments)), session

    def on_clear(self, session: ChatSession):
        session.attachments = []
        return "", gr.update(visible=False), session

    def check(self, session: ChatSession, history: list[StoredMessage], text: str, system: str):
        """Raise ItamaeError when the files, the conversation and the message together
        leave the model no room to answer."""
        backend = self.ctx.manager.backend
        if backend is None or not session.attachments:
            return
        context = "\n".join([system, *(m.content for m in history), text])
        used = len(backend.tokenize(context))
        check_fits(session.attachments, used, backend.info.context_length)
