"""What the Models tab says beyond `inspect`: the openness card and the quality report.

The card comes from converters.facts.openness (each fact with the source it was read from;
"unknown" where no source says), the report from engine.evaluate (stored beside a
converted model by `itamae eval` as <model>.quality.json). Both are read from files,
never guessed, and a model without them says so.
"""

from __future__ import annotations

from pathlib import Path

from app.i18n import Translator
from converters.core.errors import ItamaeError

FACTS = ("weights", "license", "training_data", "training_code", "inference_code",
         "technical_report")  # fmt: skip


def openness_markdown(path: Path, tr: Translator) -> str:
    from converters.facts.openness import openness_card

    try:
        card = openness_card(path)
    except (ItamaeError, OSError) as e:
        return f"**{tr('facts.openness')}:** {e}"
    rows = [f"#### {tr('facts.openness')}", "", f"| | {tr('models.value')} | {tr('facts.source')} |",
            "|---|---|---|"]  # fmt: skip
    for key in FACTS:
        fact = card.get(key) or {}
        value = str(fact.get("value") or "unknown")
        if key == "license" and fact.get("license_class"):
            value += f" ({fact['license_class']})"
        source = fact.get("source") or tr("facts.no_source")
        rows.append(f"| {tr('facts.' + key)} | {value} | {source} |")
    return "\n".join(rows)


def quality_markdown(path: Path, tr: Translator) -> str:
    from engine.evaluate import load_quality_report

    report = load_quality_report(path)
    if report is None:
        return f"#### {tr('facts.quality')}\n\n{tr('facts.no_report')}"
    agreement = report.get("expert_agreement") or []
    per_layer = " / ".join(f"{a:.1%}" for a in agreement) if agreement else "—"
    return "\n".join(
        [
            f"#### {tr('facts.quality')}",
            "",
            tr("facts.quality_against", reference=Path(str(report.get("reference", ""))).name),
            "",
            f"| KL mean | KL p99 | top-1 | {tr('facts.expert_agreement')} |",
            "|---|---|---|---|",
            f"| {report['kl_mean']:.5f} | {report.get('kl_p99', 0):.4f} | "
            f"{report.get('top1_agreement', 0):.1%} | {per_layer} |",
        ]
    )
