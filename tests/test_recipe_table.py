"""The one recipe table: both formats, their defaults, and the nominal bits the size
estimates use, read alike by the converter, the CLI and the Convert tab."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from converters.conversion.convert import convert
from converters.conversion.recipes import DEFAULTS, default_recipe, get_recipe, recipes_for
from converters.core.errors import ItamaeError


def test_each_format_has_its_default_and_recipes_sorted_by_bits():
    for fmt in ("gguf", "torch"):
        recipes = recipes_for(fmt)
        assert default_recipe(fmt) in recipes and default_recipe(fmt).name == DEFAULTS[fmt]
        assert all(r.format == fmt for r in recipes)
        bits = [r.nominal_bits for r in recipes]
        assert bits == sorted(bits, reverse=True)
    assert [(r.experts, r.rest) for r in recipes_for("torch")] == [
        ("bf16", "bf16"),
        ("int8", "int8"),
        ("int4", "int8"),
    ]


def test_a_recipe_of_the_other_format_is_named_as_such():
    with pytest.raises(ItamaeError, match="int4 is a torch recipe"):
        get_recipe("int4", "gguf")
    with pytest.raises(ItamaeError, match="moe-q4 is a gguf recipe"):
        get_recipe("moe-q4", "torch")


def test_convert_without_a_recipe_takes_the_formats_default(hf_checkpoint, tmp_path, capsys):
    src = hf_checkpoint("qwen3_moe")
    assert convert(src, tmp_path / "a.gguf").recipe == DEFAULTS["gguf"]
    assert (
        main(["convert", str(src), "-o", str(tmp_path / "t"), "--format", "torch", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["recipe"] == DEFAULTS["torch"]
    manifest = json.loads((tmp_path / "t" / "itamae_torch.json").read_text())
    assert (manifest["experts"], manifest["rest"]) == ("int8", "int8")
