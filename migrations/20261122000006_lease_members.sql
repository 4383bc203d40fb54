-- The live daemons sharing a topic's partitions, for fair shares (DESIGN.md invariant 7).
--
-- Each daemon heartbeats its row every lease.renew_interval, pushing `expires_at` one
-- lease.ttl ahead. The members whose row has not expired are the live ones; each takes
-- ceil(partitions / live members) leases in `partition_leases`. A daemon that stops
-- gracefully deletes its row; a dead one's row runs out like its leases.
CREATE TABLE lease_members (
    topic       TEXT        NOT NULL,
    member      TEXT        NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, member)
);
