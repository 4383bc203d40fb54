-- Partition ownership among several daemons (DESIGN.md invariant 7).
--
-- rskafka has no consumer groups, so the daemons of a Deployment share the raw topic's
-- partitions through this table: a partition is owned by `owner` while `expires_at` is
-- in the future. The owner renews its leases while it is healthy; when it dies they run
-- out and another daemon takes them over. Every change of owner bumps `epoch`, the
-- fencing token: a sink commits its offsets only while its daemon still holds the
-- partition at the epoch it started with, so a paused or partitioned daemon whose lease
-- was taken can no longer write.
CREATE TABLE partition_leases (
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL CHECK (partition >= 0),
    owner       TEXT,                   -- member id of the holding daemon; NULL = free
    epoch       BIGINT      NOT NULL DEFAULT 0,
    expires_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
