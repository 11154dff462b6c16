"""A K-quant recipe on tensors whose rows are not a multiple of 256: `itamae convert` says
how many tensors llama.cpp's quantizer gave another type and which, in plain text and in
--json, the GGUF records it, and `itamae eval`'s quality report carries it.

The fixture is the tiny Kimi-K2 checkpoint: hidden size 256 (K-quants fit), but routed
and shared experts of width 32 and MLA projections of 32-128, so some tensors fall back
and others do not. The expected figures are counted from the written GGUF's own tensor
types (gguf-py's GGUFReader), not from anything Itamae says:

- moe-q4 asks Q4_K for the routed experts only (everything else Q8_0): an expert tensor
  that is not Q4_K in the file fell back;
- Q4_K_M asks a K-quant (Q4_K/Q5_K/Q6_K) for every quantized tensor of this model (it has
  384 experts, so none of llama.cpp's 8-expert Q8_0 bumps apply): a quantized tensor
  (not F32) whose rows are not a multiple of 256 cannot hold a K-quant, so it fell back.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter

import pytest
from gguf import GGUFReader

from app.cli import main
from converters.facts.inspection import inspect
from engine.evaluate import evaluate

K_QUANTS = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


@pytest.fixture(scope="module")
def converted(hf_checkpoint, tmp_path_factory):
    """recipe -> (path, --json summary, plain-text output), converted once per module."""
    folder, made = tmp_path_factory.mktemp("fallbacks"), {}

    def make(recipe: str, as_json: bool = True):
        if (recipe, as_json) not in made:
            dest = folder / f"kimi-{recipe}-{as_json}.gguf"
            argv = ["convert", str(hf_checkpoint("kimi_k2")), "-o", str(dest), "--quant", recipe]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main([*argv, "--json"] if as_json else argv) == 0
            made[recipe, as_json] = dest, out.getvalue()
        return made[recipe, as_json]

    return make


def file_types(path) -> dict[str, tuple[str, int]]:
    """GGUF tensor name -> (type, row length), as gguf-py reads the file."""
    return {t.name: (t.tensor_type.name, int(t.shape[0])) for t in GGUFReader(path).tensors}


def fell_back_in_file(path, recipe: str) -> Counter:
    """(wanted, got) -> count, from the file's tensor types alone (see the module docstring)."""
    found = Counter()
    for name, (qtype, row) in file_types(path).items():
        if recipe == "moe-q4" and "_exps." in name and qtype != "Q4_K":
            found["Q4_K", qtype] += 1
        elif recipe == "Q4_K_M" and qtype != "F32" and row % 256 and qtype not in K_QUANTS:
            found[None, qtype] += 1  # which K-quant the mixture wanted is llama.cpp's choice
    return found


@pytest.mark.parametrize("recipe", ["moe-q4", "Q4_K_M"])
def test_json_reports_the_fallbacks_the_file_holds(converted, recipe):
    path, out = converted(recipe)
    report = json.loads(out)["fallbacks"]
    expected = fell_back_in_file(path, recipe)
    assert expected, "the fixture must make some tensors fall back"
    assert report["count"] == sum(expected.values())
    types = file_types(path)
    assert {t["name"] for t in report["tensors"]} == {
        n for n, (q, row) in types.items() if row % 256 and q not in (*K_QUANTS, "F32")
    } & ({n for n in types if "_exps." in n} if recipe == "moe-q4" else set(types))
    for t in report["tensors"]:
        assert (t["got"], t["row_length"]) == types[t["name"]]
        assert t["wanted"] in K_QUANTS and t["row_length"] % 256
    got = Counter()
    for entry in report["by_type"]:
        got[entry["got"]] += entry["tensors"]
    assert got == Counter({q: n for (_, q), n in expected.items()})
    if recipe == "moe-q4":  # only the routed experts were asked Q4_K
        assert {e["wanted"] for e in report["by_type"]} == {"Q4_K"}
    # not everything fell back: the report tells tensors apart
    assert report["count"] < sum(q not in ("F32",) for q, _ in types.values())


def test_plain_text_says_how_many_and_which_type(converted):
    path, out = converted("moe-q4", as_json=False)
    n = sum(fell_back_in_file(path, "moe-q4").values())
    assert f"{n} tensors got another type than the recipe's" in out
    assert f"{n} Q4_K -> Q5_0" in out


def test_the_file_and_the_quality_report_record_it(converted, hf_checkpoint):
    path, out = converted("moe-q4")
    recorded = inspect(path).extra["quant_fallbacks"]
    assert recorded["count"] == sum(fell_back_in_file(path, "moe-q4").values())
    assert recorded["by_type"] == json.loads(out)["fallbacks"]["by_type"]
    report = evaluate(path, hf_checkpoint("kimi_k2"), text="The quick brown fox. " * 8, window=64)
    assert report["model_quant_fallbacks"] == recorded


def test_a_recipe_that_fits_reports_none(converted):
    path, out = converted("Q8_0")  # rows of 32 and more all split into Q8_0 blocks
    assert json.loads(out)["fallbacks"] == {"count": 0, "by_type": [], "tensors": []}
    assert inspect(path).extra["quant_fallbacks"]["count"] == 0
