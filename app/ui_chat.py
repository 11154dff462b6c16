"""The chat tab: streamed replies, stop, regenerate, edit and resend, system prompt
presets, sampling parameters, the experts-per-token knob, and expert usage.

Streaming goes through generators end to end (the text-generation-webui way):
`ModelManager.stream` yields events, app/chat_reply.py saves the reply as it grows,
and the handlers here yield Chatbot updates. Stop sets the tab's own cancel Event,
which the backend checks at every token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import gradio as gr

from app import expert_heatmap
from app.chat_reply import ChatParams, model_unavailable, stream_reply
from app.chat_view import to_chatbot
from app.context import AppContext
from app.i18n import Key, Labels, Translator
from app.ui_conversations import ChatSession, list_update

SHOW_EVERY_S = 0.05  # screen updates: smooth to the eye, cheap for the websocket
BUILTIN_PRESETS = ("assistant", "concise", "translator", "reasoning")


@dataclass
class ChatUI:
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    preset: gr.Dropdown
    system_prompt: gr.Textbox
    preset_name: gr.Textbox
    save_preset: gr.Button
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    min_p: gr.Slider
    repeat_penalty: gr.Slider
    max_tokens: gr.Slider
    seed: gr.Number
    experts_per_token: gr.Slider
    heatmap: gr.HTML

    @property
    def params(self) -> list:
        """The inputs every generation reads, in `ChatParams` order."""
        return [
            self.system_prompt,
            self.temperature,
            self.top_p,
            self.top_k,
            self.min_p,
            self.repeat_penalty,
            self.max_tokens,
            self.seed,
            self.experts_per_token,
        ]


def preset_choices(ctx: AppContext, tr: Translator) -> list[tuple[str, str]]:
    builtin = [(tr(f"preset.{name}.name"), f"builtin:{name}") for name in BUILTIN_PRESETS]
    saved = [(name, f"saved:{name}") for name in sorted(ctx.settings.load().system_presets)]
    return builtin + saved


def preset_text(ctx: AppContext, preset: str | None, tr: Translator) -> str | None:
    if not preset:
        return None
    kind, _, name = preset.partition(":")
    if kind == "builtin":
        return tr(f"preset.{name}.prompt")
    return ctx.settings.load().system_presets.get(name)


def create_ui(ctx: AppContext, labels: Labels) -> ChatUI:
    defaults = ctx.settings.load().sampling
    with gr.Row(elem_id="chat-row", equal_height=False):
        with gr.Column(scale=4, min_width=420, elem_id="chat-column"):
            chatbot = labels(
                gr.Chatbot,
                label=Key("chat.label"),
                placeholder=Key("chat.placeholder"),
                show_label=False,
                elem_id="chatbot",
                height="64vh",
                editable="user",
                buttons=["copy", "copy_all"],
                feedback_options=None,
                group_consecutive_messages=True,
                avatar_images=(None, "assets/icon.svg"),
                latex_delimiters=[],
            )
            with gr.Row(elem_id="composer", equal_height=True):
                message = labels(
                    gr.Textbox,
                    placeholder=Key("chat.input"),
                    show_label=False,
                    container=False,
                    lines=1,  # Gradio submits on Enter only for one-line boxes; it still grows
                    max_lines=8,
                    scale=8,
                    autofocus=True,
                    elem_id="message",
                )
                send = labels(
                    gr.Button, value=Key("chat.send"), variant="primary", elem_id="send",
                    scale=1, min_width=110,
                )  # fmt: skip
                stop = labels(
                    gr.Button, value=Key("chat.stop"), variant="stop", visible=False,
                    elem_id="stop", scale=1, min_width=110,
                )  # fmt: skip
            with gr.Row(elem_id="chat-actions"):
                regenerate = labels(
                    gr.Button, value=Key("chat.regenerate"), size="sm", elem_id="regenerate",
                    scale=0, min_width=140,
                )  # fmt: skip
        with gr.Column(scale=1, min_width=280, elem_id="chat-settings"):
            with labels(gr.Accordion, label=Key("chat.experts"), open=True, elem_id="experts"):
                experts_per_token = labels(
                    gr.Slider,
                    0,
                    16,
                    0,
                    step=1,
                    label=Key("chat.experts_per_token"),
                    info=Key("chat.experts_info"),
                    elem_id="experts-per-token",
                )
                heatmap = gr.HTML(expert_heatmap.render(None, labels.tr), elem_id="expert-heatmap")
            with labels(gr.Accordion, label=Key("chat.system"), open=True):
                preset = labels(
                    gr.Dropdown,
                    label=Key("chat.preset"),
                    choices=preset_choices(ctx, labels.tr),
                    value=None,
                    elem_id="preset",
                )
                system_prompt = labels(
                    gr.Textbox,
                    label=Key("chat.system_prompt"),
                    placeholder=Key("chat.system_placeholder"),
                    lines=3,
                    max_lines=10,
                    elem_id="system-prompt",
                )
                with gr.Row(equal_height=True):
                    preset_name = labels(
                        gr.Textbox,
                        placeholder=Key("chat.preset_name"),
                        show_label=False,
                        container=False,
                        scale=3,
                    )
                    save_preset = labels(
                        gr.Button, value=Key("chat.save_preset"), size="sm", scale=1
                    )
            with labels(gr.Accordion, label=Key("chat.sampling"), open=False, elem_id="sampling"):
                temperature = labels(
                    gr.Slider, 0, 2, defaults.temperature, step=0.05, label=Key("chat.temperature")
                )
                top_p = labels(
                    gr.Slider, 0.05, 1, defaults.top_p, step=0.01, label=Key("chat.top_p")
                )
                top_k = labels(
                    gr.Slider,
                    0,
                    200,
                    defaults.top_k,
                    step=1,
                    label=Key("chat.top_k"),
                    info=Key("chat.zero_off"),
                )
                min_p = labels(
                    gr.Slider, 0, 0.5, defaults.min_p, step=0.01, label=Key("chat.min_p")
                )
                repeat_penalty = labels(
                    gr.Slider,
                    1,
                    2,
                    defaults.repeat_penalty,
                    step=0.01,
                    label=Key("chat.repeat_penalty"),
                )
                max_tokens = labels(
                    gr.Slider,
                    16,
                    8192,
                    defaults.max_tokens,
                    step=16,
                    label=Key("chat.max_tokens"),
                    elem_id="max-tokens",
                )
                seed = labels(
                    gr.Number,
                    value=-1,
                    precision=0,
                    label=Key("chat.seed"),
                    info=Key("chat.seed_info"),
                )
    return ChatUI(
        chatbot, message, send, stop, regenerate, preset, system_prompt, preset_name, save_preset,
        temperature, top_p, top_k, min_p, repeat_penalty, max_tokens, seed, experts_per_token, heatmap,
    )  # fmt: skip


# -- opening a conversation ---------------------------------------------------------------


def open_conversation(
    ctx: AppContext, session: ChatSession, conversation_id: str | None, lang: str
):
    """Values for `open_outputs`: chatbot, system prompt, heatmap, session."""
    tr = Translator(lang)
    conv = ctx.store.get(conversation_id) if conversation_id else None
    session.conversation_id = conv.id if conv else None
    if conv is None:
        return [], "", expert_heatmap.render(None, tr), session
    stored = ctx.store.messages(conv.id)
    last_stats = next(
        (m.stats for m in reversed(stored) if m.role == "assistant" and m.stats), None
    )
    counts = (last_stats or {}).get("expert_counts")
    return (
        to_chatbot(stored, tr).messages,
        conv.system_prompt,
        expert_heatmap.render(counts, tr),
        session,
    )


def open_outputs(ui: ChatUI, session: gr.State) -> list:
    return [ui.chatbot, ui.system_prompt, ui.heatmap, session]


# -- generating -----------------------------------------------------------------------


def _screens(ctx: AppContext, session: ChatSession, params: ChatParams, tr: Translator):
    """The chat as the next reply streams in: (chatbot messages, heatmap html or None),
    at most every SHOW_EVERY_S, and always the finished reply with its expert usage."""
    cancel = threading.Event()
    session.cancel = cancel  # what this tab's Stop button sets
    last_show = 0.0
    updates = stream_reply(ctx.store, ctx.manager, session.conversation_id, params, cancel)
    for update in updates:
        now = time.monotonic()
        if update.done:
            counts = (update.reply.stats or {}).get("expert_counts")
            if counts:
                heatmap = expert_heatmap.render(counts, tr)
            else:  # llama.cpp and remote servers do not say which experts worked
                heatmap = f'<div class="heatmap-empty">{tr("heatmap.unavailable")}</div>'
            yield to_chatbot(update.messages, tr).messages, heatmap
        elif now - last_show >= SHOW_EVERY_S:
            last_show = now
            yield to_chatbot(update.messages, tr, streaming=True).messages, None


def create_event_handlers(
    ctx: AppContext, ui: ChatUI, session: gr.State, lang: gr.State, conversations: gr.Radio, search
):
    busy = [ui.send, ui.stop, ui.regenerate]
    outputs = [ui.chatbot, ui.message, conversations, ui.heatmap, session, *busy]

    def frame(session, messages, heatmap, *, message=None, listing=None, generating=None):
        """One screen update; None leaves a component as it is. The buttons change only
        when generation starts or ends: re-rendering Stop on every token would make it
        impossible to click."""
        buttons = (
            (gr.skip(),) * 3
            if generating is None
            else (
                gr.update(visible=not generating),
                gr.update(visible=generating),
                gr.update(interactive=not generating),
            )
        )
        return (
            messages,
            gr.skip() if message is None else message,
            gr.skip() if listing is None else listing,
            gr.skip() if heatmap is None else heatmap,
            session,
            *buttons,
        )

    def run(session, params: ChatParams, tr: Translator, query: str, clear_message=False):
        messages = gr.skip()
        for step, (messages, heatmap) in enumerate(_screens(ctx, session, params, tr)):
            if step == 0:  # the new conversation (or its new place) shows in the sidebar
                listing = list_update(ctx, session, query)
                cleared = "" if clear_message else None
                yield frame(
                    session, messages, heatmap, message=cleared, listing=listing, generating=True
                )
            else:
                yield frame(session, messages, heatmap)
        listing = list_update(ctx, session, query)
        yield frame(session, messages, None, listing=listing, generating=False)

    def on_send(text: str, session: ChatSession, lang: str, query: str, *params):
        tr = Translator(lang)
        params = ChatParams(*params)
        if not text.strip():
            return
        problem = model_unavailable(ctx.manager, tr)
        if problem:
            gr.Warning(problem)
            return
        if session.conversation_id is None or ctx.store.get(session.conversation_id) is None:
            session.conversation_id = ctx.store.create(text, params.system_prompt).id
        else:
            ctx.store.set_system_prompt(session.conversation_id, params.system_prompt)
        model = ctx.manager.status.get("message") or ""
        ctx.store.set_model(session.conversation_id, model)
        ctx.store.append(session.conversation_id, "user", text, "stop")
        yield from run(session, params, tr, query, clear_message=True)

    send_inputs = [ui.message, session, lang, search, *ui.params]
    for trigger in (ui.send.click, ui.message.submit):
        trigger(on_send, send_inputs, outputs, concurrency_limit=None, show_progress="hidden")

    def on_stop(session: ChatSession):
        session.stop()

    ui.stop.click(on_stop, [session], None, queue=False, show_progress="hidden")

    def on_regenerate(session: ChatSession, lang: str, query: str, *params):
        tr = Translator(lang)
        stored = ctx.store.messages(session.conversation_id) if session.conversation_id else []
        problem = model_unavailable(ctx.manager, tr)
        if not stored or problem:
            if problem:
                gr.Warning(problem)
            return
        last_reply = next((m for m in reversed(stored) if m.role == "assistant"), None)
        if last_reply is not None:
            ctx.store.truncate(session.conversation_id, last_reply.position)
        yield from run(session, ChatParams(*params), tr, query)

    regen_inputs = [session, lang, search, *ui.params]
    ui.regenerate.click(
        on_regenerate, regen_inputs, outputs, concurrency_limit=None, show_progress="hidden"
    )
    ui.chatbot.retry(
        on_regenerate, regen_inputs, outputs, concurrency_limit=None, show_progress="hidden"
    )

    def on_edit(edit: gr.EditData, session: ChatSession, lang: str, query: str, *params):
        tr = Translator(lang)
        if not session.conversation_id:
            return
        stored = ctx.store.messages(session.conversation_id)
        display = to_chatbot(stored, tr)
        if not 0 <= edit.index < len(display.positions):
            return
        position = display.positions[edit.index]
        target = next(m for m in stored if m.position == position)
        if target.role != "user":
            return
        ctx.store.update(target.id, str(edit.value), "stop")
        ctx.store.truncate(session.conversation_id, position + 1)
        problem = model_unavailable(ctx.manager, tr)
        if problem:
            gr.Warning(problem)
            shown = to_chatbot(ctx.store.messages(session.conversation_id), tr).messages
            yield frame(session, shown, None, generating=False)
            return
        yield from run(session, ChatParams(*params), tr, query)

    ui.chatbot.edit(on_edit, regen_inputs, outputs, concurrency_limit=None, show_progress="hidden")

    # Gradio's own "clear" icon on the chat starts a new conversation; the cleared one
    # stays in the sidebar (deleting is the sidebar's, with a confirmation).
    def on_clear(session: ChatSession, lang: str, query: str):
        session.stop()
        opened = open_conversation(ctx, session, None, lang)
        return (*opened, list_update(ctx, session, query))

    ui.chatbot.clear(on_clear, [session, lang, search], [*open_outputs(ui, session), conversations])

    # -- presets ----------------------------------------------------------------------

    def on_preset(preset, lang):
        text = preset_text(ctx, preset, Translator(lang))
        return gr.skip() if text is None else text

    ui.preset.input(on_preset, [ui.preset, lang], [ui.system_prompt], show_progress="hidden")

    def on_save_preset(name, text, lang):
        tr = Translator(lang)
        name = name.strip()
        if not name or not text.strip():
            gr.Warning(tr("chat.preset_needs_name"))
            return gr.skip(), gr.skip()
        settings = ctx.settings.load()
        ctx.settings.update(system_presets={**settings.system_presets, name: text})
        gr.Info(tr("chat.preset_saved", name=name))
        return gr.update(choices=preset_choices(ctx, tr), value=f"saved:{name}"), ""

    ui.save_preset.click(
        on_save_preset, [ui.preset_name, ui.system_prompt, lang], [ui.preset, ui.preset_name]
    )
