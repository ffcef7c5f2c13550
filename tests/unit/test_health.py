"""The health endpoints as a probe sees them: real HTTP, the App's own checks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_worker.worker.app import App
from llm_worker.worker.config import load_settings
from llm_worker.worker.ops.http import HealthServer


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, int]]:
    settings = load_settings(
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "LLM_WORKER_LOOP_STALL_S": "0.5"}
    )
    app = App(settings, http=False)  # nothing started: no broker, no registry
    server = HealthServer(
        app.metrics.registry,
        app.ready,
        live=app.live,
        host="127.0.0.1",
        port=0,
        loop_timeout_s=0.3,
    )
    app.loop_lag.start()
    await server.start()
    assert server.port is not None
    try:
        yield app, server.port
    finally:
        app.loop_lag.stop()
        await server.close()


async def test_healthz_fails_while_the_event_loop_is_blocked(served: tuple[App, int]) -> None:
    _app, port = served
    assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
    seen: dict[str, tuple[int, Any]] = {}
    done = threading.Event()

    def probe() -> None:  # a kubelet, from outside the blocked loop
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not done.is_set():
            status, body = get(port, "/healthz")
            if status == 503:
                seen["healthz"] = (status, body)
                seen["readyz"] = get(port, "/readyz")
                seen["metrics"] = get(port, "/metrics")
                done.set()
            time.sleep(0.05)
        done.set()

    prober = threading.Thread(target=probe)
    prober.start()
    done.wait(30)  # the point: the loop cannot run until the probe has seen it stalled
    prober.join()
    status, body = seen["healthz"]
    assert status == 503 and body["status"] == "failing"
    assert "stalled" in body["event_loop"] and body["event_loop_stalled_s"] >= 0.5
    ready_status, ready = seen["readyz"]
    assert ready_status == 503 and ready["checks"]["event_loop"]["state"] == "stalled"
    assert seen["metrics"][0] == 503
    # the loop runs again: alive again
    for _ in range(100):
        if (await asyncio.to_thread(get, port, "/healthz"))[0] == 200:
            break
        await asyncio.sleep(0.05)
    assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200


async def test_healthz_fails_after_a_fatal_kafka_error(served: tuple[App, int]) -> None:
    app, port = served
    app.bridge.fatal = "_FATAL: producer fenced"
    status, body = await asyncio.to_thread(get, port, "/healthz")
    assert status == 503 and body["fatal"] == "_FATAL: producer fenced"


async def test_readyz_explains_each_check(served: tuple[App, int]) -> None:
    app, port = served
    status, body = await asyncio.to_thread(get, port, "/readyz")
    assert status == 503 and body["ready"] is False
    checks = body["checks"]
    assert set(checks) == {
        "broker",
        "registry",
        "assignment",
        "shutdown",
        "kafka_clients",
        "delivery",
        "intake",
    }
    assert checks["broker"] == {"ok": False, "state": "starting", "brokers_up": None}
    assert checks["registry"] == {"ok": False, "state": "not_loaded"}
    assert checks["assignment"] == {"ok": True, "state": "waiting", "partitions": 0}
    assert checks["shutdown"] == {"ok": True, "state": "running"}
    assert checks["kafka_clients"] == {"ok": True, "state": "ok"}
    assert checks["delivery"] == {"ok": True, "state": "ok", "error": None}
    assert checks["intake"]["ok"] and checks["intake"]["state"] == "moving"
    # what a running worker reports (as if started): each check flips on its own
    app._broker_ok = True
    app.kafka_stats.brokers_up = 1
    app.registry._loaded = True  # as after its first load (the integration test does it for real)
    status, body = await asyncio.to_thread(get, port, "/readyz")
    assert status == 200 and body["ready"] is True
    assert body["checks"]["broker"]["state"] == "reachable"
    app.kafka_stats.brokers_up = 0  # the consumer's statistics: no broker connected
    status, body = await asyncio.to_thread(get, port, "/readyz")
    assert status == 503 and body["checks"]["broker"]["state"] == "unreachable"
    app.kafka_stats.brokers_up = 1
    app.worker.stop()
    status, body = await asyncio.to_thread(get, port, "/readyz")
    assert status == 503 and body["checks"]["shutdown"] == {"ok": False, "state": "shutting_down"}


async def test_metrics_are_served(served: tuple[App, int]) -> None:
    _app, port = served
    status, text = await asyncio.to_thread(get, port, "/metrics")
    assert status == 200
    for name in ("llm_worker_in_flight", "process_resident_memory_bytes", "python_info"):
        assert name in text
    assert (await asyncio.to_thread(get, port, "/nope"))[0] == 404
