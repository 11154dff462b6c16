"""Model-card facts from a Hugging Face README's YAML front matter.

The hub's model card metadata (https://huggingface.co/docs/hub/model-cards) names the
license, base models and datasets; the GGUF `general.*` keys (gguf-py's `Keys.General`,
llama.cpp's docs/gguf.md naming) carry them on. `read_card(folder)` only reads; the GGUF
writer and the openness card both build on what it returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from converters.facts.model_card import split_front_matter

HUB = "https://huggingface.co/"
TITLE = re.compile(r"^#\s+(.+?)\s*$", re.MULTILINE)


@dataclass
class CardFacts:
    name: str = ""
    license: str = ""
    license_name: str = ""
    license_link: str = ""
    base_models: list[str] = field(default_factory=list)  # hub ids or URLs
    datasets: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    source_url: str = ""


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def hub_url(repo_or_url: str) -> str:
    return repo_or_url if "://" in repo_or_url else HUB + repo_or_url


def read_card(folder: str | Path, repo_id: str = "") -> CardFacts:
    """Facts from `folder/README.md` (empty when there is none or it has no front matter).

    `repo_id` (e.g. "deepseek-ai/DeepSeek-V3") gives the source URL when the model was
    downloaded from the hub; a card may also name one itself (`source`/`url`)."""
    readme = Path(folder) / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    meta, body, _, _ = split_front_matter(text)  # a malformed card gives no fields, no error
    title = TITLE.search(body)
    source = repo_id and hub_url(repo_id) or str(meta.get("source") or meta.get("url") or "")
    return CardFacts(
        name=str(meta.get("model_name") or (title.group(1) if title else "")),
        license=str(meta.get("license") or ""),
        license_name=str(meta.get("license_name") or ""),
        license_link=str(meta.get("license_link") or ""),
        base_models=_as_list(meta.get("base_model")),
        datasets=_as_list(meta.get("datasets")),
        languages=_as_list(meta.get("language")),
        tags=_as_list(meta.get("tags")),
        source_url=source,
    )
