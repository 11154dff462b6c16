"""The page header: the model's state (loading with elapsed time, ready with what it is,
the error, or what to do with none), the language switch and the dark-mode toggle.

The state is polled from the model manager (a `ModelStatus`) while the page is open;
when it changes, the experts-per-token slider takes the new model's range, the sampling
sliders the new model's settings, and the models table redraws the "loaded" mark.

PAGE_JS runs once the page is up (mount_gradio_app's `js`): Esc stops a reply,
Ctrl/Cmd+Shift+O opens a new chat (ChatGPT's shortcut), and the dark mode chosen with the
toggle is kept by this browser (localStorage) over the system's, which Gradio applies.
"""

from __future__ import annotations

import dataclasses
import time
from html import escape

import gradio as gr

from app.context import AppContext
from app.i18n import LANGUAGES, Translator
from app.model_manager import ModelStatus
from app.ui.chat_sampling import SamplingPanel
from app.ui.library_view import human_count, library_update

STATUS_POLL_S = 1.0  # how often the header asks the model manager how loading goes
DEFAULT_EXPERTS_MAX = 16  # the slider's range before a model says its expert count
PAGE_JS = """() => {
  const apply = () => {
    const saved = localStorage.getItem("itamae-dark");
    if (saved === null) return;
    const dark = saved === "1";
    if (document.body.classList.contains("dark") !== dark) document.body.classList.toggle("dark", dark);
  };
  apply();
  new MutationObserver(apply).observe(document.body, {attributes: true, attributeFilter: ["class"]});
  const shown = (id) => { const el = document.getElementById(id); return el && el.offsetParent ? el : null; };
  // Capture phase: the message box sees Esc first and would keep it to itself.
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && shown("stop")) { event.preventDefault(); shown("stop").click(); }
    const mod = event.ctrlKey || event.metaKey;
    if (mod && event.shiftKey && event.key.toLowerCase() === "o" && shown("new-chat")) {
      event.preventDefault(); shown("new-chat").click();
    }
  }, true);
}"""
TOGGLE_DARK = """() => {
  const dark = !document.body.classList.contains("dark");
  document.body.classList.toggle("dark", dark);
  localStorage.setItem("itamae-dark", dark ? "1" : "0");
}"""


def status_html(
    status: ModelStatus, tr: Translator, info_line: str = "", loading_s: float | None = None
) -> str:
    """The header line: the model in use, its loading (with elapsed time), or what to do."""
    if status.state == "ready":
        return _ready_html(status, tr, info_line)
    if status.state == "loading":
        return _loading_html(status, tr, loading_s)
    if status.state == "error":
        return (
            f'<div class="model-status error" data-state="error"><span class="dot"></span>'
            f"<b>{escape(tr('status.error'))}</b> {escape(status.message)} "
            f'<span class="muted">{escape(status.source or "")}</span></div>'
        )
    return (
        f'<div class="model-status empty" data-state="empty"><span class="dot"></span>'
        f"<b>{escape(tr('status.empty'))}</b> {escape(tr('status.empty_hint'))}</div>"
    )


def _ready_html(status: ModelStatus, tr: Translator, info_line: str) -> str:
    message = escape(status.message)
    engine = escape(status.engine or "")
    detail = f'<span class="muted">{escape(info_line)}</span>' if info_line else ""
    demo = ""
    if status.source == "demo":  # say what it is, and where real models come from
        message = escape(tr("status.demo_name"))
        demo = f'<div class="demo-note">{escape(tr("status.demo"))}</div>'
    return (
        f'<div class="model-status ready" data-state="ready"><span class="dot"></span>'
        f'<b>{message}</b> <span class="chip">{engine}</span> {detail}{demo}</div>'
    )


def _loading_html(status: ModelStatus, tr: Translator, loading_s: float | None) -> str:
    progress = status.progress
    bar = (
        f'<div class="bar"><div style="width:{progress * 100:.0f}%"></div></div>'
        if progress
        else '<div class="bar indeterminate"><div></div></div>'
    )
    elapsed = (
        f' <span class="muted">{escape(tr("status.elapsed", s=f"{loading_s:.0f}"))}</span>'
        if loading_s is not None
        else ""
    )
    return (
        f'<div class="model-status loading" data-state="loading"><span class="dot"></span>'
        f"{escape(tr('status.loading', source=status.source or ''))}{elapsed}{bar}</div>"
    )


def model_status(ctx: AppContext) -> ModelStatus:
    """The manager's status, with the engine that actually runs the model ("auto" is
    what was asked for; the backend's package says what it became)."""
    status = ctx.manager.status
    backend = ctx.manager.backend
    if status.state == "ready" and backend is not None:
        package = type(backend).__module__.split(".")
        if len(package) > 1 and package[0] == "engine":
            status = dataclasses.replace(status, engine=package[1])
    return status


def model_line(ctx: AppContext, tr: Translator) -> str:
    """One line about the loaded model: arch, experts, active parameters."""
    info = getattr(ctx.manager.backend, "info", None)
    if info is None:
        return ""
    parts = [info.arch]
    if info.n_experts:
        parts.append(tr("status.experts", n=info.n_experts, k=info.experts_per_token))
    if info.active_params:
        parts.append(tr("status.active", active=human_count(info.active_params)))
    return " · ".join(p for p in parts if p)


class Header:
    def __init__(self, ctx: AppContext, tr: Translator):
        self.ctx = ctx
        with gr.Row(elem_id="header", equal_height=True):
            self.status = gr.HTML(status_html(model_status(ctx), tr), elem_id="model-status")
            self.language = gr.Radio(
                [(name, code) for code, name in LANGUAGES.items()],
                value="en",
                show_label=False,
                container=False,
                elem_id="language",
                scale=0,
                min_width=170,
            )
            self.dark = gr.Button("◐", size="sm", elem_id="dark-toggle", scale=0, min_width=44)
        self.dark.click(None, js=TOGGLE_DARK)

    def current(self, tr: Translator) -> str:
        """The status line now, in `tr`'s language."""
        return status_html(model_status(self.ctx), tr, model_line(self.ctx, tr))

    def wire(
        self,
        lang: gr.State,
        experts_per_token: gr.Slider,
        library: gr.Dataframe,
        sampling: SamplingPanel,
    ) -> None:
        """Poll the model's state; `experts_per_token`, `library` and the `sampling`
        sliders follow its changes."""
        self.sampling = sampling
        timer = gr.Timer(STATUS_POLL_S)
        seen = gr.State(None)
        timer.tick(
            self.on_tick,
            [lang, seen],
            [self.status, experts_per_token, seen, library, *sampling.outputs],
            show_progress="hidden",
        )

    def on_tick(self, lang: str, seen):
        """`seen`: (state, source, engine) last shown, and when that state began."""
        tr = Translator(lang)
        ctx = self.ctx
        status = model_status(ctx)
        key = (status.state, status.source, status.engine)
        if seen and tuple(seen[0]) == key:
            elapsed = time.time() - seen[1] if status.state == "loading" else None
            unchanged = (gr.skip(),) * (3 + len(self.sampling.outputs))
            return status_html(status, tr, model_line(ctx, tr), elapsed), *unchanged
        html = status_html(status, tr, model_line(ctx, tr), 0.0)
        info = getattr(ctx.manager.backend, "info", None)
        k_max = (
            max(info.n_experts, 1) if info is not None and info.n_experts else DEFAULT_EXPERTS_MAX
        )
        slider = gr.update(maximum=k_max, value=0)
        sampling = self.sampling.values(tr)  # a model now ready brings its own settings
        return html, slider, (key, time.time()), library_update(ctx, tr), *sampling
