"""Searching the Hugging Face hub, only when the person asks (nothing runs at start).

`HfApi.list_models` with the hub's own search (`search=` matches repo ids), format filters
as the hub tags repositories (`gguf`, `safetensors`), sorted by downloads; each result's
architecture comes from the fields the hub returns with `expand` (`config.model_type`
for a safetensors repo, `gguf.architecture` for a GGUF one). The sizes and the fit verdict
of one result's quants come from `quants(repo_id)`: one file listing and a few MB of
GGUF headers (fit.py), fetched when that result is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from huggingface_hub import HfApi

from converters import archs

from .downloads import list_files
from .fit import Fit, hub_fit
from .hub_files import Choice, choices

FORMATS = ("gguf", "safetensors")
EXPAND = ["downloads", "likes", "tags", "config", "gguf", "safetensors", "usedStorage"]


@dataclass
class HubModel:
    repo_id: str
    downloads: int = 0
    likes: int = 0
    arch: str = ""
    formats: list[str] = field(default_factory=list)
    is_moe: bool = False
    parameters: int = 0  # as the hub reports them (safetensors or GGUF metadata)
    repo_bytes: int = 0  # everything stored in the repository: all quants together


def _arch(info) -> str:
    config = info.config if isinstance(info.config, dict) else {}
    gguf = info.gguf if isinstance(info.gguf, dict) else {}
    return str(config.get("model_type") or gguf.get("architecture") or "")


def _result(info) -> HubModel:
    tags = [t.lower() for t in (info.tags or [])]
    arch = _arch(info)
    gguf = info.gguf if isinstance(info.gguf, dict) else {}
    parameters = (info.safetensors.total if info.safetensors else 0) or gguf.get("total", 0)
    return HubModel(
        repo_id=info.id,
        downloads=info.downloads or 0,
        likes=info.likes or 0,
        arch=arch,
        formats=[f for f in FORMATS if f in tags],
        is_moe="moe" in tags or archs.is_moe_name(arch),
        parameters=int(parameters or 0),
        repo_bytes=int(info.used_storage or 0),
    )


def search(
    query: str,
    *,
    fmt: str | None = None,
    moe_only: bool = False,
    limit: int = 20,
    endpoint: str | None = None,
) -> list[HubModel]:
    """Models whose id matches `query`, most downloaded first."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {FORMATS}")
    found = HfApi(endpoint=endpoint).list_models(
        search=query.strip() or None,
        filter=[fmt] if fmt else None,
        sort="downloads",
        limit=limit * 4 if moe_only else limit,  # room for the ones the MoE filter drops
        expand=EXPAND,
    )
    results = [_result(info) for info in found]
    if moe_only:
        results = [r for r in results if r.is_moe]
    return results[:limit]


def quants(repo_id: str, endpoint: str | None = None, hardware=None) -> list[tuple[Choice, Fit]]:
    """What can be downloaded from `repo_id`, each with its size and fit verdict."""
    commit, files = list_files(repo_id, endpoint)
    return [
        (choice, hub_fit(repo_id, commit, choice, hardware, endpoint)) for choice in choices(files)
    ]
