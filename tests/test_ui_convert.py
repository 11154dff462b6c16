"""The convert tab's worker: a real conversion with progress, and a cancel that leaves
nothing under the output name."""

from __future__ import annotations

from app.i18n import Translator
from app.ui_convert import RECIPES, ConvertJob, _run, default_output, progress_html, recipe_choices
from converters.recipes import get_recipe


def test_convert_reports_progress_and_lands_in_the_models_folder(tmp_path, hf_checkpoint):
    source = hf_checkpoint("qwen3_moe")
    dest = tmp_path / default_output(str(source), "Q8_0", "gguf")
    job = ConvertJob()
    _run(job, str(source), dest, "Q8_0", "gguf")
    assert job.error == "" and not job.cancelled
    assert dest.name == "qwen3_moe-Q8_0.gguf" and dest.stat().st_size > 0
    assert job.fraction > 0.9 and job.message  # the converter reported how far it got
    from converters.inspect import inspect

    assert inspect(dest).arch == "qwen3_moe"
    assert str(dest) in progress_html(job, Translator("en"))


def test_cancel_leaves_no_file_under_the_output_name(tmp_path, hf_checkpoint):
    dest = tmp_path / "out.gguf"
    job = ConvertJob()
    job.cancel.set()  # pressed before the first tensor
    _run(job, str(hf_checkpoint("qwen3_moe")), dest, "Q8_0", "gguf")
    assert job.finished and job.cancelled and not dest.exists()
    assert "cancelled" in progress_html(job, Translator("en")).lower()


def test_every_offered_gguf_recipe_exists_and_sizes_are_estimated():
    for name, _ in RECIPES["gguf"]:
        get_recipe(name)  # raises for a recipe the converter does not know
    labels = [label for label, _ in recipe_choices("gguf", 30_000_000_000, Translator("en"))]
    assert any(label.startswith("Q8_0 · ≈31.9 GB") for label in labels), labels
