-- Per-row routing objective: how the worker orders a row's primary and fallbacks.
-- NULL means the worker's global setting (LLM_WORKER_ROUTING_OBJECTIVE).
ALTER TABLE model_registry
    ADD COLUMN routing_objective text
    CHECK (routing_objective IN ('priority', 'latency', 'cost', 'reliability'));
