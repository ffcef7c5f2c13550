import pytest

from llm_worker.worker.config import ConfigError, Settings, load_settings


def test_defaults_and_fixed_names() -> None:
    s = load_settings(
        {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "DATABASE_URL": "postgresql://u:pw@h/db"}
    )
    assert s.kafka_bootstrap_servers == "k:9092"
    assert s.group_id == "llm-worker"
    assert s.prompts_topic == "llm_prompts" and s.completions_topic == "llm_completions"
    assert s.dlq_topic == "llm_prompts.dlq"


def test_prefixed_settings_are_typed() -> None:
    s = load_settings(
        {
            "LLM_WORKER_HTTP_PORT": "9000",
            "LLM_WORKER_SHUTDOWN_TIMEOUT_S": "2.5",
            "LLM_WORKER_CREATE_TOPICS": "false",
        }
    )
    assert s.http_port == 9000 and s.shutdown_timeout_s == 2.5 and s.create_topics is False


def test_kafka_passthrough() -> None:
    s = load_settings(
        {
            "LLM_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LLM_WORKER_KAFKA_SASL_PASSWORD": "hunter2",
        }
    )
    conf = s.kafka_common()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(s)


def test_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="LLM_WORKER_HTTP_PORT"):
        load_settings({"LLM_WORKER_HTTP_PORT": "eighty"})
    with pytest.raises(ConfigError, match="LLM_WORKER_MAX_IN_FLIGHT"):
        load_settings({"LLM_WORKER_MAX_IN_FLIGHT": "0"})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings({"DATABASE_URL": "mysql://nope"})


def test_database_password_is_redacted_in_repr() -> None:
    s = load_settings({"DATABASE_URL": "postgresql://user:s3cret@db:5432/x"})
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)


def test_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "worker.env"
    f.write_text("# comment\nLLM_WORKER_GROUP_ID=from-file\nLLM_WORKER_HTTP_PORT=7000\n")
    s = load_settings({"LLM_WORKER_CONFIG_FILE": str(f), "LLM_WORKER_HTTP_PORT": "7001"})
    assert s.group_id == "from-file" and s.http_port == 7001  # environment wins over the file


def test_request_deadline_is_not_tied_to_the_poll_interval() -> None:
    # the worker keeps polling while it is full, so a long deadline cannot get it evicted
    s = load_settings({"LLM_WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "30000"})
    assert s.request_deadline_s == 120


def test_routing_objective_is_checked() -> None:
    with pytest.raises(ConfigError, match="LLM_WORKER_ROUTING_OBJECTIVE"):
        load_settings({"LLM_WORKER_ROUTING_OBJECTIVE": "fastest"})


def test_endpoint_and_tenant_limits_are_parsed() -> None:
    s = load_settings(
        {
            "LLM_WORKER_ENDPOINT_LIMITS": (
                '{"https://api.openai.com/v1/": {"rpm": 3500, "tpm": 90000},'
                ' "http://tgi:8080": {"tpm": 0, "rpm": 60}}'
            ),
            "LLM_WORKER_TENANT_LIMITS": '{"acme": {"rpm": 100}}',
        }
    )
    assert s.limits("endpoint") == {
        "https://api.openai.com/v1": (3500, 90000),  # trailing slash dropped
        "http://tgi:8080": (60, None),  # 0 = no limit
    }
    assert s.limits("tenant") == {"acme": (100, None)}
    assert load_settings({}).limits("endpoint") == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["x"]', "must be a JSON object"),
        ('{"e": {"rps": 5}}', "needs"),
        ('{"e": {}}', "needs"),
        ('{"e": {"rpm": -1}}', "whole number >= 0"),
        ('{"e": {"rpm": 1.5}}', "whole number >= 0"),
    ],
)
def test_bad_limits_name_the_variable(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({"LLM_WORKER_ENDPOINT_LIMITS": raw})
    assert "LLM_WORKER_ENDPOINT_LIMITS" in str(info.value)


def test_breaker_when_all_open_is_checked() -> None:
    assert load_settings({}).breaker_when_all_open == "wait"  # a stream holds work by default
    assert (
        load_settings({"LLM_WORKER_BREAKER_WHEN_ALL_OPEN": "fail"}).breaker_when_all_open == "fail"
    )
    with pytest.raises(ConfigError, match="LLM_WORKER_BREAKER_WHEN_ALL_OPEN"):
        load_settings({"LLM_WORKER_BREAKER_WHEN_ALL_OPEN": "hang"})


def test_credentials_in_endpoint_limit_urls_are_dropped_and_hidden() -> None:
    s = load_settings(
        {
            "LLM_WORKER_ENDPOINT_LIMITS": (
                '{"https://user:sk-hidden-1234@api.example.com/v1": {"rpm": 5}}'
            )
        }
    )
    assert s.limits("endpoint") == {"https://api.example.com/v1": (5, None)}
    assert "sk-hidden-1234" not in repr(s) and "sk-hidden-1234" not in str(s)


def test_key_value_dsn_password_is_redacted_in_repr() -> None:
    s = load_settings({"DATABASE_URL": "host=db dbname=reg user=w password=pg-secret-9"})
    assert "pg-secret-9" not in repr(s)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LLM_WORKER_BREAKER_PROBES", "0"),
        ("LLM_WORKER_LOG_LEVEL", "LOUD"),
        ("LLM_WORKER_DEDUP_WINDOW_S", "-5"),
        ("LLM_WORKER_TENANT_RPM", "-3"),
        ("LLM_WORKER_HTTP_PORT", "70000"),
        ("LLM_WORKER_BREAKER_COOLDOWN_S", "-1"),
        ("LLM_WORKER_DEDUP_WINDOW_S", "nan"),
        ("LLM_WORKER_MAX_IN_FLIGHT", ""),
    ],
)
def test_out_of_range_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load_settings({var: value})


