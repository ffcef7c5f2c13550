"""CPU per request of the two HTTP clients the adapters can use: aiohttp and `adapters.h1`.

    python -m llm_worker.devkit.bench.h1_micro [--requests 20000] [--concurrency 256]
                                               [--rounds 6] [--latency-ms 20]

The fake provider runs in a separate process (its CPU is not counted); this process, under
uvloop, makes `--requests` POSTs of a real chat-completions body (built by the OpenAI adapter,
with its headers) `--concurrency` at a time, with each client in turn: rounds alternate
aiohttp, h1, h1, aiohttp... so a drift of the machine (other processes) weighs on both. Each
POST reads the whole answer as `HTTPAdapter._post` does (aiohttp: a `SessionPool` session and
`read_body` under the row's timeout). The figure is this process's CPU time
(`time.process_time`) per request; the answer is not parsed (the same for both clients).
With `--adapter`, two more rows make the whole attempt (`adapter.complete`: build, POST, parse)
through a `SessionPool` of each client, as the worker does with `LLM_WORKER_HTTP_CLIENT`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop

from llm_worker.adapters import get_adapter
from llm_worker.adapters._body import read_body
from llm_worker.adapters._http import timeout_for
from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.h1 import H1Client
from llm_worker.adapters.secrets import Secret
from llm_worker.adapters.sessions import SessionPool

__all__ = ["main", "run"]

_SERVE = (
    "import sys\n"
    "from llm_worker.devkit.fake_server import run_fake_server\n"
    "run_fake_server(port=0, latency_ms=float(sys.argv[1]))\n"
)

Post = Callable[[], Awaitable[int]]


def _start_provider(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(latency_ms)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "fake provider listening on http://127.0.0.1:PORT (...)"
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"the fake provider did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


async def _round(post: Post, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per request, wall seconds) of `requests` posts, `concurrency` at a time."""
    per_task, extra = divmod(requests, concurrency)

    async def worker(n: int) -> None:
        for _ in range(n):
            status = await post()
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per_task + (i < extra)) for i in range(concurrency)))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return (cpu1 - cpu0) / requests * 1e6, wall1 - wall0


async def run(
    url: str, requests: int, concurrency: int, rounds: int, *, with_adapter: bool = False
) -> dict[str, Any]:
    adapter: Any = get_adapter("openai_compatible")
    target = Target(
        provider="openai_compatible",
        endpoint=f"{url}/v1",
        model="bench-model",
        endpoint_name="bench/h1",
        api_key=Secret("bench", "sk-bench"),
        timeout_ms=30_000,
        max_tokens=64,
    )
    request = ProviderRequest(
        messages=(
            Message("system", "You are terse."),
            Message("user", "What is Kafka, in one line? Answer for a platform engineer."),
        ),
        max_tokens=64,
        temperature=0.2,
    )
    sessions = SessionPool(limit_per_host=concurrency)
    session = sessions.get(target.endpoint)
    assert isinstance(session, aiohttp.ClientSession)
    client = H1Client(limit_per_origin=concurrency)
    h1_sessions = SessionPool(limit_per_host=concurrency, http_client="h1")
    cap = target.max_response_bytes

    async def via_aiohttp() -> int:
        url, body, headers = adapter._request(target, request)  # as every attempt does
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=timeout_for(target.timeout_ms),
            allow_redirects=False,
        ) as resp:
            await read_body(resp, cap)
            return resp.status

    async def via_h1() -> int:
        url, body, headers = adapter._request(target, request)
        resp = await client.post(url, body, headers, target.timeout_ms / 1000, max_body=cap)
        return resp.status

    def via_adapter(pool: SessionPool) -> Post:
        async def post() -> int:
            await adapter.complete(pool.get(target.endpoint), target, request)
            return 200

        return post

    clients: dict[str, Post] = {"aiohttp": via_aiohttp, "h1": via_h1}
    if with_adapter:
        clients["aiohttp+adapter"] = via_adapter(sessions)
        clients["h1+adapter"] = via_adapter(h1_sessions)
    for post in clients.values():  # connections open, code warm
        await _round(post, min(requests, concurrency * 4), concurrency)
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    order = list(clients)
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            cpu_us, wall_s = await _round(clients[name], requests, concurrency)
            out[name].append((cpu_us, wall_s))
            print(
                f"round {i + 1}  {name:<16} {cpu_us:7.1f} us CPU/request  "
                f"{requests / wall_s:8.0f} requests/s",
                flush=True,
            )
    await sessions.close()
    await h1_sessions.close()
    await client.close()
    return {
        name: {
            "cpu_us": [round(c, 1) for c, _ in runs],
            "median_cpu_us": round(statistics.median(c for c, _ in runs), 1),
            "median_rps": round(statistics.median(requests / w for _, w in runs)),
        }
        for name, runs in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_worker.devkit.bench.h1_micro")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--adapter", action="store_true", help="also the whole attempt through each client"
    )
    args = parser.parse_args(argv)
    proc, url = _start_provider(args.latency_ms)
    try:
        result = uvloop.run(
            run(url, args.requests, args.concurrency, args.rounds, with_adapter=args.adapter)
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    summary = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        **result,
    }
    print(json.dumps(summary))
    a, h = result["aiohttp"]["median_cpu_us"], result["h1"]["median_cpu_us"]
    print(f"median CPU per request: aiohttp {a} us, h1 {h} us (h1/aiohttp {h / a:.2f})")
    if args.adapter:
        a, h = result["aiohttp+adapter"]["median_cpu_us"], result["h1+adapter"]["median_cpu_us"]
        print(f"whole attempt: aiohttp {a} us, h1 {h} us (h1/aiohttp {h / a:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
