"""The torch engine's Mamba-2 mixer (engine/torch/mamba2.py) against transformers'
NemotronHMamba2Mixer of the Nemotron-H fixture (its plain-torch path, fp32): the mixer run
on 48 tokens at once (three 16-token chunks) is the reference for ours prefilling 32 tokens
(chunked form) and then decoding 16 one at a time (recurrent form, the conv and SSM states
carried in the StateCache), and for ours prefilling 20 + 28 (a chunk split mid-way, the
state carried between prefills). A checkpoint taken after the prefill and restored gives the
same decode again."""

from __future__ import annotations

import pytest
import torch

from engine.torch.kv_cache import StateCache
from engine.torch.layers import Linear
from engine.torch.mamba2 import Mamba2Mixer
from tests.fixtures.nemotron_h import fixture_path
from tests.fixtures.reference import reference_model

pytest.importorskip("transformers.models.nemotron_h")
TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def mixers():
    model = reference_model(fixture_path())
    layer = model.config.layers_block_type.index("linear_attention")
    ref = model.model.layers[layer].mixer
    cfg = model.config
    ours = Mamba2Mixer(
        in_proj=Linear(ref.in_proj.weight.detach(), None),
        conv=ref.conv1d.weight.detach(),
        conv_bias=ref.conv1d.bias.detach(),
        dt_bias=ref.dt_bias.detach(),
        a_log=ref.A_log.detach(),
        d=ref.D.detach(),
        norm=ref.norm.weight.detach(),
        out=Linear(ref.out_proj.weight.detach(), None),
        heads=cfg.mamba_num_heads,
        head_dim=cfg.mamba_head_dim,
        groups=cfg.n_groups,
        state_size=cfg.ssm_state_size,
        layer=layer,
        chunk=cfg.chunk_size,
        dt_min=cfg.time_step_min,
        eps=cfg.layer_norm_epsilon,
    )
    x = torch.randn(1, 48, cfg.hidden_size, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = ref(x)
    return ours, x, want


def test_prefill_then_decode_matches_transformers(mixers):
    ours, x, want = mixers
    cache = StateCache(8, 64)
    got = [ours(x[:, :32], cache)]
    assert rel_err(got[0], want[:, :32]) < TOL
    cache.length = 32
    cache.checkpoint()
    for i in range(32, 48):
        got.append(ours(x[:, i : i + 1], cache))
        assert rel_err(got[-1], want[:, i : i + 1]) < TOL, f"decode step {i - 32}"
    assert rel_err(torch.cat(got, 1), want) < TOL
    cache.length = 48
    assert cache.truncate(40) == 32  # back to the turn boundary, state as it was there
    again = torch.cat([ours(x[:, i : i + 1], cache) for i in range(32, 48)], 1)
    assert torch.equal(again, torch.cat(got[1:], 1))


def test_prefill_in_two_parts_carries_the_state(mixers):
    ours, x, want = mixers
    cache = StateCache(8, 64)
    got = torch.cat([ours(x[:, :20], cache), ours(x[:, 20:], cache)], 1)
    assert rel_err(got, want) < TOL
