"""llama.cpp's log, routed into Python: quiet by default, captured while a model loads.

llama.cpp has one process-wide log callback (`llama_log_set`). Itamae installs its own so
that nothing reaches the terminal unasked (llama-cpp-python's default prints every line
until a `Llama` object lowers it), warnings and errors go to the `itamae.llamacpp` logger,
and the lines of a model load are kept: they explain a failed load ("unknown model
architecture") and list the tensors whose buffer type was overridden (the expert
placement, `buffer type overridden to CPU`), which is how the placement is verified.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading

import llama_cpp

logger = logging.getLogger("itamae.llamacpp")

# enum ggml_log_level in ggml/include/ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT (CONT
# continues the previous line). llama-cpp-python's _logger.py still has an older order.
_LEVELS = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
_CONTINUE = 5
_lock = threading.Lock()
_captures: list[list[str]] = []
_installed = False
_previous_level = logging.DEBUG


@llama_cpp.llama_log_callback
def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace") if text else ""
    for sink in tuple(_captures):
        sink.append(line)
    global _previous_level
    python_level = _previous_level if level == _CONTINUE else _LEVELS.get(level, logging.DEBUG)
    _previous_level = python_level
    if python_level >= logging.WARNING and line.strip():
        logger.log(python_level, line.rstrip())


def install() -> None:
    """Route llama.cpp's log through `_on_log` (once per process)."""
    global _installed
    with _lock:
        if not _installed:
            llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
            _installed = True


@contextlib.contextmanager
def captured():
    """Collect llama.cpp's log lines (all levels) for the duration of the block."""
    install()
    sink: list[str] = []
    with _lock:
        _captures.append(sink)
    try:
        yield sink
    finally:
        with _lock:
            _captures.remove(sink)
