"""registry/apply.py: the registry file, the values a command gives, the diff, the checks of a
change (no database: the CLI's tests through PostgreSQL are tests/integration/
test_registry_cli.py)."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from llm_worker.registry.apply import (
    Diff,
    RegistryFileError,
    change_problems,
    dump_file,
    format_diff,
    parse_cli_value,
    parse_file,
    plan,
    row_value_problems,
)
from llm_worker.registry.models import ModelRow
from llm_worker.worker.cli.main import build_parser

FILE = """\
models:
  - model_id: chat
    provider: openai_compatible
    endpoint: ' http://vllm:8000/v1 '
    upstream_model: Qwen/Qwen2.5-7B-Instruct
    fallback_model_id: backup
    input_cost_per_1k: 1
    rpm_limit: 600
  - {model_id: backup, provider: fake, upstream_model: u, enabled: false}
"""


def row(model_id: str, **kw: object) -> ModelRow:
    values: dict[str, object] = {"provider": "fake", "endpoint": "", "upstream_model": "u"}
    return ModelRow(model_id=model_id, **(values | kw))  # type: ignore[arg-type]


def test_a_file_becomes_whole_rows_with_defaults_and_trimmed_endpoints() -> None:
    rows = parse_file(FILE)
    assert list(rows) == ["chat", "backup"]
    chat = rows["chat"]
    assert chat.endpoint == "http://vllm:8000/v1"  # surrounding spaces dropped
    assert chat.input_cost_per_1k == 1.0 and isinstance(chat.input_cost_per_1k, float)
    assert chat.rpm_limit == 600 and chat.timeout_ms == 30_000 and chat.enabled
    assert rows["backup"].endpoint == "" and rows["backup"].enabled is False


def test_json_is_read_too() -> None:
    text = '{"models": [{"model_id": "a", "provider": "openai", "upstream_model": "gpt-4o"}]}'
    assert parse_file(text)["a"].provider == "openai"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_reads_back_to_the_same_rows(fmt: str) -> None:
    rows = parse_file(FILE)
    text = dump_file(rows.values(), fmt)
    assert parse_file(text) == rows
    assert "timeout_ms" not in text  # defaults are left out: the file says what is chosen
    assert plan(rows, parse_file(text), prune=True) == Diff(unchanged=2)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: [{model_id: a, provider: opneai, upstream_model: u}]",
         ("model 'a'", "provider: unknown provider 'opneai'; did you mean 'openai'?")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, endpont: http://x}]",
         ("model 'a'", "unknown key 'endpont'; did you mean 'endpoint'?")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, updated_at: 2024-01-01}]",
         ("model 'a'", "updated_at is set by the database")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, max_tokens: '5'}]",
         ("model 'a'", "max_tokens")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, rpm_limit: 0}]",
         ("model 'a'", "rpm_limit: 0 must be > 0")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, cache_write_cost_per_1k: -1}]",
         ("model 'a'", "cache_write_cost_per_1k")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, endpoint: 'vllm:8000/v1'}]",
         ("model 'a'", "endpoint: 'vllm:8000/v1' is not an absolute http(s) URL")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, dialect: llama}]",
         ("model 'a'", "dialect")),
        ("models: [{model_id: a, provider: fake, upstream_model: u, routing_objective: cheap}]",
         ("model 'a'", "routing_objective")),
        ("models: [{model_id: a, provider: fake}]", ("model 'a'", "upstream_model missing")),
        ("models: [{model_id: a, provider: fake, upstream_model: ''}]",
         ("upstream_model: must not be empty",)),
        ("models: [{model_id: a, provider: fake, upstream_model: u},"
         " {model_id: a, provider: fake, upstream_model: v}]", ("'a'", "twice")),
        ("models: [[1]]", ("models[0]", "not a mapping")),
        ("model: []", ("expected one key, models",)),
        ("models: {a: 1}", ("models must be a list",)),
        ("models: [a", ("not YAML or JSON",)),
    ],
)  # fmt: skip
def test_a_mistake_names_the_model_and_the_key(text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(RegistryFileError) as caught:
        parse_file(text, "reg.yaml")
    assert str(caught.value).startswith("reg.yaml")
    for word in words:
        assert word in str(caught.value)


def test_every_mistake_of_a_file_is_said_at_once() -> None:
    text = """models:
  - {model_id: a, provider: opneai, upstream_model: u}
  - {model_id: b, provider: fake, upstream_model: u, timeout_ms: -1}
