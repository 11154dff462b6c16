"""The openness card: how open a model is, each fact with the place it was read from.

Facts: weights (published?), license (name, class, where its text is), training data
(disclosed / described / not disclosed), training code, inference code, technical report.
The dimensions follow the openness frameworks of the field (Liesenfeld & Dingemanse,
"Rethinking open source generative AI", FAccT 2024; the Model Openness Framework,
White et al. 2024, arXiv:2403.13784), cut down to what a model's own files can state.

Rules: every fact names its source ("README.md line 12", "README.md front matter:
license", "GGUF general.license", "LICENSE-MODEL"); a fact no source states is
"unknown" with `source: None`. Silence of a model card about its training data is itself
a statement of the card ("not disclosed", sourced to the card); with no card at all the
data is "unknown".

    openness_card(path) -> dict   # a model folder or a .gguf file
    openness_json(folder) -> str  # what the converter stores in a GGUF (`itamae.openness`)

A GGUF that Itamae converted carries its source's card; its facts are shown with their
original source, marked as carried ("GGUF itamae.openness, from README.md line 12").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from converters.facts import licenses
from converters.facts.model_card import OPENNESS_KEY, ModelCard, hub_url, read_model_card

URL = re.compile(r"https?://[^\s)>\]\"'`]+")
# a web address, or the target of a Markdown link (code kept beside the card: `[train.py](train.py)`)
CODE_LINK = re.compile(r"https?://[^\s)>\]\"'`]+|(?<=\]\()[^)\s]+(?=\))")
ARXIV_URL = re.compile(r"https?://arxiv\.org/(?:abs|pdf)/\d{4}\.\d{4,5}(?:v\d+)?")
HEADING = re.compile(r"^\s{0,3}(?:#{1,6}\s+|\*\*)(.+?)(?:\*\*)?\s*#*\s*$")
DATA_HEADING = re.compile(
    r"\b(training|pre-?training|fine-?tuning)\s+(data|dataset|datasets|corpus)\b"
    r"|\bdata\s+(mixture|sources)\b|^datasets?$",
    re.I,
)
DATA_SENTENCE = re.compile(
    r"\b(pre-?)?train(ed|ing)?\b.{0,60}?\b(on|with|using)\b.{0,100}"
    r"\b(tokens|data|corpus|corpora|datasets?|text)\b",
    re.I,
)
DATA_WITHHELD = re.compile(
    r"\b(training|pre-?training)\s+data\b.{0,80}"
    r"\b(not\s+(be\s+)?(disclosed|released|public|published|available)|proprietary|undisclosed)",
    re.I,
)
TRAINING_CODE = re.compile(
    r"\b(train(ing)?|pre-?train(ing)?|fine-?tun(e|ing))\s+(code|scripts?|recipes?|codebase|framework)\b"
    r"|\bcode\s+(for|to)\s+(pre-?)?train",
    re.I,
)
INFERENCE_CODE = re.compile(
    r"\binference\s+(code|scripts?|engine|framework|implementation)\b|\bmodeling\s+code\b", re.I
)
REPORT = re.compile(r"\b(technical\s+report|tech\s+report|paper|whitepaper)\b", re.I)
WEIGHTS = re.compile(r"\b(weights|checkpoints?|downloads?)\b", re.I)
HUB_LINK = re.compile(
    r"https?://(?:huggingface\.co|modelscope\.cn|www\.modelscope\.cn)/[^\s)>\]\"'`]+"
)
RUN_HEADING = re.compile(
    r"\b(how\s+to\s+(run|use)|run(ning)?\s+(it\s+)?locally|inference|usage|quick\s*start|deploy)",
    re.I,
)
GIT_CLONE = re.compile(r"git\s+clone\s+(https?://\S+)")
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def fact(value: str, source: str | None = None, detail: str = "", **extra) -> dict:
    return {"value": value, "source": source, "detail": detail, **extra}


def unknown(card: ModelCard, what: str) -> dict:
    if card.has_card:
        return fact("unknown", None, f"{card.readme_name} does not mention {what}.")
    return fact("unknown", None, f"No model card; no other source states {what}.")


def _card_lines(card: ModelCard):
    for number, line in card.text_lines():
        yield f"{card.readme_name} line {number}", line


def _sections(card: ModelCard):
    """(source, heading of the section the line is in, line) for the card's body."""
    heading = ""
    for source, line in _card_lines(card):
        if match := HEADING.match(line):
            heading = match.group(1)
        yield source, heading, line


