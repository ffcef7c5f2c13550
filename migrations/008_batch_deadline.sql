-- The batch lane honours a prompt's own deadline (`deadline`, or `ttl_ms` from its record's
-- timestamp) while the prompt waits for its job: a request still waiting when its deadline
-- passes is answered `deadline_exceeded` and never sent. NULL: the prompt set none.
ALTER TABLE llm_batch_requests
    ADD COLUMN deadline_at timestamptz;
CREATE INDEX llm_batch_requests_deadline ON llm_batch_requests (deadline_at)
    WHERE state = 'waiting' AND deadline_at IS NOT NULL;
