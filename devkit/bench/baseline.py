"""The plain loop the suite compares the worker against: no registry, no features.

    consume a batch -> call the provider for each record at once (aiohttp) -> produce one
    completion per record -> flush -> commit

One provider URL for every record, no dedup, no retries, no rate limits, no breaker, no
metrics. What it writes has the completion's timing fields (`latency_ms`, `queue_ms`), so the
suite reads both systems the same way. Run as a process (`python -m devkit.bench.baseline`),
configured by the environment the suite passes to the worker too (`KAFKA_BOOTSTRAP_SERVERS`,
`LLM_WORKER_PROMPTS_TOPIC`, `LLM_WORKER_COMPLETIONS_TOPIC`, `LLM_WORKER_GROUP_ID`) plus
`BASELINE_PROVIDER_URL` (an OpenAI-compatible base URL) and `BASELINE_BATCH` (records per
batch, default 256: the worker's old fixed in-flight bound). It prints `assigned` once the
group has given it partitions, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import aiohttp
import msgspec
from confluent_kafka import Consumer, Producer

__all__ = ["run_baseline"]

_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


async def _call(session: aiohttp.ClientSession, url: str, value: bytes | None, ts_ms: int) -> bytes:
    """One record -> one completion (JSON bytes); a failed call is an error completion."""
    try:
        prompt: Any = _dec.decode(value or b"")
        pid, model = str(prompt["id"]), str(prompt["model"])
        text = str(prompt.get("prompt", ""))
    except (msgspec.DecodeError, KeyError, TypeError):
        return _enc.encode({"id": None, "status": "error", "error": {"type": "invalid_json"}})
    body = {
        "model": "fake-baseline",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": prompt.get("max_tokens"),
    }
    t0 = time.perf_counter()
    out: dict[str, Any] = {"id": pid, "model": model, "deduplicated": False}
    try:
        async with session.post(url, data=_enc.encode(body)) as resp:
            payload = await resp.read()
            status = resp.status
        latency_ms = (time.perf_counter() - t0) * 1000
        if status == 200:
            doc: Any = _dec.decode(payload)
            out.update(status="ok", text=doc["choices"][0]["message"]["content"])
        else:
            out.update(status="error", error={"type": f"http_{status}"})
    except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError, KeyError) as exc:
        latency_ms = (time.perf_counter() - t0) * 1000
        out.update(status="error", error={"type": type(exc).__name__})
    out["latency_ms"] = round(latency_ms, 3)
    out["queue_ms"] = round(max(0.0, time.time() * 1000 - ts_ms), 3) if ts_ms > 0 else None
    return _enc.encode(out)


async def run_baseline(env: dict[str, str]) -> int:
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    prompts = env.get("LLM_WORKER_PROMPTS_TOPIC", "llm_prompts")
    completions = env.get("LLM_WORKER_COMPLETIONS_TOPIC", "llm_completions")
    url = env["BASELINE_PROVIDER_URL"].rstrip("/") + "/chat/completions"
    batch = int(env.get("BASELINE_BATCH", "256"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        if partitions:
            print("assigned", len(partitions), flush=True)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": env.get("LLM_WORKER_GROUP_ID", "llm-worker-baseline"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 25,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([prompts], on_assign=on_assign)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    connector = aiohttp.TCPConnector(limit=batch, limit_per_host=batch)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            while not stop.is_set():
                # the plain loop blocks in consume; 0.1 s keeps signals and the group served
                msgs = consumer.consume(batch, 0.1)
                msgs = [m for m in msgs if m.error() is None]
                if not msgs:
                    await asyncio.sleep(0)
                    continue
                outs = await asyncio.gather(
                    *(_call(session, url, m.value(), m.timestamp()[1]) for m in msgs)
                )
                for m, out in zip(msgs, outs, strict=True):
                    producer.produce(completions, out, m.key())
                producer.flush()
                consumer.commit(asynchronous=False)
        finally:
            producer.flush(10)
            consumer.close()
    return 0


def main() -> int:
    from llm_worker.worker.process import run_async  # uvloop where it is installed, as the worker

    return run_async(run_baseline(dict(os.environ)))


if __name__ == "__main__":
    sys.exit(main())
