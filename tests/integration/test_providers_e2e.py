"""Every provider kind end to end: registry row → Kafka prompt → real wire format → completion.

Each provider is played by a local aiohttp server (the profiles of the adapter contract suite)
that insists on the key header its provider requires and answers 401 otherwise. The keys live
in a temporary secrets directory, one file per `api_key_secret`, as Kubernetes mounts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.unit.test_adapter_contract import MODEL, PROFILES, Profile, Upstream, serve

pytestmark = pytest.mark.integration

_QUESTION = re.compile(rb"question <([^>]+)>")


class Provider:
    """One provider kind: its local server, its registry row, its secret and what it answers."""

    def __init__(self, profile: Profile, up: Upstream, index: int, secrets_dir: Path) -> None:
        self.profile = profile
        self.up = up
        self.model_id = f"m-{profile.id}"
        self.secret_name = f"key-{profile.id}"
        self.secret_path = secrets_dir / self.secret_name
        self.key = f"sk-{profile.id}-{uuid.uuid4().hex}"
        self.tokens = (10 + index, 3 + index)
        self.prices = (0.25 * (index + 1), 0.75 * (index + 1))
        self.rejected = 0
        self.accepted: list[str] = []  # the key values of the requests that were answered
        self.secret_path.write_text(self.key + "\n", encoding="utf-8")
        up.reply = self.answer

    def row(self) -> ModelRow:
        return ModelRow(
            model_id=self.model_id,
            provider=self.profile.provider,
            endpoint=self.profile.endpoint(self.up.base),
            upstream_model=MODEL,
            max_tokens=64,
            timeout_ms=15_000,
            api_key_secret=self.secret_name,
            input_cost_per_1k=self.prices[0],
            output_cost_per_1k=self.prices[1],
        )

    def text_for(self, request_id: str) -> str:
        return f"{self.profile.id} answers {request_id}"

    def cost(self) -> float:
        return round(
            self.tokens[0] / 1000 * self.prices[0] + self.tokens[1] / 1000 * self.prices[1], 8
        )

    async def answer(self, request: web.Request) -> web.StreamResponse:
        p = self.profile
        sent = request.headers.get(p.key_header)
        if sent != p.key_prefix + self.key:
            self.rejected += 1
            return web.json_response(p.error(401, "invalid API key"), status=401)
        if request.path_qs != p.path:
            return web.json_response(p.error(404, f"no route {request.path_qs}"), status=404)
        found = _QUESTION.search(await request.read())
        if found is None:
            return web.json_response(p.error(400, "no question in the body"), status=400)
        rid = found.group(1).decode()
        self.accepted.append(sent.removeprefix(p.key_prefix))
        body = p.success(self.text_for(rid), p.finish["stop"], self.tokens)
        return web.json_response(body, headers={p.request_id_header: f"upstream-{rid}"})

    def rotate(self) -> str:
        """Write a new key into the secret file (mtime moved on for sure) and accept only it."""
        old = self.secret_path.stat().st_mtime_ns
        self.key = f"sk-{self.profile.id}-rotated-{uuid.uuid4().hex}"
        self.secret_path.write_text(self.key + "\n", encoding="utf-8")
        if self.secret_path.stat().st_mtime_ns <= old:  # a coarse-grained file system
            os.utime(self.secret_path, ns=(old + 2_000_000_000, old + 2_000_000_000))
        return self.key


@pytest.fixture
async def providers(tmp_path: Path, pg_dsn: str) -> AsyncIterator[list[Provider]]:
    """One server, secret file and registry row per provider kind (both Hugging Face forms)."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for index, profile in enumerate(PROFILES):
            up = await stack.enter_async_context(serve(profile))
            out.append(Provider(profile, up, index, secrets_dir))
        for p in out:
            upsert_row(pg_dsn, p.row())
        yield out


def _prompts(providers: list[Provider], tag: str, per_model: int) -> list[dict[str, Any]]:
    """Distinct prompts for every model, alternating the plain and the chat form."""
    out: list[dict[str, Any]] = []
    for p in providers:
        for i in range(per_model):
            rid = f"{tag}-{p.profile.id}-{i}"
            prompt: dict[str, Any] = {"id": rid, "model": p.model_id, "metadata": {"i": i}}
            if i % 2:
                prompt["messages"] = [
                    {"role": "system", "content": "answer briefly"},
                    {"role": "user", "content": f"question <{rid}>"},
                ]
            else:
                prompt["prompt"] = f"question <{rid}>"
            out.append(prompt)
    return out


