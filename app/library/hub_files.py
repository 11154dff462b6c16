"""Which files of a hub repository a download fetches.

A GGUF repository (bartowski's, unsloth's, lmstudio-community's...) holds one file per
quant, or one split set per quant (`Q4_K_M/NAME-Q4_K_M-00001-of-00003.gguf`, llama.cpp's
gguf-split naming), plus multimodal projectors (`mmproj-*.gguf`): the person picks one
quant, and only its file or set comes down, with the card and license. A safetensors
repository comes down as weights, config, tokenizer, chat template and card: never the
pickled `.bin`/`.pt` copies, nor the ONNX, TensorFlow, Flax or GGUF ones beside them.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from converters.core.errors import ItamaeError
from converters.formats.gguf_header import SHARD_NAME

# llama.cpp's quant names (tools/quantize/quantize.cpp), unsloth's "UD-" dynamic ones too
QUANT_NAME = re.compile(
    r"(?i)(?<![A-Z0-9])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?|TQ\d_\d))(?![A-Z0-9])"
)
CARD_FILES = ("README.md", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*")
SAFETENSORS_FILES = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    *CARD_FILES,
)


@dataclass
class HubFile:
    path: str  # inside the repository, "/"-separated
    size: int
    sha256: str | None = None  # LFS files: the hub's ETag and checksum
    blob_id: str = ""  # git blob id: the ETag of small files kept in git itself

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


@dataclass
class Choice:
    """One thing a person can download from a repository: a quant, or the safetensors."""

    label: str  # "Q4_K_M", "safetensors", "mmproj-F16"
    files: list[HubFile] = field(default_factory=list)
    kind: str = "model"  # model | projector

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weights(self) -> list[HubFile]:
        return [f for f in self.files if f.path.endswith((".gguf", ".safetensors"))]


def quant_label(path: str) -> str:
    name = PurePosixPath(path).name
    match = SHARD_NAME.match(name)
    stem = match["prefix"] if match else name.removesuffix(".gguf")
    found = QUANT_NAME.findall(stem)
    label = found[-1] if found else stem
    return f"mmproj-{label}" if "mmproj" in name.lower() else label


def _matches(path: str, patterns) -> bool:
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def gguf_choices(files: list[HubFile]) -> list[Choice]:
    """One choice per quant (a split set is one), biggest last; card files go with each."""
    card = [f for f in files if "/" not in f.path and _matches(f.path, CARD_FILES)]
    by_label: dict[str, Choice] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf"):
            continue
        label = quant_label(f.path)
        kind = "projector" if label.startswith("mmproj-") else "model"
        by_label.setdefault(label, Choice(label, [], kind)).files.append(f)
    choices = sorted(by_label.values(), key=lambda c: (c.kind != "model", c.size))
    for choice in choices:
        choice.files.sort(key=lambda f: f.path)
        choice.files += card
    return choices


def safetensors_choice(files: list[HubFile]) -> Choice | None:
    chosen = [f for f in files if _matches(f.path, SAFETENSORS_FILES)]
    if not any(f.path.endswith(".safetensors") for f in chosen):
        return None
    return Choice("safetensors", sorted(chosen, key=lambda f: f.path))


def choices(files: list[HubFile]) -> list[Choice]:
    found = gguf_choices(files)
    safetensors = safetensors_choice(files)
    return found + ([safetensors] if safetensors else [])


def choose(repo_id: str, files: list[HubFile], quant: str | None) -> Choice:
    """The choice `REPO[:QUANT]` names; without a quant, the only model choice there is."""
    options = [c for c in choices(files) if c.kind == "model"] if not quant else choices(files)
    if quant:
        wanted = quant.lower()
        match = [c for c in options if c.label.lower() == wanted]
        if len(match) == 1:
            return match[0]
    elif len(options) == 1:
        return options[0]
    if not options:
        raise ItamaeError(
            f"{repo_id} has no GGUF or safetensors weights to download.",
            "Pick a repository with *.gguf or *.safetensors files (the hub search lists them).",
        )
    listed = ", ".join(f"{c.label} ({c.size / 1e9:.1f} GB)" for c in options)
    problem = f"{repo_id} has no {quant!r}." if quant else f"{repo_id} holds several quants."
    raise ItamaeError(
        f"{problem} It has: {listed}.",
        f"Name one, e.g. `itamae pull {repo_id}:{options[0].label}`.",
    )
