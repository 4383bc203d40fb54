-- Statistics and leaderboards (issue 5).

-- The time of the player's latest event (the event's own timestamp), so that the Redis
-- hash's `last_event` can be rebuilt from Postgres when Redis comes back empty.
ALTER TABLE player_statistics ADD COLUMN last_event_at TIMESTAMPTZ;

-- Every player's score in every period: the system of record behind the Redis sorted
-- sets and the `leaderboards` top-N table. period_key is `alltime`, a UTC day
-- (`2026-11-22`) or an ISO week (`2026-W47`); both text forms sort like the periods.
CREATE TABLE leaderboard_scores (
    game_id    VARCHAR(100) NOT NULL,
    period     VARCHAR(20)  NOT NULL CHECK (period IN ('daily', 'weekly', 'alltime')),
    period_key VARCHAR(10)  NOT NULL,
    player_id  VARCHAR(100) NOT NULL,
    score      BIGINT       NOT NULL,
    updated_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (game_id, period, period_key, player_id)
);
-- The top N of one board, read straight off the index (the refresh of `leaderboards`
-- and the query API's fallback): score descending, then player id descending bytewise,
-- the order in which Redis's ZRANGE ... REV ranks ties. Without it, each refresh sorted
-- every score of every game (1.6 s at 850k rows; with it, 60 ms).
CREATE INDEX idx_leaderboard_scores_top
    ON leaderboard_scores (game_id, period, period_key, score DESC, player_id COLLATE "C" DESC);
