"""Each environment variable that changes what the worker does, seen from outside: topics,
group, attempts, deadlines, secrets, routing, breaker, start-up waits, the HTTP server.

(Rate limits and dedup: test_limits.py, test_dedup.py; in-flight bounds, commit interval and
shutdown deadline: test_stream.py; the table of valid and invalid values:
tests/unit/test_settings_table.py.)
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow

from .conftest import Harness, run_app, wait_for


async def test_topics_and_group_come_from_the_environment(provider: FakeServer) -> None:
    env = {
        "LLM_WORKER_PROMPTS_TOPIC": "in",
        "LLM_WORKER_COMPLETIONS_TOPIC": "out",
        "LLM_WORKER_DLQ_TOPIC": "dead",
        "LLM_WORKER_CHUNKS_TOPIC": "bits",
        "LLM_WORKER_GROUP_ID": "g7",
        "LLM_WORKER_TOPIC_PARTITIONS": "3",
    }
    async with run_app(provider, env, rows=lambda h: [h.row()]) as h:
        h.send({"id": "a", "model": "m1", "prompt": "x"}, b"not json")
        await wait_for(lambda: h.broker.records("out") and h.broker.records("dead"))
        await h.settled()
        topics = {t: len(p) for t, p in h.broker.topics.items()}
    assert topics == {"in": 3, "out": 3, "dead": 3, "bits": 3}
    assert sum(h.broker.commits_of("g7").values()) == 2 and not h.broker.commits_of("llm-worker")


async def test_topics_are_not_created_when_told_not_to(provider: FakeServer) -> None:
    def topics_exist(h: Harness) -> None:
        h.broker.create("llm_prompts", 1)

    env = {"LLM_WORKER_CREATE_TOPICS": "false"}
    async with run_app(provider, env, rows=lambda h: [h.row()], before_start=topics_exist) as h:
        h.send({"id": "a", "model": "m1", "prompt": "x"})
        await h.wait(["a"])
    assert set(h.broker.topics) == {"llm_prompts", "llm_completions"}  # output auto-created


async def test_message_and_metadata_size_limits(provider: FakeServer) -> None:
    env = {"LLM_WORKER_MAX_MESSAGE_BYTES": "120", "LLM_WORKER_MAX_METADATA_BYTES": "20"}
    async with run_app(provider, env, rows=lambda h: [h.row()]) as h:
        h.send(
            {"id": "fits", "model": "m1", "prompt": "x" * 40, "metadata": {"k": "v" * 10}},
            {"id": "big", "model": "m1", "prompt": "x" * 100},
            {"id": "meta", "model": "m1", "prompt": "x", "metadata": {"k": "v" * 30}},
        )
        out = await h.wait(["fits", "big", "meta"])
    assert out["fits"]["status"] == "ok"
    assert out["big"]["error"]["type"] == "payload_too_large"
    assert out["meta"]["error"]["type"] == "validation_error"
    assert "metadata" in out["meta"]["error"]["message"] and out["meta"]["metadata"] is None


async def test_max_attempts_and_the_fallback(provider: FakeServer) -> None:
    provider.set_profile("down", error_rate=1.0, error_status=500)
    env = {
        "LLM_WORKER_MAX_ATTEMPTS": "2",
        "LLM_WORKER_BREAKER_MIN_REQUESTS": "100",
        "LLM_WORKER_REQUEST_DEADLINE_S": "2",  # `alone` is held and retried until then
    }

    def rows(h: Harness) -> list[ModelRow]:
        fallback = h.provider.endpoint("backup")
        return [
            h.row("alone", "down"),
            h.row("covered", "down", fallback_endpoint=fallback, fallback_model="b"),
        ]

    async with run_app(provider, env, rows=rows) as h:
        h.send({"id": "a", "model": "alone", "prompt": "a"})
        h.send({"id": "c", "model": "covered", "prompt": "c"})
        out = await h.wait(["a", "c"])
    assert out["a"]["error"]["type"] == "server_error" and out["a"]["attempts"] >= 2
    assert "request deadline passed" in out["a"]["error"]["message"]
    assert out["c"]["status"] == "ok" and out["c"]["attempts"] == 3  # 2 on `down`, then 1
    assert out["c"]["fallback_used"] and out["c"]["endpoint_name"] == "covered/fallback"
    assert out["c"]["upstream_model"] == "b"
    texts = [c.text for c in h.calls("down")]
    assert texts.count("c") == 2 and texts.count("a") == out["a"]["attempts"]
    assert len(h.calls("backup")) == 1


async def test_the_request_deadline_ends_a_slow_call(provider: FakeServer) -> None:
    provider.set_profile("slow", latency_ms=5000)
    env = {"LLM_WORKER_REQUEST_DEADLINE_S": "0.3"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send({"id": "s", "model": "m1", "prompt": "x"})
        out = await h.wait(["s"])
        answered_at_provider = h.calls("slow")[0].status
    assert out["s"]["error"]["type"] == "timeout" and out["s"]["error"]["retryable"]
    assert answered_at_provider is None  # given up long before the provider's 5 s


async def test_api_keys_are_read_from_the_secrets_directory(
    provider: FakeServer, tmp_path: object
) -> None:
    from pathlib import Path

    secrets = Path(str(tmp_path))
    (secrets / "fake-key").write_text("sk-from-file\n")
    env = {"LLM_WORKER_SECRETS_DIR": str(secrets)}
    async with run_app(provider, env, rows=lambda h: [h.row(api_key_secret="fake-key")]) as h:
        h.send({"id": "k", "model": "m1", "prompt": "x"})
        out = await h.wait(["k"])
    assert out["k"]["status"] == "ok"
    assert [c.authorization for c in h.calls()] == ["Bearer sk-from-file"]
    assert "sk-from-file" not in str(out["k"])


async def test_the_routing_objective(provider: FakeServer) -> None:
    def rows(h: Harness) -> list[ModelRow]:
        return [
            h.row("dear", "dear", input_cost_per_1k=0.01, fallback_model_id="cheap"),
            h.row("cheap", "cheap", input_cost_per_1k=0.0001),
        ]

    prompts = [{"id": f"r{i}", "model": "dear", "prompt": f"r{i}"} for i in range(5)]
    async with run_app(provider, {"LLM_WORKER_ROUTING_OBJECTIVE": "cost"}, rows=rows) as h:
        h.send(*prompts)
        await h.wait([p["id"] for p in prompts])
    assert len(h.calls("cheap")) == 5 and not h.calls("dear")
    provider.reset()
    async with run_app(provider, rows=rows) as h:  # priority: the registry's order
        h.send(*prompts)
        await h.wait([p["id"] for p in prompts])
    assert len(h.calls("dear")) == 5 and not h.calls("cheap")


async def test_breaker_settings_open_and_wait_for_the_probe(provider: FakeServer) -> None:
    provider.set_profile("flaky", error_rate=1.0, error_status=500)
    env = {
        "LLM_WORKER_MAX_ATTEMPTS": "1",
        "LLM_WORKER_BREAKER_MIN_REQUESTS": "2",
        "LLM_WORKER_BREAKER_ERROR_THRESHOLD": "1.0",
        "LLM_WORKER_BREAKER_COOLDOWN_S": "0.5",
        "LLM_WORKER_BREAKER_WHEN_ALL_OPEN": "wait",
        "LLM_WORKER_REQUEST_DEADLINE_S": "1",  # the failing ones end (held until then)
    }
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "flaky")]) as h:
        h.send(*({"id": f"e{i}", "model": "m1", "prompt": f"e{i}"} for i in range(2)))
        errs = await h.wait(["e0", "e1"])
        before = len(h.calls("flaky"))
        opened = h.calls("flaky")[-1].answered
        provider.set_profile("flaky", error_rate=0.0)
        h.send({"id": "w", "model": "m1", "prompt": "w"})
        out = await h.wait(["w"])
        changes = h.app.metrics.circuit_changes
    assert {d["error"]["type"] for d in errs.values()} <= {"server_error", "circuit_open"}
    assert out["w"]["status"] == "ok"
    probe = h.calls("flaky")[-1]
    assert opened is not None and probe.arrived - opened >= 0.5 - 0.01  # after the cooldown
    assert len(h.calls("flaky")) == before + 1  # nothing called while open: just the probe
    assert sum(m.samples[0].value for m in changes.collect() if m.samples) >= 1


async def test_start_up_waits_reach_the_broker_and_the_registry(provider: FakeServer) -> None:
    env = {"LLM_WORKER_BROKER_WAIT_S": "7", "LLM_WORKER_REGISTRY_WAIT_S": "9"}
    async with run_app(provider, env) as h:
        pass
    assert h.broker.admin_waits == [7.0] and h.registry.start_timeout == 9.0
    assert h.registry.closed


async def test_the_http_endpoints(provider: FakeServer) -> None:
    env = {"LLM_WORKER_HTTP_HOST": "127.0.0.1", "LLM_WORKER_HTTP_PORT": "0"}
    rows = lambda h: [h.row("m1"), h.row("m2")]  # noqa: E731
    async with run_app(provider, env, rows=rows, http=True) as h, aiohttp.ClientSession() as s:
        assert h.app.health is not None and h.app.health.port
        base = f"http://127.0.0.1:{h.app.health.port}"
        h.send({"id": "a", "model": "m1", "prompt": "x"}, {"id": "b", "model": "zz", "prompt": "x"})
        h.send(b"{nope")
        await h.wait(["a", "b"])
        await wait_for(lambda: len(h.dlq()) == 1)
        await h.settled()
        async with s.get(f"{base}/healthz") as r:
            live = await r.json()
            assert r.status == 200 and live["status"] == "ok"
            assert live["event_loop_stalled_s"] < 10
        async with s.get(f"{base}/readyz") as r:
            ready = await r.json()
            assert r.status == 200
        h.registry.stale = True  # Postgres unreachable: still ready, from the cache
        async with s.get(f"{base}/readyz") as r:
            stale = await r.json()
            assert r.status == 200
        async with s.get(f"{base}/metrics") as r:
            metrics = _samples(await r.text())
        h.app.worker.stop()  # stopping: not ready any more
        async with s.get(f"{base}/readyz") as r:
            assert r.status == 503 and (await r.json())["ready"] is False
    assert ready["ready"] is True and ready["registry_loaded"] is True
    assert ready["registry_stale"] is False and ready["broker"] is True
    assert ready["assigned_partitions"] == 2 and ready["group_members"] == 1
    assert stale["registry_stale"] is True and stale["ready"] is True
    assert {k: c["state"] for k, c in ready["checks"].items()} == {
        "broker": "reachable",
        "registry": "loaded",
        "assignment": "assigned",
        "shutdown": "running",
        "kafka_clients": "ok",
        "delivery": "ok",
        "intake": "moving",
    }
    assert stale["checks"]["registry"] == {"ok": True, "state": "stale"}
    assert metrics[("llm_worker_completions_total", (("model", "m1"), ("status", "ok")))] == 1
    # unknown models share one label (untrusted input cannot grow the series)
    assert (
        metrics[("llm_worker_completions_total", (("model", "unknown"), ("status", "error")))] == 1
    )
    assert metrics[("llm_worker_completion_errors_total", (("type", "unknown_model"),))] == 1
    assert metrics[("llm_worker_dlq_records_total", (("reason", "invalid_json"),))] == 1
    assert metrics[("llm_worker_messages_consumed_total", ())] == 3
    assert metrics[("llm_worker_registry_rows", ())] == 2
    assert metrics[("llm_worker_registry_stale", ())] == 1
    labels = (("endpoint", "m1/primary"), ("outcome", "ok"), ("provider", "fake"))
    assert metrics[("llm_worker_provider_calls_total", labels)] == 1


async def test_readiness_needs_the_registry(provider: FakeServer) -> None:
    async with run_app(provider) as h:
        ok, detail = h.app.ready()
        assert ok
        h.registry._loaded = False
        ok, detail = h.app.ready()
    assert not ok and detail["registry_loaded"] is False


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
