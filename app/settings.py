"""Where Itamae keeps its state, and the person's settings.

Folders come from platformdirs (DESIGN.md, "Where state lives"): the conversation
database and settings.json under the user data dir, models under a models folder the
person can move. Nothing is written beside the installed code. `ITAMAE_HOME` replaces
the data dir (tests, portable installs).

Settings are read and written as one small JSON file, replaced atomically
(write to a temporary name, fsync, rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import platformdirs

from converters.core.errors import ItamaeError

APP_NAME = "itamae"


@dataclass(frozen=True)
class AppPaths:
    data_dir: Path

    @classmethod
    def default(cls) -> AppPaths:
        home = os.environ.get("ITAMAE_HOME")
        if home:
            return cls(Path(home).expanduser().resolve())
        return cls(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)))

    @property
    def database(self) -> Path:
        return self.data_dir / "conversations.sqlite3"

    @property
    def settings_file(self) -> Path:
        return self.data_dir / "settings.json"

    @property
    def model_settings_file(self) -> Path:
        return self.data_dir / "model_settings.json"

    @property
    def default_models_dir(self) -> Path:
        return self.data_dir / "models"

    def ensure(self) -> AppPaths:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self


@dataclass
class SamplingDefaults:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 512


@dataclass
class Settings:
    models_dir: str = ""  # "" = AppPaths.default_models_dir
    startup_model: str = ""  # what plain `itamae` loads; "" = the demo when it is installed
    startup_engine: str = "auto"
    added_paths: list[str] = field(default_factory=list)  # models the person added by path
    language: str = ""  # "" = follow the browser
    # Presets the person saved: name -> system prompt. Built-in presets live in i18n.
    system_presets: dict[str, str] = field(default_factory=dict)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        """Keep the fields this version knows; a newer or hand-edited file still loads."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        sampling = values.pop("sampling", {}) or {}
        sampling_known = {f.name for f in fields(SamplingDefaults)}
        values["sampling"] = SamplingDefaults(
            **{k: v for k, v in sampling.items() if k in sampling_known}
        )
        return cls(**values)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: a temporary file beside it, fsync, rename, so a crash
    leaves the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SettingsFile:
    """settings.json under the data dir; every save replaces the file atomically."""

    def __init__(self, paths: AppPaths):
        self.paths = paths
        self._lock = threading.Lock()

    def load(self) -> Settings:
        path = self.paths.settings_file
        if not path.exists():
            return Settings()
        try:
            return Settings.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise ItamaeError(
                f"The settings file {path} is not valid ({e}).",
                "Fix it by hand, or delete it to start from the defaults.",
            ) from e

    def save(self, settings: Settings) -> None:
        text = json.dumps(asdict(settings), ensure_ascii=False, indent=2)
        with self._lock:
            write_atomically(self.paths.settings_file, text)

    def update(self, **changes) -> Settings:
        """Load, change the named fields, save; returns the new settings."""
        with self._lock:
            settings = self.load()
        for name, value in changes.items():
            setattr(settings, name, value)
        self.save(settings)
        return settings

    def models_dir(self, settings: Settings | None = None) -> Path:
        settings = settings or self.load()
        folder = Path(settings.models_dir).expanduser() if settings.models_dir else None
        return folder or self.paths.default_models_dir
