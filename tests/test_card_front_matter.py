"""One front-matter parser for model cards, checked against the hub's own reader
(huggingface_hub's `metadata_load`) on the forms the hub accepts; both card readers
(model_card for the openness card, card_metadata for inspect and the GGUF writer) agree."""

from __future__ import annotations

import pytest
from huggingface_hub.repocard import metadata_load

from converters.facts.card_metadata import read_card
from converters.facts.model_card import read_model_card, split_front_matter

FIELDS = "license: apache-2.0\nbase_model: Qwen/Qwen3-30B-A3B\ntags:\n- moe\n"
CARDS = {
    "lf": f"---\n{FIELDS}---\n# Title\n",
    "crlf": f"---\r\n{FIELDS.replace(chr(10), chr(13) + chr(10))}---\r\n# Title\r\n",
    "cr": f"---\r{FIELDS.replace(chr(10), chr(13))}---\r# Title\r",
    "bom": f"\ufeff---\n{FIELDS}---\n# Title\n",
    "bom-crlf": f"\ufeff---\r\n{FIELDS.replace(chr(10), chr(13) + chr(10))}---\r\n# Title\r\n",
    "blank-lines-first": f"\n\n---\n{FIELDS}---\n# Title\n",
    "spaces-after-closing-dashes": f"---\n{FIELDS}---  \t\n# Title\n",
    "at-end-of-file": f"---\n{FIELDS}---",
}


@pytest.mark.parametrize("form", sorted(CARDS))
def test_front_matter_as_the_hub_reads_it(form, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(CARDS[form].encode("utf-8"))
    reference = metadata_load(readme)  # the hub's parser: the answer to match
    assert reference["license"] == "apache-2.0"
    meta, body, _, error = split_front_matter(readme.read_bytes().decode("utf-8"))
    assert (meta, error) == (reference, "")
    assert "license" not in body
    # both readers of a model folder see the same fields
    assert read_card(tmp_path).license == read_model_card(tmp_path).license_id == "apache-2.0"
    assert read_card(tmp_path).base_models == ["Qwen/Qwen3-30B-A3B"]
    if form != "at-end-of-file":
        assert read_card(tmp_path).name == "Title"


def test_what_is_not_front_matter():
    assert split_front_matter("# Title\n---\nlicense: mit\n---\n")[0] == {}
    assert split_front_matter("----\nlicense: mit\n----\n")[0] == {}
    assert split_front_matter("---\nlicense: mit\n")[0] == {}  # never closed
    meta, _, _, error = split_front_matter("---\n- a list\n---\n")
    assert meta == {} and "not a mapping" in error
