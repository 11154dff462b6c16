"""Nemotron-H (Nemotron-3-Nano-30B-A3B) on a tiny checkpoint laid out as NVIDIA publishes it
(tests/fixtures/nemotron_h.py: `backbone.` names, one tensor per expert, the layers as a
`hybrid_override_pattern` string).

References nobody here wrote:
- `itamae inspect --json` against counts taken from transformers' NemotronHForCausalLM: its
  parameters, its routed experts (top-2 of 8 active per token), its layer kinds.
"""

from __future__ import annotations

import json

import pytest

from app.cli import main
from tests.fixtures.nemotron_h import NANO, PATTERN, fixture_path
from tests.fixtures.reference import reference_model

pytest.importorskip("transformers.models.nemotron_h")


def test_inspect_json_counts(capsys):
    model = reference_model(fixture_path())
    kinds = model.config.layers_block_type  # transformers' reading of the pattern
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    routed = sum(t.numel() for n, t in state.items() if ".experts." in n)
    n_experts, top_k = NANO["n_routed_experts"], NANO["num_experts_per_tok"]
    active = total - routed + routed * top_k // n_experts
    assert main(["inspect", str(fixture_path()), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "nemotron_h"
    assert (info["n_experts"], info["experts_per_token"], info["n_shared_experts"]) == (8, 2, 1)
    assert info["n_layers"] == len(kinds) == len(PATTERN)
    assert info["n_moe_layers"] == kinds.count("moe") == 3
    assert info["n_linear_attention_layers"] == kinds.count("linear_attention") == 3
    assert (info["total_params"], info["active_params"]) == (total, active)
