"""Soak the OpenAI-compatible API: many clients, streaming, some hanging up mid-answer.

Not a test (it reports figures); run it by hand:

    python -m tests.benchmarks.api_soak --model PATH --engine torch --clients 8 --seconds 60
    python -m tests.benchmarks.api_soak --url http://127.0.0.1:8000/v1 --clients 16
    python -m tests.benchmarks.api_soak --model demo --engine llamacpp --requests 200 \
        --stream-share 0.5   # issue #10's held load: 200 requests, 8 clients, mixed

Starts its own `itamae serve` unless --url names a running one. Each client loops until
--seconds pass or --requests have been sent in all: one chat request, streaming with
probability --stream-share; a streaming one hangs up after the first few chunks with
probability --drop. With --surfaces mixed the clients take turns over the OpenAI,
Ollama (/api/chat, NDJSON) and Anthropic (/v1/messages) surfaces. Prints one JSON object: requests finished/dropped/failed (refused
with 429/503 counted apart as "refused"), client-side time to first byte of content (p50,
p95, max), whole-request latency (p50, p99), aggregate streamed chunks per second, and the
server's resident memory before and after (a leak shows as growth across runs).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time

import httpx

from tests.serve_process import ServeProcess

PROMPTS = [
    "What is a mixture of experts?",
    "寿司のおすすめは何ですか？",
    "Tell me about the sea.",
    "数を十まで数えてください。",
]


def _take_ticket(totals, lock) -> bool:
    """One request from the shared --requests budget (unbounded when it is None)."""
    with lock:
        if totals["budget"] is None:
            return True
        if totals["budget"] <= 0:
            return False
        totals["budget"] -= 1
        return True


SURFACES = ("openai", "ollama", "anthropic")


def _request(surface: str, url: str, model: str, prompt: str, max_tokens: int, stream: bool):
    """(URL, body) of one chat request on `surface`; `url` is the server's /v1 root."""
    messages = [{"role": "user", "content": prompt}]
    if surface == "ollama":
        options = {"num_predict": max_tokens}
        body = {"model": model, "messages": messages, "stream": stream, "options": options}
        return url.removesuffix("/v1") + "/api/chat", body
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    return url + ("/messages" if surface == "anthropic" else "/chat/completions"), body


def _reply_text(surface: str, reply: dict) -> str:
    if surface == "ollama":
        return reply["message"]["content"]
    if surface == "anthropic":
        return "".join(b.get("text", "") for b in reply["content"])
    return reply["choices"][0]["message"].get("content") or ""


def _chunk(surface: str, line: str) -> str | None:
    """ "chunk", "error" or None (a line that carries no content) for one streamed line."""
    if surface == "ollama":
        if not line:
            return None
        data = json.loads(line)
        return "error" if "error" in data else (None if data.get("done") else "chunk")
    if not line.startswith("data:") or line == "data: [DONE]":
        return None
    if '"error"' in line:
        return "error"
    if surface == "anthropic":
        return "chunk" if '"content_block_delta"' in line else None
    return "chunk"


def one_client(
    url, model, deadline, drop, max_tokens, seed, totals, lock, stream_share=1.0, surface="openai"
):
    rng = random.Random(seed)
    with httpx.Client(timeout=600) as http:
        while time.monotonic() < deadline and _take_ticket(totals, lock):
            stream = rng.random() < stream_share
            path, body = _request(surface, url, model, rng.choice(PROMPTS), max_tokens, stream)
            hang_up_after = rng.randint(1, 4) if stream and rng.random() < drop else None
            started = time.monotonic()
            first = None
            chunks = 0
            outcome = "finished"
            try:
                with http.stream("POST", path, json=body) as response:
                    if response.status_code in (429, 503):  # a clean refusal, said as such
                        response.read()
                        outcome = "refused"
                    elif response.status_code != 200:
                        response.read()
                        outcome = "failed"
                    elif not stream:
                        if not _reply_text(surface, json.loads(response.read())):
                            outcome = "failed"
                        first = time.monotonic() - started
                    else:
                        for line in response.iter_lines():
                            kind = _chunk(surface, line)
                            if kind is None:
                                continue
                            if kind == "error":
                                outcome = "failed"
                                break
                            chunks += 1
                            if first is None:
                                first = time.monotonic() - started
                            if hang_up_after is not None and chunks >= hang_up_after:
                                outcome = "dropped"
                                break
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                outcome = "failed"
            with lock:
                totals[outcome] += 1
                totals["chunks"] += chunks
                totals["streamed" if stream else "whole"] += 1
                if first is not None:
                    totals["ttfb"].append(first)
                if outcome != "dropped":
                    totals["latency"].append(time.monotonic() - started)


def _quantile(values: list[float], q: float) -> float | None:
    return round(values[int(q * (len(values) - 1))], 3) if values else None


def soak(
    url, model, clients, seconds, drop, max_tokens, requests=None, stream_share=1.0, mixed=False
) -> dict:
    totals = {"finished": 0, "dropped": 0, "refused": 0, "failed": 0, "streamed": 0,
              "whole": 0, "chunks": 0, "ttfb": [], "latency": [], "budget": requests}  # fmt: skip
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=one_client,
            args=(url, model, deadline, drop, max_tokens, seed, totals, lock, stream_share),
            kwargs={"surface": SURFACES[seed % 3] if mixed else "openai"},
        )
        for seed in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ttfb = sorted(totals.pop("ttfb"))
    latency = sorted(totals.pop("latency"))
    totals.pop("budget")
    return {
        "requests": sum(totals[k] for k in ("finished", "dropped", "refused", "failed")),
        **totals,
        "clients": clients,
        "seconds": round(elapsed, 1),
        "chunks_per_s": round(totals["chunks"] / elapsed, 2),
        "ttfb_p50_s": round(statistics.median(ttfb), 3) if ttfb else None,
        "ttfb_p95_s": round(ttfb[int(0.95 * (len(ttfb) - 1))], 3) if ttfb else None,
        "ttfb_max_s": round(ttfb[-1], 3) if ttfb else None,
        "latency_p50_s": _quantile(latency, 0.5),
        "latency_p99_s": _quantile(latency, 0.99),
    }


def rss_bytes(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server's /v1 root (else one is started)")
    p.add_argument("--model", help="model for the server this starts")
    p.add_argument("--engine", default="auto")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float)
    p.add_argument("--drop", type=float, default=0.25, help="share of clients that hang up")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, help="stop after this many requests in all")
    p.add_argument("--stream-share", type=float, default=1.0, help="share sent streaming")
    p.add_argument("--surfaces", choices=["openai", "mixed"], default="openai")
    args = p.parse_args()
    if args.seconds is None:  # a request count bounds the run instead of a time
        args.seconds = 3600.0 if args.requests else 60.0
    run = dict(
        requests=args.requests, stream_share=args.stream_share, mixed=args.surfaces == "mixed"
    )
    if args.url:
        model = httpx.get(args.url + "/models").json()["data"][0]["id"]
        result = soak(
            args.url, model, args.clients, args.seconds, args.drop, args.max_tokens, **run
        )
    else:
        with ServeProcess("--model", args.model, "--engine", args.engine) as server:
            before = rss_bytes(server.proc.pid)
            result = soak(
                server.url,
                server.model_id,
                args.clients,
                args.seconds,
                args.drop,
                args.max_tokens,
                **run,
            )
            health = httpx.get(server.root + "/health").json()
            result.update(
                rss_before=before,
                rss_after=rss_bytes(server.proc.pid),
                idle_after={"busy": health["busy"], "queue": health["queue"]},
                server_alive=server.alive(),
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