def _links_in_sections(card: ModelCard, heading: re.Pattern, link: re.Pattern):
    """(source, line, links) for lines with a link under a heading matching `heading`."""
    for source, title, line in _sections(card):
        if heading.search(title) and (links := link.findall(line)):
            yield source, f"{title.strip()}: {line.strip()}", links


def _lines_with_links(card: ModelCard, pattern: re.Pattern, link: re.Pattern = URL):
    """(source, line, links) for card lines matching `pattern` that carry a link."""
    for source, line in _card_lines(card):
        if pattern.search(line) and (links := link.findall(line)):
            yield source, line.strip(), links


# --- name and weights ---


def name_fact(card: ModelCard) -> dict:
    for key, source in (
        ("model_name", f"{card.readme_name} front matter: model_name"),
        ("general.name", "GGUF general.name"),
    ):
        value = card.meta(key) if key == "model_name" else card.gguf_general.get(key)
        if value:
            return fact(str(value), source)
    if card.config.get("_name_or_path"):
        return fact(str(card.config["_name_or_path"]), "config.json _name_or_path")
    return fact(card.path.stem if card.path.is_file() else card.path.name, "file or folder name")


def weights_fact(card: ModelCard, repo_id: str = "") -> dict:
    local = [f for f in card.files if f.endswith(WEIGHT_SUFFIXES)]
    here = f"The weights are on this machine ({len(local)} file(s))." if local else ""
    if repo_id:
        return fact(
            "published", "the hub repository it was downloaded from", here, links=[hub_url(repo_id)]
        )
    for key in ("general.source.url", "general.source.repo_url", "general.repo_url", "general.url"):
        if value := card.gguf_general.get(key):
            return fact("published", f"GGUF {key}", here, links=[str(value)])
    for source, line, links in _lines_with_links(card, WEIGHTS):
        return fact("published", source, line, links=links)
    # a "Model Downloads" section with a table of hub links (DeepSeek's cards)
    for source, line, links in _links_in_sections(card, WEIGHTS, HUB_LINK):
        return fact("published", source, line, links=links)
    return fact("unknown", None, (here + " No source says where they were published.").strip())


# --- license ---


def _license_files(card: ModelCard) -> dict[str, str]:
    """License file name -> the license its text declares ("" when not recognised)."""
    return {name: licenses.identify_text(text) for name, text in card.license_files.items()}


def _model_license_file(files: dict[str, str]) -> str:
    """The file that licenses the weights: DeepSeek ships LICENSE-MODEL beside LICENSE-CODE."""
    names = sorted(files)
    for name in names:
        if "MODEL" in name.upper():
            return name
    general = [n for n in names if "CODE" not in n.upper()]
    return general[0] if general else ""


def _declared_license(card: ModelCard, files: dict[str, str]) -> tuple[str, str, str]:
    """(license name, source, detail) from the first source that names one."""
    fm = card.readme_name + " front matter"
    declared = card.meta("license")
    if isinstance(declared, list):  # the hub allows a list; the first names the weights
        declared = declared[0] if declared else None
    if declared and licenses.normalize(declared) not in ("other", "unknown"):
        return str(declared), f"{fm}: license", ""
    if card.meta("license_name"):
        return str(card.meta("license_name")), f"{fm}: license_name", ""
    model_file = _model_license_file(files)
    if model_file and files[model_file]:
        return files[model_file], model_file, "recognised from the license text"
    for key in ("general.license.name", "general.license"):
        value = card.gguf_general.get(key)
        if value and licenses.normalize(str(value)) not in ("other", "unknown"):
            return str(value), f"GGUF {key}", ""
    if declared:  # "other" and nothing names it
        return "other", f"{fm}: license", "The card says 'other' without naming the license."
    if model_file:
        return (
            "unrecognised",
            model_file,
            "A license file is present but its text is not one Itamae recognises; read it.",
        )
    return "", "", ""


