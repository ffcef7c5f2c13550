from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_worker.adapters.secrets import SecretStore
from llm_worker.registry import (
    Candidate,
    DanglingFallback,
    FallbackCycle,
    FallbackTooDeep,
    ModelDisabled,
    ModelRow,
    ResolveError,
    UnknownModel,
    resolve,
    validate,
)


def row(model_id: str, **kw: object) -> ModelRow:
    fields: dict[str, object] = {
        "provider": "openai",
        "endpoint": f"https://{model_id}.example",
        "upstream_model": f"{model_id}-up",
    }
    fields.update(kw)
    return ModelRow(model_id=model_id, **fields)  # type: ignore[arg-type]


def table(*rows: ModelRow) -> dict[str, ModelRow]:
    return {r.model_id: r for r in rows}


def names(candidates: list[Candidate]) -> list[str]:
    return [c.endpoint_name for c in candidates]


def test_primary_only() -> None:
    rows = table(row("a"))
    [only] = resolve(rows, "a")
    assert only == Candidate(
        provider="openai",
        endpoint="https://a.example",
        upstream_model="a-up",
        endpoint_name="a/primary",
        row=rows["a"],
        fallback=False,
    )


def test_inline_fallback_defaults_missing_parts_to_the_row() -> None:
    rows = table(row("a", fallback_model="a-small"))
    primary, fallback = resolve(rows, "a")
    assert primary.endpoint_name == "a/primary" and not primary.fallback
    assert fallback.endpoint_name == "a/fallback" and fallback.fallback
    assert (fallback.provider, fallback.endpoint, fallback.upstream_model) == (
        "openai",
        "https://a.example",
        "a-small",
    )
    assert fallback.row is rows["a"]


def test_inline_fallback_other_provider() -> None:
    rows = table(row("a", fallback_provider="anthropic", fallback_endpoint=""))
    _, fallback = resolve(rows, "a")
    assert (fallback.provider, fallback.endpoint, fallback.upstream_model) == (
        "anthropic",
        "",
        "a-up",
    )


def test_chain_order_primary_inline_then_chained_rows() -> None:
    rows = table(
        row("a", fallback_model="a2", fallback_model_id="b"),
        row("b", fallback_provider="gemini", fallback_model_id="c"),
        row("c"),
    )
    got = resolve(rows, "a")
    assert names(got) == ["a/primary", "a/fallback", "b/primary", "b/fallback", "c/primary"]
    assert [c.fallback for c in got] == [False, True, True, True, True]
    assert [c.row.model_id for c in got] == ["a", "a", "b", "b", "c"]
    # the chained row's own settings (secret, prices, timeout) apply to its candidates
    assert got[2].upstream_model == "b-up" and got[3].provider == "gemini"


def test_disabled_row_goes_to_its_fallbacks() -> None:
    rows = table(row("a", enabled=False, fallback_model="a2", fallback_model_id="b"), row("b"))
    got = resolve(rows, "a")
    assert names(got) == ["a/fallback", "b/primary"]
    assert all(c.fallback for c in got)


def test_disabled_chained_row_contributes_only_its_fallbacks() -> None:
    rows = table(
        row("a", fallback_model_id="b"),
        row("b", enabled=False, fallback_model="b2", fallback_model_id="c"),
        row("c", enabled=False),
    )
    assert names(resolve(rows, "a")) == ["a/primary", "b/fallback"]


def test_disabled_without_fallback_raises() -> None:
    rows = table(row("a", enabled=False))
    with pytest.raises(ModelDisabled, match="'a' is disabled") as info:
        resolve(rows, "a")
    assert info.value.model_id == "a"


def test_disabled_whole_chain_raises_naming_the_chain() -> None:
    rows = table(row("a", enabled=False, fallback_model_id="b"), row("b", enabled=False))
    with pytest.raises(ModelDisabled, match="a -> b"):
        resolve(rows, "a")


def test_unknown_model() -> None:
    with pytest.raises(UnknownModel, match="'nope'") as info:
        resolve(table(row("a")), "nope")
    assert info.value.model_id == "nope"
    assert isinstance(info.value, LookupError)


def test_cycle_is_reported_with_the_chain() -> None:
    rows = table(row("a", fallback_model_id="b"), row("b", fallback_model_id="a"))
    with pytest.raises(FallbackCycle, match="a -> b -> a") as info:
        resolve(rows, "a")
    assert info.value.chain == ("a", "b", "a")


def test_self_cycle() -> None:
    with pytest.raises(FallbackCycle, match="a -> a"):
        resolve(table(row("a", fallback_model_id="a")), "a")


