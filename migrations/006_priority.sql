-- Request priority: where this row's prompts that do not say `priority` wait for capacity
-- (rate-limit buckets, concurrency slots): high ones go first. NULL means normal.
ALTER TABLE model_registry
    ADD COLUMN priority text
    CHECK (priority IN ('high', 'normal', 'low'));
