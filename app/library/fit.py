"""Whether a GGUF quant on the hub fits this machine, before it is downloaded.

The verdict is engine.llamacpp.memory_plan's, made from the file's own header: the first bytes of
each file (or of each shard of a split set) are fetched with HTTP Range requests, written
at the start of a sparse temporary file as long as the real one (the rest reads as zeros
and takes no disk on Linux and macOS file systems), and read with the engine's GGUF header
reader, which never looks past the tensor table. A prefix that stops inside the header is
noticed (the parse fails, or its data section would start past the prefix) and a longer
one is fetched: vocabularies make headers of a few MB.

Verdicts: "fits on GPU", "experts in RAM" (attention and dense weights on the GPU, routed
experts of some blocks in CPU RAM, llama.cpp's --n-cpu-moe), "fits in RAM" (no GPU
offload here), "does not fit".
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from converters.core.errors import BadModelFile
from converters.formats.gguf_header import read_contents
from engine.llamacpp.gguf_layout import read_gguf_layout
from engine.llamacpp.memory_plan import Hardware, MemoryPlan, plan_memory

from .hub_files import Choice

FIRST_PROBE_BYTES = 1 << 20
MAX_HEADER_BYTES = 256 << 20  # a 256k vocabulary with merges is ~10 MB; far more is not a header


@dataclass
class Fit:
    verdict: str  # fits on GPU | experts in RAM | fits in RAM | does not fit | unknown
    plan: MemoryPlan | None = None
    problem: str = ""


def verdict(plan: MemoryPlan) -> str:
    if not plan.fits:
        return "does not fit"
    if not plan.hardware.gpu_offload or plan.gpu_layers == 0:
        return "fits in RAM"
    if plan.cpu_moe_layers or plan.gpu_layers <= plan.layout.n_layers:
        return "experts in RAM"
    return "fits on GPU"


def this_machine() -> Hardware:
    # llama.cpp's device list (ctypes into ggml): loaded only when a verdict is asked for
    from engine.llamacpp.devices import detect_hardware

    return detect_hardware()


def _range(url: str, end: int) -> bytes:
    headers = {**build_hf_headers(), "Range": f"bytes=0-{end}", "Accept-Encoding": "identity"}
    response = get_session().get(url, headers=headers, follow_redirects=True)
    hf_raise_for_status(response)
    return response.content[: end + 1]  # a server that ignores Range sends it all


def _header_prefix(url: str, local: Path, size: int) -> None:
    want = min(FIRST_PROBE_BYTES, size)
    while True:
        data = _range(url, want - 1)
        with local.open("wb") as out:
            out.write(data)
            out.truncate(size)  # sparse: as long as the real file, nothing stored past data
        try:
            if read_contents(local).data_offset <= len(data):
                return
        except BadModelFile:
            if len(data) >= size:
                raise
        if want >= min(size, MAX_HEADER_BYTES):
            raise BadModelFile(
                f"{local.name} has no GGUF header within its first {want} bytes.",
                "Download it and run `itamae inspect` on it.",
            )
        want = min(want * 4, size, MAX_HEADER_BYTES)


def hub_fit(
    repo_id: str, commit: str, choice: Choice, hardware: Hardware | None = None, endpoint=None
) -> Fit:
    """The memory plan's verdict for one GGUF choice (a few MB fetched, nothing kept)."""
    ggufs = [f for f in choice.weights if f.path.endswith(".gguf")]
    if not ggufs or choice.kind != "model":
        return Fit("unknown", problem="only GGUF quants are planned before download")
    try:
        with tempfile.TemporaryDirectory(prefix="itamae-header-") as tmp:
            for f in ggufs:
                url = hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint)
                _header_prefix(url, Path(tmp) / PurePosixPath(f.path).name, f.size)
            layout = read_gguf_layout(Path(tmp) / PurePosixPath(ggufs[0].path).name)
        plan = plan_memory(layout, hardware or this_machine(), check=False)
    except BadModelFile as e:
        return Fit("unknown", problem=str(e))
    return Fit(verdict(plan), plan)
