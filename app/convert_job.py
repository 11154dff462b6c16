"""The Convert tab's worker: convert, then (if asked) measure what the conversion cost.

One thread runs both phases on a `ConvertJob` that the tab's handler polls: first the
conversion (`converters.conversion.convert.convert`, which reports its own fraction and message),
then the quality evaluation of the result against its source (`engine.evaluate`, the
same measurement as `itamae eval`, window by window on the bundled bilingual text),
stored beside the model with `save_report` so that the Models tab shows it.

The phases fail apart: the converted model is what the person asked for and the report
is extra, so a measurement that is cancelled or fails keeps the model and says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from app.i18n import Translator
from converters.core.errors import Cancelled, ItamaeError


@dataclass
class ConvertJob:
    measure_quality: bool = False
    phase: str = "convert"  # then "quality" once the model is written, if measuring
    fraction: float = 0.0  # of the current phase
    message: str = ""  # the converter's own words on where it is
    windows_done: int = 0
    windows_total: int = 0  # 0 until the evaluation has tokenized the text
    finished: bool = False
    error: str = ""  # the conversion failed: nothing was written
    cancelled: bool = False  # the conversion was cancelled: nothing was written
    dest: Path | None = None  # set once the converted model is complete
    quality: dict | None = None  # set once the report is saved beside the model
    quality_error: str = ""
    quality_cancelled: bool = False
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)


def run_job(job: ConvertJob, source: str, dest: Path, recipe: str, fmt: str) -> None:
    """The worker thread's whole life; every outcome ends up on `job`, never raised."""
    try:
        if _convert(job, source, dest, recipe, fmt) and job.measure_quality:
            _measure_quality(job, source, dest)
    finally:
        job.finished = True


def _convert(job: ConvertJob, source: str, dest: Path, recipe: str, fmt: str) -> bool:
    from converters.conversion.convert import convert

    def report(fraction: float, message: str = "") -> None:
        job.fraction, job.message = fraction, message

    try:
        convert(source, dest, recipe, fmt, report, job.cancel)
    except Cancelled:
        job.cancelled = True
    except ItamaeError as e:
        job.error = str(e)
    except Exception as e:  # the thread must report, not vanish
        job.error = f"{type(e).__name__}: {e}"
    else:
        job.dest = dest
    return job.dest is not None


def _measure_quality(job: ConvertJob, source: str, dest: Path) -> None:
    from engine.evaluate import evaluate, save_report

    def progress(done: int, total: int) -> None:
        job.windows_done, job.windows_total, job.fraction = done, total, done / total

    job.phase, job.fraction, job.message = "quality", 0.0, ""
    try:
        report = evaluate(dest, source, progress=progress, cancel=job.cancel)
        save_report(report, dest)
    except Cancelled:
        job.quality_cancelled = True
    except ItamaeError as e:
        job.quality_error = str(e)
    except Exception as e:  # the model is kept whatever went wrong with its report
        job.quality_error = f"{type(e).__name__}: {e}"
    else:
        job.quality = report


def progress_html(job: ConvertJob, tr: Translator) -> str:
    if job.error:
        return f'<div class="notice error">{escape(job.error)}</div>'
    if job.cancelled:
        return f'<div class="notice">{escape(tr("convert.cancelled"))}</div>'
    if job.finished and job.dest is not None:
        return _outcome_html(job, tr)
    if job.phase == "quality":
        if job.windows_total:
            window = min(job.windows_done + 1, job.windows_total)
            message = tr("convert.measuring", i=window, n=job.windows_total)
        else:
            message = tr("convert.measuring_start")
    else:
        message = job.message or tr("convert.working")
    return (
        f'<div class="download"><div>{escape(message)} — {job.fraction:.0%}</div>'
        f'<div class="bar"><div style="width:{job.fraction * 100:.0f}%"></div></div></div>'
    )


def _outcome_html(job: ConvertJob, tr: Translator) -> str:
    path = str(job.dest)
    if job.quality_cancelled:
        return f'<div class="notice">{escape(tr("convert.quality_cancelled", path=path))}</div>'
    if job.quality_error:
        text = tr("convert.quality_failed", path=path, error=job.quality_error)
        return f'<div class="notice error">{escape(text)}</div>'
    html = escape(tr("convert.done", path=path))
    if job.quality is not None:
        html += "<br>" + escape(headline(job.quality, tr))
    return f'<div class="notice ok">{html}</div>'


def headline(report: dict, tr: Translator) -> str:
    """The report's figures a person reads first; the Models tab has the rest."""
    experts = report.get("expert_agreement_mean")
    return tr(
        "convert.quality_done",
        kl=f"{report['kl_mean']:.5f}",
        top1=f"{report['top1_agreement']:.1%}",
        # None when neither engine could report routing (a dense model, say)
        experts="—" if experts is None else f"{experts:.1%}",
    )
