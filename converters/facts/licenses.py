"""Which license a model is under, and what kind: permissive, copyleft, or restrictive.

Names follow the Hugging Face hub's license identifiers (SPDX ids in lower case, plus the
hub's own ids for model licenses such as `llama3.1`, `gemma`, `deepseek`;
https://huggingface.co/docs/hub/repositories-licenses). Classes:

- permissive: use, change and redistribute for any purpose, keeping the notice (MIT, Apache-2.0, BSD);
- copyleft: the same, but derived works must stay under the same license (GPL, MPL, CC-BY-SA);
- restrictive: use is conditioned: acceptable-use policies, user-count thresholds, no
  commercial use, or naming rules (the Llama, DeepSeek, Gemma, Qwen licenses, OpenRAIL, CC-BY-NC).

A license text is recognised by the title or the sentence its authors wrote into it, so a
`LICENSE` file with no card still names its license. Anything not in these tables is
reported as "unknown", never guessed.
"""

from __future__ import annotations

import re

PERMISSIVE = {
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "bsd-3-clause-clear",
    "isc",
    "zlib",
    "bsl-1.0",
    "unlicense",
    "cc0-1.0",
    "cc-by-2.0",
    "cc-by-3.0",
    "cc-by-4.0",
    "afl-3.0",
    "ecl-2.0",
    "postgresql",
    "ncsa",
    "wtfpl",
    "pddl",
    "odc-by",
    "cdla-permissive-1.0",
    "cdla-permissive-2.0",
    "artistic-2.0",
    "ms-pl",
}
COPYLEFT = {
    "gpl",
    "gpl-2.0",
    "gpl-3.0",
    "lgpl",
    "lgpl-2.1",
    "lgpl-3.0",
    "lgpl-lr",
    "agpl-3.0",
    "mpl-2.0",
    "epl-1.0",
    "epl-2.0",
    "eupl-1.1",
    "eupl-1.2",
    "osl-3.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "gfdl",
    "odbl",
    "cdla-sharing-1.0",
}
RESTRICTIVE = {
    # Meta's community licenses: acceptable-use policy, 700M monthly-user threshold, naming rule
    "llama2",
    "llama3",
    "llama3.1",
    "llama3.2",
    "llama3.3",
    "llama4",
    # deepseek-ai/DeepSeek-V2, DeepSeek-V3 (model): use-based restrictions in its Attachment A
    "deepseek",
    # google/gemma-*: prohibited-use policy
    "gemma",
    # Qwen/Qwen1.5-MoE-A2.7B and Qwen-72B: 100M monthly-user threshold
    "tongyi-qianwen",
    "qwen",
    "qwen-research",
    # Responsible-AI licenses: use restrictions travel with the weights
    "openrail",
    "openrail++",
    "bigscience-openrail-m",
    "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m",
    # no commercial use, or no derivatives
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
    # mistralai research releases (Mistral AI Research License): no commercial use
    "mrl",
    "apple-ascl",
    "deepfloyd-if-license",
}
# Other spellings seen in cards (license_name) -> the hub id.
ALIASES = {
    "deepseek-license": "deepseek",
    "deepseek-license-agreement": "deepseek",
    "llama-2": "llama2",
    "llama-3": "llama3",
    "llama-3.1": "llama3.1",
    "llama-3.2": "llama3.2",
    "llama-3.3": "llama3.3",
    "llama-4": "llama4",
    "qwen-license": "qwen",
    "apache-2": "apache-2.0",
    "apache2": "apache-2.0",
    "apache-license-2.0": "apache-2.0",
    "mit-license": "mit",
}
# Where a named license's standard text is published (linked, never fetched: Itamae runs offline).
SPDX = "https://spdx.org/licenses/{}.html"
SPDX_IDS = {
    "apache-2.0": "Apache-2.0",
    "mit": "MIT",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "isc": "ISC",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-3.0": "GPL-3.0-only",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-3.0": "LGPL-3.0-only",
    "agpl-3.0": "AGPL-3.0-only",
    "mpl-2.0": "MPL-2.0",
    "cc0-1.0": "CC0-1.0",
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "cc-by-nc-4.0": "CC-BY-NC-4.0",
    "unlicense": "Unlicense",
}

