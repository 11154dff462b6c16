"""The openness card on crafted model cards, and license recognition on real license texts.

Crafted cards follow the shapes of published ones: OLMoE (MIT-style permissive license,
datasets listed, training code and paper linked), Llama 3.1 (community license, data
described but not listed), DeepSeek-V2 (`license: other`, `license_name: deepseek`,
separate LICENSE-CODE and LICENSE-MODEL), a folder with no card, a card with a license
and nothing about data. Every fact must carry a source, or be "unknown" with none.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from converters.core.errors import ItamaeError
from converters.facts.licenses import identify_text, license_class, normalize
from converters.facts.model_card import read_model_card, split_front_matter
from converters.facts.openness import openness_card

FACTS = (
    "name",
    "weights",
    "license",
    "training_data",
    "training_code",
    "inference_code",
    "technical_report",
)

MIT_TEXT = """MIT License

Copyright (c) 2024 Example Lab

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction...
"""
APACHE_TEXT = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/
"""
LLAMA_TEXT = """LLAMA 3.1 COMMUNITY LICENSE AGREEMENT
Llama 3.1 Version Release Date: July 23, 2024
"Agreement" means the terms and conditions for use, reproduction, distribution...
"""
DEEPSEEK_TEXT = """DEEPSEEK LICENSE AGREEMENT

Version 1.0, 23 October 2023

Copyright (c) 2023 DeepSeek
Section I: PREAMBLE
"""


