"""The settings tab: where models live, which model loads at start, where the API
answers, and where Itamae keeps its data."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app import __version__
from app.context import AppContext
from app.i18n import Translator
from app.ui.labels import Key, Labels


def about_markdown(ctx: AppContext, tr: Translator) -> str:
    api = ctx.api_base or "http://127.0.0.1:PORT/v1"
    return tr(
        "settings.about",
        version=__version__,
        api=api,
        data=str(ctx.paths.data_dir),
        database=str(ctx.paths.database),
    )


class SettingsTab:
    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        settings = ctx.settings.load()
        with gr.Column(elem_id="settings"):
            self.models_dir = labels(
                gr.Textbox,
                value=str(ctx.settings.models_dir(settings)),
                label=Key("settings.models_dir"),
                info=Key("settings.models_dir_info"),
            )
            self.startup_model = labels(
                gr.Textbox,
                value=settings.startup_model,
                label=Key("settings.startup_model"),
                info=Key("settings.startup_model_info"),
                placeholder="demo",
            )
            self.save = labels(gr.Button, value=Key("settings.save"), variant="primary", scale=0)
            self.about = gr.Markdown(about_markdown(ctx, labels.tr), elem_id="about")

    def wire(self, lang: gr.State) -> None:
        self.save.click(self.on_save, [self.models_dir, self.startup_model, lang], None)
        lang.change(self.on_language, [lang], [self.about])

    def on_save(self, models_dir: str, startup_model: str, lang: str):
        tr = Translator(lang)
        folder = Path(models_dir.strip()).expanduser() if models_dir.strip() else None
        if folder is not None and folder.exists() and not folder.is_dir():
            gr.Warning(tr("settings.not_a_folder", path=str(folder)))
            return
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.ctx.settings.update(
            models_dir=str(folder) if folder else "", startup_model=startup_model.strip()
        )
        gr.Info(tr("settings.saved"))

    def on_language(self, code: str):
        return about_markdown(self.ctx, Translator(code))
