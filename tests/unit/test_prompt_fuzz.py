"""Prompt fields on the error paths, fuzzed (issue 21): whatever a producer writes, the pipeline
(decode, validate, resolve, the error completion of a failed call, `internal_error`) answers a
record whose `id` can be read with a completion that carries that id, encodes as valid UTF-8
JSON and stays within the size limits, and dead-letters the others with a reason. It never
raises.

Generated: lone UTF-16 surrogates anywhere (escaped by `json.dumps`, or raw as the bytes
`surrogatepass` writes, which are not UTF-8), metadata over the limit, nesting, wrong types,
huge stop lists and prompts, truncated documents."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_worker.adapters.errors import ServerError
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import CallFailed, CallResult
from llm_worker.worker.config import load_settings
from llm_worker.worker.messages import MAX_ERROR_CHARS
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import Pending, Pipeline
from llm_worker.worker.records import InputRecord, Outcome

MAX_MESSAGE_BYTES = 200_000
MAX_METADATA_BYTES = 2048
FIXED_FIELDS = 2000
"""Bytes a completion takes besides its metadata and error message, at worst: 128 id and 256
model characters escaped as `\\u00XX`, the other fields."""
BOUND = MAX_METADATA_BYTES + FIXED_FIELDS + 6 * (MAX_ERROR_CHARS + 200)

ROWS = {"m": ModelRow(model_id="m", provider="fake", endpoint="http://x/v1", upstream_model="u")}


class Registry:
    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(ROWS, model_id)


class FailingCaller:
    async def call(self, candidates: list[Candidate], request: Any, **kw: Any) -> CallResult:
        raise CallFailed(ServerError("down", provider="fake", model="u", status=503), 1, None)


def _pipeline() -> Pipeline:
    s = load_settings(
        {
            "LLM_WORKER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
            "LLM_WORKER_MAX_METADATA_BYTES": str(MAX_METADATA_BYTES),
        }
    )
    return Pipeline(s, Registry(), FailingCaller(), Metrics())  # type: ignore[arg-type]


PIPELINE = _pipeline()

_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
_text = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.characters(), _surrogate), max_size=8).map("".join),
)
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text, kids, max_size=4)
)
_huge = st.sampled_from([100, 3000, 150_000, 300_000])
_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(
            st.text(min_size=1, max_size=10),
            _text,
            st.integers(1, 200).map(lambda n: "i" * n),
            st.integers(),
            st.none(),
            _json,
        ),
        "model": st.one_of(st.sampled_from(["m", "zz", ""]), _text, _huge.map("m".__mul__)),
        "prompt": st.one_of(_text, _huge.map("p".__mul__), st.integers(), _json),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "role": st.one_of(st.sampled_from(["user", "system", "x"]), _text),
                        "content": st.one_of(_text, _huge.map("c".__mul__), _json),
                    },
                ),
                max_size=3,
            ),
            _json,
        ),
        "max_tokens": st.one_of(st.integers(-5, 10**20), _json),
        "temperature": st.one_of(st.floats(-1, 10), _json),
        "top_p": st.one_of(st.floats(-1, 2), _json),
        "seed": _json,
        "stop": st.one_of(
            _text, st.lists(_text, max_size=5), _huge.map(lambda n: ["stop"] * (n // 10)), _json
        ),
        "tenant": st.one_of(_text, _huge.map("t".__mul__), _json),
        "metadata": st.one_of(
            _json,
            st.dictionaries(_text, _json, max_size=5),
            _huge.map(lambda n: {"k": "v" * n}),
        ),
        "dedup": st.one_of(st.booleans(), _json),
    },
)
_encodings = st.sampled_from(["ascii", "surrogatepass", "truncated", "nested", "deep"])


def _encode(doc: dict[str, Any], how: str, cut: int) -> bytes:
    ascii_json = json.dumps(doc).encode()
    if how == "surrogatepass":  # surrogates as raw bytes: not UTF-8
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if how == "truncated":
        return ascii_json[: cut % (len(ascii_json) + 1)]
    if how in ("nested", "deep"):  # nesting json.dumps could not write
        depth = 50 if how == "nested" else 5000
        inner = b'{"a":' * depth + b"1" + b"}" * depth
        return ascii_json[:-1] + (b', "nest": ' if doc else b'"nest": ') + inner + b"}"
    return ascii_json


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _readable_id(doc: dict[str, Any], how: str) -> str | None:
    """The id the worker must echo, or None when it need not answer (it may still do)."""
    rid = doc.get("id")
    if how in ("truncated", "deep"):
        return None
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128 or not _encodable(rid):
        return None
    return rid


def _check(out: Outcome, doc: dict[str, Any], rid: str | None) -> None:
    if out.completion is None:
        assert rid is None, f"a readable id was dead-lettered: {out.dlq_reason}"
        assert out.dlq_reason in (
            "invalid_json",
            "missing_id",
            "payload_too_large",
            "internal_error",
        )
        headers = dict(out.headers or [])
        assert headers["llm_worker.reason"] == out.dlq_reason.encode()
        return
    sent = json.loads(out.value.decode("utf-8"))  # valid UTF-8 JSON, strictly
    assert sent["id"] == doc.get("id"), "a completion for another id"
    assert sent["status"] == "error" and sent["error"]["message"]
    assert len(out.value) <= BOUND, f"{len(out.value)} bytes"
    if sent["metadata"] is not None:
        assert sent["metadata"] == doc["metadata"]
        assert len(msgspec.json.encode(sent["metadata"])) <= MAX_METADATA_BYTES


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=_fields, how=_encodings, cut=st.integers(0, 10**6))
def test_every_prompt_gets_a_bounded_answer_or_a_dead_letter(
    doc: dict[str, Any], how: str, cut: int
) -> None:
    raw = _encode(doc, how, cut)
    if how in ("ascii", "nested"):  # what the JSON text says: an escaped pair is one character
        doc = json.loads(json.dumps(doc))
    rec = InputRecord(topic="in", partition=0, offset=1, value=raw)
    rid = _readable_id(doc, how)
    step = PIPELINE.begin(rec)
    if isinstance(step, Pending):  # valid: the call fails, an error completion all the same
        step = asyncio.run(PIPELINE.finish(step))
    _check(step, doc, rid)
    _check(PIPELINE.internal_error(rec, RuntimeError("bug")), doc, rid)
