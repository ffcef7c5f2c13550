"""Write what is generated from the settings' declarations (`worker/settings.py`):

- README.md: the settings table, between `<!-- settings:begin -->` and `<!-- settings:end -->`
  (the rest of the README is left as it is);
- helm/llm-worker/values.schema.json: the chart's `config` object (the rest of the schema is
  left as it is);
- docs/configuration.md: the full reference.

`python tools/gen_settings.py` (`make settings`) writes them; `--check` writes nothing and
exits 1 naming each file that differs from what the declarations say.
tests/unit/test_settings_table.py fails the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llm_worker.worker.setting_rules import PREFIX, Declared  # noqa: E402
from llm_worker.worker.settings import SETTINGS  # noqa: E402

README = ROOT / "README.md"
CHART_SCHEMA = ROOT / "helm" / "llm-worker" / "values.schema.json"
REFERENCE = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"

CHART_ELSEWHERE = {
    "kafka_bootstrap_servers": "kafka.bootstrapServers",
    "kafka_extra": "kafka.config (credentials: kafka.sasl)",
    "database_url": "database.url or database.existingSecret",
    "secrets_dir": "set by the chart (where apiKeys are mounted)",
    "http_host": "set by the chart (0.0.0.0)",
    "http_port": "httpPort",
    "trace_content": "otel.traceContent",
    "otel_env": "otel",
}
"""Settings the chart sets from values of its own: `config.<NAME>` is not their place (the
chart's validate.yaml says where it is, and so does this text in the schema)."""


# ---------------------------------------------------------------- what each setting shows


def _default(s: Declared) -> str:
    value = s.default
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if value in ("", {}):
        return ""
    return f"`{value}`"


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _values(s: Declared) -> str:
    """The values it takes, as a reader writes them: choices, bounds, or nothing special."""
    spec = s.spec
    if s.choices:
        shown = ", ".join(f"`{c}`" for c in s.choices)
        return shown + (" (any case)" if spec.fold else "")
    if s.kind is bool:
        return "`true`/`false`"
    if spec.ge is not None and spec.le is not None:
        return f"{_num(spec.ge)} to {_num(spec.le)}"
    bounds = [(">", spec.gt), ("≥", spec.ge), ("≤", spec.le)]
    if shown_bounds := [f"{sign} {_num(x)}" for sign, x in bounds if x is not None]:
        return ", ".join(shown_bounds)
    if s.kind is str and not spec.blank and not spec.json_limits:
        return "not empty"
    return ""


def _type(s: Declared) -> str:
    if s.choices:
        return "choice"
    if s.spec.json_limits:
        return "JSON object"
    if s.kind is dict:
        return "one variable per entry"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}[s.kind]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ---------------------------------------------------------------- README table


def readme_table() -> str:
    rows = [
        "| variable | default | values | meaning |",
        "|---|---|---|---|",
        *(f"| `{s.env}` | {_default(s)} | {_values(s)} | {_cell(s.spec.doc)} |" for s in SETTINGS),
    ]
    return "\n".join(rows)


def readme(current: str) -> str:
    """`current` with the text between the markers replaced by the table."""
    start, end = current.find(BEGIN), current.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md: the markers {BEGIN} ... {END} are missing")
    return current[: start + len(BEGIN)] + "\n" + readme_table() + "\n" + current[end:]


# ---------------------------------------------------------------- Helm schema

_LIMITS_MAP = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {
            "rpm": {"type": "integer", "minimum": 0},
            "tpm": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
        "minProperties": 1,
    },
}


def _chart_key(s: Declared) -> str:
    return s.env.removeprefix(PREFIX)


