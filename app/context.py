"""What every tab of the UI works with, passed explicitly (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from app.model_manager import ModelManager
from app.model_settings import ModelSettings
from app.settings import AppPaths, SettingsFile
from app.store import ConversationStore


@dataclass
class AppContext:
    manager: ModelManager
    store: ConversationStore
    settings: SettingsFile
    paths: AppPaths
    api_base: str = ""  # where the OpenAI-compatible API answers, shown in Settings
    model_settings: ModelSettings | None = None  # sampling per model (AppContext.create)

    @classmethod
    def create(cls, manager: ModelManager, paths: AppPaths | None = None) -> AppContext:
        paths = (paths or AppPaths.default()).ensure()
        store = ConversationStore(paths.database)
        model_settings = ModelSettings(paths.model_settings_file)
        return cls(manager, store, SettingsFile(paths), paths, model_settings=model_settings)
