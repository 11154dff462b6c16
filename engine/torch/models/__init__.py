"""One file per architecture, named by the HF `model_type`; found by name (mlx-lm style).

Which family a model_type (or an alias such as `kimi_k2`) belongs to is the architecture
registry's answer (converters/archs); this package only says whether the torch engine has
a model file for that family.
"""

from __future__ import annotations

import importlib
import pkgutil

from converters import archs
from converters.core.errors import UnsupportedArchitecture


def runs() -> list[str]:
    """The families the torch engine runs natively."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def model_class(model_type: str):
    family = archs.spec_for(model_type).model_type  # unknown types: the registry's message
    if family not in runs():
        raise UnsupportedArchitecture(
            f"The torch engine does not run {model_type} models yet (it runs {', '.join(runs())}).",
            "Convert the model to GGUF (`itamae convert SRC -o OUT.gguf`) and run that file "
            "with the llama.cpp engine (--engine llamacpp).",
        )
    return importlib.import_module(f"{__name__}.{family}").Model
