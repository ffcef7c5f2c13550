"""The Helm chart, rendered with `helm template` and read back as manifests.

What a platform team relies on when it installs the chart as is: probes, a hardened read-only
pod, the shutdown rule, settings and secrets reaching the worker under the names it reads,
migrations as a hook, autoscaling on lag, monitoring, and values the schema rejects.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .render import (
    CHART,
    DB_URL,
    FULLNAME,
    MINIMAL,
    NAMESPACE,
    RELEASE,
    Helm,
    config_data,
    container,
    deployment,
    env_of,
    find,
    hook,
    migration_job,
    one,
    pod_spec,
)

SECRETS_DIR = "/var/run/secrets/llm-worker"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KEDA_VALUES = CHART / "ci" / "keda-values.yaml"
HPA_VALUES = CHART / "ci" / "hpa-values.yaml"


def load_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# ---------------------------------------------------------------- lint and schema


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict_passes(helm: Helm, values_file: Path) -> None:
    res = helm.lint(files=[values_file])
    assert res.returncode == 0, res.stdout + res.stderr


def test_values_yaml_validates_against_the_schema(helm: Helm) -> None:
    # values.yaml is always part of the values helm validates; only the required database
    # is added.
    res = helm.template({"database": {"url": DB_URL}})
    assert res.returncode == 0, res.stderr


def test_schema_is_draft07_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False


def _uncovered(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """Paths in `value` that the schema `node` does not describe."""
    if not isinstance(value, dict) or "properties" not in node:
        return []
    missing = []
    for key, sub in value.items():
        if key in node["properties"]:
            missing += _uncovered(sub, node["properties"][key], f"{path}.{key}")
        elif node.get("additionalProperties") is False:
            missing.append(f"{path}.{key}")
    return missing


def test_schema_describes_every_value_with_a_type() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _uncovered(load_values(), schema, "") == []
    for key, node in schema["properties"].items():
        assert "type" in node or "oneOf" in node, f"{key} has no type"
    assert set(load_values()) <= set(schema["properties"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"httpPort": "abc"}, "/httpPort"),
        ({"httpPort": 70000}, "/httpPort"),
        ({"service": {"port": 0}}, "/service/port"),
        ({"autoscaling": {"mode": "banana"}}, "/autoscaling/mode"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"replicasCount": 3}, "replicasCount"),
        ({"config": {"LOG_FORMAT": "xml"}}, "/config/LOG_FORMAT"),
        ({"config": {"ROUTING_OBJECTIVE": "fastest"}}, "/config/ROUTING_OBJECTIVE"),
        ({"config": {"SHUTDOWN_TIMEOUT_S": 0}}, "/config/SHUTDOWN_TIMEOUT_S"),
        ({"config": {"SHUTDOWN_TIMEOUT_S": "20"}}, "/config/SHUTDOWN_TIMEOUT_S"),
        ({"config": {"MAX_IN_FLIGHT": 0}}, "/config/MAX_IN_FLIGHT"),
        ({"config": {"group_id": "x"}}, "group_id"),
        ({"kafka": {"config": {"SECURITY_PROTOCOL": "SSL"}}}, "SECURITY_PROTOCOL"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"unknown": 1}}, "/image"),
        ({"terminationGracePeriodSeconds": 0}, "/terminationGracePeriodSeconds"),
        ({"autoscaling": {"partitions": 0}}, "/autoscaling/partitions"),
        ({"autoscaling": {"keda": {"sasl": "kerberos"}}}, "/autoscaling/keda/sasl"),
        ({"otel": {"protocol": "udp"}}, "/otel/protocol"),
        ({"otel": {"traceContent": "yes"}}, "/otel/traceContent"),
        ({"pdb": {"maxUnavailable": "one"}}, "/pdb/maxUnavailable"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({"tmpSizeLimit": "lots"}, "/tmpSizeLimit"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_schema_rejects_wrong_values(helm: Helm, values: dict[str, Any], message: str) -> None:
    err = helm.render_error(values)
    assert "don't meet the specifications of the schema" in err
    assert message in err
    lint = helm.lint(values, files=[CHART / "ci" / "minimal-values.yaml"])
    assert lint.returncode != 0


@pytest.mark.parametrize(
    "values_file",
    [
        {"httpPort": "abc"},
        {"autoscaling": {"mode": "banana"}},
        {"replicaCount": -2},
        {"notAValue": True},
    ],
    ids=["httpPort-abc", "mode-banana", "negative-replicas", "unknown-key"],
)
def test_wrong_values_files_are_rejected_by_lint(
    helm: Helm, values_file: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "wrong-values.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **values_file}))
    res = helm.lint(files=[path])
    assert res.returncode != 0
    assert "schema" in res.stdout + res.stderr


def test_a_database_is_required(helm: Helm) -> None:
    err = helm.render_error({}, with_minimal=False)
    assert "database.url or database.existingSecret is required" in err


# ---------------------------------------------------------------- the worker pod


def test_probes(helm: Helm) -> None:
    c = container(helm.render())
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["args"] == ["run"]
    assert "command" not in c  # the image's ENTRYPOINT (llm-worker) gets SIGTERM


def test_http_port_is_one_setting(helm: Helm) -> None:
    docs = helm.render({"httpPort": 9090})
    assert container(docs)["ports"][0]["containerPort"] == 9090
    assert config_data(docs)["LLM_WORKER_HTTP_PORT"] == "9090"
    assert one(docs, "Service")["spec"]["ports"][0]["targetPort"] == "http"


def _assert_hardened(pod: dict[str, Any], c: dict[str, Any]) -> None:
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_worker_pod_is_hardened_with_a_writable_tmp(helm: Helm) -> None:
    docs = helm.render()
    _assert_hardened(pod_spec(docs), container(docs))
    assert "initContainers" not in pod_spec(docs)


def test_resources_are_set(helm: Helm) -> None:
    res = container(helm.render())["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


# ---------------------------------------------------------------- shutdown rule


def test_grace_period_is_above_the_shutdown_timeout(helm: Helm) -> None:
    docs = helm.render()
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    assert grace > float(config_data(docs)["LLM_WORKER_SHUTDOWN_TIMEOUT_S"])


@pytest.mark.parametrize(
    "values",
    [
        {"terminationGracePeriodSeconds": 20},  # equal to the default 20 s
        {"terminationGracePeriodSeconds": 30, "config": {"SHUTDOWN_TIMEOUT_S": 45}},
        {"terminationGracePeriodSeconds": 30, "config": {"SHUTDOWN_TIMEOUT_S": 30.5}},
        # unset: the worker's default of 20 s applies
        {"terminationGracePeriodSeconds": 5, "config": {"SHUTDOWN_TIMEOUT_S": None}},
    ],
)
def test_rendering_fails_when_grace_period_is_not_above_shutdown_timeout(
    helm: Helm, values: dict[str, Any]
) -> None:
    err = helm.render_error(values)
    assert "terminationGracePeriodSeconds" in err
    assert "must be greater than config.SHUTDOWN_TIMEOUT_S" in err


def test_grace_period_just_above_shutdown_timeout_renders(helm: Helm) -> None:
    docs = helm.render({"terminationGracePeriodSeconds": 31, "config": {"SHUTDOWN_TIMEOUT_S": 30}})
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 31


# ---------------------------------------------------------------- rollout on change


def _checksums(docs: list[dict[str, Any]]) -> dict[str, str]:
    ann = deployment(docs)["spec"]["template"]["metadata"]["annotations"]
    return {k: v for k, v in ann.items() if k.startswith("checksum/")}


def test_checksum_annotation_rolls_pods_when_config_changes(helm: Helm) -> None:
    base = _checksums(helm.render())
    assert set(base) == {"checksum/config", "checksum/secret"}
    assert _checksums(helm.render()) == base  # stable for the same values
    changed = _checksums(helm.render({"config": {"LOG_LEVEL": "DEBUG"}}))
    assert changed["checksum/config"] != base["checksum/config"]
    assert changed["checksum/secret"] == base["checksum/secret"]
    kafka = _checksums(helm.render({"kafka": {"config": {"linger.ms": 5}}}))
    assert kafka["checksum/config"] != base["checksum/config"]
    secret = _checksums(helm.render({"database": {"url": DB_URL + "2"}}))
    assert secret["checksum/secret"] != base["checksum/secret"]


# ---------------------------------------------------------------- settings


def test_configmap_holds_worker_settings_under_their_variable_names(helm: Helm) -> None:
    docs = helm.render(
        {
            "kafka": {
                "bootstrapServers": "k1:9092,k2:9092",
                "config": {"security.protocol": "SSL", "session.timeout.ms": 45000},
            },
            "config": {
                "GROUP_ID": "g1",
                "DEDUP_MAX_BYTES": 134217728,
                "BREAKER_ERROR_THRESHOLD": 0.25,
                "DEDUP_ENABLED": False,
                "ENDPOINT_LIMITS": {"https://api.openai.com/v1": {"rpm": 5000}},
            },
        }
    )
    data = config_data(docs)
    assert data["KAFKA_BOOTSTRAP_SERVERS"] == "k1:9092,k2:9092"
    assert data["LLM_WORKER_GROUP_ID"] == "g1"
    assert data["LLM_WORKER_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert data["LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS"] == "45000"
    assert data["LLM_WORKER_DEDUP_MAX_BYTES"] == "134217728"  # not 1.34217728e+08
    assert data["LLM_WORKER_BREAKER_ERROR_THRESHOLD"] == "0.25"
    assert data["LLM_WORKER_DEDUP_ENABLED"] == "false"
    assert json.loads(data["LLM_WORKER_ENDPOINT_LIMITS"]) == {
        "https://api.openai.com/v1": {"rpm": 5000}
    }
    assert data["LLM_WORKER_SECRETS_DIR"] == SECRETS_DIR
    assert all(isinstance(v, str) for v in data.values())
    for name in data:
        assert name == "KAFKA_BOOTSTRAP_SERVERS" or name.startswith(("LLM_WORKER_", "OTEL_"))
    assert "DATABASE_URL" not in data
    c = container(docs)
    assert {"configMapRef": {"name": FULLNAME}} in c["envFrom"]


def test_worker_accepts_the_rendered_environment(helm: Helm) -> None:
    """The rendered ConfigMap, read by the worker's own settings loader."""
    from llm_worker.worker.config import load_settings

    docs = helm.render(files=[KEDA_VALUES])
    env = {**config_data(docs), "DATABASE_URL": DB_URL}
    env["LLM_WORKER_KAFKA_SASL_USERNAME"] = "u"
    env["LLM_WORKER_KAFKA_SASL_PASSWORD"] = "p"
    s = load_settings(env)
    assert s.group_id == "llm-worker-prod"
    assert s.prompts_topic == "prompts.v1"
    assert s.shutdown_timeout_s == 50
    assert s.dedup_max_bytes == 134217728
    assert s.http_port == 8080
    assert s.secrets_dir == SECRETS_DIR
    assert s.kafka_extra["security.protocol"] == "SASL_SSL"
    assert s.kafka_extra["sasl.mechanism"] == "SCRAM-SHA-512"
    assert s.kafka_extra["ssl.ca.location"] == "/etc/llm-worker/kafka-ca/ca.pem"
    assert s.kafka_extra["sasl.username"] == "u"
    assert s.limits("endpoint")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"HTTP_PORT": 9000}}, "use httpPort"),
        ({"config": {"SECRETS_DIR": "/x"}}, "fixed by the chart"),
        ({"config": {"KAFKA_SECURITY_PROTOCOL": "SSL"}}, "kafka.config"),
        ({"config": {"TRACE_CONTENT": True}}, "otel.traceContent"),
        ({"kafka": {"config": {"sasl.password": "hunter2"}}}, "kafka.sasl"),
        ({"kafka": {"config": {"bootstrap.servers": "x:9092"}}}, "kafka.bootstrapServers"),
        ({"kafka": {"sasl": {"username": "u"}}}, "kafka.sasl.password"),
        ({"kafka": {"sasl": {"username": "u", "password": "p"}}}, "security.protocol"),
    ],
)
def test_misplaced_settings_fail_with_a_clear_message(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm.render_error(values)


# ---------------------------------------------------------------- secrets


def test_database_url_comes_from_a_rendered_secret(helm: Helm) -> None:
    docs = helm.render()
    ref = env_of(container(docs))["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{FULLNAME}-database", "key": "DATABASE_URL"}
    secret = one(docs, "Secret", f"{FULLNAME}-database")
    assert secret["stringData"]["DATABASE_URL"] == DB_URL
    assert hook(secret) is None


def test_database_url_from_an_existing_secret(helm: Helm) -> None:
    docs = helm.render({"database": {"url": "", "existingSecret": "pg", "existingSecretKey": "u"}})
    ref = env_of(container(docs))["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "pg", "key": "u"}
    assert not find(docs, "Secret", f"{FULLNAME}-database")


def test_api_keys_are_mounted_as_files_read_only(helm: Helm) -> None:
    docs = helm.render({"apiKeys": {"openai-prod": "sk-1", "anthropic-prod": "sk-ant-2"}})
    c = container(docs)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount would not see key rotations
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == f"{FULLNAME}-api-keys"
    secret = one(docs, "Secret", f"{FULLNAME}-api-keys")
    assert secret["stringData"] == {"openai-prod": "sk-1", "anthropic-prod": "sk-ant-2"}
    assert config_data(docs)["LLM_WORKER_SECRETS_DIR"] == SECRETS_DIR
    # keys never travel as plain environment
    assert "sk-1" not in json.dumps(c)


def test_api_keys_from_an_existing_secret(helm: Helm) -> None:
    docs = helm.render({"apiKeysExistingSecret": "provider-keys"})
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "provider-keys"
    assert not find(docs, "Secret", f"{FULLNAME}-api-keys")


def test_kafka_sasl_credentials_come_from_a_secret(helm: Helm) -> None:
    docs = helm.render(files=[HPA_VALUES])
    env = env_of(container(docs))
    for var, key in (
        ("LLM_WORKER_KAFKA_SASL_USERNAME", "username"),
        ("LLM_WORKER_KAFKA_SASL_PASSWORD", "password"),
    ):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{FULLNAME}-kafka", "key": key}
    secret = one(docs, "Secret", f"{FULLNAME}-kafka")
    assert secret["stringData"]["username"] == "llm-worker"
    assert "BEGIN CERTIFICATE" in secret["stringData"]["ca.crt"]
    data = config_data(docs)
    assert "change-me" not in json.dumps(data)
    assert data["LLM_WORKER_KAFKA_SSL_CA_LOCATION"] == "/etc/llm-worker/kafka-ca/ca.crt"
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "kafka-ca")
    assert mount == {"name": "kafka-ca", "mountPath": "/etc/llm-worker/kafka-ca", "readOnly": True}


def test_kafka_sasl_from_an_existing_secret(helm: Helm) -> None:
    docs = helm.render(files=[KEDA_VALUES])
    env = env_of(container(docs))
    ref = env["LLM_WORKER_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "llm-worker-kafka", "key": "password"}
    assert not find(docs, "Secret", f"{FULLNAME}-kafka")


def _materialize(pod: dict[str, Any], c: dict[str, Any], docs: list[Any], root: Path) -> None:
    """Write the pod's projected `credentials` volume under `root` as the kubelet would, from
    the rendered Secrets' stringData (an existing Secret's keys get made-up values)."""
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "credentials"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "credentials"]
    target = root / mount["mountPath"].lstrip("/")
    target.mkdir(parents=True)
    for source in volume["projected"]["sources"]:
        found = find(docs, "Secret", source["secret"]["name"])
        data = found[0]["stringData"] if found else {}
        for item in source["secret"]["items"]:
            (target / item["path"]).write_text(data.get(item["key"], f"from-{item['key']}") + "\n")


def test_secrets_as_files_keep_the_credentials_out_of_the_environment(
    helm: Helm, tmp_path: Path
) -> None:
    """secretsAs: files mounts the Secrets and names the files with <VAR>_FILE; the worker's
    own loader reads them back (a made-up root stands for the container's filesystem)."""
    from llm_worker.worker.config import load_settings

    docs = helm.render({"secretsAs": "files"}, files=[HPA_VALUES])
    c, pod = container(docs), pod_spec(docs)
    env = env_of(c)
    assert not {"DATABASE_URL", "LLM_WORKER_KAFKA_SASL_PASSWORD"} & set(env)
    assert "secretKeyRef" not in json.dumps(env)
    _materialize(pod, c, docs, tmp_path)
    files = {k: str(tmp_path) + v["value"] for k, v in env.items() if k.endswith("_FILE")}
    assert set(files) == {
        "DATABASE_URL_FILE",
        "LLM_WORKER_KAFKA_SASL_USERNAME_FILE",
        "LLM_WORKER_KAFKA_SASL_PASSWORD_FILE",
    }
    s = load_settings({**config_data(docs), **files})
    secret = one(docs, "Secret", f"{FULLNAME}-kafka")["stringData"]
    assert (
        s.database_url == one(docs, "Secret", f"{FULLNAME}-database")["stringData"]["DATABASE_URL"]
    )
    assert s.kafka_extra["sasl.username"] == secret["username"]
    assert s.kafka_extra["sasl.password"] == secret["password"]
    # the migration Job: the database URL only, from its hook Secret
    job = migration_job(docs)["spec"]["template"]["spec"]
    (jc,) = job["containers"]
    job_env = env_of(jc)
    assert "DATABASE_URL" not in job_env and "LLM_WORKER_KAFKA_SASL_PASSWORD_FILE" not in job_env
    (job_volume,) = [v for v in job["volumes"] if v["name"] == "credentials"]
    (source,) = job_volume["projected"]["sources"]
    assert source["secret"]["name"] == f"{FULLNAME}-migrate-db"
    job_root = tmp_path / "job"
    _materialize(job, jc, docs, job_root)
    path = str(job_root) + job_env["DATABASE_URL_FILE"]["value"]
    assert load_settings({"DATABASE_URL_FILE": path}, only={"database_url"}).database_url == DB_URL


def test_secrets_as_files_from_existing_secrets(helm: Helm) -> None:
    docs = helm.render({"secretsAs": "files"}, files=[KEDA_VALUES])
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "credentials"]
    refs = {s["secret"]["name"]: s["secret"]["items"] for s in volume["projected"]["sources"]}
    assert refs["llm-worker-kafka"] == [
        {"key": "username", "path": "LLM_WORKER_KAFKA_SASL_USERNAME"},
        {"key": "password", "path": "LLM_WORKER_KAFKA_SASL_PASSWORD"},
    ]
    values = yaml.safe_load(KEDA_VALUES.read_text())
    db = values["database"]
    assert refs[db["existingSecret"]] == [
        {"key": db.get("existingSecretKey", "DATABASE_URL"), "path": "DATABASE_URL"}
    ]