def make_model(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def assert_sourced(card: dict) -> None:
    """The rule of the card: a stated fact names its source; an unstated one is unknown."""
    for key in FACTS:
        fact = card[key]
        if fact["value"] == "unknown":
            assert fact["source"] is None, (key, fact)
        else:
            assert fact["source"], (key, fact)


def test_mit_card_with_datasets_listed(tmp_path):
    readme = """---
license: mit
library_name: transformers
datasets:
- allenai/OLMoE-mix-0924
- allenai/dolma
tags:
- moe
- arxiv:2409.02060
---
# Example-MoE-1B-7B

Weights: https://huggingface.co/example/Example-MoE-1B-7B
Training code: https://github.com/example/moe-train
"""
    card = openness_card(make_model(tmp_path / "m", {"README.md": readme, "LICENSE": MIT_TEXT}))
    assert_sourced(card)
    lic = card["license"]
    assert (lic["value"], lic["license_class"]) == ("mit", "permissive")
    assert lic["source"] == "README.md front matter: license"
    assert lic["text_source"] == {"where": "file", "path": "LICENSE", "via": "text recognised"}
    data = card["training_data"]
    assert data["value"] == "disclosed"
    assert data["datasets"] == ["allenai/OLMoE-mix-0924", "allenai/dolma"]
    assert data["source"] == "README.md front matter: datasets"
    assert card["training_code"]["value"] == "published"
    assert card["training_code"]["links"] == ["https://github.com/example/moe-train"]
    assert card["training_code"]["source"] == "README.md line 14"  # the line in the file
    assert card["weights"]["links"] == ["https://huggingface.co/example/Example-MoE-1B-7B"]
    assert card["inference_code"]["source"] == "README.md front matter: library_name"
    assert card["technical_report"]["links"] == ["https://arxiv.org/abs/2409.02060"]


def test_llama_license(tmp_path):
    readme = """---
language:
- en
- de
license: llama3.1
extra_gated_prompt: "### LLAMA 3.1 COMMUNITY LICENSE AGREEMENT"
---
## Model Information

## Training Data

**Overview:** Llama 3.1 was pretrained on ~15 trillion tokens of data from publicly available sources.
"""
    folder = make_model(tmp_path / "llama", {"README.md": readme, "LICENSE": LLAMA_TEXT})
    card = openness_card(folder)
    assert_sourced(card)
    lic = card["license"]
    assert (lic["value"], lic["license_class"]) == ("llama3.1", "restrictive")
    assert lic["text_source"]["path"] == "LICENSE"
    assert lic["files"] == {"LICENSE": "llama3.1"}
    data = card["training_data"]
    assert data["value"] == "described" and data["datasets"] == []
    assert data["source"] == "README.md line 10"  # the "## Training Data" heading
    assert card["training_code"]["value"] == "unknown"

    # The same license file with no card still names the license, sourced to the file.
    (folder / "README.md").unlink()
    bare = openness_card(folder)
    assert (bare["license"]["value"], bare["license"]["source"]) == ("llama3.1", "LICENSE")
    assert bare["license"]["license_class"] == "restrictive"
    assert bare["training_data"]["value"] == "unknown"


@pytest.mark.parametrize(
    "link, expected",
    [
        ("LICENSE-MODEL", {"where": "file", "path": "LICENSE-MODEL", "via": "license_link"}),
        ("https://github.com/deepseek-ai/DeepSeek-V2/blob/main/LICENSE-MODEL", None),
    ],
)
def test_deepseek_license(tmp_path, link, expected):
    readme = f"""---
license: other
license_name: deepseek
license_link: {link}
---
# DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model

[Paper Link](https://arxiv.org/abs/2405.04434)
We pretrained DeepSeek-V2 on a diverse and high-quality corpus comprising 8.1 trillion tokens.
"""
    files = {"README.md": readme, "LICENSE-CODE": MIT_TEXT, "LICENSE-MODEL": DEEPSEEK_TEXT}
    card = openness_card(make_model(tmp_path / "ds", files))
    assert_sourced(card)
    lic = card["license"]
    assert (lic["value"], lic["license_class"]) == ("deepseek", "restrictive")
    assert lic["source"] == "README.md front matter: license_name"
    assert lic["files"] == {"LICENSE-CODE": "mit", "LICENSE-MODEL": "deepseek"}
    assert "LICENSE-CODE" not in lic["detail"]  # the code license is not a conflict
    if expected:
        assert lic["text_source"] == expected
    else:
        assert lic["text_source"]["where"] == "url" and lic["text_source"]["url"] == link
    assert card["technical_report"]["links"] == ["https://arxiv.org/abs/2405.04434"]
    assert card["technical_report"]["source"] == "README.md line 8"
    assert card["training_data"]["value"] == "described"


def test_no_model_card_at_all(tmp_path):
    card = openness_card(make_model(tmp_path / "bare", {}))
    assert_sourced(card)
    for key in FACTS[1:]:
        assert card[key]["value"] == "unknown", key
    assert card["license"]["license_class"] == "unknown"
    assert "on this machine (1 file(s))" in card["weights"]["detail"]
    assert card["name"] == {"value": "bare", "source": "file or folder name", "detail": ""}
    assert card["sources_read"] == ["config.json"]


def test_license_but_no_data_statement(tmp_path):
    readme = "---\nlicense: apache-2.0\n---\n# A chat model\n\nIt answers questions.\n"
    card = openness_card(make_model(tmp_path / "m", {"README.md": readme}))
    assert_sourced(card)
    assert (card["license"]["value"], card["license"]["license_class"]) == (
        "apache-2.0",
        "permissive",
    )
    # No license file: the text is the license's standard one, and the card says so.
    text = card["license"]["text_source"]
    assert text["where"] == "standard" and text["url"].endswith("/Apache-2.0.html")
    data = card["training_data"]
    assert (data["value"], data["source"]) == ("not disclosed", "README.md")
    for key in ("training_code", "inference_code", "technical_report", "weights"):
        assert card[key]["value"] == "unknown", key


def test_card_withholding_data_and_conflicting_license_file(tmp_path):
    readme = "---\nlicense: mit\n---\n# M\n\nThe training data is proprietary and will not be released.\n"
    card = openness_card(make_model(tmp_path / "m", {"README.md": readme, "LICENSE": APACHE_TEXT}))
    assert card["training_data"]["value"] == "not disclosed"
    assert card["training_data"]["source"] == "README.md line 6"
    assert card["training_code"]["value"] == "unknown"
    assert card["license"]["value"] == "mit"
    assert "LICENSE reads as another license" in card["license"]["detail"]


def test_malformed_front_matter_is_reported_not_fatal(tmp_path):
    readme = "---\nlicense: [mit\n---\n# M\n"
    card = openness_card(make_model(tmp_path / "m", {"README.md": readme}))
    assert card["notes"] and "does not parse" in card["notes"][0]
    assert card["license"]["value"] == "unknown"
    assert card["training_data"]["value"] == "not disclosed"


def test_gguf_general_metadata(tmp_path):
    import gguf

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "qwen3moe")
    writer.add_name("Qwen3-30B-A3B")
    writer.add_license("apache-2.0")
    writer.add_dataset_count(1)
    writer.add_dataset_name(0, "example/corpus")
    writer.add_source_url("https://huggingface.co/Qwen/Qwen3-30B-A3B")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    card = openness_card(path)
    assert_sourced(card)
    assert card["name"] == {"value": "Qwen3-30B-A3B", "source": "GGUF general.name", "detail": ""}
    assert (card["license"]["value"], card["license"]["source"]) == (
        "apache-2.0",
        "GGUF general.license",
    )
    assert card["training_data"]["datasets"] == ["example/corpus"]
    assert card["weights"]["links"] == ["https://huggingface.co/Qwen/Qwen3-30B-A3B"]
    assert card["inference_code"]["source"] == "GGUF general.architecture"


