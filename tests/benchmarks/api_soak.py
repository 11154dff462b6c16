"""Soak the OpenAI-compatible API: many clients, streaming, some hanging up mid-answer.

Not a test (it reports figures); run it by hand:

    python -m tests.benchmarks.api_soak --model PATH --engine torch --clients 8 --seconds 60
    python -m tests.benchmarks.api_soak --url http://127.0.0.1:8000/v1 --clients 16

Starts its own `itamae serve` unless --url names a running one. Each client loops:
one streaming chat request; with probability --drop it hangs up after the first few
chunks. Prints one JSON object: requests finished/dropped/failed, client-side time to
first byte of content (p50, p95, max), aggregate streamed chunks per second, and the
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


def one_client(url, model, deadline, drop, max_tokens, seed, totals, lock) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=600) as http:
        while time.monotonic() < deadline:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                "max_tokens": max_tokens,
                "stream": True,
            }
            hang_up_after = rng.randint(1, 4) if rng.random() < drop else None
            started = time.monotonic()
            first = None
            chunks = 0
            outcome = "finished"
            try:
                with http.stream("POST", url + "/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        outcome = "failed"
                    else:
                        for line in response.iter_lines():
                            if not line.startswith("data:") or line == "data: [DONE]":
                                continue
                            if '"error"' in line:
                                outcome = "failed"
                                break
                            chunks += 1
                            if first is None:
                                first = time.monotonic() - started
                            if hang_up_after is not None and chunks >= hang_up_after:
                                outcome = "dropped"
                                break
            except httpx.HTTPError:
                outcome = "failed"
            with lock:
                totals[outcome] += 1
                totals["chunks"] += chunks
                if first is not None:
                    totals["ttfb"].append(first)


def soak(url, model, clients, seconds, drop, max_tokens) -> dict:
    totals = {"finished": 0, "dropped": 0, "failed": 0, "chunks": 0, "ttfb": []}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=one_client,
            args=(url, model, deadline, drop, max_tokens, seed, totals, lock),
        )
        for seed in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ttfb = sorted(totals.pop("ttfb"))
    return {
        **totals,
        "clients": clients,
        "seconds": round(elapsed, 1),
        "chunks_per_s": round(totals["chunks"] / elapsed, 2),
        "ttfb_p50_s": round(statistics.median(ttfb), 3) if ttfb else None,
        "ttfb_p95_s": round(ttfb[int(0.95 * (len(ttfb) - 1))], 3) if ttfb else None,
        "ttfb_max_s": round(ttfb[-1], 3) if ttfb else None,
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
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--drop", type=float, default=0.25, help="share of clients that hang up")
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args()
    if args.url:
        model = httpx.get(args.url + "/models").json()["data"][0]["id"]
        result = soak(args.url, model, args.clients, args.seconds, args.drop, args.max_tokens)
    else:
        with ServeProcess("--model", args.model, "--engine", args.engine) as server:
            before = rss_bytes(server.proc.pid)
            result = soak(
                server.url, server.model_id, args.clients, args.seconds, args.drop, args.max_tokens
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