def _text_source(card: ModelCard, name: str, files: dict[str, str]) -> dict:
    """Where the license's full text is: a file here, the link the card gives, or the standard text."""
    link = card.license_link
    if link and "://" not in link:
        file_name = Path(link).name
        if file_name in card.license_files:
            return {"where": "file", "path": file_name, "via": "license_link"}
        return {
            "where": "missing",
            "path": link,
            "via": "license_link",
            "detail": f"The card points at {link}, which is not in the folder.",
        }
    if link:
        return {
            "where": "url",
            "url": link,
            "via": "license_link",
            "detail": "Linked by the card; not fetched (Itamae works offline).",
        }
    key = licenses.normalize(name)
    matching = [f for f, ident in files.items() if ident and licenses.normalize(ident) == key]
    if matching:
        return {"where": "file", "path": sorted(matching)[0], "via": "text recognised"}
    model_file = _model_license_file(files)
    if model_file:
        return {"where": "file", "path": model_file, "via": "license file in the folder"}
    if url := licenses.standard_text_url(name):
        return {
            "where": "standard",
            "url": url,
            "via": "the license's standard text",
            "detail": "No license file in the model folder; this is the published standard text.",
        }
    return {"where": "none", "detail": "No license text in the model's files."}


def license_fact(card: ModelCard) -> dict:
    files = _license_files(card)
    name, source, detail = _declared_license(card, files)
    if not name:
        return fact(
            "unknown",
            None,
            "No card, license file or metadata names a license.",
            license_class="unknown",
            text_source={"where": "none"},
            files=files,
        )
    key = licenses.normalize(name)
    # A license file that declares something else than the card is worth a person's attention.
    conflicts = sorted(
        f
        for f, ident in files.items()
        if ident and licenses.normalize(ident) != key and "CODE" not in f.upper()
    )
    if conflicts:
        detail = (
            detail + f" {', '.join(conflicts)} reads as another license: check which applies."
        ).strip()
    return fact(
        name,
        source,
        detail,
        license_class=licenses.license_class(name),
        text_source=_text_source(card, name, files),
        files=files,
    )


# --- training data, code, report ---


def training_data_fact(card: ModelCard) -> dict:
    datasets = card.meta_list("datasets")
    if datasets:
        return fact(
            "disclosed", f"{card.readme_name} front matter: datasets", "", datasets=datasets
        )
    if gguf_sets := card.datasets:
        return fact("disclosed", "GGUF general.dataset.*", "", datasets=gguf_sets)
    for source, line in _card_lines(card):
        if DATA_WITHHELD.search(line):
            return fact("not disclosed", source, line.strip(), datasets=[])
    for source, line in _card_lines(card):
        heading = HEADING.match(line)
        if heading and DATA_HEADING.search(heading.group(1)) or DATA_SENTENCE.search(line):
            return fact("described", source, line.strip(), datasets=[])
    if card.has_card:
        return fact(
            "not disclosed",
            card.readme_name,
            "The model card names no datasets and has no training-data section.",
            datasets=[],
        )
    return fact(
        "unknown", None, "No model card; no other source states the training data.", datasets=[]
    )


def training_code_fact(card: ModelCard) -> dict:
    for source, line, links in _lines_with_links(card, TRAINING_CODE, CODE_LINK):
        return fact("published", source, line, links=links)
    return unknown(card, "training code")


