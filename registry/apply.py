"""The registry as a file, and the checks every admin change passes.

    models:
      - model_id: chat-small
        provider: openai_compatible
        endpoint: http://vllm:8000/v1
        upstream_model: Qwen/Qwen2.5-7B-Instruct
        fallback_model_id: chat-large

`parse_file` reads that (YAML or JSON) into rows: each mapping is a whole row, its keys the
table's column names, a key left out takes the column's default. `plan` compares the table with
the rows wanted (`Diff`), `change_problems` says what the would-be table breaks (values, unknown
providers, dangling or cyclic fallbacks), `dump_file` writes the table back as such a file.
Nothing here touches the database: `registry.store.apply_diff` writes a `Diff` in one
transaction.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import yaml

from llm_worker.adapters import ADAPTER_NAMES
from llm_worker.registry.models import COLUMNS, ENDPOINT_COLUMNS, ModelRow, endpoint_problem
from llm_worker.registry.resolve import validate

__all__ = [
    "COLUMN_HELP",
    "DIALECTS",
    "EDITABLE",
    "ROUTING_OBJECTIVES",
    "Diff",
    "RegistryFileError",
    "change_problems",
    "dump_file",
    "format_diff",
    "parse_cli_value",
    "parse_file",
    "plan",
    "row_value_problems",
]

EDITABLE: tuple[str, ...] = tuple(c for c in COLUMNS if c != "updated_at")
"""The columns a file or a command sets (`updated_at` is the database's)."""

REQUIRED = ("model_id", "provider", "upstream_model")
DIALECTS = ("openai", "llama_cpp")
ROUTING_OBJECTIVES = ("priority", "latency", "cost", "reliability")
PRIORITIES = ("high", "normal", "low")
LANES = ("online", "batch")
BATCH_ON_ERROR = ("online", "error")
_PRICES = (
    "input_cost_per_1k",
    "output_cost_per_1k",
    "cached_input_cost_per_1k",
    "cache_write_cost_per_1k",
    "batch_input_cost_per_1k",
    "batch_output_cost_per_1k",
)
_POSITIVE = ("max_tokens", "rpm_limit", "tpm_limit", "timeout_ms")
_NOT_EMPTY = ("model_id", "provider", "upstream_model")

COLUMN_HELP: dict[str, str] = {
    "model_id": "the name a prompt's `model` gives",
    "provider": f"the adapter: {', '.join(ADAPTER_NAMES)}",
    "endpoint": "base URL, an absolute http(s) URL with /v1 (empty: the provider's default)",
    "upstream_model": "the model name the provider knows",
    "max_tokens": "cap on a request's max_tokens (> 0; none: no cap)",
    "enabled": "true|false; false sends traffic to the fallbacks",
    "fallback_provider": "inline fallback's adapter (none: the row's provider)",
    "fallback_endpoint": "inline fallback's base URL (none: the row's endpoint)",
    "fallback_model": "inline fallback's upstream model (none: the row's upstream_model)",
    "fallback_model_id": "another row tried after this one (none: no chain)",
    "api_key_secret": "name of the secret holding the API key (none: no key)",
    "input_cost_per_1k": "USD per 1,000 input tokens (>= 0)",
    "output_cost_per_1k": "USD per 1,000 output tokens (>= 0)",
    "rpm_limit": "requests per minute, shared across replicas (> 0; none: no limit)",
    "tpm_limit": "tokens per minute, shared across replicas (> 0; none: no limit)",
    "timeout_ms": "timeout of one attempt in milliseconds (> 0)",
    "routing_objective": f"{'|'.join(ROUTING_OBJECTIVES)} (none: the worker's setting)",
    "dialect": f"JSON-schema dialect of an openai_compatible server: {'|'.join(DIALECTS)}",
    "structured_outputs": "true|false; the model takes a JSON schema natively",
    "cached_input_cost_per_1k": "USD per 1,000 cached input tokens (>= 0; none: input price)",
    "cache_write_cost_per_1k": "USD per 1,000 cache-write tokens (>= 0; none: input price)",
    "canned_response": "text answered when every candidate failed (none: an error)",
    "stream": "true|false; stream prompts that do not say `stream` (none: LLM_WORKER_STREAM)",
    "priority": f"{'|'.join(PRIORITIES)}; where prompts that do not say wait (none: normal)",
    "lane": f"{'|'.join(LANES)}; the lane of prompts that do not say `lane` (none: online)",
    "batch_input_cost_per_1k": "USD per 1,000 input tokens on the batch lane (none: half)",
    "batch_output_cost_per_1k": "USD per 1,000 output tokens on the batch lane (none: half)",
    "batch_on_error": (
        f"{'|'.join(BATCH_ON_ERROR)}; a request a batch reports errored or expired is"
        " retried as a live call, or answered with an error (none: online)"
    ),
}

_FIELDS: dict[str, msgspec.structs.FieldInfo] = {
    f.name: f for f in msgspec.structs.fields(ModelRow)
}


class RegistryFileError(ValueError):
    """A registry file or a command's value that cannot become a row; the text names the
    model and the key."""


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _nullable(col: str) -> bool:
    return _FIELDS[col].default is None and col not in REQUIRED


# -- values ----------------------------------------------------------------------------------


def _convert(col: str, value: Any) -> Any:
    """`value` as the column's type (msgspec's rules: an int is a float, not the reverse)."""
    try:
        return msgspec.convert(value, _FIELDS[col].type, strict=True)
    except msgspec.ValidationError as exc:
        raise RegistryFileError(f"{col}: {exc}") from None


def parse_cli_value(col: str, text: str) -> Any:
    """A command-line string as the column's value: `none` (or empty) clears a nullable
    column; booleans are true/false/yes/no/1/0."""
    if _nullable(col) and text.strip().lower() in ("", "none", "null"):
        return None
    kind = _FIELDS[col].type
    try:
        if kind in (bool, bool | None):
            flag = {"true": True, "yes": True, "1": True, "on": True}
            flag |= {"false": False, "no": False, "0": False, "off": False}
            return flag[text.strip().lower()]
        if kind in (int, int | None):
            return int(text)
        if kind in (float, float | None):
            return float(text)
    except (KeyError, ValueError):
        want = {bool: "true or false", int: "an integer", float: "a number"}
        base = next(t for t in (bool, int, float) if kind in (t, t | None))
        raise RegistryFileError(f"{col}: {text!r} is not {want[base]}") from None
    return text


def normalize(values: dict[str, Any]) -> dict[str, Any]:
    """Endpoints without surrounding whitespace (a pasted URL's trailing space)."""
    out = dict(values)
    for col in ENDPOINT_COLUMNS:
        if isinstance(out.get(col), str):
            out[col] = out[col].strip()
    return out


def _provider_problem(col: str, name: str | None) -> str | None:
    if name is None or name in ADAPTER_NAMES:
        return None
    return (
        f"{col}: unknown provider {name!r}{_suggest(name, ADAPTER_NAMES)} "
        f"(known: {', '.join(ADAPTER_NAMES)})"
    )


def _number_problems(row: ModelRow) -> list[str]:
    out = []
    for col in _PRICES:
        price = getattr(row, col)
        if price is not None and not (math.isfinite(price) and price >= 0):
            out.append(f"{col}: {price} is not a price (a number >= 0)")
    for col in _POSITIVE:
        limit = getattr(row, col)
        if limit is not None and limit <= 0:
            out.append(f"{col}: {limit} must be > 0")
    return out


def row_value_problems(row: ModelRow, *, endpoints: bool = True) -> list[str]:
    """What is wrong with one row's values, each naming its column (`endpoints=False` leaves
    the endpoint URLs to `resolve.validate`)."""
    out = [f"{c}: must not be empty" for c in _NOT_EMPTY if not getattr(row, c)]
    for col in ("provider", "fallback_provider"):
        problem = _provider_problem(col, getattr(row, col))
        if problem:
            out.append(problem)
    for col in ENDPOINT_COLUMNS if endpoints else ():
        url = getattr(row, col)
        problem = endpoint_problem(url)
        if problem is None and url is not None and url != url.strip():
            problem = f"{url!r} has surrounding whitespace"
        if problem:
            out.append(f"{col}: {problem}")
    out.extend(_number_problems(row))
    if row.dialect not in DIALECTS:
        out.append(f"dialect: {row.dialect!r} is not one of {', '.join(DIALECTS)}")
    goal = row.routing_objective
    if goal is not None and goal not in ROUTING_OBJECTIVES:
        out.append(
            f"routing_objective: {goal!r}{_suggest(goal, ROUTING_OBJECTIVES)}"
            f" (known: {', '.join(ROUTING_OBJECTIVES)})"
        )
    for col, known in (
        ("priority", PRIORITIES),
        ("lane", LANES),
        ("batch_on_error", BATCH_ON_ERROR),
    ):
        word = getattr(row, col)
        if word is not None and word not in known:
            out.append(f"{col}: {word!r}{_suggest(word, known)} (known: {', '.join(known)})")
    return out


def make_row(values: Mapping[str, Any], where: str) -> ModelRow:
    """One mapping of a file (or a command's columns) as a row; RegistryFileError naming
    `where` and the key."""
    unknown = [k for k in values if k not in EDITABLE]
    for key in unknown:
        if key == "updated_at":
            raise RegistryFileError(f"{where}: updated_at is set by the database; leave it out")
        raise RegistryFileError(
            f"{where}: unknown key {key!r}{_suggest(str(key), EDITABLE)} "
            f"(the keys are the columns: {', '.join(EDITABLE)})"
        )
    missing = [c for c in REQUIRED if c not in values]
    if missing:
        raise RegistryFileError(f"{where}: {', '.join(missing)} missing (required)")
    try:
        converted = {k: _convert(k, v) for k, v in normalize({"endpoint": "", **values}).items()}
    except RegistryFileError as exc:
        raise RegistryFileError(f"{where}: {exc}") from None
    return ModelRow(**converted)


# -- the file --------------------------------------------------------------------------------


def parse_file(text: str, name: str = "registry file") -> dict[str, ModelRow]:
    """`{"models": [...]}` from YAML (JSON is YAML too) as {model_id: row}, in file order."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryFileError(f"{name}: not YAML or JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"models"}:
        keys = sorted(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
        raise RegistryFileError(f"{name}: expected one key, models: a list (got {keys})")
    models = doc["models"] or []
    if not isinstance(models, list):
        raise RegistryFileError(f"{name}: models must be a list of mappings")
    out: dict[str, ModelRow] = {}
    errors = []
    for n, entry in enumerate(models):
        try:
            row = _entry_row(n, entry)
        except RegistryFileError as exc:
            errors.append(str(exc))
            continue
        if row.model_id in out:
            errors.append(f"model {row.model_id!r}: model_id appears twice")
        out[row.model_id] = row
    if errors:  # every mistake of the file at once
        raise RegistryFileError(f"{name}:\n  " + "\n  ".join(errors))
    return out


def _entry_row(n: int, entry: Any) -> ModelRow:
    if not isinstance(entry, dict):
        raise RegistryFileError(f"models[{n}]: not a mapping of column: value")
    where = f"model {entry['model_id']!r}" if "model_id" in entry else f"models[{n}]"
    row = make_row(entry, where)
    problems = row_value_problems(row)
    if problems:
        raise RegistryFileError(f"{where}: " + "; ".join(problems))
    return row


def _plain(row: ModelRow) -> dict[str, Any]:
    """The row's required columns and every column that differs from its default."""
    return {
        c: getattr(row, c)
        for c in EDITABLE
        if c in REQUIRED or c == "endpoint" or getattr(row, c) != _FIELDS[c].default
    }


def dump_file(rows: Iterable[ModelRow], fmt: str = "yaml") -> str:
    """The rows as a registry file that `parse_file` reads back to the same rows."""
    doc = {"models": [_plain(r) for r in sorted(rows, key=lambda r: r.model_id)]}
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text


# -- the diff --------------------------------------------------------------------------------


class Diff(msgspec.Struct, frozen=True, kw_only=True):
    """What makes the table match: rows to insert, columns to change, rows to delete."""

    added: tuple[ModelRow, ...] = ()
    changed: tuple[tuple[ModelRow, dict[str, tuple[Any, Any]]], ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: int = 0
    kept: tuple[str, ...] = ()
    """Rows of the table that a file leaves out, kept without `prune`."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def writes(self) -> list[ModelRow]:
        return [*self.added, *(row for row, _ in self.changed)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float | int):
        return round(a, 6) == round(float(b), 6)  # numeric(12,6) in the table
    return bool(a == b)


def plan(current: Mapping[str, ModelRow], wanted: Mapping[str, ModelRow], *, prune: bool) -> Diff:
    """The changes that turn `current` into `wanted`; rows absent from `wanted` are removed
    only with `prune`."""
    added, changed, unchanged = [], [], 0
    for model_id, row in wanted.items():
        old = current.get(model_id)
        if old is None:
            added.append(row)
            continue
        cols = {
            c: (getattr(old, c), getattr(row, c))
            for c in EDITABLE
            if not _same(getattr(old, c), getattr(row, c))
        }
        if cols:
            changed.append((row, cols))
        else:
            unchanged += 1
    absent = tuple(sorted(m for m in current if m not in wanted))
    return Diff(
        added=tuple(added),
        changed=tuple(changed),
        removed=absent if prune else (),
        unchanged=unchanged,
        kept=() if prune else absent,
    )


def after(current: Mapping[str, ModelRow], diff: Diff) -> dict[str, ModelRow]:
    """The table once `diff` is written."""
    out = {k: v for k, v in current.items() if k not in diff.removed}
    out.update((r.model_id, r) for r in diff.writes())
    return out


def change_problems(current: Mapping[str, ModelRow], diff: Diff) -> list[str]:
    """Problems the change brings: each written row's values, and the fallback chains of the
    would-be table (`resolve.validate`: dangling, cyclic, too deep) that the table did not
    already have. A disabled row without fallback is not one (`registry failover` asks)."""
    problems = [f"model {r.model_id!r}: {p}" for r in diff.writes() for p in row_value_problems(r)]

    def chains(rows: Mapping[str, ModelRow]) -> list[str]:
        every_enabled = {k: msgspec.structs.replace(r, enabled=True) for k, r in rows.items()}
        out = []
        for problem in validate(every_enabled):  # "model_id: text"
            model_id, text = problem.split(": ", 1)
            if not text.startswith(ENDPOINT_COLUMNS):  # the row checks above say those
                out.append(f"model {model_id!r}: fallback_model_id: {text}")
        return out

    before = set(chains(current))
    problems.extend(p for p in chains(after(current, diff)) if p not in before)
    return problems


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def format_diff(diff: Diff, *, dry_run: bool = False) -> str:
    """`+ added`, `~ changed` with `column: old -> new`, `- removed`, and a count line."""
    lines = []
    for row in diff.added:
        shown = ", ".join(f"{k}={_show(v)}" for k, v in _plain(row).items() if k != "model_id")
        lines.append(f"+ {row.model_id}  ({shown})")
    for row, cols in diff.changed:
        lines.append(f"~ {row.model_id}")
        lines.extend(f"    {c}: {_show(old)} -> {_show(new)}" for c, (old, new) in cols.items())
    lines.extend(f"- {m}" for m in diff.removed)
    would = "would be " if dry_run else ""
    lines.append(
        f"{len(diff.added)} {would}added, {len(diff.changed)} {would}changed, "
        f"{len(diff.removed)} {would}removed, {diff.unchanged} unchanged"
        + (f", {len(diff.kept)} not in the file (kept; --prune removes them)" if diff.kept else "")
        + (" (dry run: nothing written)" if dry_run else "")
    )
    return "\n".join(lines)
