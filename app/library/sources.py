"""Where other tools keep their models on this machine (read only, never written).

- Hugging Face cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`
  (huggingface_hub's constants.py), laid out as `models--org--name/{blobs,refs,snapshots}`.
- LM Studio: its home is the folder named in `~/.lmstudio-home-pointer` when that file
  exists, else `~/.cache/lm-studio` (older installs), else `~/.lmstudio` (lmstudio-ai's
  lms-common `findLMStudioHome`). Models sit in `<home>/models/<publisher>/<repo>/`; a
  folder the person chose in LM Studio's settings is the `downloadsFolder` key of
  `<home>/settings.json` (seen in LM Studio 0.3 and 0.4 installs: lmstudio-ai/
  lmstudio-bug-tracker#1601, v1ckxy/LMSPLS#2).
- Ollama: `OLLAMA_MODELS`, `~/.ollama/models`, and the Linux service's
  `/usr/share/ollama/.ollama/models` (ollama's envconfig.Models and docs/faq.md).

A `Machine` is the home folder and environment these are found from, so a test plants a
whole machine in a temporary folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

OLLAMA_SYSTEM_STORE = Path("/usr/share/ollama/.ollama/models")


@dataclass(frozen=True)
class Machine:
    """The home folder and environment the folders are found from (tests plant their own)."""

    home: Path
    env: Mapping[str, str]
    ollama_system_store: Path | None = OLLAMA_SYSTEM_STORE

    @classmethod
    def current(cls) -> Machine:
        return cls(Path.home(), dict(os.environ))

    @property
    def hf_cache(self) -> Path:
        env = self.env
        if env.get("HF_HUB_CACHE"):
            return Path(env["HF_HUB_CACHE"]).expanduser()
        if env.get("HF_HOME"):
            return Path(env["HF_HOME"]).expanduser() / "hub"
        xdg = env.get("XDG_CACHE_HOME")
        return (Path(xdg).expanduser() if xdg else self.home / ".cache") / "huggingface" / "hub"

    def lmstudio_homes(self) -> list[Path]:
        homes = []
        try:
            pointer = (self.home / ".lmstudio-home-pointer").read_text(encoding="utf-8").strip()
            if pointer:
                homes.append(Path(pointer).expanduser())
        except OSError:
            pass  # no pointer: the default places below
        return homes + [self.home / ".cache" / "lm-studio", self.home / ".lmstudio"]

    def lmstudio_model_dirs(self) -> list[Path]:
        """LM Studio's models folders that exist, the one its settings name first."""
        found = []
        for lm_home in self.lmstudio_homes():
            moved = _settings_value(lm_home / "settings.json", "downloadsFolder")
            if moved:
                found.append(Path(moved).expanduser())
            found.append(lm_home / "models")
        return _existing(found)

    def ollama_stores(self) -> list[Path]:
        stores = [Path(self.env["OLLAMA_MODELS"])] if self.env.get("OLLAMA_MODELS") else []
        stores.append(self.home / ".ollama" / "models")
        if self.ollama_system_store is not None:
            stores.append(self.ollama_system_store)
        return _existing([s.expanduser() for s in stores if (s / "manifests").is_dir()])


def _settings_value(path: Path, key: str) -> str:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    value = settings.get(key) if isinstance(settings, dict) else None
    return value if isinstance(value, str) else ""


def _existing(paths: list[Path]) -> list[Path]:
    """The folders that exist, each once (two names for one folder count once)."""
    seen, out = set(), []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen and path.is_dir():
            seen.add(key)
            out.append(path)
    return out