def test_cycle_further_down_the_chain() -> None:
    rows = table(
        row("a", fallback_model_id="b"),
        row("b", fallback_model_id="c"),
        row("c", fallback_model_id="b"),
    )
    with pytest.raises(FallbackCycle, match="a -> b -> c -> b"):
        resolve(rows, "a")


def test_dangling_fallback_names_both_models() -> None:
    rows = table(row("a", fallback_model_id="b"), row("b", fallback_model_id="ghost"))
    with pytest.raises(DanglingFallback, match="'b' has fallback_model_id 'ghost'") as info:
        resolve(rows, "a")
    assert (info.value.model_id, info.value.missing) == ("b", "ghost")


def test_depth_limit() -> None:
    rows = table(*(row(f"m{i}", fallback_model_id=f"m{i + 1}") for i in range(5)), row("m5"))
    assert len(resolve(rows, "m1", max_depth=4)) == 5  # m1 -> ... -> m5: 4 links
    with pytest.raises(FallbackTooDeep, match="5 fallback_model_id links") as info:
        resolve(rows, "m0", max_depth=4)
    assert info.value.chain[0] == "m0" and info.value.max_depth == 4
    assert names(resolve(rows, "m5", max_depth=0)) == ["m5/primary"]
    with pytest.raises(FallbackTooDeep):
        resolve(rows, "m4", max_depth=0)


def test_negative_depth_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        resolve(table(row("a")), "a", max_depth=-1)


def test_validate_reports_chains_and_missing_secrets(tmp_path: Path) -> None:
    (tmp_path / "openai-key").write_text("sk-test\n")
    secrets = SecretStore(tmp_path, env={})
    rows = table(
        row("ok", api_key_secret="openai-key"),
        row("cyc", fallback_model_id="cyc"),
        row("dangling", fallback_model_id="ghost"),
        row("off", enabled=False),
        row("nokey", api_key_secret="anthropic-key"),
        row("nokey2", api_key_secret="anthropic-key"),
    )
    problems = validate(rows, secrets)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "cyc: fallback cycle for model 'cyc': cyc -> cyc" in text
    assert "dangling: " in text and "'ghost'" in text
    assert "off: model 'off' is disabled" in text
    assert "nokey: api_key_secret 'anthropic-key'" in text
    assert "nokey2: api_key_secret 'anthropic-key'" in text
    assert "sk-test" not in text
    assert not any(p.startswith("ok:") for p in problems)
    # without a secret store only the chains are checked
    assert len(validate(rows, None)) == 3


def test_validate_clean_registry() -> None:
    assert validate(table(row("a", fallback_model_id="b"), row("b")), None) == []


IDS = [f"m{i}" for i in range(8)]


@st.composite
def registries(draw: st.DrawFn) -> dict[str, ModelRow]:
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=len(IDS), unique=True))
    rows = {}
    for model_id in ids:
        rows[model_id] = row(
            model_id,
            enabled=draw(st.booleans()),
            fallback_model=draw(st.none() | st.just("alt")),
            fallback_model_id=draw(st.none() | st.sampled_from([*IDS, "ghost"])),
        )
    return rows


@settings(max_examples=300, deadline=None)
@given(rows=registries(), model_id=st.sampled_from([*IDS, "ghost"]), depth=st.integers(0, 6))
def test_resolve_terminates_on_any_graph(
    rows: dict[str, ModelRow], model_id: str, depth: int
) -> None:
    try:
        got = resolve(rows, model_id, max_depth=depth)
    except ResolveError as exc:
        assert model_id in str(exc)
        return
    assert got, "resolve returns candidates or raises"
    # at most two endpoints per row, at most depth+1 rows, no endpoint twice
    assert len(got) <= 2 * (depth + 1)
    assert len(set(names(got))) == len(got)
    assert [c.fallback for c in got[1:]] == [True] * (len(got) - 1)
    assert got[0].fallback is not rows[model_id].enabled
    assert all(rows[c.row.model_id] is c.row for c in got)


def test_validate_says_why_a_secret_cannot_be_read_and_honours_the_depth(tmp_path: Path) -> None:
    rows = table(row("nokey", api_key_secret="gone"))
    (problem,) = validate(rows, SecretStore(tmp_path, env={}))
    assert "secret 'gone' not found" in problem
    chain = table(row("a", fallback_model_id="b"), row("b", fallback_model_id="c"), row("c"))
    assert validate(chain, None) == []
    deep = validate(chain, None, max_depth=1)
    assert deep and deep[0].startswith("a: ") and "1" in deep[0]
