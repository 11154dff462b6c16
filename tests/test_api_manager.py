"""ModelManager, the one loaded model that the UI and the API share, on the torch
engine and the tiny qwen3_moe fixture: background loading with its status, fair
turns for concurrent requests, and cancellation that frees the model."""

from __future__ import annotations

import threading
import time

import pytest

from app.model_manager import FairLock, ModelManager
from engine.types import FinalEvent, GenerationRequest, Message, SamplingParams, TokenEvent

FIXTURE = "qwen3_moe"


def chat(text: str, max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        messages=[Message("user", text)],
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


@pytest.fixture(scope="module")
def manager(hf_checkpoint):
    m = ModelManager()
    m.load(hf_checkpoint(FIXTURE), engine="torch", wait=True)
    assert m.status.state == "ready", m.status
    yield m
    m.unload()


def test_empty_manager_answers_with_an_error_event():
    events = list(ModelManager().stream(chat("hi")))
    assert len(events) == 1 and events[0].finish_reason == "error"
    assert "No model is loaded" in events[0].error


def test_loading_runs_in_the_background_and_reports_its_state(hf_checkpoint):
    m = ModelManager()
    thread = m.load(hf_checkpoint(FIXTURE), engine="torch")
    seen = m.status
    assert seen.state in ("loading", "ready") and seen.source.endswith(FIXTURE)
    thread.join()
    status = m.status
    assert status.state == "ready" and status.progress == 1.0
    assert m.backend is not None and m.backend.info.arch == FIXTURE
    m.unload()
    assert m.status.state == "empty" and m.backend is None


def test_a_failed_load_says_why(tmp_path):
    m = ModelManager()
    m.load(tmp_path / "nothing-here", engine="torch", wait=True)
    status = m.status
    assert status.state == "error" and "No model at" in status.message
    final = list(m.stream(chat("hi")))[-1]
    assert final.finish_reason == "error" and "failed to load" in final.error


def test_concurrent_requests_take_turns_in_arrival_order(manager):
    prompts = ["one", "two", "three", "four"]
    alone = {p: text_of(manager.stream(chat(p))) for p in prompts}
    started: list[str] = []
    texts: dict[str, str] = {}

    def ask(prompt: str) -> None:
        events = []
        for event in manager.stream(chat(prompt)):
            if not events:
                started.append(prompt)
            events.append(event)
        texts[prompt] = text_of(events)

    hold = manager.stream(chat("hold the model", max_tokens=500))
    next(hold)  # the model is busy until `hold` closes, so all four wait in line
    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for n, t in enumerate(threads, start=1):
        t.start()
        while manager.queue_length < n:  # the next one arrives once this one waits
            time.sleep(0.005)
    hold.close()
    for t in threads:
        t.join()
    assert started == prompts
    assert texts == alone


def test_a_cancelled_waiter_leaves_the_queue_without_generating(manager):
    hold = manager.stream(chat("hold the model", max_tokens=500))
    assert isinstance(next(hold), TokenEvent)  # this generator now holds the model
    cancel = threading.Event()
    result = []
    waiter = threading.Thread(target=lambda: result.extend(manager.stream(chat("x"), cancel)))
    waiter.start()
    while manager.queue_length == 0:
        time.sleep(0.005)
    cancel.set()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert len(result) == 1 and result[0].finish_reason == "cancelled"
    hold.close()  # a consumer that stops early frees the model
    assert not manager.busy


def test_cancel_during_generation_stops_within_a_token_or_two(manager):
    cancel = threading.Event()
    events = []
    for event in manager.stream(chat("go on", max_tokens=500), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    assert isinstance(events[-1], FinalEvent) and events[-1].finish_reason == "cancelled"
    assert len(events) <= 6
    assert not manager.busy


def test_loading_another_model_cancels_the_running_generation(manager, hf_checkpoint):
    events = []
    done = threading.Event()

    def generate():
        for event in manager.stream(chat("long", max_tokens=2000)):
            events.append(event)
        done.set()

    threading.Thread(target=generate).start()
    while not events:
        time.sleep(0.005)
    manager.load(hf_checkpoint(FIXTURE), engine="torch", wait=True)
    assert done.wait(10)
    assert events[-1].finish_reason == "cancelled"
    assert manager.status.state == "ready"
    assert list(manager.stream(chat("after")))[-1].finish_reason in ("stop", "length")


def test_fair_lock_hands_over_in_arrival_order():
    lock = FairLock()
    assert lock.acquire()
    order = []

    def waiter(name):
        lock.acquire()
        order.append(name)
        lock.release()

    threads = []
    for name in "abcde":
        t = threading.Thread(target=waiter, args=(name,))
        t.start()
        threads.append(t)
        while lock.waiting < len(threads):
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join()
    assert order == list("abcde")
    assert not lock.held


def test_the_latest_of_two_quick_loads_wins(hf_checkpoint):
    m = ModelManager()
    m.load(hf_checkpoint(FIXTURE), engine="torch")
    m.load(hf_checkpoint("mixtral"), engine="torch")
    status = m.wait(timeout=300)
    assert status.state == "ready" and status.source.endswith("mixtral")
    assert m.backend.info.arch == "mixtral"
    m.unload()
