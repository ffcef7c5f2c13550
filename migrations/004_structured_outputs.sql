-- Structured work (response_format, tools, images) and true usage.
-- dialect: how an openai_compatible server takes a JSON schema: 'openai' (type json_schema,
--   vLLM and OpenAI) or 'llama_cpp' (type json_object with a schema: llama.cpp's server).
-- structured_outputs: the model takes a JSON schema natively (Anthropic: structured output
--   instead of a forced tool).
-- cached_input_cost_per_1k / cache_write_cost_per_1k: prices of input read from and written to
--   the provider's prompt cache; NULL means the row's input price.
-- canned_response: when every candidate failed, answer this text (status ok, canned true, the
--   cause in error) instead of an error completion.
ALTER TABLE model_registry
    ADD COLUMN dialect text NOT NULL DEFAULT 'openai'
        CONSTRAINT model_registry_dialect_known CHECK (dialect IN ('openai', 'llama_cpp')),
    ADD COLUMN structured_outputs boolean NOT NULL DEFAULT false,
    ADD COLUMN cached_input_cost_per_1k numeric(12,6)
        CONSTRAINT model_registry_cached_input_cost_not_negative
        CHECK (cached_input_cost_per_1k >= 0),
    ADD COLUMN cache_write_cost_per_1k numeric(12,6)
        CONSTRAINT model_registry_cache_write_cost_not_negative
        CHECK (cache_write_cost_per_1k >= 0),
    ADD COLUMN canned_response text;
