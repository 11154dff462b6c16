"""The chat tab's side panel: the experts-per-token knob and the expert usage of the
last reply, the system prompt with its presets, and the sampling parameters.

Sampling follows the loaded model (app/ui/chat_sampling.py); "0" and "-1" mean the
model's or the engine's own choice, as the sliders' info lines say.
"""

from __future__ import annotations

import gradio as gr

from app.chat_reply import REASONING_CHOICES
from app.context import AppContext
from app.i18n import Translator
from app.ui import expert_heatmap
from app.ui.chat_sampling import SamplingPanel
from app.ui.labels import Key, Labels

BUILTIN_PRESETS = ("assistant", "concise", "translator", "reasoning")


def preset_choices(ctx: AppContext, tr: Translator) -> list[tuple[str, str]]:
    builtin = [(tr(f"preset.{name}.name"), f"builtin:{name}") for name in BUILTIN_PRESETS]
    saved = [(name, f"saved:{name}") for name in sorted(ctx.settings.load().system_presets)]
    return builtin + saved


def reasoning_choices(tr: Translator) -> list[tuple[str, str]]:
    return [(tr(f"chat.reasoning_{name}"), name) for name in REASONING_CHOICES]


def preset_text(ctx: AppContext, preset: str | None, tr: Translator) -> str | None:
    if not preset:
        return None
    kind, _, name = preset.partition(":")
    if kind == "builtin":
        return tr(f"preset.{name}.prompt")
    return ctx.settings.load().system_presets.get(name)


class ChatControls:
    def __init__(self, ctx: AppContext, labels: Labels):
        self.ctx = ctx
        with gr.Column(scale=1, min_width=280, elem_id="chat-settings"):
            with labels(gr.Accordion, label=Key("chat.experts"), open=True, elem_id="experts"):
                self._build_experts(labels)
            with labels(gr.Accordion, label=Key("chat.system"), open=True):
                self._build_system(labels)
            with labels(gr.Accordion, label=Key("chat.sampling"), open=False, elem_id="sampling"):
                self._build_sampling(labels)

    def _build_experts(self, labels: Labels) -> None:
        self.experts_per_token = labels(
            gr.Slider,
            0,
            16,
            0,
            step=1,
            label=Key("chat.experts_per_token"),
            info=Key("chat.experts_info"),
            elem_id="experts-per-token",
        )
        self.heatmap = gr.HTML(expert_heatmap.render(None, labels.tr), elem_id="expert-heatmap")

    def _build_system(self, labels: Labels) -> None:
        self.preset = labels(
            gr.Dropdown,
            label=Key("chat.preset"),
            choices=preset_choices(self.ctx, labels.tr),
            value=None,
            elem_id="preset",
        )
        self.system_prompt = labels(
            gr.Textbox,
            label=Key("chat.system_prompt"),
            placeholder=Key("chat.system_placeholder"),
            lines=3,
            max_lines=10,
            elem_id="system-prompt",
        )
        with gr.Row(equal_height=True):
            self.preset_name = labels.bare_textbox(Key("chat.preset_name"), scale=3)
            self.save_preset = labels(gr.Button, value=Key("chat.save_preset"), size="sm", scale=1)
        self.reasoning = labels(
            gr.Dropdown,
            choices=reasoning_choices(labels.tr),
            value="default",
            label=Key("chat.reasoning"),
            info=Key("chat.reasoning_info"),
            elem_id="reasoning",
        )

    def _build_sampling(self, labels: Labels) -> None:
        self.sampling = SamplingPanel(self.ctx, labels)
        self.seed = labels(
            gr.Number, value=-1, precision=0, label=Key("chat.seed"), info=Key("chat.seed_info")
        )

    @property
    def params(self) -> list:
        """The inputs every generation reads, in `ChatParams` order (app/chat_reply.py)."""
        return [
            self.system_prompt,
            *self.sampling.sliders,
            self.seed,
            self.experts_per_token,
            self.reasoning,
        ]

    # -- presets ---------------------------------------------------------------------

    def wire(self, lang: gr.State) -> None:
        self.sampling.wire(lang)
        self.preset.input(
            self.on_preset, [self.preset, lang], [self.system_prompt], show_progress="hidden"
        )
        self.save_preset.click(
            self.on_save_preset,
            [self.preset_name, self.system_prompt, lang],
            [self.preset, self.preset_name],
        )

    def on_preset(self, preset: str | None, lang: str):
        text = preset_text(self.ctx, preset, Translator(lang))
        return gr.skip() if text is None else text

    def on_save_preset(self, name: str, text: str, lang: str):
        tr = Translator(lang)
        name = name.strip()
        if not name or not text.strip():
            gr.Warning(tr("chat.preset_needs_name"))
            return gr.skip(), gr.skip()
        settings = self.ctx.settings.load()
        self.ctx.settings.update(system_presets={**settings.system_presets, name: text})
        gr.Info(tr("chat.preset_saved", name=name))
        return gr.update(choices=preset_choices(self.ctx, tr), value=f"saved:{name}"), ""
