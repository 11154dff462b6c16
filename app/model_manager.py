"""The one loaded model, shared by the UI and the HTTP API.

A local model can run one generation at a time (one KV cache, one set of expert
buffers), while many clients may ask at once: browser tabs, editors and scripts on the
API. `ModelManager` holds the one `Backend`, loads it in a background thread so the UI
stays responsive and can show progress, and hands the model to waiting requests in
the order they arrived (a FIFO lock, the way a ticket lock serves a queue), so no
client starves and each one gets its own stream. A request whose `cancel` is set
(the person pressed Stop, the HTTP client went away) leaves the queue, or stops its
generation, and the model passes to the next one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from app import library
from converters.core.errors import ItamaeError
from engine.types import Backend, Event, FinalEvent, GenerationRequest, Stats

# How often a queued request looks at its cancel flag. Short enough that a client that
# went away leaves the queue at once, long enough to cost nothing.
_CANCEL_POLL_S = 0.05


class NoModelLoaded(ItamaeError):
    pass


ModelState = Literal["empty", "loading", "ready", "error"]


@dataclass(frozen=True)
class ModelStatus:
    """Where the one model stands, as the header, the API and /health show it.

    `engine` is the engine asked for ("auto" until the UI looks at the backend);
    `message` is the model's name when ready, the failure when "error"; `progress` is
    in [0, 1], None when unknown. Frozen: a reader holds a snapshot, never the live one.
    """

    state: ModelState = "empty"
    source: str | None = None
    engine: str | None = None
    message: str = ""
    progress: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FailedEvent(FinalEvent):
    """The FinalEvent for a backend that raised: keeps the exception, so that a caller
    can tell a refused request (ContextTooLong) from a broken model (the API maps them
    to different status codes)."""

    exception: BaseException | None = None


class FairLock:
    """A lock granted in arrival order; a waiter can give up its place when cancelled.

    `threading.Lock` makes no promise about who gets it next, so under load one client
    could wait forever. Here each waiter queues an Event and `release` hands ownership
    straight to the oldest waiter.
    """

    def __init__(self):
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, cancel: threading.Event | None = None, first: bool = False) -> bool:
        """Wait for the lock; False if `cancel` was set first. `first` jumps the queue."""
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return True
            turn = threading.Event()
            if first:
                self._waiters.appendleft(turn)
            else:
                self._waiters.append(turn)
        while not turn.wait(_CANCEL_POLL_S):
            if cancel is not None and cancel.is_set():
                with self._mutex:
                    if not turn.is_set():
                        self._waiters.remove(turn)
                        return False
                # The lock was handed over while we were being cancelled: pass it on.
                self.release()
                return False
        return True

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()  # ownership moves; _held stays True
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        with self._mutex:
            return len(self._waiters)

    @property
    def held(self) -> bool:
        with self._mutex:
            return self._held


class ModelManager:
    """Holds at most one loaded Backend and serialises generations on it fairly;
    `status` says where loading stands (a `ModelStatus`)."""

    def __init__(self, loader: Callable[..., Backend] = library.load):
        self._loader = loader
        self._state_lock = threading.Lock()
        self._model_lock = FairLock()
        self._backend: Backend | None = None
        self._status = ModelStatus()
        self._active: set[threading.Event] = set()
        self._load_thread: threading.Thread | None = None
        self._load_seq = 0  # numbers load() calls; only the latest may set the model
        self._ready = threading.Event()  # set whenever the state is not "loading"
        self._ready.set()

    # -- what the UI and the API read --------------------------------------------------

    @property
    def backend(self) -> Backend | None:
        return self._backend

    @property
    def status(self) -> ModelStatus:
        with self._state_lock:
            return self._status

    @property
    def queue_length(self) -> int:
        """Requests waiting for the model, not counting the one generating."""
        return self._model_lock.waiting

    @property
    def busy(self) -> bool:
        return self._model_lock.held

    def health(self) -> dict:
        """What /health answers: the status, whether a generation runs, how many wait."""
        return {**self.status.to_json(), "busy": self.busy, "queue": self.queue_length}

    def wait(self, timeout: float | None = None) -> ModelStatus:
        """Block until no load is in progress; returns the status then."""
        self._ready.wait(timeout)
        return self.status

    # -- loading -----------------------------------------------------------------------

    def load(
        self, source: str | Path, engine: str = "auto", *, wait: bool = False, **options
    ) -> threading.Thread:
        """Start loading `source` in a background thread, replacing the current model.

        Generations running on the old model are cancelled; requests queued behind them
        wait and then run on the new one. With `wait=True` returns when loading ended.
        """
        with self._state_lock:
            self._load_seq += 1
            seq = self._load_seq
            self._status = ModelStatus("loading", str(source), engine, f"Loading {source}…")
            self._ready.clear()
        thread = threading.Thread(
            target=self._load, args=(seq, source, engine, options), name="itamae-load", daemon=True
        )
        self._load_thread = thread
        thread.start()
        if wait:
            thread.join()
        return thread

    def _load(self, seq: int, source, engine_name: str, options: dict) -> None:
        # Loads asked for in quick succession: only the latest one counts; an earlier
        # one still waiting for its turn does nothing, one that finished late is closed.
        self._cancel_active()
        self._model_lock.acquire(first=True)
        try:
            if seq != self._load_seq:
                return
            self._close_backend()
            try:
                backend = self._loader(source, engine=engine_name, **options)
            except Exception as e:  # any failure must reach the person, not kill the thread
                message = str(e) if isinstance(e, ItamaeError) else f"{type(e).__name__}: {e}"
                with self._state_lock:
                    if seq == self._load_seq:
                        self._status = ModelStatus("error", str(source), engine_name, message)
                return
            with self._state_lock:
                current = seq == self._load_seq
                if current:
                    self._backend = backend
                    name = getattr(backend.info, "name", "") or str(source)
                    self._status = ModelStatus("ready", str(source), engine_name, name, 1.0)
            if not current:
                backend.close()
        finally:
            with self._state_lock:
                if seq == self._load_seq:
                    self._ready.set()
            self._model_lock.release()

    def unload(self) -> None:
        """Cancel running generations, close the model and free its memory."""
        if self._load_thread is not None:
            self._load_thread.join()
        self._cancel_active()
        self._model_lock.acquire(first=True)
        try:
            self._close_backend()
            with self._state_lock:
                self._status = ModelStatus()
        finally:
            self._model_lock.release()

    def _close_backend(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def _cancel_active(self) -> None:
        with self._state_lock:
            for cancel in self._active:
                cancel.set()

    # -- generating --------------------------------------------------------------------

    def stream(
        self, req: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        """Wait for the model in arrival order, then stream this request's events.

        Always ends with exactly one FinalEvent: "cancelled" if `cancel` was set while
        queued or generating, "error" if no model is loaded. Closing the iterator early
        (a dropped client) stops the generation and frees the model for the next request.
        Raises nothing for a missing model so that a stream consumer has one code path;
        callers that want to refuse early can check `backend` first.
        """
        cancel = cancel if cancel is not None else threading.Event()
        with self._state_lock:
            self._active.add(cancel)
        try:
            if not self._model_lock.acquire(cancel):
                yield FinalEvent("cancelled", Stats())
                return
            try:
                backend = self._backend
                if backend is None:
                    message = self._no_model_message()
                    yield FailedEvent("error", Stats(), message, exception=NoModelLoaded(message))
                    return
                yield from _guarded(backend.stream(req, cancel), cancel)
            finally:
                self._model_lock.release()
        finally:
            with self._state_lock:
                self._active.discard(cancel)

    def _no_model_message(self) -> str:
        status = self.status
        if status.state == "error":
            return f"The model failed to load: {status.message}"
        return "No model is loaded. Load one first (itamae --model PATH, or the Model tab)."


def _guarded(events: Iterator[Event], cancel: threading.Event) -> Iterator[Event]:
    """Pass a backend's events through; a crash becomes an "error" FinalEvent, and a
    consumer that stops early sets `cancel` (so the backend stops at its next token
    check) and closes the backend's generator."""
    finished = False
    try:
        for event in events:
            if isinstance(event, FinalEvent):
                finished = True
            yield event
    except Exception as e:  # a backend bug must end this stream, not the server
        finished = True
        message = str(e) if isinstance(e, ItamaeError) else f"{type(e).__name__}: {e}"
        yield FailedEvent("error", Stats(), error=message, exception=e)
    finally:
        if not finished:
            cancel.set()
        close = getattr(events, "close", None)
        if close is not None:
            close()
