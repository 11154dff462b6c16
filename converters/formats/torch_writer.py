"""Writing Itamae's torch format (the layout is in converters/formats/torch_format.py).

Conversion streams expert by expert (memory bounded by one expert, each fused [E, ...]
expert tensor read one row at a time) and writes to a temporary folder that is renamed only
when complete, so an interrupt or a cancel never leaves a partial model under the final name.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from converters import archs
from converters.core.errors import Cancelled, ItamaeError, OutputExists, UnsupportedArchitecture
from converters.formats.hf_reader import HFCheckpoint
from converters.formats.mxfp4 import mxfp4_expert
from converters.formats.tiktoken_vocab import has_tiktoken_vocabulary, tiktoken_tokenizer_json
from converters.formats.torch_format import (
    ALIGN,
    DTYPE_NAMES,
    EXPERT_RE,
    EXPERT_SCHEMES,
    FORMAT,
    FORMAT_VERSION,
    FUSED_RE,
    MANIFEST,
    MXFP4_RE,
    PROJ,
    TOKENIZER_FILES,
    expert_layout,
    pack_expert,
)
from converters.formats.torch_quant import INT4_GROUP, quantize_int4_groups, quantize_int8_rows

# The int4 recipe's linear layers outside the experts, stored int4 as llama.cpp's Q4_0 file
# (its peer) stores them. The output layer: at 151,936 x 1024 (Qwen's vocabulary) it is most
# of what a decode step reads (148 MiB of 241 in int8 on the bench model); int4_head=False
# keeps it int8 (benchmarks compare the two). Attention's q/k/v/o: every token's hidden
# state goes through them (31 MiB a token in int8 on the bench model, 8% of the int4 step's
# bytes, against Q4_0's 4.5 bits a weight). Shared experts and dense MLPs stay int8, and
# any attention of another shape (MLA's projections, linear attention).
INT4_HEADS = ("lm_head.weight",)
INT4_ATTENTION = re.compile(r"^model\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight$")


def _scheme_for(name: str, shape: list[int], rest: str, int4_head: bool = False,
                int4_attention: bool = False) -> str:  # fmt: skip
    if rest == "bf16" or len(shape) != 2:
        return "float"
    float_kept = ("embed_tokens", ".mlp.gate.weight", "shared_expert_gate", "kv_b_proj",
                  ".mlp.router.")  # fmt: skip
    if any(k in name for k in float_kept) or not name.endswith(".weight"):
        return "float"
    int4 = (int4_head and name in INT4_HEADS) or (int4_attention and INT4_ATTENTION.match(name))
    if int4 and shape[1] % INT4_GROUP == 0:
        return "int4_group"
    return "int8_row"


def _keep_float32(name: str) -> bool:
    # Routers decide which experts run; keep them (and DeepSeek's correction bias) exact.
    routers = (".mlp.gate.", ".mlp.router.", "e_score_correction_bias", "shared_expert_gate")
    return any(r in name for r in routers)


class _ExpertFile:
    """Streams one MoE layer's experts into a safetensors file, one row at a time."""

    def __init__(self, path: Path, name: str, n_experts: int, row_bytes: int):
        self.path = path
        header = {name: {"dtype": "U8", "shape": [n_experts, row_bytes],
                         "data_offsets": [0, n_experts * row_bytes]},
                  "__metadata__": {"format": "pt", "writer": FORMAT}}  # fmt: skip
        text = json.dumps(header).encode()
        text += b" " * (-(8 + len(text)) % ALIGN)  # data starts on an ALIGN boundary
        self.f = open(path, "wb")  # noqa: SIM115 - written row by row, closed by close()
        self.f.write(len(text).to_bytes(8, "little") + text)

    def write(self, row: torch.Tensor) -> None:
        self.f.write(row.numpy().tobytes())

    def close(self) -> None:
        self.f.close()


