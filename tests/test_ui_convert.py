"""The convert tab's worker: a real conversion with progress, a cancel that leaves
nothing under the output name, and the optional quality measurement after it (a real
evaluation against the source, stored beside the model; cancelling or failing it keeps
the model)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from app.convert_job import ConvertJob, progress_html, run_job
from app.i18n import Translator
from app.ui.convert import default_output, recipe_choices
from converters.conversion.recipes import get_recipe, recipes_for
from converters.facts.inspection import inspect
from engine.evaluate import load_quality_report, report_path

EN, JA = Translator("en"), Translator("ja")
WAIT_S = 300  # generous: the machine is shared


def run_watched(job: ConvertJob, source: Path, dest: Path, until=None) -> list[str]:
    """Run the job in its own thread as the tab does, sampling the progress bar the way
    the tab's poll does; `until(job)` true once cancels the job. -> the distinct texts."""
    worker = threading.Thread(target=run_job, args=(job, str(source), dest, "Q8_0", "gguf"))
    worker.start()
    seen: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while not job.finished and time.monotonic() < deadline:
        html = progress_html(job, EN)
        if not seen or seen[-1] != html:
            seen.append(html)
        if until is not None and until(job):
            job.cancel.set()
        time.sleep(0.005)
    worker.join(timeout=WAIT_S)
    assert job.finished, "the job did not finish in time"
    return seen


def test_convert_reports_progress_and_lands_in_the_models_folder(tmp_path, hf_checkpoint):
    source = hf_checkpoint("qwen3_moe")
    dest = tmp_path / default_output(str(source), "Q8_0", "gguf")
    job = ConvertJob()
    run_job(job, str(source), dest, "Q8_0", "gguf")
    assert job.error == "" and not job.cancelled
    assert dest.name == "qwen3_moe-Q8_0.gguf" and dest.stat().st_size > 0
    assert job.fraction > 0.9 and job.message  # the converter reported how far it got
    assert inspect(dest).arch == "qwen3_moe"
    assert str(dest) in progress_html(job, EN)
    # quality off (the default): no evaluation ran, no report was written
    assert job.phase == "convert" and job.quality is None and not report_path(dest).exists()


def test_cancel_leaves_no_file_under_the_output_name(tmp_path, hf_checkpoint):
    dest = tmp_path / "out.gguf"
    job = ConvertJob(measure_quality=True)
    job.cancel.set()  # pressed before the first tensor
    run_job(job, str(hf_checkpoint("qwen3_moe")), dest, "Q8_0", "gguf")
    assert job.finished and job.cancelled and not dest.exists()
    assert job.phase == "convert" and not report_path(dest).exists()  # nothing to measure
    assert "cancelled" in progress_html(job, EN).lower()


def test_quality_is_measured_after_converting_and_stored_beside_the_model(tmp_path, hf_checkpoint):
    source = hf_checkpoint("qwen3_moe")
    dest = tmp_path / "qwen3_moe-Q8_0.gguf"
    job = ConvertJob(measure_quality=True)
    seen = run_watched(job, source, dest)
    assert job.error == "" and job.quality_error == "" and not job.quality_cancelled
    assert inspect(dest).arch == "qwen3_moe"
    # the bar went through both phases, the measurement window by window with its own fraction
    measuring = [i for i, html in enumerate(seen) if "Measuring quality: window" in html]
    converting = [i for i, html in enumerate(seen) if "Measuring quality" not in html]
    assert measuring and converting and converting[0] < measuring[0], seen
    assert job.windows_done == job.windows_total > 1 and job.fraction == 1.0
    # the report is the Models tab's: read back from beside the model, against this source
    report = load_quality_report(dest)
    assert report is not None and report == job.quality
    assert report["model"] == str(dest) and report["reference"] == str(source)
    assert report["windows"] == job.windows_total and report["moe_layers"] == [0, 1, 2]
    assert 0 < report["kl_mean"] < 0.1 and report["top1_agreement"] > 0.5  # Q8_0 is close
    done = progress_html(job, EN)
    assert 'class="notice ok"' in done and str(dest) in done and "Models tab" in done
    assert f"mean KL {report['kl_mean']:.5f}" in done
    assert f"top-1 agreement {report['top1_agreement']:.1%}" in done
    assert f"mean expert agreement {report['expert_agreement_mean']:.1%}" in done
    assert f"KL 平均 {report['kl_mean']:.5f}" in progress_html(job, JA)


def test_cancel_during_the_measurement_keeps_the_model_and_writes_no_report(
    tmp_path, hf_checkpoint
):
    dest = tmp_path / "kept.gguf"
    job = ConvertJob(measure_quality=True)
    # cancel once the first window is scored: the measurement is truly under way
    run_watched(job, hf_checkpoint("qwen3_moe"), dest, until=lambda j: j.windows_done >= 1)
    assert job.quality_cancelled and not job.cancelled and job.error == ""
    assert 1 <= job.windows_done < job.windows_total  # it stopped part way through
    assert inspect(dest).arch == "qwen3_moe"  # the converted model is whole and kept
    assert not report_path(dest).exists() and load_quality_report(dest) is None
    assert [p.name for p in tmp_path.iterdir()] == ["kept.gguf"]  # no temporary left either
    notice = progress_html(job, EN)
    assert notice.startswith('<div class="notice">')  # news, not an error
    assert str(dest) in notice and "kept" in notice and "cancelled" in notice


def test_a_failed_measurement_says_the_model_was_kept(tmp_path):
    job = ConvertJob(measure_quality=True, phase="quality", finished=True, dest=tmp_path / "m")
    job.quality_error = "The model has 1000 tokens and the reference 32000: not the same model."
    for tr, kept in ((EN, "the model was kept"), (JA, "モデルは残してあります")):
        notice = progress_html(job, tr)
        assert 'class="notice error"' in notice and kept in notice
        assert str(tmp_path / "m") in notice and "1000 tokens" in notice


def test_the_measuring_bar_counts_windows():
    job = ConvertJob(measure_quality=True, phase="quality")
    assert "loading the converted model" in progress_html(job, EN)
    job.windows_done, job.windows_total, job.fraction = 2, 6, 2 / 6
    bar = progress_html(job, EN)
    assert "Measuring quality: window 3 of 6 — 33%" in bar and "width:33%" in bar
    assert "ウィンドウ 3 / 6" in progress_html(job, JA)


def test_every_offered_gguf_recipe_exists_and_sizes_are_estimated():
    for fmt in ("gguf", "torch"):
        offered = [name for _, name in recipe_choices(fmt, 0, EN)]
        assert offered == [r.name for r in recipes_for(fmt)]  # the converter's own table
        for name in offered:
            get_recipe(name, fmt)  # raises for a recipe the converter does not know
    labels = [label for label, _ in recipe_choices("gguf", 30_000_000_000, EN)]
    assert any(label.startswith("Q8_0 · ≈31.9 GB") for label in labels), labels
