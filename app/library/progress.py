"""A download's progress, shared between the thread that downloads and whoever shows it.

Bytes are counted once, where they are written (huggingface_hub 2.4's snapshot_download
opens two byte bars per download, transfer and reconstruction, whose totals it sets
after creating them: a tqdm class that adds up every bar's bytes counted each byte twice
and never learned the total). Bytes already on disk when a download resumes count as
done from the start, so `done_bytes` only grows and ends at `total_bytes` exactly.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SPEED_WINDOW_S = 5.0  # speed over the last seconds: steady enough to read, quick to follow


@dataclass
class DownloadProgress:
    done_bytes: int = 0
    total_bytes: int = 0
    finished: bool = False
    error: str = ""
    path: Path | None = None  # where the model is, once it is there
    label: str = ""  # what is being fetched: "Q4_K_M", "safetensors"
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    listeners: list[Callable[[DownloadProgress], None]] = field(default_factory=list, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _samples: deque = field(default_factory=deque, repr=False)

    @property
    def fraction(self) -> float | None:
        return self.done_bytes / self.total_bytes if self.total_bytes else None

    def start(self, total_bytes: int, done_bytes: int) -> None:
        with self.lock:
            self.total_bytes, self.done_bytes = total_bytes, done_bytes
            self._samples.clear()
            self._samples.append((time.monotonic(), done_bytes))
        self._tell()

    def add(self, n: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.done_bytes += n
            self._samples.append((now, self.done_bytes))
            while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_S:
                self._samples.popleft()
        self._tell()

    @property
    def speed(self) -> float:
        """Bytes per second over the last few seconds (0 before there is a second sample)."""
        with self.lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta_s(self) -> float | None:
        speed = self.speed
        left = self.total_bytes - self.done_bytes
        return left / speed if speed > 0 else None

    def _tell(self) -> None:
        for listener in self.listeners:
            listener(self)


def human_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
