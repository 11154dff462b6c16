"""`convert(src, dest, recipe)`: a Hugging Face checkpoint -> a GGUF file (or the torch format).

Everything that can be wrong with the input (architecture, tensors, tokenizer, recipe,
existing output, free disk) is checked before the output is opened. The file is written
under a temporary name beside the destination and renamed only when complete, so an
interrupt, a crash or a cancel never leaves a partial file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from converters import archs
from converters.conversion.fallbacks import (
    FALLBACK_KEY,
    Fallback,
    direct_fallbacks,
    record_in_file,
    reserved_value,
    summary,
)
from converters.conversion.llama_quantize import quantize_with_llama_cpp, require_llama_cpp
from converters.conversion.recipes import (
    Recipe,
    default_recipe,
    get_recipe,
    keeping_carried,
    source_precision,
    tensor_type,
)
from converters.core.errors import (
    ItamaeError,
    NotEnoughDisk,
    OutputExists,
    UnsupportedArchitecture,
)
from converters.formats.gguf_plan import plan_tensors
from converters.formats.gguf_writer import (
    Progress,
    assign_types,
    build_writer,
    data_bytes,
    write_gguf,
)
from converters.formats.hf_reader import HFCheckpoint
from converters.formats.torch_format import is_torch_format
from converters.formats.torch_writer import convert_to_torch

METADATA_MARGIN = 64 << 20  # tokenizer, metadata and alignment: generous for a 256k vocabulary


@dataclass
class ConvertResult:
    path: Path
    recipe: str
    seconds: float
    size_bytes: int
    # tensors that got another type than the recipe's (rows not a multiple of its blocks)
    fallbacks: list[Fallback] = field(default_factory=list)


def convert(
    src: str | Path,
    dest: str | Path,
    recipe: str | None = None,  # None: the format's default recipe
    fmt: str = "gguf",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
    repo_id: str = "",
) -> ConvertResult:
    src, dest = Path(src), Path(dest)
    started = time.perf_counter()
    chosen = get_recipe(recipe, fmt) if recipe else default_recipe(fmt)
    if fmt == "torch":
        return _convert_to_torch(src, dest, chosen, progress, cancel, force, started)
    _check_destination(dest, force)
    fallbacks = convert_to_gguf(src, dest, chosen, progress, cancel, repo_id)
    seconds = time.perf_counter() - started
    return ConvertResult(dest, chosen.name, seconds, dest.stat().st_size, fallbacks)


def _convert_to_torch(src, dest, recipe, progress, cancel, force, started) -> ConvertResult:
    """The torch format (converters/torch_format.py), a folder; --force replaces only a
    folder that is itself a torch-format model, never an arbitrary folder."""
    if dest.exists():
        if not force:
            raise OutputExists(f"{dest} already exists.", "Choose another name or pass --force.")
        if not is_torch_format(dest):
            raise OutputExists(
                f"{dest} exists and is not an Itamae torch-format model, so it is not replaced.",
                "Choose another output folder.",
            )
        shutil.rmtree(dest)

    def counted(done: int, total: int, what: str) -> None:
        progress(done / max(1, total), what)

    convert_to_torch(
        src, dest, recipe.experts, counted if progress else None, cancel, rest=recipe.rest
    )
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    return ConvertResult(dest, recipe.name, time.perf_counter() - started, size)


def _check_destination(dest: Path, force: bool) -> None:
    if dest.is_dir():
        raise OutputExists(f"{dest} is a folder.", "Give the output file's name, e.g. model.gguf.")
    if dest.exists() and not force:
        raise OutputExists(
            f"{dest} already exists.", "Choose another name or pass --force to replace it."
        )
    if not dest.parent.is_dir():
        raise ItamaeError(f"The folder {dest.parent} does not exist.", "Create it first.")


def convert_to_gguf(
    src: Path,
    dest: Path,
    recipe: Recipe,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    repo_id: str = "",
) -> list[Fallback]:
    """Write `dest`; returns the tensors that got a fallback type (also recorded in it)."""
    ckpt = HFCheckpoint(src, keep_files_open=False)
    spec = archs.spec_for_config(ckpt.config)
    if not spec.converts_to_gguf:
        raise UnsupportedArchitecture(
            f"Itamae does not convert {spec.model_type} models to GGUF yet.",
            "Convert the folder with llama.cpp's own convert_hf_to_gguf.py, then open the "
            ".gguf file in Itamae's llama.cpp engine.",
        )
    if spec.gguf_types_by_source and recipe.uses_llama_quantizer:
        # measured on DeepSeek-V4: llama.cpp's quantizer writes a Q4_K_M file that its own
        # deepseek4 graph then refuses (a reshape assertion), so it is not offered
        raise UnsupportedArchitecture(
            f"The {recipe.name} recipe (llama.cpp's quantizer) does not yet make a "
            f"{spec.model_type} GGUF that llama.cpp runs.",
            "Use a direct recipe: Q8_0 (the default, the types llama.cpp's own converter "
            "writes, MXFP4 experts) or F32.",
        )
    planned = plan_tensors(ckpt, spec)
    # (blocks carried in their own type, MXFP4 experts, do not decide the float type)
    dtypes = {ckpt.dtype_name(n) for p in planned if p.carried is None for n in p.sources}
    target = recipe.direct if recipe.direct is not None else source_precision(dtypes)
    pin = not recipe.uses_llama_quantizer  # its quantizer starts from plain floats
    assign_types(planned, lambda p: tensor_type(p, target, pin))
    recipe = keeping_carried(recipe, planned)
    writer = build_writer(ckpt, spec, planned, recipe.file_type, recipe.name, repo_id)
    fallbacks = [] if recipe.uses_llama_quantizer else direct_fallbacks(planned, target)
    # llama.cpp's fallbacks are known only once it has quantized: room is kept for them
    writer.add_string(
        FALLBACK_KEY,
        reserved_value() if recipe.uses_llama_quantizer else json.dumps(summary(fallbacks)),
    )
    needed = data_bytes(planned) + METADATA_MARGIN
    if recipe.uses_llama_quantizer:
        needed += needed // 2  # the quantized file beside the full-precision one
    check_disk(dest.parent, needed)
    if recipe.uses_llama_quantizer:
        require_llama_cpp()  # before hours of writing, not after

    remove_stale_partials(dest)
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    quantized = dest.with_name(f".{dest.name}.quantized-{os.getpid()}")
    stage = 0.5 if recipe.uses_llama_quantizer else 1.0
    try:
        write_gguf(ckpt, writer, planned, partial, _scaled(progress, stage), cancel)
        if recipe.uses_llama_quantizer:
            if progress:
                progress(stage, f"quantizing with llama.cpp ({recipe.name})")
            fallbacks = quantize_with_llama_cpp(partial, quantized, recipe)
            record_in_file(quantized, summary(fallbacks))
            partial.unlink()
            quantized.replace(dest)
        else:
            partial.replace(dest)
        if progress:
            progress(1.0, "done")
    finally:
        for leftover in (partial, quantized):
            leftover.unlink(missing_ok=True)
    return fallbacks


def remove_stale_partials(dest: Path) -> None:
    """Temporary files a killed conversion of the same output left behind (its process is
    gone); a running conversion's are left alone."""
    for leftover in dest.parent.glob(f".{dest.name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if leftover.name.split(".")[-1].split("-")[0] not in ("partial", "quantized"):
            continue
        if pid.isdigit() and not _process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scaled(progress: Progress | None, share: float) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, what: progress(fraction * share, what)


def check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise NotEnoughDisk(
            f"Converting needs about {needed / 2**30:.1f} GiB in {folder} but only "
            f"{free / 2**30:.1f} GiB is free.",
            "Free some space or write the output to another disk (-o).",
        )
