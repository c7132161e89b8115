-- Every outbound HL7 v2 message (application acknowledgments, referral status updates) and what became of it,
-- written in the transactions that queue, complete and fail its delivery job. No message bodies: those live only
-- in the job payload until the message is acknowledged.
CREATE TABLE outbound_messages (
    id              BIGSERIAL PRIMARY KEY,
    -- The delivery job (jobs.id): the worker settles the row by it, dead-lettered jobs mark it dead.
    job_id          BIGINT  NOT NULL,
    destination     TEXT    NOT NULL,
    message_type    TEXT    NOT NULL,
    control_id      TEXT    NOT NULL,
    -- queued, sent (an attempt is under way), acknowledged, failed (retry pending), dead (dead-lettered)
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    queued_us       BIGINT  NOT NULL,
    sent_us         BIGINT,
    acknowledged_us BIGINT,
    updated_us      BIGINT  NOT NULL,
    ack_code        TEXT,
    ack_control_id  TEXT,
    ack_error_code  TEXT,
    ack_text        TEXT,
    last_error      TEXT
);
CREATE UNIQUE INDEX outbound_messages_job ON outbound_messages (job_id);
-- Lists run newest first by id, filtered by state or destination.
CREATE INDEX outbound_messages_state ON outbound_messages (state, id);
CREATE INDEX outbound_messages_destination ON outbound_messages (destination, id);