def _find_experts(ckpt: HFCheckpoint, n_layers: int) -> dict[int, dict]:
    """layer -> {"prefix", "n", "names": {(e, proj): name}} or {"fused": {...}}."""
    layers: dict[int, dict] = {}
    for name in ckpt.tensor_names():
        m = EXPERT_RE.match(name)
        if m and int(m.group(1)) < n_layers:
            layer = layers.setdefault(int(m.group(1)), {"block": m.group(2), "names": {}})
            layer["names"][(int(m.group(3)), PROJ[m.group(4)])] = name
            continue
        m = FUSED_RE.match(name)
        if m and int(m.group(1)) < n_layers:
            layer = layers.setdefault(int(m.group(1)), {"block": m.group(2), "names": {}})
            layer.setdefault("fused", {})[m.group(3)] = name
            continue
        m = MXFP4_RE.match(name)
        if m and int(m.group(1)) < n_layers:  # gpt-oss: MXFP4 blocks, scales, biases
            layer = layers.setdefault(int(m.group(1)), {"block": m.group(2), "names": {}})
            layer.setdefault("mxfp4", {})[m.group(3)] = name
    return layers


def _expert_weights(ckpt: HFCheckpoint, info: dict, e: int):
    """(gate, up, down, biases or None)."""
    if "mxfp4" in info:
        prefix = f"model.layers.{info['layer']}.{info['block']}.experts"
        return mxfp4_expert(ckpt, prefix, e)
    return (*_float_expert_weights(ckpt, info, e), None)


def _float_expert_weights(ckpt: HFCheckpoint, info: dict, e: int):
    if "fused" in info:
        gate_up = ckpt.get_row(info["fused"]["gate_up_proj"], e)  # one expert, not all E
        inter = gate_up.shape[0] // 2
        return gate_up[:inter], gate_up[inter:], ckpt.get_row(info["fused"]["down_proj"], e)
    names = info["names"]
    return (ckpt.get(names[(e, "gate")]), ckpt.get(names[(e, "up")]), ckpt.get(names[(e, "down")]))


def _n_experts(info: dict, ckpt: HFCheckpoint) -> int:
    if "fused" in info:
        return ckpt.shape(info["fused"]["down_proj"])[0]
    if "mxfp4" in info:
        return ckpt.shape(next(iter(info["mxfp4"].values())))[0]
    return 1 + max(e for e, _ in info["names"])


def convert_to_torch(
    src: str | Path,
    dest: str | Path,
    quant: str = "int8",
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    rest: str | None = None,
    int4_head: bool = True,
) -> Path:
    """Write the torch format of HF folder `src` into the new folder `dest`; returns dest.

    `quant` is the experts' scheme; `rest` ("bf16" | "int8") that of the other linear layers,
    by default bf16 with bf16 experts and int8 otherwise; `int4_head=False` keeps the int4
    recipe's output layer int8 (benchmarks compare the two). `progress(done, total, what)` is
    called after each tensor or expert; `cancel` is checked as often and stops the
    conversion with `Cancelled`, leaving nothing at `dest`.
    """
    if quant not in EXPERT_SCHEMES:
        raise ItamaeError(
            f"Unknown expert scheme {quant!r}.", f"Choose one of: {', '.join(EXPERT_SCHEMES)}."
        )
    rest_scheme = rest or ("bf16" if quant == "bf16" else "int8")
    if rest_scheme not in ("bf16", "int8"):
        raise ItamaeError(f"Unknown scheme {rest!r} for non-expert layers.", "Choose bf16 or int8.")
    src, dest = Path(src), Path(dest)
    if dest.exists():
        raise OutputExists(f"{dest} already exists.", "Choose another output folder or delete it.")
    ckpt = HFCheckpoint(src, keep_files_open=False)
    n_layers = int(ckpt.config.get("num_hidden_layers", 0))
    spec = archs.spec_for_config(ckpt.config)
    if not spec.converts_to_torch_format:
        raise UnsupportedArchitecture(
            f"The torch format does not lay out {spec.model_type}'s experts yet (they have no "
            "gate projection).",
            "Run the downloaded folder in the torch engine as it is (--engine torch), or "
            f"convert it to GGUF (`itamae convert {src} -o model.gguf`) for the llama.cpp "
            "engine (--engine llamacpp).",
        )
    experts = _find_experts(ckpt, n_layers)
    if spec.n_experts(ckpt.config) and not experts:  # DeepSeek-V4's `layers.N.ffn.experts.E`
        raise UnsupportedArchitecture(
            f"The torch format does not lay out {spec.model_type}'s experts (it finds none of "
            "the Hugging Face expert names it knows).",
            f"Run the downloaded folder as it is: `itamae --model {src}` (a model folder runs "
            "in the torch engine, which reads the published low-bit experts), or convert it "
            f"to GGUF for the llama.cpp engine: `itamae convert {src} -o OUT.gguf`.",
        )
    expert_names = {
        n
        for info in experts.values()
        for n in (
            *info["names"].values(),
            *info.get("fused", {}).values(),
            *info.get("mxfp4", {}).values(),
        )
    }
    others = [
        n for n in ckpt.tensor_names() if n not in expert_names and not _beyond_layers(n, n_layers)
    ]
    total = len(others) + sum(_n_experts(i, ckpt) for i in experts.values())
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        int4 = (int4_head and quant == "int4", quant == "int4")  # the head, attention
        manifest = _write_all(
            ckpt, tmp, quant, rest_scheme, experts, others, total, progress, cancel, int4
        )
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
        if has_tiktoken_vocabulary(src):  # Kimi-K2: the engine reads a tokenizer.json
            spec = json.dumps(tiktoken_tokenizer_json(src), ensure_ascii=False)
            Tokenizer.from_str(spec).save(str(tmp / "tokenizer.json"))
        config = dict(ckpt.config)
        config.pop("quantization_config", None)  # FP8/MXFP4 were dequantized: scales are gone
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _beyond_layers(name: str, n_layers: int) -> bool:
    """DeepSeek-V3's multi-token-prediction layer (model.layers.{n_layers}) is not used."""
    m = re.match(r"^model\.layers\.(\d+)\.", name)
    return bool(m) and int(m.group(1)) >= n_layers