def test_a_command_checks_only_the_settings_it_uses() -> None:
    env = {"DATABASE_URL": "postgresql://u@h/db", "LLM_WORKER_HTTP_PORT": "eighty"}
    assert load_settings(env, only=("database_url",)).database_url == "postgresql://u@h/db"
    with pytest.raises(ConfigError, match="LLM_WORKER_HTTP_PORT"):
        load_settings(env)


def test_the_worker_must_not_read_its_own_output() -> None:
    with pytest.raises(ConfigError, match="LLM_WORKER_PROMPTS_TOPIC"):
        load_settings({"LLM_WORKER_COMPLETIONS_TOPIC": "llm_prompts"})


def test_repr_shows_the_settings_and_hides_only_the_secrets() -> None:
    """What the start-up log shows: every setting, with passwords in the DSN, credentials in
    endpoint-limit URLs and secret librdkafka properties masked, and nothing else masked."""
    s = load_settings(
        {
            "DATABASE_URL": "postgresql://user:s3cret@db:5432/x",
            "LLM_WORKER_GROUP_ID": "g-7",
            "LLM_WORKER_HTTP_PORT": "9100",
            "LLM_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LLM_WORKER_KAFKA_CLIENT_ID": "worker-a",
            "LLM_WORKER_KAFKA_SASL_PASSWORD": "pw-1",
            "LLM_WORKER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "cs-2",
            "LLM_WORKER_KAFKA_SSL_KEY_PEM": "pem-3",
            "LLM_WORKER_KAFKA_SASL_OAUTHBEARER_TOKEN": "tok-4",
            "LLM_WORKER_ENDPOINT_LIMITS": '{"https://u:sk-5@api.example.com/v1": {"rpm": 5}}',
        }
    )
    text = repr(s)
    assert text.startswith("Settings(kafka_bootstrap_servers='127.0.0.1:9092', group_id='g-7', ")
    assert ", http_port=9100, " in text
    assert "database_url='postgresql://user:***@db:5432/x'" in text
    assert (
        "kafka_extra={'security.protocol': 'SASL_SSL', 'client.id': 'worker-a', "
        "'sasl.password': '***', 'sasl.oauthbearer.client.secret': '***', "
        "'ssl.key.pem': '***', 'sasl.oauthbearer.token': '***'}"
    ) in text
    assert """endpoint_limits='{"https://***@api.example.com/v1":{"rpm":5}}'""" in text
    assert str(s) == text
    for secret in ("s3cret", "pw-1", "cs-2", "pem-3", "tok-4", "sk-5"):
        assert secret not in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[(v, True) for v in ("1", "true", "True", "yes", "YES", "on", "On")],
        *[(v, False) for v in ("0", "false", "FALSE", "no", "No", "off", "OFF")],
    ],
)
def test_every_boolean_spelling(raw: str, expected: bool) -> None:
    assert load_settings({"LLM_WORKER_DEDUP_PER_TENANT": raw}).dedup_per_tenant is expected
    assert load_settings({"LLM_WORKER_DEDUP_ENABLED": raw}).dedup_enabled is expected


