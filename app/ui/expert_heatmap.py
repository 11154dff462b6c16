"""A picture of which experts worked on the last reply: MoE layers x routed experts.

`Stats.expert_counts[layer][expert]` counts the tokens each expert processed. Each
row is normalised to its own share (count / tokens routed in that layer), because
layers route the same tokens and the question a person asks is "which experts did
this layer prefer", not "which layer was busiest". Drawn as inline SVG: crisp at any
size, no plotting library, nothing fetched.
"""

from __future__ import annotations

from html import escape

from app.i18n import Translator

CELL = 14  # px per expert; with 64 experts the picture is ~900 px wide
MAX_WIDTH_CELLS = 64  # more experts than this are drawn narrower to stay on screen
LEFT = 46  # room for "L12" row labels
TOP = 22  # room for expert numbers


ACCENT = "#6366f1"  # indigo-500: reads on white and on the dark theme's slate alike
FLOOR = 0.06  # an expert no token chose still shows as a faint cell


def _opacity(share: float) -> float:
    # The accent over the page's own background, from nearly clear to solid: the same
    # picture in light and dark mode, where fixed light-to-dark colours would invert.
    return round(FLOOR + (1 - FLOOR) * max(0.0, min(1.0, share)), 3)


def render(expert_counts: list[list[int]] | None, tr: Translator) -> str:
    if not expert_counts or not any(any(row) for row in expert_counts):
        return f'<div class="heatmap-empty">{escape(tr("heatmap.empty"))}</div>'
    n_experts = max(len(row) for row in expert_counts)
    cell_w = CELL if n_experts <= MAX_WIDTH_CELLS else max(3, CELL * MAX_WIDTH_CELLS // n_experts)
    cell_h = CELL
    width = LEFT + cell_w * n_experts + 8
    height = TOP + cell_h * len(expert_counts) + 8
    label_every = 1 if cell_w >= CELL else max(1, n_experts // 16)
    shapes = []
    for e in range(0, n_experts, label_every):
        x = LEFT + e * cell_w + cell_w / 2
        shapes.append(f'<text x="{x:.1f}" y="{TOP - 6}" class="hm-col">{e}</text>')
    for layer, row in enumerate(expert_counts):
        y = TOP + layer * cell_h
        shapes.append(f'<text x="{LEFT - 6}" y="{y + cell_h - 3}" class="hm-row">L{layer}</text>')
        total = sum(row) or 1
        peak = max(row) / total if row else 1
        for e, count in enumerate(row):
            share = count / total
            title = escape(
                tr("heatmap.cell", layer=layer, expert=e, count=count, pct=f"{share:.0%}")
            )
            opacity = _opacity(share / peak if peak else 0)
            shapes.append(
                f'<rect x="{LEFT + e * cell_w}" y="{y}" width="{cell_w - 1}" '
                f'height="{cell_h - 1}" rx="2" fill="{ACCENT}" fill-opacity="{opacity}">'
                f"<title>{title}</title></rect>"
            )
    caption = escape(tr("heatmap.caption", layers=len(expert_counts), experts=n_experts))
    return (
        f'<figure class="expert-heatmap"><svg role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{caption}</title>{''.join(shapes)}</svg>"
        f"<figcaption>{caption}</figcaption></figure>"
    )
