"""Prefill's causal masks (engine/torch/attention.py): the additive bias the layers hand to
scaled_dot_product_attention says what the bool mask says (0 where a query may attend a
key, -inf elsewhere, with and without a sliding window), and the layers of one prefill chunk
share one tensor instead of each building its own. Prefill's logits against transformers
with it: test_torch_parity.py."""

from __future__ import annotations

import pytest
import torch

from engine.torch.attention import causal_bias, causal_mask


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_is_the_mask_as_zero_or_minus_infinity(window, dtype):
    allowed = causal_mask(7, 20, window, torch.device("cpu"))
    bias = causal_bias(7, 20, window, torch.device("cpu"), dtype)
    assert bias.shape == allowed.shape == (7, 27) and bias.dtype == dtype
    assert torch.equal(bias == 0, allowed)
    assert torch.isneginf(bias[~allowed]).all()


def test_one_chunk_builds_its_bias_once():
    args = (512, 1024, None, torch.device("cpu"), torch.bfloat16)
    assert causal_bias(*args) is causal_bias(*args)
    assert causal_bias(1, 9, None, torch.device("cpu"), torch.float32) is None  # decode: none
