"""The chart's `config` takes every setting the worker reads from `LLM_WORKER_<NAME>` (its schema
is generated from `worker/settings.py`), renders it so the worker reads back the same value, and
refuses at `helm template` what the worker would refuse at start."""

from __future__ import annotations

from typing import Any

import pytest

from llm_worker.worker.config import load_settings
from llm_worker.worker.setting_rules import Declared
from llm_worker.worker.settings import SETTINGS

from .render import DB_URL, Helm, config_data

CHART_SET = {"http_host", "http_port", "secrets_dir", "trace_content"}
"""Set by the chart from values of its own (validate.yaml refuses them in `config`)."""

IN_CONFIG = [s for s in SETTINGS if s.from_prefix and s.name not in CHART_SET]


def _key(s: Declared) -> str:
    return s.env.removeprefix("LLM_WORKER_")


def _chart_value(s: Declared) -> tuple[Any, Any]:
    """A value for `config.<KEY>` that is not the default, and what the worker reads it as."""
    if s.spec.json_limits:
        return {"acme": {"rpm": 5}}, '{"acme":{"rpm":5}}'
    if s.choices:
        other = next(c for c in s.choices if c != s.default)
        return other, other
    if isinstance(s.default, bool):
        return not s.default, not s.default
    if isinstance(s.default, int):
        n = s.default + 1 if s.spec.le is None or s.default < s.spec.le else s.default - 1
        return n, n
    if isinstance(s.default, float):
        return s.default + 0.5, s.default + 0.5
    return f"other-{s.name}", f"other-{s.name}"  # topics must differ


def _outside(s: Declared) -> list[Any]:
    """Values of the right type that the declaration refuses."""
    spec, step = s.spec, (1 if s.kind is int else 0.5)
    out: list[Any] = []
    if spec.ge is not None:
        out.append(spec.ge - step)
    if spec.gt is not None:
        out.append(spec.gt)
    if spec.le is not None:
        out.append(spec.le + step)
    if s.choices:
        out.append("not-" + s.choices[0].lower())
    if s.kind is str and not spec.blank and not s.choices:
        out.append("")
    return out


def test_the_chart_sets_every_setting_and_the_worker_reads_it_back(helm: Helm) -> None:
    values = {_key(s): _chart_value(s)[0] for s in IN_CONFIG}
    data = config_data(helm.render({"config": values}))
    settings = load_settings({**data, "DATABASE_URL": DB_URL})
    for s in IN_CONFIG:
        assert getattr(settings, s.name) == _chart_value(s)[1], s.env
    assert {"PROCESSING_GUARANTEE", "TRANSACTIONAL_ID", "MAX_IN_FLIGHT_BYTES"} <= set(values)


REFUSED = [(s, v) for s in IN_CONFIG for v in _outside(s)]


@pytest.mark.parametrize(
    ("setting", "value"), REFUSED, ids=[f"{_key(s)}={v!r}" for s, v in REFUSED]
)
def test_the_schema_refuses_what_the_worker_refuses(
    helm: Helm, setting: Declared, value: Any
) -> None:
    err = helm.render_error({"config": {_key(setting): value}})
    assert f"/config/{_key(setting)}" in err, err
    with pytest.raises(ValueError, match=setting.env):
        load_settings({setting.env: str(value), "DATABASE_URL": DB_URL})


def test_a_key_that_is_no_setting_is_refused(helm: Helm) -> None:
    err = helm.render_error({"config": {"MAX_INFLIGHT": 5}})
    assert "MAX_INFLIGHT" in err and "additional properties" in err
