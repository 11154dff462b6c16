"""RoPE settings from config.json, whichever spelling the config uses.

transformers 5 writes one `rope_parameters` dict (rope_type, rope_theta, factor, ...);
published configs and older saves write a top-level `rope_theta` beside a `rope_scaling`
dict whose kind is `type` or `rope_type` (transformers' modeling_rope_utils.py,
`standardize_rope_params`). Both the GGUF metadata and the torch engine read it here.
"""

from __future__ import annotations


def rope_parameters(config: dict) -> dict:
    """One dict: rope_type ("default" if none), rope_theta (None if the config names none)
    and the scaling fields; `rope_parameters` wins over the legacy `rope_scaling`."""
    legacy = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else {}
    current = (
        config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    )
    params = {**legacy, **current}
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    params.pop("type", None)
    theta = params.get("rope_theta", config.get("rope_theta"))
    params["rope_theta"] = float(theta) if theta is not None else None
    return params
