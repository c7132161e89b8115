-- Topic-based subscriptions (FHIR R4 Subscriptions Backport): the delivery state of each Subscription resource.
-- The resource itself is stored like any other; this row mirrors what event matching needs (topic, filters, the
-- creating organization, status) and what delivery keeps: the event counter, the delivery cursor, failures.
CREATE TABLE subscriptions (
    id                     TEXT    PRIMARY KEY,
    topic                  TEXT    NOT NULL,
    focus_type             TEXT    NOT NULL,
    -- JSON array of the backport-filter-criteria query strings.
    filters                TEXT    NOT NULL,
    organization           TEXT,
    status                 TEXT    NOT NULL,
    heartbeat_secs         BIGINT,
    events_since_start     BIGINT  NOT NULL DEFAULT 0,
    delivered_through      BIGINT  NOT NULL DEFAULT 0,
    consecutive_failures   BIGINT  NOT NULL DEFAULT 0,
    -- A handshake is due: the subscription was created or asked to be (re)activated.
    handshake_pending      BOOLEAN NOT NULL DEFAULT FALSE,
    -- At most one delivery job per subscription exists while this is set: one sender at a time keeps order.
    delivery_queued        BOOLEAN NOT NULL DEFAULT FALSE,
    last_sent_us           BIGINT  NOT NULL DEFAULT 0,
    deleted                BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX subscriptions_matching ON subscriptions (focus_type, status);

-- Every event of a subscription, numbered from 1 without gaps, for delivery and $events.
CREATE TABLE subscription_events (
    subscription_id TEXT    NOT NULL,
    event_number    BIGINT  NOT NULL,
    focus_type      TEXT    NOT NULL,
    focus_id        TEXT    NOT NULL,
    focus_version   BIGINT  NOT NULL,
    occurred_us     BIGINT  NOT NULL,
    PRIMARY KEY (subscription_id, event_number)
);
