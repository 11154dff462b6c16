"""Score a Hugging Face folder or an Itamae torch-format folder in the native torch engine.

Logits come from the engine's own forward pass (`DecoderModel.forward(..., all_logits=True)`)
over a fresh KV cache per window, in float32 (for checkpoints up to 4 GiB; larger
ones in the engine's bf16) so that the activations' own rounding does not count as
quantization error (quantized torch-format experts are
dequantized on the fly by the engine either way). Routing is read from each MoE block's
router: every block's `router` is wrapped in a recorder that keeps the experts it chose
for each token, and otherwise answers exactly as the router does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.types import Scored

from .backend import load
from .moe import MoEBlock

FLOAT32_LIMIT_BYTES = 4 << 30  # safetensors on disk; float32 may take twice that in RAM


@dataclass
class RecordingRouter:
    """Wraps an engine router: same answer, and the chosen experts [T, K] kept per call."""

    router: object
    calls: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, top_k: int | None = None):
        weights, experts = self.router(x, top_k)
        self.calls.append(experts.detach().cpu())
        return weights, experts


class TorchScorer:
    name = "torch"
    routing_note = ""

    def __init__(self, path: Path, threads: int = 0):
        options = {"dtype": self.pick_dtype(path), "device": "auto"}  # CUDA when torch sees one
        if threads:
            options["threads"] = threads
        self.backend = load(path, **options)
        model = self.backend.model
        self.model = model
        dtype = str(model.dtype).replace("torch.", "")
        self.compute = f"torch engine on {model.device.type}, {dtype} activations"
        self.vocab_size = int(model.args.vocab_size)
        self.context_length = int(model.args.max_position_embeddings)
        self.recorders: dict[int, RecordingRouter] = {}
        for index, layer in enumerate(model.layers):
            if isinstance(layer.ffn, MoEBlock):
                layer.ffn.router = self.recorders.setdefault(
                    index, RecordingRouter(layer.ffn.router)
                )
        self.moe_layers = sorted(self.recorders)

    @staticmethod
    def pick_dtype(path: Path) -> str:
        """float32 while the weights are small enough to hold that way (a few GiB); beyond,
        the engine's own choice (bf16), so that evaluating a large model stays possible."""
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return "float32" if size <= FLOAT32_LIMIT_BYTES else "auto"

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.backend.text.encode(text, add_special_tokens=add_special)

    def score(self, tokens: list[int]) -> Scored:
        for recorder in self.recorders.values():
            recorder.calls.clear()
        ids = torch.tensor([tokens], dtype=torch.long)
        logits = self.model.forward(ids, self.model.new_cache(), all_logits=True)[0]
        routing = {
            layer: torch.cat(r.calls).numpy().astype(np.int64)
            for layer, r in self.recorders.items()
        }
        return Scored(logits=logits.float().cpu().numpy(), routing=routing)

    def close(self) -> None:
        self.backend.close()


def open_scorer(path: Path, window: int, threads: int = 0) -> TorchScorer:
    """engine.scoring.open_scorer's door into this backend. The window does not size
    anything here: the engine's KV cache grows with the tokens it is given."""
    return TorchScorer(path, threads)
