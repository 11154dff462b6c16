"""How a hub search looks in the models tab: the results table, and one repository's
quants with their sizes and fit verdicts (app/library/hub_search.py finds them; nothing
here touches the network)."""

from __future__ import annotations

from app.i18n import Translator
from app.library.fit import Fit
from app.library.hub_files import Choice
from app.library.hub_search import HubModel
from app.ui.library_view import human_bytes, human_count

HUB_COLUMNS = ("repo", "arch", "moe", "formats", "downloads", "params", "size")


def hub_headers(tr: Translator) -> list[str]:
    return [tr(f"models.hub_col.{c}") for c in HUB_COLUMNS]


def hub_rows(results: list[HubModel]) -> list[list]:
    return [
        [
            r.repo_id,
            r.arch,
            "MoE" if r.is_moe else "",
            ", ".join(r.formats),
            f"{r.downloads:,}",
            human_count(r.parameters) if r.parameters else "",
            human_bytes(r.repo_bytes) if r.repo_bytes else "",
        ]
        for r in results
    ]


def quant_choices(repo_id: str, quants: list[tuple[Choice, Fit]]) -> list[tuple[str, str]]:
    """(label shown, `repo:QUANT` for the download box) per downloadable choice."""
    return [
        (
            f"{choice.label} · {human_bytes(choice.size)} · {fit.verdict}",
            f"{repo_id}:{choice.label}",
        )
        for choice, fit in quants
        if choice.kind == "model"
    ]
