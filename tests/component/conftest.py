"""The component layer: the real `App` built from an environment dict, with the Kafka bridge and
the registry replaced by the in-memory fakes of `fakes.py`, and the real fake provider over
HTTP. No broker, no Postgres; each test takes a second or two.

    async with run_app({"LLM_WORKER_MAX_ATTEMPTS": "1"}, rows=[...]) as h:
        h.send({"id": "a", "model": "m1", "prompt": "hi"})
        out = await h.wait(["a"])
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings, load_settings

from .fakes import FakeBridge, FakeBroker, FakeMessage, FakeRegistry

BASE_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "fake:9092",  # never dialled: the bridge and admin are fakes
    "DATABASE_URL": "postgresql://fake@nowhere/registry",  # never dialled either
    "LLM_WORKER_COMMIT_INTERVAL_MS": "50",
    "LLM_WORKER_SHUTDOWN_TIMEOUT_S": "5",
    "LLM_WORKER_REQUEST_DEADLINE_S": "20",
    "LLM_WORKER_TOPIC_PARTITIONS": "2",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/component" in str(item.fspath):
            item.add_marker(pytest.mark.timeout(90))


@pytest.fixture
async def provider() -> AsyncIterator[FakeServer]:
    server = await start_fake_server(shutdown_timeout=0.2)
    try:
        yield server
    finally:
        await server.close()


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `cond` until true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s: {what or cond}")
        await asyncio.sleep(0.01)


class Harness:
    def __init__(
        self,
        settings: Settings,
        broker: FakeBroker,
        bridge: FakeBridge,
        registry: FakeRegistry,
        app: App,
        provider: FakeServer,
    ) -> None:
        self.settings, self.broker, self.bridge = settings, broker, bridge
        self.registry, self.app, self.provider = registry, app, provider

    def row(self, model_id: str = "m1", profile: str = "default", **kw: Any) -> ModelRow:
        values: dict[str, Any] = {"upstream_model": f"up-{model_id}", "timeout_ms": 10_000}
        values.update(kw)
        return ModelRow(
            model_id=model_id, provider="fake", endpoint=self.provider.endpoint(profile), **values
        )

    def send(
        self,
        *prompts: dict[str, Any] | bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> list[FakeMessage]:
        """Publish to the prompts topic; a dict is JSON with its `id` as the key."""
        out = []
        for p in prompts:
            if isinstance(p, dict):
                value: bytes | None = json.dumps(p).encode()
                k = key if key is not None else str(p.get("id", "")).encode() or None
            else:
                value, k = p, key
            out.append(
                self.broker.append(self.settings.prompts_topic, value, k, headers, partition)
            )
        return out

    def outputs(self, topic: str | None = None) -> list[FakeMessage]:
        return self.broker.records(topic or self.settings.completions_topic)

    def completions(self) -> list[dict[str, Any]]:
        return [json.loads(m.value() or b"") for m in self.outputs()]

    def dlq(self) -> list[FakeMessage]:
        return self.outputs(self.settings.dlq_topic)

    async def wait(self, ids: Iterable[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """Every id in `ids` answered; their (last) completions by id."""
        want = set(ids)

        def answered() -> bool:
            return want <= {d["id"] for d in self.completions()}

        await wait_for(answered, timeout, f"completions for {sorted(want)}")
        return {d["id"]: d for d in self.completions() if d["id"] in want}

    def committed(self) -> dict[int, int]:
        group = self.settings.group_id
        return {p: o for (_, p), o in self.broker.commits_of(group).items()}

    async def settled(self, timeout: float = 20.0) -> None:
        """Every input offset committed: each partition's committed offset is its end."""
        ends = {p: n for p, n in self.broker.end_offsets(self.settings.prompts_topic).items() if n}
        try:
            await wait_for(lambda: self.committed() == ends, timeout)
        except TimeoutError:
            raise TimeoutError(f"committed {self.committed()}, input ends {ends}") from None

    def calls(self, profile: str | None = "default") -> list[Any]:
        return self.provider.calls(profile)


@contextlib.asynccontextmanager
async def run_app(
    provider: FakeServer,
    env: dict[str, str] | None = None,
    rows: Callable[[Harness], Iterable[ModelRow]] | Iterable[ModelRow] = (),
    *,
    http: bool = False,
    reports_members: bool = True,
    max_message_bytes: int = 1_000_000,
    before_start: Callable[[Harness], None] | None = None,
) -> AsyncIterator[Harness]:
    """The App with fakes, running; stopped and closed on exit."""
    settings = load_settings({**BASE_ENV, **(env or {})})
    broker = FakeBroker(reports_members=reports_members)
    bridge = FakeBridge(settings, broker, max_message_bytes=max_message_bytes)
    registry = FakeRegistry()
    app = App(
        settings,
        http=http,
        bridge=bridge,  # type: ignore[arg-type]
        registry=registry,  # type: ignore[arg-type]
        connect_admin=broker.connect_admin,  # type: ignore[arg-type]
    )
    h = Harness(settings, broker, bridge, registry, app, provider)
    registry.put(*(rows(h) if callable(rows) else rows))
    if before_start is not None:
        before_start(h)
    async with app.running():
        yield h