def test_the_schema_refuses_an_unknown_secrets_mode(helm: Helm) -> None:
    assert "secretsAs" in helm.render_error({"secretsAs": "vault"})


def test_no_kafka_credentials_by_default(helm: Helm) -> None:
    docs = helm.render()
    assert not any(n.startswith("LLM_WORKER_KAFKA_") for n in env_of(container(docs)))
    assert not find(docs, "Secret", f"{FULLNAME}-kafka")


# ---------------------------------------------------------------- OpenTelemetry


def test_otel_variables_only_when_set(helm: Helm) -> None:
    data = config_data(helm.render())
    otel = {k: v for k, v in data.items() if k.startswith("OTEL_")}
    assert otel == {"OTEL_SERVICE_NAME": FULLNAME}
    assert data["LLM_WORKER_TRACE_CONTENT"] == "false"


def test_otel_variables(helm: Helm) -> None:
    docs = helm.render(
        {
            "otel": {
                "endpoint": "http://collector:4317",
                "protocol": "grpc",
                "serviceName": "llm-worker-eu",
                "tracesSampler": "parentbased_traceidratio",
                "tracesSamplerArg": 0.25,
                "resourceAttributes": {"deployment.environment": "prod", "team": "ml"},
                "headersSecret": {"name": "otel", "key": "hdr"},
                "traceContent": True,
            }
        }
    )
    data = config_data(docs)
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4317"
    assert data["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert data["OTEL_SERVICE_NAME"] == "llm-worker-eu"
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert data["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    attrs = dict(kv.split("=", 1) for kv in data["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attrs == {"deployment.environment": "prod", "team": "ml"}
    assert data["LLM_WORKER_TRACE_CONTENT"] == "true"
    ref = env_of(container(docs))["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "otel", "key": "hdr"}


# ---------------------------------------------------------------- migrations


def test_migrations_run_as_a_hook_job(helm: Helm) -> None:
    docs = helm.render()
    job = migration_job(docs)
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    job_weight = int(ann["helm.sh/hook-weight"])
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["args"] == ["migrate"]
    assert c["image"] == container(docs)["image"]
    _assert_hardened(pod, c)
    # The release's own Secret does not exist yet at pre-install: the hook reads a hook copy
    # created just before it.
    ref = env_of(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    hook_secret = one(docs, "Secret", ref["name"])
    assert hook(hook_secret) == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < job_weight
    assert hook_secret["stringData"][ref["key"]] == DB_URL
    # It holds the password: deleted once the hooks ran, failed ones included.
    policy = hook_secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
    assert set(policy) == {"before-hook-creation", "hook-succeeded", "hook-failed"}
    # ...and no ConfigMap either: settings are inline.
    assert "envFrom" not in c
    assert env_of(c)["LLM_WORKER_GROUP_ID"]["value"] == "llm-worker"
    # Job pods are not worker pods (Service, PDB).
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    selector = deployment(docs)["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job_labels.items()
    assert "serviceAccountName" not in pod


def test_migrations_with_an_existing_database_secret(helm: Helm) -> None:
    docs = helm.render({"database": {"url": "", "existingSecret": "pg"}})
    (c,) = migration_job(docs)["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "pg"
    assert not [d for d in find(docs, "Secret") if hook(d)]


def test_migrations_can_be_turned_off(helm: Helm) -> None:
    docs = helm.render({"migrations": {"enabled": False}})
    assert not find(docs, "Job")
    assert not [d for d in docs if hook(d)]


# ---------------------------------------------------------------- service, monitoring, PDB


def test_no_network_policy_unless_enabled(helm: Helm) -> None:
    assert not find(helm.render(), "NetworkPolicy")


def test_network_policy_opens_the_http_port_to_the_listed_peers_only(helm: Helm) -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    docs = helm.render({"networkPolicy": {"enabled": True, "ingressFrom": [monitoring]}})
    spec = one(docs, "NetworkPolicy")["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment(docs)["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]  # egress left open
    (rule,) = spec["ingress"]
    assert rule["from"] == [monitoring]
    (port,) = rule["ports"]
    named = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert port["protocol"] == "TCP" and port["port"] in named  # the worker's HTTP port
    # The Job's pods are not selected (they serve nothing).
    job_labels = migration_job(docs)["spec"]["template"]["metadata"]["labels"]
    assert not spec["podSelector"]["matchLabels"].items() <= job_labels.items()


def test_network_policy_without_peers_admits_nothing_and_egress_rules_restrict(helm: Helm) -> None:
    dns = {"ports": [{"port": 53, "protocol": "UDP"}]}
    docs = helm.render({"networkPolicy": {"enabled": True, "egress": [dns]}})
    spec = one(docs, "NetworkPolicy")["spec"]
    assert spec["ingress"] == []
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == [dns]


def test_the_schema_refuses_a_network_policy_typo(helm: Helm) -> None:
    err = helm.render_error({"networkPolicy": {"enabled": True, "ingress": []}})
    assert "ingress" in err


def test_service_exposes_metrics_port(helm: Helm) -> None:
    docs = helm.render()
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_service_monitor_toggle(helm: Helm) -> None:
    assert not find(helm.render(), "ServiceMonitor")
    docs = helm.render(
        {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}}}
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "http"
    assert ep["path"] == "/metrics"
    assert ep["interval"] == "15s"
    svc_labels = one(docs, "Service")["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc_labels.items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_pod_disruption_budget(helm: Helm) -> None:
    docs = helm.render()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not find(helm.render({"pdb": {"enabled": False}}), "PodDisruptionBudget")
    spec = one(helm.render({"pdb": {"minAvailable": "50%"}}), "PodDisruptionBudget")["spec"]
    assert spec == {**spec, "minAvailable": "50%"}
    assert "maxUnavailable" not in spec


# ---------------------------------------------------------------- autoscaling


def test_fixed_replicas_without_autoscaling(helm: Helm) -> None:
    docs = helm.render({"replicaCount": 3})
    assert deployment(docs)["spec"]["replicas"] == 3
    assert not find(docs, "ScaledObject")
    assert not find(docs, "HorizontalPodAutoscaler")


def test_keda_scaled_object_on_consumer_lag(helm: Helm) -> None:
    docs = helm.render(
        {
            "config": {"GROUP_ID": "grp", "PROMPTS_TOPIC": "in"},
            "autoscaling": {"mode": "keda", "lagThreshold": 300, "activationLagThreshold": 5},
        }
    )
    assert "replicas" not in deployment(docs)["spec"]
    assert not find(docs, "HorizontalPodAutoscaler")
    so = one(docs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] == 4  # autoscaling.partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    md = trigger["metadata"]
    assert md["bootstrapServers"] == "kafka:9092"
    assert md["consumerGroup"] == "grp"
    assert md["topic"] == "in"
    assert md["lagThreshold"] == "300"
    assert md["activationLagThreshold"] == "5"
    assert md["offsetResetPolicy"] == "earliest"
    assert all(isinstance(v, str) for v in md.values())
    # plaintext cluster: no SASL/TLS, no TriggerAuthentication
    assert "sasl" not in md and "tls" not in md and "authenticationRef" not in trigger
    assert not find(docs, "TriggerAuthentication")


def test_keda_defaults_follow_the_worker_defaults(helm: Helm) -> None:
    docs = helm.render(
        {"config": {"GROUP_ID": None, "PROMPTS_TOPIC": None}, "autoscaling": {"mode": "keda"}}
    )
    md = one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert md["consumerGroup"] == "llm-worker"
    assert md["topic"] == "llm_prompts"


def test_keda_sasl_tls_through_trigger_authentication(helm: Helm) -> None:
    docs = helm.render(files=[KEDA_VALUES])
    assert "replicas" not in deployment(docs)["spec"]
    so = one(docs, "ScaledObject")
    assert so["spec"]["maxReplicaCount"] == 12
    assert so["spec"]["minReplicaCount"] == 2
    (trigger,) = so["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("llm-worker-kafka", "username"),
        "password": ("llm-worker-kafka", "password"),
        "ca": ("kafka-ca", "ca.pem"),
    }
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300


@pytest.mark.parametrize(
    ("mechanism", "sasl"),
    [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256"), ("SCRAM-SHA-512", "scram_sha512")],
)
def test_keda_sasl_mode_follows_librdkafka_mechanism(helm: Helm, mechanism: str, sasl: str) -> None:
    docs = helm.render(
        {
            "kafka": {
                "config": {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": mechanism},
                "sasl": {"username": "u", "password": "p"},
            },
            "autoscaling": {"mode": "keda"},
        }
    )
    md = one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert md["sasl"] == sasl
    assert "tls" not in md


def test_keda_with_an_existing_trigger_authentication(helm: Helm) -> None:
    docs = helm.render(
        {
            "kafka": {"config": {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}},
            "autoscaling": {
                "mode": "keda",
                "keda": {
                    "authenticationRef": {"name": "msk", "kind": "ClusterTriggerAuthentication"}
                },
            },
        }
    )
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": "msk", "kind": "ClusterTriggerAuthentication"}
    assert trigger["metadata"]["sasl"] == "oauthbearer"
    assert not find(docs, "TriggerAuthentication")


def test_keda_unknown_sasl_mechanism_fails(helm: Helm) -> None:
    err = helm.render_error(
        {
            "kafka": {"config": {"security.protocol": "SASL_SSL", "sasl.mechanism": "FANCY"}},
            "autoscaling": {"mode": "keda"},
        }
    )
    assert "autoscaling.keda.sasl" in err


def test_hpa_alternative_on_an_external_lag_metric(helm: Helm) -> None:
    docs = helm.render(files=[HPA_VALUES])
    assert "replicas" not in deployment(docs)["spec"]
    assert not find(docs, "ScaledObject")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["name"] == FULLNAME
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 3)
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "kafka_consumergroup_lag"
    assert metric["external"]["metric"]["selector"] == {
        "matchLabels": {"consumergroup": "llm-worker", "topic": "llm_prompts"}
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "200"}


def test_hpa_metric_is_configurable(helm: Helm) -> None:
    selector = {"matchLabels": {"group": "g"}}
    docs = helm.render(
        {
            "autoscaling": {
                "mode": "hpa",
                "hpa": {"metricName": "kafka_lag_sum", "metricSelector": selector},
            }
        }
    )
    metric = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    assert metric == {"name": "kafka_lag_sum", "selector": selector}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"autoscaling": {"mode": "hpa", "minReplicas": 0}}, "at least 1"),
        ({"autoscaling": {"mode": "keda", "minReplicas": 5}}, "above the maximum"),
    ],
)
def test_inconsistent_autoscaling_fails(helm: Helm, values: dict[str, Any], message: str) -> None:
    assert message in helm.render_error(values)


# ---------------------------------------------------------------- dashboard

DASHBOARD_METRICS = [
    "llm_worker_completions_total",
    "llm_worker_end_to_end_seconds_bucket",
    "llm_worker_time_to_answer_seconds_bucket",
    "llm_worker_overhead_seconds_bucket",
    "llm_worker_provider_latency_seconds_bucket",
    "llm_worker_completion_errors_total",
    "llm_worker_dlq_records_total",
    "llm_worker_dedup_shared_total",
    "llm_worker_fallbacks_total",
    "llm_worker_circuit_state",
    "llm_worker_held_requests",
    "llm_worker_ratelimit_waiting",
    "llm_worker_ratelimit_wait_seconds_total",
    "llm_worker_consumer_lag",
    "llm_worker_tokens_total",
    "llm_worker_cost_usd_total",
    "llm_worker_in_flight",
    "llm_worker_concurrency_limit",
    "llm_worker_paused_partitions",
    "llm_worker_retries_total",
]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_configmap_for_the_grafana_sidecar(helm: Helm) -> None:
    docs = helm.render()
    cm = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["llm-worker.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "llm-worker.json").read_text())
    assert not find(
        helm.render({"dashboard": {"enabled": False}}), "ConfigMap", f"{FULLNAME}-dashboard"
    )


def test_dashboard_queries_every_metric_and_filters_by_job_and_namespace() -> None:
    dashboard = json.loads((CHART / "dashboards" / "llm-worker.json").read_text())
    exprs = _exprs(dashboard)
    text = "\n".join(exprs)
    for metric in DASHBOARD_METRICS:
        assert re.search(rf"\b{metric}\b", text), f"no panel queries {metric}"
    metrics_used = set(re.findall(r"\bllm_worker_[a-z0-9_]+", text))
    assert metrics_used <= set(DASHBOARD_METRICS), metrics_used - set(DASHBOARD_METRICS)
    for expr in exprs:
        assert 'job=~"$job"' in expr and 'namespace=~"$namespace"' in expr, expr
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "namespace"} <= set(variables)
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
    by_metric = {
        "llm_worker_completions_total": {"status", "model"},
        "llm_worker_completion_errors_total": {"type"},
        "llm_worker_dlq_records_total": {"reason"},
        "llm_worker_fallbacks_total": {"model"},
        "llm_worker_circuit_state": {"endpoint", "state"},
        "llm_worker_held_requests": {"reason"},
        "llm_worker_consumer_lag": {"topic", "partition"},
        "llm_worker_tokens_total": {"model", "provider", "direction"},
        "llm_worker_cost_usd_total": {"model", "provider"},
        "llm_worker_concurrency_limit": {"endpoint"},
        "llm_worker_retries_total": {"reason"},
    }
    for metric, labels in by_metric.items():
        groupings = [
            set(map(str.strip, m.group(1).split(",")))
            for e in exprs
            if metric in e
            for m in re.finditer(r"by \(([^)]*)\)", e)
        ]
        assert any(labels <= g for g in groupings), f"{metric} is never broken down by {labels}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- chart conventions

STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
}


def test_standard_labels_on_every_resource(helm: Helm) -> None:
    for values_file in CI_VALUES:
        for doc in helm.render(files=[values_file]):
            labels = doc["metadata"].get("labels", {})
            assert set(labels) >= STANDARD_LABELS, (doc["kind"], doc["metadata"]["name"])
            assert labels["app.kubernetes.io/instance"] == RELEASE


def test_names_follow_overrides(helm: Helm) -> None:
    docs = helm.render({"fullnameOverride": "llm"})
    assert deployment(docs)["metadata"]["name"] == "llm"
    assert one(docs, "Job")["metadata"]["name"] == "llm-migrate"
    docs = helm.render({"nameOverride": "gen"})
    assert deployment(docs)["metadata"]["name"] == f"{RELEASE}-gen"
    assert deployment(docs)["metadata"]["labels"]["app.kubernetes.io/name"] == "gen"


def test_image_tag_defaults_to_app_version(helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container(helm.render())["image"] == f"ghcr.io/example/llm-worker:{app_version}"
    c = container(helm.render({"image": {"repository": "r/w", "tag": "1.2.3"}}))
    assert c["image"] == "r/w:1.2.3"
    digest = "sha256:" + "a" * 64
    assert container(helm.render({"image": {"digest": digest}}))["image"].endswith("@" + digest)


def test_scheduling_and_extras_pass_through(helm: Helm) -> None:
    tolerations = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]
    docs = helm.render(
        {
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "workers"},
            "tolerations": tolerations,
            "affinity": affinity,
            "topologySpreadConstraints": spread,
            "priorityClassName": "high",
            "extraEnv": [{"name": "FOO", "value": "bar"}],
            "extraEnvFrom": [{"secretRef": {"name": "more"}}],
            "extraVolumes": [{"name": "cache", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "podAnnotations": {"a": "b"},
            "podLabels": {"team": "ml"},
        }
    )
    pod = pod_spec(docs)
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "workers"}
    assert pod["tolerations"] == tolerations
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "high"
    (tsc,) = pod["topologySpreadConstraints"]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert tsc["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels["team"] == "ml"
    c = container(docs)
    assert env_of(c)["FOO"]["value"] == "bar"
    assert {"secretRef": {"name": "more"}} in c["envFrom"]
    assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
    assert {"name": "cache", "emptyDir": {}} in pod["volumes"]
    # the migration Job gets the same env and scheduling
    job_pod = migration_job(docs)["spec"]["template"]["spec"]
    assert env_of(job_pod["containers"][0])["FOO"]["value"] == "bar"
    assert job_pod["nodeSelector"] == {"pool": "workers"}


def test_service_account_is_optional_and_tokenless(helm: Helm) -> None:
    docs = helm.render()
    assert not find(docs, "ServiceAccount")
    assert "serviceAccountName" not in pod_spec(docs)
    docs = helm.render({"serviceAccount": {"create": True, "annotations": {"k": "v"}}})
    sa = one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec(docs)["serviceAccountName"] == sa["metadata"]["name"]
    # the pre-install hook cannot use a ServiceAccount the release has not created yet
    assert "serviceAccountName" not in migration_job(docs)["spec"]["template"]["spec"]


def test_notes_explain_send_read_metrics_and_failover(helm: Helm, tmp_path: Path) -> None:
    # `helm template` does not print NOTES.txt: render it through a copy of the chart.
    chart = tmp_path / "llm-worker"
    shutil.copytree(CHART, chart)
    (chart / "notes-source.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes-source.txt") . | toJson }}\n'
    )
    for values_file in CI_VALUES:
        notes = one(helm.render(files=[values_file], chart=chart), "ConfigMap", "notes")
        text = notes["data"]["notes"]
        assert "llm-worker send" in text
        assert "llm-worker registry failover" in text
        assert "/metrics" in text
        assert "llm_completions" in text