"""
    with pytest.raises(RegistryFileError) as caught:
        parse_file(text)
    assert "model 'a': provider" in str(caught.value)
    assert "model 'b': timeout_ms" in str(caught.value)


def test_plan_adds_changes_and_prunes_only_when_asked() -> None:
    current = {"a": row("a"), "b": row("b", timeout_ms=1000), "old": row("old")}
    wanted = {"a": row("a"), "b": row("b", timeout_ms=2000), "new": row("new")}
    kept = plan(current, wanted, prune=False)
    assert [r.model_id for r in kept.added] == ["new"]
    assert [(r.model_id, cols) for r, cols in kept.changed] == [("b", {"timeout_ms": (1000, 2000)})]
    assert kept.removed == () and kept.kept == ("old",) and kept.unchanged == 1
    pruned = plan(current, wanted, prune=True)
    assert pruned.removed == ("old",) and pruned.kept == ()
    text = format_diff(pruned, dry_run=True)
    assert "+ new" in text and "~ b" in text and "    timeout_ms: 1000 -> 2000" in text
    assert "- old" in text
    assert "1 would be added, 1 would be changed, 1 would be removed, 1 unchanged" in text
    assert "dry run: nothing written" in text


def test_a_price_the_table_rounds_is_not_a_change() -> None:
    current = {"a": row("a", input_cost_per_1k=0.1234565)}
    assert plan(current, {"a": row("a", input_cost_per_1k=0.1234565)}, prune=False).empty
    moved = plan(current, {"a": row("a", input_cost_per_1k=0.2)}, prune=False)
    assert not moved.empty


def test_change_problems_see_dangling_and_cyclic_fallbacks_in_the_would_be_table() -> None:
    current = {"a": row("a", fallback_model_id="b"), "b": row("b")}
    remove_b = Diff(removed=("b",))
    assert any(
        "model 'a': fallback_model_id" in p and "'b'" in p
        for p in change_problems(current, remove_b)
    )
    cycle = plan(current, {"b": row("b", fallback_model_id="a")}, prune=False)
    assert any("b -> a -> b" in p for p in change_problems(current, cycle))
    # a disabled row without a fallback is a choice, not a broken chain
    assert change_problems(current, Diff(added=(row("c", enabled=False),))) == []


def test_a_problem_the_table_already_had_does_not_block_another_change() -> None:
    current = {"a": row("a", fallback_model_id="gone")}
    assert change_problems(current, Diff(added=(row("c"),))) == []


def test_stored_rows_with_typos_are_found() -> None:
    bad = row("x", provider="opneai", endpoint="http://x/v1 ", fallback_provider="antropic")
    problems = row_value_problems(bad)
    assert "provider: unknown provider 'opneai'; did you mean 'openai'?" in problems[0]
    assert "did you mean 'anthropic'?" in problems[1]
    assert "endpoint: 'http://x/v1 ' has surrounding whitespace" in problems[2]
    assert row_value_problems(row("ok", endpoint="http://x/v1")) == []


@pytest.mark.parametrize(
    ("col", "text", "value"),
    [
        ("max_tokens", "512", 512),
        ("max_tokens", "none", None),
        ("fallback_model_id", "", None),
        ("enabled", "false", False),
        ("structured_outputs", "yes", True),
        ("input_cost_per_1k", "0.25", 0.25),
        ("endpoint", "", ""),  # not nullable: empty is the provider's default
        ("provider", "openai", "openai"),
    ],
)
def test_command_line_values(col: str, text: str, value: object) -> None:
    assert parse_cli_value(col, text) == value


@pytest.mark.parametrize(("col", "text"), [("timeout_ms", "fast"), ("enabled", "maybe")])
def test_a_bad_command_line_value_names_the_column(col: str, text: str) -> None:
    with pytest.raises(RegistryFileError, match=f"^{col}: '{text}'"):
        parse_cli_value(col, text)


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["registry", *argv])


def test_json_and_database_url_after_the_sub_command_as_well_as_before() -> None:
    assert _parse("list", "--json").json is True
    assert _parse("--json", "list").json is True
    assert _parse("list").json is False
    assert _parse("show", "m", "--database-url", "postgresql://h/d").database_url == (
        "postgresql://h/d"
    )


def test_every_column_is_an_option_of_add_and_set_and_every_option_has_help() -> None:
    parser = build_parser()
    registry = parser._subparsers._group_actions[0].choices["registry"]  # type: ignore[union-attr]
    actions = registry._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    columns = {c for c in ModelRow.__struct_fields__ if c not in ("model_id", "updated_at")}
    for name in ("add", "set"):
        dests = {a.dest for a in actions[name]._actions}
        assert columns <= dests, columns - dests
    for name, sub in actions.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
    args = _parse("add", "m", "--provider", "fake", "--upstream-model", "u", "--rpm-limit", "5")
    assert msgspec.to_builtins(args.rpm_limit) == "5"
