"""Llama (dense): the base the MoE files extend. Reference: transformers' modeling_llama.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import BaseArgs
from ..transformer import DecoderModel


@dataclass
class ModelArgs(BaseArgs):
    mlp_bias: bool = False


class Model(DecoderModel):
    Args = ModelArgs
