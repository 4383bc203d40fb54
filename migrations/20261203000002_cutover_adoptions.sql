-- What `gamestream cutover apply` adopted from the old pipeline (issue 18), one row per
-- adoption: the offsets each sink was seeded with and a summary of what was imported.
-- Its presence makes a second `apply` change nothing; operators read it to see when and
-- from where gamestream took over.
CREATE TABLE cutover_adoptions (
    topic       TEXT        PRIMARY KEY,
    adopted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- {"event-logger": {"0": 1200, ...}, "stats-aggregator": {...}, ...}: next offsets.
    offsets     JSONB       NOT NULL,
    -- Counts of what was imported, and the periods rebuilt or started empty.
    summary     JSONB       NOT NULL,
    -- When the Redis sinks' offsets hashes were marked adopted (after the commit); NULL
    -- until then, so that a second `apply` finishes an interrupted one.
    redis_marked_at TIMESTAMPTZ
);