def _json_schema(s: Declared) -> dict[str, Any]:
    spec = s.spec
    if spec.json_limits:
        return {
            "oneOf": [{"type": "string"}, _LIMITS_MAP],
            "description": f"{spec.doc} (a string, or a map the chart renders as JSON)",
        }
    if s.choices:
        folded = [c.lower() for c in s.choices if c.lower() not in s.choices]
        node: dict[str, Any] = {"type": "string", "enum": [*s.choices, *folded]}
    else:
        node = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[s.kind]}
    if s.kind is str and not s.choices and not spec.blank:
        node["minLength"] = 1
    bounds = {"minimum": spec.ge, "exclusiveMinimum": spec.gt, "maximum": spec.le}
    node.update({k: v for k, v in bounds.items() if v is not None})
    node["description"] = spec.doc
    return node


def chart_config() -> dict[str, Any]:
    """The schema of the chart's `config`: `LLM_WORKER_<NAME>` keyed by `<NAME>`."""
    properties: dict[str, Any] = {}
    for s in SETTINGS:
        if not s.from_prefix:
            continue
        if s.name in CHART_ELSEWHERE:  # let validate.yaml say where it goes
            properties[_chart_key(s)] = {"description": f"not here: {CHART_ELSEWHERE[s.name]}"}
        else:
            properties[_chart_key(s)] = _json_schema(s)
    return {
        "type": "object",
        "description": (
            "LLM_WORKER_<NAME> settings, keyed by <NAME>; generated from worker/settings.py "
            "(make settings), see docs/configuration.md"
        ),
        "properties": properties,
        "patternProperties": {
            "^KAFKA_": {"description": "not here: librdkafka properties go in kafka.config"}
        },
        "additionalProperties": False,
    }


def chart_schema(current: str) -> str:
    schema = json.loads(current)
    schema["properties"]["config"] = chart_config()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- docs/configuration.md

_INTRO = """\
# Configuration

Every setting, generated from its declaration in `worker/settings.py` by `make settings`
(`tools/gen_settings.py`); a unit test fails when this page, the README's table or the Helm
chart's schema differs from the declarations. Do not edit it by hand.

Settings are environment variables. An optional `KEY=VALUE` file named by
`LLM_WORKER_CONFIG_FILE` is read first; the environment wins. A value of the wrong type, out of
its bounds, empty where it may not be, or not finite stops the worker at start with exit code 2
and a message naming the variable. Each command reads and checks only the settings it uses.
`DATABASE_URL` and the Kafka credentials can also come from files (`<VAR>_FILE`, or a file named
after the variable in `LLM_WORKER_SECRETS_DIR`): see the README's *Secrets from files*.

- **type**: `integer` is a whole number; `number` a finite decimal; `boolean` is
  `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`; a `choice` is one of its values,
  exactly (in any case where it says so).
- **values**: the bounds (`≥`, `>`, `≤`, a range) or choices a value must meet.
- **redacted**: the value may hold a secret and is shown masked in logs and errors.
- **Helm**: where the chart (`helm/llm-worker`) takes it; `config.<NAME>` is the `config` map.
"""


def _helm(s: Declared) -> str:
    return CHART_ELSEWHERE.get(s.name, f"config.{_chart_key(s)}")


def reference() -> str:
    rows = [
        "| variable | type | default | values | redacted | Helm | meaning |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| `{s.env}` | {_type(s)} | {_default(s)} | {_values(s)} | "
            f"{'yes' if s.secret else ''} | `{_helm(s)}` | {_cell(s.spec.doc)} |"
            for s in SETTINGS
        ),
    ]
    return _INTRO + "\n" + "\n".join(rows) + "\n"


# ---------------------------------------------------------------- the files


def outputs() -> dict[Path, str]:
    """Each generated file's text as the declarations say it should be."""
    return {
        README: readme(README.read_text(encoding="utf-8")),
        CHART_SCHEMA: chart_schema(CHART_SCHEMA.read_text(encoding="utf-8")),
        REFERENCE: reference(),
    }


def drifted() -> list[Path]:
    """The generated files that differ from the declarations."""
    return [
        path
        for path, text in outputs().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    stale = drifted()
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from worker/settings.py: run make settings")
        return 1 if stale else 0
    texts = outputs()
    for path in stale:
        path.write_text(texts[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