def test_an_empty_string_setting_is_its_empty_value_and_an_empty_number_says_so() -> None:
    """Deployment templates set variables to "" for "not set": a string setting takes it."""
    s = load_settings({"LLM_WORKER_TENANT_LIMITS": "", "LLM_WORKER_TRANSACTIONAL_ID": ""})
    assert s.tenant_limits == "" and s.transactional_id == ""
    with pytest.raises(ConfigError, match="LLM_WORKER_MAX_ATTEMPTS is empty; expected a whole"):
        load_settings({"LLM_WORKER_MAX_ATTEMPTS": " "})


def test_config_file_values_keep_equals_signs_and_lose_their_quotes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "worker.env"
    f.write_text(
        "DATABASE_URL=host=db dbname=reg user=w\n"
        'LLM_WORKER_GROUP_ID="X quoted group X"\n'
        "  LLM_WORKER_DLQ_TOPIC = 'X-dead-X'  \n"
        "\n"
        'LLM_WORKER_TENANT_LIMITS={"acme": {"rpm": 60}}\n'
    )
    s = load_settings({"LLM_WORKER_CONFIG_FILE": str(f)})
    assert s.database_url == "host=db dbname=reg user=w"
    assert s.group_id == "X quoted group X" and s.dlq_topic == "X-dead-X"
    assert s.limits("tenant") == {"acme": (60, None)}


def test_a_bad_config_file_names_the_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "worker.env"
    f.write_text("# settings\nLLM_WORKER_GROUP_ID=g\nLLM_WORKER_HTTP_PORT 9000\n")
    with pytest.raises(ConfigError) as bad:
        load_settings({"LLM_WORKER_CONFIG_FILE": str(f)})
    assert str(bad.value) == f"{f}:3: expected KEY=VALUE, got 'LLM_WORKER_HTTP_PORT 9000'"
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError) as gone:
        load_settings({"LLM_WORKER_CONFIG_FILE": str(missing)})
    assert str(gone.value).startswith(f"LLM_WORKER_CONFIG_FILE={str(missing)!r} cannot be read: ")
    assert "No such file" in str(gone.value)


def test_only_the_documented_names_set_a_setting() -> None:
    """Unknown and misspelt variables, when allowed (otherwise tests/unit/test_setting_typos.py),
    are ignored without stopping the others from being read; the two fixed names are only read
    as themselves."""
    s = load_settings(
        {
            "LLM_WORKER_ALLOW_UNKNOWN_SETTINGS": "true",
            "LLM_WORKER_NOT_A_SETTING": "x",  # ignored, and reading goes on
            "LLM_WORKER_DATABASE_URL": "postgresql://wrong@h/db",  # DATABASE_URL is the name
            "OTHER_TOOL_HTTP_PORT": "1",  # another program's variable, same length of prefix
            "LLM_WORKER_GROUP_ID": "read",
        }
    )
    assert s.group_id == "read"
    assert s.database_url == Settings().database_url and s.http_port == Settings().http_port


def test_the_short_postgres_scheme_is_a_postgresql_url() -> None:
    url = "postgres://u@db:5432/reg"
    assert load_settings({"DATABASE_URL": url}).database_url == url


def test_tenant_names_are_kept_as_written() -> None:
    """Only endpoint URLs lose a trailing slash and credentials; a tenant id is any string."""
    s = load_settings({"LLM_WORKER_TENANT_LIMITS": '{"acme/": {"rpm": 1}, "a//b@c": {"tpm": 2}}'})
    assert s.limits("tenant") == {"acme/": (1, None), "a//b@c": (None, 2)}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLM_WORKER_GROUP_ID": " "}, "LLM_WORKER_GROUP_ID=' ' must not be empty"),
        (
            {"LLM_WORKER_DLQ_TOPIC": "llm_prompts"},
            "LLM_WORKER_DLQ_TOPIC='llm_prompts' is also LLM_WORKER_PROMPTS_TOPIC: "
            "the worker would read its own output",
        ),
    ],
)
def test_refusals_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings(env)
    assert str(bad.value) == message
