"""The architecture registry: one module per Hugging Face `model_type`, found by name.

`converters/archs/<model_type>.py` holds that family's `SPEC` (an `ArchSpec`: config
fields, tensor spellings, GGUF names and metadata, how a GGUF header of it is recognised,
the torch format's expert layout, its chat-template convention). A variant imports its
parent's module, as mlx-lm's model files do; an alias (`kimi_k2` -> `deepseek_v3`) is
declared in the family it points to. Nothing outside the family modules names a model
type: the converter, the torch format, inspect, the GGUF readers, the library and the
torch engine's model lookup all ask the functions here.

Adding a family: one module here, one torch model file under engine/torch/models/ (if the
torch engine runs it), one fixture entry in tests/fixtures/checkpoints.py.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache

from converters.archs.spec import ArchSpec
from converters.core.errors import UnsupportedArchitecture

# Modules of this package that hold shared pieces, not a family.
SHARED_MODULES = frozenset({"spec", "tensors", "metadata", "rope"})


@cache
def _module_by_name() -> dict[str, str]:
    """Every model_type and alias -> the family module that declares it."""
    names: dict[str, str] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name in SHARED_MODULES:
            continue
        spec: ArchSpec = importlib.import_module(f"{__name__}.{module.name}").SPEC
        for name in spec.names:
            names[name] = module.name
    return names


def known() -> list[str]:
    """The families Itamae converts and describes, by their own model_type."""
    return sorted(set(_module_by_name().values()))


def all_specs() -> list[ArchSpec]:
    """Every family's spec, in `known()` order."""
    return [find(name) for name in known()]


def find(model_type: str) -> ArchSpec | None:
    module = _module_by_name().get(model_type)
    return importlib.import_module(f"{__name__}.{module}").SPEC if module else None


def unsupported(model_type: str) -> UnsupportedArchitecture:
    """The one message for a model type the registry does not know, wherever it is met."""
    return UnsupportedArchitecture(
        f"Itamae does not know the architecture {model_type or '(config.json names none)'!r}; "
        f"it converts and runs {', '.join(known())}.",
        "If llama.cpp supports the model, run a GGUF of it in Itamae's llama.cpp engine: "
        "download a GGUF from the Hugging Face hub, or convert the folder with llama.cpp's own "
        "convert_hf_to_gguf.py, then open the .gguf file.",
    )


def spec_for(model_type: str) -> ArchSpec:
    spec = find(model_type)
    if spec is None:
        raise unsupported(model_type)
    return spec


def spec_for_config(config: dict) -> ArchSpec:
    return spec_for(str(config.get("model_type", "")))


def normalise_config(config: dict) -> dict:
    """The language model's config, whatever wrapper it was published in.

    Vision-language releases nest the text model under `text_config` and name the family in
    the outer `model_type`; the text fields are lifted to the top (the outer model_type and
    quantization_config kept), so every reader sees one flat config."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        return config
    outer = {k: v for k, v in config.items() if k != "text_config"}
    merged = {**outer, **text, "model_type": outer.get("model_type", text.get("model_type"))}
    if "quantization_config" in outer:
        merged["quantization_config"] = outer["quantization_config"]
    merged["text_model_type"] = text.get("model_type", "")
    return merged


def reply_has_markers(model_type: str) -> bool:
    """Whether replies of this family carry special tokens that structure them (Harmony's
    channels), which engines must then not strip when they turn tokens into text."""
    spec = find(model_type)
    return bool(spec and spec.reply_has_markers)


def publisher_chat_template(model_type: str) -> str:
    """The template a family's checkpoints rely on when they ship none ("" if none)."""
    spec = find(model_type)
    return spec.chat_template if spec else ""


# Vision-language releases store the language model under another prefix, beside tensors
# that are not the text model's (the vision tower, the multi-token-prediction head that
# llama.cpp's converter drops as well): published spelling -> the language model's.
# Nemotron-H publishes its model under `backbone.` (transformers renames it to `model.` too).
TEXT_MODEL_PREFIXES = (("model.language_model.", "model."), ("backbone.", "model."))
OUTSIDE_TEXT_MODEL = (
    "model.visual.",
    "mtp.",
    "model.mtp.",
    # Gemma 4's vision and audio towers and their projections into the text model
    "model.vision_tower.",
    "model.embed_vision.",
    "model.audio_tower.",
    "model.embed_audio.",
)


def text_model_name(name: str) -> str | None:
    """The language model's name of a published tensor; None for a tensor outside it."""
    if name.startswith(OUTSIDE_TEXT_MODEL):
        return None
    for published, text in TEXT_MODEL_PREFIXES:
        if name.startswith(published):
            return text + name[len(published) :]
    return name


def family_from_gguf(metadata: dict) -> str:
    """The HF model_type of a GGUF header (llama.cpp's arch name when no family claims it)."""
    arch = str(metadata.get("general.architecture", ""))
    for spec in all_specs():
        if spec.arch_name == arch and spec.recognise_gguf(metadata):
            return spec.model_type
    return arch


@cache
def expert_tensor_names() -> tuple[re.Pattern, re.Pattern, dict[str, str]]:
    """How every known family spells one routed expert's weight, for readers that sort
    experts out of a checkpoint without knowing its family (the torch format, the torch
    engine): (per-expert pattern, fused pattern, projection name -> gate/up/down).

    Per-expert: `model.layers.{bid}.{prefix}.{e}.{proj}.weight` (groups: bid, block, e, proj);
    fused (transformers 5): `model.layers.{bid}.{prefix}.{gate_up_proj|down_proj}`."""
    specs = all_specs()
    prefixes = {s.expert_prefix for s in specs if s.expert_prefix.endswith(".experts")}
    blocks = sorted(p.removesuffix(".experts") for p in prefixes)
    parts: dict[str, str] = {}
    for spec in specs:
        parts.update(spec.expert_parts())
    block = "|".join(map(re.escape, blocks))
    per_expert = re.compile(
        rf"^model\.layers\.(\d+)\.({block})\.experts\.(\d+)\.({'|'.join(sorted(parts))})\.weight$"
    )
    # Gemma 4 keeps its fused experts right under the layer (`model.layers.{bid}.experts.`):
    # no block there, group 2 is None
    fused = re.compile(
        rf"^model\.layers\.(\d+)\.(?:({block})\.)?experts\.(gate_up_proj|down_proj)$"
    )
    return per_expert, fused, parts


@cache
def packed_expert_tensor_name() -> re.Pattern:
    """Experts published as MXFP4 blocks (gpt-oss): `model.layers.{bid}.{block}.experts.`
    `{gate_up,down}_proj_{blocks,scales,bias}` (groups: bid, block, the tensor's last part)."""
    fused = expert_tensor_names()[1].pattern
    return re.compile(
        fused.replace(
            "(gate_up_proj|down_proj)$", "((?:gate_up|down)_proj_(?:blocks|scales|bias))$"
        )
    )


def is_moe_name(name: str) -> bool:
    """Whether `name` (an HF model_type, an alias, or llama.cpp's arch name for a GGUF) is a
    Mixture-of-Experts family Itamae knows. A GGUF arch name that a dense family shares
    (Mixtral and Llama are both "llama") says nothing by itself and gives False."""
    name = name.lower()
    if (spec := find(name)) is not None:
        return bool(spec.expert_prefix)
    specs = all_specs()
    claimed = [s for s in specs if s.arch_name == name]
    return bool(claimed) and all(s.expert_prefix for s in claimed)
