-- Exactly-once bookkeeping (DESIGN.md invariant 1). rskafka has no consumer groups, so
-- each sink stores the next offset it will apply for each partition here, in the same
-- transaction as the rows it wrote. A restart resumes from these offsets.
CREATE TABLE sink_offsets (
    sink        VARCHAR(64) NOT NULL,
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL,
    next_offset BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition)
);
