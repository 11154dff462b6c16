"""Shared by the conversion tests: llama.cpp's logits for a GGUF, transformers' for a
checkpoint, KL divergence, and a module-scoped factory of converted fixture files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.conversion.convert import convert
from tests.fixtures.reference import reference_model

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = [0] + list(range(40, 71))  # bos then 31 ordinary tokens: 32 in all


def yarn_betas(path) -> dict[str, float]:
    """The file's YaRN beta_fast/beta_slow as llama.cpp context parameters, as Itamae's
    llama.cpp engine passes them (llama.cpp's deepseek2 loader does not read them)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    names = ("yarn_beta_fast", "yarn_beta_slow")
    keys = {name: f"{arch}.rope.scaling.{name}" for name in names}
    return {name: float(fields[key].contents()) for name, key in keys.items() if key in fields}


def llama_cpp_logits(path, tokens=PROMPT, file_betas: bool = True) -> np.ndarray:
    return llama_cpp_run(path, tokens, file_betas=file_betas)[0]


def llama_cpp_run(
    path, tokens=PROMPT, new_tokens: int = 0, n_ctx: int = 64, file_betas: bool = True
) -> tuple[np.ndarray, list[int]]:
    """llama.cpp with an F32 KV cache (the file's YaRN betas passed as Itamae's llama.cpp
    engine passes them): the logits of every prompt position, and `new_tokens` greedy
    tokens after the prompt."""
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
        **(yarn_betas(path) if file_betas else {}),
    )
    try:
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        greedy: list[int] = []
        for _ in range(new_tokens):
            greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([greedy[-1]])
        return logits, greedy
    finally:
        llm.close()


def transformers_logits(folder, tokens=PROMPT) -> np.ndarray:
    model = reference_model(folder)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def kl_and_top1(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    lp = reference - np.logaddexp.reduce(reference, axis=1, keepdims=True)
    lq = other - np.logaddexp.reduce(other, axis=1, keepdims=True)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return float(kl.mean()), float((reference.argmax(1) == other.argmax(1)).mean())


def converted_files():
    """A module-scoped fixture: converted(fixture, recipe="F32") -> the GGUF Itamae writes
    from that fixture, made once per module. Assign it in a test module:
    `converted = converted_files()`."""

    @pytest.fixture(scope="module")
    def converted(hf_checkpoint, tmp_path_factory):
        folder = tmp_path_factory.mktemp("converted")
        made = {}

        def make(name: str, recipe: str = "F32"):
            if (name, recipe) not in made:
                dest = folder / f"{name}-{recipe}.gguf"
                convert(hf_checkpoint(name), dest, recipe)
                made[name, recipe] = dest
            return made[name, recipe]

        return make

    return converted