def inference_code_fact(card: ModelCard) -> dict:
    if library := card.meta("library_name"):
        return fact(
            "published",
            f"{card.readme_name} front matter: library_name",
            f"Runs in the open-source {library} library.",
        )
    shipped = sorted(f for f in card.files if re.match(r"modeling_\w+\.py$", f))
    if shipped and card.config.get("auto_map"):
        return fact(
            "published",
            "config.json auto_map",
            f"Modeling code ships with the weights: {', '.join(shipped)}.",
        )
    for source, line, links in _lines_with_links(card, INFERENCE_CODE, CODE_LINK):
        return fact("published", source, line, links=links)
    # "How to Run Locally" with a `git clone` of the code (DeepSeek's and many GitHub READMEs)
    for source, line, links in _links_in_sections(card, RUN_HEADING, GIT_CLONE):
        return fact("published", source, line, links=links)
    if arch := card.gguf_general.get("general.architecture"):
        return fact(
            "published",
            "GGUF general.architecture",
            f"A GGUF '{arch}' model: llama.cpp (open source, MIT) runs it.",
        )
    return unknown(card, "inference code")


def technical_report_fact(card: ModelCard) -> dict:
    papers = [t.split(":", 1)[1] for t in card.tags if t.lower().startswith("arxiv:")]
    if papers:
        return fact(
            "published",
            f"{card.readme_name} front matter: tags",
            links=[f"https://arxiv.org/abs/{p}" for p in papers],
        )
    for source, line, links in _lines_with_links(card, re.compile(r"."), ARXIV_URL):
        return fact("published", source, line, links=links)
    for source, line, links in _lines_with_links(card, REPORT):
        return fact("published", source, line, links=links)
    for key in ("general.doi", "general.source.doi"):
        if value := card.gguf_general.get(key):
            return fact("published", f"GGUF {key}", links=[f"https://doi.org/{value}"])
    return unknown(card, "a technical report")


def card_from(card: ModelCard, repo_id: str = "") -> dict:
    sources = ([card.readme_name] if card.has_card else []) + sorted(card.license_files)
    if card.config:
        sources.append("config.json")
    if card.gguf_general:
        sources.append("GGUF general.*")
    return {
        "model": str(card.path),
        "sources_read": sources,
        "notes": [f"{card.readme_name}: {card.front_matter_error}"]
        if card.front_matter_error
        else [],
        "name": name_fact(card),
        "weights": weights_fact(card, repo_id),
        "license": license_fact(card),
        "training_data": training_data_fact(card),
        "training_code": training_code_fact(card),
        "inference_code": inference_code_fact(card),
        "technical_report": technical_report_fact(card),
    }


FACT_KEYS = ("name", "weights", "license", "training_data", "training_code", "inference_code",
             "technical_report")  # fmt: skip


def openness_json(path: str | Path, repo_id: str = "") -> str:
    """The source model's card as compact JSON, for the converter to store under OPENNESS_KEY."""
    card = card_from(read_model_card(path), repo_id)
    carried = {key: card[key] for key in (*FACT_KEYS, "sources_read")}
    return json.dumps(carried, ensure_ascii=False, separators=(",", ":"))


def _carried(card: ModelCard) -> dict | None:
    """The card a converted GGUF carries, with each source marked as carried; None if absent
    or unreadable (then the file's own general.* keys are read as for any GGUF)."""
    try:
        carried = json.loads(str(card.gguf_general.get(OPENNESS_KEY) or ""))
    except json.JSONDecodeError:
        return None
    if not isinstance(carried, dict) or not all(
        isinstance(carried.get(k), dict) for k in FACT_KEYS
    ):
        return None
    out = {"model": str(card.path), "notes": [], "sources_read": [f"GGUF {OPENNESS_KEY}"]}
    for key in FACT_KEYS:
        fact_ = dict(carried[key])
        if fact_.get("source"):
            fact_["source"] = f"GGUF {OPENNESS_KEY}, from the source model's {fact_['source']}"
        out[key] = fact_
    out["carried_sources"] = carried.get("sources_read", [])
    return out


def openness_card(path: str | Path, repo_id: str = "") -> dict:
    """The openness card of a model folder or .gguf file (what the UI's Models tab shows)."""
    card = read_model_card(path)
    return _carried(card) or card_from(card, repo_id)