def test_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ItamaeError, match="neither a model folder nor a .gguf"):
        read_model_card(tmp_path / "notes.txt")
    with pytest.raises(ItamaeError, match="No model at"):
        read_model_card(tmp_path / "missing")


def test_front_matter_line_numbers():
    meta, body, offset, error = split_front_matter("---\nlicense: mit\n---\nline four\n")
    assert (meta, body, offset, error) == ({"license": "mit"}, "line four\n", 3, "")
    assert split_front_matter("# no front matter\n")[0] == {}


def test_license_classes():
    assert license_class("MIT") == "permissive"
    assert license_class("GPL-3.0") == "copyleft"
    assert license_class("deepseek license") == "restrictive"
    assert license_class("Llama-3.1") == "restrictive"
    assert license_class("cc-by-nc-4.0") == "restrictive"
    assert license_class("my-own-terms") == "unknown"


def test_license_texts_of_installed_packages_are_recognised():
    """Real license files (those of this environment's packages) against what each package's
    metadata declares. python-dateutil is left out: its file grants Apache-2.0 and BSD-3."""
    checked = 0
    for dist in metadata.distributions():
        declared = (dist.metadata.get("License-Expression") or "").strip()
        if declared not in ("MIT", "Apache-2.0", "BSD-3-Clause", "BSD-2-Clause", "MPL-2.0"):
            continue
        if dist.metadata["Name"] == "python-dateutil":
            continue
        files = [
            f
            for f in dist.files or []
            if f.name.upper().startswith(("LICENSE", "COPYING"))
            and f.suffix.lower() in ("", ".txt", ".md", ".rst")  # not converters/licenses.py
        ]
        if not files:
            continue
        text = Path(files[0].locate()).read_text(encoding="utf-8", errors="replace")
        assert normalize(identify_text(text)) == normalize(declared), dist.metadata["Name"]
        checked += 1
    assert checked >= 10


def test_converted_gguf_keeps_the_source_card(tmp_path):
    """What the converter stores (openness_json) comes back from the GGUF, sources marked."""
    import gguf

    from converters.facts.model_card import OPENNESS_KEY
    from converters.facts.openness import openness_json

    readme = "---\nlicense: mit\ndatasets:\n- example/corpus\n---\n# M\n\nTraining code: https://github.com/example/train\n"
    source = make_model(tmp_path / "src", {"README.md": readme, "LICENSE": MIT_TEXT})
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "qwen3moe")
    writer.add_license("mit")
    writer.add_string(OPENNESS_KEY, openness_json(source))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    card = openness_card(path)
    assert_sourced(card)
    assert card["training_code"]["links"] == ["https://github.com/example/train"]
    assert (
        card["training_code"]["source"]
        == "GGUF itamae.openness, from the source model's README.md line 8"
    )
    assert card["training_data"]["datasets"] == ["example/corpus"]
    assert card["carried_sources"] == ["README.md", "LICENSE", "config.json"]
    assert card["weights"]["value"] == "unknown"