def _check_ok(doc: dict[str, Any], p: Provider) -> None:
    assert doc["status"] == "ok", doc
    assert doc["text"] == p.text_for(doc["id"])
    assert doc["finish_reason"] == "stop"
    assert doc["provider"] == p.profile.provider
    assert doc["upstream_model"] == MODEL
    assert doc["endpoint_name"] == f"{p.model_id}/primary"
    assert doc["attempts"] == 1 and doc["fallback_used"] is False
    usage = doc["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == p.tokens
    assert usage["cost_usd"] == pytest.approx(p.cost(), rel=1e-6, abs=1e-9)
    assert usage["cost_usd"] > 0


async def _produce(s: Settings, prompts: list[dict[str, Any]]) -> None:
    await asyncio.to_thread(kh.produce_prompts, s.kafka_bootstrap_servers, s.prompts_topic, prompts)


async def _completions(s: Settings, count: int) -> dict[str, dict[str, Any]]:
    records = await asyncio.to_thread(
        kh.consume, s.kafka_bootstrap_servers, s.completions_topic, count, 120
    )
    return {r.json()["id"]: r.json() for r in records}


async def test_every_provider_kind_answers_through_kafka(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    tmp_path: Path,
    providers: list[Provider],
) -> None:
    s = make_settings(secrets_dir=str(tmp_path / "secrets"), max_attempts=2)
    absent = f"absent-key-{uuid.uuid4().hex[:8]}"  # neither a file nor an environment variable
    assert absent.upper().replace("-", "_") not in os.environ
    openai_like = next(p for p in providers if p.profile.provider == "openai_compatible")
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m-no-key",
            provider="openai_compatible",
            endpoint=openai_like.row().endpoint,
            upstream_model="never-called",
            api_key_secret=absent,
            timeout_ms=15_000,
        ),
    )
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.prompts_topic, 2)
    prompts = _prompts(providers, "p", per_model=4)
    prompts.append({"id": "no-key-1", "model": "m-no-key", "prompt": "question <no-key-1>"})
    await _produce(s, prompts)

    async with App(s, http=False).running():
        comps = await _completions(s, len(prompts))

    assert sorted(comps) == sorted(p["id"] for p in prompts)
    for p in providers:
        mine = [doc for rid, doc in comps.items() if doc["model"] == p.model_id]
        assert len(mine) == 4, p.profile.id
        for doc in mine:
            _check_ok(doc, p)
        assert p.rejected == 0 and p.accepted == [p.key] * 4, p.profile.id

    failed = comps["no-key-1"]
    assert failed["status"] == "error"
    assert failed["error"]["type"] == "auth_error" and failed["error"]["retryable"] is False
    assert absent in failed["error"]["message"]
    assert (
        failed["provider"] == "openai_compatible" and failed["endpoint_name"] == "m-no-key/primary"
    )
    assert "text" not in failed or failed["text"] is None
    for p in providers:
        assert p.key not in failed["error"]["message"]
    # nothing was sent without a key
    assert not any(b"never-called" in body for _, _, body in openai_like.up.received)


async def test_a_rotated_key_is_used_without_a_restart(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    providers: list[Provider],
) -> None:
    s = make_settings(secrets_dir=str(tmp_path / "secrets"), max_attempts=2)
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.prompts_topic, 2)
    before = _prompts(providers, "before", per_model=2)
    after = _prompts(providers, "after", per_model=3)
    await _produce(s, before)

    async with App(s, http=False).running():
        comps = await _completions(s, len(before))
        assert len(comps) == len(before)
        old_keys = {p.profile.id: p.key for p in providers}
        for p in providers:
            assert p.accepted == [p.key] * 2, p.profile.id
            new_key = p.rotate()  # from now on the server answers 401 to the old key
            assert new_key != old_keys[p.profile.id]
        await _produce(s, after)
        comps = await _completions(s, len(before) + len(after))

    assert sorted(comps) == sorted(p["id"] for p in before + after)
    by_model = {p.model_id: p for p in providers}
    for doc in comps.values():
        _check_ok(doc, by_model[doc["model"]])
    for p in providers:
        assert p.rejected == 0, p.profile.id  # the old key was never sent after the rotation
        assert p.accepted == [old_keys[p.profile.id]] * 2 + [p.key] * 3, p.profile.id
