"""`llm-worker send`: its exit status (0 once all are answered, 1 on a timeout, and with
`--fail-on-error` 1 when a completion is an error) and a help text for every option."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from llm_worker.worker.cli import client

main = importlib.import_module("llm_worker.worker.cli.main")


class _Waiter:
    """Answers every id with `status`, or none of them (a timeout)."""

    status: str | None = "ok"

    def __init__(self, settings: Any, *, chunks: bool = False) -> None:
        self.chunks = chunks

    def __enter__(self) -> _Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def wait(
        self,
        ids: Iterable[str],
        *,
        timeout: float,
        on_completion: Callable[[dict[str, Any]], None] | None = None,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        if self.status is None:
            return {}
        got = {}
        for i in ids:
            if self.chunks and on_chunk is not None:
                for seq, delta in enumerate(["Hel", "lo", ""]):
                    on_chunk({"id": i, "seq": seq, "delta": delta})
            got[i] = {"id": i, "model": "chat-small", "status": self.status}
            if on_completion is not None:
                on_completion(got[i])
        return got


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[_Waiter]:
    monkeypatch.setattr(client, "CompletionWaiter", _Waiter)
    monkeypatch.setattr(client, "publish", lambda s, prompts, **kw: len(list(prompts)))
    return _Waiter


@pytest.mark.parametrize(
    ("status", "flags", "code"),
    [
        ("ok", [], 0),
        ("error", [], 0),  # answered: by default an error completion is still an answer
        ("ok", ["--fail-on-error"], 0),
        ("error", ["--fail-on-error"], 1),
        (None, [], 1),  # a timeout
    ],
)
def test_send_exit_status(
    fake_client: type[_Waiter],
    monkeypatch: pytest.MonkeyPatch,
    status: str | None,
    flags: list[str],
    code: int,
) -> None:
    monkeypatch.setattr(fake_client, "status", status)
    argv = ["send", "hi", "--quiet", "--timeout", "0.1", "--bootstrap", "127.0.0.1:1", *flags]
    assert main.main(argv) == code


def test_every_send_option_has_help() -> None:
    parser = main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    send = sub.choices["send"]
    missing = [
        a.option_strings or a.dest
        for a in send._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert not missing, f"send options without help: {missing}"
    assert "--fail-on-error" in send.format_help()


def test_send_stream_asks_for_a_stream_and_shows_the_text_as_it_comes(
    fake_client: type[_Waiter],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent: list[dict[str, Any]] = []

    def publish(s: Any, prompts: Iterable[dict[str, Any]], **kw: Any) -> int:
        sent.extend(prompts)
        return len(sent)

    monkeypatch.setattr(client, "publish", publish)
    argv = ["send", "hi", "--stream", "--timeout", "0.1", "--bootstrap", "127.0.0.1:1"]
    assert main.main(argv) == 0
    assert sent[0]["stream"] is True
    out = capsys.readouterr()
    assert out.err.startswith("Hello\n") and '"status": "ok"' in out.out