def test_github_style_readme_without_front_matter(tmp_path):
    """DeepSeek-V3's README layout: no front matter, badges, a paper link, a downloads table,
    a "How to Run Locally" section cloning the code, separate code and model licenses."""
    readme = """<div align="center">
  <a href="https://arxiv.org/pdf/2412.19437"><b>Paper Link</b></a>
</div>

## 1. Introduction

We pre-train Example-V3 on 14.8 trillion diverse tokens, then fine-tune it.

## 3. Model Downloads

| **Model** | **#Total Params** | **Download** |
| :---: | :---: | :---: |
| Example-V3 | 671B | [Hugging Face](https://huggingface.co/example-ai/Example-V3) |

## 6. How to Run Locally

Clone the repository:

```shell
git clone https://github.com/example-ai/Example-V3.git
```
"""
    files = {"README.md": readme, "LICENSE-CODE": MIT_TEXT, "LICENSE-MODEL": DEEPSEEK_TEXT}
    card = openness_card(make_model(tmp_path / "v3", files))
    assert_sourced(card)
    assert (card["license"]["value"], card["license"]["source"]) == ("deepseek", "LICENSE-MODEL")
    assert card["license"]["license_class"] == "restrictive"
    assert card["technical_report"]["links"] == ["https://arxiv.org/pdf/2412.19437"]
    assert (card["training_data"]["value"], card["training_data"]["source"]) == (
        "described",
        "README.md line 7",
    )
    assert card["weights"]["links"] == ["https://huggingface.co/example-ai/Example-V3"]
    assert card["weights"]["source"] == "README.md line 13"
    assert card["inference_code"]["links"] == ["https://github.com/example-ai/Example-V3.git"]
    assert card["training_code"]["value"] == "unknown"


def test_training_code_linked_beside_the_card(tmp_path):
    readme = "---\nlicense: mit\n---\n# Demo\n\nThe training script [train.py](../train.py) rebuilds it.\n"
    card = openness_card(make_model(tmp_path / "m", {"README.md": readme}))
    assert card["training_code"]["value"] == "published"
    assert card["training_code"]["links"] == ["../train.py"]
    assert card["training_code"]["source"] == "README.md line 6"


def test_itamae_convert_carries_the_card(hf_checkpoint, tmp_path):
    """The real converter stores the source's card; the GGUF's card names it as carried."""
    from converters.conversion.convert import convert

    out = tmp_path / "fixture-Q8_0.gguf"
    convert(hf_checkpoint("llama"), out, "Q8_0")
    card = openness_card(out)
    assert_sourced(card)
    assert card["license"]["value"] == "apache-2.0" or "apache" in str(card["license"]).lower()
    assert card["license"]["source"].startswith("GGUF itamae.openness, from the source model's")
    assert "README.md" in card["carried_sources"]


def test_bsd_3_clause_with_the_older_non_endorsement_wording_is_recognised():
    """Older BSD-3 texts (pypdf's) word the third clause "The name of the author may not be
    used to endorse..."; without that clause the text is BSD-2."""
    head = (
        "Redistribution and use in source and binary forms, with or without modification, "
        "are permitted provided that the following conditions are met:\n"
        "* Redistributions of source code must retain the above copyright notice.\n"
    )
    third = "* The name of the author may not be used to endorse or promote products derived.\n"
    assert normalize(identify_text(head + third)) == "bsd-3-clause"
    assert normalize(identify_text(head)) == "bsd-2-clause"
