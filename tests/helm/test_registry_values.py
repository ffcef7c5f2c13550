"""The registry as chart values: `registry.models` reaches the migration Job as a registry file
that `llm-worker registry apply` reads after `migrate`; the schema holds the models to the
table's columns; NOTES.txt starts a new install by adding a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_worker.registry.apply import parse_file
from llm_worker.registry.models import COLUMNS

from .render import CHART, Helm, env_of, find, hook, migration_job, one

MODELS: list[dict[str, Any]] = [
    {
        "model_id": "chat-small",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "api_key_secret": "openai-prod",
    },
    {
        "model_id": "chat-local",
        "provider": "openai_compatible",
        "endpoint": "http://vllm:8000/v1",
        "upstream_model": "Qwen/Qwen2.5-7B-Instruct",
        "max_tokens": 1024,
        "fallback_model_id": "chat-small",
    },
]
REGISTRY_FILE = "/etc/llm-worker/registry.yaml"


def _job_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = migration_job(docs)["spec"]["template"]["spec"]
    return pod


def test_without_models_the_job_only_migrates(helm: Helm) -> None:
    docs = helm.render()
    pod = _job_pod(docs)
    assert "initContainers" not in pod
    assert [c["args"] for c in pod["containers"]] == [["migrate"]]
    assert not [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-registry")]


def test_models_are_applied_after_migrate_from_a_hook_configmap(helm: Helm) -> None:
    docs = helm.render({"registry": {"models": MODELS}})
    job = migration_job(docs)
    pod = _job_pod(docs)
    (migrate,) = pod["initContainers"]
    (apply,) = pod["containers"]
    assert migrate["args"] == ["migrate"]
    # exactly the command line of `llm-worker registry apply FILE [--prune] [--dry-run]`
    assert apply["args"] == ["registry", "apply", REGISTRY_FILE]
    assert apply["image"] == migrate["image"]
    assert env_of(apply)["DATABASE_URL"] == env_of(migrate)["DATABASE_URL"]
    assert apply["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = [m for m in apply["volumeMounts"] if m["name"] == "registry"]
    assert mount == {
        "name": "registry",
        "mountPath": REGISTRY_FILE,
        "subPath": "registry.yaml",
        "readOnly": True,
    }
    assert not [m for m in migrate["volumeMounts"] if m["name"] == "registry"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "registry"]
    cm = one(docs, "ConfigMap", vol["configMap"]["name"])
    # a pre-install hook: created before the Job, as the release's own resources are not yet
    assert hook(cm) == hook(job) == "pre-install,pre-upgrade"
    cm_weight = int(cm["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert cm_weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    text = cm["data"]["registry.yaml"]
    assert yaml.safe_load(text) == {"models": MODELS}
    # ...and `registry apply` reads it: the same parser, the same rows
    rows = parse_file(text)
    assert list(rows) == ["chat-small", "chat-local"]
    assert rows["chat-local"].endpoint == "http://vllm:8000/v1"
    assert rows["chat-local"].fallback_model_id == "chat-small"


def test_prune_adds_the_flag(helm: Helm) -> None:
    docs = helm.render({"registry": {"models": MODELS, "prune": True}})
    (apply,) = _job_pod(docs)["containers"]
    assert apply["args"] == ["registry", "apply", REGISTRY_FILE, "--prune"]


def test_prune_without_models_is_refused(helm: Helm) -> None:
    err = helm.render_error({"registry": {"prune": True}})
    assert "registry.prune" in err and "delete every model" in err


def test_models_without_the_migration_job_are_refused(helm: Helm) -> None:
    err = helm.render_error({"registry": {"models": MODELS}, "migrations": {"enabled": False}})
    assert "migrations.enabled" in err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"model_id": "a", "provdier": "openai", "upstream_model": "m"}, "provdier"),
        ({"model_id": "a", "provider": "openai"}, "upstream_model"),
        ({**MODELS[0], "input_cost_per_1k": -1}, "input_cost_per_1k"),
        ({**MODELS[0], "dialect": "llamacpp"}, "dialect"),
    ],
)
def test_the_schema_refuses_a_wrong_model(helm: Helm, model: dict[str, Any], message: str) -> None:
    assert message in helm.render_error({"registry": {"models": [model]}})


def test_the_schema_refuses_an_unknown_registry_key(helm: Helm) -> None:
    assert "prnue" in helm.render_error({"registry": {"models": MODELS, "prnue": True}})


def test_schema_columns_are_the_tables() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    item = schema["properties"]["registry"]["properties"]["models"]["items"]
    assert set(item["properties"]) == set(COLUMNS) - {"updated_at"}
    assert item["additionalProperties"] is False


# ---------------------------------------------------------------- NOTES.txt


def _notes(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` does not: a copy of the chart
    renders it into a ConfigMap)."""
    chart = tmp_path / "llm-worker"
    shutil.copytree(CHART, chart)
    (chart / "notes-source.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes-source.txt") . | toJson }}\n'
    )
    text: str = one(helm.render(values, chart=chart), "ConfigMap", "notes")["data"]["notes"]
    return text


def test_notes_on_an_empty_registry_show_how_to_add_a_model(helm: Helm, tmp_path: Path) -> None:
    text = _notes(helm, tmp_path, {})
    assert "MODEL_ID" not in text  # no command that can only answer unknown_model
    add = text.index("llm-worker registry add chat-small --provider openai")
    assert add < text.index("llm-worker send --model chat-small")
    assert "registry.models" in text


def test_notes_with_models_name_them(helm: Helm, tmp_path: Path) -> None:
    text = _notes(helm, tmp_path, {"registry": {"models": MODELS}})
    assert "registry add" not in text
    assert "2: chat-small, chat-local" in text
    assert "llm-worker send --model chat-small" in text
