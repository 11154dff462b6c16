"""The settings tab: where models live, which model loads at start, where the API
answers, and where Itamae keeps its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.context import AppContext
from app.i18n import Key, Labels, Translator


@dataclass
class SettingsUI:
    models_dir: gr.Textbox
    startup_model: gr.Textbox
    save: gr.Button
    about: gr.Markdown


def about_markdown(ctx: AppContext, tr: Translator) -> str:
    from app import __version__

    api = ctx.api_base or "http://127.0.0.1:PORT/v1"
    return tr(
        "settings.about",
        version=__version__,
        api=api,
        data=str(ctx.paths.data_dir),
        database=str(ctx.paths.database),
    )


def create_ui(ctx: AppContext, labels: Labels) -> SettingsUI:
    settings = ctx.settings.load()
    with gr.Column(elem_id="settings"):
        models_dir = labels(
            gr.Textbox,
            value=str(ctx.settings.models_dir(settings)),
            label=Key("settings.models_dir"),
            info=Key("settings.models_dir_info"),
        )
        startup_model = labels(
            gr.Textbox,
            value=settings.startup_model,
            label=Key("settings.startup_model"),
            info=Key("settings.startup_model_info"),
            placeholder="demo",
        )
        save = labels(gr.Button, value=Key("settings.save"), variant="primary", scale=0)
        about = gr.Markdown(about_markdown(ctx, labels.tr), elem_id="about")
    return SettingsUI(models_dir, startup_model, save, about)


def create_event_handlers(ctx: AppContext, ui: SettingsUI, lang: gr.State) -> None:
    def on_save(models_dir: str, startup_model: str, lang: str):
        tr = Translator(lang)
        folder = Path(models_dir.strip()).expanduser() if models_dir.strip() else None
        if folder is not None and folder.exists() and not folder.is_dir():
            gr.Warning(tr("settings.not_a_folder", path=str(folder)))
            return
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        ctx.settings.update(
            models_dir=str(folder) if folder else "", startup_model=startup_model.strip()
        )
        gr.Info(tr("settings.saved"))

    ui.save.click(on_save, [ui.models_dir, ui.startup_model, lang], None)
    lang.change(lambda code: about_markdown(ctx, Translator(code)), [lang], [ui.about])
