-- Every accepted HL7 v2 message, committed before its ACK is sent. The unique key makes resends idempotent.
CREATE TABLE message_journal (
    id                    BIGSERIAL PRIMARY KEY,
    sending_application   TEXT    NOT NULL,
    sending_facility      TEXT    NOT NULL,
    receiving_application TEXT    NOT NULL,
    receiving_facility    TEXT    NOT NULL,
    message_type          TEXT    NOT NULL,
    control_id            TEXT    NOT NULL,
    version               TEXT    NOT NULL,
    received_us           BIGINT  NOT NULL,
    status                TEXT    NOT NULL DEFAULT 'received',
    status_detail         TEXT,
    updated_us            BIGINT  NOT NULL,
    raw                   BYTEA   NOT NULL,
    UNIQUE (sending_application, sending_facility, control_id)
);
-- Lists run newest first by id (ids grow with arrival time), so two secondary indexes serve every filter;
-- each index costs on the ingest hot path.
CREATE INDEX message_journal_status ON message_journal (status, id);
CREATE INDEX message_journal_type ON message_journal (message_type, id);
