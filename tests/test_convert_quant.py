"""Itamae's direct GGUF encodings give the same bytes as the gguf package's reference
quantizers (gguf.quants, bit-exact with ggml-quants.c) for the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.formats.gguf_quant import DIRECT_TYPES, encode, nbytes


def reference_bytes(data: torch.Tensor, qtype: Q) -> np.ndarray:
    return quants.quantize(data.float().numpy(), qtype).view(np.uint8).reshape(-1)


def awkward_rows() -> torch.Tensor:
    """Rows that hit the rounding edges: zeros, ties at .5, equal-magnitude signs, huge and
    tiny values, a single outlier."""
    rows = torch.zeros(9, 64)
    rows[1] = 0.5
    rows[2] = torch.linspace(-1, 1, 64)
    rows[3, ::2], rows[3, 1::2] = 3.0, -3.0
    rows[4] = torch.arange(64) * 127 / 254  # multiples of d/2 after scaling
    rows[5] = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 1e-6
    rows[6] = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 1e4
    rows[7, 5] = -42.0
    # scale exactly 1 (block max 127), so every other value is an exact tie k + 0.5
    rows[8] = torch.arange(-32, 32) + 0.5
    rows[8, ::32] = 127.0
    return rows


@pytest.mark.parametrize("qtype", DIRECT_TYPES)
def test_direct_types_equal_gguf_reference(qtype):
    data = torch.cat([awkward_rows(), torch.randn(64, 64) * 0.05])
    assert np.array_equal(encode(data, qtype), reference_bytes(data, qtype))


@pytest.mark.parametrize("qtype", (Q.Q8_0, Q.Q4_0))
def test_chunked_encoding_of_a_large_tensor_equals_reference(qtype):
    """Larger than one encoding step, so chunk boundaries are crossed."""
    data = torch.randn(300, 4096, generator=torch.Generator().manual_seed(2)) * 0.02
    encoded = encode(data, qtype)
    assert encoded.size == nbytes(tuple(data.shape), qtype)
    assert np.array_equal(encoded, reference_bytes(data, qtype))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32),
        min_size=64,
        max_size=64,
    ),
    qtype=st.sampled_from((Q.Q8_0, Q.Q4_0)),
)
def test_q8_0_q4_0_equal_reference_on_any_block(values, qtype):
    data = torch.tensor(values, dtype=torch.float32).reshape(2, 32)
    assert np.array_equal(encode(data, qtype), reference_bytes(data, qtype))


def test_bf16_input_is_encoded_like_its_float32_value():
    data = (torch.randn(16, 64) * 0.1).bfloat16()
    assert np.array_equal(encode(data, Q.Q8_0), reference_bytes(data.float(), Q.Q8_0))
    assert np.array_equal(encode(data, Q.BF16), data.view(torch.uint8).numpy().reshape(-1))


def test_rows_that_do_not_split_into_blocks_are_refused():
    with pytest.raises(ValueError):
        encode(torch.zeros(4, 48), Q.Q8_0)
