-- Streaming: stream every prompt for this model that does not say `stream` itself.
-- NULL: the worker's setting (LLM_WORKER_STREAM).
ALTER TABLE model_registry
    ADD COLUMN stream boolean;
