"""MiniMax-M2 as published, in FP8 with 128x128 block scales: the torch engine and the GGUF
in llama.cpp against transformers fp32 on the dequantized weights (tests/fixtures/reference.py),
routing included; and a config without `scoring_func` (transformers does not save it) still
routes with sigmoid in llama.cpp."""

from __future__ import annotations

import json
import shutil

from gguf import ExpertGatingFuncType, GGUFReader

from converters.conversion.convert import convert
from tests.convert_helpers import llama_cpp_logits, relative_error, transformers_logits
from tests.fixtures.reference import reference_model
from tests.test_torch_parity import (
    DECODE,
    PREFILL,
    TOL,
    RouterCounts,
    load_model,
    prompt_ids,
    rel_err,
    run_ours,
    run_reference,
)

FP8 = "minimax_m2_fp8"


def test_torch_engine_on_fp8_matches_the_dequantized_reference(hf_checkpoint):
    folder = hf_checkpoint(FP8)
    ref = reference_model(folder)
    ids = prompt_ids(folder)
    model = load_model(folder)  # dequantizes the FP8 blocks on load
    counter = RouterCounts(ref, model.args.n_experts)
    ref_prefill, ref_steps, fed = run_reference(ref, ids)
    prefill, steps = run_ours(model, ids, fed)
    assert rel_err(prefill, ref_prefill) < TOL
    for i, (ours, theirs) in enumerate(zip(steps, ref_steps, strict=True)):
        assert rel_err(ours, theirs) < TOL, f"decode step {i}"
    assert model.usage.counts.tolist() == counter.counts.tolist()
    assert int(model.usage.counts.sum()) == (PREFILL + DECODE) * 4 * 3


def test_fp8_gguf_matches_the_dequantized_reference(hf_checkpoint, tmp_path):
    dest = tmp_path / "minimax.gguf"
    convert(hf_checkpoint(FP8), dest, "F32")
    got, want = llama_cpp_logits(dest), transformers_logits(hf_checkpoint(FP8))
    assert relative_error(got, want) <= 1e-4


def test_routes_with_sigmoid_when_config_is_silent(hf_checkpoint, tmp_path):
    folder = tmp_path / "silent"
    shutil.copytree(hf_checkpoint("minimax_m2"), folder)
    config = json.loads((folder / "config.json").read_text())
    del config["scoring_func"]
    (folder / "config.json").write_text(json.dumps(config))
    dest = tmp_path / "silent.gguf"
    convert(folder, dest, "F32")
    gating = GGUFReader(dest).fields["minimax-m2.expert_gating_func"].contents()
    assert gating == int(ExpertGatingFuncType.SIGMOID)
    got, want = llama_cpp_logits(dest), transformers_logits(hf_checkpoint("minimax_m2"))
    assert relative_error(got, want) <= 1e-4
