"""`llm-worker dev`: the whole stack on one machine, with pip-installed parts only. The banner
comes once the worker owns its partitions and has answered a probe prompt (`_await_ready`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
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


DEV_SESSION_TIMEOUT_MS = "6000"
"""The dev worker's `session.timeout.ms` (unless `LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS` says
otherwise): Tansu hands a new group its partitions after about half the session timeout (23 s
with librdkafka's 45 s default, 3 s with 6 s); 6 s is also Apache Kafka's smallest allowed."""

READY_TIMEOUT_S = 120.0


def _command() -> tuple[str, str]:
    """How another shell runs `llm-worker`: the command, and a hint when it is not on the PATH."""
    bindir = Path(sys.executable).parent
    script = bindir / "llm-worker"
    found = shutil.which("llm-worker")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "llm-worker", ""
    rel = os.path.relpath(bindir)
    shown = bindir if rel.startswith("..") else Path(rel)
    hint = f"  (`source {shown / 'activate'}` puts `llm-worker` on the PATH)\n"
    return str(shown / "llm-worker"), hint


def _next_steps(settings: Settings, http_port: int | None, ready_s: float | None = None) -> str:
    env = f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} "
    dsn = redact_dsn(settings.database_url)  # the local one has no password: shown whole
    cmd, hint = _command()
    host = settings.http_host
    return (
        "\nllm-worker dev stack is ready (the worker owns its partitions and answered a probe"
        f" prompt{'' if ready_s is None else f'; {ready_s:.1f} s'}):\n"
        f"  broker    {settings.kafka_bootstrap_servers}\n"
        f"  postgres  {dsn}\n"
        f"  metrics   http://{host}:{http_port}/metrics   ready: /readyz   (listening on {host})\n"
        "try, in another shell:\n"
        f"  {env}{cmd} send 'Hello there' --model chat-small\n"
        f"  DATABASE_URL='{dsn}' {cmd} registry list\n"
        f"{hint}"
        f"a consumer of your own: session.timeout.ms={DEV_SESSION_TIMEOUT_MS} gets it its"
        " partitions in ~3 s (Tansu waits half the session timeout: ~23 s by default)\n"
        "Ctrl-C stops everything.\n"
    )


async def _await_ready(app: App, settings: Settings) -> float:
    """Wait until the worker is ready and owns its partitions, then until a probe prompt is
    answered: a `send` after the banner is answered at once. Returns the seconds it took."""
    start = time.monotonic()
    said = start
    while True:
        ok, detail = app.ready()
        if ok and detail["assigned_partitions"]:
            break
        now = time.monotonic()
        if now - start > READY_TIMEOUT_S:
            raise RuntimeError(
                f"the worker is not ready after {READY_TIMEOUT_S:.0f} s: {detail['checks']}"
            )
        if now - said >= 5:
            said = now
            print(f"waiting for the worker to own its partitions ({now - start:.0f} s) ...")
        await asyncio.sleep(0.1)
    await asyncio.to_thread(_probe, settings)
    return time.monotonic() - start


def _probe(settings: Settings) -> None:
    """One prompt through the whole path (broker, worker, registry, provider)."""
    pid = f"dev-ready-probe-{time.strftime('%H%M%S')}"
    with CompletionWaiter(settings) as waiter:
        publish(settings, [{"id": pid, "model": "chat-small", "prompt": "ready?"}])
        if not waiter.wait([pid], timeout=30):
            raise RuntimeError("the probe prompt got no completion within 30 s")


async def _serve(settings: Settings, demo: bool, once: bool) -> int:
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        async with app.running():
            port = app.health.port if app.health else None
            ready_s = await _await_ready(app, settings)
            print(_next_steps(settings, port, ready_s), flush=True)
            if demo:
                code = await asyncio.to_thread(_run_demo, settings)
                if once:
                    return code
            await stop.wait()
            print("\nstopping ...", flush=True)
    finally:
        print("worker stopped", flush=True)
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
            env={"LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": DEV_SESSION_TIMEOUT_MS, **os.environ},
            http_host="127.0.0.1",
            http_port=http_port or free_port(),
            log_format="text",
            log_level="WARNING" if quiet else "INFO",
            registry_refresh_s=2.0,
        )
        return run_async(_serve(settings, demo, once))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:  # a part that did not start, or a worker never ready
        print(f"dev stack failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        _stop_parts(fake, broker, pg)


def _stop_parts(
    fake: subprocess.Popen[bytes] | None,
    broker: LocalBroker | KafkaBroker | None,
    pg: LocalPostgres | None,
) -> None:
    """Stop what `run_dev` started, the fake provider first (killed when it does not stop)."""
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
