-- The contract tables (CONTRACT.md), as PostgreSQL 15 accepts them: indexes are
-- declared with CREATE INDEX, not inline. Timestamps are TIMESTAMPTZ.

-- Every event, once. A duplicate event_id is ignored by the writers (ON CONFLICT DO NOTHING).
CREATE TABLE events (
    event_id        UUID PRIMARY KEY,
    event_type      VARCHAR(100) NOT NULL,
    player_id       VARCHAR(100) NOT NULL,
    game_id         VARCHAR(100) NOT NULL,
    event_timestamp TIMESTAMPTZ  NOT NULL,
    ingested_at     TIMESTAMPTZ  NOT NULL,
    data            JSONB        NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX idx_events_player_id ON events (player_id);
CREATE INDEX idx_events_game_id ON events (game_id);
CREATE INDEX idx_events_event_type ON events (event_type);
CREATE INDEX idx_events_event_timestamp ON events (event_timestamp);

-- Per-player counts over all time. total_events = sum of event_breakdown's values.
CREATE TABLE player_statistics (
    player_id       VARCHAR(100) PRIMARY KEY,
    total_events    BIGINT      NOT NULL DEFAULT 0,
    event_breakdown JSONB       NOT NULL DEFAULT '{}',
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Top N of each game and period, with ranks (refreshed periodically, not per event).
CREATE TABLE leaderboards (
    game_id    VARCHAR(100) NOT NULL,
    player_id  VARCHAR(100) NOT NULL,
    rank       INTEGER      NOT NULL,
    score      BIGINT       NOT NULL,
    period     VARCHAR(20)  NOT NULL CHECK (period IN ('daily', 'weekly', 'alltime')),
    updated_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (game_id, player_id, period)
);
CREATE INDEX idx_leaderboards_game_period ON leaderboards (game_id, period);
CREATE INDEX idx_leaderboards_rank ON leaderboards (rank);

-- Dead letters. original_event is the record as received (a JSON string where it was
-- not valid JSON); the remaining columns say where it came from, so that it is written
-- once per (consumer, record) and can be replayed once.
CREATE TABLE dlq_events (
    id               SERIAL PRIMARY KEY,
    original_event   JSONB        NOT NULL,
    error_message    TEXT         NOT NULL,
    consumer_service VARCHAR(100) NOT NULL,
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    error_kind       VARCHAR(64)  NOT NULL DEFAULT 'unknown',
    source_topic     TEXT,
    source_partition INTEGER,
    source_offset    BIGINT,
    -- The exact bytes of the record value, for replay (original_event may be lossy).
    original_payload BYTEA,
    replayed_at      TIMESTAMPTZ,
    UNIQUE (consumer_service, source_topic, source_partition, source_offset)
);
CREATE INDEX idx_dlq_events_consumer_service ON dlq_events (consumer_service);
CREATE INDEX idx_dlq_events_created_at ON dlq_events (created_at);