# Recognising a license text: (pattern, id). The first match wins, so specific before generic.
TEXT_SIGNATURES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"llama\s+([234](?:\.\d)?)\s+community\s+license", re.I), "llama{}"),
    (re.compile(r"deepseek\s+license\s+agreement", re.I), "deepseek"),
    (re.compile(r"gemma\s+terms\s+of\s+use", re.I), "gemma"),
    (re.compile(r"tongyi\s+qianwen\s+license", re.I), "tongyi-qianwen"),
    (re.compile(r"qwen\s+research\s+license", re.I), "qwen-research"),
    (re.compile(r"qwen\s+license\s+agreement", re.I), "qwen"),
    (re.compile(r"mistral\s+ai\s+research\s+license", re.I), "mrl"),
    (re.compile(r"GNU\s+AFFERO\s+GENERAL\s+PUBLIC\s+LICENSE", re.I), "agpl-3.0"),
    (re.compile(r"GNU\s+LESSER\s+GENERAL\s+PUBLIC\s+LICENSE\s+Version\s+3", re.I), "lgpl-3.0"),
    (re.compile(r"GNU\s+LESSER\s+GENERAL\s+PUBLIC\s+LICENSE\s+Version\s+2\.1", re.I), "lgpl-2.1"),
    (re.compile(r"GNU\s+GENERAL\s+PUBLIC\s+LICENSE\s+Version\s+3", re.I), "gpl-3.0"),
    (re.compile(r"GNU\s+GENERAL\s+PUBLIC\s+LICENSE\s+Version\s+2", re.I), "gpl-2.0"),
    (re.compile(r"Mozilla\s+Public\s+License\s+Version\s+2\.0", re.I), "mpl-2.0"),
    (re.compile(r"Apache\s+License\s*,?\s+Version\s+2\.0", re.I), "apache-2.0"),
    (re.compile(r"Attribution-NonCommercial-ShareAlike\s+4\.0", re.I), "cc-by-nc-sa-4.0"),
    (re.compile(r"Attribution-NonCommercial\s+4\.0", re.I), "cc-by-nc-4.0"),
    (re.compile(r"Attribution-ShareAlike\s+4\.0", re.I), "cc-by-sa-4.0"),
    (re.compile(r"Attribution\s+4\.0\s+International", re.I), "cc-by-4.0"),
    (re.compile(r"Permission\s+is\s+hereby\s+granted,\s+free\s+of\s+charge", re.I), "mit"),
    # the third clause forbids using the authors' names to endorse; older texts word it "The
    # name of the author may not be used to endorse" (pypdf's) rather than "Neither the name"
    (
        re.compile(
            r"Redistribution\s+and\s+use.*(Neither\s+the\s+name|name\s+of\s+the\s+author\s+may\s+not\s+be\s+used\s+to\s+endorse)",
            re.I | re.S,
        ),
        "bsd-3-clause",
    ),
    (re.compile(r"Redistribution\s+and\s+use\s+in\s+source\s+and\s+binary", re.I), "bsd-2-clause"),
    (re.compile(r"This\s+is\s+free\s+and\s+unencumbered\s+software", re.I), "unlicense"),
]


def normalize(name: str) -> str:
    key = re.sub(r"[\s_]+", "-", str(name).strip().lower())
    return ALIASES.get(key, key)


def license_class(name: str) -> str:
    """'permissive' | 'copyleft' | 'restrictive' | 'unknown' for a license id or name."""
    key = normalize(name)
    if key in PERMISSIVE:
        return "permissive"
    if key in COPYLEFT:
        return "copyleft"
    if key in RESTRICTIVE:
        return "restrictive"
    return "unknown"


def identify_text(text: str) -> str:
    """The license id a license text declares itself to be, or "" when it is not recognised.

    The signature found earliest wins: a license names itself in its title or first grant,
    and may name others further down (the MPL-2.0 text mentions the GNU licenses). Only the
    head of the text is read."""
    head = text[:8000]
    found = []
    for order, (pattern, license_id) in enumerate(TEXT_SIGNATURES):
        if match := pattern.search(head):
            name = license_id.format(*match.groups()) if match.groups() else license_id
            found.append((match.start(), order, name))
    return min(found)[2] if found else ""


def standard_text_url(name: str) -> str:
    spdx = SPDX_IDS.get(normalize(name))
    return SPDX.format(spdx) if spdx else ""
