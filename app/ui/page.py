"""The Gradio page: the header (app/ui/header.py), the conversation sidebar, and one tab
per module of app/ui (chat, models, convert, settings).

Each tab is a class whose __init__ builds its components and whose event handlers are
methods, wired in its `wire(...)`: text-generation-webui's one module per tab, with the
components typed attributes instead of a dict looked up by name. What a browser tab owns
(its open conversation, its language) is in gr.State; everything shared (the model, the
store, settings) comes in through `AppContext`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.context import AppContext
from app.i18n import Translator, normalize, pick_language
from app.ui.chat import ChatTab
from app.ui.chat_controls import preset_choices
from app.ui.chat_sampling import preset_choices as sampling_presets
from app.ui.conversations import ChatSession, ConversationsSidebar
from app.ui.convert import ConvertTab
from app.ui.header import Header
from app.ui.labels import Key, Labels
from app.ui.library_view import library_update
from app.ui.models import ModelsTab
from app.ui.settings import SettingsTab

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def theme() -> gr.themes.Base:
    # System and Noto fonts only: the default theme would fetch Google Fonts, and
    # Itamae must work offline. Noto Sans CJK JP makes Japanese look right on Linux.
    fonts = ["Inter", "Noto Sans", "Noto Sans CJK JP", "Hiragino Sans", "Yu Gothic UI"]
    fonts += ["system-ui", "sans-serif"]
    mono = ["JetBrains Mono", "Noto Sans Mono", "ui-monospace", "monospace"]
    return gr.themes.Soft(
        primary_hue="indigo", secondary_hue="slate", neutral_hue="slate", font=fonts, font_mono=mono
    )


def css() -> str:
    return (ASSETS / "itamae.css").read_text(encoding="utf-8")


def build_ui(ctx: AppContext, labels: Labels | None = None) -> gr.Blocks:
    with gr.Blocks(title="Itamae", fill_width=True, analytics_enabled=False) as blocks:
        Page(ctx, labels or Labels()).wire(blocks)
    return blocks


class Page:
    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        self.labels = labels
        self.lang = gr.State("en")
        self.lang_pref = gr.BrowserState("", storage_key="itamae-language")
        self.session = gr.State(ChatSession())
        self.sidebar = ConversationsSidebar(ctx, labels)
        self.header = Header(ctx, labels.tr)
        with gr.Tabs(elem_id="tabs") as self.tabs:
            with labels(gr.Tab, label=Key("tab.chat"), id="chat", elem_id="tab-chat"):
                self.chat = ChatTab(ctx, labels)
            tab = {"label": Key("tab.models"), "id": "models", "elem_id": "tab-models"}
            with labels(gr.Tab, **tab) as self.models_tab:
                self.models = ModelsTab(ctx, labels)
            tab = {"label": Key("tab.convert"), "id": "convert", "elem_id": "tab-convert"}
            with labels(gr.Tab, **tab) as self.convert_tab:
                self.convert = ConvertTab(ctx, labels)
            with labels(gr.Tab, label=Key("tab.settings"), id="settings", elem_id="tab-settings"):
                self.settings = SettingsTab(ctx, labels)

    def wire(self, blocks: gr.Blocks) -> None:
        lang, session = self.lang, self.session
        chat_outputs = self.chat.open_outputs(session)
        self.sidebar.wire(session, lang, chat_outputs, self.chat.open_conversation)
        self.chat.wire(session, lang, self.sidebar)
        self.models.wire(lang, self.tabs)
        self.convert.wire(lang, self.models.library)
        self.settings.wire(lang)
        controls = self.chat.controls
        self.header.wire(lang, controls.experts_per_token, self.models.library, controls.sampling)
        # A fresh look at the disk whenever a tab that lists models is opened (also, a
        # table filled while its tab was hidden is only drawn right when redrawn visible).
        hidden = {"show_progress": "hidden"}
        self.models_tab.select(self.on_models_tab, [lang], [self.models.library], **hidden)
        self.convert_tab.select(self.on_convert_tab, [lang], [self.convert.source], **hidden)
        # The language: the browser's, unless the person chose one with the switch.
        relabelled = self.relabel_outputs()
        blocks.load(
            self.on_load,
            [self.lang_pref, session],
            [*relabelled, self.sidebar.conversations],
            **hidden,
        )
        self.header.language.input(
            self.on_switch, [self.header.language, session], [*relabelled, self.lang_pref]
        )

    def on_models_tab(self, code: str):
        return library_update(self.ctx, Translator(code))

    def on_convert_tab(self, code: str):
        return self.convert.translated_values(Translator(code))[0]

    # -- language ------------------------------------------------------------------

    def relabel_outputs(self) -> list:
        return [
            self.lang,
            self.header.language,
            *self.labels.components,
            *self.chat.open_outputs(self.session),
            self.chat.controls.preset,
            self.chat.controls.sampling.preset,
            *self.chat.controls.sampling.outputs,
            self.header.status,
            *self.models.translated_outputs,
            *self.convert.translated_outputs,
        ]

    def relabel(self, session: ChatSession, code: str) -> list:
        """Values for `relabel_outputs`: every label and text in language `code`."""
        tr = Translator(code)
        return [
            code,
            code,
            *self.labels.updates(code),
            *self.chat.open_conversation(session, session.conversation_id, code),
            gr.update(choices=preset_choices(self.ctx, tr)),
            gr.update(choices=sampling_presets(self.ctx, tr)),
            *self.chat.controls.sampling.values(tr),  # before a first message can be sent
            self.header.current(tr),
            *self.models.translated_values(tr),
            *self.convert.translated_values(tr),
        ]

    def on_load(self, saved: str, session: ChatSession, request: gr.Request):
        header = request.headers.get("accept-language") if request else None
        code = normalize(saved) if saved else pick_language(header)
        return [*self.relabel(session, code), self.sidebar.listing(session)]

    def on_switch(self, code: str, session: ChatSession):
        return [*self.relabel(session, code), code]
