"""K-quant and MoE recipes (made by llama.cpp's own quantizer) load in llama.cpp, put the
bits where the recipe says, and stay within stated bounds of the F32 file.

Bounds (mean KL over a 32-token prompt against the F32 file, on random-weight fixtures,
which are harder on quantization than trained weights): Q4_K_M <= 0.15, moe-q4 <= 0.05,
moe-q3 <= 0.08. Measured on these fixtures: Q4_K_M 0.02-0.09, moe-q4 0.007-0.02,
moe-q3 0.02-0.03.
"""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, LlamaFileType

from converters.facts.inspection import inspect
from tests.convert_helpers import converted_files, kl_and_top1, llama_cpp_logits

pytest.importorskip("llama_cpp")

converted = converted_files()
BOUNDS = {"Q4_K_M": 0.15, "moe-q4": 0.05, "moe-q3": 0.08}


@pytest.mark.parametrize("arch", ("qwen3_moe", "deepseek_v3"))
@pytest.mark.parametrize("recipe", BOUNDS)
def test_recipe_stays_within_bound(arch, recipe, converted, record_property):
    reference = llama_cpp_logits(converted(arch))
    quantized = llama_cpp_logits(converted(arch, recipe))
    kl, top1 = kl_and_top1(reference, quantized)
    record_property(f"{recipe}_kl_mean", kl)
    print(f"{arch} {recipe}: mean KL {kl:.5f}, top-1 agreement {top1:.3f}")
    assert kl <= BOUNDS[recipe]


def tensor_types(path) -> dict[str, Q]:
    return {t.name: t.tensor_type for t in GGUFReader(path).tensors}


def test_moe_q4_spends_bits_where_they_matter(converted):
    types = tensor_types(converted("deepseek_v3", "moe-q4"))
    for name, qtype in types.items():
        if "_exps." in name:
            assert qtype == Q.Q4_K, name  # routed experts
        elif name.endswith(("_norm.weight", "ffn_gate_inp.weight", ".bias")):
            assert qtype == Q.F32, name  # norms, routers, the V3 correction bias
        elif (
            "_shexp." in name or ".attn_" in name or name in ("token_embd.weight", "output.weight")
        ):
            assert qtype == Q.Q8_0, name  # shared experts, attention, embeddings, output
    assert {Q.Q4_K, Q.Q8_0, Q.F32} == set(types.values())
    info = inspect(converted("deepseek_v3", "moe-q4"))
    assert info.quant == "moe-q4"
    assert info.bits_per_weight["experts"] == 4.5
    assert info.bits_per_weight["attention"] > 8


def test_moe_q3_experts_gate_up_q3_down_q4(converted):
    types = tensor_types(converted("qwen3_moe", "moe-q3"))
    exps = {n: t for n, t in types.items() if "_exps." in n}
    assert exps and all(t == (Q.Q4_K if "down" in n else Q.Q3_K) for n, t in exps.items())


def test_k_quant_recipe_is_llama_cpps_mixture(converted):
    path = converted("qwen3_moe", "Q4_K_M")
    types = set(tensor_types(path).values())
    assert Q.Q4_K in types and types <= {Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.F32}
    field = GGUFReader(path).fields["general.file_type"]
    assert field.contents() == int(LlamaFileType.MOSTLY_Q4_K_M)
    assert path.stat().st_size < converted("qwen3_moe", "Q8_0").stat().st_size
