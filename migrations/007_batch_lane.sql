-- The batch lane (issue 28): prompts that can wait go through the providers' batch APIs.
-- A row may send all its traffic there (`lane`), prices its batch tokens apart (NULL: half
-- the online prices), and says what a request the provider reports errored or expired
-- becomes (`batch_on_error`: `online` retries it as a live call, `error` answers it with an
-- error completion; NULL: online).
ALTER TABLE model_registry
    ADD COLUMN lane text CHECK (lane IN ('online', 'batch')),
    ADD COLUMN batch_input_cost_per_1k double precision CHECK (batch_input_cost_per_1k >= 0),
    ADD COLUMN batch_output_cost_per_1k double precision CHECK (batch_output_cost_per_1k >= 0),
    ADD COLUMN batch_on_error text CHECK (batch_on_error IN ('online', 'error'));

-- One provider batch job. Its row is written (state `submitting`, with `job_key`) before the
-- job could reach the provider, and `batch_id` once it did: a worker that died in between
-- looks the job up by its key instead of submitting it again.
CREATE TABLE llm_batch_jobs (
    id bigserial PRIMARY KEY,
    job_key text NOT NULL UNIQUE,
    group_key text NOT NULL,
    model_id text NOT NULL,
    provider text NOT NULL,
    endpoint text NOT NULL,
    upstream_model text NOT NULL,
    state text NOT NULL DEFAULT 'submitting'
        CHECK (state IN ('submitting', 'submitted', 'collected', 'cancelled', 'failed')),
    batch_id text,
    provider_state text,
    requests integer NOT NULL,
    succeeded integer NOT NULL DEFAULT 0,
    errored integer NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz,
    collected_at timestamptz,
    cancel_requested_at timestamptz  -- `llm-worker batches cancel`: the collector cancels it
);

-- One prompt on the batch lane, written before its input offset is committed. `source`
-- (topic/partition/offset) makes the write idempotent when the record is read again.
-- waiting -> submitted (in a job) -> answered (its record built: `completion`, to go to
-- `deliver_topic`: the completions, or the prompts again with `lane: online`) -> done (that
-- record acknowledged by Kafka)
CREATE TABLE llm_batch_requests (
    id bigserial PRIMARY KEY,
    source text NOT NULL UNIQUE,
    group_key text NOT NULL,
    model_id text NOT NULL,
    prompt_id text NOT NULL,
    record bytea NOT NULL,
    record_key bytea,
    size_bytes integer NOT NULL,
    state text NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'submitted', 'answered', 'done')),
    job_id bigint REFERENCES llm_batch_jobs (id) ON DELETE SET NULL,
    completion bytea,
    deliver_topic text,
    attempt text,  -- exactly-once mode: the delivery (Kafka transaction) it went out in
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz
);
CREATE INDEX llm_batch_requests_waiting ON llm_batch_requests (group_key, id)
    WHERE state = 'waiting';
CREATE INDEX llm_batch_requests_job ON llm_batch_requests (job_id);
CREATE INDEX llm_batch_requests_done ON llm_batch_requests (done_at) WHERE state = 'done';
