-- The batch lane keeps two more things of a stored prompt:
-- `deadline_at`: its own deadline (`deadline`, or `ttl_ms` from its record's timestamp); a
--   request still waiting when it passes is answered `deadline_exceeded` and never sent.
--   NULL: the prompt set none.
-- `headers`: its record's `traceparent`/`tracestate` headers (JSON: [[name, base64 value]]),
--   carried over to the record delivered for it, as on the online lane. NULL: none.
ALTER TABLE llm_batch_requests
    ADD COLUMN deadline_at timestamptz,
    ADD COLUMN headers bytea;
CREATE INDEX llm_batch_requests_deadline ON llm_batch_requests (deadline_at)
    WHERE state = 'waiting' AND deadline_at IS NOT NULL;
