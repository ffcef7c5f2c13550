"""The fake provider's HTTP server: `build_app`, `start_fake_server` (tests, in the running
loop) and `run_fake_server` (`llm-worker fake-provider`, blocking until SIGTERM). Routes and
behaviour: `fake_provider`."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from llm_worker.adapters.fake import DEFAULT_FAKE_PORT
from llm_worker.devkit.fake_anthropic import FakeAnthropic
from llm_worker.devkit.fake_batch import FakeBatches
from llm_worker.devkit.fake_gemini import add_gemini_routes
from llm_worker.devkit.fake_provider import PROFILE_PATTERN, Call, FakeProvider
from llm_worker.worker.process import raise_open_files_limit

__all__ = [
    "FAKE_PROVIDER",
    "Call",
    "FakeProvider",
    "FakeServer",
    "build_app",
    "run_fake_server",
    "start_fake_server",
]


FAKE_PROVIDER = web.AppKey("fake_provider", FakeProvider)
"""Where `build_app` keeps the `FakeProvider` on the application."""


def build_app(
    *,
    batch_seconds: float = 1.0,
    batch_clock: Callable[[], float] = time.time,
    **settings: Any,
) -> web.Application:
    """The fake provider as an aiohttp application; `settings` are `FakeProvider`'s,
    `batch_seconds` how long a batch runs (`fake_batch`, on `batch_clock`)."""
    provider = FakeProvider(**settings)
    app = web.Application()
    app[FAKE_PROVIDER] = provider
    profile = "{profile:" + PROFILE_PATTERN + "}"
    app.router.add_post("/v1/chat/completions", provider.chat)
    app.router.add_post(f"/{profile}/v1/chat/completions", provider.chat)
    app.router.add_get("/v1/models", provider.list_models)
    app.router.add_get(f"/{profile}/v1/models", provider.list_models)
    anthropic = FakeAnthropic(provider)  # Anthropic's Messages API on the same profiles
    app.router.add_post("/anthropic/v1/messages", anthropic.messages)
    app.router.add_post(f"/{profile}/anthropic/v1/messages", anthropic.messages)
    add_gemini_routes(app, provider, profile)  # Gemini's generateContent, same profiles
    batches = FakeBatches(provider, anthropic, batch_seconds=batch_seconds, clock=batch_clock)
    batches.add_routes(app, profile)  # OpenAI's Batch API, Anthropic's Message Batches
    app.router.add_get("/health", provider.health)
    app.router.add_get("/admin/config", provider.get_config)
    app.router.add_post(f"/admin/config/{profile}", provider.set_config)
    app.router.add_get("/admin/batches", batches.admin_batches)
    app.router.add_post("/admin/reset", batches.admin_reset)  # counters, batches and files
    return app


class FakeServer:
    """A running fake provider (from `start_fake_server`)."""

    def __init__(self, runner: web.AppRunner, provider: FakeProvider, host: str, port: int):
        self._runner = runner
        self.provider = provider
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    def endpoint(self, profile: str = "default") -> str:
        """The base URL (ending in /v1) a target uses to reach `profile`."""
        return f"{self.url}/v1" if profile == "default" else f"{self.url}/{profile}/v1"

    def set_profile(self, name: str = "default", /, **settings: float) -> dict[str, Any]:
        return self.provider.configure(name, **settings)

    def counters(self, name: str = "default") -> dict[str, int]:
        return self.provider.counters(name)

    def calls(self, name: str | None = "default") -> list[Call]:
        """The requests `name` received (None: every profile), oldest first."""
        return self.provider.calls(name)

    def config(self) -> dict[str, Any]:
        return self.provider.config()

    def log(self, name: str = "default") -> list[Call]:
        """`profile`'s requests: arrival time (monotonic) and its requests in flight then."""
        return self.provider.log(name)

    def reset(self) -> None:
        self.provider.reset()

    async def close(self) -> None:
        """Stop listening and finish (or, after the shutdown timeout, cancel) open requests."""
        await self._runner.cleanup()

    async def __aenter__(self) -> FakeServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_fake_server(
    host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 1.0, **settings: Any
) -> FakeServer:
    """Start the fake provider on `host:port` (0 picks a free port) in the running loop."""
    app = build_app(**settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return FakeServer(runner, app[FAKE_PROVIDER], host, int(bound))


def run_fake_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_FAKE_PORT,
    latency_ms: float = 0.0,
    error_rate: float = 0.0,
    error_status: int = 500,
    profiles: Mapping[str, Mapping[str, float]] | None = None,
    *,
    jitter_ms: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (blocking); `on_ready(url)` is called once listening."""
    settings: dict[str, Any] = {
        "latency_ms": latency_ms,
        "jitter_ms": jitter_ms,
        "error_rate": error_rate,
        "error_status": error_status,
        "profiles": profiles,
    }
    raise_open_files_limit()  # thousands of concurrent calls are thousands of sockets
    serving = _serve(host, port, settings, on_ready or _announce)
    try:
        import uvloop  # the fake should cost the machine as little CPU as it can
    except ImportError:
        asyncio.run(serving)
    else:
        uvloop.run(serving)


def _announce(url: str) -> None:
    print(f"fake provider listening on {url} (OpenAI base URL {url}/v1)", flush=True)


async def _serve(
    host: str, port: int, settings: dict[str, Any], on_ready: Callable[[str], None]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # asyncio.run() drops them with the loop
    async with await start_fake_server(host, port, **settings) as server:
        on_ready(server.url)
        await stop.wait()