def _write_all(
    ckpt, tmp, quant, rest_scheme, experts, others, total, progress, cancel, int4
) -> dict:
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if cancel is not None and cancel.is_set():
            raise Cancelled("Conversion cancelled.", "Nothing was written.")
        done += 1
        if progress is not None:
            progress(done, total, what)

    tensors_manifest, out = {}, {}
    for name in others:
        scheme = _scheme_for(name, ckpt.shape(name), rest_scheme, *int4)
        w = ckpt.get(name)
        if scheme == "int8_row":
            q, s = quantize_int8_rows(w)
            out[name + ".q"], out[name + ".scale"] = q, s
        elif scheme == "int4_group":
            q, s, z = quantize_int4_groups(w, INT4_GROUP)
            out[name + ".q"], out[name + ".scale"], out[name + ".zero"] = q, s, z
        else:
            dtype = torch.float32 if _keep_float32(name) else torch.bfloat16
            out[name] = w.to(dtype).contiguous()
        tensors_manifest[name] = {"scheme": scheme, "shape": ckpt.shape(name)}
        step(name)
    save_file(out, tmp / "model.safetensors", metadata={"format": "pt", "writer": FORMAT})
    del out
    expert_scheme = {"bf16": "float", "int8": "int8_row", "int4": "int4_group"}[quant]
    layers_manifest = {}
    for layer in sorted(experts):
        info = experts[layer]
        n = _n_experts(info, ckpt)
        info["layer"] = layer
        gate, up, down, biases = _expert_weights(ckpt, info, 0)
        inter, hidden = gate.shape
        layout, row_bytes = expert_layout(expert_scheme, hidden, inter, biases=biases is not None)
        file = f"experts-{layer:03d}.safetensors"
        tensor = f"model.layers.{layer}.experts.packed"
        writer = _ExpertFile(tmp / file, tensor, n, row_bytes)
        try:
            for e in range(n):
                if e:
                    gate, up, down, biases = _expert_weights(ckpt, info, e)
                writer.write(pack_expert(expert_scheme, gate, up, down, biases=biases))
                step(f"layer {layer} expert {e}")
        finally:
            writer.close()
        layers_manifest[str(layer)] = {
            "file": file, "tensor": tensor, "n_experts": n, "bytes_per_expert": row_bytes,
            "hidden": hidden, "intermediate": inter,
            "parts": {k: [o, DTYPE_NAMES[d], list(s)] for k, (o, d, s) in layout.items()},
        }  # fmt: skip
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "recipe": quant if rest_scheme != "bf16" or quant == "bf16" else f"{quant}-experts",
        "experts": quant,
        "rest": rest_scheme,
        "source_model_type": ckpt.model_type,
        "expert_scheme": expert_scheme,
        "int4_group_size": INT4_GROUP if quant == "int4" else None,
        "tensors": tensors_manifest,
        "expert_layers": layers_manifest,
    }
