"""`llm-worker dev`: the whole stack on one machine, with pip-installed parts only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from llm_worker.devkit.devstack import (
    KafkaBroker,
    LocalBroker,
    LocalPostgres,
    broker_label,
    free_port,
    spawn_fake_provider,
    start_broker,
)
from llm_worker.registry.migrate import migrate
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.cli.client import CompletionWaiter, publish
from llm_worker.worker.config import Settings, load_settings, redact_dsn
from llm_worker.worker.ops.logs import configure_logging
from llm_worker.worker.process import run_async

__all__ = ["demo_prompts", "run_dev", "seed_rows"]

log = logging.getLogger("llm_worker.dev")


def seed_rows(fake_url: str) -> list[ModelRow]:
    """Demo registry rows, all served by the built-in fake provider at `fake_url`."""
    return [
        ModelRow(
            model_id="chat-small",
            provider="fake",
            endpoint=f"{fake_url}/v1",
            upstream_model="fake-small",
            max_tokens=256,
            input_cost_per_1k=0.0005,
            output_cost_per_1k=0.0015,
            timeout_ms=10_000,
        ),
        ModelRow(
            model_id="chat-large",
            provider="fake",
            endpoint=f"{fake_url}/v1",
            upstream_model="fake-large",
            max_tokens=1024,
            input_cost_per_1k=0.003,
            output_cost_per_1k=0.015,
            timeout_ms=10_000,
        ),
        ModelRow(
            model_id="chat-flaky",
            provider="fake",
            endpoint=f"{fake_url}/flaky/v1",  # this profile fails every call
            upstream_model="fake-flaky",
            max_tokens=256,
            fallback_provider="fake",
            fallback_endpoint=f"{fake_url}/v1",
            fallback_model="fake-small",
            timeout_ms=2_000,
        ),
    ]


def demo_prompts() -> list[dict[str, Any]]:
    run = time.strftime("%H%M%S")
    return [
        {"id": f"demo-{run}-1", "model": "chat-small", "prompt": "What is Kafka, in one line?"},
        {
            "id": f"demo-{run}-2",
            "model": "chat-large",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three PostgreSQL features."},
            ],
        },
        {"id": f"demo-{run}-3", "model": "chat-small", "prompt": "Say hello twice."},
        {"id": f"demo-{run}-4", "model": "chat-small", "prompt": "Say hello twice."},
        {"id": f"demo-{run}-5", "model": "chat-flaky", "prompt": "Does failover work?"},
        {"id": f"demo-{run}-6", "model": "no-such-model", "prompt": "This one gets an error."},
    ]


def _print_completion(c: dict[str, Any]) -> None:
    if c.get("status") == "ok":
        extra = " (fallback)" if c.get("fallback_used") else ""
        if c.get("deduplicated"):
            extra += " (deduplicated)"
        print(
            f"  {c['id']}  {c['model']:<14} ok    via {c.get('endpoint_name')}{extra}"
            f"  {c.get('latency_ms')} ms  -> {c.get('text')!r}",
            flush=True,
        )
    else:
        err = c.get("error") or {}
        print(
            f"  {c['id']}  {c['model']:<14} error {err.get('type')}: {err.get('message')}",
            flush=True,
        )


def _run_demo(settings: Settings) -> int:
    prompts = demo_prompts()
    print(f"\nsending {len(prompts)} demo prompts to {settings.prompts_topic} ...", flush=True)
    with CompletionWaiter(settings) as waiter:
        publish(settings, prompts)
        got = waiter.wait([p["id"] for p in prompts], timeout=60, on_completion=_print_completion)
    print(f"{len(got)}/{len(prompts)} completions received from {settings.completions_topic}\n")
    return 0 if len(got) == len(prompts) else 1


def _next_steps(settings: Settings, http_port: int | None) -> str:
    env = f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} "
    dsn = redact_dsn(settings.database_url)  # the local one has no password: shown whole
    return (
        "\nllm-worker dev stack is running:\n"
        f"  broker    {settings.kafka_bootstrap_servers}\n"
        f"  postgres  {dsn}\n"
        f"  metrics   http://127.0.0.1:{http_port}/metrics   ready: /readyz\n"
        "try, in another shell:\n"
        f"  {env}llm-worker send 'Hello there' --model chat-small\n"
        f"  DATABASE_URL='{dsn}' llm-worker registry list\n"
        "Ctrl-C stops everything.\n"
    )


async def _serve(settings: Settings, demo: bool, once: bool) -> int:
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    async with app.running():
        port = app.health.port if app.health else None
        print(_next_steps(settings, port), flush=True)
        if demo:
            code = await asyncio.to_thread(_run_demo, settings)
            if once:
                return code
        await stop.wait()
        print("\nstopping ...", flush=True)
    return code


def run_dev(
    *,
    demo: bool,
    fake_port: int = 0,
    http_port: int = 8080,
    once: bool = False,
    broker_kind: str = "tansu",
) -> int:
    quiet = demo
    configure_logging("WARNING" if quiet else "INFO", "text")
    broker: LocalBroker | KafkaBroker | None = None
    pg: LocalPostgres | None = None
    fake: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            print(f"starting local broker ({broker_label(broker_kind)}) ...", flush=True)
            broker = start_broker(broker_kind)
            bootstrap = broker.bootstrap
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            print("starting local PostgreSQL (pgserver) ...", flush=True)
            pg = LocalPostgres().start()
            dsn = pg.dsn
        applied = migrate(dsn)
        print(f"migrations applied: {', '.join(applied) or 'none pending'}", flush=True)
        fport = fake_port or free_port()
        fake = spawn_fake_provider(fport, "--latency-ms", "20", "--profile", "flaky:error_rate=1.0")
        fake_url = f"http://127.0.0.1:{fport}"
        for row in seed_rows(fake_url):
            upsert_row(dsn, row)
        print(
            f"fake provider on {fake_url}; registry seeded: chat-small, chat-large, chat-flaky",
            flush=True,
        )
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            database_url=dsn,
            http_port=http_port or free_port(),
            log_format="text",
            log_level="WARNING" if quiet else "INFO",
            registry_refresh_s=2.0,
        )
        return run_async(_serve(settings, demo, once))
    except KeyboardInterrupt:
        return 130
    finally:
        if fake is not None:
            fake.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                fake.wait(5)
            if fake.poll() is None:
                fake.kill()
        if broker is not None:
            broker.close()
        if pg is not None:
            pg.stop()
        sys.stdout.flush()
