-- The model registry: one row per model_id that prompts may name.
-- fallback_model_id deliberately has no foreign key: a dangling or cyclic chain must be
-- representable so that the worker can report it (registry.resolve) instead of the write failing.

CREATE TABLE model_registry (
    model_id           text          PRIMARY KEY,
    provider           text          NOT NULL,
    endpoint           text          NOT NULL DEFAULT '',
    upstream_model     text          NOT NULL,
    max_tokens         integer,
    enabled            boolean       NOT NULL DEFAULT true,
    fallback_provider  text,
    fallback_endpoint  text,
    fallback_model     text,
    fallback_model_id  text,
    api_key_secret     text,
    input_cost_per_1k  numeric(12,6) NOT NULL DEFAULT 0,
    output_cost_per_1k numeric(12,6) NOT NULL DEFAULT 0,
    rpm_limit          integer,
    tpm_limit          integer,
    timeout_ms         integer       NOT NULL DEFAULT 30000,
    updated_at         timestamptz   NOT NULL DEFAULT now(),

    CONSTRAINT model_registry_model_id_not_empty       CHECK (model_id <> ''),
    CONSTRAINT model_registry_provider_not_empty       CHECK (provider <> ''),
    CONSTRAINT model_registry_upstream_model_not_empty CHECK (upstream_model <> ''),
    CONSTRAINT model_registry_max_tokens_positive      CHECK (max_tokens > 0),
    CONSTRAINT model_registry_input_cost_not_negative  CHECK (input_cost_per_1k >= 0),
    CONSTRAINT model_registry_output_cost_not_negative CHECK (output_cost_per_1k >= 0),
    CONSTRAINT model_registry_rpm_limit_positive       CHECK (rpm_limit > 0),
    CONSTRAINT model_registry_tpm_limit_positive       CHECK (tpm_limit > 0),
    CONSTRAINT model_registry_timeout_ms_positive      CHECK (timeout_ms > 0)
);

COMMENT ON TABLE model_registry IS
    'LLM models served by llm-worker; failover is a row update (see docs and registry/).';
COMMENT ON COLUMN model_registry.api_key_secret IS
    'Name of a secret (file in the secrets directory or environment variable), never its value.';
COMMENT ON COLUMN model_registry.fallback_model_id IS
    'Another model_id to fall back to; no foreign key, chains are checked when resolving.';

CREATE FUNCTION model_registry_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER model_registry_touch
    BEFORE UPDATE ON model_registry
    FOR EACH ROW EXECUTE FUNCTION model_registry_touch();
