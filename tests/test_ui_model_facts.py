"""The Models tab shows each model's openness card and, once measured, its quality report."""

from __future__ import annotations

from app import library
from app.i18n import Translator
from app.ui.library_view import details_markdown
from converters.conversion.convert import convert
from engine.evaluate import evaluate, save_report


def test_details_show_openness_and_the_stored_quality_report(hf_checkpoint, tmp_path):
    source = hf_checkpoint("qwen3_moe")
    gguf_path = tmp_path / "models" / "qwen3-Q8_0.gguf"
    gguf_path.parent.mkdir()
    convert(source, gguf_path, "Q8_0")
    entry = library.LibraryEntry(gguf_path, "models", gguf_path.name)
    entry.info, _ = library.inspect_model(gguf_path)

    before = details_markdown(entry, Translator("en"))
    # the card was carried from the source's README front matter (license: apache-2.0)
    assert "Openness" in before and "apache-2.0 (permissive)" in before
    assert "GGUF itamae.openness" in before
    assert "No quality report yet" in before

    report = evaluate(gguf_path, source, window=128)
    save_report(report, gguf_path)
    after = details_markdown(entry, Translator("ja"))
    assert "公開度" in after and "量子化による品質の変化" in after
    assert f"{report['kl_mean']:.5f}" in after
    assert f"{report['top1_agreement']:.1%}" in after
    assert after.count("%") >= len(report["expert_agreement"])
